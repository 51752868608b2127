//! What NetworkPolicy needs from the API server: every NetworkPolicy,
//! Namespace and Pod, each turned into the engine's trimmed facts as it
//! arrives (no object is kept). The watches run only while policy can be
//! enforced here ([`Node::policy_refusal`]); switching
//! `disable_network_policy` on stops them and removes the table, live.

use super::{Cluster, Notice};
use crate::daemon::Node;
use crate::policy::model::{namespace_from_k8s, ObjectKey, PodInfo, Policy};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use terway_config::Config;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Starts and stops the watches as the configuration allows, until aborted.
pub async fn supervise(node: Arc<Node>, cluster: Arc<Cluster>, mut config: watch::Receiver<Arc<Config>>) {
    let syncer = AbortOnDrop(tokio::spawn(node.policy.clone().sync_loop()));
    let mut running: Option<Vec<AbortOnDrop>> = None;
    let mut first = true;
    loop {
        // the config as this receiver sees it: the node may not have applied it yet
        let current = config.borrow_and_update().clone();
        match (node.policy_refusal_with(&current), running.is_some()) {
            (None, false) => {
                tracing::info!("NetworkPolicy on: watching NetworkPolicies, namespaces and pods");
                node.policy.activate();
                running = Some(start(&node, &cluster));
            }
            (Some(why), true) => {
                tracing::info!(reason = %why, "NetworkPolicy off: watches stopped, table removed");
                running = None;
                if let Err(e) = node.policy.deactivate().await {
                    tracing::warn!(error = %e, "could not remove the NetworkPolicy table");
                }
            }
            (Some(why), false) if first => {
                tracing::info!(reason = %why, "NetworkPolicy is not enforced on this node");
                // a table left by an earlier run with policy on must not keep
                // isolating pods (there is none to look for without a datapath)
                if node.datapath.is_none() {
                } else if let Err(e) = node.policy.deactivate().await {
                    tracing::debug!(error = %e, "no NetworkPolicy table to remove");
                }
            }
            _ => {}
        }
        first = false;
        if config.changed().await.is_err() {
            break;
        }
    }
    drop(syncer);
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Which watches have listed once; all three make the engine ready.
#[derive(Debug, Default)]
struct Listed(AtomicU8);

impl Listed {
    fn mark(&self, bit: u8, node: &Node) {
        if self.0.fetch_or(bit, Ordering::SeqCst) | bit == 0b111 {
            node.policy.set_ready();
        }
    }
}

fn start(node: &Arc<Node>, cluster: &Arc<Cluster>) -> Vec<AbortOnDrop> {
    let listed = Arc::new(Listed::default());
    vec![
        AbortOnDrop(tokio::spawn(policies(node.clone(), cluster.clone(), listed.clone()))),
        AbortOnDrop(tokio::spawn(namespaces(node.clone(), cluster.clone(), listed.clone()))),
        AbortOnDrop(tokio::spawn(pods(node.clone(), cluster.clone(), listed))),
    ]
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<ObjectKey> {
    Some(ObjectKey::new(meta.namespace.as_deref()?, meta.name.as_deref()?))
}

/// A policy, with a Warning Event for each field that cannot be enforced as written.
fn parse(cluster: &Cluster, np: &NetworkPolicy) -> Option<Policy> {
    let policy = Policy::from_k8s(np)?;
    for problem in &policy.problems {
        tracing::warn!(policy = %policy.key, problem = %problem, "NetworkPolicy field cannot be enforced as written");
        cluster.notify(Notice::PolicyEvent {
            namespace: policy.key.namespace.clone(),
            name: policy.key.name.clone(),
            uid: np.metadata.uid.clone().unwrap_or_default(),
            reason: "PolicyNotEnforced",
            message: problem.clone(),
        });
    }
    Some(policy)
}

async fn policies(node: Arc<Node>, cluster: Arc<Cluster>, listed: Arc<Listed>) {
    let api = Api::<NetworkPolicy>::all(cluster.client());
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing = BTreeMap::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(np)) => {
                if let Some(p) = parse(&cluster, &np) {
                    listing.insert(p.key.clone(), p);
                }
            }
            Ok(Event::InitDone) => {
                let all = std::mem::take(&mut listing);
                tracing::info!(policies = all.len(), "NetworkPolicies listed");
                node.policy.update(|e| e.replace_policies(all));
                listed.mark(0b001, &node);
            }
            Ok(Event::Apply(np)) => {
                if let Some(p) = parse(&cluster, &np) {
                    node.policy.update(|e| e.set_policy(p.key.clone(), Some(p)));
                }
            }
            Ok(Event::Delete(np)) => {
                if let Some(key) = key_of(&np.metadata) {
                    node.policy.update(|e| e.set_policy(key, None));
                }
            }
            Err(e) => tracing::warn!(error = %e, "NetworkPolicy watch failed; retrying"),
        }
    }
}

async fn namespaces(node: Arc<Node>, cluster: Arc<Cluster>, listed: Arc<Listed>) {
    let api = Api::<Namespace>::all(cluster.client());
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing = HashMap::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(ns)) => listing.extend(namespace_from_k8s(&ns)),
            Ok(Event::InitDone) => {
                let all = std::mem::take(&mut listing);
                node.policy.update(|e| e.replace_namespaces(all));
                listed.mark(0b010, &node);
            }
            Ok(Event::Apply(ns)) => {
                if let Some((name, labels)) = namespace_from_k8s(&ns) {
                    node.policy.update(|e| e.set_namespace(&name, Some(labels)));
                }
            }
            Ok(Event::Delete(ns)) => {
                if let Some(name) = ns.metadata.name {
                    node.policy.update(|e| e.set_namespace(&name, None));
                }
            }
            Err(e) => tracing::warn!(error = %e, "namespace watch failed; retrying"),
        }
    }
}

async fn pods(node: Arc<Node>, cluster: Arc<Cluster>, listed: Arc<Listed>) {
    let api = Api::<Pod>::all(cluster.client());
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing = HashMap::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(pod)) => listing.extend(PodInfo::from_k8s(&pod)),
            Ok(Event::InitDone) => {
                let all = std::mem::take(&mut listing);
                tracing::info!(pods = all.len(), "pods listed for NetworkPolicy");
                node.policy.update(|e| e.replace_pods(all));
                listed.mark(0b100, &node);
            }
            Ok(Event::Apply(pod)) => match PodInfo::from_k8s(&pod) {
                Some((key, info)) => node.policy.update(|e| e.upsert_pod(key, info)),
                // finished: its address may go to another pod
                None => {
                    if let Some(key) = key_of(&pod.metadata) {
                        node.policy.update(|e| e.remove_pod(&key));
                    }
                }
            },
            Ok(Event::Delete(pod)) => {
                if let Some(key) = key_of(&pod.metadata) {
                    node.policy.update(|e| e.remove_pod(&key));
                }
            }
            Err(e) => tracing::warn!(error = %e, "pod watch for NetworkPolicy failed; retrying"),
        }
    }
}
