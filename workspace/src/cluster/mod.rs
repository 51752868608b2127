//! Kubernetes integration, when terwayd runs in a cluster (kube-rs).
//!
//! - [`pods`]: watches the pods of this node, for their annotations
//!   (bandwidth, exclusive ENI) and to give back the addresses of pods that
//!   are gone (double-checked with an uncached GET first).
//! - [`config_source`]: watches the `eni-config` ConfigMap and the node's
//!   `terway-config` label (a per-node merge patch), applied live.
//! - [`policy_watch`]: NetworkPolicies, namespaces and pods cluster-wide
//!   for the policy engine, while `disable_network_policy` is off (live).
//! - [`publish`]: what terwayd tells the cluster — the node's capacity
//!   annotation and `aliyun/eni` resource, the `SufficientIP` condition,
//!   the pod IP annotation, and Events on pods and on the node.
//!
//! Nothing on the pod path waits for the API server: notices go through a
//! bounded queue, and a pod whose object cannot be read still gets its
//! network (without the settings its annotations would have given).
//! Standalone mode (systemd, no cluster) simply has no [`Cluster`].

pub mod config_source;
pub mod pods;
pub mod policy_watch;
pub mod publish;

pub use crate::bridge::{ClusterOptions, Notice, PodMeta, POD_ENI_ANNOTATION};
use crate::daemon::Node;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use terway_cloud::ratelimit::RateLimiter;
use terway_config::ConfigWatcher;
use tokio::sync::{mpsc, Notify};

/// Pod annotation carrying the pod's addresses.
pub const POD_IPS_ANNOTATION: &str = "k8s.aliyun.com/pod-ips";
/// Node annotation: how many pods this node can give an address to.
pub const MAX_AVAILABLE_IP_ANNOTATION: &str = "k8s.aliyun.com/max-available-ip";
/// Extended resource counting exclusive ENIs (exclusive-ENI mode).
pub const ENI_RESOURCE: &str = "aliyun/eni";
/// Node label naming the ConfigMap with this node's merge patch.
pub const NODE_CONFIG_LABEL: &str = "terway-config";
/// The cluster-wide configuration ConfigMap and its key.
pub const ENI_CONFIG_MAP: &str = "eni-config";
pub const ENI_CONFIG_KEY: &str = "eni_conf";
pub const SUFFICIENT_IP_CONDITION: &str = "SufficientIP";
/// `source.component` of the Events terwayd writes.
pub const EVENT_COMPONENT: &str = "terwayd";

/// Every Kubernetes API access terwayd makes: (API group, resource, verbs,
/// namespaced to the config namespace). deploy/rbac.yaml grants exactly
/// this; a test checks the two agree.
pub const API_ACCESS: &[(&str, &str, &[&str], bool)] = &[
    // the pod watch; the uncached GET before GC; the pod-ips annotation
    ("", "pods", &["get", "list", "watch", "patch"], false),
    // the node's label (override); its capacity annotation
    ("", "nodes", &["list", "watch", "patch"], false),
    // aliyun/eni capacity and the SufficientIP condition
    ("", "nodes/status", &["patch"], false),
    // Events, and bumping the count of a repeated one
    ("", "events", &["create", "patch"], false),
    // eni-config and the node override ConfigMaps; kubeadm-config (in
    // kube-system) for the Service CIDR when service_cidr is unset
    ("", "configmaps", &["get", "list", "watch"], true),
    // NetworkPolicy: the policies, and the namespaces their selectors match
    // (the pods come from the pod watch above, cluster-wide)
    ("networking.k8s.io", "networkpolicies", &["list", "watch"], false),
    ("", "namespaces", &["list", "watch"], false),
    // Calico's policies (deploy/calico-crds.yaml where Calico is absent),
    // and service accounts for its serviceAccountSelector
    ("crd.projectcalico.org", "networkpolicies", &["list", "watch"], false),
    (
        "crd.projectcalico.org",
        "globalnetworkpolicies",
        &["list", "watch"],
        false,
    ),
    ("", "serviceaccounts", &["list", "watch"], false),
];

/// The cluster side of a running terwayd.
pub struct Cluster {
    client: kube::Client,
    pub options: ClusterOptions,
    /// `kube_client_qps` / `kube_client_burst`, applied to every request terwayd makes.
    limiter: RateLimiter,
    /// This node's pods by `namespace/name`, from the watch.
    pods: RwLock<HashMap<String, PodMeta>>,
    /// The watch has listed every pod once (GC needs the whole picture).
    pods_synced: AtomicBool,
    notices: mpsc::Sender<Notice>,
    /// Wakes the node-status publisher (capacity or condition may have changed).
    pub status_changed: Notify,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // kube::Client has no Debug; its config may hold credentials anyway
        f.debug_struct("Cluster")
            .field("node_name", &self.options.node_name)
            .field("namespace", &self.options.namespace)
            .finish_non_exhaustive()
    }
}

/// How long a watch or a notice waits before trying the API server again:
/// from 200 ms, doubling to at most 2 s, jittered — so that after an outage
/// of any length the watches resume and pending writes land within seconds
/// of the API server's return.
#[derive(Debug, Clone)]
pub struct ApiBackoff {
    next: Duration,
}

impl ApiBackoff {
    pub const FIRST: Duration = Duration::from_millis(200);
    pub const MAX: Duration = Duration::from_secs(2);
}

impl Default for ApiBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for ApiBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (base * 2).min(Self::MAX);
        // ±25 %, so a fleet of nodes does not come back in lockstep
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        Some(base.mul_f64(jitter))
    }
}

impl kube::runtime::utils::Backoff for ApiBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Notices queued beyond this are dropped (and logged): Events are best effort.
const NOTICE_QUEUE: usize = 1024;

impl Cluster {
    /// Connects, registers with the node service and starts the watches and
    /// publishers. Returns the tasks (abort them to stop).
    pub async fn start(
        node: Arc<Node>,
        watcher: Arc<ConfigWatcher>,
        options: ClusterOptions,
    ) -> anyhow::Result<(Arc<Self>, Vec<tokio::task::JoinHandle<()>>)> {
        let mut kube_config = options.kube.clone();
        // audit logs and API priority and fairness attribute requests by it
        kube_config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_static(concat!("terwayd/", env!("CARGO_PKG_VERSION"))),
        ));
        // retries are ours (the watches' backoff, each notice's own): the
        // client's retry layer under them stretched recovery to minutes
        kube_config.default_retry = false;
        let client = kube::Client::try_from(kube_config)?;
        let config = node.config();
        let (notices, queue) = mpsc::channel(NOTICE_QUEUE);
        let cluster = Arc::new(Self {
            client,
            limiter: kube_limiter(config.kube_client_qps, config.kube_client_burst),
            options,
            pods: RwLock::new(HashMap::new()),
            pods_synced: AtomicBool::new(false),
            notices,
            status_changed: Notify::new(),
        });
        if node.bridge.set(cluster.clone()).is_err() {
            anyhow::bail!("the node service is already connected to a cluster");
        }
        tracing::info!(node = %cluster.options.node_name, namespace = %cluster.options.namespace, "Kubernetes integration on");
        let tasks = vec![
            tokio::spawn(pods::watch(node.clone(), cluster.clone())),
            tokio::spawn(pods::collect_periodically(node.clone(), cluster.clone())),
            tokio::spawn(config_source::watch(node.clone(), cluster.clone(), watcher.clone())),
            tokio::spawn(config_source::report_rejections(cluster.clone(), watcher.clone())),
            tokio::spawn(config_source::discover_service_cidr(node.clone(), cluster.clone())),
            tokio::spawn(publish::notices(cluster.clone(), queue)),
            tokio::spawn(publish::node_status(node.clone(), cluster.clone())),
            tokio::spawn(policy_watch::supervise(node, cluster.clone(), watcher.subscribe())),
        ];
        Ok((cluster, tasks))
    }

    /// Queues a notice; never waits.
    pub fn notify(&self, notice: Notice) {
        if let Err(e) = self.notices.try_send(notice) {
            tracing::warn!(error = %e, "Kubernetes notice queue full; notice dropped");
        }
    }

    pub(crate) fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Waits for the client-side rate limit before an API request.
    pub(crate) async fn throttle(&self) {
        self.limiter.acquire("kube").await;
    }

    /// The pod's metadata: from the watch, or (not seen yet) read from the
    /// API server within `timeout`. `None` when it cannot be had.
    pub async fn pod_meta(&self, namespace: &str, name: &str, timeout: Duration) -> Option<PodMeta> {
        if let Some(meta) = self.cached_pod(namespace, name) {
            return Some(meta);
        }
        match tokio::time::timeout(timeout, pods::get(self, namespace, name)).await {
            Ok(Ok(Some(pod))) => Some(pods::meta(&pod)),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "could not read the pod object; going on without its annotations");
                None
            }
            Err(_) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), "the API server did not answer in time; going on without the pod's annotations");
                None
            }
        }
    }

    pub(crate) fn cached_pod(&self, namespace: &str, name: &str) -> Option<PodMeta> {
        self.pods
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }
}

impl crate::bridge::ClusterBridge for Cluster {
    fn pod_meta<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        timeout: Duration,
    ) -> crate::bridge::BridgeFuture<'a, Option<PodMeta>> {
        Box::pin(Cluster::pod_meta(self, namespace, name, timeout))
    }

    fn tell(&self, notice: Notice) {
        self.notify(notice);
    }

    fn status_changed(&self) {
        self.status_changed.notify_one();
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"node_name": self.options.node_name, "namespace": self.options.namespace})
    }
}

/// The kube client's token bucket: `qps` a second, `burst` at once
/// (client-go's defaults, 5 and 10, when the config leaves them at 0).
fn kube_limiter(qps: f32, burst: u32) -> RateLimiter {
    let qps = if qps > 0.0 { f64::from(qps) } else { 5.0 };
    let burst = if burst > 0 { burst } else { 10 };
    RateLimiter::with_rate(qps, f64::from(burst))
}
