//! A two-node cluster in network namespaces for NetworkPolicy tests: a "VPC"
//! namespace routes between two "node" namespaces, each node holds pods
//! wired like terwayd's veth mode (host side `cali…`, a /32 route, proxy
//! ARP for the pod's link-local gateway), and every pod serves TCP and UDP
//! on ports 80 and 81 (or the ports a test asks for), answers ICMP echo,
//! and takes SCTP on any port (a raw socket: these
//! kernels have no SCTP module, so SCTP probes are one packet each way that
//! either arrives or not). Each node runs a policy [`Enforcer`] writing into
//! its own namespace's nftables, exactly as terwayd does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use terway_datapath::names::host_veth_name;
use terway_datapath::netns::NetNs;
use terway_node::policy::calico::model::CalicoPolicy;
use terway_node::policy::model::{ClusterState, Labels, NamedPort, ObjectKey, PodInfo, Policy, Protocol};
use terway_node::policy::nft::Nft;
use terway_node::policy::ruleset::LocalPod;
use terway_node::policy::{explain, Enforcer};

/// Whether this process may build namespaces (root with `ip` and `nft`).
pub fn unavailable() -> Option<String> {
    if !nix_is_root() {
        return Some("needs root to build network namespaces".into());
    }
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some(format!("needs the `{tool}` binary (iproute2, nftables)"));
        }
    }
    None
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn run_ip(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A pod of the lab.
#[derive(Debug)]
pub struct LabPod {
    pub key: ObjectKey,
    pub ip: Ipv4Addr,
    pub node: usize,
    netns_name: String,
    netns: NetNs,
    next_port: AtomicU16,
}

/// SCTP packets seen: (source, destination, source port, destination port).
type Seen = Arc<(Mutex<HashSet<(Ipv4Addr, Ipv4Addr, u16, u16)>>, Condvar)>;

#[derive(Debug)]
pub struct Lab {
    prefix: String,
    namespaces_made: Vec<String>,
    pub pods: Vec<LabPod>,
    pub nodes: Vec<Enforcer>,
    node_netns: Vec<NetNs>,
    pub state: ClusterState,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Arc<AtomicBool>,
    sctp_threads: Vec<std::thread::JoinHandle<()>>,
    seen: Seen,
    addresses_made: usize,
    ports: Vec<u16>,
}

pub const PORTS: [u16; 2] = [80, 81];

fn named_ports() -> Vec<NamedPort> {
    let mut out = Vec::new();
    for port in PORTS {
        for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            out.push(NamedPort {
                name: format!("serve-{port}-{}", protocol.nft()),
                protocol,
                port,
            });
        }
    }
    out
}

impl Lab {
    /// The e2e model: namespaces x, y, z, pods a, b, c in each, on two nodes.
    pub fn model() -> std::io::Result<Self> {
        let mut pods = Vec::new();
        for (i, ns) in ["x", "y", "z"].iter().enumerate() {
            for (j, name) in ["a", "b", "c"].iter().enumerate() {
                pods.push((ns.to_string(), name.to_string(), (i + j) % 2));
            }
        }
        Self::new(&pods)
    }

    /// Pods as (namespace, name, node index 0 or 1); namespaces get the
    /// labels `ns: <name>` and `kubernetes.io/metadata.name`, pods `pod: <name>`.
    pub fn new(pods: &[(String, String, usize)]) -> std::io::Result<Self> {
        Self::with_ports(pods, &PORTS)
    }

    /// [`Lab::new`] with pods serving TCP and UDP on `ports`.
    pub fn with_ports(pods: &[(String, String, usize)], ports: &[u16]) -> std::io::Result<Self> {
        let prefix = format!("tnp{}-{}", std::process::id(), rand::random::<u16>());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let mut lab = Self {
            prefix: prefix.clone(),
            namespaces_made: Vec::new(),
            pods: Vec::new(),
            nodes: Vec::new(),
            node_netns: Vec::new(),
            state: ClusterState::default(),
            runtime: Some(runtime),
            stop: Arc::new(AtomicBool::new(false)),
            sctp_threads: Vec::new(),
            seen: Arc::default(),
            addresses_made: 0,
            ports: ports.to_vec(),
        };
        let vpc = format!("{prefix}-vpc");
        lab.make_netns(&vpc)?;
        NetNs::open(&netns_path(&vpc))
            .and_then(|ns| ns.write_sysctl("net/ipv4/ip_forward", "1"))
            .map_err(std::io::Error::other)?;
        for i in 0..2u8 {
            let node = format!("{prefix}-n{i}");
            lab.make_netns(&node)?;
            run_ip(&[
                "-n",
                &vpc,
                "link",
                "add",
                &format!("v{i}"),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &node,
            ])?;
            run_ip(&[
                "-n",
                &vpc,
                "addr",
                "add",
                &format!("172.31.{i}.254/24"),
                "dev",
                &format!("v{i}"),
            ])?;
            run_ip(&["-n", &vpc, "link", "set", &format!("v{i}"), "up"])?;
            run_ip(&["-n", &node, "addr", "add", &format!("172.31.{i}.1/24"), "dev", "eth0"])?;
            run_ip(&["-n", &node, "link", "set", "eth0", "up"])?;
            run_ip(&["-n", &node, "link", "set", "lo", "up"])?;
            run_ip(&[
                "-n",
                &node,
                "route",
                "add",
                "default",
                "via",
                &format!("172.31.{i}.254"),
            ])?;
            run_ip(&[
                "-n",
                &vpc,
                "route",
                "add",
                &format!("10.{}.0.0/24", i + 1),
                "via",
                &format!("172.31.{i}.1"),
            ])?;
            let ns = NetNs::open(&netns_path(&node)).map_err(std::io::Error::other)?;
            ns.write_sysctl("net/ipv4/ip_forward", "1")
                .map_err(std::io::Error::other)?;
            let mut enforcer = Enforcer::new(Nft::new(Some(&netns_path(&node))));
            enforcer.set_ready();
            lab.nodes.push(enforcer);
            lab.node_netns.push(ns);
        }
        for ns in ["x", "y", "z"] {
            lab.state.namespaces.insert(ns.into(), namespace_labels(ns));
        }
        for (ns, name, node) in pods {
            lab.add_pod(ns, name, *node)?;
        }
        lab.push_state();
        Ok(lab)
    }

    fn make_netns(&mut self, name: &str) -> std::io::Result<()> {
        run_ip(&["netns", "add", name])?;
        self.namespaces_made.push(name.to_owned());
        Ok(())
    }

    /// Creates a pod (namespace, veth, address, servers) on a node.
    pub fn add_pod(&mut self, ns: &str, name: &str, node: usize) -> std::io::Result<usize> {
        // never reuse an address in one lab: conntrack would remember the old pod's flows
        self.addresses_made += 1;
        let index = self.addresses_made;
        let ip = Ipv4Addr::new(
            10,
            u8::try_from(node + 1).unwrap_or(1),
            0,
            u8::try_from(index + 2).unwrap_or(250),
        );
        let pod_ns = format!("{}-{ns}-{name}", self.prefix);
        let node_ns = format!("{}-n{node}", self.prefix);
        let host = host_veth_name(ns, name, "eth0");
        self.make_netns(&pod_ns)?;
        run_ip(&[
            "-n", &node_ns, "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &pod_ns,
        ])?;
        run_ip(&["-n", &node_ns, "link", "set", &host, "up"])?;
        run_ip(&[
            "-n",
            &node_ns,
            "route",
            "add",
            &format!("{ip}/32"),
            "dev",
            &host,
            "scope",
            "link",
        ])?;
        self.node_netns[node]
            .write_sysctl(&format!("net/ipv4/conf/{host}/proxy_arp"), "1")
            .map_err(std::io::Error::other)?;
        // proxy ARP answers after a random delay of up to proxy_delay (0.8 s
        // by default): a new pod's first packet would wait for it
        self.node_netns[node]
            .write_sysctl(&format!("net/ipv4/neigh/{host}/proxy_delay"), "0")
            .map_err(std::io::Error::other)?;
        run_ip(&["-n", &pod_ns, "addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        run_ip(&["-n", &pod_ns, "link", "set", "eth0", "up"])?;
        run_ip(&["-n", &pod_ns, "link", "set", "lo", "up"])?;
        run_ip(&[
            "-n",
            &pod_ns,
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        run_ip(&[
            "-n",
            &pod_ns,
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ])?;
        let netns = NetNs::open(&netns_path(&pod_ns)).map_err(std::io::Error::other)?;
        self.serve(&netns, ip)?;
        let key = ObjectKey::new(ns, name);
        let info = PodInfo {
            labels: [("pod".to_owned(), name.to_owned())].into(),
            ips: vec![IpAddr::V4(ip)],
            node: format!("node-{node}"),
            host_network: false,
            host_ip: Some(IpAddr::V4(Ipv4Addr::new(172, 31, u8::try_from(node).unwrap_or(0), 1))),
            ports: named_ports(),
            service_account: "default".into(),
        };
        self.state.pods.insert(key.clone(), info.clone());
        self.state
            .namespaces
            .entry(ns.to_owned())
            .or_insert_with(|| namespace_labels(ns));
        for (n, enforcer) in self.nodes.iter_mut().enumerate() {
            if n == node {
                let local = LocalPod {
                    ifname: host.clone(),
                    ips: vec![IpAddr::V4(ip)],
                };
                enforcer.add_local(key.clone(), local, Some(info.clone()), None);
            } else {
                enforcer.upsert_pod(key.clone(), info.clone());
            }
        }
        self.pods.push(LabPod {
            key,
            ip,
            node,
            netns_name: pod_ns,
            netns,
            next_port: AtomicU16::new(10_000),
        });
        Ok(self.pods.len() - 1)
    }

    /// Deletes a pod: its sandbox (namespace) and its place in policy.
    pub fn remove_pod(&mut self, index: usize) -> std::io::Result<()> {
        let pod = self.pods.remove(index);
        for (n, enforcer) in self.nodes.iter_mut().enumerate() {
            if n == pod.node {
                enforcer.remove_local(&pod.key);
            }
            enforcer.remove_pod(&pod.key);
        }
        self.state.pods.remove(&pod.key);
        run_ip(&["netns", "del", &pod.netns_name])?;
        self.namespaces_made.retain(|n| *n != pod.netns_name);
        Ok(())
    }

    fn serve(&mut self, netns: &NetNs, ip: Ipv4Addr) -> std::io::Result<()> {
        let Some(rt) = &self.runtime else { return Ok(()) };
        let _guard = rt.enter();
        for port in self.ports.clone() {
            let addr = SocketAddr::new(IpAddr::V4(ip), port);
            let tcp = netns
                .enter(|| std::net::TcpListener::bind(addr))
                .map_err(std::io::Error::other)??;
            tcp.set_nonblocking(true)?;
            let tcp = tokio::net::TcpListener::from_std(tcp)?;
            rt.spawn(async move {
                while let Ok((conn, _)) = tcp.accept().await {
                    // hold each connection open: churn tests keep theirs
                    tokio::spawn(async move {
                        let (mut r, mut w) = conn.into_split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            });
            let udp = netns
                .enter(|| std::net::UdpSocket::bind(addr))
                .map_err(std::io::Error::other)??;
            udp.set_nonblocking(true)?;
            let udp = tokio::net::UdpSocket::from_std(udp)?;
            rt.spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                    let _ = udp.send_to(&buf[..n], from).await;
                }
            });
        }
        let raw = netns
            .enter(|| {
                socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::RAW,
                    Some(socket2::Protocol::from(132)),
                )
            })
            .map_err(std::io::Error::other)??;
        raw.set_read_timeout(Some(Duration::from_millis(100)))?;
        let (stop, seen) = (self.stop.clone(), self.seen.clone());
        self.sctp_threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                let Ok(n) = (&raw).read(&mut buf) else { continue };
                if let Some(packet) = parse_sctp(&buf[..n]) {
                    let (lock, cv) = &*seen;
                    lock.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(packet);
                    cv.notify_all();
                }
            }
        }));
        Ok(())
    }

    /// Hands the cluster state to both nodes' engines (after the test changed it).
    pub fn push_state(&mut self) {
        for enforcer in &mut self.nodes {
            let policies: BTreeMap<ObjectKey, Policy> = self.state.policies.clone();
            enforcer.replace_policies(policies);
            enforcer.replace_calico(self.state.calico.clone());
            enforcer.replace_service_accounts(self.state.service_accounts.clone());
            for (name, labels) in &self.state.namespaces {
                enforcer.set_namespace(name, Some(labels.clone()));
            }
            for (key, pod) in &self.state.pods {
                enforcer.upsert_pod(key.clone(), pod.clone());
            }
        }
    }

    /// Writes both nodes' tables; returns the lines written.
    pub fn sync(&mut self) -> Result<usize, String> {
        let mut lines = 0;
        for (n, enforcer) in self.nodes.iter_mut().enumerate() {
            let report = enforcer.sync().map_err(|e| format!("node {n}: {e}"))?;
            lines += report.script_lines;
        }
        Ok(lines)
    }

    /// Replaces every policy, and syncs.
    pub fn set_policies(&mut self, policies: Vec<Policy>) -> Result<(), String> {
        self.set_all_policies(policies, Vec::new())
    }

    /// Replaces every Kubernetes and Calico policy, and syncs.
    pub fn set_all_policies(&mut self, policies: Vec<Policy>, calico: Vec<CalicoPolicy>) -> Result<(), String> {
        self.state.policies = policies.into_iter().map(|p| (p.key.clone(), p)).collect();
        self.state.calico = calico.into_iter().map(|p| (p.key(), p)).collect();
        self.push_state();
        self.sync().map(|_| ())
    }

    /// A pod's service account and that account's labels.
    pub fn set_service_account(&mut self, key: &ObjectKey, account: &str, labels: Labels) -> Result<(), String> {
        let pod = self.state.pods.get_mut(key).ok_or_else(|| format!("no pod {key}"))?;
        pod.service_account = account.to_owned();
        let info = pod.clone();
        let sa = ObjectKey::new(&key.namespace, account);
        self.state.service_accounts.insert(sa.clone(), labels.clone());
        for enforcer in &mut self.nodes {
            enforcer.set_service_account(sa.clone(), Some(labels.clone()));
            enforcer.upsert_pod(key.clone(), info.clone());
        }
        self.sync().map(|_| ())
    }

    pub fn set_pod_labels(&mut self, key: &ObjectKey, labels: Labels) -> Result<(), String> {
        let pod = self.state.pods.get_mut(key).ok_or_else(|| format!("no pod {key}"))?;
        pod.labels = labels;
        let info = pod.clone();
        for enforcer in &mut self.nodes {
            enforcer.upsert_pod(key.clone(), info.clone());
        }
        self.sync().map(|_| ())
    }

    pub fn set_namespace_labels(&mut self, ns: &str, labels: Labels) -> Result<(), String> {
        self.state.namespaces.insert(ns.to_owned(), labels.clone());
        for enforcer in &mut self.nodes {
            enforcer.set_namespace(ns, Some(labels.clone()));
        }
        self.sync().map(|_| ())
    }

    pub fn index(&self, key: &str) -> Option<usize> {
        let key = ObjectKey::parse(key)?;
        self.pods.iter().position(|p| p.key == key)
    }

    /// Does a new connection from pod `from` to pod `to` get through?
    pub fn probe(&self, from: usize, to: usize, protocol: Protocol, port: u16, timeout: Duration) -> bool {
        let (src, dst) = (&self.pods[from], &self.pods[to]);
        // a source port never used before: conntrack must not see an old flow
        let sport = src.next_port.fetch_add(1, Ordering::Relaxed);
        let local = SocketAddr::new(IpAddr::V4(src.ip), sport);
        let remote = SocketAddr::new(IpAddr::V4(dst.ip), port);
        let (ty, proto) = match protocol {
            Protocol::Tcp => (socket2::Type::STREAM, socket2::Protocol::TCP),
            Protocol::Udp => (socket2::Type::DGRAM, socket2::Protocol::UDP),
            Protocol::Sctp => (socket2::Type::RAW, socket2::Protocol::from(132)),
            Protocol::Icmp => (socket2::Type::RAW, socket2::Protocol::ICMPV4),
        };
        let Ok(Ok(sock)) = src
            .netns
            .enter(|| socket2::Socket::new(socket2::Domain::IPV4, ty, Some(proto)))
        else {
            return false;
        };
        match protocol {
            Protocol::Tcp => {
                let _ = sock.set_reuse_address(true);
                sock.bind(&local.into()).is_ok() && sock.connect_timeout(&remote.into(), timeout).is_ok()
            }
            Protocol::Udp => {
                if sock.bind(&local.into()).is_err() || sock.send_to(b"ping", &remote.into()).is_err() {
                    return false;
                }
                let _ = sock.set_read_timeout(Some(timeout));
                let mut buf = [0u8; 16];
                (&sock).read(&mut buf).is_ok()
            }
            Protocol::Icmp => {
                // an echo request (the port is the ICMP type: 8) with our own id; the kernel answers
                let id = sport;
                let packet = icmp_echo(id);
                if port != 8
                    || sock
                        .send_to(&packet, &SocketAddr::new(IpAddr::V4(dst.ip), 0).into())
                        .is_err()
                {
                    return false;
                }
                let deadline = std::time::Instant::now() + timeout;
                let mut buf = [0u8; 256];
                while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
                    let _ = sock.set_read_timeout(Some(left.max(Duration::from_millis(1))));
                    let Ok(n) = (&sock).read(&mut buf) else { return false };
                    let ihl = usize::from(buf[0] & 0x0f) * 4;
                    let from = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                    if n >= ihl + 8 && from == dst.ip && buf[ihl] == 0 && buf[ihl + 4..ihl + 6] == id.to_be_bytes() {
                        return true;
                    }
                }
                false
            }
            Protocol::Sctp => {
                let packet = sctp_init(src.ip, dst.ip, sport, port);
                if sock
                    .send_to(&packet, &SocketAddr::new(IpAddr::V4(dst.ip), 0).into())
                    .is_err()
                {
                    return false;
                }
                let (lock, cv) = &*self.seen;
                let want = (src.ip, dst.ip, sport, port);
                let guard = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let (guard, _) = cv
                    .wait_timeout_while(guard, timeout, |seen| !seen.contains(&want))
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                guard.contains(&want)
            }
        }
    }

    /// Probes cells in parallel: (from, to, protocol, port) → reached.
    pub fn probe_all(&self, cells: &[(usize, usize, Protocol, u16)], timeout: Duration) -> Vec<bool> {
        let mut out = vec![false; cells.len()];
        std::thread::scope(|s| {
            let handles: Vec<_> = cells
                .iter()
                .map(|&(f, t, proto, port)| s.spawn(move || self.probe(f, t, proto, port, timeout)))
                .collect();
            for (slot, h) in out.iter_mut().zip(handles) {
                *slot = h.join().unwrap_or(false);
            }
        });
        out
    }

    /// Probes `cells` in parallel; a cell whose packet disagrees with
    /// `expected` is probed once more with time to spare (a slow first
    /// packet is not a verdict).
    pub fn probe_expecting(&self, cells: &[(usize, usize, Protocol, u16)], expected: &[bool]) -> Vec<bool> {
        let mut got = self.probe_all(cells, Duration::from_millis(300));
        let again: Vec<usize> = (0..cells.len()).filter(|&i| got[i] != expected[i]).collect();
        if !again.is_empty() {
            let retry: Vec<_> = again.iter().map(|&i| cells[i]).collect();
            for (&i, r) in again.iter().zip(self.probe_all(&retry, Duration::from_secs(2))) {
                got[i] = r;
            }
        }
        got
    }

    /// Probes random `cells` against the evaluator; returns how many the
    /// evaluator denied, and a report per cell where packet and evaluator
    /// disagree (`context`: what to reproduce it from).
    pub fn cells_against_evaluator(
        &self,
        cells: &[(usize, usize, Protocol, u16)],
        context: &str,
    ) -> (usize, Vec<String>) {
        let expected: Vec<bool> = cells
            .iter()
            .map(|&(f, t, p, port)| self.evaluate(f, t, p, port))
            .collect();
        let got = self.probe_expecting(cells, &expected);
        let denied = expected.iter().filter(|e| !**e).count();
        let disagreements = cells
            .iter()
            .enumerate()
            .filter(|(i, _)| got[*i] != expected[*i])
            .map(|(i, &(f, t, proto, port))| {
                format!(
                    "{context}: {} -> {} {proto}/{port}: packet {}, evaluator {}\nnode 0:\n{}\nnode 1:\n{}",
                    self.pods[f].key,
                    self.pods[t].key,
                    got[i],
                    expected[i],
                    self.listing(0),
                    self.listing(1)
                )
            })
            .collect();
        (denied, disagreements)
    }

    /// What the evaluator says of a cell.
    pub fn evaluate(&self, from: usize, to: usize, protocol: Protocol, port: u16) -> bool {
        let (src, dst) = (&self.pods[from], &self.pods[to]);
        let a = self.state.endpoint_at(IpAddr::V4(src.ip));
        let b = self.state.endpoint_at(IpAddr::V4(dst.ip));
        explain(&self.state, &a, &b, protocol, port).allowed
    }

    /// Probes every (from, to) cell on one protocol and port: expectations
    /// start all-allowed and are changed in order by (from pattern, to
    /// pattern, allowed) — patterns `*`, `ns/*`, `ns/pod`. Each cell must
    /// match both the expectation and the offline evaluator. `Ok(cells)`, or
    /// the table with the wrong cells marked and both nodes' rulesets.
    pub fn check_table(
        &self,
        title: &str,
        proto: Protocol,
        port: u16,
        expectations: &[(&str, &str, bool)],
    ) -> Result<usize, String> {
        let n = self.pods.len();
        let keys: Vec<String> = self.pods.iter().map(|p| p.key.to_string()).collect();
        let cells: Vec<_> = (0..n).flat_map(|f| (0..n).map(move |t| (f, t, proto, port))).collect();
        let mut expected = vec![true; cells.len()];
        for (i, &(f, t, ..)) in cells.iter().enumerate() {
            for (from, to, allowed) in expectations {
                if pattern_matches(from, &keys[f]) && pattern_matches(to, &keys[t]) {
                    expected[i] = *allowed;
                }
            }
            // a pod reaching itself never leaves it (upstream ignores these cells)
            if f == t {
                expected[i] = true;
            }
        }
        let got = self.probe_expecting(&cells, &expected);
        let width = keys.iter().map(String::len).max().unwrap_or(4).max(4);
        let mut table = format!("{title} — {proto}/{port}\n{:>width$}", "");
        for k in &keys {
            table.push_str(&format!(" {k:>width$}"));
        }
        let mut bad = false;
        for (i, &(f, t, ..)) in cells.iter().enumerate() {
            if t == 0 {
                table.push_str(&format!("\n{:>width$}", keys[f]));
            }
            let evaluated = self.evaluate(f, t, proto, port);
            let mark = match (got[i], expected[i], evaluated) {
                (true, true, true) => ".",
                (false, false, false) => "X",
                (true, false, _) => "+!",
                (false, true, _) => "-!",
                _ => "?!",
            };
            bad |= mark.ends_with('!');
            table.push_str(&format!(" {mark:>width$}"));
        }
        if bad {
            return Err(format!(
                "{table}\n(. allowed, X denied, +! passed but should not, -! blocked but should pass, ?! evaluator disagrees)\nnode 0:\n{}\nnode 1:\n{}",
                self.listing(0),
                self.listing(1)
            ));
        }
        Ok(cells.len())
    }

    /// The table as `nft list` shows it on a node.
    pub fn listing(&self, node: usize) -> String {
        self.nodes[node]
            .nft()
            .list_text()
            .map(Option::unwrap_or_default)
            .unwrap_or_else(|e| e.to_string())
    }

    pub fn node_netns(&self, node: usize) -> &NetNs {
        &self.node_netns[node]
    }

    pub fn pod_netns(&self, index: usize) -> &NetNs {
        &self.pods[index].netns
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.sctp_threads.drain(..) {
            let _ = t.join();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        for ns in self.namespaces_made.iter().rev() {
            let _ = run_ip(&["netns", "del", ns]);
        }
    }
}

fn netns_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new("/run/netns").join(name)
}

/// Pods a pattern names: `*`, `x/*`, `*/a`, `x/a`.
pub fn pattern_matches(pattern: &str, key: &str) -> bool {
    let part = |p: &str, k: &str| p == "*" || p == k;
    match (pattern.split_once('/'), key.split_once('/')) {
        (Some((pn, pp)), Some((kn, kp))) => part(pn, kn) && part(pp, kp),
        _ => pattern == "*" || pattern == key,
    }
}

pub fn namespace_labels(ns: &str) -> Labels {
    [
        ("ns".to_owned(), ns.to_owned()),
        ("kubernetes.io/metadata.name".to_owned(), ns.to_owned()),
    ]
    .into()
}

/// An ICMP echo request with the internet checksum.
fn icmp_echo(id: u16) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(b"terway-probe");
    let mut sum: u32 = p
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = !u16::try_from(sum).unwrap_or(0);
    p[2..4].copy_from_slice(&checksum.to_be_bytes());
    p
}

/// An SCTP INIT (common header and one INIT chunk) with a valid CRC32c.
fn sctp_init(_src: Ipv4Addr, _dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // verification tag: 0 in INIT
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, filled below
    p.extend_from_slice(&[1, 0, 0, 20]); // INIT, flags, length 20
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // initiate tag
    p.extend_from_slice(&65_535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&1u32.to_be_bytes()); // initial TSN
    let crc = crc32c(&p);
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// (source, destination, source port, destination port) of an IPv4 SCTP packet.
fn parse_sctp(b: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u16, u16)> {
    let ihl = usize::from(*b.first()? & 0x0f) * 4;
    let src = Ipv4Addr::new(*b.get(12)?, *b.get(13)?, *b.get(14)?, *b.get(15)?);
    let dst = Ipv4Addr::new(*b.get(16)?, *b.get(17)?, *b.get(18)?, *b.get(19)?);
    let sport = u16::from_be_bytes([*b.get(ihl)?, *b.get(ihl + 1)?]);
    let dport = u16::from_be_bytes([*b.get(ihl + 2)?, *b.get(ihl + 3)?]);
    Some((src, dst, sport, dport))
}

/// Pod indexes by key, for tests that name pods.
pub fn keys(lab: &Lab) -> HashMap<String, usize> {
    lab.pods
        .iter()
        .enumerate()
        .map(|(i, p)| (p.key.to_string(), i))
        .collect()
}
