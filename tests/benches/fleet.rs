//! Many nodes against one account: `NODES` node services in process (IPAM
//! only, each with its own ledger, socket and metadata view of its own
//! instance) share one emulator that enforces account-wide per-action rate
//! limits, as the cloud throttles one account across all its nodes. It
//! prints cloud calls per node per sync period and per hour at rest and
//! under pod churn, throttling errors, ADD wait p50/p99 and memory per node,
//! then extrapolates to 10,000 nodes.
//!
//! `cargo bench -p terway-tests --bench fleet` (`FLEET_NODES=N` to change the count)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use terway_cloud::emulator::{Emulator, InstanceSpec, Scenario, VSwitchSpec, DEFAULT_ZONE};
use terway_node::cni::exchange;
use terway_node::cni::protocol::{PodRequest, Reply, Request};
use terway_node::daemon::NodeOptions;
use terway_node::service::{self, Running};

/// The reconcilers' sync period here (upstream's default is 120 s): short,
/// so a run of minutes sees many periods; figures are given per period too.
const SYNC_PERIOD: Duration = Duration::from_secs(5);
const AT_REST: Duration = Duration::from_secs(30);
const CHURN: Duration = Duration::from_secs(30);
/// Under churn each node replaces one pod this often.
const CHURN_EVERY: Duration = Duration::from_secs(2);
const PODS_PER_NODE: usize = 8;
const FLEET: u64 = 10_000;

/// Account-wide limits per action, requests per minute: an assumption (the
/// cloud does not publish them per API; they are per account and region,
/// shared with every other client of the account).
fn account_limits() -> BTreeMap<String, u32> {
    [
        ("DescribeNetworkInterfaces", 6_000),
        ("DescribeInstanceTypes", 1_200),
        ("DescribeVSwitches", 1_200),
        ("AssignPrivateIpAddresses", 3_000),
        ("UnassignPrivateIpAddresses", 3_000),
        ("CreateNetworkInterface", 3_000),
        ("AttachNetworkInterface", 3_000),
        ("DetachNetworkInterface", 3_000),
        ("DeleteNetworkInterface", 3_000),
    ]
    .into_iter()
    .map(|(a, n)| (a.to_owned(), n))
    .collect()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn pod(node: usize, i: usize) -> PodRequest {
    PodRequest::new(
        "fleet",
        &format!("n{node}-pod-{i}"),
        &format!("n{node}c{i:06}"),
        &format!("/var/run/netns/n{node}-{i}"),
    )
}

/// Calls by action (all results) and throttling answers, from the emulator.
fn counts(em: &Emulator) -> (BTreeMap<String, u64>, u64) {
    let mut by_action = BTreeMap::new();
    let mut throttled = 0;
    for (action, codes) in em.calls() {
        for (code, n) in codes {
            *by_action.entry(action.clone()).or_default() += n;
            if code.starts_with("Throttling") {
                throttled += n;
            }
        }
    }
    (by_action, throttled)
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(a, n)| (a.clone(), n - before.get(a).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Upstream's default `ip_pool_sync_period`, for the at-rest extrapolation.
const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(120);

fn report(what: &str, calls: &BTreeMap<String, u64>, nodes: usize, window: Duration) -> BTreeMap<String, f64> {
    let per_node_hour: BTreeMap<String, f64> = calls
        .iter()
        .map(|(a, n)| (a.clone(), *n as f64 / nodes as f64 * 3600.0 / window.as_secs_f64()))
        .collect();
    let total: f64 = per_node_hour.values().sum();
    let periods = window.as_secs_f64() / SYNC_PERIOD.as_secs_f64();
    println!(
        "{what}: {:.2} calls per node per sync period, {total:.0} per node per hour at a {}s period",
        calls.values().sum::<u64>() as f64 / nodes as f64 / periods,
        SYNC_PERIOD.as_secs()
    );
    for (a, n) in &per_node_hour {
        println!("    {a:<28} {n:>8.1} /node/hour");
    }
    per_node_hour
}

async fn add(socket: std::path::PathBuf, request: PodRequest) -> (bool, Duration) {
    let started = Instant::now();
    let reply =
        tokio::task::spawn_blocking(move || exchange(&socket, &Request::Add(request), Duration::from_secs(120)))
            .await
            .ok()
            .and_then(Result::ok);
    (matches!(reply, Some(Reply::Ok { .. })), started.elapsed())
}

async fn del(socket: std::path::PathBuf, request: PodRequest) -> bool {
    let reply = tokio::task::spawn_blocking(move || exchange(&socket, &Request::Del(request), Duration::from_secs(30)))
        .await
        .ok()
        .and_then(Result::ok);
    matches!(reply, Some(Reply::Ok { .. }))
}

fn main() {
    let nodes: usize = std::env::var("FLEET_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut scenario = Scenario::default();
    scenario.vswitches.push(VSwitchSpec {
        id: "vsw-fleet0000000001".into(),
        zone_id: DEFAULT_ZONE.into(),
        cidr: "192.168.128.0/17".into(),
        ipv6_cidr: None,
    });
    let template = scenario.instances[0].clone();
    scenario.instances = (0..nodes)
        .map(|n| InstanceSpec {
            id: format!("i-fleet{n:013}"),
            vswitch_id: "vsw-fleet0000000001".into(),
            ..template.clone()
        })
        .collect();
    scenario.metadata_instance = Some(scenario.instances[0].id.clone());
    scenario.rate_limits = account_limits();
    let em = rt.block_on(Emulator::start(scenario)).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let rss_before = rss_kib();
    let started = Instant::now();
    let fleet: Vec<Running> = rt.block_on(async {
        let mut fleet = Vec::new();
        for n in 0..nodes {
            let own = dir.path().join(format!("node{n}"));
            std::fs::create_dir_all(&own).unwrap_or_else(|e| panic!("{e}"));
            let conf = terway_tests::eni_conf(
                &em.url(),
                &["vsw-fleet0000000001"],
                &format!(
                    r#", "metadata_endpoint": "{}/instance/i-fleet{n:013}", "ip_pool_sync_period": "{}s", "min_pool_size": 2, "max_pool_size": 6"#,
                    em.url(),
                    SYNC_PERIOD.as_secs()
                ),
            );
            std::fs::write(own.join("eni_conf"), conf).unwrap_or_else(|e| panic!("{e}"));
            let options = NodeOptions {
                add_deadline: Duration::from_secs(120),
                socket_path: Some(own.join("eni.socket")),
                ledger_path: Some(own.join("ledger")),
                metrics_address: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
                ..Default::default()
            };
            fleet.push(
                service::start(own.join("eni_conf"), None, options)
                    .await
                    .unwrap_or_else(|e| panic!("node {n}: {e:#}")),
            );
        }
        fleet
    });
    println!(
        "{nodes} node services started in {:.1} s (account-wide limits per minute: {:?})",
        started.elapsed().as_secs_f64(),
        account_limits()
    );
    // every node binds its pods, all at once: the fleet's first minute
    let waits: Vec<(bool, Duration)> = rt.block_on(async {
        let mut all = tokio::task::JoinSet::new();
        for (n, node) in fleet.iter().enumerate() {
            for i in 0..PODS_PER_NODE {
                all.spawn(add(node.node.socket_path(), pod(n, i)));
            }
        }
        all.join_all().await
    });
    let failed = waits.iter().filter(|(ok, _)| !ok).count();
    let mut cold: Vec<Duration> = waits.iter().map(|(_, d)| *d).collect();
    cold.sort();
    let pct = |v: &[Duration], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e3;
    let (after_start, throttled_start) = counts(&em);
    println!(
        "start: {} pods bound on empty nodes ({failed} failed), ADD wait p50 {:.0} ms p99 {:.0} ms; {} calls, {throttled_start} throttled",
        waits.len(),
        pct(&cold, 0.5),
        pct(&cold, 0.99),
        after_start.values().sum::<u64>()
    );
    let rss_nodes = rss_kib();
    println!(
        "memory: {:.0} KiB resident per node ({} MiB for {nodes} nodes with {PODS_PER_NODE} pods each)",
        rss_nodes.saturating_sub(rss_before) as f64 / nodes as f64,
        rss_nodes.saturating_sub(rss_before) / 1024
    );

    // at rest: pods stay, pools settled
    rt.block_on(async { tokio::time::sleep(SYNC_PERIOD * 2).await });
    let (before, _) = counts(&em);
    rt.block_on(async { tokio::time::sleep(AT_REST).await });
    let (after, throttled_rest) = counts(&em);
    let rest = report("at rest", &delta(&after, &before), nodes, AT_REST);

    // churn: every node replaces one pod every CHURN_EVERY
    let (before, throttled_before) = counts(&em);
    let churn_waits: Vec<Duration> = rt.block_on(async {
        let fleet = Arc::new(fleet.iter().map(|r| r.node.socket_path()).collect::<Vec<_>>());
        let mut all = tokio::task::JoinSet::new();
        for n in 0..nodes {
            let fleet = fleet.clone();
            all.spawn(async move {
                let mut waits = Vec::new();
                let until = Instant::now() + CHURN;
                let mut next = PODS_PER_NODE;
                // the nodes' rounds spread over the interval
                tokio::time::sleep(CHURN_EVERY.mul_f64(n as f64 / nodes as f64)).await;
                while Instant::now() < until {
                    del(fleet[n].clone(), pod(n, next - PODS_PER_NODE)).await;
                    let (ok, wait) = add(fleet[n].clone(), pod(n, next)).await;
                    if ok {
                        waits.push(wait);
                    }
                    next += 1;
                    tokio::time::sleep(CHURN_EVERY).await;
                }
                waits
            });
        }
        all.join_all().await.into_iter().flatten().collect()
    });
    let (after, throttled_after) = counts(&em);
    let churn = report(
        &format!(
            "under churn (one pod replaced per node every {}s)",
            CHURN_EVERY.as_secs()
        ),
        &delta(&after, &before),
        nodes,
        CHURN,
    );
    let mut churn_sorted = churn_waits.clone();
    churn_sorted.sort();
    println!(
        "churn ADDs: {} served, wait p50 {:.2} ms p99 {:.2} ms; throttling errors: {} at start, {} at rest, {} under churn",
        churn_sorted.len(),
        pct(&churn_sorted, 0.5),
        pct(&churn_sorted, 0.99),
        throttled_start,
        throttled_rest - throttled_start,
        throttled_after - throttled_before
    );

    // the same per-node rates, FLEET nodes: where one account's limits end
    println!("\nextrapolated to {FLEET} nodes (per-node rates above × {FLEET}; limits are per account and region):");
    let per_period = rest.values().sum::<f64>() / 3600.0 * SYNC_PERIOD.as_secs_f64();
    println!(
        "    at rest with the default {}s sync period: {:.0} calls/min for the fleet ({per_period:.2} per node per period)",
        DEFAULT_SYNC_PERIOD.as_secs(),
        per_period * FLEET as f64 * 60.0 / DEFAULT_SYNC_PERIOD.as_secs_f64()
    );
    for (a, limit) in account_limits() {
        let rate = |m: &BTreeMap<String, f64>| m.get(&a).copied().unwrap_or(0.0) / 60.0; // per node per minute
        let (r, c) = (rate(&rest), rate(&churn));
        if r == 0.0 && c == 0.0 {
            continue;
        }
        let fleet_churn = c * FLEET as f64;
        let at = if c > 0.0 {
            (f64::from(limit) / c) as u64
        } else {
            u64::MAX
        };
        println!(
            "    {a:<28} at rest {:>8.0}/min, churn {fleet_churn:>8.0}/min of {limit}/min: the limit is reached at {} nodes under this churn",
            r * FLEET as f64,
            if at == u64::MAX { "no".to_owned() } else { at.to_string() }
        );
    }
    for r in &fleet {
        r.stop();
    }
    drop(fleet);
    drop(em);
}
