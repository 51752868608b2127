//! terwayd's Kubernetes integration end to end: the real kube-rs client
//! against an API server running in the test (list, watch with
//! resourceVersion and bookmarks, patch, events), the cloud being the
//! emulator. No root needed: IPAM only, no datapath.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use terway_cloud::emulator::{Emulator, Scenario, DEFAULT_ZONE};
use terway_node::cluster::ClusterOptions;
use terway_node::cni::exchange;
use terway_node::cni::protocol::{PodRequest, Reply, Request};
use terway_node::daemon::NodeOptions;
use terway_node::service::{self, Running};
use terway_tests::kube_api::FakeApiServer;

const NODE: &str = "node-1";
const NS: &str = "kube-system";

fn eni_conf(em: &Emulator, vswitch: &str, extra: &str) -> String {
    let pool = format!(r#", "max_pool_size": 5, "min_pool_size": 2 {extra}"#);
    terway_tests::eni_conf(&em.url(), &[vswitch], &pool)
}

fn seed(api: &FakeApiServer, conf: &str) {
    api.put(
        "nodes",
        json!({"metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
               "status": {"conditions": [{"type": "Ready", "status": "True"}], "capacity": {"pods": "110"}}}),
    );
    api.put(
        "configmaps",
        json!({"metadata": {"name": "eni-config", "namespace": NS}, "data": {"eni_conf": conf}}),
    );
}

fn put_pod(api: &FakeApiServer, name: &str, annotations: Value) {
    api.put(
        "pods",
        json!({"metadata": {"name": name, "namespace": "default", "annotations": annotations},
               "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "app"}]},
               "status": {"phase": "Running"}}),
    );
}

async fn start(api: &FakeApiServer, dir: &Path, conf: &str, gc_period: Duration) -> Running {
    std::fs::write(dir.join("eni_conf"), conf).unwrap();
    let mut cluster = ClusterOptions::new(api.kube_config(), NODE, NS);
    cluster.gc_period = gc_period;
    cluster.status_period = Duration::from_millis(500);
    let options = NodeOptions {
        add_deadline: Duration::from_secs(20),
        socket_path: Some(dir.join("eni.socket")),
        ledger_path: Some(dir.join("ledger")),
        metrics_address: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        cluster: Some(cluster),
        ..Default::default()
    };
    service::start(dir.join("eni_conf"), None, options).await.unwrap()
}

async fn call(socket: &Path, request: Request) -> Reply {
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || exchange(&socket, &request, Duration::from_secs(60)).unwrap())
        .await
        .unwrap()
}

async fn add(running: &Running, name: &str) -> String {
    let request = PodRequest::new(
        "default",
        name,
        &format!("{name}-sandbox"),
        &format!("/var/run/netns/{name}"),
    );
    match call(&running.node.socket_path(), Request::Add(request)).await {
        Reply::Ok { network: Some(n) } => n.ipv4.trim_end_matches("/32").to_owned(),
        other => panic!("ADD {name}: {other:?}"),
    }
}

/// Polls `what` for up to 30 s.
async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Event with this reason about an object, if one was written.
fn find_event(api: &FakeApiServer, kind: &str, name: &str, reason: &str) -> Option<Value> {
    api.events_about(kind, name).into_iter().find(|e| e["reason"] == reason)
}

fn condition(api: &FakeApiServer) -> Option<Value> {
    let node = api.get("nodes", "", NODE)?;
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "SufficientIP")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_pod_ips_events_and_node_capacity() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let api = FakeApiServer::start().await;
    let conf = eni_conf(&em, "vsw-large0000000001", "");
    seed(&api, &conf);
    put_pod(
        &api,
        "bad-bandwidth",
        json!({"k8s.aliyun.com/ingress-bandwidth": "10Q"}),
    );
    put_pod(&api, "shaped", json!({"kubernetes.io/ingress-bandwidth": "10M"}));
    let dir = tempfile::tempdir().unwrap();
    let running = start(&api, dir.path(), &conf, Duration::from_secs(3600)).await;

    // a malformed annotation: an Event naming it and its value, and the pod still gets its network
    let ip = add(&running, "bad-bandwidth").await;
    let event = eventually("the ParseFailed event", || {
        find_event(&api, "Pod", "bad-bandwidth", "ParseFailed")
    })
    .await;
    let message = event["message"].as_str().unwrap();
    assert!(
        message.contains("k8s.aliyun.com/ingress-bandwidth") && message.contains("10Q"),
        "{message}"
    );
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["source"]["component"], "terwayd");
    let record = running.node.ledger.snapshot().pods["default/bad-bandwidth"].clone();
    assert_eq!(record.settings.ingress_bps, 0, "the bad setting is left out");

    // the pod IP annotation
    eventually("the pod-ips annotation", || {
        let pod = api.get("pods", "default", "bad-bandwidth")?;
        (pod["metadata"]["annotations"]["k8s.aliyun.com/pod-ips"] == ip.as_str()).then_some(())
    })
    .await;

    // a good annotation shapes the pod: 10M is 10 Mbit/s
    add(&running, "shaped").await;
    let record = running.node.ledger.snapshot().pods["default/shaped"].clone();
    assert_eq!(record.settings.ingress_bps, 10_000_000);

    // the node's capacity: ecs.g6.2xlarge, (4 − 1) × 10
    eventually("the max-available-ip annotation", || {
        let node = api.get("nodes", "", NODE)?;
        (node["metadata"]["annotations"]["k8s.aliyun.com/max-available-ip"] == "30").then_some(())
    })
    .await;
    let sufficient = eventually("the SufficientIP condition", || condition(&api)).await;
    assert_eq!(sufficient["status"], "True", "{sufficient}");
    assert_eq!(sufficient["reason"], "SufficientIP");
    // kubelet's own condition is kept by the strategic merge
    let node = api.get("nodes", "", NODE).unwrap();
    assert!(node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Ready"));
    // shared mode: no exclusive ENIs to offer
    assert_eq!(node["status"]["capacity"]["aliyun/eni"], "0");
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_while_terwayd_was_down_is_collected_after_restart() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let api = FakeApiServer::start().await;
    let conf = eni_conf(&em, "vsw-large0000000001", "");
    seed(&api, &conf);
    for name in ["stays", "goes"] {
        put_pod(&api, name, json!({}));
    }
    let dir = tempfile::tempdir().unwrap();
    let running = start(&api, dir.path(), &conf, Duration::from_secs(3600)).await;
    let kept = add(&running, "stays").await;
    let freed = add(&running, "goes").await;
    running.stop();
    drop(running);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // while terwayd is down the pod is deleted, and kubelet's DEL never reaches it
    api.delete("pods", "default", "goes");
    let running = start(&api, dir.path(), &conf, Duration::from_secs(3600)).await;
    eventually("the vanished pod's address to be given back", || {
        let s = running.node.ledger.snapshot();
        (!s.pods.contains_key("default/goes")).then_some(())
    })
    .await;
    let s = running.node.ledger.snapshot();
    assert!(s.pods.contains_key("default/stays"), "a live pod keeps its address");
    assert_eq!(s.pods["default/stays"].ips[0].to_string(), kept);
    let state = s.ips.get(&freed.parse().unwrap()).map(|r| r.state.name());
    assert!(matches!(state, None | Some("idle" | "cooling")), "{freed}: {state:?}");
    // double-checked with an uncached GET before the release
    assert!(
        api.requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/namespaces/default/pods/goes")),
        "no GET confirmed the pod was gone"
    );
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_changes_and_the_node_override_apply_live() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let api = FakeApiServer::start().await;
    let conf = eni_conf(&em, "vsw-large0000000001", "");
    seed(&api, &conf);
    let dir = tempfile::tempdir().unwrap();
    let running = start(&api, dir.path(), &conf, Duration::from_secs(3600)).await;
    assert_eq!(running.node.config().max_pool_size, 5);

    // the cluster-wide ConfigMap changes: in force without a restart (the file is untouched)
    let changed = eni_conf(&em, "vsw-large0000000001", r#", "max_pool_size": 8"#);
    api.put(
        "configmaps",
        json!({"metadata": {"name": "eni-config", "namespace": NS}, "data": {"eni_conf": changed}}),
    );
    eventually("max_pool_size 8 from the ConfigMap", || {
        (running.node.config().max_pool_size == 8).then_some(())
    })
    .await;

    // a node override: label terway-config names a ConfigMap holding a merge patch
    api.put(
        "configmaps",
        json!({"metadata": {"name": "eni-config-node1", "namespace": NS},
               "data": {"eni_conf": r#"{"max_pool_size": 7, "min_pool_size": 1}"#}}),
    );
    let mut node = api.get("nodes", "", NODE).unwrap();
    node["metadata"]["labels"]["terway-config"] = json!("eni-config-node1");
    api.put("nodes", node);
    eventually("the node override merged", || {
        let c = running.node.config();
        (c.max_pool_size == 7 && c.min_pool_size == 1).then_some(())
    })
    .await;
    // the base's other settings still hold
    assert_eq!(
        running.node.config().vswitches_in_zone(DEFAULT_ZONE),
        ["vsw-large0000000001"]
    );
    // and the capacity is re-published when the config changes
    let capped = eni_conf(&em, "vsw-large0000000001", r#", "max_pool_size": 8, "max_eni": 2"#);
    api.put(
        "configmaps",
        json!({"metadata": {"name": "eni-config", "namespace": NS}, "data": {"eni_conf": capped}}),
    );
    eventually("max-available-ip 20 after max_eni 2", || {
        let node = api.get("nodes", "", NODE)?;
        (node["metadata"]["annotations"]["k8s.aliyun.com/max-available-ip"] == "20").then_some(())
    })
    .await;

    // a broken override: a ConfigError Event on the node, the good config stays in force
    api.put(
        "configmaps",
        json!({"metadata": {"name": "eni-config-node1", "namespace": NS},
               "data": {"eni_conf": r#"{"max_pool_size": -3}"#}}),
    );
    let event = eventually("the ConfigError event", || {
        find_event(&api, "Node", NODE, "ConfigError")
    })
    .await;
    assert!(event["message"].as_str().unwrap().contains("max_pool_size"), "{event}");
    assert_eq!(running.node.config().max_pool_size, 7);

    // the label removed: the override goes
    let mut node = api.get("nodes", "", NODE).unwrap();
    node["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("terway-config");
    api.put("nodes", node);
    eventually("the override dropped", || {
        (running.node.config().max_pool_size == 8).then_some(())
    })
    .await;
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_not_enough_becomes_an_event_and_the_condition_turns_false() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let api = FakeApiServer::start().await;
    let conf = eni_conf(
        &em,
        "vsw-small0000000001",
        r#", "max_pool_size": 0, "min_pool_size": 0"#,
    );
    seed(&api, &conf);
    let dir = tempfile::tempdir().unwrap();
    let mut running_opt = Some(start(&api, dir.path(), &conf, Duration::from_secs(3600)).await);
    let running = running_opt.as_ref().unwrap();
    let socket = running.node.socket_path();
    // the /28 serves 12 pods; the 13th finds the vSwitch exhausted
    for i in 0..13 {
        let name = format!("pod-{i}");
        put_pod(&api, &name, json!({}));
        let request = PodRequest::new("default", &name, &format!("c-{i}"), &format!("/var/run/netns/{name}"));
        let reply = call(&socket, Request::Add(request)).await;
        if i == 12 {
            assert!(matches!(reply, Reply::Error { code: 11, .. }), "{reply:?}");
        }
    }
    let event = eventually("the IpNotEnough event", || {
        find_event(&api, "Node", NODE, "IpNotEnough")
    })
    .await;
    let message = event["message"].as_str().unwrap();
    assert!(
        message.contains("vsw-small0000000001") && message.contains("InvalidVSwitchId.IpNotEnough"),
        "{message}"
    );
    eventually("SufficientIP False", || {
        let c = condition(&api)?;
        (c["status"] == "False" && c["reason"] == "InsufficientIP").then_some(())
    })
    .await;
    let failed = eventually("the pod's AllocIPFailed event", || {
        find_event(&api, "Pod", "pod-12", "AllocIPFailed")
    })
    .await;
    assert!(
        failed["message"].as_str().unwrap().contains("vsw-small0000000001"),
        "{failed}"
    );
    running_opt.take().unwrap().stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_watch_recovers_when_it_breaks() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let api = FakeApiServer::start().await;
    let conf = eni_conf(&em, "vsw-large0000000001", "");
    seed(&api, &conf);
    for name in ["a", "b", "c"] {
        put_pod(&api, name, json!({}));
    }
    let dir = tempfile::tempdir().unwrap();
    // no periodic GC: only the watch can notice deletions
    let running = start(&api, dir.path(), &conf, Duration::from_secs(3600)).await;
    for name in ["a", "b", "c"] {
        add(&running, name).await;
    }
    let gone = |name: &str| {
        !running
            .node
            .ledger
            .snapshot()
            .pods
            .contains_key(&format!("default/{name}"))
    };

    // a plain deletion is seen through the watch
    api.delete("pods", "default", "a");
    eventually("pod a collected", || gone("a").then_some(())).await;

    // the watch breaks and its history is compacted: the resume gets 410 Gone,
    // the client lists again, and a deletion made meanwhile is found
    // (once terwayd's own pod-ips patches are in, so no later event lets the watch resume)
    eventually("every pod annotated", || {
        ["b", "c"]
            .iter()
            .all(|n| {
                api.get("pods", "default", n).unwrap()["metadata"]["annotations"]["k8s.aliyun.com/pod-ips"].is_string()
            })
            .then_some(())
    })
    .await;
    api.compact();
    api.delete("pods", "default", "b");
    eventually("pod b collected after the relist", || gone("b").then_some(())).await;
    let pod_requests: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?"))
        .collect();
    let lists = pod_requests.iter().filter(|r| !r.contains("watch=true")).count();
    assert!(lists >= 2, "the 410 made the client list again: {pod_requests:#?}");
    assert!(
        pod_requests
            .iter()
            .any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true")),
        "{pod_requests:#?}"
    );

    // the API server is unreachable for a while
    api.set_unavailable(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    api.delete("pods", "default", "c");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!gone("c"), "nothing can be confirmed while the API server is down");
    api.set_unavailable(false);
    eventually("pod c collected once the API server is back", || {
        gone("c").then_some(())
    })
    .await;
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_api_outage_is_over_within_seconds_and_a_stuck_patch_holds_nothing_back() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let api = FakeApiServer::start().await;
    let conf = eni_conf(&em, "vsw-large0000000001", "");
    seed(&api, &conf);
    for name in ["a", "stuck", "late"] {
        put_pod(&api, name, json!({}));
    }
    let dir = tempfile::tempdir().unwrap();
    // no periodic GC: only the watch can notice deletions
    let running = start(&api, dir.path(), &conf, Duration::from_secs(3600)).await;
    let annotated = |name: &str| {
        api.get("pods", "default", name).unwrap()["metadata"]["annotations"]["k8s.aliyun.com/pod-ips"].is_string()
    };
    add(&running, "a").await;
    eventually("pod a annotated", || annotated("a").then_some(())).await;
    // the API server never answers the patch of one pod
    api.set_hanging(Some("PATCH /api/v1/namespaces/default/pods/stuck"));
    add(&running, "stuck").await;

    // a long outage: long enough for any backoff to reach its ceiling
    api.set_unavailable(true);
    let outage = Duration::from_secs(12);
    tokio::time::sleep(outage / 2).await;
    // meanwhile a pod is added (its patch waits for the API server) and one is deleted
    add(&running, "late").await;
    api.delete("pods", "default", "a");
    tokio::time::sleep(outage / 2).await;
    let patches_before = api.requests().len();
    api.set_unavailable(false);
    let back = Instant::now();
    eventually("the late pod's pod-ips patch to land", || {
        annotated("late").then_some(())
    })
    .await;
    let patched_after = back.elapsed();
    eventually("pod a collected through the resumed watch", || {
        (!running.node.ledger.snapshot().pods.contains_key("default/a")).then_some(())
    })
    .await;
    let watch_after = back.elapsed();
    println!(
        "after a {}s outage: the pending patch landed {} ms and the watch saw a deletion {} ms after the API server returned ({} requests since)",
        outage.as_secs(),
        patched_after.as_millis(),
        watch_after.as_millis(),
        api.requests().len() - patches_before
    );
    // a liveness bound, generous for a shared machine; the old client took minutes
    assert!(watch_after < Duration::from_secs(10), "{watch_after:?}");
    assert!(!annotated("stuck"), "that patch is still stuck");
    api.set_hanging(None);
    eventually("the stuck patch lands once the API server answers it", || {
        annotated("stuck").then_some(())
    })
    .await;
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_eni_mode_publishes_the_eni_resource() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let api = FakeApiServer::start().await;
    let conf = eni_conf(
        &em,
        "vsw-large0000000001",
        r#", "datapath_mode": "exclusive_eni", "max_pool_size": 1, "min_pool_size": 0"#,
    );
    seed(&api, &conf);
    let dir = tempfile::tempdir().unwrap();
    let running = start(&api, dir.path(), &conf, Duration::from_secs(3600)).await;
    eventually("aliyun/eni in the node's capacity", || {
        let node = api.get("nodes", "", NODE)?;
        (node["status"]["capacity"]["aliyun/eni"] == "3" && node["status"]["allocatable"]["aliyun/eni"] == "3")
            .then_some(())
    })
    .await;
    let node = api.get("nodes", "", NODE).unwrap();
    assert_eq!(node["metadata"]["annotations"]["k8s.aliyun.com/max-available-ip"], "3");
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_refusal_becomes_an_alloc_ip_failed_event_with_its_code() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let api = FakeApiServer::start().await;
    // a security group that does not exist: ENI creation is refused, not retried
    let conf = eni_conf(
        &em,
        "vsw-large0000000001",
        r#", "security_group": "sg-doesnotexist00001", "min_pool_size": 1"#,
    );
    seed(&api, &conf);
    let dir = tempfile::tempdir().unwrap();
    let running = start(&api, dir.path(), &conf, Duration::from_secs(3600)).await;
    let event = eventually("the node's AllocIPFailed event", || {
        find_event(&api, "Node", NODE, "AllocIPFailed")
    })
    .await;
    let message = event["message"].as_str().unwrap();
    assert!(
        message.contains("CreateNetworkInterface") && message.contains("InvalidSecurityGroupId.NotFound"),
        "{message}"
    );
    // the reconciler retries with backoff: repeats count up the one Event instead of piling up new ones
    eventually("the Event's count to go up", || {
        let same: Vec<Value> = api
            .events_about("Node", NODE)
            .into_iter()
            .filter(|e| e["reason"] == "AllocIPFailed")
            .collect();
        (same.len() == 1 && same[0]["count"].as_u64() >= Some(2)).then_some(())
    })
    .await;
    // the API server expires Events (TTL): the next repeat writes a new one
    let old = find_event(&api, "Node", NODE, "AllocIPFailed").unwrap();
    let old_name = old["metadata"]["name"].as_str().unwrap().to_owned();
    api.delete("events", old["metadata"]["namespace"].as_str().unwrap(), &old_name);
    eventually("a new Event after the old one expired", || {
        find_event(&api, "Node", NODE, "AllocIPFailed").filter(|e| e["metadata"]["name"] != old_name.as_str())
    })
    .await;
    // terwayd names itself to the API server (audit logs, priority and fairness)
    let agents = api.user_agents();
    assert!(
        !agents.is_empty() && agents.iter().all(|a| a.starts_with("terwayd/")),
        "{agents:?}"
    );
    running.stop();
}

/// With no `service_cidr` configured, the Service CIDR comes from
/// kube-system/kubeadm-config (as upstream reads it); a configured one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_cidr_comes_from_kubeadm_config_when_unset() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let api = FakeApiServer::start().await;
    let conf = eni_conf(&em, "vsw-large0000000001", "");
    seed(&api, &conf);
    api.put(
        "configmaps",
        json!({"metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
               "data": {"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nnetworking:\n  dnsDomain: cluster.local\n  podSubnet: 172.20.0.0/16\n  serviceSubnet: 10.96.0.0/12,fd00::/108\n"}}),
    );
    let dir = tempfile::tempdir().unwrap();
    let running = start(&api, dir.path(), &conf, Duration::from_secs(600)).await;
    let cidr = eventually("the Service CIDR from kubeadm-config", || running.node.service_cidr()).await;
    assert_eq!(cidr.to_string(), "10.96.0.0/12");
    assert!(
        api.requests().iter().any(|r| r.contains("kubeadm-config")),
        "{:?}",
        api.requests()
    );
    running.shutdown().await;

    // a configured service_cidr is used as it is
    let conf = eni_conf(&em, "vsw-large0000000001", r#", "service_cidr": "172.21.0.0/20""#);
    seed(&api, &conf);
    let dir = tempfile::tempdir().unwrap();
    let running = start(&api, dir.path(), &conf, Duration::from_secs(600)).await;
    assert_eq!(running.node.service_cidr().unwrap().to_string(), "172.21.0.0/20");
    running.shutdown().await;
}
