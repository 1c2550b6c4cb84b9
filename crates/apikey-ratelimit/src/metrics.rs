//! The server's counters, kept and exposed by `prometheus-client` (the
//! Prometheus project's Rust client) for `/metrics`.
//!
//! The exposition is OpenMetrics text: a counter's sample is named with
//! `_total` (`apikey_ratelimit_requests_total 2`) and the text ends with
//! `# EOF`. Prometheus reads it when it is served with [`CONTENT_TYPE`].

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter as PromCounter;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Counters since the server started.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: PromCounter,
    over_limit: PromCounter,
    redis_errors: PromCounter,
    invalid: PromCounter,
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

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("apikey_ratelimit");
        let mut counter = |name: &str, help: &str| {
            let counter = PromCounter::default();
            // prometheus-client adds `_total` to the name and a full stop
            // to the help.
            registry.register(name, help, counter.clone());
            counter
        };
        let requests = counter("requests", "ShouldRateLimit calls received");
        let over_limit = counter("over_limit", "Calls answered OVER_LIMIT");
        let redis_errors = counter(
            "redis_errors",
            "Calls answered UNAVAILABLE because Redis failed or timed out",
        );
        let invalid = counter("invalid_requests", "Calls answered INVALID_ARGUMENT");
        Self {
            registry,
            requests,
            over_limit,
            redis_errors,
            invalid,
        }
    }
}

impl Metrics {
    fn cell(&self, counter: Counter) -> &PromCounter {
        match counter {
            Counter::Requests => &self.requests,
            Counter::OverLimit => &self.over_limit,
            Counter::RedisErrors => &self.redis_errors,
            Counter::Invalid => &self.invalid,
        }
    }

    /// Adds one to `counter`.
    pub fn add(&self, counter: Counter) {
        self.cell(counter).inc();
    }

    /// The value of `counter`.
    #[cfg(test)]
    pub fn get(&self, counter: Counter) -> u64 {
        self.cell(counter).get()
    }

    /// Every counter in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(1024);
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_under_their_names_with_total() {
        let metrics = Metrics::default();
        metrics.add(Counter::Requests);
        metrics.add(Counter::Requests);
        metrics.add(Counter::OverLimit);
        let text = metrics.render();
        for line in [
            "# HELP apikey_ratelimit_requests ShouldRateLimit calls received.\n",
            "# TYPE apikey_ratelimit_requests counter\n",
            "\napikey_ratelimit_requests_total 2\n",
            "\napikey_ratelimit_over_limit_total 1\n",
            "\napikey_ratelimit_redis_errors_total 0\n",
            "\napikey_ratelimit_invalid_requests_total 0\n",
        ] {
            assert!(text.contains(line), "{line:?} is missing from:\n{text}");
        }
        assert!(
            text.ends_with("# EOF\n"),
            "the exposition does not end: {text}"
        );
    }

    #[test]
    fn each_counter_counts_on_its_own() {
        let metrics = Metrics::default();
        metrics.add(Counter::RedisErrors);
        metrics.add(Counter::Invalid);
        metrics.add(Counter::Invalid);
        assert_eq!(
            [
                Counter::Requests,
                Counter::OverLimit,
                Counter::RedisErrors,
                Counter::Invalid
            ]
            .map(|counter| metrics.get(counter)),
            [0, 0, 1, 2]
        );
    }
}
