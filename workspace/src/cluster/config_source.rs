//! The configuration as the cluster holds it: the `eni-config` ConfigMap
//! (preferred to its file mount, which kubelet refreshes only every minute
//! or so) and the node-level override — the ConfigMap named by the node's
//! `terway-config` label, an RFC 7396 merge patch. Both apply live through
//! the [`ConfigWatcher`], which keeps restart-only settings at their running
//! values and refuses a bad change while the last good config stays in force.
//! Where the configuration names no Service CIDR, it is read once from
//! kube-system/kubeadm-config, as upstream does.

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

/// Where kubeadm keeps the cluster's configuration (upstream reads the
/// Service CIDR from it when `service_cidr` is unset).
pub const KUBEADM_CONFIG_NAMESPACE: &str = "kube-system";
pub const KUBEADM_CONFIG_MAP: &str = "kubeadm-config";
const KUBEADM_CONFIG_KEY: &str = "ClusterConfiguration";
/// Attempts at reading kubeadm-config while the API server fails (a missing
/// ConfigMap or key is an answer, not a failure).
const KUBEADM_CONFIG_ATTEMPTS: usize = 10;

/// The IPv4 part of `networking.serviceSubnet` in kubeadm's
/// ClusterConfiguration (`"<v4>[,<v6>]"`); `Ok(None)` when it names none.
pub fn kubeadm_service_subnet(cluster_configuration: &str) -> Result<Option<ipnet::Ipv4Net>, String> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(cluster_configuration).map_err(|e| format!("{KUBEADM_CONFIG_KEY} is not YAML: {e}"))?;
    let Some(subnet) = doc.get("networking").and_then(|n| n.get("serviceSubnet")) else {
        return Ok(None);
    };
    let text = subnet
        .as_str()
        .ok_or_else(|| format!("networking.serviceSubnet is not a string: {subnet:?}"))?;
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V4(v4)) => return Ok(Some(v4.trunc())),
            Ok(ipnet::IpNet::V6(_)) => {}
            Err(_) => return Err(format!("networking.serviceSubnet {part:?} is not a CIDR")),
        }
    }
    Ok(None)
}

/// With no `service_cidr` configured, reads the Service CIDR from
/// kube-system/kubeadm-config once (retrying while the API server fails)
/// and puts it in force for pods set up from now on (the datapath agent
/// brings pods set up before in line). A cluster without it (not made by
/// kubeadm) gets a warning: set `service_cidr`.
pub async fn discover_service_cidr(node: Arc<Node>, cluster: Arc<Cluster>) {
    if node.config().service_cidr.ipv4.is_some() {
        return;
    }
    let origin = format!("ConfigMap {KUBEADM_CONFIG_NAMESPACE}/{KUBEADM_CONFIG_MAP}");
    let api = Api::<ConfigMap>::namespaced(cluster.client(), KUBEADM_CONFIG_NAMESPACE);
    let mut backoff = super::ApiBackoff::default();
    for attempt in 1..=KUBEADM_CONFIG_ATTEMPTS {
        cluster.throttle().await;
        match api.get_opt(KUBEADM_CONFIG_MAP).await {
            Ok(found) => {
                let text = found.as_ref().and_then(|cm| cm.data.as_ref()?.get(KUBEADM_CONFIG_KEY));
                let result = text.map(|t| kubeadm_service_subnet(t)).transpose().map(Option::flatten);
                match result {
                    Ok(Some(cidr)) => {
                        let _ = node.cluster_service_cidr.set(cidr);
                        tracing::info!(service_cidr = %cidr, "service_cidr is unset; using {origin}'s networking.serviceSubnet");
                    }
                    Ok(None) => tracing::warn!(
                        "service_cidr is unset and {origin} names no IPv4 networking.serviceSubnet: pods in exclusive-ENI or ipvlan mode get no Service route of their own; set service_cidr"
                    ),
                    Err(e) => config_error(&cluster, format!("service_cidr is unset and {origin} cannot be read: {e}; set service_cidr")),
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "reading {origin} for the Service CIDR failed; retrying");
                tokio::time::sleep(backoff.next().unwrap_or(super::ApiBackoff::MAX)).await;
            }
        }
    }
    tracing::warn!("{origin} could not be read; pods get no Service route of their own until service_cidr is set");
}

#[cfg(test)]
mod tests {
    use super::kubeadm_service_subnet;

    #[test]
    fn kubeadm_service_subnet_takes_the_ipv4_part() {
        let single = "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nnetworking:\n  dnsDomain: cluster.local\n  podSubnet: 172.20.0.0/16\n  serviceSubnet: 192.168.0.0/16\n";
        assert_eq!(
            kubeadm_service_subnet(single).unwrap(),
            Some("192.168.0.0/16".parse().unwrap())
        );
        let dual = "networking:\n  serviceSubnet: fd00::/108, 10.96.0.0/12\n";
        assert_eq!(
            kubeadm_service_subnet(dual).unwrap(),
            Some("10.96.0.0/12".parse().unwrap())
        );
        assert_eq!(
            kubeadm_service_subnet("networking:\n  podSubnet: 10.0.0.0/8\n").unwrap(),
            None
        );
        assert_eq!(
            kubeadm_service_subnet("networking:\n  serviceSubnet: fd00::/108\n").unwrap(),
            None
        );
        let bad = kubeadm_service_subnet("networking:\n  serviceSubnet: 10.96.0.0/40\n").unwrap_err();
        assert!(bad.contains("10.96.0.0/40"), "{bad}");
        assert!(kubeadm_service_subnet("networking: [").is_err());
    }
}
