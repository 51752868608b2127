//! Crash tests: four threads of a child process bind and release addresses
//! in a loop, sharing flushes (group commit), and the child is killed with
//! SIGKILL at random moments, 200 times. After every kill the
//! reopened ledger must be consistent, hold every acknowledged operation, and
//! bind no address twice.
//!
//! A SIGKILL keeps what the process wrote but had not flushed (the kernel
//! still holds it), so the power-loss run goes further: the child stops
//! itself (SIGSTOP, every thread) right after an acknowledged, flushed
//! operation, the parent copies the ledger's directory and cuts the copy's
//! write-ahead log to the bytes the child had synced (the records of a group
//! commit still under way are lost), lets the child write on, kills it, and
//! puts the copy back — every write after that flush thrown away, as a power
//! cut would. The same checks hold.
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
const POWER_LOSSES: usize = 200;
const PODS: u32 = 32;
/// Threads of the worker binding and releasing at once.
const WRITERS: u64 = 4;

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
    // the power-loss run: after this many acknowledged operations the worker
    // stops itself (every thread, sled's included) so the parent can copy the
    // files exactly as they are at that flush point, then goes on
    let pause_at: Option<usize> = std::env::var("CRASH_WORKER_PAUSE_AT").ok().and_then(|n| n.parse().ok());
    let acked = std::sync::atomic::AtomicUsize::new(0);
    let flush_point = || {
        if pause_at == Some(acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1) {
            println!("PAUSED");
            // read after PAUSED: every operation acknowledged before it is synced by now
            let (log, synced) = ledger.wal_synced();
            println!("WAL {} {synced}", log.display());
            let _ = Command::new("kill")
                .args(["-STOP", &std::process::id().to_string()])
                .status();
        }
    };
    println!("READY");
    // writers at once, so kills land inside shared (group) flushes; each owns
    // the pods `p % WRITERS == w`, so each pod's operations stay in order
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (ledger, flush_point) = (&ledger, &flush_point);
            s.spawn(move || {
                let mut x = (seed + w).wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                loop {
                    let p = (next() % u64::from(PODS / WRITERS as u32)) as u32 * WRITERS as u32 + w as u32;
                    work(ledger, p, next() % 10, flush_point);
                }
            });
        }
    });
}

/// One operation on pod `p`, said before it starts and after it is durable.
fn work(ledger: &Ledger, p: u32, dice: u64, flush_point: &impl Fn()) {
    let key = pod(p).key();
    match dice {
        0..=5 => {
            println!("BINDING {key}");
            let req = BindRequest {
                pod: pod(p),
                container_id: "c".into(),
                netns: "/proc/self/ns/net".into(),
                ifname: "eth0".into(),
                settings: PodNetworkSettings::default(),
                ipv6: false,
            };
            match ledger.bind(&req, EniPreference::MostUsed, Durability::Flush) {
                Ok(b) => {
                    println!("BOUND {key} {}", b.ip);
                    flush_point();
                }
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
            flush_point();
        }
        _ => {
            ledger.promote_cooled(now_millis(), Durability::Flush).unwrap();
        }
    }
}

/// In the copy at `dir`: the write-ahead log `log` cut to its `synced`
/// bytes, and any later log (started after the count was read) removed.
fn wal_cut_to(dir: &std::path::Path, log: &std::path::Path, synced: u64) {
    let name = log.file_name().unwrap().to_str().unwrap().to_owned();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let other = entry.file_name().to_str().unwrap().to_owned();
        if other.starts_with("wal.") && other > name {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    let path = dir.join(&name);
    if let Ok(mut bytes) = std::fs::read(&path) {
        let synced = (synced as usize).min(bytes.len());
        if bytes[synced..].iter().any(|b| *b != 0) {
            bytes[synced..].fill(0);
            std::fs::write(&path, &bytes).unwrap();
            WAL_CUTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Power cuts that threw away log records written but not yet synced.
static WAL_CUTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether the process is stopped (SIGSTOP), from `/proc/<pid>/stat`.
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
        .unwrap_or(false)
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
    kill_rounds(KILLS, false);
}

#[test]
fn power_loss_keeps_every_acknowledged_operation() {
    if std::env::var("CRASH_WORKER_DIR").is_ok() {
        return;
    }
    kill_rounds(POWER_LOSSES, true);
}

/// `kills` rounds of: start the worker, kill it, check the ledger. With
/// `power_loss`, the ledger is first put back to its last flush point.
fn kill_rounds(kills: usize, power_loss: bool) {
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
    let flushed = tempfile::tempdir().unwrap();
    let flush_point = flushed.path().join("ledger");
    let mut power_cuts = 0usize;
    for kill in 0..kills {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut worker = Command::new(&exe);
        worker
            .args(["--exact", "crash_worker", "--nocapture", "--test-threads=1"])
            .env("CRASH_WORKER_DIR", dir.path())
            .env("CRASH_WORKER_SEED", (kill as u64 + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if power_loss {
            worker.env("CRASH_WORKER_PAUSE_AT", (1 + rng % 12).to_string());
        }
        let mut child = worker.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (seen, lines_in) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = seen.send(line.clone());
                all.push(line);
            }
            all
        });
        let mut cut = false;
        if power_loss {
            // at the flush point: copy the files while every thread of the worker is stopped
            let synced_log = loop {
                match lines_in.recv_timeout(Duration::from_secs(5)) {
                    Ok(line) if line.starts_with("WAL ") => {
                        let (log, len) = line["WAL ".len()..].rsplit_once(' ').unwrap();
                        break Some((std::path::PathBuf::from(log), len.parse::<u64>().unwrap()));
                    }
                    Ok(_) => {}
                    Err(_) => break None,
                }
            };
            if let Some((log, synced)) = synced_log {
                while !stopped(child.id()) {
                    std::thread::sleep(Duration::from_micros(200));
                }
                let _ = std::fs::remove_dir_all(&flush_point);
                common::copy_dir(dir.path(), &flush_point).unwrap();
                // the log's writes not yet synced (a group commit under way) are lost too
                wal_cut_to(&flush_point, &log, synced);
                let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
                cut = true;
            }
            // the worker writes on (nothing of it flushed in the copy), then the power goes
            std::thread::sleep(Duration::from_micros(rng % 20_000));
        } else {
            // kill anywhere from before the ledger is open to well into the loop
            std::thread::sleep(Duration::from_micros(rng % 40_000));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut lines = reader.join().unwrap();
        // after a power cut, everything after the flush point never reached the disk
        let mut lost = Vec::new();
        if cut {
            power_cuts += 1;
            let at = lines.iter().position(|l| l == "PAUSED").unwrap();
            lost = lines.split_off(at);
            std::fs::remove_dir_all(dir.path()).unwrap();
            common::copy_dir(&flush_point, dir.path()).unwrap();
        }
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
        // operations after the flush point: either outcome is fine (the last word on their pods)
        for line in &lost {
            if let Some(key) = line.split_whitespace().nth(1) {
                known.insert(key.to_owned(), Known::InFlight);
            }
        }
        kills_after_work += usize::from(worked);

        let l = Ledger::open(dir.path()).unwrap_or_else(|e| panic!("kill {kill}: reopen failed: {e}"));
        let problems = l.check();
        assert!(
            problems.is_empty(),
            "kill {kill}: inconsistent after the kill: {problems:?}"
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
    let cuts = if power_loss {
        format!(
            " ({power_cuts} of them power cuts: the files put back to a flush point the worker had written past; \
             {} of them inside a group commit, the log's unsynced tail thrown away)",
            WAL_CUTS.load(std::sync::atomic::Ordering::SeqCst)
        )
    } else {
        String::new()
    };
    println!(
        "{kills} SIGKILLs in {:.1} s{cuts}: {kills_after_work} after acknowledged work, {acked_total} acknowledged operations checked",
        started.elapsed().as_secs_f64()
    );
    if power_loss {
        assert!(
            power_cuts >= kills / 2,
            "most rounds should cut the power: {power_cuts}"
        );
    }
    assert!(
        kills_after_work >= kills / 4,
        "most kills should land mid-work: {kills_after_work}"
    );
}
