//! Token-bucket arithmetic: a pure function of the stored state, the limit
//! and a monotonic `now`.
//!
//! Tokens are counted in integer *units* of `1 / (period_seconds * 1e9)`
//! of a token, so a bucket refills by exactly `requests` units per
//! nanosecond: no division, no rounding, no drift however long a bucket
//! idles, for rates from one per year to a billion per second. The maths is
//! in `u128` and saturating. A clock that stands still refills nothing; one
//! that steps back is treated as standing still (the stored instant never
//! moves backwards), so no step of the clock can mint tokens.
#![warn(clippy::arithmetic_side_effects)]

use crate::rate_limit::Limit;

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// The stored state of one bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Tokens held, in units (see the module docs).
    pub units: u128,
    /// The monotonic instant, in nanoseconds, the bucket was last brought
    /// up to date.
    pub updated_ns: u64,
}

/// The outcome of asking a bucket for one token (and, for a lease, up to
/// a few more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Tokens were taken; store `bucket`.
    Allowed {
        /// The state to store.
        bucket: Bucket,
        /// Tokens taken: 1, or more for a lease ([`take_lease`]).
        granted: u64,
        /// Whole tokens left.
        remaining: u64,
        /// Seconds until the next whole token, rounded up, at least 1.
        reset_seconds: u64,
    },
    /// The bucket is empty; nothing needs storing.
    Denied {
        /// Seconds until a token is available, rounded up, at least 1.
        retry_after: u64,
        /// The monotonic instant before which refilling cannot have made a
        /// whole token: a worker may answer 429 on its own until then.
        next_token_ns: u64,
    },
}

fn unit_per_token(limit: &Limit) -> u128 {
    u128::from(limit.period_seconds).saturating_mul(NANOS_PER_SECOND)
}

/// Takes one token from `bucket` (`None`: never used, so full) at `now_ns`.
/// When the limit changed since the bucket was stored, the held tokens are
/// capped at the new capacity and the idle time refills at the new rate.
pub fn take(bucket: Option<Bucket>, limit: &Limit, now_ns: u64) -> Take {
    take_lease(bucket, limit, now_ns, 0, |_| 1)
}

/// Takes one token and, as a lease, up to `size(available) - 1` more, where
/// `available` is the whole tokens held once refilled. `reserved_units` of
/// the capacity belong to leases still outstanding: the bucket refills only
/// up to `capacity - reserved_units`, so what it holds plus what leases may
/// still spend never exceeds the capacity, and any window admits at most
/// `burst + rate × elapsed` however the tokens are spent.
pub fn take_lease(
    bucket: Option<Bucket>,
    limit: &Limit,
    now_ns: u64,
    reserved_units: u128,
    size: impl FnOnce(u64) -> u64,
) -> Take {
    let unit = unit_per_token(limit);
    let capacity = u128::from(limit.burst)
        .saturating_mul(unit)
        .saturating_sub(reserved_units);
    let refilled = match bucket {
        None => Bucket {
            units: capacity,
            updated_ns: now_ns,
        },
        Some(stored) => {
            let elapsed = now_ns.saturating_sub(stored.updated_ns);
            let added = u128::from(elapsed).saturating_mul(u128::from(limit.requests));
            Bucket {
                units: stored.units.saturating_add(added).min(capacity),
                updated_ns: stored.updated_ns.max(now_ns),
            }
        }
    };
    let available = refilled.units.checked_div(unit).unwrap_or(0);
    if available == 0 {
        let missing = unit.saturating_sub(refilled.units);
        let wait_ns = missing.div_ceil(u128::from(limit.requests).max(1));
        return Take::Denied {
            retry_after: seconds_until(missing, limit),
            next_token_ns: now_ns.saturating_add(u64::try_from(wait_ns).unwrap_or(u64::MAX)),
        };
    }
    let available = u64::try_from(available).unwrap_or(u64::MAX);
    let granted = size(available).clamp(1, available);
    let units = refilled
        .units
        .saturating_sub(u128::from(granted).saturating_mul(unit));
    Take::Allowed {
        bucket: Bucket {
            units,
            updated_ns: refilled.updated_ns,
        },
        granted,
        remaining: u64::try_from(units.checked_div(unit).unwrap_or(0)).unwrap_or(u64::MAX),
        reset_seconds: seconds_until(
            unit.saturating_sub(units.checked_rem(unit).unwrap_or(0)),
            limit,
        ),
    }
}

/// Seconds, rounded up and at least 1, until `missing` units have refilled.
fn seconds_until(missing: u128, limit: &Limit) -> u64 {
    let per_second = u128::from(limit.requests).saturating_mul(NANOS_PER_SECOND);
    let seconds = missing.div_ceil(per_second.max(1));
    u64::try_from(seconds).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::arithmetic_side_effects)]
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const SECOND: u64 = 1_000_000_000;

    fn limit(requests: u64, period_seconds: u64, burst: u64) -> Limit {
        Limit {
            requests,
            period_seconds,
            burst,
        }
    }

    /// Takes `count` tokens at `now`, returning how many were allowed and the
    /// final state.
    fn drain(
        mut bucket: Option<Bucket>,
        limit: &Limit,
        now: u64,
        count: u64,
    ) -> (u64, Option<Bucket>) {
        let mut allowed = 0;
        for _ in 0..count {
            if let Take::Allowed { bucket: next, .. } = take(bucket, limit, now) {
                bucket = Some(next);
                allowed += 1;
            }
        }
        (allowed, bucket)
    }

    #[test]
    fn a_new_bucket_admits_exactly_its_burst() {
        let (allowed, _) = drain(None, &limit(10, 60, 5), 0, 20);
        assert_eq!(allowed, 5);
    }

    #[test]
    fn after_one_refill_interval_exactly_one_more_passes() {
        let limit = limit(10, 60, 5); // one token every 6 s
        let (_, bucket) = drain(None, &limit, 0, 5);
        assert_eq!(
            drain(bucket, &limit, 6 * SECOND - 1, 3).0,
            0,
            "a token arrived early"
        );
        assert_eq!(drain(bucket, &limit, 6 * SECOND, 3).0, 1);
        assert_eq!(drain(bucket, &limit, 12 * SECOND, 3).0, 2);
    }

    #[test]
    fn a_long_idle_period_refills_to_capacity_and_no_further() {
        let limit = limit(1, 1, 3);
        let (_, bucket) = drain(None, &limit, 0, 3);
        assert_eq!(
            drain(bucket, &limit, u64::MAX, 10).0,
            3,
            "idle for 584 years"
        );
    }

    #[test]
    fn a_clock_stepping_back_mints_nothing() {
        let limit = limit(1, 1, 2);
        let (_, bucket) = drain(None, &limit, 100 * SECOND, 2);
        assert_eq!(drain(bucket, &limit, 0, 5).0, 0, "clock stepped back 100 s");
        let Some(stored) = bucket else {
            panic!("no bucket")
        };
        // Stepping back then forward again refills only the real time passed.
        let Take::Denied { .. } = take(Some(stored), &limit, 50 * SECOND) else {
            panic!("admitted")
        };
        assert_eq!(drain(Some(stored), &limit, 101 * SECOND, 5).0, 1);
    }

    #[test]
    fn one_per_day_is_exact() {
        let limit = limit(1, 86_400, 1);
        let (_, bucket) = drain(None, &limit, 0, 1);
        match take(bucket, &limit, 0) {
            Take::Denied { retry_after, .. } => assert_eq!(retry_after, 86_400),
            other => panic!("admitted: {other:?}"),
        }
        assert_eq!(drain(bucket, &limit, 86_400 * SECOND - 1, 1).0, 0);
        assert_eq!(drain(bucket, &limit, 86_400 * SECOND, 1).0, 1);
    }

    #[test]
    fn a_million_per_second_is_exact() {
        let limit = limit(1_000_000, 1, 1);
        let (_, bucket) = drain(None, &limit, 0, 1);
        assert_eq!(drain(bucket, &limit, 999, 1).0, 0);
        assert_eq!(drain(bucket, &limit, 1_000, 1).0, 1);
        // Over one simulated second, exactly a million tokens arrive.
        let mut state = bucket;
        let mut allowed = 0;
        for step in 1..=1_000_000u64 {
            if let Take::Allowed { bucket, .. } = take(state, &limit, step * 1_000) {
                state = Some(bucket);
                allowed += 1;
            }
        }
        assert_eq!(allowed, 1_000_000);
    }

    #[test]
    fn the_largest_limits_do_not_overflow() {
        let limit = limit(
            crate::rate_limit::MAX_REQUESTS,
            crate::rate_limit::MAX_PERIOD_SECONDS,
            crate::rate_limit::MAX_REQUESTS,
        );
        let (allowed, bucket) = drain(None, &limit, u64::MAX, 3);
        assert_eq!(allowed, 3);
        assert!(matches!(
            take(bucket, &limit, u64::MAX),
            Take::Allowed { .. }
        ));
    }

    #[test]
    fn remaining_and_reset_describe_the_bucket_after_the_take() {
        let limit = limit(10, 60, 5);
        match take(None, &limit, 0) {
            Take::Allowed {
                remaining,
                reset_seconds,
                ..
            } => assert_eq!((remaining, reset_seconds), (4, 6)),
            other => panic!("{other:?}"),
        }
        let (_, bucket) = drain(None, &limit, 0, 5);
        match take(bucket, &limit, SECOND) {
            Take::Denied { retry_after, .. } => assert_eq!(retry_after, 5),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_changed_limit_caps_tokens_and_refills_at_the_new_rate() {
        let old = limit(100, 1, 100);
        let (_, bucket) = drain(None, &old, 0, 10); // 90 left
        let new = limit(1, 10, 5);
        // Capped at the new capacity of 5, not a fresh burst of 100.
        assert_eq!(drain(bucket, &new, 0, 100).0, 5);
        let (_, drained) = drain(bucket, &new, 0, 5);
        assert_eq!(
            drain(drained, &new, 10 * SECOND, 5).0,
            1,
            "refill at the new rate"
        );
    }
}
