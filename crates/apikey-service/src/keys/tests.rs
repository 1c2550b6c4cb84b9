use super::*;
use crate::keygen::OsRandom;
use crate::settings::Settings;

const NOW: UnixNanos = 1_800_000_000 * NANOS;

fn database(name: &str) -> Connection {
    let dir = std::env::temp_dir().join(format!("apikey-keys-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    db::open(&dir.join("keys.db")).unwrap()
}

fn with_settings(connection: &mut Connection, body: &str) {
    let settings = Settings::from_body(body.as_bytes()).unwrap();
    settings_store::put(connection, &settings, NOW).unwrap();
}

fn body(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn create_for(connection: &mut Connection, tenant: &str) -> Result<Created, ApiError> {
    create(
        connection,
        body(json!({"tenant": tenant})),
        NOW,
        &mut OsRandom,
    )
}

#[test]
fn a_created_key_is_stored_as_its_hash_and_hint_only() {
    let mut connection = database("create");
    let created = create(
        &mut connection,
        body(json!({"tenant": "acme", "env": "test", "scopes": ["a:*"]})),
        NOW,
        &mut OsRandom,
    )
    .unwrap();
    let raw = created.key.expose().to_owned();
    assert!(
        raw.starts_with("sk_test_") && raw.len() == "sk_test_".len() + 24,
        "{raw}"
    );
    let stored = get(&connection, &created.record.id).unwrap();
    assert_eq!(stored.sha256, KeyHash::of(raw.as_bytes()));
    assert_eq!(stored.created_at, NOW);
    let text = format!("{stored:?}");
    assert!(
        !text.contains(&raw[8..]),
        "the raw key is in the stored record"
    );
}

#[test]
fn the_cap_counts_neither_revoked_nor_expired_keys() {
    let mut connection = database("cap");
    with_settings(&mut connection, r#"{"max_keys_per_tenant": 2}"#);
    let first = create_for(&mut connection, "t").unwrap();
    create_for(&mut connection, "t").unwrap();
    let refused = create_for(&mut connection, "t").unwrap_err();
    assert_eq!(refused.kind, Kind::KeyLimitReached, "{refused}");
    revoke(&mut connection, &first.record.id, NOW).unwrap();
    let third = create_for(&mut connection, "t").unwrap();
    // Rotated with no grace: the old key expires now and stops counting.
    rotate(
        &mut connection,
        &third.record.id,
        &body(json!({"grace_seconds": 0})),
        NOW,
        &mut OsRandom,
    )
    .unwrap();
    assert_eq!(active_keys(&connection, "t", NOW).unwrap(), 2);
}

#[test]
fn a_rotated_key_is_not_rotated_again_and_its_successor_is() {
    let mut connection = database("rotate");
    let old = create_for(&mut connection, "t").unwrap();
    let options = body(json!({"grace_seconds": 60}));
    let new = rotate(
        &mut connection,
        &old.record.id,
        &options,
        NOW,
        &mut OsRandom,
    )
    .unwrap();
    assert_eq!(new.record.replaces.as_deref(), Some(old.record.id.as_str()));
    assert_eq!(
        new.old_expires_at.as_deref(),
        Some(format_rfc3339(NOW + 60 * NANOS).as_str())
    );
    let again = rotate(
        &mut connection,
        &old.record.id,
        &options,
        NOW,
        &mut OsRandom,
    )
    .unwrap_err();
    assert_eq!(again.kind, Kind::Conflict, "{again}");
    rotate(
        &mut connection,
        &new.record.id,
        &options,
        NOW,
        &mut OsRandom,
    )
    .unwrap();
}

#[test]
fn pages_walk_the_table_newest_first_without_repeats() {
    let mut connection = database("pages");
    let made: Vec<String> = (0..5)
        .map(|_| create_for(&mut connection, "t").unwrap().record.id)
        .collect();
    let mut query = ListQuery {
        limit: 2,
        ..ListQuery::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = list(&connection, &query).unwrap();
        seen.extend(page.records.iter().map(|record| record.id.clone()));
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(parse_cursor(&cursor).unwrap()),
            None => break,
        }
    }
    let newest_first: Vec<String> = made.into_iter().rev().collect();
    assert_eq!(seen, newest_first);
}

#[test]
fn list_parameters_are_checked_by_name() {
    assert_eq!(
        ListQuery::parse(Some("tenant=a%20b&limit=5&cursor=c9")).unwrap(),
        ListQuery {
            tenant: Some("a b".to_owned()),
            limit: 5,
            cursor: Some(9)
        }
    );
    for (query, field) in [
        ("limit=0", "limit"),
        ("cursor=9", "cursor"),
        ("x=1", "x"),
        ("tenant=a&tenant=a", "tenant"),
    ] {
        let error = ListQuery::parse(Some(query)).unwrap_err();
        assert_eq!(error.field(), Some(field), "{query}: {error}");
    }
}
