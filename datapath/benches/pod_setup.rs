//! Setup + teardown of 100 pods: terway-rs's datapath beside Debian's
//! reference `ptp` + `host-local` CNI plugins doing the same pods, in one run.
//! Root only; everything happens in namespaces this benchmark makes.
//!
//! `cargo bench -p terway-datapath --bench pod_setup`

#[path = "../tests/lab/mod.rs"]
mod lab;

use lab::*;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use terway_datapath::*;

const PODS: usize = 100;
const CNI_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];

fn summary(label: &str, mut times: Vec<Duration>, total: Duration) -> f64 {
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)].as_secs_f64() * 1e3;
    let rate = times.len() as f64 / total.as_secs_f64();
    println!(
        "{label:<34} {rate:>7.1} pods/s   p50 {:>6.2} ms   p99 {:>6.2} ms",
        pct(0.5),
        pct(0.99)
    );
    rate
}

fn cni(plugin: &str, command: &str, netns: &str, container: &str, conf: &str, node: &str) -> bool {
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{node}"))
        .arg(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_PATH",
            std::path::Path::new(plugin)
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{plugin}: {e}"));
    child.stdin.take().map(|mut s| s.write_all(conf.as_bytes()));
    child.wait().is_ok_and(|s| s.success())
}

fn main() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED pod_setup benchmark: {why}");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let lab = Lab::new();
    let eni = lab.add_eni(1);
    let pods: Vec<Ns> = (0..PODS).map(|_| Ns::new("bp")).collect();
    println!("{PODS} pods, setup + teardown each:");

    let terway_rate = rt.block_on(async {
        let dp = Datapath::new(lab.node.handle()).unwrap_or_else(|e| panic!("{e}"));
        dp.ensure_eni(&eni, NODE_IP).await.unwrap_or_else(|e| panic!("{e}"));
        let specs: Vec<PodSpec> = pods
            .iter()
            .enumerate()
            .map(|(i, ns)| PodSpec {
                namespace: "bench".into(),
                name: format!("pod-{i}"),
                netns: ns.path(),
                ifname: "eth0".into(),
                ipv4: Ipv4Addr::new(192, 168, 1, 10 + i as u8),
                ipv6: None,
                eni: eni.clone(),
                node_ip: NODE_IP,
                mode: Mode::Veth,
                bandwidth: Bandwidth::default(),
                service_cidr: None,
                host_stack_cidrs: Vec::new(),
            })
            .collect();
        let mut times = Vec::with_capacity(PODS);
        let started = Instant::now();
        for spec in &specs {
            let t = Instant::now();
            dp.setup(spec).await.unwrap_or_else(|e| panic!("setup: {e}"));
            dp.teardown(spec).await.unwrap_or_else(|e| panic!("teardown: {e}"));
            times.push(t.elapsed());
        }
        summary("terway-rs datapath (in process)", times, started.elapsed())
    });

    let Some(dir) = CNI_DIRS
        .iter()
        .find(|d| std::path::Path::new(&format!("{d}/ptp")).exists())
    else {
        println!(
            "reference plugins not found in {CNI_DIRS:?}: install Debian's containernetworking-plugins to compare"
        );
        return;
    };
    let data_dir = tempfile_dir();
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench","type":"ptp","ipMasq":false,"mtu":1500,
            "ipam":{{"type":"host-local","dataDir":"{}","subnet":"192.168.1.0/24","routes":[{{"dst":"0.0.0.0/0"}}]}}}}"#,
        data_dir.display()
    );
    let mut times = Vec::with_capacity(PODS);
    let started = Instant::now();
    for (i, ns) in pods.iter().enumerate() {
        let netns = ns.path().display().to_string();
        let id = format!("bench-{i}");
        let t = Instant::now();
        assert!(
            cni(&format!("{dir}/ptp"), "ADD", &netns, &id, &conf, &lab.node.name),
            "ptp ADD failed"
        );
        assert!(
            cni(&format!("{dir}/ptp"), "DEL", &netns, &id, &conf, &lab.node.name),
            "ptp DEL failed"
        );
        times.push(t.elapsed());
    }
    let ptp_rate = summary("ptp + host-local (exec per call)", times, started.elapsed());
    println!(
        "ratio terway-rs / reference: {:.1}x the pods per second",
        terway_rate / ptp_rate
    );
    let _ = std::fs::remove_dir_all(&data_dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("terway-bench-host-local-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}
