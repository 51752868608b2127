//! The configuration as the cluster holds it: the `eni-config` ConfigMap
//! (preferred to its file mount, which kubelet refreshes only every minute
//! or so) and the node-level override — the ConfigMap named by the node's
//! `terway-config` label, an RFC 7396 merge patch. Both apply live through
//! the [`ConfigWatcher`], which keeps restart-only settings at their running
//! values and refuses a bad change while the last good config stays in force.

use super::{Cluster, Notice, ENI_CONFIG_KEY, ENI_CONFIG_MAP, NODE_CONFIG_LABEL};
use crate::daemon::Node;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node as KubeNode};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use std::sync::Arc;
use terway_config::{ConfigWatcher, ReloadEvent};

/// Watches `eni-config` and the node's label until the task is aborted.
pub async fn watch(node: Arc<Node>, cluster: Arc<Cluster>, watcher: Arc<ConfigWatcher>) {
    let base = tokio::spawn(watch_base(cluster.clone(), watcher.clone()));
    let nodes = Api::<KubeNode>::all(cluster.client());
    let config = watcher::Config::default().fields(&format!("metadata.name={}", cluster.options.node_name));
    let mut stream = watcher::watcher(nodes, config)
        .backoff(super::ApiBackoff::default())
        .boxed();
    let mut current: Option<String> = None;
    let mut override_task: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(event) = stream.next().await {
        let label = match event {
            Ok(Event::Apply(n) | Event::InitApply(n)) => n
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(NODE_CONFIG_LABEL))
                .cloned(),
            Ok(Event::Delete(_)) => None,
            Ok(Event::Init | Event::InitDone) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "node watch failed; retrying");
                continue;
            }
        };
        if label == current {
            continue;
        }
        if let Some(task) = override_task.take() {
            task.abort();
        }
        match &label {
            Some(name) => {
                tracing::info!(configmap = %name, "node label {NODE_CONFIG_LABEL} names an override");
                override_task = Some(tokio::spawn(watch_override(
                    cluster.clone(),
                    watcher.clone(),
                    name.clone(),
                )));
            }
            None => {
                tracing::info!("node label {NODE_CONFIG_LABEL} removed; no node override");
                watcher.set_node_override(None);
            }
        }
        current = label;
        node.wake.notify_one();
    }
    base.abort();
}

fn configmap_watch(cluster: &Cluster, name: &str) -> impl futures::Stream<Item = watcher::Result<Event<ConfigMap>>> {
    let api = Api::<ConfigMap>::namespaced(cluster.client(), &cluster.options.namespace);
    watcher::watcher(api, watcher::Config::default().fields(&format!("metadata.name={name}")))
        .backoff(super::ApiBackoff::default())
}

/// `eni-config` → the watcher's base; deleted → back to the file.
async fn watch_base(cluster: Arc<Cluster>, watcher: Arc<ConfigWatcher>) {
    let origin = format!("ConfigMap {}/{ENI_CONFIG_MAP}", cluster.options.namespace);
    let mut stream = configmap_watch(&cluster, ENI_CONFIG_MAP).boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(cm) | Event::InitApply(cm)) => match cm.data.as_ref().and_then(|d| d.get(ENI_CONFIG_KEY)) {
                Some(text) => {
                    watcher.set_api_base(Some((format!("{origin} key {ENI_CONFIG_KEY}"), text.clone())));
                }
                None => config_error(
                    &cluster,
                    format!("{origin} has no key {ENI_CONFIG_KEY}; the configuration in force is kept"),
                ),
            },
            Ok(Event::Delete(_)) => {
                tracing::warn!("{origin} deleted; using the mounted file");
                watcher.set_api_base(None);
            }
            Ok(Event::Init | Event::InitDone) => {}
            Err(e) => tracing::warn!(error = %e, "{origin} watch failed; retrying"),
        }
    }
}

/// The node's override ConfigMap → the watcher's node override.
async fn watch_override(cluster: Arc<Cluster>, watcher: Arc<ConfigWatcher>, name: String) {
    let origin = format!("ConfigMap {}/{name}", cluster.options.namespace);
    let mut stream = configmap_watch(&cluster, &name).boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(cm) | Event::InitApply(cm)) => {
                let Some(text) = cm.data.as_ref().and_then(|d| d.get(ENI_CONFIG_KEY)) else {
                    config_error(
                        &cluster,
                        format!("{origin} (named by node label {NODE_CONFIG_LABEL}) has no key {ENI_CONFIG_KEY}"),
                    );
                    continue;
                };
                match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(patch) if patch.is_object() => {
                        watcher.set_node_override(Some(patch));
                    }
                    Ok(_) => config_error(
                        &cluster,
                        format!("{origin} key {ENI_CONFIG_KEY}: a merge patch must be a JSON object"),
                    ),
                    Err(e) => config_error(&cluster, format!("{origin} key {ENI_CONFIG_KEY} is not JSON: {e}")),
                }
            }
            Ok(Event::Delete(_)) => {
                tracing::warn!("{origin} deleted; no node override");
                watcher.set_node_override(None);
            }
            Ok(Event::Init | Event::InitDone) => {}
            Err(e) => tracing::warn!(error = %e, "{origin} watch failed; retrying"),
        }
    }
}

fn config_error(cluster: &Cluster, message: String) {
    cluster.notify(Notice::NodeEvent {
        warning: true,
        reason: "ConfigError",
        message,
    });
}

/// Turns what each reload did into node Events (and re-publishes capacity).
pub async fn report_rejections(cluster: Arc<Cluster>, watcher: Arc<ConfigWatcher>) {
    let mut events = watcher.events();
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let notice = match event {
            ReloadEvent::Rejected { message, .. } => Notice::NodeEvent {
                warning: true,
                reason: "ConfigError",
                message: format!("configuration refused, the last good one stays in force: {message}"),
            },
            ReloadEvent::RestartRequired { fields } => Notice::NodeEvent {
                warning: true,
                reason: "ConfigRestartRequired",
                message: format!(
                    "these settings change only when terwayd restarts: {}",
                    fields.join(", ")
                ),
            },
            ReloadEvent::Applied { changed } => {
                cluster.status_changed.notify_one();
                Notice::NodeEvent {
                    warning: false,
                    reason: "ConfigApplied",
                    message: format!("configuration change in force: {}", changed.join(", ")),
                }
            }
        };
        cluster.notify(notice);
    }
}
