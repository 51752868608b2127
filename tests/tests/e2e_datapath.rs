//! 100 pods added and deleted through the real `terway` binary, with the
//! datapath in a simulated node (root only): the emulator hot-plugs each ENI
//! it attaches into the node namespace, terwayd wires every pod's namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use terway_cloud::emulator::{Delays, Emulator, Scenario};
use terway_datapath::{Datapath, NetNs};
use terway_node::daemon::{service, NodeOptions};
use terway_node::simulated_node::SimulatedNode;
use terway_statestore::IpState;

const PODS: usize = 100;
const VPC_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

fn skip_reason() -> Option<&'static str> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref() != Some("0") {
        return Some("not root: the end-to-end datapath test creates network namespaces");
    }
    None
}

fn root_state() -> String {
    let run =
        |args: &[&str]| String::from_utf8_lossy(&Command::new("ip").args(args).output().unwrap().stdout).into_owned();
    let s = run(&["-o", "link"]) + &run(&["route", "show", "table", "all"]) + &run(&["rule"]);
    s.lines()
        .map(|l| l.split(" link/").next().unwrap_or(l).to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn plugin(command: &str, container: &str, netns: &str, pod: &str, conf: &str) -> (bool, serde_json::Value) {
    let mut child = Command::new(terway_tests::binary("terway"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME={pod}"),
        )
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    (
        out.status.success(),
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

fn tcp_reaches(from: PathBuf, at: PathBuf, to: Ipv4Addr, port: u16) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        NetNs::open(&at)
            .unwrap()
            .enter(move || {
                let l = TcpListener::bind((to, port)).unwrap();
                l.set_nonblocking(true).unwrap();
                tx.send(()).unwrap();
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if l.accept().is_ok() {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                false
            })
            .unwrap()
    });
    rx.recv().unwrap();
    let client = std::thread::spawn(move || {
        NetNs::open(&from)
            .unwrap()
            .enter(move || TcpStream::connect_timeout(&(to, port).into(), Duration::from_secs(3)).is_ok())
            .unwrap()
    });
    client.join().unwrap() && server.join().unwrap()
}

struct PodNamespaces(Vec<String>);

impl Drop for PodNamespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A simulated node with the emulator hot-plugging ENIs into it, and the
/// node service running there with the datapath.
struct Lab {
    rt: tokio::runtime::Runtime,
    sim: Arc<SimulatedNode>,
    em: Emulator,
    running: service::Running,
    /// The plugin's network configuration.
    conf: String,
    _dir: tempfile::TempDir,
}

impl Lab {
    /// `pool` holds the eni_conf keys that differ between the tests.
    fn start(tag: &str, instance_type: &str, pool: &str, add_deadline: Duration) -> Self {
        let sim = Arc::new(SimulatedNode::new(tag).unwrap());
        sim.add_vpc_address(&format!("{VPC_ADDR}/32")).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut scenario = Scenario {
            delays: Delays {
                attach_ms: 50,
                detach_ms: 50,
                ..Delays::default()
            },
            ..Scenario::default()
        };
        scenario.instances[0].instance_type = instance_type.into();
        let em = rt.block_on(Emulator::start(scenario)).unwrap();
        em.add_hotplug_hook(sim.clone());
        let dir = tempfile::tempdir().unwrap();
        let conf_path = dir.path().join("eni_conf");
        let own = format!(r#", "service_cidr": "172.21.0.0/20", "ip_cooldown": "1s", {pool}"#);
        std::fs::write(
            &conf_path,
            terway_tests::eni_conf(&em.url(), &["vsw-large0000000001"], &own),
        )
        .unwrap();
        let socket = dir.path().join("eni.socket");
        let running = rt
            .block_on(async {
                let dp = Arc::new(Datapath::new(NetNs::open(&sim.node_ns_path())?)?);
                let options = NodeOptions {
                    datapath: Some(dp),
                    add_deadline,
                    socket_path: Some(socket.clone()),
                    ledger_path: Some(dir.path().join("ledger")),
                    metrics_address: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
                    ..Default::default()
                };
                service::start(conf_path, None, options).await
            })
            .unwrap();
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"terway","type":"terway","socket":"{}"}}"#,
            socket.display()
        );
        Self {
            rt,
            sim,
            em,
            running,
            conf,
            _dir: dir,
        }
    }

    fn vpc_ns(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.sim.vpc_ns))
    }

    /// Stops the service, then the emulator, then removes the namespaces.
    fn stop(self) {
        let Self {
            rt, sim, em, running, ..
        } = self;
        running.stop();
        drop(running);
        drop(rt);
        drop(em);
        drop(sim);
    }
}

#[test]
fn hundred_pods_through_the_terway_binary() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED hundred_pods_through_the_terway_binary: {why}");
        return;
    }
    let before = root_state();
    let tag = format!("{}", std::process::id() % 100_000);
    // 8 ENIs x 20 addresses, the seed's pool settings
    let lab = Lab::start(
        &tag,
        "ecs.g6.8xlarge",
        r#""version": "1", "max_pool_size": 25, "min_pool_size": 10"#,
        Duration::from_secs(60),
    );
    let (node, conf, sim, rt) = (lab.running.node.clone(), lab.conf.clone(), lab.sim.clone(), &lab.rt);
    let mut namespaces = PodNamespaces(Vec::new());
    let mut ips = Vec::new();
    let started = Instant::now();
    for i in 0..PODS {
        let ns = format!("trw{tag}p{i}");
        assert!(Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success());
        namespaces.0.push(ns.clone());
        let (ok, result) = plugin(
            "ADD",
            &format!("c{i:04}"),
            &format!("/var/run/netns/{ns}"),
            &format!("pod-{i}"),
            &conf,
        );
        assert!(ok, "ADD pod-{i}: {result}");
        ips.push(
            result["ips"][0]["address"]
                .as_str()
                .unwrap()
                .trim_end_matches("/32")
                .to_owned(),
        );
    }
    println!(
        "{PODS} pods added through the terway binary in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let distinct: BTreeSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), PODS, "no address is bound twice");
    // a sample of pods reaches the VPC through the ENI that owns its address
    let s = node.ledger.snapshot();
    for i in [0, PODS / 2, PODS - 1] {
        let ip: std::net::IpAddr = ips[i].parse().unwrap();
        let eni = &s.enis[&s.ips[&ip].eni_id];
        sim.route_to_pod(&ips[i], &eni.mac).unwrap();
        let pod_ns = PathBuf::from(format!("/var/run/netns/{}", namespaces.0[i]));
        assert!(
            tcp_reaches(pod_ns, lab.vpc_ns(), VPC_ADDR, 7700 + i as u16),
            "pod-{i} ({}) reaches the VPC",
            ips[i]
        );
    }
    for i in 0..PODS {
        let ns = &namespaces.0[i];
        let (ok, result) = plugin(
            "DEL",
            &format!("c{i:04}"),
            &format!("/var/run/netns/{ns}"),
            &format!("pod-{i}"),
            &conf,
        );
        assert!(ok, "DEL pod-{i}: {result}");
    }
    drop(namespaces);
    // at rest: the pool within its bounds, nothing bound, and the cloud holds exactly what the ledger does
    let mut settled = String::new();
    let ok = rt.block_on(async {
        for _ in 0..150 {
            node.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let s = node.ledger.snapshot();
            let idle = s.ips.values().filter(|r| r.state == IpState::Idle).count();
            let bound = s.ips.values().filter(|r| matches!(r.state, IpState::Bound(_))).count();
            settled = format!(
                "{idle} idle, {bound} bound, {} in the ledger, {} intents",
                s.ips.len(),
                s.intents.len()
            );
            if (10..=25).contains(&idle) && bound == 0 && s.ips.len() == idle && s.intents.is_empty() {
                return true;
            }
        }
        false
    });
    assert!(ok, "the pool did not settle: {settled}");
    println!("at rest: {settled}");
    drop(sim);
    lab.stop();
    assert_eq!(before, root_state(), "the root namespace changed");
}

#[test]
fn exclusive_eni_pods_through_the_terway_binary() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED exclusive_eni_pods_through_the_terway_binary: {why}");
        return;
    }
    let before = root_state();
    let tag = format!("x{}", std::process::id() % 100_000);
    // ecs.g6.2xlarge: 4 ENIs, so 3 pods with an ENI each
    let pool = r#""max_pool_size": 3, "min_pool_size": 0, "datapath_mode": "exclusive_eni""#;
    let lab = Lab::start(&tag, "ecs.g6.2xlarge", pool, Duration::from_secs(5));
    let (node, conf, sim) = (lab.running.node.clone(), lab.conf.clone(), lab.sim.clone());
    let namespaces = PodNamespaces((0..4).map(|i| format!("trw{tag}p{i}")).collect());
    for ns in &namespaces.0 {
        assert!(Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .unwrap()
            .success());
    }
    let mut macs = BTreeSet::new();
    for i in 0..3 {
        let ns = &namespaces.0[i];
        let (ok, result) = plugin(
            "ADD",
            &format!("x{i:04}"),
            &format!("/var/run/netns/{ns}"),
            &format!("x-{i}"),
            &conf,
        );
        assert!(ok, "ADD x-{i}: {result}");
        let ip = result["ips"][0]["address"]
            .as_str()
            .unwrap()
            .trim_end_matches("/32")
            .to_owned();
        let s = node.ledger.snapshot();
        let eni = &s.enis[s.pods[&format!("e2e/x-{i}")].eni_id.as_ref().unwrap()];
        assert_eq!(eni.primary_ip.to_string(), ip);
        assert!(macs.insert(eni.mac.clone()), "each pod has its own ENI");
        sim.route_to_pod(&ip, &eni.mac).unwrap();
        let pod_ns = PathBuf::from(format!("/var/run/netns/{ns}"));
        assert!(
            tcp_reaches(pod_ns, lab.vpc_ns(), VPC_ADDR, 7800 + i as u16),
            "x-{i} reaches the VPC through its own ENI"
        );
    }
    let (ok, result) = plugin(
        "ADD",
        "x0003",
        &format!("/var/run/netns/{}", namespaces.0[3]),
        "x-3",
        &conf,
    );
    assert!(!ok, "a fourth pod got an ENI: {result}");
    assert_eq!(result["code"], 11);
    assert!(
        result["details"].as_str().unwrap().contains("ecs.g6.2xlarge"),
        "{result}"
    );
    for i in 0..3 {
        let (ok, result) = plugin(
            "DEL",
            &format!("x{i:04}"),
            &format!("/var/run/netns/{}", namespaces.0[i]),
            &format!("x-{i}"),
            &conf,
        );
        assert!(ok, "DEL x-{i}: {result}");
    }
    // the ENIs are back on the node
    let links = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-n", &sim.node_ns, "-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    for mac in &macs {
        assert!(links.contains(mac.as_str()), "ENI {mac} returned to the node: {links}");
    }
    drop(namespaces);
    drop(sim);
    lab.stop();
    assert_eq!(before, root_state(), "the root namespace changed");
}
