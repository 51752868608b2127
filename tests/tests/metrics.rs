//! `/metrics`, `/healthz` and `/readyz` scraped during an end-to-end run on
//! the emulator: every family is there, with values that agree with the
//! ledger, the cloud's answers and the requests made.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use terway_cloud::emulator::{Emulator, Scenario};
use terway_node::cni::exchange;
use terway_node::cni::protocol::{PodRequest, Reply, Request};
use terway_node::daemon::NodeOptions;
use terway_node::service;
use terway_tests::{http_get, samples};

fn sum(s: &BTreeMap<String, f64>, prefix: &str, must_contain: &[&str]) -> f64 {
    s.iter()
        .filter(|(k, _)| k.starts_with(prefix) && must_contain.iter().all(|m| k.contains(m)))
        .map(|(_, v)| v)
        .sum()
}

async fn call(socket: &Path, request: Request) -> Reply {
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || exchange(&socket, &request, Duration::from_secs(60)).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_is_scraped_with_sane_values() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // the /28 runs out during the run, so a vSwitch is set aside
    let conf = terway_tests::eni_conf(
        &em.url(),
        &["vsw-small0000000001", "vsw-large0000000001"],
        r#", "max_pool_size": 3, "min_pool_size": 0, "vswitch_selection_policy": "ordered""#,
    );
    std::fs::write(dir.path().join("eni_conf"), conf).unwrap();
    let options = NodeOptions {
        add_deadline: Duration::from_secs(5),
        socket_path: Some(dir.path().join("eni.socket")),
        ledger_path: Some(dir.path().join("ledger")),
        metrics_address: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..Default::default()
    };
    let running = service::start(dir.path().join("eni_conf"), None, options)
        .await
        .unwrap();
    let address = running.metrics_address.expect("metrics served");
    assert_eq!(http_get(address, "/healthz").0, 200);
    assert_eq!(http_get(address, "/readyz").0, 200);

    // ordered picks the large vSwitch first; take its room away so the small one serves and runs out
    em.take_addresses(
        "vsw-large0000000001",
        em.available_addresses("vsw-large0000000001").unwrap() as usize,
    )
    .unwrap();
    let socket = running.node.socket_path();
    let mut adds = Vec::new();
    for i in 0..12 {
        let socket = socket.clone();
        adds.push(tokio::spawn(async move {
            let request = PodRequest::new("default", &format!("pod-{i}"), &format!("c-{i}"), "/var/run/netns/x");
            call(&socket, Request::Add(request)).await
        }));
    }
    // a scrape while ADDs are under way
    let (status, during) = http_get(address, "/metrics");
    assert_eq!(status, 200);
    assert!(during.contains("# TYPE terway_pool_ips gauge"), "{during}");
    let mut served: Vec<PodRequest> = Vec::new();
    let mut refused = 0;
    for (i, a) in adds.into_iter().enumerate() {
        match a.await.unwrap() {
            Reply::Ok { network: Some(_) } => served.push(PodRequest::new(
                "default",
                &format!("pod-{i}"),
                &format!("c-{i}"),
                "/var/run/netns/x",
            )),
            _ => refused += 1,
        }
    }
    // more pods than the /28 holds: refused, and the vSwitch set aside
    for k in 0..5 {
        if !running.node.vswitches_set_aside().is_empty() && refused >= 1 {
            break;
        }
        let extra = PodRequest::new("default", &format!("extra-{k}"), &format!("e-{k}"), "/var/run/netns/x");
        match call(&socket, Request::Add(extra.clone())).await {
            Reply::Ok { network: Some(_) } => served.push(extra),
            _ => refused += 1,
        }
    }
    assert!(
        !running.node.vswitches_set_aside().is_empty(),
        "the /28 was never found exhausted"
    );
    assert!(refused >= 1);
    let del = served.pop().unwrap();
    assert_eq!(call(&socket, Request::Del(del)).await, Reply::Ok { network: None });

    let (_, text) = http_get(address, "/metrics");
    let s = samples(&text);
    let ledger = running.node.ledger.snapshot();

    // pool: per ENI and state, agreeing with the ledger
    let ips = sum(&s, "terway_pool_ips{", &[]);
    assert_eq!(ips as usize, ledger.ips.len(), "{text}");
    let bound = sum(&s, "terway_pool_ips{", &["state=\"bound\""]);
    assert_eq!(bound as usize, served.len());
    assert_eq!(ledger.pods.len(), served.len());
    for e in ledger.enis.values() {
        assert!(text.contains(&format!("eni=\"{}\"", e.id)), "ENI {} missing", e.id);
    }
    assert_eq!(
        sum(&s, "terway_enis{", &["status=\"in_use\""]) as usize,
        ledger.enis.len()
    );
    assert_eq!(s["terway_max_pods"], 30.0);

    // cloud API: calls, latency histogram consistent, the IpNotEnough counted by code
    assert!(s["terway_cloud_api_calls_total{action=\"AssignPrivateIpAddresses\"}"] >= 1.0);
    assert!(s["terway_cloud_api_calls_total{action=\"CreateNetworkInterface\"}"] >= 1.0);
    let count = s["terway_cloud_api_latency_seconds_count{action=\"DescribeNetworkInterfaces\"}"];
    let inf = s["terway_cloud_api_latency_seconds_bucket{action=\"DescribeNetworkInterfaces\",le=\"+Inf\"}"];
    assert!(count > 0.0 && count == inf);
    let first_bucket = s["terway_cloud_api_latency_seconds_bucket{action=\"DescribeNetworkInterfaces\",le=\"0.005\"}"];
    assert!(first_bucket <= count);
    assert!(s["terway_cloud_api_latency_seconds_sum{action=\"DescribeNetworkInterfaces\"}"] > 0.0);
    let not_enough = sum(
        &s,
        "terway_cloud_api_errors_total{",
        &["code=\"InvalidVSwitchId.IpNotEnough\""],
    );
    assert!(not_enough >= 1.0, "{text}");
    assert!(s
        .keys()
        .any(|k| k.starts_with("terway_cloud_rate_limit_wait_seconds_total{action=")));

    // CNI requests by command and result
    let add_ok = s["terway_cni_request_duration_seconds_count{command=\"ADD\",result=\"success\"}"];
    assert_eq!(
        add_ok as usize,
        served.len() + 1,
        "every ADD that succeeded (one pod deleted since)"
    );
    assert_eq!(
        s["terway_cni_request_duration_seconds_count{command=\"ADD\",result=\"error\"}"] as usize,
        refused
    );
    assert_eq!(
        s["terway_cni_request_duration_seconds_count{command=\"DEL\",result=\"success\"}"],
        1.0
    );

    // reconciler and vSwitches
    assert!(s["terway_reconcile_passes_total"] >= 1.0);
    assert!(s["terway_reconcile_duration_seconds_count"] >= 1.0);
    assert_eq!(s["terway_vswitches_set_aside"], 1.0);
    let left = s["terway_vswitch_set_aside_seconds{vswitch=\"vsw-small0000000001\"}"];
    assert!(left > 0.0 && left <= 600.0, "{left}");

    running.stop();
}
