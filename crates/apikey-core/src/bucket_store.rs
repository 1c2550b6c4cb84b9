//! Token buckets shared by every worker, through compare-and-swap.
//!
//! All buckets of one key id live in one shared-data entry, created when
//! the key table is published (see `key_table`), before any request can
//! use it: Envoy's CAS does not protect the creation of an entry, so
//! nothing is ever created on the request path. Taking a token reads the
//! entry, updates one bucket and writes it back with the CAS token it read;
//! a conflict retries a bounded number of times and then denies, so a limit
//! is never exceeded under contention.

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

/// The answer of [`take`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The bucket's answer, with the number of CAS conflicts it took.
    Bucket {
        /// Allowed or denied.
        take: Take,
        /// Conflicts retried on the way.
        conflicts: u32,
    },
    /// Conflicts outlasted the retries: deny, and count it.
    Contention,
    /// The key has no bucket entry (a table published by an older filter):
    /// deny rather than create it racily.
    Missing,
}

/// Takes one token from the bucket (`key_id`, `pattern`) of `lineage`'s
/// configuration at `now_ns`.
pub fn take(
    store: &dyn SharedStore,
    lineage: &Lineage,
    key_id: &str,
    pattern: &str,
    limit: &Limit,
    now_ns: u64,
) -> Result<Outcome, StoreError> {
    let updated = store::update(store, &buckets_key(lineage, key_id), |current| {
        let Some(bytes) = current else {
            return Change::Keep(None);
        };
        let mut buckets = decode(bytes).unwrap_or_default();
        let slot = buckets.iter().position(|(p, _)| *p == pattern.as_bytes());
        let stored = slot
            .and_then(|index| buckets.get(index))
            .map(|(_, bucket)| *bucket);
        let answer = token_bucket::take(stored, limit, now_ns);
        let Take::Allowed { bucket, .. } = answer else {
            return Change::Keep(Some(answer));
        };
        match slot.and_then(|index| buckets.get_mut(index)) {
            Some((_, stored)) => *stored = bucket,
            None => buckets.push((pattern.as_bytes(), bucket)),
        }
        Change::Write(encode(&buckets), Some(answer))
    });
    match updated {
        Ok(store::Updated {
            value: Some(take),
            conflicts,
        }) => Ok(Outcome::Bucket { take, conflicts }),
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
            .filter(|_| allowed(take(&store, &lineage(), "k", "*", &LIMIT, 0).unwrap()))
            .count();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn keys_and_patterns_never_share_a_bucket() {
        let store = store_with(&["a", "b"]);
        for _ in 0..3 {
            assert!(allowed(
                take(&store, &lineage(), "a", "leads:*", &LIMIT, 0).unwrap()
            ));
        }
        assert!(!allowed(
            take(&store, &lineage(), "a", "leads:*", &LIMIT, 0).unwrap()
        ));
        assert!(
            allowed(take(&store, &lineage(), "a", "*", &LIMIT, 0).unwrap()),
            "pattern * shared a's leads:* bucket"
        );
        assert!(
            allowed(take(&store, &lineage(), "b", "leads:*", &LIMIT, 0).unwrap()),
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
                take(&store, &lineage(), "k", "*", &LIMIT, 0).unwrap()
            ));
        }
        assert!(!allowed(
            take(&store, &lineage(), "k", "*", &LIMIT, 0).unwrap()
        ));
        assert!(
            allowed(take(&store, &other, "k", "*", &LIMIT, 0).unwrap()),
            "the other lineage's key k took from the first lineage's bucket"
        );
    }

    #[test]
    fn conflicts_are_retried_and_counted() {
        let store = store_with(&["k"]);
        store.inject_conflicts(2);
        match take(&store, &lineage(), "k", "*", &LIMIT, 0).unwrap() {
            Outcome::Bucket {
                take: Take::Allowed { .. },
                conflicts,
            } => assert_eq!(conflicts, 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn endless_conflicts_deny_instead_of_admitting() {
        let store = store_with(&["k"]);
        store.inject_conflicts(u32::MAX);
        assert_eq!(
            take(&store, &lineage(), "k", "*", &LIMIT, 0).unwrap(),
            Outcome::Contention
        );
    }

    #[test]
    fn a_missing_entry_is_never_created_on_the_request_path() {
        let store = MemoryStore::new();
        assert_eq!(
            take(&store, &lineage(), "k", "*", &LIMIT, 0).unwrap(),
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
