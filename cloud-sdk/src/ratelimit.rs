//! Client-side token buckets per OpenAPI action (requests per minute; burst
//! = the per-minute value, refilled continuously), so a node never spends
//! the account's shared budget in a burst.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    per_minute: BTreeMap<String, u32>,
    default_per_minute: u32,
    /// `(per second, burst)` for every class, overriding the per-minute table.
    rate: Option<(f64, f64)>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_minute: BTreeMap<String, u32>, default_per_minute: u32) -> Self {
        Self {
            per_minute,
            default_per_minute,
            rate: None,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// One bucket per class refilled at `per_second`, holding at most `burst`
    /// (a QPS/burst limit such as the Kubernetes client's).
    pub fn with_rate(per_second: f64, burst: f64) -> Self {
        Self {
            rate: Some((per_second.max(0.001), burst.max(1.0))),
            ..Self::new(BTreeMap::new(), 1)
        }
    }

    /// The limiter with the built-in table.
    pub fn with_defaults() -> Self {
        let table = terway_config::defaults::RATE_LIMITS_PER_MINUTE
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        Self::new(table, terway_config::defaults::DEFAULT_RATE_LIMIT_PER_MINUTE)
    }

    /// Reserves one token for `action` and returns how long to wait before
    /// using it. Reservations queue (tokens go negative), so waiters are served
    /// in order and the long-run rate never exceeds the limit.
    pub fn reserve(&self, action: &str) -> Duration {
        let limit = f64::from(
            self.per_minute
                .get(action)
                .copied()
                .unwrap_or(self.default_per_minute)
                .max(1),
        );
        let (per_second, capacity) = self.rate.unwrap_or((limit / 60.0, limit));
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let bucket = buckets.entry(action.to_owned()).or_insert_with(|| Bucket {
            tokens: capacity,
            capacity,
            per_second,
            last: now,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * bucket.per_second).min(bucket.capacity);
        bucket.last = now;
        bucket.tokens -= 1.0;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / bucket.per_second)
        }
    }

    /// Takes a token of `action` if one is there now (no queueing).
    pub fn try_take(&self, action: &str) -> bool {
        if self.reserve(action).is_zero() {
            return true;
        }
        // give the reservation back: the caller is refused, not queued
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = buckets.get_mut(action) {
            b.tokens += 1.0;
        }
        false
    }

    /// Waits for a token of `action`; returns the time waited.
    pub async fn acquire(&self, action: &str) -> Duration {
        let wait = self.reserve(action);
        if !wait.is_zero() {
            if wait > Duration::from_secs(5) {
                tracing::warn!(
                    action,
                    wait_ms = wait.as_millis() as u64,
                    "client-side rate limit: long wait"
                );
            }
            tokio::time::sleep(wait).await;
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qps_and_burst() {
        let limiter = RateLimiter::with_rate(5.0, 10.0);
        for _ in 0..10 {
            assert_eq!(limiter.reserve("kube"), Duration::ZERO);
        }
        let wait = limiter.reserve("kube");
        assert!(
            wait > Duration::from_millis(150) && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
    }

    #[test]
    fn burst_then_paced() {
        let limiter = RateLimiter::new([("A".to_owned(), 60)].into(), 500);
        for _ in 0..60 {
            assert_eq!(limiter.reserve("A"), Duration::ZERO);
        }
        // 60/min = one a second once the burst is spent; the next waits ~1 s, the one after ~2 s
        let w1 = limiter.reserve("A");
        let w2 = limiter.reserve("A");
        assert!(
            w1 > Duration::from_millis(900) && w1 <= Duration::from_secs(1),
            "{w1:?}"
        );
        assert!(
            w2 > Duration::from_millis(1900) && w2 <= Duration::from_secs(2),
            "{w2:?}"
        );
        // other actions have their own bucket
        assert_eq!(limiter.reserve("B"), Duration::ZERO);
    }
}
