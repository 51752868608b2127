//! Restart to serving: terwayd holding 1,000 pods in its ledger is killed
//! (SIGKILL) and exec'd again while the cloud and the metadata service
//! (both behind one [`FaultProxy`]) refuse connections, or accept them and
//! never answer, or answer normally; it prints the time from exec to the
//! first ADD served from an idle address.
//! IPAM only (`--no-datapath`), so no root is needed.
//!
//! `cargo bench -p terway-tests --bench restart`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use terway_cloud::emulator::{Emulator, InstanceTypeSpec, Scenario};
use terway_node::cni::exchange;
use terway_node::cni::protocol::{PodRequest, Reply, Request};
use terway_tests::fault_proxy::{FaultProxy, ProxyMode};

const PODS: usize = 1000;
const RESTARTS: usize = 7;
const INSTANCE_TYPE: &str = "ecs.bench.restart";

fn pod(i: usize) -> PodRequest {
    PodRequest::new(
        "bench",
        &format!("pod-{i}"),
        &format!("r{i:05}"),
        &format!("/var/run/netns/r-{i}"),
    )
}

/// Sends `request` until terwayd answers it with success; the time it took from `since`.
fn first_success(socket: &Path, request: &Request, since: Instant) -> Duration {
    let deadline = since + Duration::from_secs(180);
    loop {
        if let Ok(Reply::Ok { .. }) = exchange(socket, request, Duration::from_secs(5)) {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "terwayd did not serve {request:?}");
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut scenario = Scenario::default();
    // 12 ENIs of 100 addresses: room for 1,000 pods and a pool
    scenario.instance_types.push(InstanceTypeSpec {
        id: INSTANCE_TYPE.into(),
        eni_quantity: 12,
        ipv4_per_eni: 100,
        ipv6_per_eni: 0,
        eni_total_quantity: Some(12),
    });
    scenario.instances[0].instance_type = INSTANCE_TYPE.into();
    scenario.max_ips_per_assign = 50;
    let em = rt.block_on(Emulator::start(scenario)).unwrap_or_else(|e| panic!("{e}"));
    let proxy = rt.block_on(FaultProxy::start(em.addr()));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config: PathBuf = dir.path().join("eni_conf");
    let socket = dir.path().join("eni.socket");
    let own = format!(
        r#", "min_pool_size": 20, "max_pool_size": 60, "ledger_path": "{}", "socket_path": "{}""#,
        dir.path().join("ledger").display(),
        socket.display()
    );
    std::fs::write(
        &config,
        terway_tests::eni_conf(&proxy.url(), &["vsw-large0000000001"], &own),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let mut terwayd = terway_tests::spawn_terwayd(&config);
    let filled = Instant::now();
    std::thread::scope(|s| {
        for worker in 0..16 {
            let socket = &socket;
            s.spawn(move || {
                for i in (worker..PODS).step_by(16) {
                    first_success(socket, &Request::Add(pod(i)), Instant::now());
                }
            });
        }
    });
    println!(
        "{PODS} pods bound through the socket in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    // the pool refilled: there are idle addresses for every restart below
    std::thread::sleep(Duration::from_secs(3));

    let mut next_pod = PODS;
    println!("\nrestart to serving ({RESTARTS} SIGKILL + exec each; 1,000 pods in the ledger):");
    println!("{:<34} {:>10} {:>10} {:>10}", "cloud and metadata", "min", "p50", "max");
    for (mode, name) in [
        (ProxyMode::Forward, "answering"),
        (ProxyMode::Refuse, "refusing connections"),
        (ProxyMode::Hang, "accepting, never answering"),
    ] {
        let mut adds = Vec::new();
        for _ in 0..RESTARTS {
            let _ = terwayd.kill();
            let _ = terwayd.wait();
            proxy.set(mode);
            let exec = Instant::now();
            terwayd = terway_tests::spawn_terwayd(&config);
            adds.push(first_success(&socket, &Request::Add(pod(next_pod)), exec));
            // one pod goes, so the node holds 1,000 throughout
            first_success(&socket, &Request::Del(pod(next_pod - PODS)), exec);
            next_pod += 1;
            proxy.set(ProxyMode::Forward);
        }
        adds.sort();
        println!(
            "{:<34} {:>8.1}ms {:>8.1}ms {:>8.1}ms",
            name,
            ms(adds[0]),
            ms(adds[RESTARTS / 2]),
            ms(adds[RESTARTS - 1])
        );
    }
    println!("target: ≤ 200 ms from exec to the first ADD served, whatever the cloud does");
    let _ = terwayd.kill();
    let _ = terwayd.wait();
    drop(proxy);
    drop(em);
}
