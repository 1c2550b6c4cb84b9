//! The shared key table protocol, driven through an in-memory store with
//! Envoy's CAS semantics.

use super::head::{read_head, Bank, BankState, Head};
use super::known_ids::{encode_known, id_fingerprint, sort_fingerprints, KnownList};
use super::*;
use crate::key_hash::KeyHash;
use crate::key_record;
use crate::store::names::{head_key, known_buckets_key};

mod claims;
mod lineages;
use crate::memory_store::MemoryStore;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// A configuration of `keys` (id, raw key), all of tenant `t`, on plan `p`.
fn config(keys: &[(&str, &str)]) -> Config {
    let keys: Vec<(&str, &str, &str)> = keys.iter().map(|&(id, raw)| (id, raw, "t")).collect();
    tenant_config(&keys)
}

/// A configuration of `keys` (id, raw key, tenant), on plan `p` whose one
/// limit makes every key own a bucket entry.
fn tenant_config(keys: &[(&str, &str, &str)]) -> Config {
    let keys: Vec<String> = keys
        .iter()
        .map(|(id, raw, tenant)| {
            format!(
                r#"{{"id": "{id}", "sha256": "{}", "tenant": "{tenant}", "plan": "p"}}"#,
                KeyHash::of(raw.as_bytes()).to_hex()
            )
        })
        .collect();
    let text = format!(
        r#"{{"keys": [{}], "plans": {{"p": {{"rate_limits": {{"*": {{"requests": 5, "period_seconds": 60}}}}}}}}}}"#,
        keys.join(",")
    );
    Config::parse(text.as_bytes()).unwrap().unwrap()
}

/// The lineage most tests publish in.
fn lineage() -> Lineage {
    Lineage::of(b"apikey", b"apikey")
}

fn digest(n: u8) -> Digest {
    [n; 32]
}

/// Looks `raw` up the way a request does.
fn lookup(store: &MemoryStore, table: TableRef, raw: &str) -> Option<String> {
    let (bytes, _) = store
        .get(&record_key(
            &table.lineage,
            table.bank,
            &KeyHash::of(raw.as_bytes()),
        ))
        .unwrap()?;
    let record = key_record::decode(&bytes)?;
    (record.generation == table.generation).then(|| record.id.to_owned())
}

/// The stored rate-limit entry of key id `id`.
fn bucket_entry(store: &dyn SharedStore, id: &str) -> Option<Vec<u8>> {
    store
        .get(&buckets_key(&lineage(), id))
        .unwrap()
        .map(|(value, _)| value)
}

/// Publishes a table of `keys` (id, raw key) named by `digest(n)`, which
/// must end ready.
fn published(store: &dyn SharedStore, n: u8, keys: &[(&str, &str)]) -> TableRef {
    ready(publish(store, &lineage(), &digest(n), &config(keys), b"", &|| 0).unwrap())
}

fn ready(publication: Publication) -> TableRef {
    match publication {
        Publication::Ready(table) | Publication::Written(table) => table,
        Publication::Pending => panic!("expected the table to be ready"),
    }
}

#[test]
fn a_published_table_answers_lookups() {
    let store = MemoryStore::new();
    let table = published(&store, 1, &[("a", "key-a"), ("b", "key-b")]);
    assert_eq!(lookup(&store, table, "key-a").as_deref(), Some("a"));
    assert_eq!(lookup(&store, table, "key-b").as_deref(), Some("b"));
    assert_eq!(lookup(&store, table, "key-c"), None);
}

#[test]
fn publishing_the_same_configuration_again_writes_nothing() {
    let store = MemoryStore::new();
    let config = config(&[("a", "key-a")]);
    let Publication::Written(first) =
        publish(&store, &lineage(), &digest(1), &config, b"", &|| 0).unwrap()
    else {
        panic!("the first publication did not write the table")
    };
    let writes = store.writes();
    assert_eq!(
        publish(&store, &lineage(), &digest(1), &config, b"", &|| 5).unwrap(),
        Publication::Ready(first)
    );
    assert_eq!(
        store.writes(),
        writes,
        "a worker rewrote a table that was already complete"
    );
}

#[test]
fn a_removed_key_never_authenticates_again() {
    let store = MemoryStore::new();
    let old = published(&store, 1, &[("a", "key-a"), ("b", "key-b")]);
    let middle = published(&store, 2, &[("a", "key-a")]);
    assert_eq!(lookup(&store, middle, "key-b"), None);
    // The third table reuses the first bank, where key-b's old record stays.
    let newest = published(&store, 3, &[("c", "key-c")]);
    assert_eq!(newest.bank, old.bank);
    assert_eq!(
        lookup(&store, newest, "key-b"),
        None,
        "a stale record from generation {} answered",
        old.generation
    );
    assert_eq!(lookup(&store, newest, "key-a"), None);
    assert_eq!(lookup(&store, newest, "key-c").as_deref(), Some("c"));
}

#[test]
fn the_previous_table_keeps_serving_while_the_next_is_written() {
    let store = MemoryStore::new();
    let first = published(&store, 1, &[("a", "key-a")]);
    let second = published(&store, 2, &[("b", "key-b")]);
    assert_ne!(first.bank, second.bank);
    assert_eq!(
        lookup(&store, first, "key-a").as_deref(),
        Some("a"),
        "a worker one update behind lost its table"
    );
}

#[test]
fn a_configuration_that_comes_back_reuses_its_bank() {
    let store = MemoryStore::new();
    let a = config(&[("a", "key-a")]);
    let first = ready(publish(&store, &lineage(), &digest(1), &a, b"", &|| 0).unwrap());
    published(&store, 2, &[("b", "key-b")]);
    let writes = store.writes();
    assert_eq!(
        ready(publish(&store, &lineage(), &digest(1), &a, b"", &|| 0).unwrap()),
        first
    );
    assert_eq!(store.writes(), writes, "A -> B -> A rewrote A");
}

#[test]
fn a_table_being_written_by_another_worker_is_pending_until_ready() {
    let store = MemoryStore::new();
    let config = config(&[("a", "key-a")]);
    let mut head = Head {
        next_generation: 2,
        ..Head::default()
    };
    head.banks[0] = Bank {
        digest: digest(1),
        generation: 1,
        state: BankState::Writing {
            started_ns: 100,
            renewed_ns: 100,
        },
    };
    store.set(&head_key(&lineage()), &head.encode(), 0).unwrap();
    assert_eq!(
        publish(&store, &lineage(), &digest(1), &config, b"", &|| 200).unwrap(),
        Publication::Pending
    );
    // A claim not renewed for STALE_CLAIM_NS is abandoned: the next
    // worker takes it over.
    let table = ready(
        publish(&store, &lineage(), &digest(1), &config, b"", &|| {
            100 + STALE_CLAIM_NS
        })
        .unwrap(),
    );
    assert_eq!(lookup(&store, table, "key-a").as_deref(), Some("a"));
}

#[test]
fn cas_conflicts_on_the_head_are_retried() {
    let store = MemoryStore::new();
    published(&store, 1, &[("a", "key-a")]);
    store.inject_conflicts(3);
    let table = published(&store, 2, &[("b", "key-b")]);
    assert_eq!(lookup(&store, table, "key-b").as_deref(), Some("b"));
}

#[test]
fn endless_conflicts_end_in_an_error_not_a_loop() {
    let store = MemoryStore::new();
    published(&store, 1, &[("a", "key-a")]);
    store.inject_conflicts(u32::MAX);
    assert_eq!(
        publish(&store, &lineage(), &digest(2), &config(&[]), b"", &|| 0),
        Err(StoreError::Contention)
    );
}

#[test]
fn bucket_entries_exist_for_limited_keys_before_the_table_is_ready() {
    let store = MemoryStore::new();
    published(&store, 1, &[("a", "key-a")]);
    assert_eq!(bucket_entry(&store, "a"), Some(EMPTY_BUCKETS.to_vec()));
}

#[test]
fn existing_bucket_entries_are_left_alone() {
    let store = MemoryStore::new();
    published(&store, 9, &[("z", "key-z")]);
    store
        .set(&buckets_key(&lineage(), "a"), b"in use", 0)
        .unwrap();
    published(&store, 1, &[("a", "key-a")]);
    assert_eq!(bucket_entry(&store, "a"), Some(b"in use".to_vec()));
}

#[test]
fn storage_stays_bounded_over_many_updates() {
    let store = MemoryStore::new();
    let keys = [("a", "key-a"), ("b", "key-b"), ("c", "key-c")];
    let mut after_warm_up = 0;
    for round in 0..50u8 {
        let present = &keys[usize::from(round % 3)..];
        published(&store, round, present);
        if round == 5 {
            after_warm_up = store.len();
        }
    }
    assert_eq!(store.len(), after_warm_up, "entries grew with updates");
    assert!(
        after_warm_up <= 1 + 2 * 3 + 3 + 2 + 1,
        "more than head + 2 banks x 3 hashes + 3 bucket entries + 2 settings + 1 list"
    );
}

#[test]
fn a_ready_table_comes_with_its_settings_and_key_count() {
    let store = MemoryStore::new();
    assert_eq!(ready_table(&store, &lineage(), &digest(1)).unwrap(), None);
    let keys = config(&[("a", "key-a"), ("b", "key-b")]);
    let table = ready(
        publish(
            &store,
            &lineage(),
            &digest(1),
            &keys,
            b"{\"keys\":[]}",
            &|| 0,
        )
        .unwrap(),
    );
    let found = ready_table(&store, &lineage(), &digest(1))
        .unwrap()
        .expect("no ready table");
    assert_eq!(found.table, table);
    assert_eq!(found.key_count, 2);
    assert_eq!(found.settings, b"{\"keys\":[]}");
    assert_eq!(ready_table(&store, &lineage(), &digest(2)).unwrap(), None);
}

#[test]
fn settings_overwritten_by_a_newer_table_are_not_taken_for_the_older_one() {
    let store = MemoryStore::new();
    let table = ready(
        publish(
            &store,
            &lineage(),
            &digest(1),
            &config(&[("a", "key-a")]),
            b"one",
            &|| 0,
        )
        .unwrap(),
    );
    // Another publication that reused the bank wrote its own settings there
    // between a worker's read of the head and of the settings.
    let settings_key = &settings_key(&lineage(), table.bank);
    let newer = encode_settings(&digest(2), table.generation + 2, 1, b"two");
    store.set(settings_key, &newer, 0).unwrap();
    assert_eq!(ready_table(&store, &lineage(), &digest(1)).unwrap(), None);
    let same_digest_other_generation = encode_settings(&digest(1), table.generation + 2, 1, b"two");
    store
        .set(settings_key, &same_digest_other_generation, 0)
        .unwrap();
    assert_eq!(ready_table(&store, &lineage(), &digest(1)).unwrap(), None);
}

#[test]
fn a_digest_taken_in_pieces_equals_the_whole_digest() {
    let text = b"{\"keys\": [], \"realm\": \"pieces\"}";
    let mut digester = Digester::default();
    for piece in text.chunks(7) {
        digester.update(piece);
    }
    assert_eq!(digester.finish(), super::digest(text));
    // BLAKE3's published vector for the empty input.
    let empty = super::digest(b"");
    let hex: String = empty.iter().map(|byte| format!("{byte:02x}")).collect();
    assert_eq!(
        hex,
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    );
}

#[test]
fn the_head_round_trips() {
    let mut head = Head {
        next_generation: 9,
        ..Head::default()
    };
    head.banks[1] = Bank {
        digest: digest(7),
        generation: 8,
        state: BankState::Writing {
            started_ns: 5,
            renewed_ns: 9,
        },
    };
    head.banks[0] = Bank {
        digest: digest(6),
        generation: 7,
        state: BankState::Ready,
    };
    assert_eq!(Head::decode(&head.encode()), Some(head));
    assert_eq!(Head::decode(&head.encode()[..50]), None);
}

/// Counts the lookups of rate-limit entries made through it.
struct CountingStore {
    inner: MemoryStore,
    bucket_gets: std::cell::Cell<usize>,
}

impl CountingStore {
    fn new() -> Self {
        Self {
            inner: MemoryStore::new(),
            bucket_gets: std::cell::Cell::new(0),
        }
    }
}

impl SharedStore for CountingStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        if key.contains(".rl.") {
            self.bucket_gets.set(self.bucket_gets.get() + 1);
        }
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.inner.set(key, value, cas)
    }
}

#[test]
fn an_update_looks_up_only_the_rate_limit_entries_of_new_keys() {
    let store = CountingStore::new();
    let first = config(&[("a", "key-a"), ("b", "key-b")]);
    ready(publish(&store, &lineage(), &digest(1), &first, b"", &|| 0).unwrap());
    assert_eq!(
        store.bucket_gets.get(),
        0,
        "the process's first table looked entries up"
    );
    assert!(bucket_entry(&store.inner, "b").is_some());
    store
        .set(&buckets_key(&lineage(), "a"), b"in use", 0)
        .unwrap();

    let update = config(&[("a", "key-a"), ("c", "key-c")]);
    ready(publish(&store, &lineage(), &digest(2), &update, b"", &|| 0).unwrap());
    assert_eq!(
        store.bucket_gets.get(),
        1,
        "more than the new key c was looked up"
    );
    assert_eq!(
        bucket_entry(&store.inner, "a"),
        Some(b"in use".to_vec()),
        "a known entry was rewritten"
    );
    assert!(bucket_entry(&store.inner, "c").is_some(), "c got no entry");

    // b left the table but its entry still exists; a table bringing it back
    // looks it up (the list holds only the last table's ids) and keeps it.
    store
        .set(&buckets_key(&lineage(), "b"), b"b in use", 0)
        .unwrap();
    ready(publish(&store, &lineage(), &digest(3), &first, b"", &|| 0).unwrap());
    assert_eq!(
        store.bucket_gets.get(),
        2,
        "b should have been looked up, a not"
    );
    assert_eq!(bucket_entry(&store.inner, "b"), Some(b"b in use".to_vec()));
}

#[test]
fn an_unreadable_list_of_known_entries_means_nothing_is_known() {
    for list in [&b"\x09garbage"[..], &[1u8; 20][..], &[1u8, 9, 9][..]] {
        let store = CountingStore::new();
        published(&store, 9, &[("z", "key-z")]);
        store.set(&known_buckets_key(&lineage()), list, 0).unwrap();
        store
            .set(&buckets_key(&lineage(), "a"), b"in use", 0)
            .unwrap();
        store.bucket_gets.set(0);
        published(&store, 1, &[("a", "key-a"), ("b", "key-b")]);
        assert_eq!(store.bucket_gets.get(), 2, "list {list:?} was trusted");
        assert_eq!(bucket_entry(&store.inner, "a"), Some(b"in use".to_vec()));
        assert!(bucket_entry(&store.inner, "b").is_some());
    }
}

#[test]
fn fingerprints_sort_as_the_standard_sort_does() {
    let mut fingerprints: Vec<[u8; 16]> = (0..2000u32)
        .map(|i| id_fingerprint(&format!("k{}", i % 1500)))
        .collect();
    fingerprints.push([0; 16]);
    fingerprints.push([255; 16]);
    let mut expected = fingerprints.clone();
    expected.sort_unstable();
    sort_fingerprints(&mut fingerprints);
    assert_eq!(fingerprints, expected);
    let mut empty = Vec::new();
    sort_fingerprints(&mut empty);
    assert!(empty.is_empty());
}

#[test]
fn id_fingerprints_differ_and_sort_as_numbers() {
    let ids = ["a", "b", "k0000001", "k0000010", "key_live_1", ""];
    let mut fingerprints: Vec<_> = ids.iter().map(|id| id_fingerprint(id)).collect();
    sort_fingerprints(&mut fingerprints);
    fingerprints.dedup();
    assert_eq!(fingerprints.len(), ids.len(), "two ids share a fingerprint");
    let numbers: Vec<u128> = fingerprints
        .iter()
        .map(|f| u128::from_be_bytes(*f))
        .collect();
    assert!(numbers.windows(2).all(|pair| pair[0] < pair[1]));
    let encoded = encode_known(&fingerprints);
    let list = KnownList::decode(&encoded);
    assert!(list.equals(&fingerprints), "the list does not round-trip");
    for fingerprint in &fingerprints {
        assert!(list.contains(fingerprint));
    }
    assert!(!list.contains(&id_fingerprint("absent")));
}

/// Overwrites the head with another writer's claim after `after` writes of
/// rate-limit entries, as a worker taking the claim over would.
struct TakeoverStore {
    inner: MemoryStore,
    after: usize,
    bucket_sets: std::cell::Cell<usize>,
}

impl SharedStore for TakeoverStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if key.contains(".rl.") {
            self.bucket_sets.set(self.bucket_sets.get() + 1);
            if self.bucket_sets.get() == self.after {
                let mut head = Head::default();
                head.banks[0] = Bank {
                    digest: digest(42),
                    generation: 7,
                    state: BankState::Writing {
                        started_ns: 1,
                        renewed_ns: 1,
                    },
                };
                self.inner.set(&head_key(&lineage()), &head.encode(), 0)?;
            }
        }
        self.inner.set(key, value, cas)
    }
}

#[test]
fn a_first_table_stops_writing_entries_unlooked_once_its_claim_is_taken() {
    let keys: Vec<(String, String)> = (0..1100)
        .map(|i| (format!("k{i}"), format!("key-{i}")))
        .collect();
    let borrowed: Vec<(&str, &str)> = keys.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let store = TakeoverStore {
        inner: MemoryStore::new(),
        after: 100,
        bucket_sets: std::cell::Cell::new(0),
    };
    let outcome = publish(
        &store,
        &lineage(),
        &digest(1),
        &config(&borrowed),
        b"",
        &|| 0,
    )
    .unwrap();
    assert_eq!(outcome, Publication::Pending);
    assert!(
        store.bucket_sets.get() <= RECHECK_EVERY,
        "{} entries written after the claim was lost",
        store.bucket_sets.get()
    );
}
