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
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_minute: BTreeMap<String, u32>, default_per_minute: u32) -> Self {
        Self {
            per_minute,
            default_per_minute,
            buckets: Mutex::new(HashMap::new()),
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
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let bucket = buckets.entry(action.to_owned()).or_insert_with(|| Bucket {
            tokens: limit,
            capacity: limit,
            per_second: limit / 60.0,
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
