use std::time::Duration;

use apikey_core::timestamp::UnixNanos;
use serde_json::{json, Map, Value};

use super::*;
use crate::feed::{self, ChangesQuery, SnapshotQuery};
use crate::keygen::OsRandom;
use crate::settings::Settings;
use crate::{import, keys, settings_store, usage};

const NANOS: i64 = 1_000_000_000;
/// 2026-12-05T10:00:00Z.
const NOW: UnixNanos = 1_796_464_800 * NANOS;
const SETTINGS: &str = r#"{"plans": {"pro": {"scopes": ["leads:*"]}, "free": {}}}"#;

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("apikey-lines-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("keys.db")
}

fn database(name: &str) -> Connection {
    let mut connection = db::open(&scratch(name)).unwrap();
    let settings = Settings::from_body(SETTINGS.as_bytes()).unwrap();
    settings_store::put(&mut connection, &settings, NOW).unwrap();
    connection
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// A key with every field the line holds.
fn create_full(connection: &mut Connection, tenant: &str) -> String {
    let fields = object(json!({
        "tenant": tenant, "scopes": ["leads:read", "leads:write"], "plan": "pro",
        "env": "live", "name": "a name the feed leaves out",
        "expires_at": "2099-01-01T00:00:00Z",
        "rate_limits": {"*": {"requests": 10, "period_seconds": 60}},
    }));
    keys::create(connection, fields, NOW, &mut OsRandom)
        .unwrap()
        .record
        .id
}

/// Import lines with what a line must escape or sort: a quote, a
/// backslash, non-ASCII, limits keyed out of order.
fn import_lines(count: usize) -> String {
    (0..count)
        .map(|n| {
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(&(n as u64 + 1).to_be_bytes());
            json!({
                "id": format!("key_imp{n:04}"),
                "sha256": apikey_core::key_hash::KeyHash::from_bytes(hash).to_hex(),
                "tenant": format!("t\"é\\{}", n % 3),
                "scopes": if n % 2 == 0 { json!(["leads:read"]) } else { json!([]) },
                "plan": if n % 2 == 0 { "pro" } else { "free" },
                "rate_limits": {"leads:*": {"requests": 5 + n, "period_seconds": 1},
                                "*": {"requests": 100, "period_seconds": 3600}},
                "revoked": n % 5 == 4,
                "created_at": "2026-01-01T00:00:00Z",
            })
            .to_string()
                + "\n"
        })
        .collect()
}

fn import_keys(connection: &mut Connection, count: usize) {
    let lines = import_lines(count);
    import::import(connection, &mut lines.as_bytes(), NOW).unwrap();
}

/// Every key's stored line, and the line built from its columns, by seq.
fn stored_and_built(connection: &Connection) -> Vec<(String, Option<String>, String)> {
    let sql = format!("SELECT {COLUMNS}, feed_line FROM keys ORDER BY seq");
    let mut statement = connection.prepare(&sql).unwrap();
    let rows = statement
        .query_map([], |row| {
            let record = KeyRecord::from_row(row)?;
            Ok((record.id.clone(), row.get(18)?, key_line(&record)))
        })
        .unwrap();
    rows.collect::<rusqlite::Result<Vec<_>>>().unwrap()
}

fn assert_every_line_stored(connection: &Connection, after: &str) {
    let rows = stored_and_built(connection);
    assert!(!rows.is_empty(), "no key to check after {after}");
    for (id, stored, built) in rows {
        assert_eq!(
            stored.as_deref(),
            Some(built.as_str()),
            "after {after}, key {id}'s stored feed line is not the line built from its columns"
        );
    }
}

fn stored_line(connection: &Connection, id: &str) -> Option<String> {
    connection
        .query_row("SELECT feed_line FROM keys WHERE id = ?1", [id], |row| {
            row.get(0)
        })
        .unwrap()
}

fn built_line(connection: &Connection, id: &str) -> String {
    key_line(&keys::get(connection, id).unwrap())
}

fn log_rows(connection: &Connection) -> i64 {
    connection
        .query_row("SELECT count(*) FROM feed_log", [], |row| row.get(0))
        .unwrap()
}

/// Every snapshot page's body at `limit` keys a page, from a new feed (so
/// the digest is rebuilt from the database, too).
fn snapshot_bodies(connection: &Connection, limit: usize) -> Vec<String> {
    let feed = Feed::new();
    let mut bodies = Vec::new();
    let mut cursor = None;
    loop {
        let answer = feed::snapshot(&feed, connection, SnapshotQuery { cursor, limit }).unwrap();
        bodies.push(answer.body());
        match answer.header["next_cursor"].as_str() {
            Some(next) => cursor = next.strip_prefix('s').and_then(|seq| seq.parse().ok()),
            None => return bodies,
        }
    }
}

fn fill_all(connection: &mut Connection) -> usize {
    let mut total = 0;
    loop {
        match fill_missing(connection, 4).unwrap() {
            0 => return total,
            filled => total += filled,
        }
    }
}

#[test]
fn create_import_revoke_and_rotate_store_the_line_the_feed_would_build() {
    let mut connection = database("writes");
    let created = create_full(&mut connection, "acme");
    assert_every_line_stored(&connection, "a create");
    import_keys(&mut connection, 12);
    assert_every_line_stored(&connection, "an import");
    let line = stored_line(&connection, &created);
    keys::revoke(&mut connection, "key_imp0001", NOW).unwrap();
    assert_every_line_stored(&connection, "a revoke");
    let revoked = stored_line(&connection, "key_imp0001").unwrap_or_default();
    assert!(
        revoked.contains(r#""revoked":true"#),
        "the revoked key's stored line still says it works: {revoked}"
    );
    let rotated = keys::rotate(
        &mut connection,
        &created,
        &object(json!({"grace_seconds": 60})),
        NOW,
        &mut OsRandom,
    )
    .unwrap();
    assert_every_line_stored(&connection, "a rotation");
    assert_ne!(
        stored_line(&connection, &created),
        line,
        "the rotated key's stored line kept its old expiry"
    );
    assert!(
        stored_line(&connection, &rotated.record.id).is_some(),
        "the new key of a rotation has no stored line"
    );
    assert_eq!(
        fill_missing(&mut connection, 100).unwrap(),
        0,
        "the service's own writes left lines to fill"
    );
}

#[test]
fn a_write_by_another_process_empties_the_line_and_the_feed_builds_it_until_filled() {
    let mut connection = database("outside");
    let id = create_full(&mut connection, "acme");
    let before = feed::head(&connection).unwrap();
    // What `sqlite3` or another release would do: columns only.
    connection
        .execute(
            "UPDATE keys SET plan = 'free', scopes = '[\"x:read\"]' WHERE id = ?1",
            [&id],
        )
        .unwrap();
    assert_eq!(
        stored_line(&connection, &id),
        None,
        "a change of the line's columns left the old line stored"
    );
    let expected = built_line(&connection, &id);
    assert!(
        expected.contains(r#""plan":"free""#),
        "the built line: {expected}"
    );
    let feed = Feed::new();
    let snapshot = feed::snapshot(&feed, &connection, SnapshotQuery::parse(None).unwrap()).unwrap();
    assert_eq!(
        snapshot.lines().collect::<Vec<_>>(),
        vec![expected.as_str()],
        "the snapshot did not serve the line of the changed columns"
    );
    let query = ChangesQuery::parse(Some(&format!("since={}", before.generation))).unwrap();
    let changes = feed::changes(&feed, &connection, &query).unwrap();
    assert_eq!(
        changes.lines().collect::<Vec<_>>(),
        vec![expected.as_str()],
        "the changes did not serve the line of the changed columns"
    );
    let (head, rows) = (feed::head(&connection).unwrap(), log_rows(&connection));
    assert_eq!(fill_missing(&mut connection, 100).unwrap(), 1);
    assert_eq!(
        stored_line(&connection, &id).as_deref(),
        Some(expected.as_str()),
        "the filled line is not the line built from the columns"
    );
    assert_eq!(
        (feed::head(&connection).unwrap(), log_rows(&connection)),
        (head, rows),
        "filling a line made a feed generation"
    );
    let after = feed::changes(&feed, &connection, &query).unwrap();
    assert_eq!(
        after.body(),
        changes.body(),
        "the changes read from the filled line differ from the built ones"
    );
}

#[test]
fn a_line_written_with_the_columns_by_another_process_is_not_trusted() {
    let mut connection = database("forged");
    let id = create_full(&mut connection, "acme");
    connection
        .execute(
            "UPDATE keys SET revoked = 1, feed_line = '{\"stale\":true}' WHERE id = ?1",
            [&id],
        )
        .unwrap();
    assert_eq!(
        stored_line(&connection, &id),
        None,
        "a line written with a change of its columns was kept"
    );
    // A row inserted as an older release does: no feed_line.
    connection
        .execute(
            "INSERT INTO keys (id, sha256, tenant, scopes, created_at) \
             VALUES ('key_old', zeroblob(32), 'acme', '[]', 0)",
            [],
        )
        .unwrap();
    assert_eq!(stored_line(&connection, "key_old"), None);
    let feed = Feed::new();
    let snapshot = feed::snapshot(&feed, &connection, SnapshotQuery::parse(None).unwrap()).unwrap();
    let expected = [
        built_line(&connection, &id),
        built_line(&connection, "key_old"),
    ];
    assert_eq!(
        snapshot.lines().collect::<Vec<_>>(),
        expected.iter().map(String::as_str).collect::<Vec<_>>(),
        "the snapshot did not serve the lines of the rows as they are"
    );
    assert_eq!(fill_all(&mut connection), 2);
    assert_every_line_stored(&connection, "filling");
}

#[test]
fn a_usage_report_leaves_the_stored_line_and_the_feed_alone() {
    let mut connection = database("usage");
    let id = create_full(&mut connection, "acme");
    let (line, head, rows) = (
        stored_line(&connection, &id),
        feed::head(&connection).unwrap(),
        log_rows(&connection),
    );
    let report = json!({"id": id, "count": 3, "last_used_at": "2026-12-05T09:00:00Z"});
    let uses = usage::parse(report.to_string().as_bytes()).unwrap();
    usage::record(&mut connection, &uses, NOW).unwrap();
    assert!(line.is_some());
    assert_eq!(
        stored_line(&connection, &id),
        line,
        "recording a use emptied the stored line"
    );
    assert_eq!(
        (feed::head(&connection).unwrap(), log_rows(&connection)),
        (head, rows),
        "recording a use made a feed generation"
    );
}

#[test]
fn a_snapshot_is_the_same_bytes_with_and_without_stored_lines() {
    let mut connection = database("bytes");
    import_keys(&mut connection, 23);
    create_full(&mut connection, "acme");
    keys::revoke(&mut connection, "key_imp0003", NOW).unwrap();
    let stored = snapshot_bodies(&connection, 5);
    assert_eq!(stored.len(), 5, "24 keys in pages of 5");
    // The bodies as the feed built them before lines were stored: each
    // line from its record.
    let built: Vec<String> = stored_and_built(&connection)
        .into_iter()
        .map(|(_, _, built)| built)
        .collect();
    let served: Vec<String> = stored
        .iter()
        .flat_map(|body| {
            let lines: Vec<&str> = body.lines().collect();
            // Header and settings (first page) or header, then keys, then the trailer.
            let skip = if body == &stored[0] { 2 } else { 1 };
            lines[skip..lines.len() - 1]
                .iter()
                .map(|line| (*line).to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        served, built,
        "the snapshot's lines are not the lines built from the records"
    );
    let rows = log_rows(&connection);
    connection
        .execute("UPDATE keys SET feed_line = NULL", [])
        .unwrap();
    assert_eq!(
        log_rows(&connection),
        rows,
        "emptying lines logged a change"
    );
    assert_eq!(
        snapshot_bodies(&connection, 5),
        stored,
        "the snapshot's bytes differ without stored lines"
    );
    fill_all(&mut connection);
    assert_eq!(
        snapshot_bodies(&connection, 5),
        stored,
        "the snapshot's bytes differ after filling the lines"
    );
}

#[test]
fn a_schema_3_database_is_brought_forward_and_its_lines_filled() {
    let path = scratch("schema3");
    let old = Connection::open(&path).unwrap();
    db::migrate(&old, db::MIGRATIONS.get(..3).unwrap()).unwrap();
    assert_eq!(db::schema_version(&old).unwrap(), 3);
    // Keys as release 3 wrote them (its INSERT, no feed_line column).
    let mut insert = old
        .prepare(
            "INSERT INTO keys (id, sha256, tenant, scopes, plan, env, expires_at, revoked, \
             rate_limits, created_at, last_used_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'live', ?6, ?7, ?8, ?9, ?10)",
        )
        .unwrap();
    for n in 0..9u8 {
        let hash = [n; 32];
        insert
            .execute(rusqlite::params![
                format!("key_v3_{n}"),
                hash.as_slice(),
                format!("tenant {n}"),
                r#"["b","a"]"#,
                (n % 2 == 0).then_some("pro"),
                (n % 3 == 0).then_some("2099-01-01T00:00:00Z"),
                n % 4 == 0,
                (n % 2 == 1).then_some(r#"{"*":{"period_seconds":60,"requests":7}}"#),
                NOW,
                (n == 5).then_some(NOW),
            ])
            .unwrap();
    }
    drop(insert);
    let generation = feed::head(&old).unwrap().generation;
    drop(old);

    let mut connection = db::open(&path).unwrap();
    assert_eq!(
        db::schema_version(&connection).unwrap(),
        db::MIGRATIONS.len() as i64
    );
    let rows = stored_and_built(&connection);
    assert_eq!(rows.len(), 9, "the migration lost keys");
    assert!(
        rows.iter().all(|(_, stored, _)| stored.is_none()),
        "the migration stored lines it did not build"
    );
    let before_fill = snapshot_bodies(&connection, 4);
    let served: Vec<&str> = before_fill
        .iter()
        .flat_map(|body| body.lines())
        .filter(|line| line.starts_with(r#"{"env""#))
        .collect();
    let built: Vec<&str> = rows.iter().map(|(_, _, built)| built.as_str()).collect();
    assert_eq!(
        served, built,
        "the migrated database's snapshot is not the lines built from its keys"
    );
    assert_eq!(fill_all(&mut connection), 9);
    assert_every_line_stored(&connection, "the migration's fill");
    assert_eq!(
        snapshot_bodies(&connection, 4),
        before_fill,
        "the snapshot's bytes changed when the migrated lines were filled"
    );
    assert_eq!(
        feed::head(&connection).unwrap().generation,
        generation,
        "migrating or filling made a feed generation"
    );
}

#[test]
fn empty_lines_are_found_through_the_partial_index_not_a_scan() {
    let connection = database("plan");
    for sql in [
        "SELECT EXISTS (SELECT 1 FROM keys WHERE feed_line IS NULL)".to_owned(),
        format!("SELECT {COLUMNS} FROM keys WHERE feed_line IS NULL ORDER BY seq LIMIT 10"),
    ] {
        let mut statement = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let plan: Vec<String> = statement
            .query_map([], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("INDEX keys_without_feed_line")),
            "{sql} does not use the partial index: {plan:?}"
        );
        assert!(
            !plan
                .iter()
                .any(|step| step.contains("SCAN keys") && !step.contains("INDEX")),
            "{sql} scans the table: {plan:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_fills_a_line_another_process_emptied() {
    let path = scratch("filler");
    drop(database("filler"));
    let pool = Arc::new(Pool::open(&path).unwrap());
    let feed = Arc::new(Feed::new());
    tokio::spawn(feed::follow(Arc::clone(&feed), Arc::clone(&pool)));
    tokio::spawn(fill(Arc::clone(&feed), Arc::clone(&pool)));
    let id = pool
        .write(|connection| Ok(create_full(connection, "acme")))
        .await
        .unwrap();
    let other = db::open(&path).unwrap();
    other
        .execute("UPDATE keys SET tenant = 'moved' WHERE id = ?1", [&id])
        .unwrap();
    // The follower sees the other process's write within a poll (250 ms)
    // and wakes the filler; allow far more on a loaded machine.
    let mut filled = None;
    for _ in 0..500 {
        filled = stored_line(&other, &id);
        if filled.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected = built_line(&other, &id);
    assert!(expected.contains(r#""tenant":"moved""#), "{expected}");
    assert_eq!(
        filled.as_deref(),
        Some(expected.as_str()),
        "the service did not fill the line another process emptied (within 10 s)"
    );
}
