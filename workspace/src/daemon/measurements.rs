//! What the node service measures of itself (CNI requests, reconcile
//! passes, datapath repairs), recorded as it runs; `crate::metrics` writes
//! it out in Prometheus' format together with the cloud client's counters.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use terway_cloud::LATENCY_BUCKETS;

/// A latency histogram with the cloud client's bounds (seconds).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Counts at or below each bound of [`LATENCY_BUCKETS`].
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn observe(&mut self, took: Duration) {
        let s = took.as_secs_f64();
        if self.buckets.is_empty() {
            self.buckets = vec![0; LATENCY_BUCKETS.len()];
        }
        for (bound, n) in LATENCY_BUCKETS.iter().zip(self.buckets.iter_mut()) {
            if s <= *bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += s;
    }
}

/// What the last reconcile pass did, for `terway-cli status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastReconcile {
    /// Milliseconds since the Unix epoch.
    pub finished_at_ms: u64,
    pub took_ms: u64,
    /// `None` when the pass succeeded.
    pub error: Option<String>,
}

/// The node service's own measurements (the cloud client keeps its own).
#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// (command, result) → latency.
    pub(crate) cni: Mutex<BTreeMap<(&'static str, &'static str), Histogram>>,
    pub(crate) reconcile: Mutex<Histogram>,
    pub(crate) reconcile_failures: std::sync::atomic::AtomicU64,
    last_reconcile: Mutex<Option<LastReconcile>>,
    pub(crate) datapath_checks: std::sync::atomic::AtomicU64,
    pub(crate) datapath_check_failures: std::sync::atomic::AtomicU64,
    /// Drift kind → repairs.
    datapath_repairs: Mutex<BTreeMap<&'static str, u64>>,
}

impl NodeMetrics {
    pub fn observe_cni(&self, command: &'static str, ok: bool, took: Duration) {
        let result = if ok { "success" } else { "error" };
        self.cni
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((command, result))
            .or_default()
            .observe(took);
    }

    pub fn observe_reconcile(&self, took: Duration, error: Option<String>) {
        self.reconcile
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(took);
        if error.is_some() {
            self.reconcile_failures.fetch_add(1, Ordering::Relaxed);
        }
        let finished_at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        *self.last_reconcile.lock().unwrap_or_else(PoisonError::into_inner) = Some(LastReconcile {
            finished_at_ms,
            took_ms: took.as_millis() as u64,
            error,
        });
    }

    /// A datapath agent round ended; `failed` pods or ENIs could not be checked or repaired.
    pub fn observe_datapath_check(&self, failed: usize) {
        self.datapath_checks.fetch_add(1, Ordering::Relaxed);
        self.datapath_check_failures.fetch_add(failed as u64, Ordering::Relaxed);
    }

    pub fn observe_repairs(&self, drift: &[terway_datapath::Drift]) {
        let mut repairs = self.datapath_repairs.lock().unwrap_or_else(PoisonError::into_inner);
        for d in drift {
            *repairs.entry(d.kind.as_str()).or_default() += 1;
        }
    }

    /// Repairs so far, by drift kind.
    pub fn datapath_repairs(&self) -> BTreeMap<&'static str, u64> {
        self.datapath_repairs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn last_reconcile(&self) -> Option<LastReconcile> {
        self.last_reconcile
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
