//! Fleet-wide limits (contract §6): asking a shared rate-limit service
//! after the local bucket admits, and what its answer (or its silence)
//! means.
//!
//! The local bucket stays exact within one Envoy; behind several gateways
//! each would admit the whole limit, so an admitted request is also asked
//! of a service every gateway shares. The service is Envoy's standard
//! `ShouldRateLimit` API; the filter sends the limit as the descriptor's
//! override so its configuration stays the one source of truth. A failing
//! service is counted per Envoy process and cluster in shared data: after
//! five failures in a row the filter stops asking for ten seconds (and
//! `on_failure` applies), then asks again.

use crate::denial::{Denial, ErrorCode, RateLimitReport};
use crate::rate_limit::Limit;
use crate::rls_codec::{self, Answer, Code, Descriptor, Unit};
use crate::store::cursor::{Reader, Writer};
use crate::store::names::circuit_key;
use crate::store::{self, Change, SharedStore, StoreError};

/// Failures in a row that open the circuit.
pub const TRIP_AFTER: u32 = 5;
/// How long an open circuit stops the filter from asking.
pub const OPEN_FOR_NS: u64 = 10_000_000_000;

/// What to do when the service fails. There is no fail-open choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Let the local bucket's answer stand (the default).
    Local,
    /// Answer 503 `rate_limiter_unavailable`.
    Deny,
}

/// The validated `fleet` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fleet {
    /// The Envoy cluster serving the rate-limit service (HTTP/2).
    pub cluster: String,
    /// The rate-limit domain.
    pub domain: String,
    /// Bound on one call.
    pub timeout_ms: u32,
    /// What a failure means.
    pub on_failure: OnFailure,
}

/// The gRPC service and method the filter calls.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// See [`SERVICE`].
pub const METHOD: &str = "ShouldRateLimit";

/// A question for the service about one locally admitted request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetQuery {
    /// The encoded `RateLimitRequest`.
    pub message: Vec<u8>,
    /// The bucket's pattern.
    pub pattern: String,
    /// The bucket's limit.
    pub limit: Limit,
    /// The scope the request needed (`*` when none).
    pub scope: String,
}

impl FleetQuery {
    /// The question for (`key_id`, `pattern`) under `limit`; `None` when the
    /// limit's period has no service unit (the configuration refuses that).
    pub fn new(
        fleet: &Fleet,
        key_id: &str,
        pattern: &str,
        limit: &Limit,
        scope: &str,
    ) -> Option<Self> {
        let descriptor = Descriptor {
            key_id,
            scope: pattern,
            requests_per_unit: u32::try_from(limit.requests).ok()?,
            unit: Unit::of_period(limit.period_seconds)?,
        };
        Some(Self {
            message: rls_codec::encode_request(&fleet.domain, &descriptor),
            pattern: pattern.to_owned(),
            limit: *limit,
            scope: scope.to_owned(),
        })
    }

    /// What the service's answer means: `None` to let the request
    /// through, or the denial. `answer` is `None` for a failure (a gRPC
    /// error, a timeout, an undecodable body, an unknown cluster, an open
    /// circuit); an answer other than OK or OVER_LIMIT is a failure too.
    pub fn outcome(&self, answer: Option<&Answer>, on_failure: OnFailure) -> Option<Denial> {
        match answer.map(|a| (a.overall, a.reset_seconds)) {
            Some((Code::Ok, _)) => None,
            Some((Code::OverLimit, reset)) => {
                let retry_after = reset.unwrap_or(self.limit.period_seconds).max(1);
                Some(Denial {
                    scope: Some(self.scope.clone()),
                    retry_after: Some(retry_after),
                    rate_limit: Some(RateLimitReport {
                        pattern: self.pattern.clone(),
                        quota: self.limit.requests,
                        window_seconds: self.limit.period_seconds,
                        remaining: 0,
                        reset_seconds: retry_after,
                    }),
                    ..Denial::new(ErrorCode::RateLimited)
                })
            }
            Some((Code::Unknown, _)) | None => match on_failure {
                OnFailure::Local => None,
                OnFailure::Deny => Some(Denial::new(ErrorCode::RateLimiterUnavailable)),
            },
        }
    }

    /// Whether `answer` counts as a success for the circuit.
    pub fn is_success(answer: Option<&Answer>) -> bool {
        matches!(answer.map(|a| a.overall), Some(Code::Ok | Code::OverLimit))
    }
}

/// The failure count of one cluster in one Envoy process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Circuit {
    /// Failures in a row.
    pub failures: u32,
    /// Until when (monotonic ns) the filter does not ask.
    pub open_until_ns: u64,
}

impl Circuit {
    /// Whether a call may be made at `now_ns`.
    pub fn allows_call(&self, now_ns: u64) -> bool {
        now_ns >= self.open_until_ns
    }

    /// The state after a call's result at `now_ns`. A success resets the
    /// count; the fifth failure in a row, and every failure after it,
    /// opens the circuit for [`OPEN_FOR_NS`].
    pub fn after(self, success: bool, now_ns: u64) -> Self {
        if success {
            return Self::default();
        }
        let failures = self.failures.saturating_add(1);
        let open_until_ns = if failures >= TRIP_AFTER {
            now_ns.saturating_add(OPEN_FOR_NS)
        } else {
            self.open_until_ns
        };
        Self {
            failures,
            open_until_ns,
        }
    }

    /// The stored entry: failures, then the instant the circuit closes.
    fn encode(&self) -> Vec<u8> {
        let mut out = Writer::with_capacity(12);
        out.u32(self.failures).u64(self.open_until_ns);
        out.finish()
    }

    /// The circuit in an entry; closed when the entry is unreadable, so
    /// a bad entry never stops the calls.
    fn decode(bytes: &[u8]) -> Self {
        let mut reader = Reader::new(bytes);
        match (reader.u32(), reader.u64()) {
            (Some(failures), Some(open_until_ns)) => Self {
                failures,
                open_until_ns,
            },
            _ => Self::default(),
        }
    }
}

/// The circuit of `cluster`, shared by every worker (and every
/// configuration) of this Envoy process.
pub fn read_circuit(store: &dyn SharedStore, cluster: &str) -> Result<Circuit, StoreError> {
    Ok(store
        .get(&circuit_key(cluster))?
        .map(|(bytes, _)| Circuit::decode(&bytes))
        .unwrap_or_default())
}

/// Records a call's result at `now_ns` and answers the circuit as stored.
/// A write that keeps losing to other workers' is
/// [`StoreError::Contention`]: the result was not recorded, which only
/// delays the circuit by one call, and the caller must not act as if it
/// had been (a circuit it did not open was not opened by it).
pub fn record_result(
    store: &dyn SharedStore,
    cluster: &str,
    success: bool,
    now_ns: u64,
) -> Result<Circuit, StoreError> {
    let updated = store::update(store, &circuit_key(cluster), |current| {
        let before = current.map(Circuit::decode).unwrap_or_default();
        let after = before.after(success, now_ns);
        if after == before {
            Change::Keep(after)
        } else {
            Change::Write(after.encode(), after)
        }
    })?;
    Ok(updated.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_store::MemoryStore;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const SECOND: u64 = 1_000_000_000;

    fn fleet() -> Fleet {
        Fleet {
            cluster: "ratelimit".into(),
            domain: "apikey".into(),
            timeout_ms: 50,
            on_failure: OnFailure::Local,
        }
    }

    fn query() -> FleetQuery {
        let limit = Limit {
            requests: 10,
            period_seconds: 60,
            burst: 3,
        };
        FleetQuery::new(&fleet(), "key_1", "leads:*", &limit, "leads:read").unwrap()
    }

    #[test]
    fn ok_lets_the_request_through() {
        assert_eq!(
            query().outcome(
                Some(&Answer {
                    overall: Code::Ok,
                    reset_seconds: None
                }),
                OnFailure::Deny
            ),
            None
        );
    }

    #[test]
    fn over_limit_is_the_contracts_429_with_the_services_reset() {
        let denial = query().outcome(
            Some(&Answer {
                overall: Code::OverLimit,
                reset_seconds: Some(7),
            }),
            OnFailure::Local,
        );
        let denial = denial.unwrap();
        assert_eq!(
            (denial.code, denial.retry_after, denial.scope.as_deref()),
            (ErrorCode::RateLimited, Some(7), Some("leads:read"))
        );
        let report = denial.rate_limit.unwrap();
        assert_eq!(
            (
                report.pattern.as_str(),
                report.remaining,
                report.reset_seconds
            ),
            ("leads:*", 0, 7)
        );
    }

    #[test]
    fn over_limit_without_a_reset_waits_the_period_and_at_least_a_second() {
        let none = query().outcome(
            Some(&Answer {
                overall: Code::OverLimit,
                reset_seconds: None,
            }),
            OnFailure::Local,
        );
        assert_eq!(none.unwrap().retry_after, Some(60));
        let zero = query().outcome(
            Some(&Answer {
                overall: Code::OverLimit,
                reset_seconds: Some(0),
            }),
            OnFailure::Local,
        );
        assert_eq!(zero.unwrap().retry_after, Some(1));
    }

    #[test]
    fn failures_follow_on_failure_and_never_open_the_gate() {
        for answer in [
            None,
            Some(Answer {
                overall: Code::Unknown,
                reset_seconds: None,
            }),
        ] {
            assert_eq!(query().outcome(answer.as_ref(), OnFailure::Local), None);
            let denial = query().outcome(answer.as_ref(), OnFailure::Deny).unwrap();
            assert_eq!(denial.code, ErrorCode::RateLimiterUnavailable);
        }
    }

    #[test]
    fn periods_without_a_service_unit_cannot_be_asked() {
        let limit = Limit {
            requests: 10,
            period_seconds: 30,
            burst: 10,
        };
        assert_eq!(FleetQuery::new(&fleet(), "k", "*", &limit, "*"), None);
    }

    #[test]
    fn the_circuit_opens_after_five_failures_and_a_success_resets_it() {
        let mut circuit = Circuit::default();
        for _ in 0..4 {
            circuit = circuit.after(false, 0);
            assert!(
                circuit.allows_call(0),
                "opened before the fifth failure: {circuit:?}"
            );
        }
        circuit = circuit.after(false, SECOND);
        assert!(!circuit.allows_call(SECOND + OPEN_FOR_NS - 1));
        assert!(circuit.allows_call(SECOND + OPEN_FOR_NS));
        // The next failure after the pause stops it again at once.
        let again = circuit.after(false, 20 * SECOND);
        assert!(!again.allows_call(20 * SECOND + 1));
        assert_eq!(circuit.after(true, 20 * SECOND), Circuit::default());
    }

    #[test]
    fn the_circuit_is_shared_through_the_store() {
        let store = MemoryStore::new();
        for _ in 0..TRIP_AFTER {
            record_result(&store, "ratelimit", false, SECOND).unwrap();
        }
        assert!(!read_circuit(&store, "ratelimit")
            .unwrap()
            .allows_call(2 * SECOND));
        assert!(
            read_circuit(&store, "other")
                .unwrap()
                .allows_call(2 * SECOND),
            "clusters share a circuit"
        );
        record_result(&store, "ratelimit", true, 3 * SECOND).unwrap();
        assert_eq!(
            read_circuit(&store, "ratelimit").unwrap(),
            Circuit::default()
        );
    }

    /// Issue 19: a result lost to contention was answered `Ok` with the
    /// circuit it would have written, so the edge could report a circuit
    /// opened that no worker stored.
    #[test]
    fn a_result_lost_to_contention_is_an_error_not_a_recorded_circuit() {
        let store = MemoryStore::new();
        for _ in 0..TRIP_AFTER - 1 {
            record_result(&store, "ratelimit", false, SECOND).unwrap();
        }
        let stored = read_circuit(&store, "ratelimit").unwrap();
        store.inject_conflicts(u32::MAX);
        assert_eq!(
            record_result(&store, "ratelimit", false, SECOND),
            Err(StoreError::Contention),
            "the fifth failure was reported recorded though every write lost"
        );
        store.inject_conflicts(0);
        assert_eq!(
            read_circuit(&store, "ratelimit").unwrap(),
            stored,
            "the circuit changed though the write was lost"
        );
        assert!(read_circuit(&store, "ratelimit")
            .unwrap()
            .allows_call(2 * SECOND));
    }

    #[test]
    fn a_short_circuit_entry_reads_as_closed() {
        assert_eq!(Circuit::decode(&[1, 0, 0]), Circuit::default());
        let open = Circuit {
            failures: 7,
            open_until_ns: 9,
        };
        assert_eq!(Circuit::decode(&open.encode()), open);
    }
}
