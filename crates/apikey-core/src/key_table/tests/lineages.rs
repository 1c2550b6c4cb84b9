//! Several filter configurations in one process (one `vm_id`), each in
//! its own lineage: issue 17 finding 1, contract §7.1.

use super::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn tenant_of(store: &MemoryStore, table: TableRef, raw: &str) -> Option<String> {
    let key = record_key(&table.lineage, table.bank, &KeyHash::of(raw.as_bytes()));
    let (bytes, _) = store.get(&key).unwrap()?;
    let record = key_record::decode(&bytes)?;
    (record.generation == table.generation).then(|| record.tenant.to_owned())
}

fn publish_in(
    store: &MemoryStore,
    lineage: &Lineage,
    n: u8,
    keys: &[(&str, &str, &str)],
) -> TableRef {
    ready(publish(store, lineage, &digest(n), &tenant_config(keys), b"", &|| 0).unwrap())
}

#[test]
fn two_configurations_in_one_process_each_keep_their_table_through_updates() {
    // The sequence of issue 17: P to bank 0, Q to bank 1, P -> P1 to bank 0,
    // then P1 -> P2 claimed bank 1 and rewrote Q's records and settings.
    let store = MemoryStore::new();
    let (p, q) = (
        Lineage::of(b"apikey", b"apikey"),
        Lineage::of(b"partner", b"apikey"),
    );
    publish_in(
        &store,
        &p,
        1,
        &[("p", "key-p", "tp"), ("s", "shared", "tp")],
    );
    let q_table = publish_in(
        &store,
        &q,
        2,
        &[("q", "key-q", "tq"), ("s", "shared", "tq")],
    );
    publish_in(
        &store,
        &p,
        3,
        &[("p", "key-p", "tp"), ("s", "shared", "tp")],
    );
    let p2 = publish_in(
        &store,
        &p,
        4,
        &[("p2", "key-p2", "tp"), ("s", "shared", "tp")],
    );
    for (raw, expected) in [
        ("key-q", Some("tq")),
        ("shared", Some("tq")),
        ("key-p2", None),
    ] {
        assert_eq!(
            tenant_of(&store, q_table, raw).as_deref(),
            expected,
            "Q answered {raw} with another table after P's updates"
        );
    }
    for (raw, expected) in [
        ("key-p2", Some("tp")),
        ("shared", Some("tp")),
        ("key-q", None),
    ] {
        assert_eq!(
            tenant_of(&store, p2, raw).as_deref(),
            expected,
            "P2 answered {raw} with another table"
        );
    }
    let found = ready_table(&store, &q, &digest(2)).unwrap();
    assert_eq!(
        found.map(|ready| ready.table),
        Some(q_table),
        "a Q worker configuring now no longer finds Q's table"
    );
}

#[test]
fn the_same_configuration_in_two_lineages_gets_two_tables() {
    let store = MemoryStore::new();
    let (p, q) = (
        Lineage::of(b"apikey", b"apikey"),
        Lineage::of(b"partner", b"apikey"),
    );
    let keys = tenant_config(&[("a", "key-a", "t")]);
    let Publication::Written(_) = publish(&store, &p, &digest(7), &keys, b"", &|| 0).unwrap()
    else {
        panic!("P's table was not written");
    };
    assert_eq!(
        ready_table(&store, &q, &digest(7)).unwrap(),
        None,
        "a Q worker found P's table"
    );
    let outcome = publish(&store, &q, &digest(7), &keys, b"", &|| 0).unwrap();
    assert!(
        matches!(outcome, Publication::Written(table) if table.lineage == q),
        "Q took P's table: {outcome:?}"
    );
}

#[test]
fn two_lineages_with_the_same_key_id_have_their_own_bucket_entries() {
    let store = MemoryStore::new();
    let (p, q) = (
        Lineage::of(b"apikey", b"apikey"),
        Lineage::of(b"partner", b"apikey"),
    );
    publish_in(&store, &p, 1, &[("s", "key-p", "tp")]);
    store.set(&buckets_key(&p, "s"), b"p in use", 0).unwrap();
    publish_in(&store, &q, 1, &[("s", "key-q", "tq")]);
    assert_eq!(
        store
            .get(&buckets_key(&q, "s"))
            .unwrap()
            .map(|(value, _)| value),
        Some(EMPTY_BUCKETS.to_vec()),
        "Q's key s has no bucket entry of its own"
    );
    assert_eq!(
        store
            .get(&buckets_key(&p, "s"))
            .unwrap()
            .map(|(value, _)| value),
        Some(b"p in use".to_vec()),
        "publishing Q touched P's bucket entry"
    );
}

#[test]
fn lineages_differ_by_name_and_by_root_id() {
    let lineages = [
        Lineage::of(b"apikey", b"apikey"),
        Lineage::of(b"partner", b"apikey"),
        Lineage::of(b"apikey", b"partner"),
        Lineage::of(b"apikeya", b"pikey"),
        Lineage::of(b"", b""),
    ];
    for (i, a) in lineages.iter().enumerate() {
        for b in &lineages[i + 1..] {
            assert_ne!(a, b, "two plugins share a lineage");
        }
    }
    let key = head_key(&lineages[0]);
    assert!(
        key.starts_with("apikey.v1.") && key.len() == "apikey.v1.".len() + 16 + ".head".len(),
        "unexpected key name {key}"
    );
}

#[test]
fn storage_stays_bounded_per_lineage() {
    let store = MemoryStore::new();
    let keys = [
        ("a", "key-a", "t"),
        ("b", "key-b", "t"),
        ("c", "key-c", "t"),
    ];
    let lineages = [
        Lineage::of(b"apikey", b"apikey"),
        Lineage::of(b"partner", b"apikey"),
    ];
    let mut after_warm_up = 0;
    for round in 0..40u8 {
        let present = &keys[usize::from(round % 3)..];
        publish_in(&store, &lineages[usize::from(round % 2)], round, present);
        if round == 11 {
            after_warm_up = store.len();
        }
    }
    assert_eq!(store.len(), after_warm_up, "entries grew with updates");
    assert!(
        after_warm_up <= 2 * (1 + 2 * 3 + 3 + 2 + 1),
        "more than 2 lineages x (head + 2 banks x 3 hashes + 3 bucket entries + 2 settings + 1 list)"
    );
}
