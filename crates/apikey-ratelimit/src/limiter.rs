//! One `ShouldRateLimit` call, from request to answer: plan the checks,
//! charge the counters, build the response, count what happened.
//!
//! A Redis failure fails the whole call with gRPC `UNAVAILABLE` rather than
//! answering `OK` for a descriptor it could not count: the client (the
//! filter's `on_failure`, Envoy's `failure_mode_deny`) decides what a
//! failure means, not this server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::Status;

use crate::decision::{self, Check, Invalid};
use crate::metrics::{Counter, Metrics};
use crate::proto::{Code, RateLimitRequest, RateLimitResponse};
use crate::store::Counters;

/// The rate limiter: counters, and the metrics of the calls it answers.
pub struct Limiter<C> {
    counters: C,
    metrics: Arc<Metrics>,
    /// Whether the last Redis call failed, so an outage is logged once
    /// when it starts and once when it ends, not once per request.
    failing: AtomicBool,
}

impl<C: Counters> Limiter<C> {
    /// A limiter charging `counters` and counting into `metrics`.
    pub fn new(counters: C, metrics: Arc<Metrics>) -> Self {
        Self {
            counters,
            metrics,
            failing: AtomicBool::new(false),
        }
    }

    /// The counters, for the health check.
    pub fn counters(&self) -> &C {
        &self.counters
    }

    /// Answers `request` at the current wall-clock time.
    pub async fn should_rate_limit(
        &self,
        request: &RateLimitRequest,
    ) -> Result<RateLimitResponse, Status> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.answer(request, now_ms).await
    }

    /// Answers `request` at `now_ms` (ms of Unix time).
    pub async fn answer(
        &self,
        request: &RateLimitRequest,
        now_ms: u64,
    ) -> Result<RateLimitResponse, Status> {
        self.metrics.add(Counter::Requests);
        let checks = decision::plan(request, now_ms).map_err(|Invalid(reason)| {
            self.metrics.add(Counter::Invalid);
            Status::invalid_argument(reason)
        })?;
        let mut statuses = Vec::with_capacity(checks.len());
        for check in &checks {
            statuses.push(match check {
                Check::Unlimited => decision::unlimited(),
                Check::Count(charge) => match self.counters.charge(charge).await {
                    Ok(counted) => decision::status(charge, counted),
                    Err(error) => {
                        self.metrics.add(Counter::RedisErrors);
                        if !self.failing.swap(true, Ordering::Relaxed) {
                            eprintln!("apikey-ratelimit: Redis failed, answering UNAVAILABLE: {error}");
                        }
                        return Err(Status::unavailable(format!("counter store: {error}")));
                    }
                },
            });
        }
        if self.failing.swap(false, Ordering::Relaxed) {
            eprintln!("apikey-ratelimit: Redis answers again");
        }
        let response = decision::response(statuses);
        if response.overall_code == Code::OverLimit as i32 {
            self.metrics.add(Counter::OverLimit);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Charge, Counted};
    use crate::proto::{Entry, RateLimitDescriptor, RateLimitOverride};
    use crate::store::StoreError;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Counters in a map; `down` makes every charge fail.
    #[derive(Default)]
    struct MapCounters {
        counts: Mutex<HashMap<String, u64>>,
        down: AtomicBool,
    }

    impl Counters for MapCounters {
        async fn charge(&self, charge: &Charge) -> Result<Counted, StoreError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(StoreError("connection refused".into()));
            }
            let mut counts = self.counts.lock().unwrap();
            let count = counts.entry(charge.key.clone()).or_default();
            *count += charge.hits;
            Ok(Counted {
                count: *count,
                ttl_ms: charge.ttl_ms,
            })
        }

        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    const NOW_MS: u64 = 1_767_225_630_000; // 30 s into a minute

    fn request(key_id: &str, limit: Option<u32>) -> RateLimitRequest {
        RateLimitRequest {
            domain: "apikey".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![
                    Entry {
                        key: "key_id".into(),
                        value: key_id.into(),
                    },
                    Entry {
                        key: "scope".into(),
                        value: "*".into(),
                    },
                ],
                limit: limit.map(|requests_per_unit| RateLimitOverride {
                    requests_per_unit,
                    unit: 2,
                }),
                hits_addend: None,
                is_negative_hits: false,
            }],
            hits_addend: 1,
        }
    }

    fn limiter() -> (Limiter<MapCounters>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        (
            Limiter::new(MapCounters::default(), metrics.clone()),
            metrics,
        )
    }

    #[tokio::test]
    async fn admits_the_limit_then_answers_over_limit_with_the_time_to_reset() {
        let (limiter, metrics) = limiter();
        let mut codes = Vec::new();
        for _ in 0..5 {
            let answer = limiter
                .answer(&request("key_1", Some(3)), NOW_MS)
                .await
                .unwrap();
            codes.push(answer.overall_code);
        }
        assert_eq!(codes, [1, 1, 1, 2, 2]);
        let over = limiter
            .answer(&request("key_1", Some(3)), NOW_MS)
            .await
            .unwrap();
        let reset = over.statuses[0].duration_until_reset.unwrap();
        assert_eq!((reset.seconds, reset.nanos), (30, 0));
        assert_eq!(metrics.get(Counter::Requests), 6);
        assert_eq!(metrics.get(Counter::OverLimit), 3);
        // Another key has its own counter.
        let other = limiter
            .answer(&request("key_2", Some(3)), NOW_MS)
            .await
            .unwrap();
        assert_eq!(other.overall_code, 1);
    }

    #[tokio::test]
    async fn the_next_window_starts_from_zero() {
        let (limiter, _) = limiter();
        for _ in 0..2 {
            limiter
                .answer(&request("key_1", Some(1)), NOW_MS)
                .await
                .unwrap();
        }
        let next = limiter
            .answer(&request("key_1", Some(1)), NOW_MS + 30_000)
            .await
            .unwrap();
        assert_eq!(
            next.overall_code, 1,
            "the new minute inherited the old count"
        );
    }

    #[tokio::test]
    async fn a_descriptor_without_a_limit_is_ok_and_counts_nothing() {
        let (limiter, _) = limiter();
        for _ in 0..3 {
            let answer = limiter
                .answer(&request("key_1", None), NOW_MS)
                .await
                .unwrap();
            assert_eq!(answer.overall_code, 1);
        }
        assert!(limiter.counters().counts.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failing_store_is_unavailable_and_counted() {
        let (limiter, metrics) = limiter();
        limiter.counters().down.store(true, Ordering::Relaxed);
        let status = limiter
            .answer(&request("key_1", Some(3)), NOW_MS)
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(metrics.get(Counter::RedisErrors), 1);
        limiter.counters().down.store(false, Ordering::Relaxed);
        assert!(limiter
            .answer(&request("key_1", Some(3)), NOW_MS)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn an_invalid_request_is_invalid_argument() {
        let (limiter, metrics) = limiter();
        let mut request = request("key_1", Some(3));
        request.domain.clear();
        let status = limiter.answer(&request, NOW_MS).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(metrics.get(Counter::Invalid), 1);
    }
}
