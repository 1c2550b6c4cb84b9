//! Token buckets shared by every worker, through compare-and-swap.
//!
//! All buckets of one key id live in one shared-data entry, created when
//! the key table is published (see `key_table`), before any request can
//! use it: Envoy's CAS does not protect the creation of an entry, so
//! nothing is ever created on the request path. Taking a token reads the
//! entry, updates one bucket and writes it back with the CAS token it read;
//! a conflict retries a bounded number of times and then denies, so a limit
//! is never exceeded under contention.
//!
//! A take may also lease a worker a few tokens more ([`LeaseAsk`]), which
//! it then spends without coming back here ([`crate::token_lease`]); the
//! entry records each lease until it expires, and the bucket refills only
//! up to its capacity less the tokens leases may still spend.

use crate::rate_limit::Limit;
use crate::store::cursor::{Reader, Writer};
use crate::store::names::{buckets_key, Lineage};
use crate::store::{self, Change, SharedStore, StoreError};
use crate::token_bucket::{self, Bucket, Take};

const FORMAT_VERSION: u8 = 1;

/// The initial value of a bucket entry: no bucket used yet.
pub const EMPTY_BUCKETS: &[u8] = &[FORMAT_VERSION];

/// How many CAS conflicts a take retries before denying: the one bound of
/// every shared-data update ([`store::MAX_RETRIES`]).
pub const MAX_CAS_RETRIES: u32 = store::MAX_RETRIES;

/// A lease recorded in a bucket entry: `tokens` taken from the bucket that
/// one worker may still spend until `expires_ns` (see [`crate::token_lease`]).
/// Until it expires, the bucket refills only up to its capacity less these
/// tokens. Records carry no owner: a worker renewing its lease removes one
/// record equal to the one it was given, and two equal records are
/// interchangeable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The monotonic instant after which the tokens may no longer be spent.
    pub expires_ns: u64,
    /// Tokens the holder may spend besides the one its request took.
    pub tokens: u64,
}

/// What a take asks for besides one token.
#[derive(Clone, Copy, Debug)]
pub struct LeaseAsk {
    /// The caller's previous lease on this bucket, spent or expired: its
    /// record is removed (its unspent tokens, if any, are not returned).
    pub previous: Option<LeaseRecord>,
    /// How long a new lease may be spent.
    pub validity_ns: u64,
    /// How many tokens to take in all (at least 1), given the whole tokens
    /// available once refilled and the limit.
    pub size: fn(u64, &Limit) -> u64,
}

impl LeaseAsk {
    /// One token, no lease.
    pub const ONE: Self = Self {
        previous: None,
        validity_ns: 0,
        size: |_, _| 1,
    };
}

/// The answer of [`take`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The bucket's answer, with the number of CAS conflicts it took.
    Bucket {
        /// Allowed or denied.
        take: Take,
        /// Conflicts retried on the way.
        conflicts: u32,
        /// The lease recorded for the extra tokens taken, if any.
        lease: Option<LeaseRecord>,
    },
    /// Conflicts outlasted the retries: deny, and count it.
    Contention,
    /// The key has no bucket entry (a table published by an older filter):
    /// deny rather than create it racily.
    Missing,
}

/// The entry's name for the leases of bucket `pattern`: a NUL, which no
/// scope pattern holds, then the pattern. Leases travel as extra buckets
/// under such names (tokens in `units`, expiry in `updated_ns`), so a filter
/// that predates leases, sharing the entry during an upgrade, keeps them
/// and ignores them instead of failing to read the entry.
const LEASE_MARK: u8 = 0;

fn is_lease_of(name: &[u8], pattern: &[u8]) -> bool {
    name.split_first()
        .is_some_and(|(&mark, rest)| mark == LEASE_MARK && rest == pattern)
}

fn is_lease(name: &[u8]) -> bool {
    name.first() == Some(&LEASE_MARK)
}

/// Takes one token, and as `ask` sizes it a lease of more, from the bucket
/// (`key_id`, `pattern`) of `lineage`'s configuration at `now_ns`.
pub fn take(
    store: &dyn SharedStore,
    lineage: &Lineage,
    key_id: &str,
    pattern: &str,
    limit: &Limit,
    now_ns: u64,
    ask: &LeaseAsk,
) -> Result<Outcome, StoreError> {
    let pattern = pattern.as_bytes();
    let lease_name: Vec<u8> = [&[LEASE_MARK], pattern].concat();
    let updated = store::update(store, &buckets_key(lineage, key_id), |current| {
        let Some(bytes) = current else {
            return Change::Keep(None);
        };
        let mut entries = decode(bytes).unwrap_or_default();
        // Expired leases free their capacity; the caller's previous lease is
        // over (spent, or expired and no longer spendable).
        entries.retain(|(name, bucket)| !is_lease(name) || bucket.updated_ns > now_ns);
        if let Some(previous) = ask.previous {
            if let Some(index) = entries.iter().position(|(name, bucket)| {
                is_lease_of(name, pattern)
                    && bucket.updated_ns == previous.expires_ns
                    && bucket.units == u128::from(previous.tokens)
            }) {
                entries.remove(index);
            }
        }
        let unit = u128::from(limit.period_seconds).saturating_mul(1_000_000_000);
        let reserved = entries
            .iter()
            .filter(|(name, _)| is_lease_of(name, pattern))
            .fold(0u128, |sum, (_, lease)| {
                sum.saturating_add(lease.units.saturating_mul(unit))
            });
        let slot = entries.iter().position(|(name, _)| *name == pattern);
        let stored = slot
            .and_then(|index| entries.get(index))
            .map(|(_, bucket)| *bucket);
        let size = ask.size;
        let answer = token_bucket::take_lease(stored, limit, now_ns, reserved, |available| {
            size(available, limit)
        });
        let Take::Allowed {
            bucket, granted, ..
        } = answer
        else {
            return Change::Keep(Some((answer, None)));
        };
        match slot.and_then(|index| entries.get_mut(index)) {
            Some((_, stored)) => *stored = bucket,
            None => entries.push((pattern, bucket)),
        }
        let lease = (granted > 1).then(|| LeaseRecord {
            expires_ns: now_ns.saturating_add(ask.validity_ns),
            tokens: granted.saturating_sub(1),
        });
        if let Some(lease) = lease {
            entries.push((
                lease_name.as_slice(),
                Bucket {
                    units: u128::from(lease.tokens),
                    updated_ns: lease.expires_ns,
                },
            ));
        }
        Change::Write(encode(&entries), Some((answer, lease)))
    });
    match updated {
        Ok(store::Updated {
            value: Some((take, lease)),
            conflicts,
        }) => Ok(Outcome::Bucket {
            take,
            conflicts,
            lease,
        }),
        Ok(store::Updated { value: None, .. }) => Ok(Outcome::Missing),
        Err(StoreError::Contention) => Ok(Outcome::Contention),
        Err(error) => Err(error),
    }
}

fn decode(bytes: &[u8]) -> Option<Vec<(&[u8], Bucket)>> {
    let mut reader = Reader::new(bytes);
    if reader.u8()? != FORMAT_VERSION {
        return None;
    }
    let mut buckets = Vec::new();
    while !reader.is_empty() {
        let len = reader.u8()?;
        let pattern = reader.bytes(usize::from(len))?;
        let units = reader.u128()?;
        let updated_ns = reader.u64()?;
        buckets.push((pattern, Bucket { units, updated_ns }));
    }
    Some(buckets)
}

fn encode(buckets: &[(&[u8], Bucket)]) -> Vec<u8> {
    let mut out = Writer::with_capacity(1 + buckets.len() * 48);
    out.u8(FORMAT_VERSION);
    for (pattern, bucket) in buckets {
        // Patterns are at most 128 bytes (scope::MAX_SCOPE_LEN); the
        // length is one byte, as format 1 has always spelt it.
        let pattern = pattern
            .get(..usize::from(u8::MAX).min(pattern.len()))
            .unwrap_or_default();
        out.u8(u8::try_from(pattern.len()).unwrap_or(u8::MAX))
            .bytes(pattern)
            .u128(bucket.units)
            .u64(bucket.updated_ns);
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_store::MemoryStore;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const LIMIT: Limit = Limit {
        requests: 1,
        period_seconds: 3600,
        burst: 3,
    };

    fn lineage() -> Lineage {
        Lineage::of(b"apikey", b"apikey")
    }

    fn store_with(ids: &[&str]) -> MemoryStore {
        let store = MemoryStore::new();
        for id in ids {
            store
                .set(&buckets_key(&lineage(), id), EMPTY_BUCKETS, 0)
                .unwrap();
        }
        store
    }

    fn take1(
        store: &MemoryStore,
        lineage: &Lineage,
        key_id: &str,
        pattern: &str,
        limit: &Limit,
        now_ns: u64,
    ) -> Result<Outcome, StoreError> {
        take(
            store,
            lineage,
            key_id,
            pattern,
            limit,
            now_ns,
            &LeaseAsk::ONE,
        )
    }

    fn allowed(outcome: Outcome) -> bool {
        matches!(
            outcome,
            Outcome::Bucket {
                take: Take::Allowed { .. },
                ..
            }
        )
    }

    #[test]
    fn a_bucket_admits_its_burst_then_denies() {
        let store = store_with(&["k"]);
        let admitted = (0..10)
            .filter(|_| allowed(take1(&store, &lineage(), "k", "*", &LIMIT, 0).unwrap()))
            .count();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn keys_and_patterns_never_share_a_bucket() {
        let store = store_with(&["a", "b"]);
        for _ in 0..3 {
            assert!(allowed(
                take1(&store, &lineage(), "a", "leads:*", &LIMIT, 0).unwrap()
            ));
        }
        assert!(!allowed(
            take1(&store, &lineage(), "a", "leads:*", &LIMIT, 0).unwrap()
        ));
        assert!(
            allowed(take1(&store, &lineage(), "a", "*", &LIMIT, 0).unwrap()),
            "pattern * shared a's leads:* bucket"
        );
        assert!(
            allowed(take1(&store, &lineage(), "b", "leads:*", &LIMIT, 0).unwrap()),
            "key b shared key a's bucket"
        );
    }

    #[test]
    fn two_lineages_with_the_same_key_id_never_share_a_bucket() {
        let store = store_with(&["k"]);
        let other = Lineage::of(b"partner", b"apikey");
        store
            .set(&buckets_key(&other, "k"), EMPTY_BUCKETS, 0)
            .unwrap();
        for _ in 0..3 {
            assert!(allowed(
                take1(&store, &lineage(), "k", "*", &LIMIT, 0).unwrap()
            ));
        }
        assert!(!allowed(
            take1(&store, &lineage(), "k", "*", &LIMIT, 0).unwrap()
        ));
        assert!(
            allowed(take1(&store, &other, "k", "*", &LIMIT, 0).unwrap()),
            "the other lineage's key k took from the first lineage's bucket"
        );
    }

    #[test]
    fn conflicts_are_retried_and_counted() {
        let store = store_with(&["k"]);
        store.inject_conflicts(2);
        match take1(&store, &lineage(), "k", "*", &LIMIT, 0).unwrap() {
            Outcome::Bucket {
                take: Take::Allowed { .. },
                conflicts,
                ..
            } => assert_eq!(conflicts, 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn endless_conflicts_deny_instead_of_admitting() {
        let store = store_with(&["k"]);
        store.inject_conflicts(u32::MAX);
        assert_eq!(
            take1(&store, &lineage(), "k", "*", &LIMIT, 0).unwrap(),
            Outcome::Contention
        );
    }

    #[test]
    fn a_missing_entry_is_never_created_on_the_request_path() {
        let store = MemoryStore::new();
        assert_eq!(
            take1(&store, &lineage(), "k", "*", &LIMIT, 0).unwrap(),
            Outcome::Missing
        );
        assert!(store.is_empty());
    }

    #[test]
    fn the_entry_format_round_trips() {
        let buckets = vec![
            (
                b"*".as_slice(),
                Bucket {
                    units: u128::MAX,
                    updated_ns: 7,
                },
            ),
            (
                b"a:b",
                Bucket {
                    units: 0,
                    updated_ns: 0,
                },
            ),
        ];
        assert_eq!(decode(&encode(&buckets)), Some(buckets));
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[1, 5, b'a']), None);
    }
}
