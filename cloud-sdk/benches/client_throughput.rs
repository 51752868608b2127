//! Client requests per second against the emulator on loopback, and the
//! emulator's resident memory as it holds 1,000 ENIs. The emulator runs as
//! its own process (the `aliyun-emulator` binary) so its memory is its own.
//!
//! `cargo bench -p terway-cloud --bench client_throughput`

use std::sync::Arc;
use std::time::{Duration, Instant};
use terway_cloud::api::*;
use terway_cloud::emulator::{
    DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET, DEFAULT_REGION, DEFAULT_SECURITY_GROUP,
};
use terway_cloud::{ClientOptions, CloudClient, CredentialProvider};
use terway_config::Secret;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn run_calls(c: &CloudClient, total: usize, concurrency: usize) -> f64 {
    let started = Instant::now();
    let per_task = total / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                c.call(&DescribeVSwitches {
                    region_id: DEFAULT_REGION.into(),
                    ..Default::default()
                })
                .await
                .ok();
            }
        }));
    }
    for t in tasks {
        t.await.ok();
    }
    (per_task * concurrency) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18090);
    let mut child = match std::process::Command::new(env!("CARGO_BIN_EXE_aliyun-emulator"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start aliyun-emulator: {e}");
            std::process::exit(1);
        }
    };
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        for _ in 0..400 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut opts =
            ClientOptions::for_region(DEFAULT_REGION, false).with_endpoint(&format!("http://127.0.0.1:{port}"));
        // measure the transport, not the client-side token buckets
        for v in opts.rate_limits.values_mut() {
            *v = 10_000_000;
        }
        opts.rate_limits.insert("CreateNetworkInterface".into(), 10_000_000);
        let creds = CredentialProvider::static_keys(DEFAULT_ACCESS_KEY_ID, Secret::new(DEFAULT_ACCESS_KEY_SECRET));
        let c = CloudClient::new(opts, Arc::new(creds)).unwrap_or_else(|e| panic!("client: {e}"));

        run_calls(&c, 200, 4).await; // warm-up
        println!("client throughput against the emulator on loopback (signed DescribeVSwitches, GET):");
        for concurrency in [1, 4, 16] {
            let rps = run_calls(&c, 4000, concurrency).await;
            println!("  concurrency {concurrency:>2}: {rps:>8.0} requests/s");
        }

        let rss_before = rss_kib(pid);
        let started = Instant::now();
        for _ in 0..1000 {
            c.call(&CreateNetworkInterface {
                region_id: DEFAULT_REGION.into(),
                vswitch_id: "vsw-large0000000001".into(),
                security_group_ids: vec![DEFAULT_SECURITY_GROUP.into()],
                secondary_private_ip_address_count: Some(2),
                tags: vec![("creator".into(), "terway".into())],
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("create: {e}"));
        }
        let create_rps = 1000.0 / started.elapsed().as_secs_f64();
        let rss_created = rss_kib(pid);
        let started = Instant::now();
        let all = c
            .describe_network_interfaces_all(DescribeNetworkInterfaces {
                region_id: DEFAULT_REGION.into(),
                max_results: Some(100),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("describe: {e}"));
        let describe_ms = started.elapsed().as_secs_f64() * 1000.0;
        let rss_after = rss_kib(pid);
        println!("CreateNetworkInterface (POST, ClientToken, 3 IPs each): {create_rps:.0} requests/s");
        println!(
            "DescribeNetworkInterfaces of {} ENIs in pages of 100: {describe_ms:.1} ms",
            all.len()
        );
        println!(
            "emulator resident memory: {:.1} MiB at start, {:.1} MiB with 1,000 ENIs, {:.1} MiB after describing them",
            rss_before as f64 / 1024.0,
            rss_created as f64 / 1024.0,
            rss_after as f64 / 1024.0
        );
    });
    let _ = child.kill();
    let _ = child.wait();
}
