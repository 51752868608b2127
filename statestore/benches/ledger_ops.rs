//! Durable bind + release per second, with p50/p99 latency, at 10, 1,000 and
//! 10,000 pods already in the ledger; and the ledger's size on disk.
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
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn run(pods: usize) -> Result<(), LedgerError> {
    let dir = tempfile::tempdir().map_err(|e| LedgerError::Conflict { what: e.to_string() })?;
    let ledger = Ledger::open(dir.path())?;
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

fn main() {
    println!("durable (flushed) bind + release, {ROUNDS} pairs each:");
    for pods in [10, 1_000, 10_000] {
        if let Err(e) = run(pods) {
            eprintln!("benchmark at {pods} pods failed: {e}");
            std::process::exit(1);
        }
    }
}
