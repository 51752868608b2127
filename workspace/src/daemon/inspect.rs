//! What a live terwayd tells `terway-cli` over its socket: the config in
//! force (secrets redacted), the pool, ENIs, pods, vSwitches set aside and
//! the last reconcile. Read-only; answered from memory.

use super::Node;
use crate::cni::protocol::Inspect;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use terway_statestore::IpState;

/// One ENI as `terway-cli enis` and `status` show it.
#[derive(Debug, Serialize)]
pub struct EniView {
    pub id: String,
    pub mac: String,
    pub vswitch_id: String,
    pub status: String,
    pub route_table: u32,
    pub primary_ip: String,
    pub created_by_terway: bool,
    /// Exclusive-ENI mode: the pod it is lent to.
    pub owner: Option<String>,
    /// Addresses by state (idle, bound, cooling, releasing).
    pub ips: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub container_id: String,
    pub netns: String,
    pub ips: Vec<String>,
    pub eni_id: Option<String>,
    pub ingress_bps: u64,
    pub egress_bps: u64,
}

pub fn answer(node: &Node, what: Inspect) -> Value {
    match what {
        Inspect::Status => status(node),
        Inspect::Pods => json!(pods(node)),
        Inspect::Enis => json!(enis(node)),
    }
}

pub fn enis(node: &Node) -> Vec<EniView> {
    let s = node.ledger.snapshot();
    s.enis
        .values()
        .map(|e| {
            let mut ips: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for r in s.ips.values().filter(|r| r.eni_id == e.id) {
                ips.entry(r.state.name().to_owned()).or_default().push(r.ip.to_string());
            }
            EniView {
                id: e.id.clone(),
                mac: e.mac.clone(),
                vswitch_id: e.vswitch_id.clone(),
                status: format!("{:?}", e.status),
                route_table: e.route_table,
                primary_ip: e.primary_ip.to_string(),
                created_by_terway: e.created_by_us,
                owner: e.owner.as_ref().map(ToString::to_string),
                ips,
            }
        })
        .collect()
}

pub fn pods(node: &Node) -> Vec<PodView> {
    let s = node.ledger.snapshot();
    s.pods
        .values()
        .map(|p| PodView {
            namespace: p.pod.namespace.clone(),
            name: p.pod.name.clone(),
            container_id: p.container_id.clone(),
            netns: p.netns.clone(),
            ips: p.ips.iter().map(ToString::to_string).collect(),
            // an exclusive-ENI pod's own ENI, else the ENI its address is on
            eni_id: p
                .eni_id
                .clone()
                .or_else(|| p.ips.iter().find_map(|ip| s.ips.get(ip)).map(|r| r.eni_id.clone())),
            ingress_bps: p.settings.ingress_bps,
            egress_bps: p.settings.egress_bps,
        })
        .collect()
}

fn status(node: &Node) -> Value {
    let s = node.ledger.snapshot();
    let config = node.config();
    let held = s.ips_held_by_intents();
    let count = |state: &str| s.ips.values().filter(|r| r.state.name() == state).count();
    let aside: Vec<Value> = node
        .vswitches
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .set_aside_now()
        .into_iter()
        .map(|(v, left)| json!({"vswitch": v, "seconds_left": left.as_secs()}))
        .collect();
    let cluster = node.bridge.get().map(|c| c.describe());
    json!({
        "instance": {
            "instance_id": node.identity.instance_id,
            "instance_type": node.identity.instance_type,
            "region_id": node.identity.region_id,
            "zone_id": node.identity.zone_id,
            "node_ip": node.node_ip.to_string(),
        },
        "mode": if cluster.is_some() { "cluster" } else { "standalone" },
        "cluster": cluster,
        "limits": {"enis": node.limits.enis, "ipv4_per_eni": node.limits.ipv4_per_eni},
        "network_policy": {
            "enforced": node.policy.is_active(),
            "not_enforced_because": node.policy_refusal(),
            "state": node.policy.stats(),
        },
        "max_pods": node.max_pods(),
        "datapath_mode": config.datapath_mode,
        "pool": {
            "idle": count("idle"),
            "bound": s.ips.values().filter(|r| matches!(r.state, IpState::Bound(_))).count(),
            "cooling": count("cooling"),
            "releasing": count("releasing"),
            "held_by_intents": held.len(),
            "min_pool_size": config.min_pool_size,
            "max_pool_size": config.max_pool_size,
            "waiting_adds": node.waiting.load(Ordering::Relaxed),
        },
        "pods": s.pods.len(),
        "enis": enis(node),
        "vswitches_set_aside": aside,
        "intents": s.intents.len(),
        "reconcile": {
            "passes": node.reconcile_passes.load(Ordering::Relaxed),
            "last": node.metrics.last_reconcile(),
            "last_error": node.last_error(),
        },
        "config": serde_json::to_value(&*config).unwrap_or(Value::Null),
    })
}
