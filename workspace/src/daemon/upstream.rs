//! Taking over a node that upstream Terway wired: its pods keep running
//! through the switch, and the addresses they hold must never go to a new
//! pod. Two sources say which addresses are in use, both read once at start:
//!
//! - upstream's own pod records, `/var/lib/cni/terway/ResRelation.db`
//!   (bbolt, bucket `relation`, key `namespace/name`, JSON values): every
//!   pod whose sandbox (network namespace) still exists, in any datapath
//!   mode, with its container id and namespace path;
//! - the host's routes: upstream (like terway-rs) names a veth pod's host
//!   link `cali` + a hash of the pod's namespace and name and routes the
//!   pod's address to it in the main table (a file lost or unreadable
//!   leaves these).
//!
//! An address the ledger already knows is held at once (before anything is
//! served); the others are held when the reconciler adopts them from the
//! cloud, in place of being added to the pool. A held address is recorded as
//! bound to a placeholder pod, `_upstream/<veth>` (the host veth name of the
//! pod: namespace and name hashed); the DEL of that pod releases it (and
//! removes the veth and the pod's rules), as the datapath agent does once
//! the pod's veth and network namespace are gone.

use super::Node;
use crate::cni::protocol::PodRequest;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use terway_datapath::names::host_veth_name;
use terway_statestore::{BindRequest, Durability, IpState, PodNetworkSettings, PodRecord, PodRef};

/// The namespace of placeholder pods (not a valid Kubernetes namespace).
pub const UPSTREAM_NAMESPACE: &str = "_upstream";
/// Upstream's host veth prefix (its `veth_prefix` default, ours too).
pub const VETH_PREFIX: &str = "cali";
/// Where upstream's daemon keeps its pod records.
pub const RES_RELATION_DB: &str = "/var/lib/cni/terway/ResRelation.db";

/// A pod wired before terwayd, as far as the host or upstream's records tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    /// The pod's host veth name (also the placeholder's name).
    pub veth: String,
    pub container_id: String,
    /// Its network namespace path; empty when only a route told of it.
    pub netns: String,
}

impl Holder {
    fn of_route(veth: String) -> Self {
        Self {
            veth,
            container_id: String::new(),
            netns: String::new(),
        }
    }

    /// The placeholder pod standing for it.
    fn bind_request(&self) -> BindRequest {
        BindRequest {
            pod: PodRef::new(UPSTREAM_NAMESPACE, &self.veth, ""),
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            ifname: "eth0".into(),
            settings: PodNetworkSettings::default(),
            ipv6: false,
        }
    }
}

pub(crate) fn is_placeholder(record: &PodRecord) -> bool {
    record.pod.namespace == UPSTREAM_NAMESPACE
}

/// Upstream's `PodResources` (types/daemon/res.go), the fields read here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PodResources {
    #[serde(default)]
    resources: Option<Vec<ResourceItem>>,
    pod_info: Option<PodInfo>,
    net_ns: Option<String>,
    #[serde(rename = "ContainerID")]
    container_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PodInfo {
    name: String,
    namespace: String,
    #[serde(default)]
    sandbox_exited: bool,
    /// `VPCENI`: the pod was given a whole ENI.
    #[serde(default)]
    pod_network_type: String,
}

#[derive(Debug, Deserialize)]
struct ResourceItem {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    eni_id: String,
    #[serde(default)]
    ipv4: String,
    #[serde(default)]
    ipv6: String,
}

/// What upstream's pod records say, of pods whose sandbox `alive` says
/// still exists.
#[derive(Debug, Default)]
pub(crate) struct UpstreamRecords {
    /// Addresses pods sharing ENIs hold.
    pub in_use: BTreeMap<IpAddr, Holder>,
    /// ENIs given whole to a pod (ENI id → pod): inside the pod, not on the
    /// host, so left alone.
    pub whole_enis: BTreeMap<String, String>,
    /// Records not taken, and why (for the log).
    pub left_out: Vec<String>,
}

/// Reads upstream's pod records (bucket `relation`).
pub(crate) fn read_res_relation(path: &Path, alive: impl Fn(&Path) -> bool) -> anyhow::Result<UpstreamRecords> {
    let db = terway_statestore::bolt::BoltFile::open(path)?;
    let mut out = UpstreamRecords::default();
    let (in_use, left_out) = (&mut out.in_use, &mut out.left_out);
    for (key, value) in db.bucket(b"relation")?.unwrap_or_default() {
        let key = String::from_utf8_lossy(&key).into_owned();
        let record: PodResources = match serde_json::from_slice(&value) {
            Ok(r) => r,
            Err(e) => {
                left_out.push(format!("{key}: unreadable record ({e})"));
                continue;
            }
        };
        let Some(pod) = record.pod_info else {
            left_out.push(format!("{key}: no pod info"));
            continue;
        };
        let netns = record.net_ns.unwrap_or_default();
        if pod.sandbox_exited || netns.is_empty() || !alive(Path::new(&netns)) {
            left_out.push(format!("{key}: sandbox gone"));
            continue;
        }
        let items = record.resources.unwrap_or_default();
        // older upstreams record a whole ENI as type `eni`, newer ones by the pod's network type
        if pod.pod_network_type == "VPCENI" || items.iter().any(|r| r.kind == "eni") {
            for item in items.iter().filter(|r| !r.eni_id.is_empty()) {
                out.whole_enis.insert(item.eni_id.clone(), key.clone());
            }
            left_out.push(format!("{key}: given a whole ENI (its ENI left alone)"));
            continue;
        }
        let holder = Holder {
            veth: host_veth_name(&pod.namespace, &pod.name, "eth0"),
            container_id: record.container_id.unwrap_or_default(),
            netns,
        };
        for item in items.iter().filter(|r| r.kind == "eniIp") {
            for text in [&item.ipv4, &item.ipv6].into_iter().filter(|t| !t.is_empty()) {
                match text.parse::<IpAddr>() {
                    Ok(ip) => {
                        in_use.insert(ip, holder.clone());
                    }
                    Err(_) => left_out.push(format!("{key}: bad address {text:?}")),
                }
            }
        }
    }
    Ok(out)
}

/// Reads which addresses pods wired before terwayd hold (upstream's records,
/// then the host's routes), holds those the ledger knows unbound, and keeps
/// the rest for [`hold_adopted`].
pub(crate) async fn scan(node: &Node) {
    let mut found: BTreeMap<IpAddr, Holder> = BTreeMap::new();
    if let Some(path) = node.options.upstream_db.as_deref().filter(|p| p.exists()) {
        match read_res_relation(path, Path::exists) {
            Ok(records) => {
                tracing::info!(path = %path.display(), addresses = records.in_use.len(), whole_enis = ?records.whole_enis, left_out = ?records.left_out, "upstream Terway's pod records read");
                found = records.in_use;
                *node
                    .upstream_whole_enis
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = records.whole_enis;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not read upstream Terway's pod records; the host's routes alone say which addresses pods hold")
            }
        }
    }
    if let Some(dp) = &node.datapath {
        match dp.host_routes_via(VETH_PREFIX).await {
            Ok(routes) => {
                for (ip, veth) in routes {
                    found.entry(ip).or_insert_with(|| Holder::of_route(veth));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the host's pod routes; addresses of pods wired before terwayd may be handed out again")
            }
        }
    }
    let s = node.ledger.snapshot();
    let ours: std::collections::HashSet<IpAddr> = s.pods.values().flat_map(|p| p.ips.iter().copied()).collect();
    let in_use: BTreeMap<IpAddr, Holder> = found
        .into_iter()
        // our own pods are in the ledger already
        .filter(|(ip, _)| !ours.contains(ip) && !matches!(s.ips.get(ip).map(|r| &r.state), Some(IpState::Bound(_))))
        .collect();
    if in_use.is_empty() {
        return;
    }
    tracing::info!(
        addresses = in_use.len(),
        "pods wired before terwayd found; their addresses are kept for them"
    );
    let mut by_eni: BTreeMap<String, Vec<(IpAddr, BindRequest)>> = BTreeMap::new();
    let mut later = BTreeMap::new();
    for (ip, holder) in in_use {
        match s.ips.get(&ip) {
            Some(r) => by_eni
                .entry(r.eni_id.clone())
                .or_default()
                .push((ip, holder.bind_request())),
            None => {
                later.insert(ip, holder);
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
        .filter_map(|ip| waiting.get(ip).map(|h| (*ip, h.bind_request())))
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
