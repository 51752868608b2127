//! NetworkPolicy figures (root: the tables live in network namespaces):
//! a full sync of 1,000 policies over 10,000 pods (most on other nodes),
//! the time from one pod label change to the rules being in force, the
//! memory of the policy caches at 10,000 pods, and TCP throughput between
//! two pods on different nodes with and without policy.
//!
//! `cargo bench -p terway-tests --bench netpol`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use terway_node::policy::model::{Labels, ObjectKey, PodInfo, Policy};
use terway_node::policy::nft::Nft;
use terway_node::policy::ruleset::LocalPod;
use terway_node::policy::Enforcer;
use terway_tests::netpol_lab::Lab;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

fn policy(ns: usize, i: usize) -> Policy {
    let spec = serde_json::json!({
        "podSelector": {"matchLabels": {"app": format!("app{}", i % 10)}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"role": format!("r{}", i % 7)}}},
                      {"namespaceSelector": {"matchLabels": {"team": format!("t{}", i % 5)}}, "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]}}],
             "ports": [{"port": 8080}, {"port": "http"}]},
            {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [format!("10.{}.0.0/16", i % 200)]}}]}
        ],
        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", i % 5)}}}], "ports": [{"port": "http"}, {"port": 53, "protocol": "UDP"}]}]
    });
    let np = serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": format!("ns{ns}"), "name": format!("p{i}")}, "spec": spec});
    Policy::from_k8s(&serde_json::from_value(np).unwrap()).unwrap()
}

fn pod(ns: usize, i: usize, node: usize) -> PodInfo {
    let ip: IpAddr = format!(
        "10.{}.{}.{}",
        1 + (ns * 100 + i) / 60_000,
        ((ns * 100 + i) / 250) % 240,
        1 + (ns * 100 + i) % 250
    )
    .parse()
    .unwrap();
    PodInfo {
        labels: labels(&[
            ("app", format!("app{}", i % 10)),
            ("role", format!("r{}", i % 7)),
            ("tier", ["web", "api", "db"][i % 3].to_owned()),
        ]),
        ips: vec![ip],
        node: format!("node-{node}"),
        host_network: false,
        host_ip: None,
        ports: vec![terway_node::policy::model::NamedPort {
            name: "http".into(),
            protocol: terway_node::policy::Protocol::Tcp,
            port: 8080,
        }],
        service_account: "default".into(),
    }
}

fn main() {
    if let Some(why) = terway_tests::netpol_lab::unavailable() {
        println!("SKIPPED netpol bench: {why}");
        return;
    }
    let node_ns = format!("tnpbench{}", std::process::id());
    std::process::Command::new("ip")
        .args(["netns", "add", &node_ns])
        .status()
        .unwrap();
    let _remove = RemoveNetns(node_ns.clone());
    let path = std::path::PathBuf::from(format!("/run/netns/{node_ns}"));

    // 10,000 pods in 100 namespaces, 1,000 policies; 100 pods on this node
    let rss0 = rss_kib();
    let mut enforcer = Enforcer::new(Nft::new(Some(&path)));
    let namespaces = (0..100)
        .map(|n| {
            (
                format!("ns{n}"),
                labels(&[
                    ("team", format!("t{}", n % 5)),
                    ("kubernetes.io/metadata.name", format!("ns{n}")),
                ]),
            )
        })
        .collect();
    let mut pods = std::collections::HashMap::new();
    for n in 0..100 {
        for i in 0..100 {
            pods.insert(
                ObjectKey::new(&format!("ns{n}"), &format!("pod{i}")),
                pod(n, i, usize::from(i != 0)),
            );
        }
    }
    let policies = (0..100)
        .flat_map(|n| (0..10).map(move |i| policy(n, n * 10 + i)))
        .map(|p| (p.key.clone(), p))
        .collect();
    let t0 = Instant::now();
    enforcer.replace_namespaces(namespaces);
    enforcer.replace_pods(pods.clone());
    enforcer.replace_policies(policies);
    for n in 0..100 {
        let key = ObjectKey::new(&format!("ns{n}"), &format!("pod{}", 0));
        let local = LocalPod {
            ifname: terway_datapath::names::host_veth_name(&key.namespace, &key.name, "eth0"),
            ips: pods[&key].ips.clone(),
        };
        enforcer.add_local(key, local, None, None);
    }
    enforcer.set_ready();
    let loaded = t0.elapsed();
    let rss_facts = rss_kib();
    let report = enforcer.sync().expect("full sync");
    let full = t0.elapsed();
    let rss1 = rss_kib();
    let stats = enforcer.stats();
    println!(
        "full sync: {} policies over {} pods ({} on this node): {:.0} ms (facts in {:.0} ms, nft transaction of {} lines); {} chains' rules {}, sets {}, set elements {}",
        stats.policies, stats.pods_known, stats.local_pods, full.as_secs_f64() * 1e3, loaded.as_secs_f64() * 1e3,
        report.script_lines, stats.isolated_pods, stats.rules, stats.sets, stats.set_elements
    );
    println!(
        "memory of the policy caches at {} pods: {:.1} MiB of facts, {:.1} MiB once the first sync compiled chains and sets and libnftables parsed the transaction (RSS {} → {} → {} KiB; target ≤ 50 MiB)",
        stats.pods_known,
        (rss_facts.saturating_sub(rss0)) as f64 / 1024.0,
        (rss1.saturating_sub(rss0)) as f64 / 1024.0,
        rss0,
        rss_facts,
        rss1
    );

    // one label change: a remote pod joins a selector local pods' rules use
    let mut took = Vec::new();
    let mut in_nft = Vec::new();
    for round in 0..60 {
        // the role the ingress rule of the policy selecting this namespace's local pod admits
        let ns = round % 100;
        let target = (ns * 10) % 7;
        let i = if target == 1 { 2 } else { 1 };
        let key = ObjectKey::new(&format!("ns{ns}"), &format!("pod{i}"));
        let mut info = pods[&key].clone();
        info.labels.insert("role".into(), format!("r{target}"));
        let t = Instant::now();
        enforcer.upsert_pod(key, info);
        let r = enforcer.sync().expect("sync");
        assert!(!r.unchanged && !r.full, "the change reaches the table as a delta");
        took.push(t.elapsed());
        in_nft.push(r.nft_took);
    }
    took.sort();
    in_nft.sort();
    println!(
        "one pod label change to rules in force: p50 {:.2} ms (of which nftables {:.2} ms, {}), p90 {:.2} ms, max {:.2} ms over {} changes (target ≤ 10 ms)",
        took[took.len() / 2].as_secs_f64() * 1e3,
        in_nft[in_nft.len() / 2].as_secs_f64() * 1e3,
        enforcer.nft().backend_name(),
        took[took.len() * 9 / 10].as_secs_f64() * 1e3,
        took[took.len() - 1].as_secs_f64() * 1e3,
        took.len()
    );
    let _ = enforcer.remove_table();
    drop(_remove);

    // throughput between two pods on two nodes, without and with policy on both
    let mut lab = Lab::new(&[("x".into(), "a".into(), 0), ("y".into(), "b".into(), 1)]).unwrap();
    let (a, b) = (lab.index("x/a").unwrap(), lab.index("y/b").unwrap());
    let policies = vec![
        policy_json(
            "y",
            serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}], "ports": [{"port": 5001}]}]}),
        ),
        policy_json(
            "x",
            serde_json::json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        ),
    ];
    let mut rates = (Vec::new(), Vec::new());
    for round in 0..10 {
        let with = round % 2 == 1;
        lab.set_policies(if with { policies.clone() } else { Vec::new() })
            .unwrap();
        let rate = throughput(&lab, a, b, Duration::from_millis(700));
        if with {
            rates.1.push(rate)
        } else {
            rates.0.push(rate)
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (without, with) = (median(&mut rates.0), median(&mut rates.1));
    println!(
        "TCP throughput x/a → y/b across nodes: without policy {:.2} Gbit/s, with policy {:.2} Gbit/s ({:+.1} %; target within 5 %)",
        without / 1e9 * 8.0,
        with / 1e9 * 8.0,
        (with / without - 1.0) * 100.0
    );
}

fn policy_json(ns: &str, spec: serde_json::Value) -> Policy {
    let np = serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": ns, "name": "bench"}, "spec": spec});
    Policy::from_k8s(&serde_json::from_value(np).unwrap()).unwrap()
}

/// Bytes a second from pod `a` to pod `b` over one TCP connection.
fn throughput(lab: &Lab, a: usize, b: usize, for_: Duration) -> f64 {
    let dst = std::net::SocketAddr::new(IpAddr::V4(lab.pods[b].ip), 5001);
    let listener = lab
        .pod_netns(b)
        .enter(|| std::net::TcpListener::bind(dst))
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    let mut client = lab
        .pod_netns(a)
        .enter(|| std::net::TcpStream::connect(dst))
        .unwrap()
        .unwrap();
    let buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    while t.elapsed() < for_ {
        client.write_all(&buf).unwrap();
    }
    drop(client);
    let total = server.join().unwrap();
    total as f64 / t.elapsed().as_secs_f64()
}

/// Removes a namespace on drop (also when the bench panics).
struct RemoveNetns(String);

impl Drop for RemoveNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}
