//! terway-datapath: the netlink side of a pod's network. Out of the pod
//! through the ENI that owns its address (so the VPC's source check accepts
//! it), and from the VPC back into the pod, with no tunnel.
//!
//! [`Datapath`] is the entry type; it works in a "host" namespace given to
//! it (the node's own, or one a test made), and every operation is
//! idempotent: setup twice is setup once, teardown of what is half made or
//! already gone succeeds, [`Datapath::check`] says what differs from the
//! desired state and [`Datapath::repair`] puts it back.

pub mod bandwidth;
pub mod desired;
mod driver;
mod engine;
mod ipvlan;
pub mod names;
mod netlink;
pub mod netns;
mod spec;
mod tbf;

pub use engine::{Datapath, RELEASED_ALIAS, RELEASED_GROUP};
pub use ipvlan::child_message as ipvlan_child_message;
pub use netlink::{Netlink, RouteSpec, RuleSpec};
pub use netns::NetNs;
pub use spec::{Bandwidth, Drift, DriftKind, EniLink, Mode, PodAddress, PodSpec, PolicyPoint, SetupResult, Side};
pub use tbf::Tbf;

/// The desired state `Datapath::setup` would put in place for `pod` wired as
/// `mode` (for inspection and tests: drivers are pure).
pub fn desired_state(pod: &PodSpec, mode: Mode) -> desired::Desired {
    driver::desired(pod, mode)
}

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("network namespace {path}: {source}")]
    Netns { path: PathBuf, source: std::io::Error },
    #[error("netlink in {ns}: {op}: {message}")]
    Netlink {
        op: String,
        ns: PathBuf,
        message: String,
        /// The kernel's errno, when the kernel answered with one.
        errno: Option<i32>,
    },
    /// The kernel lacks what this needs (ipvlan here).
    #[error("{what}: not supported by this kernel (errno {errno})")]
    Unsupported { what: String, errno: i32 },
    #[error("sysctl {key}: {source}")]
    Sysctl { key: String, source: std::io::Error },
    #[error("{0}")]
    NotFound(String),
    #[error("teardown left {} problem(s): {}", .0.len(), .0.join("; "))]
    Teardown(Vec<String>),
}

impl DatapathError {
    /// The kernel's errno behind a netlink failure.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink { errno, .. } => *errno,
            Self::Unsupported { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}
