//! The seam between the node service and a cluster: pod facts in, notices
//! out. [`Cluster`](super::Cluster) is the Kubernetes implementation; with
//! no bridge (standalone mode, systemd) pods have no annotations and notices
//! are only logged. Tests put their own pod facts behind it.

use super::{Notice, PodMeta};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

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
