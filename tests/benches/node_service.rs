//! The node service's figures, in one run:
//! 1. CNI ADD and DEL from a warm pool through the real `terway` binary (root:
//!    datapath in a simulated node), beside Debian's ptp + host-local doing
//!    the same pods;
//! 2. a cold burst of 50 pods with 100 ms of emulator latency per API call:
//!    wall time and mutating calls beside the critical-path ideal;
//! 3. the cloud calls a warm pool makes while pods come and go within its
//!    bounds; the plugin binary's size and exec-to-reply time;
//! 4. terwayd's resident memory holding 250 pods, and how long a `/metrics`
//!    scrape takes then.
//!
//! `cargo bench -p terway-tests --bench node_service`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use terway_cloud::emulator::*;
use terway_node::cni::exchange;
use terway_node::cni::protocol::{PodRequest, Reply, Request};
use terway_node::daemon::NodeOptions;
use terway_node::service;

fn eni_conf(dir: &Path, url: &str, extra: &str) -> PathBuf {
    let path = dir.join("eni_conf");
    let own = format!(
        r#", "service_cidr": "172.21.0.0/20", "ip_pool_sync_period": "2s", "ledger_path": "{}", "socket_path": "{}" {extra}"#,
        dir.join("ledger").display(),
        dir.join("eni.socket").display()
    );
    std::fs::write(&path, terway_tests::eni_conf(url, &["vsw-large0000000001"], &own))
        .unwrap_or_else(|e| panic!("{e}"));
    path
}

fn pod(i: usize) -> PodRequest {
    PodRequest::new(
        "bench",
        &format!("pod-{i}"),
        &format!("b{i:05}"),
        &format!("/var/run/netns/b-{i}"),
    )
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn exec_cni(plugin: &Path, node_ns: Option<&str>, env: &[(&str, String)], conf: &str) -> bool {
    let mut cmd = match node_ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{ns}")).arg(plugin);
            c
        }
        None => Command::new(plugin),
    };
    cmd.env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = match cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => return false,
    };
    child.stdin.take().map(|mut s| s.write_all(conf.as_bytes()));
    child.wait().is_ok_and(|s| s.success())
}

fn warm_pool_through_the_plugin(rt: &tokio::runtime::Runtime) {
    const PODS: usize = 50;
    let sim = Arc::new(
        terway_node::simulated_node::SimulatedNode::new(&format!("b{}", std::process::id() % 10_000))
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let mut scenario = Scenario::default();
    scenario.instances[0].instance_type = "ecs.g6.8xlarge".into();
    let em = rt.block_on(Emulator::start(scenario)).unwrap_or_else(|e| panic!("{e}"));
    em.add_hotplug_hook(sim.clone());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let conf_path = eni_conf(dir.path(), &em.url(), r#", "max_pool_size": 60, "min_pool_size": 55"#);
    let dp = rt
        .block_on(async {
            terway_datapath::Datapath::new(terway_datapath::NetNs::open(&sim.node_ns_path())?).map(Arc::new)
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let running = rt
        .block_on(async {
            let dp = dp.clone();
            service::start(
                conf_path,
                None,
                NodeOptions {
                    datapath: Some(dp),
                    add_deadline: Duration::from_secs(60),
                    ..Default::default()
                },
            )
            .await
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // warm: wait until the pool holds enough idle addresses
    rt.block_on(async {
        for _ in 0..300 {
            if terway_tests::idle_addresses(&running.node.ledger) >= PODS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let socket = running.node.socket_path();
    let terway_conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"terway","type":"terway","socket":"{}"}}"#,
        socket.display()
    );
    let namespaces = Namespaces(
        (0..PODS)
            .map(|i| format!("trwb{}p{i}", std::process::id() % 10_000))
            .collect(),
    );
    for ns in namespaces.0.iter() {
        let _ = Command::new("ip").args(["netns", "add", ns]).status();
    }
    let env = |cmd: &str, i: usize, ns: &str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.into()),
            ("CNI_CONTAINERID", format!("b{i:05}")),
            ("CNI_NETNS", format!("/var/run/netns/{ns}")),
            ("CNI_IFNAME", "eth0".into()),
            (
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{i}"),
            ),
            ("CNI_PATH", "/usr/lib/cni".into()),
            ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ]
    };
    let binary = terway_tests::binary("terway");
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    for (i, ns) in namespaces.0.iter().enumerate() {
        let t = Instant::now();
        assert!(
            exec_cni(&binary, Some(&sim.node_ns), &env("ADD", i, ns), &terway_conf),
            "terway ADD {i}"
        );
        adds.push(t.elapsed());
    }
    for (i, ns) in namespaces.0.iter().enumerate() {
        let t = Instant::now();
        assert!(
            exec_cni(&binary, Some(&sim.node_ns), &env("DEL", i, ns), &terway_conf),
            "terway DEL {i}"
        );
        dels.push(t.elapsed());
    }
    adds.sort();
    dels.sort();
    // the pods' links go in the background; ptp uses the same namespaces next
    rt.block_on(dp.released_links_deleted());
    println!(
        "warm pool, {PODS} pods through the plugin binary, each plugin exec'd through nsenter into the simulated node:"
    );
    println!(
        "  terway-rs        ADD p50 {:>6.2} ms  p99 {:>6.2} ms   DEL p50 {:>6.2} ms  p99 {:>6.2} ms",
        pct(&adds, 0.5),
        pct(&adds, 0.99),
        pct(&dels, 0.5),
        pct(&dels, 0.99)
    );
    let ptp = ["/usr/lib/cni/ptp", "/opt/cni/bin/ptp"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if let Some(ptp) = ptp {
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"bench","type":"ptp","ipMasq":false,"ipam":{{"type":"host-local","dataDir":"{}","subnet":"10.123.0.0/24"}}}}"#,
            dir.path().join("host-local").display()
        );
        let (mut padds, mut pdels) = (Vec::new(), Vec::new());
        for (i, ns) in namespaces.0.iter().enumerate() {
            let t = Instant::now();
            assert!(
                exec_cni(Path::new(ptp), Some(&sim.node_ns), &env("ADD", i, ns), &conf),
                "ptp ADD {i}"
            );
            padds.push(t.elapsed());
        }
        for (i, ns) in namespaces.0.iter().enumerate() {
            let t = Instant::now();
            assert!(
                exec_cni(Path::new(ptp), Some(&sim.node_ns), &env("DEL", i, ns), &conf),
                "ptp DEL {i}"
            );
            pdels.push(t.elapsed());
        }
        padds.sort();
        pdels.sort();
        println!(
            "  ptp + host-local ADD p50 {:>6.2} ms  p99 {:>6.2} ms   DEL p50 {:>6.2} ms  p99 {:>6.2} ms",
            pct(&padds, 0.5),
            pct(&padds, 0.99),
            pct(&pdels, 0.5),
            pct(&pdels, 0.99)
        );
        let sum = |a: &[Duration], d: &[Duration]| pct(a, 0.5) + pct(d, 0.5);
        println!(
            "  ratio (ptp / terway-rs, p50): ADD {:.2}x, DEL {:.2}x; terway-rs ADD+DEL = {:.2}x ptp + host-local's",
            pct(&padds, 0.5) / pct(&adds, 0.5),
            pct(&pdels, 0.5) / pct(&dels, 0.5),
            sum(&adds, &dels) / sum(&padds, &pdels)
        );
    } else {
        println!("  ptp + host-local not installed: no comparison");
    }
    drop(namespaces);
    running.stop();
}

/// Pod namespaces of the benchmark, removed however it ends.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn cold_burst(rt: &tokio::runtime::Runtime) {
    const PODS: usize = 50;
    const IPS_PER_ENI: usize = 20; // ecs.g6.8xlarge
    const LATENCY_MS: u64 = 100;
    let mut scenario = Scenario::default();
    let attach_ms = scenario.delays.attach_ms;
    const ATTACH_MS: u64 = 200;
    assert_eq!(attach_ms, ATTACH_MS, "the emulator's default attach delay");
    scenario.instances[0].instance_type = "ecs.g6.8xlarge".into();
    scenario.faults.latency_ms.insert("*".into(), LATENCY_MS);
    let em = rt.block_on(Emulator::start(scenario)).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let conf_path = eni_conf(dir.path(), &em.url(), r#", "max_pool_size": 0, "min_pool_size": 0"#);
    let running = rt
        .block_on(service::start(
            conf_path,
            None,
            NodeOptions {
                add_deadline: Duration::from_secs(120),
                ..Default::default()
            },
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    // the node's first read of the cloud (a fresh node adopts what is there
    // before it acts) is done before the burst, so the burst is timed alone
    let start_read = Instant::now();
    while running.node.metrics.last_reconcile().is_none() && start_read.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let start_read = start_read.elapsed();
    let socket = running.node.socket_path();
    let before: u64 = running.node.cloud.stats().values().map(|s| s.calls).sum();
    let started = Instant::now();
    let handles: Vec<_> = (0..PODS)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || exchange(&socket, &Request::Add(pod(i)), Duration::from_secs(120)))
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap_or_else(|_| panic!("thread"));
        assert!(matches!(r, Ok(Reply::Ok { network: Some(_) })), "{r:?}");
    }
    let wall = started.elapsed();
    let stats = running.node.cloud.stats();
    let after: u64 = stats.values().map(|s| s.calls).sum();
    let calls = |a: &str| stats.get(a).map_or(0, |s| s.calls);
    let mutating =
        calls("AssignPrivateIpAddresses") + calls("CreateNetworkInterface") + calls("AttachNetworkInterface");
    // the critical path: every ENI created, attached and seen InUse at once —
    // CreateNetworkInterface, AttachNetworkInterface, the attach settling,
    // one DescribeNetworkInterfaces that sees it InUse
    let enis_needed = PODS.div_ceil(IPS_PER_ENI) as u64;
    let ideal = Duration::from_millis(3 * LATENCY_MS + ATTACH_MS);
    println!("cold burst of {PODS} pods, {LATENCY_MS} ms emulator latency per call, attach settles in {ATTACH_MS} ms:");
    println!(
        "  wall time {:.3} s beside the critical-path ideal {:.3} s: {:.2}x (the node's start-up read before it: {:.3} s)",
        wall.as_secs_f64(),
        ideal.as_secs_f64(),
        wall.as_secs_f64() / ideal.as_secs_f64(),
        start_read.as_secs_f64()
    );
    println!(
        "  mutating calls {mutating} beside the ideal {} ({enis_needed} creates + {enis_needed} attaches); all calls {}: {}",
        2 * enis_needed,
        after - before,
        stats
            .iter()
            .filter(|(a, _)| !a.starts_with("DescribeInstance"))
            .map(|(a, s)| format!("{a} {}", s.calls))
            .collect::<Vec<_>>()
            .join(", ")
    );
    running.stop();
}

/// Cloud calls a warm pool makes while pods come and go within its bounds
/// (target: none), through the socket with no datapath; then the plugin
/// binary: its size and how long one exec takes to get terwayd's answer.
fn warm_calls_and_the_plugin(rt: &tokio::runtime::Runtime) {
    const PAIRS: usize = 200;
    let em = rt
        .block_on(Emulator::start(Scenario::default()))
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // the sync period is an hour: what is counted is what the pods cause
    let conf_path = eni_conf(
        dir.path(),
        &em.url(),
        r#", "max_pool_size": 30, "min_pool_size": 10, "ip_pool_sync_period": "1h""#,
    );
    let running = rt
        .block_on(service::start(conf_path, None, NodeOptions::default()))
        .unwrap_or_else(|e| panic!("{e}"));
    let node = running.node.clone();
    rt.block_on(async {
        for _ in 0..300 {
            if terway_tests::idle_addresses(&node.ledger) >= 10 && node.ledger.intents().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await; // the read after the last assign
    });
    let socket = node.socket_path();
    let total = || node.cloud.stats().values().map(|s| s.calls).sum::<u64>();
    let pair = |i: usize| {
        let r = exchange(&socket, &Request::Add(pod(i % 5)), Duration::from_secs(30));
        assert!(matches!(r, Ok(Reply::Ok { network: Some(_) })), "ADD {i}: {r:?}");
        let r = exchange(&socket, &Request::Del(pod(i % 5)), Duration::from_secs(30));
        assert!(matches!(r, Ok(Reply::Ok { .. })), "DEL {i}: {r:?}");
    };
    // the first ADD takes the pool below min_pool_size: it is topped up once
    let warm_up = total();
    for i in 0..10 {
        pair(i);
    }
    std::thread::sleep(Duration::from_millis(500));
    let warm_up = total() - warm_up;
    let before = total();
    let started = Instant::now();
    for i in 0..PAIRS {
        pair(i);
    }
    std::thread::sleep(Duration::from_millis(500)); // let any pass the pods woke finish
    let calls = total() - before;
    println!(
        "warm pool (10..30 idle), {PAIRS} ADD+DEL pairs in {:.2} s: {calls} cloud calls, {:.3} per pair \
         (the 10 pairs before them: {warm_up}, the pool topped up to min_pool_size once)",
        started.elapsed().as_secs_f64(),
        calls as f64 / PAIRS as f64
    );

    let plugin = terway_tests::binary("terway");
    let size = std::fs::metadata(&plugin).map(|m| m.len()).unwrap_or(0);
    let status_conf = format!(
        r#"{{"cniVersion":"1.1.0","name":"terway","type":"terway","socket":"{}"}}"#,
        socket.display()
    );
    let time_exec = |binary: &Path, command: &str, conf: &str| {
        let mut runs = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let env = [
                ("CNI_COMMAND", command.to_owned()),
                ("CNI_PATH", "/usr/lib/cni".to_owned()),
            ];
            if !exec_cni(binary, None, &env, conf) {
                return None;
            }
            runs.push(t.elapsed());
        }
        runs.sort();
        Some((pct(&runs, 0.5), pct(&runs, 0.99)))
    };
    println!(
        "the terway plugin binary: {:.1} MiB ({size} bytes, debug profile)",
        size as f64 / 1048576.0
    );
    if let Some((p50, p99)) = time_exec(&plugin, "STATUS", &status_conf) {
        println!("  exec to terwayd's reply (CNI STATUS over the socket): p50 {p50:.2} ms, p99 {p99:.2} ms (200 runs)");
    }
    let version_conf = r#"{"cniVersion":"1.0.0","name":"x","type":"x"}"#;
    if let Some((p50, p99)) = time_exec(&plugin, "VERSION", version_conf) {
        println!("  exec alone (CNI VERSION, no daemon):                 p50 {p50:.2} ms, p99 {p99:.2} ms");
    }
    if let Some(ptp) = ["/usr/lib/cni/ptp", "/opt/cni/bin/ptp"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    {
        if let Some((p50, p99)) = time_exec(Path::new(ptp), "VERSION", version_conf) {
            println!("  ptp, exec alone (CNI VERSION), for comparison:        p50 {p50:.2} ms, p99 {p99:.2} ms");
        }
    }
    running.stop();
}

fn memory_at_250_pods(rt: &tokio::runtime::Runtime) {
    let mut scenario = Scenario::default();
    scenario.instance_types.push(InstanceTypeSpec {
        id: "ecs.bench.xlarge".into(),
        eni_quantity: 16,
        ipv4_per_eni: 30,
        ipv6_per_eni: 0,
        eni_total_quantity: None,
    });
    scenario.instances[0].instance_type = "ecs.bench.xlarge".into();
    let em = rt.block_on(Emulator::start(scenario)).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"));
    let conf_path = eni_conf(
        dir.path(),
        &em.url(),
        &format!(r#", "max_pool_size": 25, "min_pool_size": 10, "metrics_address": "{metrics}""#),
    );
    let mut child = Command::new(terway_tests::binary("terwayd"))
        .args(["run", "--standalone", "--no-datapath", "--config"])
        .arg(&conf_path)
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.path().join("eni.socket");
    let deadline = Instant::now() + Duration::from_secs(30);
    while exchange(&socket, &Request::Status, Duration::from_secs(5)).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss = || {
        std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned()))
            })
            .unwrap_or_default()
    };
    let idle_rss = rss();
    for i in 0..250 {
        let r = exchange(&socket, &Request::Add(pod(i)), Duration::from_secs(60));
        assert!(matches!(r, Ok(Reply::Ok { network: Some(_) })), "pod {i}: {r:?}");
    }
    println!("terwayd resident memory: {idle_rss} at start, {} with 250 pods", rss());
    let mut scrapes = Vec::new();
    let mut size = 0;
    for _ in 0..50 {
        let t = Instant::now();
        size = scrape(metrics).len();
        scrapes.push(t.elapsed());
    }
    scrapes.sort();
    println!(
        "/metrics with 250 pods: {size} bytes, scrape p50 {:.2} ms, p99 {:.2} ms (50 scrapes)",
        pct(&scrapes, 0.5),
        pct(&scrapes, 0.99)
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// One GET /metrics over a fresh connection; the body.
fn scrape(address: std::net::SocketAddr) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(address).unwrap_or_else(|e| panic!("{e}"));
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    raw.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn main() {
    // RUST_LOG=terway_node=info shows the daemon's own timings
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    if is_root() {
        warm_pool_through_the_plugin(&rt);
    } else {
        println!("SKIPPED the warm-pool comparison: not root (it builds network namespaces)");
    }
    cold_burst(&rt);
    warm_calls_and_the_plugin(&rt);
    memory_at_250_pods(&rt);
}
