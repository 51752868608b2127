//! Taking over a node that upstream Terway wired: its pods keep running
//! through the switch, and the addresses they hold must never go to a new
//! pod. Upstream (like terway-rs) names a pod's host veth `cali` + a hash of
//! the pod's namespace and name and routes the pod's address to it in the
//! main table, so those host routes tell which addresses are in use.
//!
//! At start the host's routes are read once. An address the ledger already
//! knows is held at once (before anything is served); the others are held
//! when the reconciler adopts them from the cloud, in place of being added
//! to the pool. A held address is recorded as bound to a placeholder pod,
//! `_upstream/<veth>`; the DEL of the pod whose veth that is releases it
//! (and removes the veth and the pod's rules), as the datapath agent does
//! once the veth is gone with its pod.

use super::Node;
use crate::cni::protocol::PodRequest;
use std::collections::BTreeMap;
use std::net::IpAddr;
use terway_datapath::names::host_veth_name;
use terway_statestore::{BindRequest, Durability, IpState, PodNetworkSettings, PodRecord, PodRef};

/// The namespace of placeholder pods (not a valid Kubernetes namespace).
pub const UPSTREAM_NAMESPACE: &str = "_upstream";
/// Upstream's host veth prefix (its `veth_prefix` default, ours too).
pub const VETH_PREFIX: &str = "cali";

/// The placeholder pod for the pod behind host veth `veth`.
pub(crate) fn holder(veth: &str) -> BindRequest {
    BindRequest {
        pod: PodRef::new(UPSTREAM_NAMESPACE, veth, ""),
        container_id: String::new(),
        netns: String::new(),
        ifname: "eth0".into(),
        settings: PodNetworkSettings::default(),
        ipv6: false,
    }
}

pub(crate) fn is_placeholder(record: &PodRecord) -> bool {
    record.pod.namespace == UPSTREAM_NAMESPACE
}

/// Reads which addresses pods on the host hold (with the datapath only),
/// holds those the ledger knows unbound, and keeps the rest for
/// [`hold_adopted`].
pub(crate) async fn scan(node: &Node) {
    let Some(dp) = &node.datapath else {
        return;
    };
    let found = match dp.host_routes_via(VETH_PREFIX).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the host's pod routes; addresses of pods wired before terwayd may be handed out again");
            return;
        }
    };
    let s = node.ledger.snapshot();
    let ours: std::collections::HashSet<IpAddr> = s.pods.values().flat_map(|p| p.ips.iter().copied()).collect();
    let in_use: BTreeMap<IpAddr, String> = found
        .into_iter()
        // our own pods are in the ledger already
        .filter(|(ip, _)| !ours.contains(ip) && !matches!(s.ips.get(ip).map(|r| &r.state), Some(IpState::Bound(_))))
        .collect();
    if in_use.is_empty() {
        return;
    }
    tracing::info!(
        pods = in_use.len(),
        "pods wired before terwayd found on the host; their addresses are kept for them"
    );
    let mut by_eni: BTreeMap<String, Vec<(IpAddr, BindRequest)>> = BTreeMap::new();
    let mut later = BTreeMap::new();
    for (ip, veth) in in_use {
        match s.ips.get(&ip) {
            Some(r) => by_eni.entry(r.eni_id.clone()).or_default().push((ip, holder(&veth))),
            None => {
                later.insert(ip, veth);
            }
        }
    }
    for (eni_id, holders) in by_eni {
        match node.ledger.hold_for_pods(&eni_id, &holders, Durability::Flush) {
            Ok(held) if !held.is_empty() => {
                tracing::info!(eni = %eni_id, ips = ?held, "addresses held for pods wired before terwayd")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(eni = %eni_id, error = %e, "could not hold the addresses of pods wired before terwayd")
            }
        }
    }
    *node
        .upstream_pods
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = later;
}

/// Holds, among `ips` the cloud shows on `eni_id`, those pods found at
/// start are using; called before the rest are adopted as idle.
pub(crate) fn hold_adopted(node: &Node, eni_id: &str, ips: &[IpAddr]) -> anyhow::Result<()> {
    let mut waiting = node
        .upstream_pods
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if waiting.is_empty() {
        return Ok(());
    }
    let holders: Vec<(IpAddr, BindRequest)> = ips
        .iter()
        .filter_map(|ip| waiting.get(ip).map(|veth| (*ip, holder(veth))))
        .collect();
    if holders.is_empty() {
        return Ok(());
    }
    let held = node.ledger.hold_for_pods(eni_id, &holders, Durability::Flush)?;
    tracing::info!(eni = %eni_id, ips = ?held, "addresses held for pods wired before terwayd");
    for (ip, _) in &holders {
        waiting.remove(ip);
    }
    Ok(())
}

/// The placeholder record of the pod a DEL names, if terwayd took it over.
pub(crate) fn placeholder_of(node: &Node, p: &PodRequest) -> Option<PodRecord> {
    let veth = host_veth_name(&p.pod_namespace, &p.pod_name, &p.ifname);
    node.ledger.pod(&PodRef::new(UPSTREAM_NAMESPACE, &veth, ""))
}

/// The placeholder as the pod it stands for: the datapath to tear down is
/// that pod's (its veth name, its address's rules).
pub(crate) fn as_pod(placeholder: &PodRecord, p: &PodRequest) -> PodRecord {
    PodRecord {
        pod: PodRef::new(&p.pod_namespace, &p.pod_name, ""),
        netns: p.netns.clone(),
        ifname: p.ifname.clone(),
        ..placeholder.clone()
    }
}
