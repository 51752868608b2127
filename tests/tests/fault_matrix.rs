//! The fault matrix: every way the cloud and the metadata service fail,
//! switched on at start and while running, with pods bound and churning.
//! In every cell DEL is always served, ADD is served whenever the ledger has
//! a confirmed idle address, and once the fault is lifted the ledger and the
//! emulator's truth agree (nothing leaked, nothing doubled, no intent left).
//! The cells run side by side, each with its own emulator, proxies and node
//! (terwayd's node service in process, IPAM only: no root needed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};
use terway_cloud::emulator::{Emulator, Faults};
use terway_node::cni::exchange;
use terway_node::cni::protocol::{PodRequest, Reply, Request};
use terway_node::daemon::NodeOptions;
use terway_node::service::{self, Running};
use terway_statestore::IpState;
use terway_tests::fault_proxy::{FaultProxy, ProxyMode};

#[derive(Debug, Clone, Copy)]
enum Fault {
    CloudRefusing,
    CloudHanging,
    CloudSlow,
    ServerErrors,
    Throttling,
    MetadataHanging,
    MetadataGarbage,
    ClockSkew,
}

const FAULTS: [Fault; 8] = [
    Fault::CloudRefusing,
    Fault::CloudHanging,
    Fault::CloudSlow,
    Fault::ServerErrors,
    Fault::Throttling,
    Fault::MetadataHanging,
    Fault::MetadataGarbage,
    Fault::ClockSkew,
];

/// How long pods churn under the fault.
const CHURN: Duration = Duration::from_secs(4);
/// An ADD's deadline: long enough for a cooling address (1 s) to come back.
const ADD_DEADLINE: Duration = Duration::from_secs(3);

struct Cell {
    fault: Fault,
    at_start: bool,
    em: Emulator,
    cloud: FaultProxy,
    metadata: FaultProxy,
    dir: tempfile::TempDir,
}

impl Cell {
    async fn new(fault: Fault, at_start: bool) -> Self {
        let em = Emulator::start(terway_tests::quick_attach()).await.unwrap();
        let cloud = FaultProxy::start(em.addr()).await;
        let metadata = FaultProxy::start(em.addr()).await;
        let dir = tempfile::tempdir().unwrap();
        let conf = terway_tests::eni_conf(
            &cloud.url(),
            &["vsw-large0000000001"],
            &format!(
                r#", "metadata_endpoint": "{}", "min_pool_size": 4, "max_pool_size": 10, "ip_cooldown": "1s""#,
                metadata.url()
            ),
        );
        std::fs::write(dir.path().join("eni_conf"), conf).unwrap();
        Self {
            fault,
            at_start,
            em,
            cloud,
            metadata,
            dir,
        }
    }

    fn name(&self) -> String {
        format!(
            "{:?} {}",
            self.fault,
            if self.at_start { "at start" } else { "while running" }
        )
    }

    async fn start(&self) -> Running {
        let options = NodeOptions {
            add_deadline: ADD_DEADLINE,
            socket_path: Some(self.dir.path().join("eni.socket")),
            ledger_path: Some(self.dir.path().join("ledger")),
            metrics_address: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            ..Default::default()
        };
        service::start(self.dir.path().join("eni_conf"), None, options)
            .await
            .unwrap_or_else(|e| panic!("{}: start: {e:#}", self.name()))
    }

    fn fault_on(&self) {
        let api = |faults: Faults| self.em.set_faults(faults);
        match self.fault {
            Fault::CloudRefusing => self.cloud.set(ProxyMode::Refuse),
            Fault::CloudHanging => self.cloud.set(ProxyMode::Hang),
            Fault::CloudSlow => api(Faults {
                latency_ms: [("*".to_owned(), 5000)].into(),
                ..Faults::default()
            }),
            Fault::ServerErrors => api(Faults {
                error_rate: 1.0,
                ..Faults::default()
            }),
            Fault::Throttling => api(Faults {
                throttle_rate: 1.0,
                ..Faults::default()
            }),
            Fault::MetadataHanging => self.metadata.set(ProxyMode::Hang),
            Fault::MetadataGarbage => self.metadata.set(ProxyMode::Garbage),
            // an hour: far beyond the 15 minutes a signature is valid
            Fault::ClockSkew => api(Faults {
                clock_offset_s: 3600,
                ..Faults::default()
            }),
        }
    }

    fn fault_off(&self) {
        self.cloud.set(ProxyMode::Forward);
        self.metadata.set(ProxyMode::Forward);
        self.em.set_faults(Faults::default());
    }
}

fn pod(i: usize) -> PodRequest {
    PodRequest::new(
        "matrix",
        &format!("pod-{i}"),
        &format!("m{i:04}"),
        &format!("/var/run/netns/m-{i}"),
    )
}

async fn call(socket: &Path, request: Request) -> Reply {
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || {
        exchange(&socket, &request, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{request:?}: {e}"))
    })
    .await
    .unwrap()
}

fn api_errors(em: &Emulator) -> u64 {
    em.calls()
        .values()
        .flat_map(|codes| codes.iter())
        .filter(|(code, _)| code.as_str() != "Success")
        .map(|(_, n)| n)
        .sum()
}

fn idle(running: &Running) -> usize {
    terway_tests::idle_addresses(&running.node.ledger)
}

/// What one cell saw.
#[derive(Debug, Default)]
struct Counts {
    adds: usize,
    dels: usize,
    /// ADDs answered "try again later" while the ledger had no idle address.
    adds_without_idle: usize,
    start_ms: Option<f64>,
    /// Error answers the emulator gave while the fault was on (refused and
    /// hung connections never reach it).
    api_errors: u64,
    converged_s: f64,
}

async fn run(cell: Cell) -> (String, Counts) {
    let name = cell.name();
    let mut counts = Counts::default();
    let mut running = cell.start().await;
    let socket = running.node.socket_path();
    // pods bound and a warm pool before the fault
    let mut bound: BTreeMap<usize, String> = BTreeMap::new();
    for i in 0..6 {
        match call(&socket, Request::Add(pod(i))).await {
            Reply::Ok { network: Some(n) } => bound.insert(i, n.ipv4),
            other => panic!("{name}: warm-up ADD {i}: {other:?}"),
        };
    }
    let warm = Instant::now() + Duration::from_secs(30);
    while idle(&running) < 4 {
        assert!(Instant::now() < warm, "{name}: the pool never warmed up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let errors_before = api_errors(&cell.em);
    if cell.at_start {
        running.shutdown().await;
        cell.fault_on();
        let exec = Instant::now();
        running = cell.start().await;
        counts.start_ms = Some(exec.elapsed().as_secs_f64() * 1e3);
    } else {
        cell.fault_on();
    }
    // churn: the oldest pod goes, a new one comes, and every third round one
    // more, so the idle addresses run out while the fault lasts
    let churn_until = Instant::now() + CHURN;
    let mut next = bound.len();
    let mut round = 0;
    while Instant::now() < churn_until {
        round += 1;
        if round % 3 == 0 {
            let idle_before = idle(&running);
            match call(&socket, Request::Add(pod(next))).await {
                Reply::Ok { network: Some(n) } => {
                    bound.insert(next, n.ipv4);
                    counts.adds += 1;
                }
                Reply::Error { code: 11, .. } if idle_before == 0 => counts.adds_without_idle += 1,
                other => panic!("{name}: ADD of pod {next} with {idle_before} idle addresses: {other:?}"),
            }
            next += 1;
        }
        let (&oldest, _) = bound.iter().next().unwrap();
        let reply = call(&socket, Request::Del(pod(oldest))).await;
        assert_eq!(reply, Reply::Ok { network: None }, "{name}: DEL of pod {oldest}");
        bound.remove(&oldest);
        counts.dels += 1;
        let idle_before = idle(&running);
        match call(&socket, Request::Add(pod(next))).await {
            Reply::Ok { network: Some(n) } => {
                assert!(
                    !bound.values().any(|ip| *ip == n.ipv4),
                    "{name}: {} handed out twice",
                    n.ipv4
                );
                bound.insert(next, n.ipv4);
                counts.adds += 1;
            }
            Reply::Error { code: 11, .. } if idle_before == 0 => counts.adds_without_idle += 1,
            other => panic!("{name}: ADD of pod {next} with {idle_before} idle addresses: {other:?}"),
        }
        next += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the fault lifts: the ledger and the cloud come to agree
    cell.fault_off();
    counts.api_errors = api_errors(&cell.em) - errors_before;
    let lifted = Instant::now();
    let mut last;
    let agreed = loop {
        let s = running.node.ledger.snapshot();
        let ledger_ips: BTreeSet<String> = s.ips.keys().map(ToString::to_string).collect();
        let dump = cell.em.dump();
        let (cloud_ips, _) = terway_tests::cloud_addresses(&dump, "InUse");
        let (_, leftovers) = terway_tests::cloud_addresses(&dump, "Available");
        // addresses bound in the ledger, each to the pod recorded as holding it
        let ours: BTreeSet<String> = s
            .ips
            .values()
            .filter(|r| match &r.state {
                IpState::Bound(b) => s.pods.get(&b.pod.key()).is_some_and(|p| p.ips.contains(&r.ip)),
                _ => false,
            })
            .map(|r| format!("{}/32", r.ip))
            .collect();
        let expected: BTreeSet<String> = bound.values().cloned().collect();
        last = format!(
            "ledger {} addresses, cloud {}, intents {:?}, leftover ENIs {leftovers}, pods bound {} (expected {}); only in the ledger {:?}, only in the cloud {:?}",
            ledger_ips.len(),
            cloud_ips.len(),
            s.intents.values().map(|i| &i.kind).collect::<Vec<_>>(),
            ours.len(),
            expected.len(),
            ledger_ips.difference(&cloud_ips).collect::<Vec<_>>(),
            cloud_ips.difference(&ledger_ips).collect::<Vec<_>>(),
        );
        if ledger_ips == cloud_ips && s.intents.is_empty() && leftovers == 0 && ours == expected {
            break true;
        }
        if lifted.elapsed() > Duration::from_secs(90) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(agreed, "{name}: the ledger and the cloud never agreed: {last}");
    assert!(
        running.node.ledger.check().is_empty(),
        "{name}: {:?}",
        running.node.ledger.check()
    );
    counts.converged_s = lifted.elapsed().as_secs_f64();
    running.stop();
    (name, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_at_start_and_while_running() {
    // `FAULT_CELLS=ClockSkew,Throttling` runs only those (debugging, with RUST_LOG)
    let only = std::env::var("FAULT_CELLS").ok();
    if only.is_some() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    }
    let mut cells = tokio::task::JoinSet::new();
    for fault in FAULTS {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|f| f == format!("{fault:?}")))
        {
            continue;
        }
        for at_start in [true, false] {
            cells.spawn(async move { run(Cell::new(fault, at_start).await).await });
        }
    }
    let mut rows = Vec::new();
    while let Some(done) = cells.join_next().await {
        rows.push(done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let total = |f: fn(&Counts) -> usize| rows.iter().map(|(_, c)| f(c)).sum::<usize>();
    println!(
        "{:<32} {:>6} {:>6} {:>13} {:>10} {:>10} {:>10}",
        "cell", "ADDs", "DELs", "ADD no idle", "API errors", "start ms", "agreed s"
    );
    for (name, c) in &rows {
        println!(
            "{name:<32} {:>6} {:>6} {:>13} {:>10} {:>10} {:>10.1}",
            c.adds,
            c.dels,
            c.adds_without_idle,
            c.api_errors,
            c.start_ms.map_or("-".into(), |ms| format!("{ms:.0}")),
            c.converged_s
        );
    }
    println!(
        "{} cells: {} ADDs and {} DELs served under faults, {} ADDs refused with no idle address; every cell agreed with the cloud afterwards",
        rows.len(),
        total(|c| c.adds),
        total(|c| c.dels),
        total(|c| c.adds_without_idle)
    );
}
