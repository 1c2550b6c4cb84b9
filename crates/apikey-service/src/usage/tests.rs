use super::*;
use crate::error::Kind;
use crate::feed::{self, ChangesQuery, Feed};
use crate::keygen::OsRandom;
use crate::keys;

const NANOS: i64 = 1_000_000_000;
/// 2026-12-05T10:00:00Z.
const NOW: UnixNanos = 1_796_464_800 * NANOS;

fn database(name: &str) -> Connection {
    let dir = std::env::temp_dir().join(format!("apikey-usage-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    db::open(&dir.join("keys.db")).unwrap()
}

fn new_key(connection: &mut Connection) -> String {
    let mut fields = serde_json::Map::new();
    fields.insert("tenant".to_owned(), json!("acme"));
    keys::create(connection, fields, NOW, &mut OsRandom)
        .unwrap()
        .record
        .id
}

fn line(id: &str, count: u64, at: &str) -> String {
    json!({"id": id, "count": count, "last_used_at": at}).to_string()
}

fn report(connection: &mut Connection, lines: &[String]) -> Recorded {
    let body = lines.join("\n") + "\n";
    let uses = parse(body.as_bytes()).unwrap();
    record(connection, &uses, NOW).unwrap()
}

fn last_used(connection: &Connection, id: &str) -> Option<String> {
    keys::get(connection, id)
        .unwrap()
        .last_used_at
        .map(format_rfc3339)
}

fn days(connection: &Connection, id: &str) -> Vec<(String, u64)> {
    by_day(connection, id)
        .unwrap()
        .into_iter()
        .map(|day| (day.day, day.count))
        .collect()
}

#[test]
fn counts_add_up_by_the_utc_day_of_each_lines_last_use() {
    let mut connection = database("days");
    let id = new_key(&mut connection);
    let recorded = report(
        &mut connection,
        &[
            line(&id, 3, "2026-12-04T23:59:59Z"),
            line(&id, 4, "2026-12-05T00:00:00Z"),
        ],
    );
    assert_eq!(
        recorded,
        Recorded {
            accepted: 2,
            unknown: 0
        }
    );
    // A second gateway (or worker) reporting the same day adds to it.
    report(&mut connection, &[line(&id, 5, "2026-12-05T09:00:00Z")]);
    assert_eq!(
        days(&connection, &id),
        [("2026-12-04".to_owned(), 3), ("2026-12-05".to_owned(), 9)],
        "the counts by day are not the sums of the reports"
    );
    assert_eq!(
        days_body(&id, &by_day(&connection, &id).unwrap()),
        json!({"id": id, "days": [{"day": "2026-12-04", "count": 3}, {"day": "2026-12-05", "count": 9}]})
    );
}

#[test]
fn last_used_at_is_the_latest_reported_and_never_goes_back() {
    let mut connection = database("latest");
    let id = new_key(&mut connection);
    assert_eq!(last_used(&connection, &id), None, "a new key was used");
    report(&mut connection, &[line(&id, 1, "2026-12-05T09:00:00Z")]);
    assert_eq!(
        last_used(&connection, &id).as_deref(),
        Some("2026-12-05T09:00:00Z")
    );
    // A late report from a slower gateway is counted but does not move it back.
    report(&mut connection, &[line(&id, 2, "2026-12-05T08:00:00Z")]);
    assert_eq!(
        last_used(&connection, &id).as_deref(),
        Some("2026-12-05T09:00:00Z"),
        "an older report moved last_used_at back"
    );
    assert_eq!(days(&connection, &id), [("2026-12-05".to_owned(), 3)]);
}

#[test]
fn a_time_ahead_of_the_service_clock_is_taken_as_the_service_clock() {
    let mut connection = database("ahead");
    let id = new_key(&mut connection);
    report(&mut connection, &[line(&id, 1, "2027-06-01T00:00:00Z")]);
    assert_eq!(
        last_used(&connection, &id),
        Some(format_rfc3339(NOW)),
        "a fast gateway clock pinned last_used_at in the future"
    );
    assert_eq!(days(&connection, &id), [("2026-12-05".to_owned(), 1)]);
}

#[test]
fn unknown_ids_are_skipped_and_counted_while_the_rest_is_stored() {
    let mut connection = database("unknown");
    let id = new_key(&mut connection);
    let recorded = report(
        &mut connection,
        &[
            line("key_elsewhere", 7, "2026-12-05T09:00:00Z"),
            line(&id, 2, "2026-12-05T09:00:00Z"),
        ],
    );
    assert_eq!(
        recorded,
        Recorded {
            accepted: 1,
            unknown: 1
        }
    );
    assert_eq!(recorded.body(), json!({"accepted": 1, "unknown": 1}));
    assert_eq!(days(&connection, &id), [("2026-12-05".to_owned(), 2)]);
    let unknown = by_day(&connection, "key_elsewhere").unwrap_err();
    assert_eq!(unknown.kind, Kind::NotFound, "{unknown}");
    let stored: i64 = connection
        .query_row("SELECT count(*) FROM key_usage", [], |row| row.get(0))
        .unwrap();
    assert_eq!(stored, 1, "a row was stored for a key the database lacks");
}

#[test]
fn every_bad_line_is_refused_naming_its_line_and_field() {
    let good = line("key_a", 1, "2026-12-05T09:00:00Z");
    let cases = [
        ("not json", None),
        ("[1]", None),
        (r#"{"id":"key_a","count":1}"#, Some("last_used_at")),
        (
            r#"{"count":1,"last_used_at":"2026-12-05T09:00:00Z"}"#,
            Some("id"),
        ),
        (
            r#"{"id":"key_a","last_used_at":"2026-12-05T09:00:00Z"}"#,
            Some("count"),
        ),
        (
            r#"{"id":"key_a","count":0,"last_used_at":"2026-12-05T09:00:00Z"}"#,
            Some("count"),
        ),
        (
            r#"{"id":"key_a","count":-1,"last_used_at":"2026-12-05T09:00:00Z"}"#,
            Some("count"),
        ),
        (
            r#"{"id":"key_a","count":1.5,"last_used_at":"2026-12-05T09:00:00Z"}"#,
            Some("count"),
        ),
        (
            r#"{"id":"key_a","count":"1","last_used_at":"2026-12-05T09:00:00Z"}"#,
            Some("count"),
        ),
        (
            r#"{"id":"key_a","count":1000000000001,"last_used_at":"2026-12-05T09:00:00Z"}"#,
            Some("count"),
        ),
        (
            r#"{"id":"","count":1,"last_used_at":"2026-12-05T09:00:00Z"}"#,
            Some("id"),
        ),
        (
            r#"{"id":"a b","count":1,"last_used_at":"2026-12-05T09:00:00Z"}"#,
            Some("id"),
        ),
        (
            r#"{"id":7,"count":1,"last_used_at":"2026-12-05T09:00:00Z"}"#,
            Some("id"),
        ),
        (
            r#"{"id":"key_a","count":1,"last_used_at":"yesterday"}"#,
            Some("last_used_at"),
        ),
        (
            r#"{"id":"key_a","count":1,"last_used_at":"2026-12-05T09:00:00+01:00"}"#,
            Some("last_used_at"),
        ),
        (
            r#"{"id":"key_a","count":1,"last_used_at":"2026-12-05T09:00:00Z","tenant":"t"}"#,
            Some("tenant"),
        ),
        (
            r#"{"id":"key_a","id":"key_b","count":1,"last_used_at":"2026-12-05T09:00:00Z"}"#,
            Some("id"),
        ),
    ];
    for (bad, field) in cases {
        let body = format!("{good}\n\n{bad}\n");
        let error = parse(body.as_bytes()).unwrap_err();
        assert_eq!(error.kind, Kind::InvalidRequest, "{bad}: {error}");
        assert_eq!(
            error.details.get("line"),
            Some(&json!(3)),
            "{bad}: the refusal does not name line 3: {error}"
        );
        assert_eq!(error.field(), field, "{bad}: the wrong field: {error}");
        assert!(error.message.starts_with("line 3: "), "{bad}: {error}");
    }
    let long = format!(
        r#"{{"id":"key_a","count":1,"last_used_at":"2026-12-05T09:00:00Z"{}}}"#,
        " ".repeat(MAX_LINE_BYTES)
    );
    assert!(
        parse(long.as_bytes()).is_err(),
        "an over-long line was read"
    );
}

#[test]
fn a_refused_report_stores_nothing() {
    let mut connection = database("refused");
    let id = new_key(&mut connection);
    let body = format!("{}\nnot json\n", line(&id, 1, "2026-12-05T09:00:00Z"));
    assert!(parse(body.as_bytes()).is_err());
    assert_eq!(days(&connection, &id), [], "half a refused report was kept");
    assert_eq!(last_used(&connection, &id), None);
}

#[test]
fn recording_usage_leaves_the_feed_and_its_generation_alone() {
    let mut connection = database("feed");
    let id = new_key(&mut connection);
    let feed = Feed::new();
    let before = feed::head(&connection).unwrap();
    let log_rows = |connection: &Connection| -> i64 {
        connection
            .query_row("SELECT count(*) FROM feed_log", [], |row| row.get(0))
            .unwrap()
    };
    let rows = log_rows(&connection);
    report(&mut connection, &[line(&id, 9, "2026-12-05T09:00:00Z")]);
    assert_eq!(
        feed::head(&connection).unwrap(),
        before,
        "a usage report made a feed generation"
    );
    assert_eq!(
        log_rows(&connection),
        rows,
        "a usage report wrote to feed_log"
    );
    let query = ChangesQuery::parse(Some(&format!("since={}", before.generation))).unwrap();
    let changes = feed::changes(&feed, &connection, &query).unwrap();
    assert!(
        changes.is_empty(),
        "the feed shows a change after a usage report: {}",
        changes.body()
    );
}
