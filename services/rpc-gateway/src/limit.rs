//! Rate limits per caller: a token bucket per token subject, refilled at a steady rate up to
//! a burst. A few dozen lines over a map, so no crate: what the gateway needs is one check
//! per call and a bounded map, nothing a limiter library would add.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept at most: past it the full ones (idle callers) are forgotten, and if none is
/// full, all are.
const PRUNE_AT: usize = 10_000;

/// Calls per second per subject, with a burst.
#[derive(Debug)]
pub struct Limiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Limiter {
    /// `rate` calls per second per subject (above 0), at most `burst` at once (at least 1).
    pub fn new(rate: f64, burst: u32) -> Result<Self, String> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!("a rate limit must be above 0 calls/s, not {rate}"));
        }
        Ok(Self {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// The limit in words, for refusals.
    pub fn describe(&self) -> String {
        format!("{} calls/s, burst {}", self.rate, self.burst)
    }

    /// Takes a token for `subject`; when there is none, how long until there is.
    pub fn admit(&self, subject: &str) -> Result<(), Duration> {
        self.admit_at(subject, Instant::now())
    }

    fn admit_at(&self, subject: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= PRUNE_AT && !buckets.contains_key(subject) {
            // Full buckets are the same as none; if every bucket is in use, start over
            // (everyone gets a full burst): the map stays bounded either way.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= PRUNE_AT {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(subject.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refilled = bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = refilled.min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_gets_its_burst_then_the_rate_and_others_are_unaffected() {
        let limiter = Limiter::new(10.0, 3).expect("valid");
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.admit_at("ada", t0).expect("within the burst");
        }
        let wait = limiter.admit_at("ada", t0).expect_err("burst spent");
        assert!(
            (wait.as_secs_f64() - 0.1).abs() < 1e-6,
            "one token at 10/s: {wait:?}"
        );
        limiter.admit_at("bob", t0).expect("bob has his own bucket");
        limiter
            .admit_at("ada", t0 + Duration::from_millis(100))
            .expect("refilled one token");
        limiter
            .admit_at("ada", t0 + Duration::from_millis(100))
            .expect_err("and only one");
        // Idle long: back to the burst, never beyond it.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            limiter.admit_at("ada", later).expect("full again");
        }
        limiter
            .admit_at("ada", later)
            .expect_err("capped at the burst");
    }

    #[test]
    fn bad_rates_are_refused_by_name() {
        assert!(
            Limiter::new(0.0, 1)
                .expect_err("zero")
                .contains("above 0 calls/s")
        );
        assert!(Limiter::new(f64::NAN, 1).is_err());
    }
}
