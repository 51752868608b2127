//! `terwayd demo`: the daemon on the embedded API emulator. Pods arrive at a
//! steady rate until the small vSwitch runs out; the operator's fix from
//! the seed document (add a vSwitch to `eni_conf`) is applied to the live
//! config file, and the node goes on without a restart.

use crate::cni::exchange;
use crate::cni::protocol::{PodRequest, Reply, Request};
use crate::daemon::service;
use crate::daemon::NodeOptions;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use terway_cloud::emulator::{Emulator, Scenario, DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET, DEFAULT_ZONE};

const SMALL: &str = "vsw-small0000000001";
const LARGE: &str = "vsw-large0000000001";

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
    println!("  datapath      off: pods are served through the CNI socket protocol without network namespaces");
    println!();
    let options = NodeOptions {
        datapath: None,
        add_deadline: Duration::from_secs(4),
        socket_path: Some(dir.path().join("eni.socket")),
        ledger_path: Some(dir.path().join("ledger")),
    };
    let running = service::start(conf_path.clone(), None, options).await?;
    let node = running.node.clone();
    let socket = node.socket_path();
    let mut latencies = Vec::new();
    let mut fixed = false;
    let started = Instant::now();
    let mut i = 0;
    while i < pods {
        tokio::time::sleep(interval).await;
        let t = Instant::now();
        match call(&socket, Request::Add(pod(i))).await? {
            Reply::Ok { network: Some(net) } => {
                latencies.push(t.elapsed());
                let s = node.ledger.snapshot();
                let ip: std::net::IpAddr = net.ipv4.trim_end_matches("/32").parse()?;
                let eni = s.ips.get(&ip).and_then(|r| s.enis.get(&r.eni_id));
                println!(
                    "  [{:>5.1}s] ADD demo/pod-{i:02} -> {:<18} {} {}  ({:.0} ms)",
                    started.elapsed().as_secs_f64(),
                    net.ipv4,
                    eni.map_or("?", |e| e.id.as_str()),
                    eni.map_or("?", |e| e.vswitch_id.as_str()),
                    t.elapsed().as_secs_f64() * 1e3
                );
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
    let aside = node.vswitches.lock().map(|v| v.set_aside_now()).unwrap_or_default();
    for (v, left) in aside {
        println!("  vSwitch set aside  {v} (for another {} s)", left.as_secs());
    }
    println!();
    println!(
        "cleaning up: DEL every pod, stop the daemon and the emulator, remove {}",
        dir.path().display()
    );
    for i in 0..pods {
        call(&socket, Request::Del(pod(i))).await?;
    }
    running.stop();
    em.stop();
    Ok(())
}
