//! Crash test: a child process binds and releases addresses in a loop and is
//! killed with SIGKILL at random moments, 200 times. After every kill the
//! reopened ledger must be consistent, hold every acknowledged operation, and
//! bind no address twice.
//!
//! The child is this test binary itself, re-run with `crash_worker` selected
//! and `CRASH_WORKER_DIR` set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use terway_statestore::*;

const KILLS: usize = 200;
const PODS: u32 = 30;

fn pod(n: u32) -> PodRef {
    PodRef::new("crash", &format!("pod-{n}"), "uid")
}

/// The child's loop. Before each operation it says what it starts, after
/// the durable return what it finished; the parent holds it to the latter.
#[test]
fn crash_worker() {
    let Ok(dir) = std::env::var("CRASH_WORKER_DIR") else {
        return;
    };
    let seed: u64 = std::env::var("CRASH_WORKER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let ledger = Ledger::open(std::path::Path::new(&dir)).unwrap();
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    println!("READY");
    loop {
        let p = (next() % u64::from(PODS)) as u32;
        let key = pod(p).key();
        match next() % 10 {
            0..=5 => {
                println!("BINDING {key}");
                let req = BindRequest {
                    pod: pod(p),
                    container_id: "c".into(),
                    netns: "/proc/self/ns/net".into(),
                    ifname: "eth0".into(),
                    settings: PodNetworkSettings::default(),
                };
                match ledger.bind(&req, EniPreference::MostUsed, Durability::Flush) {
                    Ok(b) => println!("BOUND {key} {}", b.ip),
                    Err(LedgerError::NoIdleIp { .. }) => println!("FULL {key}"),
                    Err(e) => panic!("bind: {e}"),
                }
            }
            6..=8 => {
                println!("RELEASING {key}");
                ledger
                    .release(&pod(p), None, Duration::from_millis(1), Durability::Flush)
                    .unwrap();
                println!("RELEASED {key}");
            }
            _ => {
                ledger.promote_cooled(now_millis(), Durability::Flush).unwrap();
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Known {
    Bound(IpAddr),
    Absent,
    /// An operation was in flight when the child died: either outcome is fine.
    InFlight,
}

#[test]
fn sigkill_at_random_moments() {
    if std::env::var("CRASH_WORKER_DIR").is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    {
        let l = Ledger::open(dir.path()).unwrap();
        for e in 1..=2u8 {
            let eni = common::eni(&format!("eni-{e}"), e);
            l.adopt_eni(eni, Durability::Flush).unwrap();
            l.adopt_ips(&format!("eni-{e}"), &common::addresses(e, 2, 11), Durability::Flush)
                .unwrap();
        }
    }
    let exe = std::env::current_exe().unwrap();
    let mut known: BTreeMap<String, Known> = BTreeMap::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut acked_total = 0usize;
    let mut kills_after_work = 0usize;
    let started = Instant::now();
    for kill in 0..KILLS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_worker", "--nocapture", "--test-threads=1"])
            .env("CRASH_WORKER_DIR", dir.path())
            .env("CRASH_WORKER_SEED", (kill as u64 + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        // kill anywhere from before the ledger is open to well into the loop
        std::thread::sleep(Duration::from_micros(rng % 40_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut worked = false;
        for line in &lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["BINDING", key] | ["RELEASING", key] => {
                    known.insert((*key).to_owned(), Known::InFlight);
                }
                ["BOUND", key, ip] => {
                    known.insert((*key).to_owned(), Known::Bound(ip.parse().unwrap()));
                    acked_total += 1;
                    worked = true;
                }
                ["RELEASED", key] => {
                    known.insert((*key).to_owned(), Known::Absent);
                    acked_total += 1;
                    worked = true;
                }
                // a refused bind changed nothing; the ledger tells what the pod holds
                ["FULL", key] => {
                    known.insert((*key).to_owned(), Known::InFlight);
                }
                _ => {}
            }
        }
        kills_after_work += usize::from(worked);

        let l = Ledger::open(dir.path()).unwrap_or_else(|e| panic!("kill {kill}: reopen failed: {e}"));
        let problems = l.check();
        assert!(
            problems.is_empty(),
            "kill {kill}: inconsistent after SIGKILL: {problems:?}"
        );
        let s = l.snapshot();
        let mut owners: BTreeMap<IpAddr, String> = BTreeMap::new();
        for (key, p) in &s.pods {
            for ip in &p.ips {
                if let Some(other) = owners.insert(*ip, key.clone()) {
                    panic!("kill {kill}: {ip} bound to {key} and {other}");
                }
            }
        }
        for (key, k) in known.clone() {
            let actual = s.pods.get(&key).map(|p| p.ips[0]);
            match k {
                Known::Bound(ip) => assert_eq!(actual, Some(ip), "kill {kill}: acknowledged bind of {key} lost"),
                Known::Absent => assert_eq!(actual, None, "kill {kill}: acknowledged release of {key} lost"),
                Known::InFlight => {}
            }
            // from here on, what the ledger holds is what the next round is held to
            known.insert(key, actual.map_or(Known::Absent, Known::Bound));
        }
        for (key, p) in &s.pods {
            known.entry(key.clone()).or_insert(Known::Bound(p.ips[0]));
        }
    }
    println!(
        "{KILLS} SIGKILLs in {:.1} s: {kills_after_work} after acknowledged work, {acked_total} acknowledged operations checked",
        started.elapsed().as_secs_f64()
    );
    assert!(
        kills_after_work >= KILLS / 4,
        "most kills should land mid-work: {kills_after_work}"
    );
}
