//! NetworkPolicy (networking.k8s.io/v1), enforced by terwayd with nftables.
//!
//! - [`model`]: the cluster facts policy needs, trimmed from Kubernetes objects.
//! - [`calico`]: Calico's NetworkPolicy and GlobalNetworkPolicy, ordered
//!   with the Kubernetes ones.
//! - [`evaluate`]: would a connection pass, and which policy and rule decided
//!   (`terway-cli policy explain`).
//! - [`ruleset`]: the same predicates compiled into `table inet terway` —
//!   per-pod chains, selectors as named sets — and the script from the
//!   kernel's table to the wanted one.
//! - [`engine`]: facts in, one nftables transaction per sync out.
//! - [`nft`]: libnftables in process, or the `nft` binary; [`offline`]: facts from YAML files.
//!
//! Where policy applies: pods wired with a veth (shared ENI) are policed at
//! their host-side interface. An exclusive-ENI pod's traffic, and an ipvlan
//! pod's traffic to pods on its ENI, never crosses the host: a pod in those
//! modes that a policy selects is refused at ADD (and reported later) rather
//! than left open while a policy says it is closed.

pub mod agent;
pub mod calico;
pub mod engine;
pub mod evaluate;
pub mod model;
pub mod nft;
pub mod offline;
pub mod ruleset;

pub use agent::PolicyAgent;
pub use engine::{Enforcer, PolicyStats, SyncReport};
pub use evaluate::{explain, Endpoint, Verdict};
pub use model::{ClusterState, ObjectKey, PodInfo, Policy, Protocol};
