//! The datapath agent: every `datapath_check_period` it checks every shared
//! ENI and every pod the ledger holds against the desired state, repairs
//! what drifted (a rule, a route, a neighbour, a qdisc deleted by hand or by
//! another agent), logs what it repaired and counts it in the metrics.
//! Level-triggered: it needs no memory of what it did before. It also deletes
//! host links of released pods that a crash left before their background
//! deletion ([`Datapath::remove_released_links`]), at start and each round.
//! Pods wired before terwayd are not repaired (their set-up is not ours);
//! their address is released once their host veth is gone.

use super::{ipam, pod_network, upstream, Node};
use std::sync::Arc;
use terway_datapath::{Datapath, Drift};
use terway_statestore::EniStatus;

/// What one round found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub pods_checked: usize,
    pub enis_checked: usize,
    /// Drift repaired, per pod or ENI.
    pub repaired: Vec<(String, Vec<Drift>)>,
    /// Pods or ENIs that could not be checked or repaired, with why.
    pub failed: Vec<(String, String)>,
}

/// Checks on the configured period until the task is aborted.
pub async fn run(node: Arc<Node>, dp: Arc<Datapath>) {
    remove_released_links(&dp).await;
    loop {
        tokio::time::sleep(node.config().datapath_check_period).await;
        let report = check_all(&node, &dp).await;
        tracing::debug!(
            pods = report.pods_checked,
            enis = report.enis_checked,
            repaired = report.repaired.len(),
            failed = report.failed.len(),
            "datapath checked"
        );
    }
}

async fn remove_released_links(dp: &Datapath) {
    match dp.remove_released_links().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(links = n, "deleting host links of released pods left by an earlier run"),
        Err(e) => tracing::warn!(error = %e, "looking for host links of released pods"),
    }
}

/// One round over every shared ENI and every pod.
pub async fn check_all(node: &Node, dp: &Datapath) -> CheckReport {
    remove_released_links(dp).await;
    let mut report = CheckReport::default();
    let state = node.ledger.snapshot();
    // ENIs given whole go into their pods as they are: only shared ones have a host set-up
    for eni in state
        .enis
        .values()
        .filter(|e| !e.exclusive && e.owner.is_none() && e.status == EniStatus::InUse)
    {
        report.enis_checked += 1;
        let who = format!("ENI {}", eni.id);
        let link = match pod_network::eni_link(node, eni) {
            Ok(l) => l,
            Err(e) => {
                report.failed.push((who, e.to_string()));
                continue;
            }
        };
        match dp.check_eni(&link, node.node_ip).await {
            Ok(drift) if drift.is_empty() => {}
            Ok(drift) => match dp.ensure_eni(&link, node.node_ip).await {
                Ok(_) => {
                    tracing::warn!(eni = %eni.id, drift = ?drift.iter().map(ToString::to_string).collect::<Vec<_>>(), "ENI datapath repaired");
                    node.metrics.observe_repairs(&drift);
                    report.repaired.push((who, drift));
                }
                Err(e) => report.failed.push((who, e.to_string())),
            },
            Err(e) => report.failed.push((who, e.to_string())),
        }
    }
    for key in state.pods.keys() {
        // the pod's own lock: no ADD or DEL of it runs while it is repaired
        let lock = node.pod_lock(key);
        let _guard = lock.lock().await;
        let Some(record) = node.ledger.pod(&state.pods[key].pod) else {
            continue; // released meanwhile
        };
        if upstream::is_placeholder(&record) {
            release_if_gone(node, dp, &record).await;
            continue;
        }
        if !std::path::Path::new(&record.netns).exists() {
            continue; // the runtime removed the sandbox; its DEL or GC gives the address back
        }
        let Some(spec) = pod_network::spec_of_record(node, &record, None) else {
            report
                .failed
                .push((key.clone(), "the ledger record names no usable address or ENI".into()));
            continue;
        };
        report.pods_checked += 1;
        match dp.repair(&spec).await {
            Ok(drift) if drift.is_empty() => {}
            Ok(drift) => {
                tracing::warn!(pod = %key, drift = ?drift.iter().map(ToString::to_string).collect::<Vec<_>>(), "pod datapath repaired");
                node.metrics.observe_repairs(&drift);
                report.repaired.push((key.clone(), drift));
            }
            Err(e) => {
                tracing::warn!(pod = %key, error = %e, "pod datapath could not be repaired");
                report.failed.push((key.clone(), e.to_string()));
            }
        }
    }
    // level-triggered like the rest: a table removed by hand comes back
    node.sync_masquerade(true);
    node.metrics.observe_datapath_check(report.failed.len());
    report
}

/// A pod wired before terwayd whose host veth (and network namespace, when
/// upstream's records named it) is gone went with its sandbox without a DEL
/// reaching terwayd: its address (and rules) go. An ipvlan pod has no veth:
/// its namespace alone tells.
async fn release_if_gone(node: &Node, dp: &Datapath, placeholder: &terway_statestore::PodRecord) {
    let sandbox_alive = !placeholder.netns.is_empty() && std::path::Path::new(&placeholder.netns).exists();
    if sandbox_alive {
        return;
    }
    match dp.netlink().link_by_name(&placeholder.pod.name).await {
        Ok(Some(_)) => {}
        Ok(None) => match ipam::release(node, placeholder, None).await {
            Ok(r) => {
                tracing::info!(veth = %placeholder.pod.name, ips = ?r.ips, "a pod wired before terwayd is gone; its address is released")
            }
            Err(e) => {
                tracing::warn!(veth = %placeholder.pod.name, error = %e, "could not release the address of a pod wired before terwayd")
            }
        },
        Err(e) => tracing::warn!(veth = %placeholder.pod.name, error = %e, "could not look for a host veth"),
    }
}
