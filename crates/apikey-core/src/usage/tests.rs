//! The usage log alone (bound, retry merge, report size), the reporter on
//! a [`MockHost`] (cadence, failures, tokens), and both through the
//! configuration lifecycle following a feed (what a request counts).

use sha2::{Digest as _, Sha256};

use super::*;
use crate::config_lifecycle::Configuration;
use crate::mock_host::{config_with, key_hash, MockHost, Process, Worker, POST_TOKENS};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const SECOND: u64 = 1_000_000_000;
/// 2026-12-05T10:00:00Z.
const WALL: i64 = 1_796_464_800_000_000_000;
const TOKEN: &str = "feed_secret_token";

/// Each line of a report body, as (id, count, last_used_at).
fn lines(body: &[u8]) -> Vec<(String, u64, String)> {
    let mut lines: Vec<(String, u64, String)> = std::str::from_utf8(body)
        .unwrap()
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(
                value.as_object().unwrap().len(),
                3,
                "a line holds more than id, count and last_used_at: {line}"
            );
            (
                value["id"].as_str().unwrap().to_owned(),
                value["count"].as_u64().unwrap(),
                value["last_used_at"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    lines.sort();
    lines
}

fn line(id: &str, count: u64, at: &str) -> (String, u64, String) {
    (id.to_owned(), count, at.to_owned())
}

#[test]
fn a_report_holds_each_keys_count_and_latest_use_then_nothing_until_delivered() {
    let mut log = UsageLog::new(WALL);
    log.record("k1");
    log.set_clock(WALL + 7 * SECOND as i64);
    log.record("k1");
    log.record("k2");
    let report = log.take_report().expect("nothing to report");
    assert_eq!(
        lines(&report.body),
        [
            line("k1", 2, "2026-12-05T10:00:07Z"),
            line("k2", 1, "2026-12-05T10:00:07Z")
        ]
    );
    assert_eq!(
        (report.keys, report.requests, report.complete),
        (2, 3, true)
    );
    log.record("k1");
    assert_eq!(
        log.take_report(),
        None,
        "a second report while one is in flight"
    );
    log.report_delivered();
    let next = log
        .take_report()
        .expect("the use after the report was lost");
    assert_eq!(lines(&next.body), [line("k1", 1, "2026-12-05T10:00:07Z")]);
    log.report_delivered();
    assert_eq!(log.take_report(), None, "an empty report");
}

#[test]
fn a_failed_report_is_merged_back_and_goes_with_the_next() {
    let mut log = UsageLog::new(WALL);
    for _ in 0..3 {
        log.record("k1");
    }
    log.record("k2");
    let _taken = log.take_report().unwrap();
    log.set_clock(WALL + 5 * SECOND as i64);
    log.record("k1");
    log.record("k3");
    log.report_failed();
    assert!(!log.in_flight());
    let retried = log.take_report().unwrap();
    assert_eq!(
        lines(&retried.body),
        [
            line("k1", 4, "2026-12-05T10:00:05Z"),
            line("k2", 1, "2026-12-05T10:00:00Z"),
            line("k3", 1, "2026-12-05T10:00:05Z")
        ],
        "the retry lost or double-counted uses"
    );
}

#[test]
fn keys_past_the_bound_are_dropped_and_counted_until_the_window_is_reported() {
    let mut log = UsageLog::with_bound(WALL, 2);
    log.record("k1");
    log.record("k2");
    log.record("k3");
    log.record("k3");
    log.record("k1");
    assert_eq!(log.pending_keys(), 2, "the bound was passed");
    assert_eq!(
        log.take_dropped(),
        2,
        "k3's requests were not counted as dropped"
    );
    assert_eq!(log.take_dropped(), 0, "dropped counted twice");
    let _taken = log.take_report().unwrap();
    log.record("k3");
    assert_eq!(
        log.pending_keys(),
        1,
        "a reported window did not free its room"
    );
    assert_eq!(log.take_dropped(), 0);
}

#[test]
fn a_failed_report_merged_back_keeps_the_bound() {
    let mut log = UsageLog::with_bound(WALL, 2);
    log.record("k1");
    log.record("k2");
    log.record("k2");
    let _taken = log.take_report().unwrap();
    // While in flight the window fills with other keys.
    log.record("k1");
    log.record("k3");
    log.report_failed();
    assert_eq!(log.pending_keys(), 2, "merging back passed the bound");
    assert_eq!(
        log.take_dropped(),
        2,
        "k2's two requests were not counted as dropped"
    );
    let retried = log.take_report().unwrap();
    assert_eq!(
        lines(&retried.body),
        [
            line("k1", 2, "2026-12-05T10:00:00Z"),
            line("k3", 1, "2026-12-05T10:00:00Z")
        ]
    );
}

#[test]
fn an_absorbed_log_adds_its_counts_keeps_the_later_use_and_its_drops() {
    let mut main = UsageLog::new(WALL);
    main.record("k1");
    let mut worker = UsageLog::with_bound(WALL + 5 * SECOND as i64, 1);
    worker.record("k1");
    worker.record("k1");
    worker.record("k2");
    main.absorb(worker);
    assert_eq!(
        main.take_dropped(),
        1,
        "the worker's dropped request was lost"
    );
    let report = main
        .take_report()
        .expect("nothing to report after absorbing");
    assert_eq!(
        lines(&report.body),
        [line("k1", 3, "2026-12-05T10:00:05Z")],
        "counts not added or the later use not kept"
    );
}

#[test]
fn absorbing_keeps_the_absorbing_logs_bound_and_leaves_its_report_in_flight_alone() {
    let mut main = UsageLog::with_bound(WALL, 2);
    main.record("k1");
    let _taken = main.take_report().unwrap();
    main.record("k2");
    let mut worker = UsageLog::new(WALL);
    // k3 and k4 twice each: which of them fits the bound depends on the
    // worker map's order, so the test holds either way.
    for id in ["k2", "k3", "k3", "k4", "k4"] {
        worker.record(id);
    }
    main.absorb(worker);
    assert_eq!(main.pending_keys(), 2, "absorbing passed the bound");
    assert_eq!(
        main.take_dropped(),
        2,
        "the two requests of the key past the bound were not counted as dropped"
    );
    assert!(main.in_flight(), "absorbing touched the report in flight");
    main.report_delivered();
    let next = main.take_report().unwrap();
    let next = lines(&next.body);
    assert_eq!(next.first(), Some(&line("k2", 2, "2026-12-05T10:00:00Z")));
    assert!(
        next.get(1) == Some(&line("k3", 2, "2026-12-05T10:00:00Z"))
            || next.get(1) == Some(&line("k4", 2, "2026-12-05T10:00:00Z")),
        "the key kept within the bound lost counts: {next:?}"
    );
    assert_eq!(next.len(), 2);
}

#[test]
fn a_vms_own_log_counts_through_the_sink_and_loses_a_use_while_borrowed() {
    let log = RefCell::new(UsageLog::new(WALL));
    UsageSink::record(&log, "k1");
    {
        let _held = log.borrow();
        UsageSink::record(&log, "k1");
    }
    let report = log.borrow_mut().take_report().unwrap();
    assert_eq!(lines(&report.body), [line("k1", 1, "2026-12-05T10:00:00Z")]);
}

#[test]
fn a_refused_report_is_forgotten_and_its_requests_counted_as_dropped() {
    let mut log = UsageLog::new(WALL);
    log.record("k1");
    log.record("k1");
    let _taken = log.take_report().unwrap();
    log.report_refused();
    assert!(!log.in_flight());
    assert_eq!(log.take_dropped(), 2);
    assert_eq!(log.take_report(), None, "a refused report came back");
}

#[test]
fn a_window_larger_than_one_body_is_split_without_losing_a_key() {
    let mut log = UsageLog::new(WALL);
    let keys = 12_000;
    for n in 0..keys {
        log.record(&format!("key_{n:08}"));
    }
    let mut seen = 0;
    let mut reports = 0;
    while let Some(report) = log.take_report() {
        assert!(
            report.body.len() <= MAX_REPORT_BYTES,
            "a body of {} bytes",
            report.body.len()
        );
        assert_eq!(report.complete, log.pending_keys() == 0);
        seen += lines(&report.body).len();
        reports += 1;
        log.report_delivered();
    }
    assert_eq!(seen, keys, "keys lost or repeated across the split");
    assert!(reports >= 2, "{keys} keys fit in one body");
}

/// A reporter to `apikey_control` on a fresh host.
fn reporter() -> (MockHost, UsageReporter) {
    let host = MockHost::new(&Process::new());
    let source = KeySource {
        cluster: "apikey_control".to_owned(),
        token: TOKEN.to_owned(),
        authority: "apikey-control".to_owned(),
        fleet: None,
    };
    let reporter = UsageReporter::new(&source, &host);
    (host, reporter)
}

/// Ticks every 100 ms until `until_ns` has passed.
fn tick_for(host: &mut MockHost, reporter: &mut UsageReporter, span_ns: u64) {
    let end = host.monotonic_ns + span_ns;
    while host.monotonic_ns < end {
        host.monotonic_ns += SECOND / 10;
        reporter.tick(host);
    }
}

fn answer(host: &mut MockHost, reporter: &mut UsageReporter, status: Option<u32>) -> bool {
    host.http_status = status;
    let token = POST_TOKENS + u32::try_from(host.http_posts.len()).unwrap();
    reporter.on_answer(host, token)
}

#[test]
fn reports_go_at_most_every_ten_seconds_to_the_feed_cluster_with_the_feed_token() {
    let (mut host, mut reporter) = reporter();
    let start = host.monotonic_ns;
    reporter.log().borrow_mut().record("k1");
    let mut sent_at = Vec::new();
    // Uses all along; a report answered as soon as it goes.
    while host.monotonic_ns < start + 35 * SECOND {
        host.monotonic_ns += SECOND / 10;
        reporter.log().borrow_mut().record("k1");
        let before = host.http_posts.len();
        reporter.tick(&mut host);
        if host.http_posts.len() > before {
            sent_at.push((host.monotonic_ns - start) / (SECOND / 10));
            assert!(answer(&mut host, &mut reporter, Some(200)));
        }
    }
    assert_eq!(
        sent_at,
        [100, 200, 300],
        "reports (in tenths of a second from the start)"
    );
    let call = host.http_posts.first().unwrap();
    assert_eq!(
        (
            call.cluster.as_str(),
            call.authority.as_str(),
            call.method.as_str(),
            call.path.as_str(),
            call.content_type.as_str()
        ),
        (
            "apikey_control",
            "apikey-control",
            "POST",
            "/v1/feed/usage",
            "application/x-ndjson"
        )
    );
    assert_eq!(call.authorization, format!("Bearer {TOKEN}"));
    assert_eq!(
        lines(&call.body),
        [line("k1", 101, "2026-11-25T00:00:00Z")],
        "the first report's body"
    );
    assert_eq!(host.process().stat("apikey.usage.reports"), 3);
    assert!(host.http_calls.is_empty(), "a report went out as a GET");
}

#[test]
fn the_last_use_is_the_wall_clock_of_the_last_tick() {
    let (mut host, mut reporter) = reporter();
    host.wall_ns = WALL;
    reporter.tick(&mut host);
    reporter.log().borrow_mut().record("k1");
    host.wall_ns = WALL + 4 * SECOND as i64;
    reporter.tick(&mut host);
    reporter.log().borrow_mut().record("k1");
    host.wall_ns = WALL + 9 * SECOND as i64;
    tick_for(&mut host, &mut reporter, 10 * SECOND);
    assert_eq!(
        lines(&host.http_posts.last().unwrap().body),
        [line("k1", 2, "2026-12-05T10:00:04Z")]
    );
}

#[test]
fn nothing_used_nothing_sent() {
    let (mut host, mut reporter) = reporter();
    tick_for(&mut host, &mut reporter, 60 * SECOND);
    assert!(host.http_posts.is_empty(), "an empty report was sent");
}

#[test]
fn a_report_the_service_did_not_take_is_retried_with_the_next_one() {
    for failure in [None, Some(503), Some(401)] {
        let (mut host, mut reporter) = reporter();
        reporter.log().borrow_mut().record("k1");
        tick_for(&mut host, &mut reporter, 10 * SECOND);
        assert_eq!(host.http_posts.len(), 1, "{failure:?}: no first report");
        assert!(answer(&mut host, &mut reporter, failure));
        assert_eq!(
            host.process().stat("apikey.usage.failures"),
            1,
            "{failure:?}"
        );
        assert!(
            host.logged(
                LogLevel::Warn,
                "usage: report to cluster \"apikey_control\" failed"
            ),
            "{failure:?}: no log line: {:?}",
            host.logs
        );
        assert!(
            host.logs.iter().all(|(_, line)| !line.contains(TOKEN)),
            "the token was logged"
        );
        reporter.log().borrow_mut().record("k1");
        reporter.log().borrow_mut().record("k2");
        tick_for(&mut host, &mut reporter, 10 * SECOND);
        assert_eq!(host.http_posts.len(), 2, "{failure:?}: no retry");
        assert_eq!(
            lines(&host.http_posts.last().unwrap().body),
            [
                line("k1", 2, "2026-11-25T00:00:00Z"),
                line("k2", 1, "2026-11-25T00:00:00Z")
            ],
            "{failure:?}: the retry does not hold the failed report's counts"
        );
        assert!(answer(&mut host, &mut reporter, Some(200)));
        assert_eq!(host.process().stat("apikey.usage.reports"), 1);
    }
}

#[test]
fn a_report_without_an_answer_by_its_deadline_is_retried() {
    let (mut host, mut reporter) = reporter();
    reporter.log().borrow_mut().record("k1");
    tick_for(&mut host, &mut reporter, 10 * SECOND);
    assert_eq!(host.http_posts.len(), 1);
    tick_for(&mut host, &mut reporter, 10 * SECOND);
    assert_eq!(host.process().stat("apikey.usage.failures"), 1);
    assert_eq!(host.http_posts.len(), 2, "no retry after the deadline");
    assert_eq!(
        lines(&host.http_posts.last().unwrap().body),
        [line("k1", 1, "2026-11-25T00:00:00Z")]
    );
    // The late answer to the first report is not taken for the second's.
    assert!(!reporter.on_answer(&mut host, POST_TOKENS + 1));
}

#[test]
fn a_report_the_service_refused_is_dropped_and_counted() {
    let (mut host, mut reporter) = reporter();
    for _ in 0..3 {
        reporter.log().borrow_mut().record("k1");
    }
    tick_for(&mut host, &mut reporter, 10 * SECOND);
    assert!(answer(&mut host, &mut reporter, Some(400)));
    reporter.tick(&mut host);
    assert_eq!(host.process().stat("apikey.usage.dropped"), 3);
    assert_eq!(host.process().stat("apikey.usage.failures"), 1);
    tick_for(&mut host, &mut reporter, 30 * SECOND);
    assert_eq!(host.http_posts.len(), 1, "a refused report was sent again");
}

#[test]
fn an_answer_to_another_call_is_left_alone() {
    let (mut host, mut reporter) = reporter();
    reporter.log().borrow_mut().record("k1");
    tick_for(&mut host, &mut reporter, 10 * SECOND);
    host.http_status = Some(200);
    assert!(
        !reporter.on_answer(&mut host, 1),
        "the feed's answer was taken"
    );
    assert!(reporter.log().borrow().in_flight());
}

// --- through the configuration lifecycle ------------------------------------

const SETTINGS: &str = r#"{"settings":{"rules":[{"path_prefix":"/api","scope":"leads:read"},{"path_prefix":"/admin","scope":"admin:all"}]}}"#;

fn key_line(id: &str, raw: &str, revoked: bool) -> String {
    format!(
        r#"{{"id":"{id}","revoked":{revoked},"scopes":["leads:read"],"sha256":"{}","tenant":"acme"}}"#,
        key_hash(raw)
    )
}

/// A one-page snapshot of `lines` (§10.5), digest included.
fn snapshot(lines: &[String]) -> Vec<u8> {
    let mut sum = [0u8; 32];
    for line in lines {
        let hash: [u8; 32] = Sha256::digest(line.as_bytes()).into();
        let mut carry = 0u16;
        for (out, byte) in sum.iter_mut().rev().zip(hash.iter().rev()) {
            let total = u16::from(*out) + u16::from(*byte) + carry;
            *out = total as u8;
            carry = total >> 8;
        }
    }
    let mut hasher = Sha256::new();
    hasher.update(b"apikey-feed-v1\n");
    hasher.update(Sha256::digest(SETTINGS.as_bytes()));
    hasher.update(sum);
    let digest = const_hex::encode(hasher.finalize());
    let mut body = format!(
        r#"{{"feed":1,"kind":"snapshot","epoch":"ep1","generation":3,"settings":true,"keys":{},"next_cursor":null}}"#,
        lines.len()
    );
    body.push('\n');
    body.push_str(SETTINGS);
    body.push('\n');
    for line in lines {
        body.push_str(line);
        body.push('\n');
    }
    body.push_str(&format!(
        r#"{{"digest":"{digest}","end":true,"generation":3,"keys_total":{}}}"#,
        lines.len()
    ));
    body.push('\n');
    body.into_bytes()
}

/// A worker following a feed holding `good` (valid) and `gone` (revoked).
fn following_worker() -> (Worker, Configuration) {
    let mut worker = Worker::new(&Process::new());
    let source = format!(
        r#"{{"key_source": {{"cluster": "apikey_control", "token": "{TOKEN}", "authority": "apikey-control"}}}}"#
    );
    let (mut configuration, accepted) = worker.configure(&source);
    assert!(accepted, "{:?}", worker.host.logs);
    // The lease is created on a first tick and counts from the next
    // (live_table::lease).
    for _ in 0..2 {
        worker.host.monotonic_ns += 100_000_000;
        configuration.tick(&mut worker.host, &mut worker.vm);
    }
    let body = snapshot(&[
        key_line("good", "sk_good", false),
        key_line("gone", "sk_gone", true),
    ]);
    worker.host.http_status = Some(200);
    worker.host.http_body = body.clone();
    let token = u32::try_from(worker.host.http_calls.len()).unwrap();
    configuration.on_http_answer(&mut worker.host, &mut worker.vm, token, body.len());
    assert_eq!(
        worker.answer(&configuration, "sk_good"),
        None,
        "the table is not served: {:?}",
        worker.host.logs
    );
    (worker, configuration)
}

fn ticks(worker: &mut Worker, configuration: &mut Configuration, span_ns: u64) {
    let end = worker.host.monotonic_ns + span_ns;
    while worker.host.monotonic_ns < end {
        worker.host.monotonic_ns += SECOND / 10;
        worker.tick(configuration);
    }
}

#[test]
fn a_request_counts_once_its_key_authenticated_allowed_or_not() {
    let (mut worker, mut configuration) = following_worker();
    let key = |raw: &'static str| [("x-api-key", raw)];
    // `following_worker` made one allowed request already.
    worker.answer(&configuration, "sk_good");
    let (_, _) = worker.request(&configuration, "GET", "/admin/x", &key("sk_good"));
    assert_eq!(
        worker.host.reply_code().as_deref(),
        Some("insufficient_scope")
    );
    assert_eq!(
        worker.answer(&configuration, "sk_gone").as_deref(),
        Some("key_revoked")
    );
    assert_eq!(
        worker.answer(&configuration, "sk_unknown_key").as_deref(),
        Some("invalid_key")
    );
    let feed_calls = worker.host.http_calls.len();
    ticks(&mut worker, &mut configuration, 10 * SECOND);
    let report = worker.host.http_posts.last().expect("no usage report");
    assert_eq!(
        lines(&report.body),
        [line("good", 3, "2026-11-25T00:00:00Z")],
        "counted: the two allowed and the scope-denied request of a valid key, not a revoked or unknown one"
    );
    // Its answer goes to the reporter, not to the feed's follower.
    worker.host.http_status = Some(200);
    let token = POST_TOKENS + u32::try_from(worker.host.http_posts.len()).unwrap();
    configuration.on_http_answer(&mut worker.host, &mut worker.vm, token, 0);
    let process = worker.host.process();
    assert_eq!(
        process.stat("apikey.usage.reports"),
        1,
        "{:?}",
        process.stats()
    );
    assert_eq!(
        process.stat("apikey.key_source.failures"),
        0,
        "{:?}",
        process.stats()
    );
    assert_eq!(
        worker.host.http_calls.len(),
        feed_calls,
        "the usage answer made the follower call again"
    );
}

#[test]
fn a_configuration_without_key_source_reports_nothing() {
    let mut worker = Worker::new(&Process::new());
    let (mut configuration, accepted) = worker.configure(&config_with("", &[("k1", "sk_one")]));
    assert!(accepted);
    assert!(
        configuration.usage_log().is_none(),
        "an ECDS table has a usage log"
    );
    assert_eq!(worker.answer(&configuration, "sk_one"), None);
    ticks(&mut worker, &mut configuration, 20 * SECOND);
    assert!(
        worker.host.http_posts.is_empty(),
        "an ECDS configuration sent a report"
    );
}
