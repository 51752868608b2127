//! The seam between the node service and a cluster: pod facts in, notices
//! out, and how to reach a Kubernetes cluster. [`Cluster`](crate::cluster::Cluster)
//! is the Kubernetes implementation; with no bridge (standalone mode,
//! systemd) pods have no annotations and notices are only logged. Tests put
//! their own pod facts behind it. The node service depends on this module,
//! never on the Kubernetes code itself.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Pod annotation asking for an exclusive ENI.
pub const POD_ENI_ANNOTATION: &str = "k8s.aliyun.com/pod-eni";

/// How terwayd reaches the cluster.
#[derive(Clone)]
pub struct ClusterOptions {
    pub kube: kube::Config,
    /// This node's name (the DaemonSet passes `spec.nodeName` as `NODE_NAME`).
    pub node_name: String,
    /// Where `eni-config` and the node override ConfigMaps live (`POD_NAMESPACE`).
    pub namespace: String,
    /// How often addresses of vanished pods are looked for, besides pod deletions.
    pub gc_period: Duration,
    /// How often the node's condition and capacity are re-published.
    pub status_period: Duration,
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the kube config carries credentials: only its address is shown
        f.debug_struct("ClusterOptions")
            .field("api_server", &self.kube.cluster_url.to_string())
            .field("node_name", &self.node_name)
            .field("namespace", &self.namespace)
            .field("gc_period", &self.gc_period)
            .field("status_period", &self.status_period)
            .finish()
    }
}

impl ClusterOptions {
    pub fn new(kube: kube::Config, node_name: &str, namespace: &str) -> Self {
        Self {
            kube,
            node_name: node_name.into(),
            namespace: namespace.into(),
            gc_period: Duration::from_secs(60),
            status_period: Duration::from_secs(30),
        }
    }
}

/// What the node service asks to be told to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    PodEvent {
        namespace: String,
        name: String,
        warning: bool,
        reason: &'static str,
        message: String,
    },
    NodeEvent {
        warning: bool,
        reason: &'static str,
        message: String,
    },
    /// A Warning on a NetworkPolicy, Kubernetes' or Calico's (a field that
    /// cannot be enforced as written). `namespace` "" for a cluster-wide object.
    PolicyEvent {
        kind: &'static str,
        api_version: &'static str,
        namespace: String,
        name: String,
        uid: String,
        reason: &'static str,
        message: String,
    },
    /// The pod's addresses, for its `k8s.aliyun.com/pod-ips` annotation.
    PodIps {
        namespace: String,
        name: String,
        ips: Vec<String>,
    },
}

/// What terwayd knows of a pod from its object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub annotations: BTreeMap<String, String>,
    /// Its labels (which NetworkPolicies select it).
    pub labels: BTreeMap<String, String>,
    /// `Succeeded` or `Failed`: its sandbox is gone, its address may go too.
    pub finished: bool,
}

/// A future the bridge returns (boxed: the bridge is used as a trait object).
pub type BridgeFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait ClusterBridge: Send + Sync + std::fmt::Debug {
    /// What the cluster says of a pod (its uid and annotations), waiting at
    /// most `timeout` for an answer; `None` when it cannot be had.
    fn pod_meta<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        timeout: Duration,
    ) -> BridgeFuture<'a, Option<PodMeta>>;

    /// Queues a notice (an Event, an annotation); never waits.
    fn tell(&self, notice: Notice);

    /// The node's capacity or condition may have changed: publish again.
    fn status_changed(&self) {}

    /// Who this node is to the cluster (`terway-cli status`).
    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Pods whose facts are fixed up front: for tests, and for runtimes that
/// pass no cluster at all but want a pod's settings anyway.
#[derive(Debug, Default)]
pub struct StaticPods {
    pods: std::sync::RwLock<std::collections::HashMap<String, PodMeta>>,
    told: std::sync::Mutex<Vec<Notice>>,
}

impl StaticPods {
    /// Sets the annotations of `namespace/name`.
    pub fn annotate(&self, namespace: &str, name: &str, annotations: &[(&str, &str)]) {
        let meta = PodMeta {
            annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..PodMeta::default()
        };
        self.pods
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(format!("{namespace}/{name}"), meta);
    }

    /// The notices told so far.
    pub fn told(&self) -> Vec<Notice> {
        self.told
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ClusterBridge for StaticPods {
    fn pod_meta<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        _timeout: Duration,
    ) -> BridgeFuture<'a, Option<PodMeta>> {
        let meta = self
            .pods
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&format!("{namespace}/{name}"))
            .cloned();
        Box::pin(async move { meta })
    }

    fn tell(&self, notice: Notice) {
        self.told
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(notice);
    }
}
