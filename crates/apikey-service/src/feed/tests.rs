use super::*;
use apikey_core::key_hash::KeyHash;

#[test]
fn the_digest_does_not_depend_on_the_order_keys_were_added() {
    let mut forward = Tally::default();
    let mut backward = Tally::default();
    for seq in 1..=50u8 {
        forward.put(i64::from(seq), line_hash(format!("key {seq}").as_bytes()));
        backward.put(
            i64::from(51 - seq),
            line_hash(format!("key {}", 51 - seq).as_bytes()),
        );
    }
    assert_eq!(forward.summary(), backward.summary());
    backward.put(7, line_hash(b"key 7 revoked"));
    assert_ne!(
        forward.summary(),
        backward.summary(),
        "a changed key left the digest alone"
    );
    backward.put(7, line_hash(b"key 7"));
    assert_eq!(
        forward.summary(),
        backward.summary(),
        "a change undone left a trace"
    );
}

#[test]
fn queries_refuse_unknown_repeated_and_out_of_range_parameters() {
    assert!(ChangesQuery::parse(None).is_err(), "since is required");
    assert!(ChangesQuery::parse(Some("since=1&since=2")).is_err());
    assert!(ChangesQuery::parse(Some("since=1&wait=61")).is_err());
    assert!(ChangesQuery::parse(Some("since=-1")).is_err());
    assert!(SnapshotQuery::parse(Some("cursor=c12")).is_err());
    assert!(SnapshotQuery::parse(Some("limit=0")).is_err());
    assert!(SnapshotQuery::parse(Some("page=1")).is_err());
    let changes = ChangesQuery::parse(Some("since=12&wait=25&epoch=ab")).unwrap();
    assert_eq!(changes.since, 12);
    assert_eq!(changes.wait, Duration::from_secs(25));
    assert_eq!(changes.epoch.as_deref(), Some("ab"));
    let page = SnapshotQuery::parse(Some("cursor=s40&limit=2")).unwrap();
    assert_eq!((page.cursor, page.limit), (Some(40), 2));
}

#[test]
fn the_key_line_is_its_definition_byte_for_byte() {
    let texts = [
        "",
        "plain",
        "quote \" and \\ backslash",
        "é ✓ 🔑",
        "\u{1}\u{1f}\u{7f}\u{2028}\n\t",
        "</script>",
    ];
    let limits = [
        None,
        Some(Value::Null),
        Some(json!({})),
        Some(
            json!({"z": {"requests": 1, "period_seconds": 60}, "*": {"requests": 5, "period_seconds": 1}}),
        ),
        Some(
            json!({"b": [3, 1.5, -0.0, 1e300, u64::MAX, i64::MIN, "x"], "a": {"d": null, "c": true}}),
        ),
    ];
    let scopes = [
        json!([]),
        json!(["leads:*", "a:read"]),
        json!(["é\"\\"]),
        Value::Null,
    ];
    let mut checked = 0;
    for (n, text) in texts.iter().enumerate() {
        for (m, limit) in limits.iter().enumerate() {
            let optional = |k: usize| (!(n + m + k).is_multiple_of(3)).then(|| (*text).to_owned());
            let record = KeyRecord {
                seq: 1,
                id: format!("key_{text}"),
                sha256: KeyHash::from_bytes([u8::try_from(n * 7 + m).unwrap(); 32]),
                tenant: (*text).to_owned(),
                scopes: scopes[(n + m) % scopes.len()].clone(),
                plan: optional(0),
                env: optional(1),
                name: Some("left out".to_owned()),
                hint: None,
                expires_at: optional(2),
                expires_ns: None,
                revoked: (n + m).is_multiple_of(2),
                revoked_at: None,
                rate_limits: limit.clone(),
                created_at: 0,
                replaced_by: None,
                replaces: None,
                last_used_at: None,
            };
            assert_eq!(
                key_line(&record),
                key_line_by_map(&record),
                "the key line differs from its definition for {record:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, texts.len() * limits.len());
}
