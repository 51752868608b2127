//! NetworkPolicy in terwayd end to end: the real kube-rs watches against an
//! API server in the test, the emulator hot-plugging ENIs into a simulated
//! node, ADD through the CNI socket, packets from the VPC to the pods.
//! Checks that ADD returns with the pod's rules in force, that a policy
//! change reaches the kernel, that the rules outlive a terwayd restart
//! untouched, that Calico policies (CRDs absent at first) are enforced and
//! refused with a Warning when they cannot be, and that
//! `disable_network_policy` removes watches and table live. Root only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use terway_cloud::emulator::{Emulator, Scenario};
use terway_datapath::netns::NetNs;
use terway_datapath::Datapath;
use terway_node::cluster::ClusterOptions;
use terway_node::cni::exchange;
use terway_node::cni::protocol::{PodRequest, Reply, Request};
use terway_node::daemon::NodeOptions;
use terway_node::service::{self, Running};
use terway_node::simulated_node::SimulatedNode;
use terway_tests::kube_api::FakeApiServer;

const NODE: &str = "node-1";
const VPC_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

fn reaches(from: &Path, at: &Path, to: Ipv4Addr, port: u16) -> bool {
    let listener = NetNs::open(at)
        .unwrap()
        .enter(|| TcpListener::bind((to, port)))
        .unwrap()
        .unwrap();
    // from VPC_ADDR itself (the policy names it), not the gateway address routing would pick
    let socket = NetNs::open(from)
        .unwrap()
        .enter(|| socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None))
        .unwrap()
        .unwrap();
    socket.bind(&std::net::SocketAddr::from((VPC_ADDR, 0)).into()).unwrap();
    let ok = socket
        .connect_timeout(
            &std::net::SocketAddr::from((to, port)).into(),
            Duration::from_millis(500),
        )
        .is_ok();
    drop(listener);
    ok
}

fn table(node_ns: &Path) -> Option<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", node_ns.display()))
        .args(["nft", "list", "table", "inet", "terway"])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn conf(em: &Emulator, disable: bool) -> String {
    let own = format!(r#", "max_pool_size": 5, "min_pool_size": 2, "disable_network_policy": {disable}"#);
    terway_tests::eni_conf(&em.url(), &["vsw-large0000000001"], &own)
}

async fn start(api: &FakeApiServer, sim: &SimulatedNode, dir: &Path) -> Running {
    let dp = Arc::new(Datapath::new(NetNs::open(&sim.node_ns_path()).unwrap()).unwrap());
    let options = NodeOptions {
        datapath: Some(dp),
        add_deadline: Duration::from_secs(20),
        socket_path: Some(dir.join("eni.socket")),
        ledger_path: Some(dir.join("ledger")),
        metrics_address: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        cluster: Some(ClusterOptions::new(api.kube_config(), NODE, "kube-system")),
        ..Default::default()
    };
    service::start(dir.join("eni_conf"), None, options).await.unwrap()
}

async fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !probe() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn put_policy(api: &FakeApiServer, cidr: &str) {
    api.put(
        "networkpolicies",
        json!({"metadata": {"namespace": "np", "name": "guard"},
               "spec": {"podSelector": {"matchLabels": {"app": "guarded"}}, "policyTypes": ["Ingress"],
                        "ingress": [{"from": [{"ipBlock": {"cidr": cidr}}]}]}}),
    );
}

/// Pod namespaces, removed on drop (also when an assertion fails).
struct PodNamespaces(Vec<String>);

impl Drop for PodNamespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_in_force_at_add_across_restart_and_switched_off_live() {
    if std::fs::read_to_string("/proc/self/status").is_ok_and(|s| !s.lines().any(|l| l.starts_with("Uid:\t0\t"))) {
        eprintln!(
            "SKIPPED policy_in_force_at_add_across_restart_and_switched_off_live: needs root for network namespaces"
        );
        return;
    }
    if let Some(why) = terway_tests::netpol_lab::unavailable() {
        eprintln!("SKIPPED policy_in_force_at_add_across_restart_and_switched_off_live: {why}");
        return;
    }
    let tag = format!("p{}", std::process::id() % 100_000);
    let sim = Arc::new(SimulatedNode::new(&tag).unwrap());
    sim.add_vpc_address(&format!("{VPC_ADDR}/32")).unwrap();
    let em = Emulator::start(Scenario::default()).await.unwrap();
    em.add_hotplug_hook(sim.clone());
    let api = FakeApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("eni_conf"), conf(&em, false)).unwrap();
    api.put(
        "nodes",
        json!({"metadata": {"name": NODE}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
    );
    api.put(
        "configmaps",
        json!({"metadata": {"name": "eni-config", "namespace": "kube-system"}, "data": {"eni_conf": conf(&em, false)}}),
    );
    api.put("namespaces", json!({"metadata": {"name": "np"}}));
    for (name, app) in [("guarded", "guarded"), ("open", "open")] {
        api.put(
            "pods",
            json!({"metadata": {"namespace": "np", "name": name, "labels": {"app": app}},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "i"}]}, "status": {"phase": "Pending"}}),
        );
    }
    put_policy(&api, "10.250.0.0/16");
    // no Calico CRDs at first: Kubernetes policies are enforced all the same
    api.set_group_missing("crd.projectcalico.org", true);
    let (node_ns, vpc_ns) = (sim.node_ns_path(), PathBuf::from(format!("/run/netns/{}", sim.vpc_ns)));
    let running = start(&api, &sim, dir.path()).await;

    // ADD: the reply comes after the pod's rules are in the kernel
    let mut ips = Vec::new();
    let mut pod_namespaces = PodNamespaces(Vec::new());
    for name in ["guarded", "open"] {
        let netns = format!("trw{tag}{name}");
        let _ = Command::new("ip").args(["netns", "add", &netns]).status();
        pod_namespaces.0.push(netns.clone());
        let request = PodRequest::new("np", name, &format!("{name}-sandbox"), &format!("/run/netns/{netns}"));
        let socket = running.node.socket_path();
        let reply = tokio::task::spawn_blocking(move || {
            exchange(&socket, &Request::Add(request), Duration::from_secs(60)).unwrap()
        })
        .await
        .unwrap();
        let Reply::Ok { network: Some(n) } = reply else {
            panic!("ADD {name}: {reply:?}")
        };
        let ip: Ipv4Addr = n.ipv4.trim_end_matches("/32").parse().unwrap();
        let eni = running.node.ledger.eni_of_ip(&ip.into()).unwrap();
        sim.route_to_pod(&ip.to_string(), &eni.mac).unwrap();
        ips.push(ip);
    }
    let pod_path = |i: usize| PathBuf::from(format!("/run/netns/{}", pod_namespaces.0[i]));
    assert!(
        !reaches(&vpc_ns, &pod_path(0), ips[0], 8080),
        "the guarded pod is isolated as soon as ADD returned"
    );
    assert!(
        reaches(&vpc_ns, &pod_path(1), ips[1], 8080),
        "a pod no policy selects is open"
    );
    let listing = table(&node_ns).expect("the table exists");
    assert!(listing.contains("np/guard ingress[0]"), "{listing}");

    // a restart leaves the kernel's rules alone, and the new terwayd takes them over
    running.stop();
    drop(running);
    assert!(
        !reaches(&vpc_ns, &pod_path(0), ips[0], 8081),
        "still isolated while terwayd is down"
    );
    api.set_group_missing("crd.projectcalico.org", false);
    let running = start(&api, &sim, dir.path()).await;
    eventually("policy ready after the restart", || running.node.policy.stats().ready).await;
    assert!(
        !reaches(&vpc_ns, &pod_path(0), ips[0], 8082),
        "still isolated after the restart"
    );

    // a policy change reaches the kernel
    put_policy(&api, &format!("{VPC_ADDR}/32"));
    let t0 = Instant::now();
    eventually("the new policy in force", || {
        reaches(&vpc_ns, &pod_path(0), ips[0], 8083)
    })
    .await;
    eprintln!(
        "policy update in force within {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let metrics = terway_tests::samples(&terway_tests::http_get(running.metrics_address.unwrap(), "/metrics").1);
    assert_eq!(metrics["terway_policy_enforced"], 1.0, "{metrics:?}");
    assert!(metrics["terway_policy_rules"] >= 2.0, "{metrics:?}");
    assert_eq!(metrics["terway_policy_policies"], 1.0, "{metrics:?}");
    assert!(
        metrics["terway_policy_sync_duration_seconds_count"] >= 1.0,
        "{metrics:?}"
    );
    assert_eq!(metrics["terway_policy_sync_errors_total"], 0.0, "{metrics:?}");
    assert!(
        metrics[r#"terway_policy_dropped_packets_total{namespace="np",pod="guarded"}"#] >= 1.0,
        "the probe refused after the restart is counted against the pod, and the count outlives the policy change: {metrics:?}"
    );
    let status = terway_node::daemon::inspect::answer(&running.node, terway_node::cni::protocol::Inspect::Status);
    assert_eq!(status["network_policy"]["enforced"], true, "{status}");
    assert!(
        status["network_policy"]["state"]["rules"].as_u64().unwrap() >= 2,
        "{status}"
    );

    // Calico: a GlobalNetworkPolicy ordered first denies the VPC address to the open pod
    api.put(
        "globalnetworkpolicies.crd.projectcalico.org",
        json!({"metadata": {"name": "quarantine"}, "spec": {"order": 10, "selector": "app == 'open'", "ingress": [
            {"action": "Deny", "source": {"nets": [format!("{VPC_ADDR}/32")]}}, {"action": "Allow"}]}}),
    );
    eventually("the Calico policy in force", || {
        !reaches(&vpc_ns, &pod_path(1), ips[1], 8090)
    })
    .await;
    // one with a field that cannot be enforced is refused whole, with a Warning naming the field
    api.put(
        "globalnetworkpolicies.crd.projectcalico.org",
        json!({"metadata": {"name": "l7"}, "spec": {"selector": "app == 'guarded'", "ingress": [
            {"action": "Allow", "http": {"methods": ["GET"]}}]}}),
    );
    eventually("a Warning on the refused Calico policy", || {
        api.events_about("GlobalNetworkPolicy", "l7").iter().any(|e| {
            e["type"] == "Warning"
                && e["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("spec.ingress[0].http")
        })
    })
    .await;
    assert!(
        reaches(&vpc_ns, &pod_path(0), ips[0], 8091),
        "the refused policy changed nothing"
    );
    api.delete("globalnetworkpolicies.crd.projectcalico.org", "", "quarantine");
    eventually("the Calico policy gone", || {
        reaches(&vpc_ns, &pod_path(1), ips[1], 8092)
    })
    .await;

    // switched off live: the watches stop and the table goes
    put_policy(&api, "10.250.0.0/16");
    eventually("isolated again", || !reaches(&vpc_ns, &pod_path(0), ips[0], 8084)).await;
    api.put(
        "configmaps",
        json!({"metadata": {"name": "eni-config", "namespace": "kube-system"}, "data": {"eni_conf": conf(&em, true)}}),
    );
    eventually("the table removed", || table(&node_ns).is_none()).await;
    assert!(
        reaches(&vpc_ns, &pod_path(0), ips[0], 8085),
        "no policy once switched off"
    );
    let watched = |api: &FakeApiServer| api.requests().iter().filter(|r| r.contains("networkpolicies")).count();
    running.stop();
    drop(running);

    // started with it off: no NetworkPolicy request at all, no table
    std::fs::write(dir.path().join("eni_conf"), conf(&em, true)).unwrap();
    let before = watched(&api);
    let running = start(&api, &sim, dir.path()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        watched(&api),
        before,
        "no NetworkPolicy list or watch with disable_network_policy"
    );
    assert!(table(&node_ns).is_none());
    running.stop();
    drop(running);
}
