//! A simulated node for datapath tests: a "node" namespace plays the ECS
//! instance, a "vpc" namespace plays the vSwitch gateways, and each ENI is a
//! veth between them carrying the ENI's MAC. Everything is removed on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use terway_datapath::{names, EniLink, NetNs};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if sh(&["id", "-u"]).trim() != "0" {
        return Some("not root: the datapath tests create network namespaces".into());
    }
    let probe = format!("trwprobe{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Some("`ip netns add` failed (no iproute2 or no permission)".into());
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    None
}

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace made by the test, deleted on drop.
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(role: &str) -> Self {
        let name = format!(
            "trw{}{}{}",
            std::process::id() % 100_000,
            role,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    pub fn handle(&self) -> NetNs {
        NetNs::open(&self.path()).unwrap()
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// links, addresses, routes of every table, rules, neighbours and qdiscs, for comparisons.
    pub fn state(&self) -> String {
        let mut s = String::new();
        for args in [
            vec!["-o", "link"],
            vec!["-o", "addr"],
            vec!["route", "show", "table", "all"],
            vec!["-6", "route", "show", "table", "all"],
            vec!["rule"],
            vec!["-6", "rule"],
            vec!["neigh", "show", "nud", "permanent"],
            vec!["-6", "neigh", "show", "nud", "permanent"],
        ] {
            s.push_str(&self.ip(&args));
        }
        s.push_str(&sh(&["tc", "-n", &self.name, "qdisc", "show"]));
        // IPv6 link-local addresses and routes come and go with DAD; they are the kernel's, not ours
        // and a link's operstate settles a moment after it is set up
        s.lines()
            .filter(|l| {
                !["fe80::/64", "inet6 fe80", "local fe80", "ff00::/8"]
                    .iter()
                    .any(|k| l.contains(k))
            })
            .map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let mut kept = Vec::with_capacity(words.len());
                let mut skip = false;
                for w in words {
                    if skip {
                        skip = false;
                    } else if w == "state" && l.contains("mtu") {
                        skip = true;
                    } else {
                        kept.push(w);
                    }
                }
                kept.join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Packets received on `dev`.
    pub fn rx_packets(&self, dev: &str) -> u64 {
        let v: serde_json::Value = serde_json::from_str(&self.ip(&["-j", "-s", "link", "show", dev])).unwrap();
        v[0]["stats64"]["rx"]["packets"].as_u64().unwrap_or(0)
    }

    pub fn exists(&self) -> bool {
        Path::new(&format!("/var/run/netns/{}", self.name)).exists()
    }

    pub fn delete(&self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        self.delete();
    }
}

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 10);
/// An address "in the VPC", on the vpc namespace's loopback.
pub const VPC_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

pub struct Lab {
    pub node: Ns,
    pub vpc: Ns,
}

impl Lab {
    pub fn new() -> Self {
        let lab = Self {
            node: Ns::new("node"),
            vpc: Ns::new("vpc"),
        };
        lab.vpc.ip(&["addr", "add", &format!("{VPC_ADDR}/32"), "dev", "lo"]);
        // the primary ENI, eth0, holding the node's address
        sh(&[
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            &lab.node.name,
            "address",
            "00:16:3e:00:00:01",
            "type",
            "veth",
            "peer",
            "name",
            "gw0",
            "netns",
            &lab.vpc.name,
        ]);
        lab.node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "eth0"]);
        lab.node.ip(&["link", "set", "eth0", "up"]);
        lab.vpc.ip(&["addr", "add", "192.168.0.253/24", "dev", "gw0"]);
        lab.vpc.ip(&["link", "set", "gw0", "up"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &lab.vpc.name,
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.rp_filter=0",
        ]);
        lab
    }

    /// ENI `k`: `eni<k>` in the node (MAC 00:16:3e:00:0k:01) ↔ `gw<k>` in the
    /// vpc holding the gateway 192.168.k.253 of vSwitch 192.168.k.0/24.
    pub fn add_eni(&self, k: u8) -> EniLink {
        let mac = format!("00:16:3e:00:{k:02x}:01");
        sh(&[
            "ip",
            "link",
            "add",
            &format!("eni{k}"),
            "netns",
            &self.node.name,
            "address",
            &mac,
            "type",
            "veth",
            "peer",
            "name",
            &format!("gw{k}"),
            "netns",
            &self.vpc.name,
        ]);
        self.vpc
            .ip(&["addr", "add", &format!("192.168.{k}.253/24"), "dev", &format!("gw{k}")]);
        self.vpc.ip(&["link", "set", &format!("gw{k}"), "up"]);
        EniLink {
            mac: names::parse_mac(&mac).unwrap(),
            route_table: names::eni_route_table(u32::from(k)),
            gateway: Ipv4Addr::new(192, 168, k, 253),
            cidr: format!("192.168.{k}.0/24").parse().unwrap(),
            gateway_v6: None,
            cidr_v6: None,
            mtu: 1500,
        }
    }

    /// What the VPC's SDN knows: `ip` lives behind the ENI `k`.
    pub fn vpc_knows(&self, k: u8, ip: Ipv4Addr, eni: &EniLink) {
        self.vpc.ip(&[
            "neigh",
            "replace",
            &ip.to_string(),
            "lladdr",
            &names::format_mac(&eni.mac),
            "dev",
            &format!("gw{k}"),
            "nud",
            "permanent",
        ]);
    }
}

/// Runs `f` on a thread inside the namespace at `ns`.
pub fn in_ns<T: Send + 'static>(ns: PathBuf, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || NetNs::open(&ns).unwrap().enter(f).unwrap())
}

/// Whether a TCP connection from namespace `from` reaches `to:port` served in namespace `at`.
pub fn tcp_reaches(from: PathBuf, at: PathBuf, to: impl Into<std::net::IpAddr>, port: u16) -> bool {
    let to: std::net::IpAddr = to.into();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = in_ns(at, move || {
        let listener = TcpListener::bind((to, port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if listener.accept().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    });
    rx.recv().unwrap();
    let client = in_ns(from, move || {
        TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_secs(3)).is_ok()
    });
    let connected = client.join().unwrap();
    connected && server.join().unwrap()
}

/// Sends as fast as TCP allows from `from` to a receiver in `at` for `secs`;
/// returns the receiver's rate in bits per second.
pub fn tcp_rate(from: PathBuf, at: PathBuf, to: Ipv4Addr, port: u16, secs: f64) -> f64 {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = in_ns(at, move || {
        let listener = TcpListener::bind((to, port)).unwrap();
        tx.send(()).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        let mut first: Option<Instant> = None;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    first.get_or_insert_with(Instant::now);
                    total += n as u64;
                }
            }
        }
        let elapsed = first.map_or(1.0, |f| f.elapsed().as_secs_f64());
        total as f64 * 8.0 / elapsed
    });
    rx.recv().unwrap();
    let sender = in_ns(from, move || {
        let mut s = TcpStream::connect((to, port)).unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < deadline {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    sender.join().unwrap();
    receiver.join().unwrap()
}

/// Links, routes and rules of the namespace this process runs in.
pub fn root_state() -> String {
    let mut s = sh(&["ip", "-o", "link"]);
    s.push_str(&sh(&["ip", "route", "show", "table", "all"]));
    s.push_str(&sh(&["ip", "rule"]));
    s.lines()
        .map(|l| l.split(" link/").next().unwrap_or(l).to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}
