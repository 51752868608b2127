//! Durable bind + release per second, with p50/p99 latency, at 10, 1,000 and
//! 10,000 pods already in the ledger; and the ledger's size on disk. Then
//! 1, 8 and 32 writers at once at 10,000 pods: concurrent binds and releases
//! share syncs of the write-ahead log (group commit), so durable operations
//! per second grow with them.
//!
//! `cargo bench -p terway-statestore --bench ledger_ops`

use std::net::IpAddr;
use std::time::{Duration, Instant};
use terway_statestore::*;

const IPS_PER_ENI: u32 = 50;
const ROUNDS: usize = 1000;

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn request(n: usize) -> BindRequest {
    BindRequest {
        pod: PodRef::new("bench", &format!("pod-{n}"), "uid"),
        container_id: format!("container-{n}"),
        netns: format!("/var/run/netns/cni-{n}"),
        ifname: "eth0".into(),
        settings: PodNetworkSettings::default(),
        ipv6: false,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// A ledger holding `pods` bound pods, with room for more.
fn filled(dir: &std::path::Path, pods: usize) -> Result<Ledger, LedgerError> {
    let ledger = Ledger::open(dir)?;
    let enis = (pods as u32 + 100).div_ceil(IPS_PER_ENI);
    for e in 0..enis {
        let id = format!("eni-{e:04}");
        let (hi, lo) = ((e / 200) as u8, (e % 200) as u8);
        ledger.adopt_eni(
            EniRecord {
                id: id.clone(),
                mac: format!("00:16:3e:00:{hi:02x}:{lo:02x}"),
                vswitch_id: "vsw".into(),
                gateway: IpAddr::from([10, hi, lo, 253]),
                cidr: format!("10.{hi}.{lo}.0/24"),
                primary_ip: IpAddr::from([10, hi, lo, 1]),
                status: EniStatus::InUse,
                route_table: 1000 + e,
                created_by_us: true,
                owner: None,
                exclusive: false,
                ipv6: None,
            },
            Durability::Lazy,
        )?;
        let ips: Vec<IpAddr> = (0..IPS_PER_ENI)
            .map(|i| IpAddr::from([10, hi, lo, (i + 2) as u8]))
            .collect();
        ledger.adopt_ips(&id, &ips, Durability::Lazy)?;
    }
    for n in 0..pods {
        ledger.bind(&request(n), EniPreference::MostUsed, Durability::Lazy)?;
    }
    ledger.flush()?;
    Ok(ledger)
}

fn run(pods: usize) -> Result<(), LedgerError> {
    let dir = tempfile::tempdir().map_err(|e| LedgerError::Conflict { what: e.to_string() })?;
    let ledger = filled(dir.path(), pods)?;
    let mut pairs = Vec::with_capacity(ROUNDS);
    let (mut bind_time, mut release_time) = (Duration::ZERO, Duration::ZERO);
    let started = Instant::now();
    for i in 0..ROUNDS {
        let req = request(pods + i);
        let t = Instant::now();
        ledger.bind(&req, EniPreference::MostUsed, Durability::Flush)?;
        let bound = t.elapsed();
        ledger.release(&req.pod, Some(&req.container_id), Duration::ZERO, Durability::Flush)?;
        pairs.push(t.elapsed());
        bind_time += bound;
        release_time += t.elapsed() - bound;
    }
    let total = started.elapsed();
    // the same without waiting for the disk, to separate fsync from bookkeeping
    let lazy_started = Instant::now();
    for i in 0..ROUNDS {
        let req = request(pods + ROUNDS + i);
        ledger.bind(&req, EniPreference::MostUsed, Durability::Lazy)?;
        ledger.release(&req.pod, Some(&req.container_id), Duration::ZERO, Durability::Lazy)?;
    }
    let lazy = lazy_started.elapsed();
    pairs.sort();
    ledger.flush()?;
    println!(
        "{pods:>6} pods: {:>6.0} pairs/s ({:>6.0} durable ops/s)  pair p50 {:>6.0} µs  p99 {:>6.0} µs  \
         (bind {:>5.0} µs, release {:>5.0} µs mean; unflushed pair {:>5.0} µs)  on disk {:.1} MiB",
        ROUNDS as f64 / total.as_secs_f64(),
        2.0 * ROUNDS as f64 / total.as_secs_f64(),
        percentile(&pairs, 0.5).as_secs_f64() * 1e6,
        percentile(&pairs, 0.99).as_secs_f64() * 1e6,
        bind_time.as_secs_f64() * 1e6 / ROUNDS as f64,
        release_time.as_secs_f64() * 1e6 / ROUNDS as f64,
        lazy.as_secs_f64() * 1e6 / ROUNDS as f64,
        dir_size(dir.path()) as f64 / (1024.0 * 1024.0),
    );
    Ok(())
}

/// `writers` threads, each binding and releasing pods of its own, durably.
fn concurrent(writers: usize, pods: usize, durability: Durability) -> Result<(), LedgerError> {
    let dir = tempfile::tempdir().map_err(|e| LedgerError::Conflict { what: e.to_string() })?;
    let ledger = filled(dir.path(), pods)?;
    let per_writer = (4 * ROUNDS / writers).max(50);
    let started = Instant::now();
    let latencies: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let ledger = &ledger;
                s.spawn(move || -> Result<Vec<Duration>, LedgerError> {
                    let mut own = Vec::with_capacity(2 * per_writer);
                    for i in 0..per_writer {
                        let req = request(pods + 100_000 * (w + 1) + i);
                        let t = Instant::now();
                        ledger.bind(&req, EniPreference::MostUsed, durability)?;
                        own.push(t.elapsed());
                        let t = Instant::now();
                        ledger.release(&req.pod, Some(&req.container_id), Duration::ZERO, durability)?;
                        own.push(t.elapsed());
                    }
                    Ok(own)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            match h.join() {
                Ok(r) => all.extend(r?),
                Err(_) => {
                    return Err(LedgerError::Conflict {
                        what: "a writer panicked".into(),
                    })
                }
            }
        }
        Ok(all)
    })?;
    let elapsed = started.elapsed();
    let syncs = ledger.durable_syncs();
    let mut sorted = latencies;
    sorted.sort();
    let shared = if syncs > 0 {
        format!(", {:.1} per log sync", sorted.len() as f64 / syncs as f64)
    } else {
        String::new()
    };
    println!(
        "{writers:>3} writers: {:>7.0} {} ops/s  op p50 {:>6.0} µs  p99 {:>6.0} µs  ({} ops{shared})",
        sorted.len() as f64 / elapsed.as_secs_f64(),
        if durability == Durability::Flush {
            "durable"
        } else {
            "unflushed"
        },
        percentile(&sorted, 0.5).as_secs_f64() * 1e6,
        percentile(&sorted, 0.99).as_secs_f64() * 1e6,
        sorted.len()
    );
    Ok(())
}

fn main() {
    println!("durable (flushed) bind + release, {ROUNDS} pairs each:");
    for pods in [10, 1_000, 10_000] {
        if let Err(e) = run(pods) {
            eprintln!("benchmark at {pods} pods failed: {e}");
            std::process::exit(1);
        }
    }
    println!("\nconcurrent writers at 10,000 pods (each op flushed before it returns; writers share flushes):");
    // the last run without waiting for the disk: what the bookkeeping alone allows
    let runs = [
        (1, Durability::Flush),
        (8, Durability::Flush),
        (32, Durability::Flush),
        (8, Durability::Lazy),
    ];
    for (writers, durability) in runs {
        if let Err(e) = concurrent(writers, 10_000, durability) {
            eprintln!("benchmark with {writers} writers failed: {e}");
            std::process::exit(1);
        }
    }
}
