//! terwayd killed with SIGKILL during bursts of ADD and DEL, 500 times: at
//! random moments, and inside the cloud calls that change the node (the
//! kill lands while the emulator holds a CreateNetworkInterface,
//! AttachNetworkInterface, AssignPrivateIpAddresses or
//! UnassignPrivateIpAddresses, before it takes effect or after it took
//! effect and before it is answered), with 5xx and throttling switched on
//! and off along the way. Every acknowledged ADD and DEL is a ledger flush,
//! so kills mid-burst land in flushes too. After each restart no pod has
//! lost its address and no address is in two pods; at the end the cloud and
//! the ledger agree: nothing leaked. terwayd runs as its own process
//! (`terwayd run --no-datapath`); the cloud is the emulator in this test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use terway_cloud::emulator::{Emulator, Faults, InstanceTypeSpec, Scenario};
use terway_node::cni::exchange;
use terway_node::cni::protocol::{PodRequest, Reply, Request};

const KILLS: usize = 500;
const PODS: usize = 16;

fn write_config(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("eni_conf");
    let own = format!(
        r#", "max_pool_size": 8, "min_pool_size": 4, "ledger_path": "{}", "socket_path": "{}""#,
        dir.join("ledger").display(),
        dir.join("eni.socket").display()
    );
    std::fs::write(&path, terway_tests::eni_conf(url, &["vsw-large0000000001"], &own)).unwrap();
    path
}

fn pod(i: usize) -> PodRequest {
    PodRequest::new(
        "crash",
        &format!("pod-{i}"),
        &format!("crash{i:03}"),
        &format!("/var/run/netns/crash-{i}"),
    )
}

fn wait_serving(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if exchange(socket, &Request::Del(pod(999)), Duration::from_secs(5)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("terwayd did not start serving");
}

/// Addresses on the instance's attached secondary ENIs, and Available ENIs terway-rs made.
fn cloud_view(em: &Emulator) -> (BTreeSet<String>, usize) {
    let dump = em.dump();
    let (ips, _) = terway_tests::cloud_addresses(&dump, "InUse");
    let (_, leftovers) = terway_tests::cloud_addresses(&dump, "Available");
    (ips, leftovers)
}

/// The calls kills are aimed at, one round each in turn, then a round of a random moment.
const TARGETS: [&str; 4] = [
    "CreateNetworkInterface",
    "AttachNetworkInterface",
    "AssignPrivateIpAddresses",
    "UnassignPrivateIpAddresses",
];

#[derive(Debug, Clone, PartialEq)]
enum Known {
    Bound(String),
    Absent,
    InFlight,
}

#[test]
fn sigkill_during_bursts_keeps_the_invariants() {
    let (rt, mut scenario) = terway_tests::quick_attach_scenario();
    // small ENIs (3 secondary addresses each), so bursts make and retire ENIs often
    scenario.instance_types.push(InstanceTypeSpec {
        id: "ecs.crash.small".into(),
        eni_quantity: 8,
        ipv4_per_eni: 4,
        ipv6_per_eni: 0,
        eni_total_quantity: Some(8),
    });
    scenario.instances[0].instance_type = "ecs.crash.small".into();
    let em = rt.block_on(Emulator::start(scenario)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &em.url());
    let socket = dir.path().join("eni.socket");
    let mut known: BTreeMap<usize, Known> = BTreeMap::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let started = Instant::now();
    let mut acked = 0usize;
    // kills that landed inside each targeted call, and rounds under 5xx or throttling
    let mut landed: BTreeMap<&str, usize> = BTreeMap::new();
    let mut faulty_rounds = 0usize;
    for kill in 0..KILLS {
        let target = TARGETS.get(kill % (TARGETS.len() + 1)).copied();
        let mut faults = Faults::default();
        if let Some(action) = target {
            // hold the call 300 ms: before it takes effect, or after (its answer lost to the kill)
            let hold = [(action.to_owned(), 300)].into();
            if kill % 2 == 0 {
                faults.latency_ms = hold;
            } else {
                faults.answer_delay_ms = hold;
            }
        }
        if kill % 7 == 3 {
            faulty_rounds += 1;
            if kill % 2 == 0 {
                faults.error_rate = 0.3;
            } else {
                faults.throttle_rate = 0.3;
            }
        }
        em.set_faults(faults);
        let mut child = terway_tests::spawn_terwayd(&config);
        wait_serving(&socket);
        // every pod the daemon acknowledged still has its address: a repeated ADD returns it
        let mut owners: BTreeMap<String, usize> = BTreeMap::new();
        for (i, k) in known.clone() {
            if let Known::Bound(ip) = k {
                match exchange(&socket, &Request::Add(pod(i)), Duration::from_secs(30)).unwrap() {
                    Reply::Ok { network: Some(n) } => assert_eq!(n.ipv4, ip, "kill {kill}: pod {i} lost its address"),
                    other => panic!("kill {kill}: pod {i}: {other:?}"),
                }
            }
        }
        for (i, k) in &known {
            if let Known::Bound(ip) = k {
                if let Some(other) = owners.insert(ip.clone(), *i) {
                    panic!("kill {kill}: {ip} is bound to pod {other} and pod {i}");
                }
            }
        }
        // a burst of ADD and DEL from several threads, and SIGKILL in the middle of it
        let deadline = Instant::now() + Duration::from_millis(30 + next() % 270);
        let results = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        for w in 0..3u64 {
            let socket = socket.clone();
            let results = results.clone();
            let mut r = next().wrapping_add(w);
            workers.push(std::thread::spawn(move || {
                while Instant::now() < deadline + Duration::from_secs(2) {
                    r ^= r << 13;
                    r ^= r >> 7;
                    r ^= r << 17;
                    // each worker has pods of its own, so each pod's operations are in order
                    let i = (w as usize) + 3 * ((r % (PODS as u64 / 3)) as usize);
                    let add = r % 3 != 0;
                    results.lock().unwrap().push((i, None::<Known>));
                    let req = if add {
                        Request::Add(pod(i))
                    } else {
                        Request::Del(pod(i))
                    };
                    let outcome = match exchange(&socket, &req, Duration::from_secs(10)) {
                        Ok(Reply::Ok { network: Some(n) }) => Known::Bound(n.ipv4),
                        Ok(Reply::Ok { network: None }) => Known::Absent,
                        _ => Known::InFlight,
                    };
                    let failed = outcome == Known::InFlight;
                    results.lock().unwrap().push((i, Some(outcome)));
                    if failed {
                        return; // the daemon is gone
                    }
                }
            }));
        }
        match target {
            // inside the call if it comes before the deadline (plus its hold)
            Some(action) => {
                let until = deadline + Duration::from_millis(300);
                while Instant::now() < until && em.in_flight(action) == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if em.in_flight(action) > 0 {
                    *landed.entry(action).or_default() += 1;
                }
            }
            None => std::thread::sleep(deadline.saturating_duration_since(Instant::now())),
        }
        child.kill().unwrap(); // SIGKILL
        em.set_faults(Faults::default());
        child.wait().unwrap();
        for w in workers {
            w.join().unwrap();
        }
        for (i, outcome) in results.lock().unwrap().drain(..) {
            match outcome {
                None => {
                    known.insert(i, Known::InFlight);
                }
                Some(Known::InFlight) => {}
                Some(k) => {
                    acked += 1;
                    known.insert(i, k);
                }
            }
        }
        // what was in flight is settled by asking the restarted daemon in the next round
        let in_flight: Vec<usize> = known
            .iter()
            .filter(|(_, k)| **k == Known::InFlight)
            .map(|(i, _)| *i)
            .collect();
        if !in_flight.is_empty() {
            let mut child = terway_tests::spawn_terwayd(&config);
            wait_serving(&socket);
            for i in in_flight {
                // DEL settles it either way: the pod is gone afterwards
                let r = exchange(&socket, &Request::Del(pod(i)), Duration::from_secs(30)).unwrap();
                assert_eq!(r, Reply::Ok { network: None }, "kill {kill}: DEL of pod {i}");
                known.insert(i, Known::Absent);
            }
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
    // at rest: the daemon, restarted once more, makes the ledger and the cloud agree
    let mut child = terway_tests::spawn_terwayd(&config);
    wait_serving(&socket);
    let mut agreed = false;
    let mut last = String::new();
    for _ in 0..150 {
        std::thread::sleep(Duration::from_millis(200));
        let Some(export) = snapshot(&dir.path().join("ledger")) else {
            continue;
        };
        let ledger_ips: BTreeSet<String> = export.ips.iter().map(|r| r.ip.to_string()).collect();
        let intents = export.intents.len();
        let (cloud_ips, leftovers) = rt.block_on(async { cloud_view(&em) });
        last = format!(
            "ledger {} addresses, cloud {}, intents {intents}, leftover ENIs {leftovers}",
            ledger_ips.len(),
            cloud_ips.len()
        );
        if ledger_ips == cloud_ips && intents == 0 && leftovers == 0 {
            agreed = true;
            break;
        }
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
    println!(
        "{KILLS} SIGKILLs of terwayd in {:.1} s ({faulty_rounds} rounds with 5xx or throttling; inside a call: {landed:?}), {acked} acknowledged ADD/DEL checked; at rest: {last}",
        started.elapsed().as_secs_f64()
    );
    assert!(agreed, "the cloud and the ledger never agreed: {last}");
    let ledger = terway_statestore::Ledger::open(&dir.path().join("ledger")).unwrap();
    assert!(ledger.check().is_empty(), "{:?}", ledger.check());
}

/// The ledger terwayd holds, read from a copy (as `terway-ledger --snapshot` does).
fn snapshot(path: &Path) -> Option<terway_statestore::Export> {
    let (ledger, _copy) = terway_statestore::Ledger::open_snapshot(path).ok()?;
    ledger.export().ok()
}

#[test]
fn sigterm_lets_requests_under_way_finish() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut scenario = Scenario::default();
    scenario.faults.latency_ms.insert("*".into(), 300);
    let em = rt.block_on(Emulator::start(scenario)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &em.url());
    // a cold pool: the ADD waits for an ENI, several slow calls away
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"min_pool_size\": 4", "\"min_pool_size\": 0")
        .replace("\"max_pool_size\": 12", "\"max_pool_size\": 0");
    std::fs::write(&config, text).unwrap();
    let socket = dir.path().join("eni.socket");
    let mut child = terway_tests::spawn_terwayd(&config);
    wait_serving(&socket);
    let add = std::thread::spawn({
        let socket = socket.clone();
        move || exchange(&socket, &Request::Add(pod(1)), Duration::from_secs(30))
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let reply = add.join().unwrap();
    assert!(
        matches!(reply, Ok(Reply::Ok { network: Some(_) })),
        "the ADD under way was answered: {reply:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "terwayd did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        exchange(&socket, &Request::Status, Duration::from_secs(1)).is_err(),
        "no longer serving"
    );
}

/// Off a terminal (journald, a file) the logs carry no ANSI colour codes;
/// `--log-format json` writes one JSON object a line.
#[test]
fn logs_are_plain_off_a_terminal_and_json_on_request() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let em = rt.block_on(Emulator::start(Scenario::default())).unwrap();
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &em.url());
        let mut child = Command::new(terway_tests::binary("terwayd"))
            .args([
                "--log-format",
                format,
                "run",
                "--standalone",
                "--no-datapath",
                "--config",
            ])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_serving(&dir.path().join("eni.socket"));
        // stderr is unbuffered: every line written is in the pipe already
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        let logs = String::from_utf8_lossy(&out.stderr);
        assert!(logs.lines().count() >= 2, "{format}: {logs}");
        assert!(
            !logs.contains('\u{1b}'),
            "{format}: no escape codes off a terminal:\n{logs}"
        );
        if format == "json" {
            for line in logs.lines() {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
            }
        }
    }
}
