//! `terwayd demo`: the daemon on the embedded API emulator. Pods arrive at a
//! steady rate until the small vSwitch runs out; the operator's fix from
//! the seed document (add a vSwitch to `eni_conf`) is applied to the live
//! config file, and the node goes on without a restart.

use crate::cni::exchange;
use crate::cni::protocol::{PodRequest, Reply, Request};
use crate::daemon::NodeOptions;
use crate::service;
use crate::simulated_node::SimulatedNode;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use terway_cloud::emulator::{Emulator, Scenario, DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET, DEFAULT_ZONE};

const SMALL: &str = "vsw-small0000000001";
const LARGE: &str = "vsw-large0000000001";
const VPC_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 99, 0, 1);

fn eni_conf(url: &str, vswitches: &[&str]) -> String {
    let list: Vec<String> = vswitches.iter().map(|v| format!("\"{v}\"")).collect();
    format!(
        r#"{{
  "version": "1",
  "max_pool_size": 25,
  "min_pool_size": 10,
  "vswitches": {{"{DEFAULT_ZONE}": [{}]}},
  "service_cidr": "172.21.0.0/20",
  "access_key": "{DEFAULT_ACCESS_KEY_ID}",
  "access_secret": "{DEFAULT_ACCESS_KEY_SECRET}",
  "ecs_endpoint": "{url}",
  "vpc_endpoint": "{url}",
  "metadata_endpoint": "{url}",
  "ip_pool_sync_period": "5s",
  "ip_cooldown": "5s"
}}
"#,
        list.join(", ")
    )
}

/// How the demo's pods reach terwayd.
enum Pods {
    /// The CNI socket protocol, without network namespaces.
    Socket(PathBuf),
    /// As root: the real `terway` binary, each pod in a namespace of its own,
    /// the node and the VPC simulated by namespaces.
    Plugin {
        binary: PathBuf,
        conf: String,
        sim: std::sync::Arc<SimulatedNode>,
        namespaces: Vec<String>,
    },
}

impl Pods {
    fn netns(&self, i: usize) -> String {
        format!("trwdemo{}p{i}", std::process::id() % 10_000)
    }

    async fn add(&mut self, i: usize) -> anyhow::Result<Reply> {
        match self {
            Pods::Socket(socket) => call(socket, Request::Add(pod(i))).await,
            Pods::Plugin { .. } => {
                let ns = self.netns(i);
                let Pods::Plugin { namespaces, .. } = self else {
                    unreachable!()
                };
                if !namespaces.contains(&ns) {
                    let ok = std::process::Command::new("ip")
                        .args(["netns", "add", &ns])
                        .status()?
                        .success();
                    anyhow::ensure!(ok, "ip netns add {ns} failed");
                    namespaces.push(ns.clone());
                }
                self.plugin("ADD", i, &ns)
            }
        }
    }

    async fn del(&mut self, i: usize) -> anyhow::Result<Reply> {
        match self {
            Pods::Socket(socket) => call(socket, Request::Del(pod(i))).await,
            Pods::Plugin { .. } => {
                let ns = self.netns(i);
                self.plugin("DEL", i, &ns)
            }
        }
    }

    fn plugin(&self, command: &str, i: usize, ns: &str) -> anyhow::Result<Reply> {
        use std::io::Write;
        let Pods::Plugin { binary, conf, .. } = self else {
            anyhow::bail!("not the plugin")
        };
        let request = pod(i);
        let mut child = std::process::Command::new(binary)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &request.container_id)
            .env("CNI_NETNS", format!("/var/run/netns/{ns}"))
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                    request.pod_namespace, request.pod_name
                ),
            )
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        child.stdin.take().map(|mut s| s.write_all(conf.as_bytes()));
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() && out.status.success() {
            return Ok(Reply::Ok { network: None });
        }
        let v: serde_json::Value = serde_json::from_str(&text)?;
        if out.status.success() {
            let s = |k: &str| v["ips"][0][k].as_str().unwrap_or_default().to_owned();
            let mac = v["interfaces"][0]["mac"].as_str().unwrap_or_default().to_owned();
            Ok(Reply::Ok {
                network: Some(crate::cni::protocol::PodNetworkReply {
                    ipv4: s("address"),
                    ipv4_gateway: s("gateway"),
                    ipv6: None,
                    ipv6_gateway: None,
                    mac,
                }),
            })
        } else {
            Ok(Reply::Error {
                code: v["code"].as_u64().unwrap_or(0) as u32,
                msg: v["msg"].as_str().unwrap_or_default().to_owned(),
                details: v["details"].as_str().unwrap_or_default().to_owned(),
            })
        }
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        if let Pods::Plugin { namespaces, .. } = self {
            for ns in namespaces.iter() {
                let _ = std::process::Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
}

/// Whether TCP from the pod's namespace reaches `to` in the vpc namespace.
fn reaches_vpc(pod_ns: &str, vpc_ns: &str, to: std::net::Ipv4Addr, port: u16) -> bool {
    use terway_datapath::NetNs;
    let vpc = format!("/var/run/netns/{vpc_ns}");
    let pod = format!("/var/run/netns/{pod_ns}");
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        NetNs::open(std::path::Path::new(&vpc))
            .ok()?
            .enter(move || {
                let l = std::net::TcpListener::bind((to, port)).ok()?;
                l.set_nonblocking(true).ok()?;
                let _ = tx.send(());
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline {
                    if l.accept().is_ok() {
                        return Some(());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                None
            })
            .ok()?
    });
    if rx.recv_timeout(Duration::from_secs(3)).is_err() {
        return false;
    }
    let client = NetNs::open(std::path::Path::new(&pod))
        .and_then(|ns| {
            ns.enter(|| std::net::TcpStream::connect_timeout(&(to, port).into(), Duration::from_secs(2)).is_ok())
        })
        .unwrap_or(false);
    client && server.join().ok().flatten().is_some()
}

fn pod(i: usize) -> PodRequest {
    PodRequest::new(
        "demo",
        &format!("pod-{i:02}"),
        &format!("demo{i:04}"),
        &format!("/var/run/netns/demo-{i}"),
    )
}

async fn call(socket: &Path, request: Request) -> anyhow::Result<Reply> {
    let socket = socket.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || exchange(&socket, &request, Duration::from_secs(60))).await??)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Runs the demo with `pods` pods arriving every `interval`.
pub async fn run(pods: usize, interval: Duration) -> anyhow::Result<()> {
    let em = Emulator::start(Scenario::default()).await.map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir()?;
    let conf_path = dir.path().join("eni_conf");
    std::fs::write(&conf_path, eni_conf(&em.url(), &[SMALL]))?;
    println!("terway-rs demo");
    println!(
        "  emulator      {} (region cn-hangzhou, one ecs.g6.2xlarge: 4 ENIs x 10 IPv4)",
        em.url()
    );
    println!(
        "  eni_conf      {} — vswitches: [{SMALL}] (a /28: 12 addresses)",
        conf_path.display()
    );
    println!("  ledger        {}", dir.path().join("ledger").display());
    let plugin = std::env::current_exe()?.with_file_name("terway");
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let sim = if is_root && plugin.exists() {
        match SimulatedNode::new(&format!("demo{}", std::process::id() % 10_000)) {
            Ok(sim) => {
                let sim = std::sync::Arc::new(sim);
                sim.add_vpc_address(&format!("{VPC_ADDR}/32"))
                    .map_err(anyhow::Error::msg)?;
                em.add_hotplug_hook(sim.clone());
                Some(sim)
            }
            Err(e) => {
                println!("  (cannot build namespaces: {e})");
                None
            }
        }
    } else {
        None
    };
    match &sim {
        Some(sim) => println!(
            "  datapath      on: node namespace {}, VPC namespace {}, pods through {}",
            sim.node_ns,
            sim.vpc_ns,
            plugin.display()
        ),
        None if !is_root => println!(
            "  datapath      off (not root): pods are served through the CNI socket protocol, without namespaces"
        ),
        None => println!(
            "  datapath      off ({} not built: `cargo build -p terway-node --bins`): pods use the CNI socket protocol",
            plugin.display()
        ),
    }
    println!();
    let datapath = match &sim {
        Some(sim) => Some(std::sync::Arc::new(terway_datapath::Datapath::new(
            terway_datapath::NetNs::open(&sim.node_ns_path())?,
        )?)),
        None => None,
    };
    let options = NodeOptions {
        datapath,
        add_deadline: Duration::from_secs(4),
        socket_path: Some(dir.path().join("eni.socket")),
        ledger_path: Some(dir.path().join("ledger")),
        metrics_address: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        ..Default::default()
    };
    let running = service::start(conf_path.clone(), None, options).await?;
    let node = running.node.clone();
    let socket = node.socket_path();
    let mut driver = match &sim {
        Some(sim) => Pods::Plugin {
            binary: plugin.clone(),
            conf: format!(
                r#"{{"cniVersion":"1.0.0","name":"terway","type":"terway","socket":"{}"}}"#,
                socket.display()
            ),
            sim: sim.clone(),
            namespaces: Vec::new(),
        },
        None => Pods::Socket(socket.clone()),
    };
    let mut latencies = Vec::new();
    let mut fixed = false;
    let started = Instant::now();
    let mut i = 0;
    while i < pods {
        tokio::time::sleep(interval).await;
        let t = Instant::now();
        match driver.add(i).await? {
            Reply::Ok { network: Some(net) } => {
                latencies.push(t.elapsed());
                let s = node.ledger.snapshot();
                let ip: std::net::IpAddr = net.ipv4.trim_end_matches("/32").parse()?;
                let eni = s.ips.get(&ip).and_then(|r| s.enis.get(&r.eni_id));
                let mut reach = String::new();
                if let (Pods::Plugin { sim, .. }, Some(eni)) = (&driver, eni) {
                    let _ = sim.route_to_pod(&ip.to_string(), &eni.mac);
                    let ok = reaches_vpc(&driver.netns(i), &sim.vpc_ns, VPC_ADDR, 7000 + i as u16);
                    reach = format!("  reaches {VPC_ADDR}: {}", if ok { "yes" } else { "NO" });
                }
                println!(
                    "  [{:>5.1}s] ADD demo/pod-{i:02} -> {:<18} {} {}  ({:.0} ms)",
                    started.elapsed().as_secs_f64(),
                    net.ipv4,
                    eni.map_or("?", |e| e.id.as_str()),
                    eni.map_or("?", |e| e.vswitch_id.as_str()),
                    t.elapsed().as_secs_f64() * 1e3
                );
                if !reach.is_empty() {
                    println!("           {reach}");
                }
                i += 1;
            }
            Reply::Error { code, msg, details } if !fixed => {
                println!(
                    "  [{:>5.1}s] ADD demo/pod-{i:02} failed: CNI error {code}: {msg}",
                    started.elapsed().as_secs_f64()
                );
                println!("            {details}");
                println!("  -> as the seed document says: add a vSwitch to eni_conf. Writing [{SMALL}, {LARGE}] to the live file…");
                std::fs::write(&conf_path, eni_conf(&em.url(), &[SMALL, LARGE]))?;
                fixed = true;
            }
            other => anyhow::bail!("ADD demo/pod-{i:02} failed after the fix: {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let s = node.ledger.snapshot();
    println!();
    println!("summary after {:.1} s", elapsed.as_secs_f64());
    println!("  pods served        {pods}");
    let mut per_eni: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    for r in s.ips.values() {
        let vsw = s.enis.get(&r.eni_id).map(|e| e.vswitch_id.clone()).unwrap_or_default();
        let e = per_eni.entry((vsw, r.eni_id.clone())).or_default();
        if matches!(r.state, terway_statestore::IpState::Bound(_)) {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    println!("  addresses per ENI  (vSwitch / ENI: bound + spare)");
    for ((vsw, eni), (bound, spare)) in &per_eni {
        println!("    {vsw} / {eni}: {bound} + {spare}");
    }
    println!("  API calls by action");
    for (action, st) in node.cloud.stats() {
        let errors: Vec<String> = st.errors.iter().map(|(c, n)| format!("{c} x{n}")).collect();
        println!(
            "    {action:<28} {:>3}{}",
            st.calls,
            if errors.is_empty() {
                String::new()
            } else {
                format!("  ({})", errors.join(", "))
            }
        );
    }
    println!(
        "  CNI ADD latency    p50 {:.1} ms, p99 {:.1} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    let aside = node.vswitches_set_aside();
    for (v, left) in aside {
        println!("  vSwitch set aside  {v} (for another {} s)", left.as_secs());
    }
    println!();
    println!(
        "cleaning up: DEL every pod, stop the daemon and the emulator, remove {}",
        dir.path().display()
    );
    for i in 0..pods {
        driver.del(i).await?;
    }
    drop(driver);
    running.stop();
    em.stop();
    drop(sim);
    Ok(())
}
