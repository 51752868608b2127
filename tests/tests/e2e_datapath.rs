//! 100 pods added and deleted through the real `terway` binary, with the
//! datapath in a simulated node (root only): the emulator hot-plugs each ENI
//! it attaches into the node namespace, terwayd wires every pod's namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use terway_cloud::emulator::Emulator;
use terway_datapath::{Datapath, NetNs};
use terway_node::bridge::{ClusterBridge, StaticPods};
use terway_node::daemon::NodeOptions;
use terway_node::service;
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
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME={pod}");
    plugin_env(
        conf,
        &[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", &args),
        ],
    )
}

/// The plugin with exactly this environment (and `CNI_PATH`).
fn plugin_env(conf: &str, vars: &[(&str, &str)]) -> (bool, serde_json::Value) {
    let mut child = Command::new(terway_tests::binary("terway"))
        .env_clear()
        .envs(vars.iter().copied())
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

fn tcp_reaches(from: PathBuf, at: PathBuf, to: impl Into<IpAddr>, port: u16) -> bool {
    let to = to.into();
    tcp_reaches_listener(from, at, to, to, port)
}

/// … with the listener on `listen` (`to` may be an address NAT turns into it).
fn tcp_reaches_listener(
    from: PathBuf,
    at: PathBuf,
    listen: impl Into<IpAddr>,
    to: impl Into<IpAddr>,
    port: u16,
) -> bool {
    let (listen, to) = (listen.into(), to.into());
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        NetNs::open(&at)
            .unwrap()
            .enter(move || {
                let l = TcpListener::bind((listen, port)).unwrap();
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

/// A simulated node (with the VPC address), a runtime, and the emulator
/// hot-plugging the ENIs it attaches into the node.
fn simulated_cloud(tag: &str, instance_type: &str) -> (Arc<SimulatedNode>, tokio::runtime::Runtime, Emulator) {
    let sim = Arc::new(SimulatedNode::new(tag).unwrap());
    sim.add_vpc_address(&format!("{VPC_ADDR}/32")).unwrap();
    let (rt, mut scenario) = terway_tests::quick_attach_scenario();
    scenario.instances[0].instance_type = instance_type.into();
    let em = rt.block_on(Emulator::start(scenario)).unwrap();
    em.add_hotplug_hook(sim.clone());
    (sim, rt, em)
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
        Self::start_with(tag, instance_type, pool, add_deadline, None)
    }

    /// … with pod facts from `bridge` (annotations), as a cluster would give them.
    fn start_with(
        tag: &str,
        instance_type: &str,
        pool: &str,
        add_deadline: Duration,
        bridge: Option<Arc<dyn ClusterBridge>>,
    ) -> Self {
        let (sim, rt, em) = simulated_cloud(tag, instance_type);
        Self::start_on(sim, rt, em, pool, add_deadline, |o| o.bridge = bridge)
    }

    /// … on a simulated node and cloud made (and perhaps set up) already.
    fn start_on(
        sim: Arc<SimulatedNode>,
        rt: tokio::runtime::Runtime,
        em: Emulator,
        pool: &str,
        add_deadline: Duration,
        tweak: impl FnOnce(&mut NodeOptions),
    ) -> Self {
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
                let mut options = NodeOptions {
                    datapath: Some(dp),
                    add_deadline,
                    socket_path: Some(socket.clone()),
                    ledger_path: Some(dir.path().join("ledger")),
                    metrics_address: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
                    ..Default::default()
                };
                tweak(&mut options);
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
            node.reconcile_soon();
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

/// Containers started without Kubernetes, with the arguments podman and
/// ctr send: keyed by container id and interface, named as the runtime
/// likes; DEL with missing arguments or an empty CNI_NETNS succeeds.
#[test]
fn containers_without_kubernetes_through_the_terway_binary() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED containers_without_kubernetes_through_the_terway_binary: {why}");
        return;
    }
    let tag = format!("r{}", std::process::id() % 100_000);
    let lab = Lab::start(
        &tag,
        "ecs.g6.2xlarge",
        r#""max_pool_size": 5, "min_pool_size": 2"#,
        Duration::from_secs(30),
    );
    let (node, conf) = (lab.running.node.clone(), lab.conf.clone());
    let namespaces = PodNamespaces(["podman", "ctr"].iter().map(|n| format!("trw{tag}{n}")).collect());
    for ns in &namespaces.0 {
        assert!(Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .unwrap()
            .success());
    }
    let netns = |i: usize| format!("/var/run/netns/{}", namespaces.0[i]);
    // podman: its container name in K8S_POD_NAME, no namespace; not a Kubernetes name
    let podman_args = "IgnoreUnknown=1;K8S_POD_NAME=charming_galileo";
    let podman = |command: &str, ns: &str| {
        plugin_env(
            &conf,
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", "0a1b2c3d4e5f"),
                ("CNI_NETNS", ns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", podman_args),
            ],
        )
    };
    let (ok, added) = podman("ADD", &netns(0));
    assert!(ok, "podman's ADD: {added}");
    let ip = added["ips"][0]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32")
        .to_owned();
    let (ok, again) = podman("ADD", &netns(0));
    assert!(ok, "a repeated ADD: {again}");
    assert_eq!(
        again["ips"][0]["address"], added["ips"][0]["address"],
        "the same address again"
    );
    let (ok, checked) = podman("CHECK", &netns(0));
    assert!(ok, "CHECK: {checked}");
    let record = node
        .ledger
        .snapshot()
        .pods
        .into_values()
        .find(|r| r.container_id == "0a1b2c3d4e5f")
        .expect("the attachment is in the ledger");
    assert_eq!(
        (record.pod.namespace.as_str(), record.pod.name.as_str()),
        ("_runtime", "0a1b2c3d4e5f_eth0")
    );
    // a CNI_NETNS that is no namespace is the caller's error, and nothing is bound for it
    let not_a_netns = lab._dir.path().join("not-a-netns");
    std::fs::write(&not_a_netns, "").unwrap();
    let (ok, refused) = plugin_env(
        &conf,
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "wrongns"),
            ("CNI_NETNS", not_a_netns.to_str().unwrap()),
            ("CNI_IFNAME", "eth0"),
        ],
    );
    assert!(!ok && refused["code"] == 4, "{refused}");
    assert!(refused["msg"].as_str().unwrap().contains("not-a-netns"), "{refused}");
    assert!(
        !node
            .ledger
            .snapshot()
            .pods
            .values()
            .any(|r| r.container_id == "wrongns"),
        "nothing bound"
    );
    // it reaches the VPC through its ENI
    let eni = node.ledger.eni_of_ip(&ip.parse().unwrap()).unwrap();
    lab.sim.route_to_pod(&ip, &eni.mac).unwrap();
    assert!(
        tcp_reaches(PathBuf::from(netns(0)), lab.vpc_ns(), VPC_ADDR, 7800),
        "{ip} reaches the VPC"
    );

    // ctr: no CNI_ARGS at all, and a cleanup DEL with an empty CNI_NETNS
    let ctr = |command: &str, ns: &str| {
        plugin_env(
            &conf,
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", "ctr-task-1"),
                ("CNI_NETNS", ns),
                ("CNI_IFNAME", "eth0"),
            ],
        )
    };
    let (ok, ctr_added) = ctr("ADD", &netns(1));
    assert!(ok, "ctr's ADD: {ctr_added}");
    assert_ne!(ctr_added["ips"][0]["address"], added["ips"][0]["address"]);
    let bound = || {
        node.ledger
            .snapshot()
            .pods
            .values()
            .map(|r| r.container_id.clone())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(bound().len(), 2);
    let (ok, out) = ctr("DEL", "");
    assert!(ok, "ctr's DEL with an empty CNI_NETNS: {out}");
    assert!(!bound().contains("ctr-task-1"), "its address is released");
    let (ok, out) = ctr("DEL", "");
    assert!(ok, "a second DEL of a gone attachment: {out}");
    // a DEL that names nothing, as a runtime's cleanup after a failed ADD may send
    let (ok, out) = plugin_env(&conf, &[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")]);
    assert!(ok && out.is_null(), "a DEL without container id: {out}");
    // podman's DEL by the same arguments releases the address
    let (ok, out) = podman("DEL", &netns(0));
    assert!(ok, "podman's DEL: {out}");
    assert!(bound().is_empty(), "every address is released");
    drop(namespaces);
    lab.stop();
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
    let (node, sim) = (lab.running.node.clone(), lab.sim.clone());
    // NodeLocal DNSCache's address, reached through the host as upstream routes it
    let conf = lab
        .conf
        .replacen('{', r#"{"host_stack_cidrs":["169.254.20.10/32"],"#, 1);
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
        let route = Command::new("ip")
            .args(["-n", ns, "route", "get", "169.254.20.10"])
            .output()
            .unwrap();
        let route = String::from_utf8_lossy(&route.stdout);
        assert!(
            route.contains("via 169.254.1.1 dev veth1"),
            "host_stack_cidrs go through the host peer: {route}"
        );
    }
    service_traffic_to_another_node_is_masqueraded(
        &lab,
        &tag,
        &PathBuf::from(format!("/var/run/netns/{}", namespaces.0[0])),
    );
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

/// An exclusive-ENI pod's connection to a Service that kube-proxy sends to a
/// backend elsewhere in the VPC: it leaves the node through the primary
/// interface, masqueraded, so the reply comes back through the host's NAT
/// (without it the reply would go straight to the pod's ENI and the
/// connection never opens — shown by removing the table by hand, which the
/// datapath agent's next round puts back).
fn service_traffic_to_another_node_is_masqueraded(lab: &Lab, tag: &str, pod_ns: &PathBuf) {
    let (node_ns, vpc_ns) = (&lab.sim.node_ns, &lab.sim.vpc_ns);
    let node_ip = lab.running.node.node_ip.to_string();
    // the simulated node's primary interface, and the VPC's way back to it
    let (eth, peer) = (format!("p{tag}"), format!("q{tag}"));
    run(&[
        "ip", "link", "add", &eth, "netns", node_ns, "type", "veth", "peer", "name", &peer, "netns", vpc_ns,
    ]);
    run(&[
        "ip",
        "-n",
        node_ns,
        "addr",
        "add",
        &format!("{node_ip}/32"),
        "dev",
        &eth,
    ]);
    run(&["ip", "-n", node_ns, "link", "set", &eth, "up"]);
    run(&["ip", "-n", vpc_ns, "link", "set", &peer, "up"]);
    run(&[
        "ip",
        "-n",
        node_ns,
        "route",
        "add",
        &format!("{VPC_ADDR}/32"),
        "dev",
        &eth,
    ]);
    run(&[
        "ip",
        "-n",
        vpc_ns,
        "route",
        "add",
        &format!("{node_ip}/32"),
        "dev",
        &peer,
    ]);
    // kube-proxy's part: the Service address to the backend
    let service = Ipv4Addr::new(172, 21, 0, 10);
    let reaches = |port: u16| tcp_reaches_listener(pod_ns.clone(), lab.vpc_ns(), Ipv4Addr::UNSPECIFIED, service, port);
    nft_in(
        node_ns,
        &format!(
            "table ip kube_proxy_sim {{\n chain prerouting {{\n type nat hook prerouting priority dstnat;\n \
             ip daddr {service} tcp dport {{ 7900, 7901 }} dnat to {VPC_ADDR}\n }}\n}}\n"
        ),
    );
    assert!(
        reaches(7900),
        "the pod reaches a Service whose backend is on another node"
    );
    nft_in(node_ns, "delete table ip terway_masq");
    assert!(
        !reaches(7901),
        "without the masquerade the reply bypasses the host's NAT (the test shows nothing otherwise)"
    );
    let node = &lab.running.node;
    let report = lab.rt.block_on(terway_node::daemon::datapath_agent::check_all(
        node,
        node.datapath().unwrap(),
    ));
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(reaches(7900), "the datapath agent put the masquerade back");
}

fn nft_in(ns: &str, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft in {ns}: {script}");
}

/// Runs `ip`/`tc` arguments, asserting success.
fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_datapath_agent_repairs_drift_within_a_period() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED the_datapath_agent_repairs_drift_within_a_period: {why}");
        return;
    }
    let before = root_state();
    let tag = format!("r{}", std::process::id() % 100_000);
    let pool = r#""max_pool_size": 10, "min_pool_size": 2, "datapath_check_period": "1s""#;
    let lab = Lab::start(&tag, "ecs.g6.2xlarge", pool, Duration::from_secs(30));
    let (node, sim) = (lab.running.node.clone(), lab.sim.clone());
    let namespaces = PodNamespaces(vec![format!("trw{tag}p0")]);
    run(&["ip", "netns", "add", &namespaces.0[0]]);
    // the pod asks for an egress limit, so its interface carries a TBF
    let conf = lab.conf.replace(
        r#""type":"terway","#,
        r#""type":"terway","runtimeConfig":{"bandwidth":{"egressRate":8000000}},"#,
    );
    let netns = format!("/var/run/netns/{}", namespaces.0[0]);
    let (ok, result) = plugin("ADD", "r0000", &netns, "r-0", &conf);
    assert!(ok, "ADD r-0: {result}");
    let ip = result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32")
        .to_owned();
    let s = node.ledger.snapshot();
    let eni = s.enis[&s.ips[&ip.parse().unwrap()].eni_id].clone();
    sim.route_to_pod(&ip, &eni.mac).unwrap();
    let pod_ns = PathBuf::from(&netns);
    assert!(
        tcp_reaches(pod_ns.clone(), lab.vpc_ns(), VPC_ADDR, 7900),
        "r-0 reaches the VPC"
    );
    let (ok, result) = plugin("CHECK", "r0000", &netns, "r-0", &conf);
    assert!(ok, "CHECK before the drift: {result}");
    // upstream's table numbering: 1000 + the ENI link's index on the node
    let links = Command::new("ip")
        .args(["-n", &sim.node_ns, "-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    let line = links.lines().find(|l| l.contains(eni.mac.as_str())).unwrap();
    let index: u32 = line.split(':').next().unwrap().trim().parse().unwrap();
    assert_eq!(eni.route_table, 1000 + index, "{line}");

    // by hand: a rule, the pod's route, its static neighbour, its qdisc and the ENI table's default route
    let node_ns = sim.node_ns.clone();
    let pod = namespaces.0[0].clone();
    run(&["ip", "-n", &node_ns, "rule", "del", "pref", "2048", "from", &ip]);
    run(&["ip", "-n", &pod, "route", "del", "default"]);
    run(&["ip", "-n", &pod, "neigh", "del", "169.254.1.1", "dev", "eth0"]);
    run(&["tc", "-n", &pod, "qdisc", "del", "dev", "eth0", "root"]);
    run(&[
        "ip",
        "-n",
        &node_ns,
        "route",
        "del",
        "default",
        "table",
        &eni.route_table.to_string(),
    ]);
    let (ok, result) = plugin("CHECK", "r0000", &netns, "r-0", &conf);
    assert!(!ok, "CHECK sees the drift: {result}");

    // within a period or two of the agent, every piece is back and counted
    let want = [("rule", 1), ("route", 2), ("neighbour", 1), ("qdisc", 1)];
    let mut repairs = Default::default();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        repairs = node.metrics.datapath_repairs();
        if want.iter().all(|(k, n)| repairs.get(k).copied().unwrap_or(0) >= *n) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for (k, n) in want {
        assert_eq!(repairs.get(k).copied().unwrap_or(0), n, "repairs of {k}: {repairs:?}");
    }
    let (ok, result) = plugin("CHECK", "r0000", &netns, "r-0", &conf);
    assert!(ok, "CHECK after the repair: {result}");
    assert!(
        tcp_reaches(pod_ns, lab.vpc_ns(), VPC_ADDR, 7901),
        "r-0 reaches the VPC again"
    );
    let scraped = terway_tests::http_get(lab.running.metrics_address.unwrap(), "/metrics").1;
    for (k, n) in want {
        let line = format!("terway_datapath_repairs_total{{what=\"{k}\"}} {n}");
        assert!(scraped.contains(&line), "/metrics has {line}:\n{scraped}");
    }

    let (ok, result) = plugin("DEL", "r0000", &netns, "r-0", &conf);
    assert!(ok, "DEL r-0: {result}");
    drop(namespaces);
    drop(sim);
    lab.stop();
    assert_eq!(before, root_state(), "the root namespace changed");
}

#[test]
fn shared_and_exclusive_pods_on_one_node() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED shared_and_exclusive_pods_on_one_node: {why}");
        return;
    }
    const SHARED: usize = 20;
    let before = root_state();
    let tag = format!("m{}", std::process::id() % 100_000);
    let pods = Arc::new(StaticPods::default());
    for i in 0..2 {
        pods.annotate("e2e", &format!("whole-{i}"), &[("k8s.aliyun.com/pod-eni", "true")]);
    }
    // a shared-mode node: 8 ENIs x 20 addresses
    let lab = Lab::start_with(
        &tag,
        "ecs.g6.8xlarge",
        r#""max_pool_size": 25, "min_pool_size": 5"#,
        Duration::from_secs(60),
        Some(pods.clone()),
    );
    let (node, conf, sim) = (lab.running.node.clone(), lab.conf.clone(), lab.sim.clone());
    let max_pods_shared = node.max_pods();
    let names: Vec<String> = (0..SHARED)
        .map(|i| format!("shared-{i}"))
        .chain((0..2).map(|i| format!("whole-{i}")))
        .collect();
    let namespaces = PodNamespaces(names.iter().map(|n| format!("trw{tag}{n}")).collect());
    for ns in &namespaces.0 {
        run(&["ip", "netns", "add", ns]);
    }
    // all at once: the exclusive pods arrive among the shared ones
    let t0 = Instant::now();
    let added: Vec<(usize, bool, serde_json::Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..names.len())
            .map(|i| {
                let (conf, name, ns) = (&conf, &names[i], &namespaces.0[i]);
                scope.spawn(move || {
                    let (ok, result) = plugin("ADD", &format!("m{i:04}"), &format!("/var/run/netns/{ns}"), name, conf);
                    (i, ok, result)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    println!(
        "{} pods added at once in {:.1} s",
        names.len(),
        t0.elapsed().as_secs_f64()
    );
    let s = node.ledger.snapshot();
    let mut ips = BTreeSet::new();
    let mut whole_macs = BTreeSet::new();
    for (i, ok, result) in &added {
        assert!(ok, "ADD {}: {result}", names[*i]);
        let ip = result["ips"][0]["address"]
            .as_str()
            .unwrap()
            .trim_end_matches("/32")
            .to_owned();
        assert!(ips.insert(ip.clone()), "{ip} handed out twice");
        let record = &s.pods[&format!("e2e/{}", names[*i])];
        let pod_ns = PathBuf::from(format!("/var/run/netns/{}", namespaces.0[*i]));
        if names[*i].starts_with("whole") {
            // its own ENI, as eth0, reaching the VPC through it
            let eni = &s.enis[record.eni_id.as_ref().expect("an ENI of its own")];
            assert!(eni.exclusive);
            assert_eq!(eni.primary_ip.to_string(), ip);
            assert!(whole_macs.insert(eni.mac.clone()), "each exclusive pod has its own ENI");
            let links = String::from_utf8_lossy(
                &Command::new("ip")
                    .args(["-n", &namespaces.0[*i], "-o", "link", "show", "eth0"])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .into_owned();
            assert!(links.contains(&eni.mac), "eth0 of {} is its ENI: {links}", names[*i]);
            assert_eq!(
                result["ips"][0]["gateway"].as_str(),
                Some(eni.gateway.to_string().as_str())
            );
            sim.route_to_pod(&ip, &eni.mac).unwrap();
            let rx0 = sim.gateway_rx_packets(&eni.mac);
            assert!(
                tcp_reaches(pod_ns, lab.vpc_ns(), VPC_ADDR, 8000 + *i as u16),
                "{} reaches the VPC",
                names[*i]
            );
            assert!(
                sim.gateway_rx_packets(&eni.mac) > rx0,
                "{} sends through its own ENI",
                names[*i]
            );
        } else {
            assert!(record.eni_id.is_none(), "{} shares an ENI", names[*i]);
            let eni = &s.enis[&s.ips[&ip.parse().unwrap()].eni_id];
            assert!(!eni.exclusive, "{} is not on an ENI given whole", names[*i]);
            assert!(!whole_macs.contains(&eni.mac));
        }
    }
    assert_eq!(whole_macs.len(), 2);
    // shared pods beside them are unaffected: a sample reaches the VPC through its shared ENI
    for i in [0, SHARED - 1] {
        let (ip, eni) = {
            let ip: std::net::IpAddr = added[i].2["ips"][0]["address"]
                .as_str()
                .unwrap()
                .trim_end_matches("/32")
                .parse()
                .unwrap();
            (ip, s.enis[&s.ips[&ip].eni_id].clone())
        };
        sim.route_to_pod(&ip.to_string(), &eni.mac).unwrap();
        let pod_ns = PathBuf::from(format!("/var/run/netns/{}", namespaces.0[i]));
        assert!(
            tcp_reaches(pod_ns, lab.vpc_ns(), VPC_ADDR, 8100 + i as u16),
            "{} reaches the VPC",
            names[i]
        );
    }
    // capacity follows: each ENI given whole serves one pod instead of twenty
    assert_eq!(node.max_pods(), max_pods_shared - 2 * 19);
    // DEL of the exclusive pods returns their ENIs (to the node, then to the cloud)
    for i in SHARED..SHARED + 2 {
        let (ok, result) = plugin(
            "DEL",
            &format!("m{i:04}"),
            &format!("/var/run/netns/{}", namespaces.0[i]),
            &names[i],
            &conf,
        );
        assert!(ok, "DEL {}: {result}", names[i]);
    }
    let t0 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && node.ledger.exclusive_enis() > 0 {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(node.ledger.exclusive_enis(), 0, "the ENIs given whole went back");
    println!(
        "the ENIs given whole went back {:.1} s after their DELs",
        t0.elapsed().as_secs_f64()
    );
    let world = lab.em.dump();
    for mac in &whole_macs {
        assert!(
            !world.to_string().contains(mac.as_str()),
            "ENI {mac} was detached and deleted"
        );
    }
    assert_eq!(node.max_pods(), max_pods_shared);
    // the shared pods still hold their addresses
    let s = node.ledger.snapshot();
    for name in names.iter().take(SHARED) {
        assert!(s.pods.contains_key(&format!("e2e/{name}")), "{name} kept its address");
    }
    for i in 0..SHARED {
        let (ok, result) = plugin(
            "DEL",
            &format!("m{i:04}"),
            &format!("/var/run/netns/{}", namespaces.0[i]),
            &names[i],
            &conf,
        );
        assert!(ok, "DEL {}: {result}", names[i]);
    }
    drop(namespaces);
    drop(sim);
    lab.stop();
    assert_eq!(before, root_state(), "the root namespace changed");
}

/// A child process killed (SIGKILL) when dropped, so a failed test leaves no terwayd behind.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pods' host links (`cali…` veths) in namespace `ns` (by name),
/// optionally only those in link group `group`.
fn pod_links_in(ns: &str, group: Option<u32>) -> usize {
    let mut args = vec![
        "-n".to_owned(),
        ns.to_owned(),
        "-o".into(),
        "link".into(),
        "show".into(),
    ];
    if let Some(g) = group {
        args.extend(["group".into(), g.to_string()]);
    }
    args.extend(["type".into(), "veth".into()]);
    let out = Command::new("ip").args(&args).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split(": ").nth(1).is_some_and(|name| name.starts_with("cali")))
        .count()
}

/// terwayd, a real process with the datapath in a simulated node, is
/// SIGKILLed again and again right after DELs, while the released pods'
/// host links wait to be deleted in the background (gathered for 200 ms,
/// then one group deletion) or while that deletion runs. Every restart
/// removes what the kill left, and the pod that stays keeps its link.
#[test]
fn kills_inside_the_background_link_deletion_leave_no_link_behind() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED kills_inside_the_background_link_deletion_leave_no_link_behind: {why}");
        return;
    }
    const ROUNDS: usize = 25;
    const PODS_PER_ROUND: usize = 3;
    let before = root_state();
    let tag = format!("{}", std::process::id() % 100_000);
    let (sim, rt, em) = simulated_cloud(&format!("k{tag}"), "ecs.g6.8xlarge");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("eni.socket");
    let conf_path = dir.path().join("eni_conf");
    let own = format!(
        r#", "max_pool_size": 20, "min_pool_size": 10, "socket_path": "{}", "ledger_path": "{}", "metrics_address": "127.0.0.1:0""#,
        socket.display(),
        dir.path().join("ledger").display()
    );
    std::fs::write(
        &conf_path,
        terway_tests::eni_conf(&em.url(), &["vsw-large0000000001"], &own),
    )
    .unwrap();
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"terway","type":"terway","socket":"{}"}}"#,
        socket.display()
    );
    let spawn = || {
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(terway_tests::binary("terwayd"))
            .args(["run", "--standalone", "--host-netns"])
            .arg(sim.node_ns_path())
            .arg("--config")
            .arg(&conf_path)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(socket.exists(), "terwayd did not start serving");
        child
    };
    let mut namespaces = PodNamespaces(Vec::new());
    let new_ns = |namespaces: &mut PodNamespaces, name: String| {
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success());
        namespaces.0.push(name.clone());
        format!("/var/run/netns/{name}")
    };
    let node_ns = sim.node_ns.clone();
    let mut terwayd = Killed(spawn());
    let keeper = new_ns(&mut namespaces, format!("trk{tag}keep"));
    let (ok, result) = plugin("ADD", "keeper", &keeper, "keeper", &conf);
    assert!(ok, "ADD keeper: {result}");
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let (mut left_marked, mut left_rounds) = (0, 0);
    for round in 0..ROUNDS {
        let mut pods = Vec::new();
        for p in 0..PODS_PER_ROUND {
            let ns = new_ns(&mut namespaces, format!("trk{tag}r{round}p{p}"));
            let id = format!("r{round}p{p}");
            let (ok, result) = plugin("ADD", &id, &ns, &id, &conf);
            assert!(ok, "ADD {id}: {result}");
            pods.push((id, ns));
        }
        for (id, ns) in &pods {
            let (ok, result) = plugin("DEL", id, ns, id, &conf);
            assert!(ok, "DEL {id}: {result}");
        }
        // kill before, during or after the gathered deletion (200 ms after the first DEL)
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_micros(rng % 300_000));
        terwayd.0.kill().unwrap();
        terwayd.0.wait().unwrap();
        let marked = pod_links_in(&node_ns, Some(terway_datapath::RELEASED_GROUP));
        left_marked += marked;
        left_rounds += usize::from(marked > 0);
        terwayd = Killed(spawn());
        // the restarted agent deletes what the kill left; the keeper's link stays
        let deadline = Instant::now() + Duration::from_secs(10);
        while pod_links_in(&node_ns, None) != 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            pod_links_in(&node_ns, None),
            1,
            "round {round}: only the keeper's host link remains: {}",
            String::from_utf8_lossy(
                &Command::new("ip")
                    .args(["-n", &node_ns, "-d", "link", "show", "type", "veth"])
                    .output()
                    .unwrap()
                    .stdout
            )
        );
        assert_eq!(pod_links_in(&node_ns, Some(terway_datapath::RELEASED_GROUP)), 0);
    }
    println!(
        "{ROUNDS} SIGKILLs after {} DELs: {left_rounds} kills left {left_marked} marked links behind (killed before the \
         background deletion ran), all deleted by the next start; the remaining pod's link untouched",
        ROUNDS * PODS_PER_ROUND
    );
    assert!(left_rounds > 0, "no kill landed before the background deletion");
    let (ok, result) = plugin("DEL", "keeper", &keeper, "keeper", &conf);
    assert!(ok, "DEL keeper: {result}");
    drop(terwayd);
    drop(namespaces);
    drop(em);
    drop(rt);
    drop(sim);
    assert_eq!(before, root_state(), "the root namespace changed");
}

/// A pod wired as upstream Terway wires it (policy-routing mode): a `cali`
/// veth named from its namespace and name, its address /32 in the pod with
/// a default route through 169.254.1.1, the host route to the veth, and
/// the rules `to <ip> lookup main` (512) and `from <ip> lookup <table>` (2048).
fn wire_as_upstream(node_ns: &str, pod_ns: &str, pod: &str, ip: &str, table: u32) {
    let veth = terway_datapath::names::host_veth_name("e2e", pod, "eth0");
    run(&["ip", "netns", "add", pod_ns]);
    run(&[
        "ip", "-n", node_ns, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", pod_ns,
    ]);
    run(&["ip", "-n", node_ns, "link", "set", &veth, "up"]);
    let mac = Command::new("ip")
        .args(["-n", node_ns, "-o", "link", "show", &veth])
        .output()
        .unwrap();
    let mac = String::from_utf8_lossy(&mac.stdout)
        .split("link/ether ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    run(&["ip", "-n", pod_ns, "link", "set", "lo", "up"]);
    run(&["ip", "-n", pod_ns, "link", "set", "eth0", "up"]);
    run(&["ip", "-n", pod_ns, "addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
    run(&[
        "ip",
        "-n",
        pod_ns,
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    run(&[
        "ip",
        "-n",
        pod_ns,
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
        "onlink",
    ]);
    run(&[
        "ip",
        "-n",
        pod_ns,
        "neigh",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "lladdr",
        &mac,
        "nud",
        "permanent",
    ]);
    run(&[
        "ip",
        "-n",
        node_ns,
        "route",
        "add",
        &format!("{ip}/32"),
        "dev",
        &veth,
        "scope",
        "link",
    ]);
    run(&[
        "ip", "-n", node_ns, "rule", "add", "to", ip, "lookup", "main", "pref", "512",
    ]);
    let table = table.to_string();
    run(&[
        "ip", "-n", node_ns, "rule", "add", "from", ip, "lookup", &table, "pref", "2048",
    ]);
}

/// What the node namespace's rules say of `ip`.
fn rules_of(node_ns: &str, ip: &str) -> Vec<String> {
    let out = Command::new("ip").args(["-n", node_ns, "rule"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == ip))
        .map(str::to_owned)
        .collect()
}

/// A node as upstream Terway leaves it — an ENI it made, set up with its
/// table (1000 + link index), two veth pods wired on two of its addresses,
/// a third pod without a host veth (as an ipvlan pod), and upstream's pod
/// records naming all three — taken over by terwayd with an empty ledger:
/// the three addresses are never handed out, the old pods' traffic keeps
/// flowing, one pod's DEL (through the terway binary) and the others'
/// vanished sandboxes give their addresses back, and new pods get the free ones.
#[test]
fn a_node_upstream_wired_is_taken_over_in_place() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED a_node_upstream_wired_is_taken_over_in_place: {why}");
        return;
    }
    let before = root_state();
    let tag = format!("u{}", std::process::id() % 100_000);
    // one secondary ENI of 6 addresses: the one upstream made
    let (sim, rt, em) = simulated_cloud(&tag, "ecs.g6.large");
    let cloud = terway_tests::emulator_client(&em.url());
    let md = terway_cloud::MetadataClient::new(&em.url(), Duration::from_secs(2)).unwrap();
    let (eni, node_ip, gateway) = rt.block_on(async {
        let eni = terway_tests::upstream_eni(&cloud, 5).await;
        let node_ip = md.get("private-ipv4").await.unwrap();
        let gateway = md.eni(&eni.mac_address).await.unwrap().gateway;
        (eni, node_ip, gateway)
    });
    // the ENI on the host as upstream sets it up
    let links = Command::new("ip")
        .args(["-n", &sim.node_ns, "-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    let line = links.lines().find(|l| l.contains(&eni.mac_address)).unwrap();
    let index: u32 = line.split(':').next().unwrap().trim().parse().unwrap();
    let link = line
        .split(':')
        .nth(1)
        .unwrap()
        .trim()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let table = 1000 + index;
    let node_ns = sim.node_ns.clone();
    run(&["ip", "-n", &node_ns, "link", "set", &link, "up"]);
    run(&[
        "ip",
        "-n",
        &node_ns,
        "addr",
        "add",
        &format!("{node_ip}/32"),
        "dev",
        &link,
    ]);
    run(&[
        "ip",
        "-n",
        &node_ns,
        "route",
        "add",
        "default",
        "via",
        &gateway.to_string(),
        "dev",
        &link,
        "onlink",
        "table",
        &table.to_string(),
    ]);
    run(&[
        "ip",
        "netns",
        "exec",
        &node_ns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    let addresses: Vec<String> = eni.ipv4_addresses().iter().map(ToString::to_string).collect();
    let old = [addresses[1].clone(), addresses[2].clone(), addresses[3].clone()];
    let mut namespaces = PodNamespaces((0..3).map(|i| format!("trw{tag}old{i}")).collect());
    for (i, ip) in old.iter().enumerate().take(2) {
        wire_as_upstream(&node_ns, &namespaces.0[i], &format!("old-{i}"), ip, table);
        sim.route_to_pod(ip, &eni.mac_address).unwrap();
    }
    // old-2 has no host veth (as an ipvlan pod, whose traffic goes through
    // the slave all pods of the ENI share): only upstream's records tell of it
    run(&["ip", "netns", "add", &namespaces.0[2]]);
    let old_ns = |i: usize| PathBuf::from(format!("/var/run/netns/trw{tag}old{i}"));
    let records = tempfile::tempdir().unwrap();
    let db = records.path().join("ResRelation.db");
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = old
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let value = serde_json::json!({
                "Resources": [{"type": "eniIp", "id": format!("{}.{ip}", eni.mac_address),
                    "eni_id": eni.network_interface_id, "eni_mac": eni.mac_address, "ipv4": ip, "ipv6": ""}],
                "PodInfo": {"Name": format!("old-{i}"), "Namespace": "e2e", "SandboxExited": false},
                "NetNs": old_ns(i).display().to_string(),
                "ContainerID": format!("upstream-sandbox-{i}"),
            });
            (format!("e2e/old-{i}").into_bytes(), serde_json::to_vec(&value).unwrap())
        })
        .collect();
    terway_tests::bolt_writer::write(&db, b"relation", &pairs).unwrap();
    assert!(
        tcp_reaches(old_ns(0), sim_vpc(&sim), VPC_ADDR, 7950),
        "old-0 reaches the VPC before the take-over"
    );

    // terwayd takes the node over with an empty ledger
    let pool = r#""max_pool_size": 10, "min_pool_size": 0, "datapath_check_period": "1s""#;
    let lab = Lab::start_on(sim.clone(), rt, em, pool, Duration::from_secs(3), |o| {
        o.upstream_db = Some(db.clone())
    });
    let node = lab.running.node.clone();
    let placeholders = |s: &terway_statestore::State| -> Vec<String> {
        let mut v: Vec<String> = s
            .ips
            .values()
            .filter_map(|r| match &r.state {
                IpState::Bound(b) if b.pod.namespace == "_upstream" => Some(r.ip.to_string()),
                _ => None,
            })
            .collect();
        v.sort();
        v
    };
    let mut sorted_old = old.to_vec();
    sorted_old.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    while placeholders(&node.ledger.snapshot()) != sorted_old {
        assert!(
            Instant::now() < deadline,
            "the old pods' addresses were not held: {:?}",
            node.ledger.export().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = node.ledger.snapshot();
    assert_eq!(
        s.enis[&eni.network_interface_id].route_table, table,
        "upstream's table is kept"
    );
    for i in 0..2 {
        assert!(
            tcp_reaches(old_ns(i), lab.vpc_ns(), VPC_ADDR, 7951 + i as u16),
            "old-{i} reaches the VPC after the take-over"
        );
    }

    // new pods get every free address and never an old pod's; then the pool is out
    let free = s.ips.values().filter(|r| r.state == IpState::Idle).count();
    assert_eq!(free, addresses.len() - 3, "{:?}", s.ips);
    let mut new_ips = Vec::new();
    for i in 0..=free {
        let ns = format!("trw{tag}n{i}");
        run(&["ip", "netns", "add", &ns]);
        namespaces.0.push(ns.clone());
        let (ok, result) = plugin(
            "ADD",
            &format!("n{i:03}"),
            &format!("/var/run/netns/{ns}"),
            &format!("new-{i}"),
            &lab.conf,
        );
        if i == free {
            assert!(!ok, "a pod beyond the free addresses got {result}");
            break;
        }
        assert!(ok, "ADD new-{i}: {result}");
        new_ips.push(
            result["ips"][0]["address"]
                .as_str()
                .unwrap()
                .trim_end_matches("/32")
                .to_owned(),
        );
    }
    assert!(
        new_ips.iter().all(|ip| !old.contains(ip)),
        "{new_ips:?} includes an old pod's address {old:?}"
    );
    lab.sim.route_to_pod(&new_ips[0], &eni.mac_address).unwrap();
    let new0 = PathBuf::from(format!("/var/run/netns/trw{tag}n0"));
    assert!(tcp_reaches(new0, lab.vpc_ns(), VPC_ADDR, 7953), "new-0 reaches the VPC");
    assert!(
        tcp_reaches(old_ns(1), lab.vpc_ns(), VPC_ADDR, 7954),
        "old-1 still reaches the VPC"
    );

    // old-0's DEL, through the binary, releases its address and removes its wiring
    let (ok, result) = plugin(
        "DEL",
        "whatever-upstream-ran",
        &old_ns(0).display().to_string(),
        "old-0",
        &lab.conf,
    );
    assert!(ok, "DEL old-0: {result}");
    let veth0 = terway_datapath::names::host_veth_name("e2e", "old-0", "eth0");
    let s = node.ledger.snapshot();
    assert!(
        !matches!(s.ips[&old[0].parse().unwrap()].state, IpState::Bound(_)),
        "{:?}",
        s.ips
    );
    assert!(
        rules_of(&node_ns, &old[0]).is_empty(),
        "{:?}",
        rules_of(&node_ns, &old[0])
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while Command::new("ip")
        .args(["-n", &node_ns, "link", "show", &veth0])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "old-0's veth is still there");
        std::thread::sleep(Duration::from_millis(100));
    }
    // old-1's sandbox goes without a DEL reaching terwayd: the agent releases
    // it; old-2's (no veth) is kept while its namespace is there, then released
    run(&["ip", "netns", "del", &namespaces.0[1]]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while placeholders(&node.ledger.snapshot()) != [old[2].clone()] {
        assert!(
            Instant::now() < deadline,
            "old-1's address was not released after its sandbox went, or old-2's was: {:?}",
            placeholders(&node.ledger.snapshot())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // two agent passes (1 s apart) leave old-2 held
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(placeholders(&node.ledger.snapshot()), [old[2].clone()]);
    run(&["ip", "netns", "del", &namespaces.0[2]]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !placeholders(&node.ledger.snapshot()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "old-2's address was not released after its sandbox went"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        rules_of(&node_ns, &old[1]).is_empty(),
        "{:?}",
        rules_of(&node_ns, &old[1])
    );
    // after the cooldown all three go to new pods
    std::thread::sleep(Duration::from_millis(1200));
    for i in 0..3 {
        let ns = format!("trw{tag}m{i}");
        run(&["ip", "netns", "add", &ns]);
        namespaces.0.push(ns.clone());
        let (ok, result) = plugin(
            "ADD",
            &format!("m{i:03}"),
            &format!("/var/run/netns/{ns}"),
            &format!("more-{i}"),
            &lab.conf,
        );
        assert!(ok, "ADD more-{i}: {result}");
    }
    assert!(node.ledger.check().is_empty(), "{:?}", node.ledger.check());
    namespaces.0.drain(1..3); // gone already
    drop(namespaces);
    lab.stop();
    assert_eq!(before, root_state(), "the root namespace changed");
}

fn sim_vpc(sim: &SimulatedNode) -> PathBuf {
    PathBuf::from(format!("/var/run/netns/{}", sim.vpc_ns))
}

/// `ip_stack: "dual"` on a vSwitch with IPv6: each pod gets an IPv4 and an
/// IPv6 address from one ENI (both in the CNI result), reaches the VPC and
/// another pod over IPv6, and at rest every ENI holds as many IPv6 addresses
/// as IPv4 ones, with the pool within its bounds.
#[test]
fn dual_stack_pods_talk_over_ipv6() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED dual_stack_pods_talk_over_ipv6: {why}");
        return;
    }
    let before = root_state();
    let tag = format!("d{}", std::process::id() % 100_000);
    let pool = r#""max_pool_size": 6, "min_pool_size": 2, "ip_stack": "dual""#;
    let lab = Lab::start(&tag, "ecs.g6.2xlarge", pool, Duration::from_secs(30));
    let (node, sim) = (lab.running.node.clone(), lab.sim.clone());
    const VPC_V6: Ipv6Addr = Ipv6Addr::new(0x2408, 0x4005, 0x3de, 0x99, 0, 0, 0, 1);
    sim.add_vpc_address(&format!("{VPC_V6}/128")).unwrap();
    let namespaces = PodNamespaces((0..2).map(|i| format!("trw{tag}p{i}")).collect());
    let mut pods = Vec::new();
    for (i, ns) in namespaces.0.iter().enumerate() {
        run(&["ip", "netns", "add", ns]);
        let netns = format!("/var/run/netns/{ns}");
        let (ok, result) = plugin("ADD", &format!("d{i:04}"), &netns, &format!("dual-{i}"), &lab.conf);
        assert!(ok, "ADD dual-{i}: {result}");
        let ips = result["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "{result}");
        let v4: Ipv4Addr = ips[0]["address"]
            .as_str()
            .unwrap()
            .trim_end_matches("/32")
            .parse()
            .unwrap();
        let v6: Ipv6Addr = ips[1]["address"]
            .as_str()
            .unwrap()
            .trim_end_matches("/128")
            .parse()
            .unwrap();
        assert!(
            result["routes"].as_array().unwrap().iter().any(|r| r["dst"] == "::/0"),
            "{result}"
        );
        let s = node.ledger.snapshot();
        let eni = &s.enis[&s.ips[&IpAddr::V4(v4)].eni_id];
        assert_eq!(s.ips[&IpAddr::V6(v6)].eni_id, eni.id, "both families from one ENI");
        let cidr = &eni.ipv6.as_ref().unwrap().cidr;
        assert!(cidr.starts_with("2408:4005:3de:10::/"), "{cidr} {v6}");
        assert_eq!(v6.segments()[..4], [0x2408, 0x4005, 0x3de, 0x10]);
        sim.route_to_pod(&v6.to_string(), &eni.mac).unwrap();
        sim.route_to_pod(&v4.to_string(), &eni.mac).unwrap();
        pods.push((PathBuf::from(netns), v4, v6));
    }
    let (a, b) = (&pods[0], &pods[1]);
    // the ENI came up just now: its IPv6 link-local address stays tentative
    // (duplicate detection) for a second or more on a loaded machine, and
    // until then no neighbour discovery reaches the gateway. A first probe
    // that fails prints the ENI's IPv6 state and is tried once more.
    let mut reaches_v6 = tcp_reaches(a.0.clone(), lab.vpc_ns(), VPC_V6, 7960);
    if !reaches_v6 {
        let node_ns = lab.sim.node_ns.clone();
        for what in [
            &["-6", "addr"][..],
            &["-6", "neigh"],
            &["-6", "route", "show", "table", "all"],
        ] {
            let out = Command::new("ip").args(["-n", &node_ns]).args(what).output().unwrap();
            println!(
                "ip {what:?} after a failed IPv6 probe:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        reaches_v6 = tcp_reaches(a.0.clone(), lab.vpc_ns(), VPC_V6, 7963);
    }
    assert!(reaches_v6, "dual-0 reaches the VPC over IPv6");
    assert!(
        tcp_reaches(b.0.clone(), lab.vpc_ns(), VPC_ADDR, 7961),
        "dual-1 reaches the VPC over IPv4"
    );
    assert!(
        tcp_reaches(a.0.clone(), b.0.clone(), b.2, 7962),
        "dual-0 reaches dual-1 over IPv6"
    );
    let (ok, result) = plugin("CHECK", "d0000", &a.0.display().to_string(), "dual-0", &lab.conf);
    assert!(ok, "CHECK dual-0: {result}");
    for (i, p) in pods.iter().enumerate() {
        let (ok, result) = plugin(
            "DEL",
            &format!("d{i:04}"),
            &p.0.display().to_string(),
            &format!("dual-{i}"),
            &lab.conf,
        );
        assert!(ok, "DEL dual-{i}: {result}");
    }
    // at rest: an IPv6 beside every IPv4, and the pool within its bounds
    let mut settled = String::new();
    let ok = lab.rt.block_on(async {
        for _ in 0..100 {
            node.reconcile_soon();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let s = node.ledger.snapshot();
            let idle4 = s
                .ips
                .values()
                .filter(|r| r.ip.is_ipv4() && r.state == IpState::Idle)
                .count();
            let per_eni: Vec<(usize, usize)> = s
                .enis
                .keys()
                .map(|e| {
                    let on = s.ips.values().filter(|r| &r.eni_id == e);
                    let v4 = on.clone().filter(|r| r.ip.is_ipv4()).count();
                    (v4, on.count() - v4)
                })
                .collect();
            settled = format!(
                "{idle4} idle IPv4, (IPv4, IPv6) per ENI {per_eni:?}, {} intents",
                s.intents.len()
            );
            if (2..=6).contains(&idle4) && per_eni.iter().all(|(v4, v6)| v4 == v6) && s.intents.is_empty() {
                return true;
            }
        }
        false
    });
    assert!(ok, "the dual-stack pool did not settle: {settled}");
    println!("at rest: {settled}");
    drop(namespaces);
    drop(sim);
    lab.stop();
    assert_eq!(before, root_state(), "the root namespace changed");
}
