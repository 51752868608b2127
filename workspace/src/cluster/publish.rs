//! What terwayd tells the cluster: Events on pods and on the node, the pod
//! IP annotation, the node's capacity (annotation and, in exclusive-ENI
//! mode, the `aliyun/eni` extended resource) and its `SufficientIP`
//! condition. All best effort: a failure is logged and retried later, never
//! felt on the pod path.

use super::{
    ApiBackoff, Cluster, Notice, ENI_RESOURCE, EVENT_COMPONENT, MAX_AVAILABLE_IP_ANNOTATION, POD_IPS_ANNOTATION,
    SUFFICIENT_IP_CONDITION,
};
use crate::daemon::Node;
use k8s_openapi::api::core::v1::{Event, Node as KubeNode, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use terway_statestore::{EniStatus, IpState};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// A repeat of the same Event within this window bumps its count instead of
/// creating another object (as client-go's event correlator does).
const EVENT_AGGREGATION: Duration = Duration::from_secs(600);
/// The condition, capacity annotation and resource are re-published at
/// least this often, changed or not.
const CONDITION_HEARTBEAT: Duration = Duration::from_secs(300);

fn now() -> String {
    terway_cloud::utc::format(SystemTime::now())
}

/// An Event already written: repeats update it.
struct Written {
    name: String,
    count: u32,
    at: Instant,
}

/// Events written, by (object, reason, message).
type WrittenEvents = Mutex<HashMap<(String, &'static str, String), Written>>;

/// One write's bound: a request the API server never answers is given up
/// and tried again, instead of holding its object's later notices forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A worker with nothing to write for this long ends.
const WORKER_IDLE: Duration = Duration::from_secs(30);

/// Writes queued notices until the task is aborted. Each object (a pod,
/// the node, a policy) has its own worker, so notices about one object stay
/// in order while a write stuck on one object never holds back another's;
/// each write is retried with [`ApiBackoff`] until it lands (an Event until
/// it is older than the aggregation window).
pub async fn notices(cluster: Arc<Cluster>, mut queue: mpsc::Receiver<Notice>) {
    let written: Arc<WrittenEvents> = Arc::default();
    let mut workers: HashMap<String, mpsc::UnboundedSender<Notice>> = HashMap::new();
    // dropped with this task, which aborts every worker
    let mut running = JoinSet::new();
    while let Some(notice) = queue.recv().await {
        while running.try_join_next().is_some() {}
        workers.retain(|_, w| !w.is_closed());
        let object = object_of(&notice);
        let notice = match workers.get(&object) {
            Some(w) => match w.send(notice) {
                Ok(()) => continue,
                // the worker ended meanwhile: a new one takes it
                Err(mpsc::error::SendError(notice)) => notice,
            },
            None => notice,
        };
        let (worker, work) = mpsc::unbounded_channel();
        let _ = worker.send(notice);
        workers.insert(object, worker);
        running.spawn(object_worker(cluster.clone(), written.clone(), work));
        written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, w| w.at.elapsed() < EVENT_AGGREGATION);
    }
}

/// The object a notice is about: its notices are written in order.
fn object_of(notice: &Notice) -> String {
    match notice {
        Notice::PodEvent { namespace, name, .. } | Notice::PodIps { namespace, name, .. } => {
            format!("pod/{namespace}/{name}")
        }
        Notice::NodeEvent { .. } => "node".to_owned(),
        Notice::PolicyEvent {
            kind, namespace, name, ..
        } => format!("{kind}/{namespace}/{name}"),
    }
}

async fn object_worker(cluster: Arc<Cluster>, written: Arc<WrittenEvents>, mut work: mpsc::UnboundedReceiver<Notice>) {
    loop {
        let notice = match tokio::time::timeout(WORKER_IDLE, work.recv()).await {
            Ok(Some(notice)) => notice,
            Ok(None) => return,
            Err(_) => {
                // no more sends from here on; what is already queued is still written
                work.close();
                continue;
            }
        };
        deliver(&cluster, &written, &notice).await;
    }
}

/// Writes one notice, retrying what may succeed later.
async fn deliver(cluster: &Cluster, written: &WrittenEvents, notice: &Notice) {
    let started = Instant::now();
    let mut backoff = ApiBackoff::default();
    for attempt in 1.. {
        let why = match tokio::time::timeout(REQUEST_TIMEOUT, write(cluster, written, notice)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) if !worth_retrying(&e) => {
                tracing::warn!(error = %e, "telling the cluster failed");
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {REQUEST_TIMEOUT:?}"),
        };
        let is_event = !matches!(notice, Notice::PodIps { .. });
        if is_event && started.elapsed() >= EVENT_AGGREGATION {
            tracing::warn!(error = %why, attempts = attempt, "telling the cluster failed; the Event is dropped");
            return;
        }
        if attempt == 1 {
            tracing::warn!(error = %why, "telling the cluster failed; retrying");
        }
        tokio::time::sleep(backoff.next().unwrap_or(ApiBackoff::MAX)).await;
    }
}

/// A refusal the same request will get again (bad request, forbidden,
/// conflict) is not retried; throttling, timeouts and server errors are.
fn worth_retrying(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => !(400..500).contains(&status.code) || matches!(status.code, 408 | 429),
        kube::Error::SerdeError(_) => false,
        _ => true,
    }
}

async fn write(cluster: &Cluster, written: &WrittenEvents, notice: &Notice) -> Result<(), kube::Error> {
    match notice {
        Notice::PodEvent {
            namespace,
            name,
            warning,
            reason,
            message,
        } => {
            let uid = cluster.cached_pod(namespace, name).map(|m| m.uid).unwrap_or_default();
            let object = json!({"kind": "Pod", "apiVersion": "v1", "namespace": namespace, "name": name, "uid": uid});
            event(cluster, written, namespace, object, *warning, reason, message).await
        }
        Notice::NodeEvent {
            warning,
            reason,
            message,
        } => {
            // a node's Events live in `default`, as kubelet's do
            let name = &cluster.options.node_name;
            let object = json!({"kind": "Node", "apiVersion": "v1", "name": name, "uid": name});
            event(cluster, written, "default", object, *warning, reason, message).await
        }
        Notice::PolicyEvent {
            kind,
            api_version,
            namespace,
            name,
            uid,
            reason,
            message,
        } => {
            let mut object = json!({"kind": kind, "apiVersion": api_version, "name": name, "uid": uid});
            if !namespace.is_empty() {
                object["namespace"] = namespace.clone().into();
            }
            // a cluster-wide object's Events live in "default", as Kubernetes keeps them
            let at = if namespace.is_empty() {
                "default"
            } else {
                namespace.as_str()
            };
            event(cluster, written, at, object, true, reason, message).await
        }
        Notice::PodIps { namespace, name, ips } => pod_ips(cluster, namespace, name, ips).await,
    }
}

async fn event(
    cluster: &Cluster,
    written: &WrittenEvents,
    namespace: &str,
    object: serde_json::Value,
    warning: bool,
    reason: &'static str,
    message: &str,
) -> Result<(), kube::Error> {
    let api = Api::<Event>::namespaced(cluster.client(), namespace);
    let object_name = object["name"].as_str().unwrap_or_default().to_owned();
    let key = (format!("{namespace}/{object_name}"), reason, message.to_owned());
    let kind = if warning { "Warning" } else { "Normal" };
    tracing::info!(object = %key.0, reason, kind, message, "event");
    cluster.throttle().await;
    let repeat = written
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
        .map(|w| (w.name.clone(), w.count + 1));
    if let Some((name, count)) = repeat {
        let patch = json!({"count": count, "lastTimestamp": now()});
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                if let Some(w) = written.lock().unwrap_or_else(PoisonError::into_inner).get_mut(&key) {
                    w.count = count;
                    w.at = Instant::now();
                }
                return Ok(());
            }
            // the API server expired it (Event TTL) or someone deleted it: write it anew
            Err(kube::Error::Api(e)) if e.code == 404 => {
                written.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
            }
            Err(e) => return Err(e),
        }
    }
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("{object_name}.{stamp:x}");
    let body = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": object,
        "reason": reason,
        "message": message,
        "type": kind,
        "count": 1,
        "firstTimestamp": now(),
        "lastTimestamp": now(),
        "source": {"component": EVENT_COMPONENT, "host": cluster.options.node_name},
        "reportingComponent": EVENT_COMPONENT,
        "reportingInstance": cluster.options.node_name,
    });
    let event: Event = serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
    api.create(&PostParams::default(), &event).await?;
    written.lock().unwrap_or_else(PoisonError::into_inner).insert(
        key,
        Written {
            name,
            count: 1,
            at: Instant::now(),
        },
    );
    Ok(())
}

async fn pod_ips(cluster: &Cluster, namespace: &str, name: &str, ips: &[String]) -> Result<(), kube::Error> {
    let value = ips.join(",");
    let known = cluster
        .cached_pod(namespace, name)
        .and_then(|m| m.annotations.get(POD_IPS_ANNOTATION).cloned());
    if known.as_deref() == Some(value.as_str()) {
        return Ok(());
    }
    cluster.throttle().await;
    let patch = json!({"metadata": {"annotations": {POD_IPS_ANNOTATION: value}}});
    match Api::<Pod>::namespaced(cluster.client(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // the pod went away meanwhile: nothing to annotate
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether this node can give the next pod an address, and why.
pub fn sufficiency(node: &Node) -> (bool, String) {
    let s = node.ledger.snapshot();
    let config = node.config();
    let capacity = node.max_pods();
    let selector = node.vswitches.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let aside: Vec<String> = selector.set_aside_now().into_iter().map(|(v, _)| v).collect();
    let zone = config.vswitches_in_zone(&node.identity.zone_id);
    let zone: Vec<String> = if zone.is_empty() {
        vec![node.identity.vswitch_id.clone()]
    } else {
        zone.to_vec()
    };
    let all_aside = zone.iter().all(|v| selector.is_set_aside(v));
    drop(selector);
    if config.datapath_mode.is_exclusive() {
        let idle = s
            .enis
            .values()
            .filter(|e| e.status == EniStatus::InUse && e.owner.is_none())
            .count();
        let max = config.usable_secondary_enis(node.limits) as usize;
        let ok = idle > 0 || (s.enis.len() < max && !all_aside);
        return (
            ok,
            format!(
                "{idle} idle ENIs, {} of {max} ENIs in use; vSwitches set aside: [{}]",
                s.enis.len(),
                aside.join(", ")
            ),
        );
    }
    let idle = s.ips.values().filter(|r| r.state == IpState::Idle).count();
    let bound = s.ips.values().filter(|r| matches!(r.state, IpState::Bound(_))).count();
    let ok = idle > 0 || (bound < capacity as usize && !all_aside);
    (
        ok,
        format!(
            "{idle} idle addresses, {bound} of {capacity} bound; vSwitches set aside: [{}]",
            aside.join(", ")
        ),
    )
}

/// Publishes the node's capacity and condition on start, whenever they may
/// have changed, and every `status_period`.
pub async fn node_status(node: Arc<Node>, cluster: Arc<Cluster>) {
    let mut published_max: Option<u32> = None;
    let mut published_enis: Option<u32> = None;
    let mut condition: Option<(bool, String, Instant)> = None;
    let mut retry = ApiBackoff::default();
    loop {
        let mut failed = false;
        if condition
            .as_ref()
            .is_some_and(|(_, _, at)| at.elapsed() >= CONDITION_HEARTBEAT)
        {
            // with the heartbeat, everything again: someone (a kubelet restart, an operator) may have changed it
            published_max = None;
            published_enis = None;
        }
        let config = node.config();
        let max = node.max_pods();
        if published_max != Some(max) {
            if publish_max_pods(&cluster, max).await {
                published_max = Some(max);
            } else {
                failed = true;
            }
        }
        let enis = if config.datapath_mode.is_exclusive() {
            config.usable_secondary_enis(node.limits)
        } else {
            0
        };
        if published_enis != Some(enis) {
            if publish_eni_resource(&cluster, enis).await {
                published_enis = Some(enis);
            } else {
                failed = true;
            }
        }
        let (ok, message) = sufficiency(&node);
        let due = condition
            .as_ref()
            .is_none_or(|(was, _, at)| *was != ok || at.elapsed() >= CONDITION_HEARTBEAT);
        if due {
            let transition = condition.as_ref().is_none_or(|(was, _, _)| *was != ok);
            if publish_condition(&cluster, ok, &message, transition).await {
                condition = Some((ok, message, Instant::now()));
            } else {
                failed = true;
            }
        }
        // a failed patch is tried again within seconds, not a status period later
        let wait = if failed {
            retry.next().unwrap_or(ApiBackoff::MAX)
        } else {
            kube::runtime::utils::Backoff::reset(&mut retry);
            cluster.options.status_period
        };
        tokio::select! {
            _ = cluster.status_changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn patch_node(cluster: &Cluster, patch: serde_json::Value, status: bool, strategic: bool) -> bool {
    tokio::time::timeout(REQUEST_TIMEOUT, try_patch_node(cluster, patch, status, strategic))
        .await
        .unwrap_or_else(|_| {
            tracing::warn!(node = %cluster.options.node_name, "patching the node: no answer within {REQUEST_TIMEOUT:?}; retried later");
            false
        })
}

async fn try_patch_node(cluster: &Cluster, patch: serde_json::Value, status: bool, strategic: bool) -> bool {
    cluster.throttle().await;
    let api = Api::<KubeNode>::all(cluster.client());
    let name = &cluster.options.node_name;
    let params = PatchParams::default();
    let result = match (status, strategic) {
        (true, true) => api.patch_status(name, &params, &Patch::Strategic(&patch)).await,
        (true, false) => api.patch_status(name, &params, &Patch::Merge(&patch)).await,
        (false, _) => api.patch(name, &params, &Patch::Merge(&patch)).await,
    };
    match result {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(node = %name, error = %e, "patching the node failed; retried later");
            false
        }
    }
}

async fn publish_max_pods(cluster: &Cluster, max: u32) -> bool {
    tracing::info!(max_available_ip = max, "publishing the node's capacity");
    patch_node(
        cluster,
        json!({"metadata": {"annotations": {MAX_AVAILABLE_IP_ANNOTATION: max.to_string()}}}),
        false,
        false,
    )
    .await
}

/// `aliyun/eni` in the node's capacity and allocatable: the exclusive ENIs
/// pods may request (0 when the node shares ENIs).
async fn publish_eni_resource(cluster: &Cluster, enis: u32) -> bool {
    let n = enis.to_string();
    patch_node(
        cluster,
        json!({"status": {"capacity": {ENI_RESOURCE: n}, "allocatable": {ENI_RESOURCE: n}}}),
        true,
        false,
    )
    .await
}

async fn publish_condition(cluster: &Cluster, ok: bool, message: &str, transition: bool) -> bool {
    let stamp = now();
    let mut condition = json!({
        "type": SUFFICIENT_IP_CONDITION,
        "status": if ok { "True" } else { "False" },
        "reason": if ok { "SufficientIP" } else { "InsufficientIP" },
        "message": message,
        "lastHeartbeatTime": stamp,
    });
    if transition {
        condition["lastTransitionTime"] = json!(stamp);
    }
    // strategic merge: the conditions list merges by `type`, kubelet's stay
    patch_node(cluster, json!({"status": {"conditions": [condition]}}), true, true).await
}
