//! What a `ShouldRateLimit` request asks (which counters to charge, by how
//! much, under which limit) and what the counts mean: the answer.
//!
//! Both halves are pure; the service charges the counters in between, so
//! the rules (a descriptor without a limit is not limited, the charge is
//! `hits_addend` or 1, a count above the limit is `OVER_LIMIT`) are tested
//! here without Redis.

use crate::proto::{
    duration_from_millis, Code, DescriptorStatus, RateLimit, RateLimitRequest, RateLimitResponse,
};
use crate::window::{counter_key, Unit, Window};

/// A request this server refuses (gRPC `INVALID_ARGUMENT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid(pub String);

/// One descriptor's part of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// No `limit` override: this server holds no limit of its own, so the
    /// descriptor is not limited (and nothing is counted).
    Unlimited,
    /// Charge `hits` to `key` and compare the count with the limit.
    Count(Charge),
}

/// A counter to charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    /// The Redis key of the descriptor's current window.
    pub key: String,
    /// How much to add.
    pub hits: u64,
    /// How long a new counter lives: until its window ends.
    pub ttl_ms: u64,
    /// Requests admitted per window.
    pub requests_per_unit: u32,
    /// The window's unit.
    pub unit: Unit,
}

/// A counter after its charge, as Redis reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    /// The window's count including this charge.
    pub count: u64,
    /// Milliseconds until the counter expires (its window ends).
    pub ttl_ms: u64,
}

/// The checks `request` asks for at `now_ms` (ms of Unix time), one per
/// descriptor in order. Refused: an empty domain, a descriptor without
/// entries, and a limit in a unit this server does not count in.
pub fn plan(request: &RateLimitRequest, now_ms: u64) -> Result<Vec<Check>, Invalid> {
    if request.domain.is_empty() {
        return Err(Invalid("the domain must not be empty".into()));
    }
    let request_hits = u64::from(request.hits_addend.max(1));
    request
        .descriptors
        .iter()
        .enumerate()
        .map(|(i, descriptor)| {
            if descriptor.entries.is_empty() {
                return Err(Invalid(format!("descriptor {i} has no entries")));
            }
            let Some(limit) = descriptor.limit else {
                return Ok(Check::Unlimited);
            };
            let unit = Unit::from_proto(limit.unit).ok_or_else(|| {
                Invalid(format!(
                    "descriptor {i}: unit {} is not SECOND, MINUTE, HOUR or DAY",
                    limit.unit
                ))
            })?;
            let window = Window::at(unit, now_ms);
            let entries = descriptor
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()));
            Ok(Check::Count(Charge {
                key: counter_key(&request.domain, entries, unit, &window),
                hits: descriptor
                    .hits_addend
                    .map_or(request_hits, |h| h.value.max(1)),
                ttl_ms: window.remaining_ms(now_ms),
                requests_per_unit: limit.requests_per_unit,
                unit,
            }))
        })
        .collect()
}

/// A descriptor's status: `OVER_LIMIT` when the count including this
/// request exceeds the limit. A request refused here was still counted, as
/// in envoyproxy/ratelimit: the window admits exactly `requests_per_unit`.
pub fn status(charge: &Charge, counted: Counted) -> DescriptorStatus {
    let limit = u64::from(charge.requests_per_unit);
    let code = if counted.count > limit {
        Code::OverLimit
    } else {
        Code::Ok
    };
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(RateLimit {
            name: String::new(),
            requests_per_unit: charge.requests_per_unit,
            unit: charge.unit.as_proto(),
        }),
        limit_remaining: u32::try_from(limit.saturating_sub(counted.count)).unwrap_or(u32::MAX),
        duration_until_reset: Some(duration_from_millis(counted.ttl_ms)),
        ..DescriptorStatus::default()
    }
}

/// The status of a descriptor without a limit.
pub fn unlimited() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        ..DescriptorStatus::default()
    }
}

/// The answer: the statuses in the request's order, and `OVER_LIMIT`
/// overall when any of them is.
pub fn response(statuses: Vec<DescriptorStatus>) -> RateLimitResponse {
    let over = statuses.iter().any(|s| s.code == Code::OverLimit as i32);
    RateLimitResponse {
        overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
        statuses,
        ..RateLimitResponse::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Duration, Entry, RateLimitDescriptor, RateLimitOverride, UInt64Value};

    const NOW_MS: u64 = 1_767_225_615_000; // 2026-01-01T00:00:15Z

    fn descriptor(limit: Option<(u32, i32)>) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: vec![
                Entry {
                    key: "key_id".into(),
                    value: "key_1".into(),
                },
                Entry {
                    key: "scope".into(),
                    value: "*".into(),
                },
            ],
            limit: limit.map(|(requests_per_unit, unit)| RateLimitOverride {
                requests_per_unit,
                unit,
            }),
            hits_addend: None,
            is_negative_hits: false,
        }
    }

    fn request(descriptors: Vec<RateLimitDescriptor>, hits_addend: u32) -> RateLimitRequest {
        RateLimitRequest {
            domain: "apikey".into(),
            descriptors,
            hits_addend,
        }
    }

    fn charge(requests_per_unit: u32) -> Charge {
        Charge {
            key: "k".into(),
            hits: 1,
            ttl_ms: 45_000,
            requests_per_unit,
            unit: Unit::Minute,
        }
    }

    #[test]
    fn a_limited_descriptor_is_counted_in_its_window_until_the_window_ends() {
        let checks = plan(&request(vec![descriptor(Some((5, 2)))], 1), NOW_MS).unwrap();
        assert_eq!(
            checks,
            [Check::Count(Charge {
                key: "apikey:apikey:key_id=key_1:scope=*:60:1767225600".into(),
                hits: 1,
                ttl_ms: 45_000,
                requests_per_unit: 5,
                unit: Unit::Minute,
            })]
        );
    }

    #[test]
    fn a_descriptor_without_a_limit_is_not_limited() {
        let checks = plan(&request(vec![descriptor(None)], 1), NOW_MS).unwrap();
        assert_eq!(checks, [Check::Unlimited]);
        assert_eq!(
            response(vec![unlimited()]).overall_code,
            Code::Ok as i32,
            "an unlimited descriptor made the answer OVER_LIMIT"
        );
    }

    #[test]
    fn the_charge_is_hits_addend_or_one_and_a_descriptors_own_addend_wins() {
        let charged = |request: &RateLimitRequest| match &plan(request, NOW_MS).unwrap()[..] {
            [Check::Count(charge)] => charge.hits,
            other => panic!("one count expected: {other:?}"),
        };
        assert_eq!(charged(&request(vec![descriptor(Some((5, 1)))], 0)), 1);
        assert_eq!(charged(&request(vec![descriptor(Some((5, 1)))], 3)), 3);
        let mut own = descriptor(Some((5, 1)));
        own.hits_addend = Some(UInt64Value { value: 7 });
        assert_eq!(charged(&request(vec![own], 3)), 7);
    }

    #[test]
    fn requests_the_server_cannot_count_are_refused() {
        let cases = [
            ("empty domain", {
                let mut r = request(vec![descriptor(Some((5, 2)))], 1);
                r.domain.clear();
                r
            }),
            ("no entries", {
                let mut d = descriptor(Some((5, 2)));
                d.entries.clear();
                request(vec![d], 1)
            }),
            ("unit UNKNOWN", request(vec![descriptor(Some((5, 0)))], 1)),
            ("unit MONTH", request(vec![descriptor(Some((5, 5)))], 1)),
        ];
        for (case, request) in cases {
            assert!(plan(&request, NOW_MS).is_err(), "{case} was accepted");
        }
    }

    #[test]
    fn no_descriptors_is_ok() {
        assert_eq!(plan(&request(vec![], 1), NOW_MS).unwrap(), []);
        let answer = response(vec![]);
        assert_eq!(answer.overall_code, Code::Ok as i32);
    }

    #[test]
    fn the_limit_is_admitted_and_the_next_request_is_over() {
        let charge = charge(3);
        let at = |count| {
            status(
                &charge,
                Counted {
                    count,
                    ttl_ms: 41_250,
                },
            )
        };
        assert_eq!(at(1).code, Code::Ok as i32);
        assert_eq!(at(1).limit_remaining, 2);
        assert_eq!(at(3).code, Code::Ok as i32);
        assert_eq!(at(3).limit_remaining, 0);
        let over = at(4);
        assert_eq!(over.code, Code::OverLimit as i32);
        assert_eq!(over.limit_remaining, 0);
        assert_eq!(
            over.duration_until_reset,
            Some(Duration {
                seconds: 41,
                nanos: 250_000_000
            })
        );
        assert_eq!(
            over.current_limit,
            Some(RateLimit {
                name: String::new(),
                requests_per_unit: 3,
                unit: Unit::Minute.as_proto()
            })
        );
    }

    #[test]
    fn a_limit_of_zero_admits_nothing() {
        let status = status(
            &charge(0),
            Counted {
                count: 1,
                ttl_ms: 1,
            },
        );
        assert_eq!(status.code, Code::OverLimit as i32);
    }

    #[test]
    fn one_descriptor_over_its_limit_makes_the_answer_over_limit() {
        let ok = status(
            &charge(5),
            Counted {
                count: 1,
                ttl_ms: 1_000,
            },
        );
        let over = status(
            &charge(5),
            Counted {
                count: 6,
                ttl_ms: 1_000,
            },
        );
        let answer = response(vec![ok.clone(), over.clone(), unlimited()]);
        assert_eq!(answer.overall_code, Code::OverLimit as i32);
        assert_eq!(answer.statuses, [ok, over, unlimited()], "order kept");
    }
}
