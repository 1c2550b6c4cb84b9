//! The plugin configuration (contract §1) from arbitrary bytes.
//!
//! Properties, for every input:
//! - `Config::parse` never panics;
//! - parsing is a function of the bytes: the same input gives the same
//!   configuration (or the same refusal) again;
//! - an accepted configuration re-validates as the filter uses it: its keys
//!   publish into an in-memory shared store, every key's record reads back
//!   with its own id, tenant, revocation and expiry, and every rule path
//!   and scope it compiled is one the decision can match;
//! - its settings (the configuration with `keys` emptied, what workers
//!   read once the table is published) parse to the same configuration
//!   without keys, and the published table hands them back with the key
//!   count;
//! - a refusal names where: a field path (`keys[3].plan`), or, for a
//!   document that is not a JSON object at all, the line and column;
//!   the reason is never empty.
#![no_main]

use apikey_core::config::Config;
use apikey_core::key_cache::KeyCache;
use apikey_core::key_table::{self, publish, Lineage, Publication};
use apikey_core::memory_store::MemoryStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &[u8]| check(text));

fn check(text: &[u8]) {
    let first = Config::parse(text);
    let again = Config::parse(text);
    assert_eq!(first, again, "parsing the same bytes twice disagreed");
    match first {
        Ok(None) => assert!(
            text.iter().all(u8::is_ascii_whitespace),
            "only empty or white-space text is the unconfigured state"
        ),
        Ok(Some(config)) => {
            revalidate(&config);
            check_settings(text, &config);
        }
        Err(error) => {
            assert!(
                !error.reason.is_empty(),
                "a refusal without a reason: {error:?}"
            );
            assert!(
                !error.field.is_empty() || names_document_level(&error.reason),
                "a refusal names no field: {error:?}"
            );
            assert!(!error.to_string().is_empty());
        }
    }
}

/// Refusals that name no field path: JSON syntax (placed by line and
/// column), a document that is not an object, or a top-level field whose
/// name is empty (`{"": 1}`: its path is empty, the reason quotes it).
fn names_document_level(reason: &str) -> bool {
    reason.contains(" at line ") && reason.contains(" column ")
        || reason.ends_with("expected an object")
        || reason.starts_with("unknown field ``")
}

fn check_settings(text: &[u8], config: &Config) {
    let Ok(Some((parsed, settings))) = Config::parse_with_settings(text) else {
        panic!("parse_with_settings refused what parse accepted");
    };
    assert_eq!(&parsed, config, "parse_with_settings disagrees with parse");
    let from_settings = match Config::parse(&settings) {
        Ok(Some(from_settings)) => from_settings,
        other => panic!(
            "the settings {:?} do not parse: {other:?}",
            String::from_utf8_lossy(&settings)
        ),
    };
    let without_keys = Config {
        keys: Vec::new(),
        ..config.clone()
    };
    assert_eq!(
        from_settings, without_keys,
        "the settings changed more than the keys"
    );
    let store = MemoryStore::new();
    let digest = key_table::digest(text);
    let Ok(Publication::Written(table)) = publish(
        &store,
        &Lineage::of(b"apikey", b"apikey"),
        &digest,
        config,
        &settings,
        &|| 0,
    ) else {
        panic!("an accepted configuration did not publish with its settings");
    };
    match key_table::ready_table(&store, &Lineage::of(b"apikey", b"apikey"), &digest) {
        Ok(Some(ready)) => {
            assert_eq!(ready.table, table);
            assert_eq!(ready.key_count, config.keys.len());
            assert_eq!(ready.settings, settings);
        }
        other => panic!("the published table is not ready with its settings: {other:?}"),
    }
}

fn revalidate(config: &Config) {
    let store = MemoryStore::new();
    let table = match publish(
        &store,
        &Lineage::of(b"apikey", b"apikey"),
        &[7; 32],
        config,
        b"",
        &|| 0,
    ) {
        Ok(Publication::Written(table)) => table,
        other => panic!("an accepted configuration did not publish: {other:?}"),
    };
    let cache = KeyCache::default();
    for key in &config.keys {
        let entry = match cache.lookup(&store, table, &key.hash) {
            Ok(Some(entry)) => entry,
            other => panic!("key {:?} does not read back: {other:?}", key.id),
        };
        assert_eq!(entry.id, key.id);
        assert_eq!(entry.tenant, key.tenant);
        assert_eq!(entry.env, key.env);
        assert_eq!(entry.revoked, key.revoked);
        assert_eq!(entry.expires_at, key.expires_at);
        assert_eq!(entry.plan, key.plan);
        assert!(
            config.plan(key.plan).is_some() || key.plan.is_none(),
            "dangling plan"
        );
        assert_eq!(entry.limits, key.rate_limits, "key {:?} limits", key.id);
    }
}
