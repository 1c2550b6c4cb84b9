//! Token leases: a worker takes a few tokens from a shared bucket in one
//! compare-and-swap and spends them on its own, so a busy key's requests
//! stop reading and writing shared data every time.
//!
//! The bound stays exact: leased tokens leave the bucket when they are
//! taken, and the bucket refills only up to its capacity less the tokens
//! unexpired leases may still spend ([`crate::bucket_store`]). So what the
//! bucket holds plus what any worker may still spend never exceeds `burst`,
//! and across all workers any window admits at most `burst + rate ×
//! elapsed`. A lease is spent only before it expires, judged by the
//! monotonic clock every worker shares.
//!
//! What a lease can cost is under-admission: tokens a worker leased and
//! then had no requests for are lost when the lease expires. A lease is
//! therefore small: at most a sixteenth of the tokens available, at most
//! what the bucket refills in one lease's validity, at most
//! [`MAX_LEASE_TOKENS`]; a bucket with few tokens left (a key near its
//! limit) is taken from one token at a time, exactly as without leases.
//!
//! A worker also remembers a denial: when the bucket had no whole token,
//! refilling cannot make one before a known instant (leases only ever
//! take tokens out), so until then the worker answers 429 on its own.

use std::cell::RefCell;
use std::collections::HashMap;

use foldhash::fast::FixedState;

use crate::bucket_store::{self, LeaseAsk, LeaseRecord, Outcome};
use crate::rate_limit::Limit;
use crate::store::names::Lineage;
use crate::store::{SharedStore, StoreError};
use crate::token_bucket::Take;

/// How long a lease may be spent: 250 ms bounds what an abandoned lease
/// costs (a quarter-second of the key's rate, at most) while a busy key
/// renews it far more often than that.
pub const LEASE_VALIDITY_NS: u64 = 250_000_000;

/// The most tokens one lease holds: a busy key then costs one shared-data
/// update per this many requests on a worker.
pub const MAX_LEASE_TOKENS: u64 = 256;

/// The share of the available tokens one lease may take (1/16), so a few
/// workers' leases never hold most of a bucket.
const LEASE_SHARE: u64 = 16;

/// How many buckets one worker keeps leases or denials for per
/// configuration; when full the book is emptied (the leases it held are
/// then lost, never over-spent).
pub const CAPACITY: usize = 16_384;

/// Tokens to take in all, given `available` whole tokens once refilled.
fn lease_size(available: u64, limit: &Limit) -> u64 {
    let refilled_per_lease = u128::from(limit.requests)
        .saturating_mul(u128::from(LEASE_VALIDITY_NS))
        .checked_div(u128::from(limit.period_seconds).saturating_mul(1_000_000_000))
        .unwrap_or(0);
    let refilled_per_lease = u64::try_from(refilled_per_lease).unwrap_or(u64::MAX);
    (available / LEASE_SHARE)
        .min(refilled_per_lease)
        .clamp(1, MAX_LEASE_TOKENS)
}

/// What one worker holds of one bucket.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    /// Leased tokens not yet spent.
    left: u64,
    /// The lease as the shared entry records it.
    record: LeaseRecord,
    /// Whole tokens the shared bucket held when the lease was taken.
    shared_remaining: u64,
    /// The reset the bucket reported then.
    reset_seconds: u64,
    /// Until this instant no token can exist: answer 429 here.
    denied_until_ns: u64,
}

/// The answer of [`LeaseBook::take`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// A token was spent.
    Allowed {
        /// Whole tokens left, as far as this worker knows (the bucket's
        /// when the lease was taken, plus the lease's unspent tokens).
        remaining: u64,
        /// Seconds until the next whole token, rounded up, at least 1.
        reset_seconds: u64,
        /// CAS conflicts retried (0 when spent from a lease).
        conflicts: u32,
    },
    /// No token: retry after this many seconds (at least 1).
    Denied {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The shared entry could not be used (conflicts outlasted the
    /// retries, or it is missing): deny, and count it.
    Unavailable {
        /// CAS conflicts retried.
        conflicts: u32,
    },
}

/// What a worker holds of one key's buckets, by pattern (a key has a few).
type PatternsHeld = Vec<(String, Held)>;

/// One worker's leases and remembered denials, for one configuration
/// (a new configuration starts with an empty book).
#[derive(Default)]
pub struct LeaseBook {
    held: RefCell<HashMap<String, PatternsHeld, FixedState>>,
}

impl core::fmt::Debug for LeaseBook {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "LeaseBook({} keys)", self.held.borrow().len())
    }
}

impl LeaseBook {
    /// Spends a token of bucket (`key_id`, `pattern`) at `now_ns`: from
    /// this worker's lease while it lasts, else from the shared bucket
    /// (taking a new lease when the bucket has tokens to spare).
    pub fn take(
        &self,
        store: &dyn SharedStore,
        lineage: &Lineage,
        key_id: &str,
        pattern: &str,
        limit: &Limit,
        now_ns: u64,
    ) -> Result<Taken, StoreError> {
        if let Some(local) = self.spend_locally(key_id, pattern, now_ns) {
            return Ok(local);
        }
        let held = self.find(key_id, pattern);
        let ask = LeaseAsk {
            previous: held
                .map(|held| held.record)
                .filter(|record| record.tokens > 0),
            validity_ns: LEASE_VALIDITY_NS,
            size: lease_size,
        };
        let outcome = bucket_store::take(store, lineage, key_id, pattern, limit, now_ns, &ask)?;
        Ok(match outcome {
            Outcome::Bucket {
                take:
                    Take::Allowed {
                        granted,
                        remaining,
                        reset_seconds,
                        ..
                    },
                conflicts,
                lease,
            } => {
                let left = granted.saturating_sub(1);
                self.store_held(
                    key_id,
                    pattern,
                    Held {
                        left,
                        record: lease.unwrap_or_default(),
                        shared_remaining: remaining,
                        reset_seconds,
                        denied_until_ns: 0,
                    },
                );
                Taken::Allowed {
                    remaining: remaining.saturating_add(left),
                    reset_seconds,
                    conflicts,
                }
            }
            Outcome::Bucket {
                take:
                    Take::Denied {
                        retry_after,
                        next_token_ns,
                    },
                ..
            } => {
                self.store_held(
                    key_id,
                    pattern,
                    Held {
                        denied_until_ns: next_token_ns,
                        ..Held::default()
                    },
                );
                Taken::Denied { retry_after }
            }
            Outcome::Contention => Taken::Unavailable {
                conflicts: bucket_store::MAX_CAS_RETRIES.saturating_add(1),
            },
            Outcome::Missing => Taken::Unavailable { conflicts: 0 },
        })
    }

    /// The answer this worker can give alone: a token from its unexpired
    /// lease, or a remembered denial; `None` when the bucket must be asked.
    /// One look-up, the lease spent in place: this is every request of a
    /// busy key.
    fn spend_locally(&self, key_id: &str, pattern: &str, now_ns: u64) -> Option<Taken> {
        let mut book = self.held.try_borrow_mut().ok()?;
        let held = book
            .get_mut(key_id)?
            .iter_mut()
            .find(|(p, _)| p == pattern)
            .map(|(_, held)| held)?;
        if now_ns < held.denied_until_ns {
            let wait_ns = held.denied_until_ns.saturating_sub(now_ns);
            return Some(Taken::Denied {
                retry_after: wait_ns.div_ceil(1_000_000_000).max(1),
            });
        }
        if held.left == 0 || now_ns >= held.record.expires_ns {
            return None;
        }
        held.left = held.left.saturating_sub(1);
        Some(Taken::Allowed {
            remaining: held.shared_remaining.saturating_add(held.left),
            reset_seconds: held.reset_seconds,
            conflicts: 0,
        })
    }

    fn find(&self, key_id: &str, pattern: &str) -> Option<Held> {
        self.held
            .borrow()
            .get(key_id)?
            .iter()
            .find(|(p, _)| p == pattern)
            .map(|(_, held)| *held)
    }

    fn store_held(&self, key_id: &str, pattern: &str, held: Held) {
        let Ok(mut book) = self.held.try_borrow_mut() else {
            return;
        };
        if let Some(patterns) = book.get_mut(key_id) {
            match patterns.iter_mut().find(|(p, _)| p == pattern) {
                Some((_, slot)) => *slot = held,
                None => patterns.push((pattern.to_owned(), held)),
            }
            return;
        }
        if book.len() >= CAPACITY {
            book.clear();
        }
        book.insert(key_id.to_owned(), vec![(pattern.to_owned(), held)]);
    }
}

#[cfg(test)]
mod tests;
