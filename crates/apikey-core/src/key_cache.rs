//! A per-worker cache of the key records one configuration has looked up.
//!
//! Reading a record from shared data costs a host call, a copy into the VM
//! and a decode on every request. A record can only change with a new
//! configuration, and every configuration gets a new `Gateway` with a new,
//! empty cache, so an entry never outlives the table it was read from:
//! revocations and removals apply as soon as the new configuration does.
//! Keys found in the table and keys absent from it are kept apart, each
//! bounded and emptied when full: a client spraying random keys can only
//! churn the small set of absent ones, never push out the records of the
//! keys in use.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use foldhash::fast::FixedState;
use std::rc::Rc;

use crate::key_hash::KeyHash;
use crate::key_record::{self, KeyRecord};
use crate::key_table::TableRef;
use crate::live_table;
use crate::store::names::record_key;
use crate::store::{SharedStore, StoreError};

/// How many keys one worker keeps per configuration (about 300 bytes each).
pub const CAPACITY: usize = 16_384;

/// How many absent keys one worker remembers per configuration (32 bytes
/// each): a repeated wrong key is answered 401 without a shared-data read.
pub const ABSENT_CAPACITY: usize = 4_096;

/// The cache of one configuration in one worker.
#[derive(Default)]
pub struct KeyCache {
    entries: RefCell<HashMap<[u8; 32], Rc<KeyRecord>, FixedState>>,
    absent: RefCell<HashSet<[u8; 32], FixedState>>,
}

impl core::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "KeyCache({} entries)", self.entries.borrow().len())
    }
}

impl KeyCache {
    /// The record of `hash` in `table`: from the cache, else from the
    /// store. A record of another generation (left by an older table) is
    /// absent.
    pub fn lookup(
        &self,
        store: &dyn SharedStore,
        table: TableRef,
        hash: &KeyHash,
    ) -> Result<Option<Rc<KeyRecord>>, StoreError> {
        if let Some(entry) = self.entries.borrow().get(hash.as_bytes()) {
            return Ok(Some(Rc::clone(entry)));
        }
        if self.absent.borrow().contains(hash.as_bytes()) {
            return Ok(None);
        }
        let record = match table.shard_bits {
            None => store
                .get(&record_key(&table.lineage, table.bank, hash))?
                .and_then(|(bytes, _)| key_record::decode(&bytes))
                .filter(|record| record.generation == table.generation),
            // The shard's build vouches for its records.
            Some(bits) => live_table::lookup(store, &table, bits, hash.as_bytes())?
                .and_then(|bytes| key_record::decode(&bytes)),
        };
        let Some(record) = record else {
            let mut absent = self.absent.borrow_mut();
            if absent.len() >= ABSENT_CAPACITY {
                absent.clear();
            }
            absent.insert(*hash.as_bytes());
            return Ok(None);
        };
        let record = Rc::new(record);
        let mut entries = self.entries.borrow_mut();
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(*hash.as_bytes(), Rc::clone(&record));
        Ok(Some(record))
    }

    /// How many entries are cached.
    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::key_table::{publish, Lineage, Publication};
    use crate::memory_store::MemoryStore;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn published(store: &MemoryStore, raw_keys: &[&str], digest: u8) -> TableRef {
        let keys: Vec<String> = raw_keys
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                format!(
                    r#"{{"id": "k{i}", "sha256": "{}", "tenant": "t"}}"#,
                    KeyHash::of(raw.as_bytes()).to_hex()
                )
            })
            .collect();
        let config = Config::parse(format!(r#"{{"keys": [{}]}}"#, keys.join(",")).as_bytes())
            .unwrap()
            .unwrap();
        let lineage = Lineage::of(b"apikey", b"apikey");
        match publish(store, &lineage, &[digest; 32], &config, b"", &|| 0).unwrap() {
            Publication::Written(table) | Publication::Ready(table) => table,
            Publication::Pending => panic!("pending"),
        }
    }

    #[test]
    fn a_second_lookup_reads_nothing_from_the_store() {
        let store = MemoryStore::new();
        let table = published(&store, &["a"], 1);
        let cache = KeyCache::default();
        let hash = KeyHash::of(b"a");
        assert_eq!(
            cache.lookup(&store, table, &hash).unwrap().unwrap().id,
            "k0"
        );
        // Overwrite the stored record: a cached entry must not read it again.
        store
            .set(
                &record_key(&table.lineage, table.bank, &hash),
                b"garbage",
                0,
            )
            .unwrap();
        assert_eq!(
            cache.lookup(&store, table, &hash).unwrap().unwrap().id,
            "k0"
        );
    }

    #[test]
    fn unknown_keys_never_push_out_known_ones_and_stay_bounded() {
        let store = MemoryStore::new();
        let table = published(&store, &["a"], 1);
        let cache = KeyCache::default();
        assert!(cache
            .lookup(&store, table, &KeyHash::of(b"a"))
            .unwrap()
            .is_some());
        for i in 0..ABSENT_CAPACITY + 100 {
            assert!(cache
                .lookup(&store, table, &KeyHash::of(format!("spray{i}").as_bytes()))
                .unwrap()
                .is_none());
        }
        assert_eq!(cache.len(), 1, "a sprayed key was cached as a record");
        assert!(cache.absent.borrow().len() <= ABSENT_CAPACITY);
    }

    #[test]
    fn an_absent_key_is_answered_again_without_a_read() {
        let store = MemoryStore::new();
        let table = published(&store, &["a"], 1);
        let cache = KeyCache::default();
        let hash = KeyHash::of(b"b");
        assert!(cache.lookup(&store, table, &hash).unwrap().is_none());
        // Were it read again, this record would answer.
        let record = store
            .get(&record_key(&table.lineage, table.bank, &KeyHash::of(b"a")))
            .unwrap()
            .unwrap()
            .0;
        store
            .set(&record_key(&table.lineage, table.bank, &hash), &record, 0)
            .unwrap();
        assert!(cache.lookup(&store, table, &hash).unwrap().is_none());
    }

    #[test]
    fn records_of_another_generation_are_absent() {
        let store = MemoryStore::new();
        let first = published(&store, &["a"], 1);
        published(&store, &["b"], 2);
        let third = published(&store, &["c"], 3);
        assert_eq!(third.bank, first.bank);
        let cache = KeyCache::default();
        assert!(
            cache
                .lookup(&store, third, &KeyHash::of(b"a"))
                .unwrap()
                .is_none(),
            "a key of table 1 answered in table 3"
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let store = MemoryStore::new();
        let raw: Vec<String> = (0..CAPACITY + 5).map(|i| format!("key{i}")).collect();
        let table = published(
            &store,
            &raw.iter().map(String::as_str).collect::<Vec<_>>(),
            1,
        );
        let cache = KeyCache::default();
        for key in &raw {
            assert!(cache
                .lookup(&store, table, &KeyHash::of(key.as_bytes()))
                .unwrap()
                .is_some());
        }
        assert!(cache.len() <= CAPACITY);
    }
}
