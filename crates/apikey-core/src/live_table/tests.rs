//! The followed table's protocol against an in-memory store.

use super::*;
use crate::config::Config;
use crate::key_cache::KeyCache;
use crate::key_hash::KeyHash;
use crate::key_record;
use crate::memory_store::MemoryStore;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn lineage() -> Lineage {
    Lineage::of(b"apikey", b"apikey")
}

fn config(keys: &[(&str, &str)]) -> Config {
    let keys: Vec<String> = keys
        .iter()
        .map(|(id, raw)| {
            format!(
                r#"{{"id":"{id}","sha256":"{}","tenant":"t","plan":"pro"}}"#,
                KeyHash::of(raw.as_bytes()).to_hex()
            )
        })
        .collect();
    let text = format!(
        r#"{{"plans":{{"pro":{{"rate_limits":{{"*":{{"requests":5,"period_seconds":60}}}}}}}},"keys":[{}]}}"#,
        keys.join(",")
    );
    Config::parse(text.as_bytes()).unwrap().unwrap()
}

fn new_table(keys: &[(&str, &str)], generation: u64) -> NewTable {
    let config = config(keys);
    let mut shards = ShardSet::for_keys(keys.len() as u64);
    for key in &config.keys {
        shards.push(
            key.hash.as_bytes(),
            &key_record::encode(key, &config.plans, 0),
        );
    }
    NewTable {
        shards,
        settings: br#"{"plans":{"pro":{}}}"#.to_vec(),
        generation,
        limited: config.keys.iter().map(|key| key.id.clone()).collect(),
        began_ns: 0,
    }
}

fn id_of(store: &MemoryStore, head: &LiveHead, raw: &str) -> Option<String> {
    KeyCache::default()
        .lookup(store, head.table(lineage()), &KeyHash::of(raw.as_bytes()))
        .unwrap()
        .map(|record| record.id.clone())
}

fn always() -> Result<bool, StoreError> {
    Ok(true)
}

/// Publishes a table of `keys` at feed `generation`, its writer holding
/// the lease throughout.
fn publish(store: &MemoryStore, keys: &[(&str, &str)], generation: u64) -> LiveHead {
    publish_table(store, &lineage(), &new_table(keys, generation), 10, &always)
        .unwrap()
        .expect("a writer holding the lease did not publish")
}

#[test]
fn a_published_table_serves_every_key_from_its_shards() {
    let store = MemoryStore::new();
    let keys: Vec<(String, String)> = (0..200)
        .map(|i| (format!("k{i}"), format!("raw{i}")))
        .collect();
    let keys: Vec<(&str, &str)> = keys.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let head = publish(&store, &keys, 5);
    assert_eq!(head.key_count, 200);
    assert!(head.bits >= 3, "200 keys in {} bits", head.bits);
    assert_eq!(read_head(&store, &lineage()).unwrap(), Some(head));
    for (id, raw) in &keys {
        assert_eq!(
            id_of(&store, &head, raw).as_deref(),
            Some(*id),
            "{id} not served"
        );
    }
    assert_eq!(id_of(&store, &head, "unknown"), None);
    assert_eq!(
        read_settings(&store, &lineage(), &head).unwrap().as_deref(),
        Some(&br#"{"plans":{"pro":{}}}"#[..])
    );
    for id in ["k0", "k199"] {
        assert!(
            store
                .get(&crate::store::names::buckets_key(&lineage(), id))
                .unwrap()
                .is_some(),
            "no bucket entry for limited key {id}"
        );
    }
}

#[test]
fn a_new_table_goes_to_the_other_bank_and_nothing_of_the_old_one_answers() {
    let store = MemoryStore::new();
    let first = publish(&store, &[("a", "ra")], 1);
    let second = publish(&store, &[("b", "rb")], 2);
    assert_ne!(first.bank, second.bank);
    assert!(second.build > first.build, "builds must only grow");
    let third = publish(&store, &[("c", "rc")], 3);
    assert_eq!(third.bank, first.bank);
    assert_eq!(
        id_of(&store, &third, "ra"),
        None,
        "a key of table 1 answered in table 3"
    );
    assert_eq!(id_of(&store, &third, "rc").as_deref(), Some("c"));
}

#[test]
fn a_writer_that_lost_the_lease_never_moves_the_head() {
    let store = MemoryStore::new();
    let lost = || Ok(false);
    assert_eq!(
        publish_table(&store, &lineage(), &new_table(&[("a", "ra")], 1), 10, &lost).unwrap(),
        None
    );
    assert_eq!(
        read_head(&store, &lineage()).unwrap(),
        None,
        "a table was served"
    );
}

#[test]
fn changes_rewrite_only_the_shards_they_touch() {
    let store = MemoryStore::new();
    let keys: Vec<(String, String)> = (0..1000)
        .map(|i| (format!("k{i}"), format!("raw{i}")))
        .collect();
    let keys: Vec<(&str, &str)> = keys.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let head = publish(&store, &keys, 1);
    let mut revoked = config(&[("k7", "raw7")]).keys.remove(0);
    revoked.revoked = true;
    let added = config(&[("new", "rawnew")]);
    let writes = store.writes();
    let changes = Changes {
        settings: None,
        records: vec![
            (
                *revoked.hash.as_bytes(),
                Some(key_record::encode(&revoked, &added.plans, 0)),
            ),
            (
                *added.keys[0].hash.as_bytes(),
                Some(key_record::encode(&added.keys[0], &added.plans, 0)),
            ),
            (*KeyHash::of(b"raw9").as_bytes(), None),
        ],
        limited: vec!["new".into()],
        generation: 2,
        key_count: 1000,
    };
    let next = apply_changes(&store, &lineage(), &head, &changes).unwrap();
    assert!(
        store.writes() - writes <= 5,
        "{} writes for 3 changed keys and a head",
        store.writes() - writes
    );
    assert_eq!(
        (next.generation, next.build, next.bank),
        (2, head.build, head.bank)
    );
    assert_eq!(read_head(&store, &lineage()).unwrap(), Some(next));
    let record = KeyCache::default()
        .lookup(&store, next.table(lineage()), &KeyHash::of(b"raw7"))
        .unwrap()
        .unwrap();
    assert!(record.revoked, "the revocation was not written");
    assert_eq!(id_of(&store, &next, "rawnew").as_deref(), Some("new"));
    assert_eq!(
        id_of(&store, &next, "raw9"),
        None,
        "a removed record answered"
    );
    assert_eq!(
        id_of(&store, &next, "raw8").as_deref(),
        Some("k8"),
        "an untouched key was lost"
    );
}

#[test]
fn changed_settings_are_read_with_the_head_that_names_them() {
    let store = MemoryStore::new();
    let head = publish(&store, &[("a", "ra")], 1);
    let changes = Changes {
        settings: Some(b"{}".to_vec()),
        generation: 4,
        key_count: 1,
        ..Changes::default()
    };
    let next = apply_changes(&store, &lineage(), &head, &changes).unwrap();
    assert_eq!(next.settings_version, 4);
    assert_eq!(
        read_settings(&store, &lineage(), &next).unwrap().as_deref(),
        Some(&b"{}"[..])
    );
    assert_eq!(
        read_settings(&store, &lineage(), &head).unwrap(),
        None,
        "settings of another version were taken for the old head's"
    );
}
