//! The server's counters, read by `/metrics` in the Prometheus text format.
//!
//! Plain atomics: the counters only grow, nothing reads two of them as one
//! state, so relaxed ordering is enough.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters since the server started.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: AtomicU64,
    over_limit: AtomicU64,
    redis_errors: AtomicU64,
    invalid: AtomicU64,
}

/// One of the [`Metrics`] counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `ShouldRateLimit` calls received.
    Requests,
    /// Calls answered `OVER_LIMIT`.
    OverLimit,
    /// Calls answered `UNAVAILABLE` because Redis failed.
    RedisErrors,
    /// Calls answered `INVALID_ARGUMENT`.
    Invalid,
}

impl Counter {
    const ALL: [Self; 4] = [
        Self::Requests,
        Self::OverLimit,
        Self::RedisErrors,
        Self::Invalid,
    ];

    fn name_and_help(self) -> (&'static str, &'static str) {
        match self {
            Self::Requests => (
                "apikey_ratelimit_requests_total",
                "ShouldRateLimit calls received.",
            ),
            Self::OverLimit => (
                "apikey_ratelimit_over_limit_total",
                "Calls answered OVER_LIMIT.",
            ),
            Self::RedisErrors => (
                "apikey_ratelimit_redis_errors_total",
                "Calls answered UNAVAILABLE because Redis failed or timed out.",
            ),
            Self::Invalid => (
                "apikey_ratelimit_invalid_requests_total",
                "Calls answered INVALID_ARGUMENT.",
            ),
        }
    }
}

impl Metrics {
    fn cell(&self, counter: Counter) -> &AtomicU64 {
        match counter {
            Counter::Requests => &self.requests,
            Counter::OverLimit => &self.over_limit,
            Counter::RedisErrors => &self.redis_errors,
            Counter::Invalid => &self.invalid,
        }
    }

    /// Adds one to `counter`.
    pub fn add(&self, counter: Counter) {
        self.cell(counter).fetch_add(1, Ordering::Relaxed);
    }

    /// The value of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        self.cell(counter).load(Ordering::Relaxed)
    }

    /// Every counter in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(512);
        for counter in Counter::ALL {
            let (name, help) = counter.name_and_help();
            // Writing to a String cannot fail.
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                self.get(counter)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_the_prometheus_text_format() {
        let metrics = Metrics::default();
        metrics.add(Counter::Requests);
        metrics.add(Counter::Requests);
        metrics.add(Counter::OverLimit);
        let text = metrics.render();
        assert!(
            text.contains("\napikey_ratelimit_requests_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("\napikey_ratelimit_over_limit_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\napikey_ratelimit_redis_errors_total 0\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE apikey_ratelimit_invalid_requests_total counter\n"));
    }
}
