//! The process-wide shared data of the native edge: the key tables, token
//! buckets, claims, leases and fleet circuits, in the module's own memory.
//!
//! A dynamic module is one shared object in Envoy's process: a static here
//! is seen by every worker, so the store is a map behind locks, with the
//! semantics of proxy-wasm's shared data that the core was written for
//! (`apikey_core::store`): a CAS token per entry drawn from one
//! process-wide counter, a write with CAS 0 or to an entry that does not
//! exist always succeeds, a write with a stale token fails with
//! [`StoreError::CasMismatch`], and there is no delete. Each `get` copies
//! the value out, as the host call does; buckets stay exact across workers
//! because every read-modify-write of one goes through the core's CAS loop
//! against this one map.
//!
//! The map is split into shards by key hash, each behind its own
//! `RwLock`, so workers reading key records never wait on one another and a
//! bucket's CAS write holds only its shard for the time of one insert.
//!
//! Keys are hashed with foldhash (hashbrown's own folded-multiply hash,
//! seeded once per process) instead of the standard SipHash: a
//! 1,000,000-key table is two million entries written (a record and a
//! bucket per key), and SipHash over their 70-byte names was a tenth of
//! that configure's time. Every
//! name is the operator's (a table's key hash, id or lineage) or, on a
//! look-up, a SHA-256 digest, so the weaker hash gives a client nothing to
//! flood.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{LazyLock, PoisonError, RwLock};

use apikey_core::key_table::{SharedStore, StoreError};

/// How many shards the map is split into (a power of two).
const SHARDS: usize = 64;

/// The store's hasher: foldhash, seeded once per process.
type StoreHasher = foldhash::fast::RandomState;

type Shard = RwLock<HashMap<String, (Vec<u8>, u32), StoreHasher>>;

/// Shared data with Envoy's semantics, once per process.
pub struct NativeStore {
    shards: Vec<Shard>,
    /// The last CAS token issued; tokens are never 0.
    cas: AtomicU32,
    hasher: StoreHasher,
}

impl Default for NativeStore {
    fn default() -> Self {
        Self::new()
    }
}

impl NativeStore {
    /// An empty store.
    pub fn new() -> Self {
        let hasher = StoreHasher::default();
        Self {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::with_hasher(hasher.clone())))
                .collect(),
            cas: AtomicU32::new(0),
            hasher,
        }
    }

    fn shard(&self, key: &str) -> Option<&Shard> {
        // The shard comes from bits the map's own bucket index and tag do
        // not use, so the keys of one shard still spread over its buckets.
        let hash = self.hasher.hash_one(key) >> 40;
        // The modulo keeps the index in range; `get` keeps it panic-free.
        let index = usize::try_from(hash % SHARDS as u64).unwrap_or(0);
        self.shards.get(index)
    }

    /// A fresh CAS token (never 0, which means "unconditional").
    fn next_cas(&self) -> u32 {
        loop {
            let token = self.cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if token != 0 {
                return token;
            }
        }
    }

    /// How many entries exist (for tests and logs).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no entry exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SharedStore for NativeStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let Some(shard) = self.shard(key) else {
            return Err(StoreError::Host(0));
        };
        // A poisoned lock only means a panic elsewhere while it was held;
        // every write is a single insert, so the map itself is whole.
        let entries = shard.read().unwrap_or_else(PoisonError::into_inner);
        Ok(entries.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let Some(shard) = self.shard(key) else {
            return Err(StoreError::Host(0));
        };
        let mut entries = shard.write().unwrap_or_else(PoisonError::into_inner);
        match entries.get_mut(key) {
            Some((_, current)) if cas != 0 && cas != *current => Err(StoreError::CasMismatch),
            Some(entry) => {
                entry.0.clear();
                entry.0.extend_from_slice(value);
                entry.1 = self.next_cas();
                Ok(())
            }
            None => {
                entries.insert(key.to_owned(), (value.to_vec(), self.next_cas()));
                Ok(())
            }
        }
    }
}

/// The process's store.
pub static STORE: LazyLock<NativeStore> = LazyLock::new(NativeStore::new);

/// The store as a worker sees it: the process's, except that writes of
/// one entry (a `key_source` lease) are dropped.
///
/// Only the main thread can make the configuration-level HTTP callouts
/// that follow the key service, so only it may hold the lease; a worker
/// running the same follower code would otherwise take a lapsed lease and
/// then fail every call. A dropped write leaves the worker at
/// `Lease::Taken` at most, never `Confirmed`, so it never fetches.
pub struct WorkerStore<'a> {
    /// The entry workers may not write.
    pub read_only: Option<&'a str>,
}

impl SharedStore for WorkerStore<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        STORE.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if self.read_only == Some(key) {
            return Ok(());
        }
        STORE.set(key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apikey_core::store::{update, Change};
    use std::sync::Arc;

    #[test]
    fn a_stale_token_is_refused_and_a_fresh_one_accepted() {
        let store = NativeStore::new();
        store.set("k", b"one", 0).unwrap();
        let (_, first) = store.get("k").unwrap().unwrap();
        store.set("k", b"two", first).unwrap();
        assert_eq!(
            store.set("k", b"three", first),
            Err(StoreError::CasMismatch),
            "a write with the token of a value already replaced succeeded"
        );
        assert_eq!(
            store.get("k").unwrap().map(|(v, _)| v),
            Some(b"two".to_vec())
        );
    }

    #[test]
    fn creating_an_entry_ignores_the_token_as_envoy_does() {
        let store = NativeStore::new();
        store.set("new", b"x", 12345).unwrap();
        assert_eq!(
            store.get("new").unwrap().map(|(v, _)| v),
            Some(b"x".to_vec())
        );
        assert_eq!(store.get("absent").unwrap(), None);
    }

    #[test]
    fn cas_tokens_are_never_zero() {
        let store = NativeStore::new();
        store.cas.store(u32::MAX - 1, Ordering::Relaxed);
        for value in 0..4u8 {
            store.set("k", &[value], 0).unwrap();
            let (_, token) = store.get("k").unwrap().unwrap();
            assert_ne!(token, 0, "token 0 was issued after write {value}");
        }
    }

    #[test]
    fn concurrent_increments_through_the_core_update_lose_nothing() {
        let store = Arc::new(NativeStore::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let mut done = 0;
                    while done < 500 {
                        let result = update(&*store, "counter", |current| {
                            let n = current
                                .and_then(|b| b.first_chunk::<8>())
                                .map_or(0, |b| u64::from_le_bytes(*b));
                            Change::Write((n + 1).to_le_bytes().to_vec(), ())
                        });
                        if result.is_ok() {
                            done += 1;
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let (bytes, _) = store.get("counter").unwrap().unwrap();
        let total = u64::from_le_bytes(*bytes.first_chunk::<8>().unwrap());
        assert_eq!(total, 2000, "increments lost under contention");
    }

    #[test]
    fn names_spread_evenly_over_the_shards_and_hash_alike_each_time() {
        let store = NativeStore::new();
        let mut counts = [0usize; SHARDS];
        let names = 65_536;
        for i in 0..names {
            let name = format!("apikey.records.apikey.apikey.0.{i:064x}");
            let shard = store.shard(&name).unwrap() as *const Shard;
            assert_eq!(
                store.shard(&name).unwrap() as *const Shard,
                shard,
                "one name went to two shards"
            );
            let index = store
                .shards
                .iter()
                .position(|s| std::ptr::eq(s, shard))
                .unwrap();
            counts[index] += 1;
        }
        let expected = names / SHARDS;
        for (index, count) in counts.iter().enumerate() {
            assert!(
                count * 4 > expected * 3 && count * 4 < expected * 5,
                "shard {index} holds {count} names, expected about {expected}"
            );
        }
        let hasher = store.hasher.clone();
        assert_ne!(
            hasher.hash_one("ab"),
            hasher.hash_one("ab\0"),
            "a trailing zero byte did not change the hash"
        );
    }

    #[test]
    fn a_worker_cannot_write_the_lease() {
        let worker = WorkerStore {
            read_only: Some("native-test-lease"),
        };
        worker.set("native-test-lease", b"mine", 0).unwrap();
        assert_eq!(STORE.get("native-test-lease").unwrap(), None);
        worker.set("native-test-other", b"ok", 0).unwrap();
        assert!(STORE.get("native-test-other").unwrap().is_some());
    }
}
