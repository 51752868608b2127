//! The pods of this node: a watch (field selector `spec.nodeName`) keeps
//! their metadata, and addresses held for pods that are gone go back to the
//! pool — after the API server confirmed, with an uncached GET, that the pod
//! is really gone (a watch can lag, or have missed a re-creation).

use super::{Cluster, PodMeta};
use crate::daemon::{ipam, Node};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

pub(crate) fn meta(pod: &Pod) -> PodMeta {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    PodMeta {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        annotations: pod.metadata.annotations.clone().unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        finished: matches!(phase, Some("Succeeded" | "Failed")),
    }
}

fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// An uncached read of one pod; `None` when the API server says it does not exist.
pub(crate) async fn get(cluster: &Cluster, namespace: &str, name: &str) -> Result<Option<Pod>, kube::Error> {
    cluster.throttle().await;
    Api::<Pod>::namespaced(cluster.client(), namespace).get_opt(name).await
}

/// Follows this node's pods until the task is aborted. The watcher relists
/// when the watch breaks or its resourceVersion expires, and backs off
/// while the API server is unreachable.
pub async fn watch(node: Arc<Node>, cluster: Arc<Cluster>) {
    let api = Api::<Pod>::all(cluster.client());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", cluster.options.node_name));
    let mut stream = watcher::watcher(api, config)
        .backoff(super::ApiBackoff::default())
        .boxed();
    let mut listing: HashMap<String, PodMeta> = HashMap::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(pod)) => {
                listing.insert(key(&pod), meta(&pod));
            }
            Ok(Event::InitDone) => {
                let count = listing.len();
                *cluster.pods.write().unwrap_or_else(PoisonError::into_inner) = std::mem::take(&mut listing);
                let first = !cluster.pods_synced.swap(true, Ordering::SeqCst);
                tracing::info!(pods = count, first, "pods of this node listed");
                // pods deleted while terwayd was down (or the watch was broken)
                collect(&node, &cluster).await;
            }
            Ok(Event::Apply(pod)) => {
                let meta = meta(&pod);
                let finished = meta.finished;
                cluster
                    .pods
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key(&pod), meta);
                if finished {
                    collect(&node, &cluster).await;
                }
            }
            Ok(Event::Delete(pod)) => {
                cluster
                    .pods
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&key(&pod));
                collect(&node, &cluster).await;
            }
            Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying"),
        }
    }
}

/// Looks for addresses of vanished pods every `gc_period` too.
pub async fn collect_periodically(node: Arc<Node>, cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(cluster.options.gc_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        collect(&node, &cluster).await;
    }
}

/// Gives back the addresses of ledger pods the watch does not show (or
/// shows finished), each confirmed gone by the API server first. Returns
/// how many pods were released.
pub async fn collect(node: &Node, cluster: &Cluster) -> usize {
    if !cluster.pods_synced.load(Ordering::SeqCst) {
        return 0; // without a complete listing every pod would look gone
    }
    let suspects: Vec<terway_statestore::PodRecord> = node
        .ledger
        .snapshot()
        .pods
        .into_values()
        // attachments made without Kubernetes are not the API server's to judge
        .filter(|r| r.pod.namespace != crate::cni::protocol::RUNTIME_NAMESPACE)
        .filter(|r| r.pod.namespace != crate::daemon::upstream::UPSTREAM_NAMESPACE)
        .filter(|r| {
            cluster
                .cached_pod(&r.pod.namespace, &r.pod.name)
                .is_none_or(|m| m.finished)
        })
        .collect();
    let mut released = 0;
    for record in suspects {
        let pod = format!("{}/{}", record.pod.namespace, record.pod.name);
        let gone = match get(cluster, &record.pod.namespace, &record.pod.name).await {
            Ok(None) => true,
            Ok(Some(found)) => {
                let m = meta(&found);
                let finished = m.finished;
                cluster
                    .pods
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(pod.clone(), m);
                finished
            }
            Err(e) => {
                tracing::warn!(pod = %pod, error = %e, "could not confirm the pod is gone; keeping its address");
                false
            }
        };
        if !gone {
            continue;
        }
        tracing::info!(pod = %pod, container = %record.container_id, ips = ?record.ips, "GC: the pod is gone from the cluster; giving its address back");
        // the release names the container, so a new sandbox of a re-created pod is left alone
        match ipam::release_gone(node, &record).await {
            Err(e) => tracing::warn!(pod = %pod, error = %e, "GC could not release the pod's address"),
            Ok(_) => released += 1,
        }
    }
    released
}
