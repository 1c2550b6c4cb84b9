//! The follower against a fake feed that speaks §10.5 as the service does,
//! driven through the configuration lifecycle on a [`MockHost`].

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use super::*;
use crate::config::Config;
use crate::config_lifecycle::Configuration;
use crate::mock_host::{key_hash, Process, Worker};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const TOKEN: &str = "feed_secret_token";
const SOURCE: &str = r#"{"key_source": {"cluster": "apikey_control", "token": "feed_secret_token", "authority": "apikey-control"}}"#;
const SETTINGS: &str = r#"{"settings":{"rules":[{"path_prefix":"/api","scope":"leads:read"}]}}"#;

/// The service's side of the feed, computed independently of the client.
struct FakeFeed {
    epoch: String,
    generation: u64,
    settings: String,
    keys: BTreeMap<String, String>,
}

fn key_line(id: &str, raw: &str, revoked: bool) -> String {
    format!(
        r#"{{"id":"{id}","revoked":{revoked},"scopes":["leads:read"],"sha256":"{}","tenant":"acme"}}"#,
        key_hash(raw)
    )
}

impl FakeFeed {
    fn new(keys: &[(&str, &str)]) -> Self {
        Self {
            epoch: "ep0123".into(),
            generation: 7,
            settings: SETTINGS.to_owned(),
            keys: keys
                .iter()
                .map(|(id, raw)| ((*id).to_owned(), key_line(id, raw, false)))
                .collect(),
        }
    }

    /// Python's `sum(int.from_bytes(sha256(line))) % 2**256`, on u64 limbs.
    fn digest(&self) -> String {
        let mut limbs = [0u64; 4];
        for line in self.keys.values() {
            let hash: [u8; 32] = Sha256::digest(line.as_bytes()).into();
            let mut carry = 0u128;
            for limb in (0..4).rev() {
                let part = u64::from_be_bytes(hash[limb * 8..limb * 8 + 8].try_into().unwrap());
                let total = u128::from(limbs[limb]) + u128::from(part) + carry;
                limbs[limb] = total as u64;
                carry = total >> 64;
            }
        }
        let mut hasher = Sha256::new();
        hasher.update(b"apikey-feed-v1\n");
        hasher.update(Sha256::digest(self.settings.as_bytes()));
        for limb in limbs {
            hasher.update(limb.to_be_bytes());
        }
        const_hex::encode(hasher.finalize())
    }

    fn answer(&self, kind: &str, settings: bool, lines: &[&String], extra: &str) -> Vec<u8> {
        let mut body = format!(
            r#"{{"feed":1,"kind":"{kind}","epoch":"{}","generation":{},"settings":{settings},"keys":{}{extra}}}"#,
            self.epoch,
            self.generation,
            lines.len()
        );
        body.push('\n');
        if settings {
            body.push_str(&self.settings);
            body.push('\n');
        }
        for line in lines {
            body.push_str(line);
            body.push('\n');
        }
        body.push_str(&format!(
            r#"{{"digest":"{}","end":true,"generation":{},"keys_total":{}}}"#,
            self.digest(),
            self.generation,
            self.keys.len()
        ));
        body.push('\n');
        body.into_bytes()
    }

    /// The snapshot's pages of `limit` keys.
    fn pages(&self, limit: usize) -> Vec<Vec<u8>> {
        let lines: Vec<&String> = self.keys.values().collect();
        let chunks: Vec<&[&String]> = lines.chunks(limit).collect();
        (0..chunks.len())
            .map(|index| {
                let next = if index + 1 < chunks.len() {
                    format!(r#""s{}""#, index + 1)
                } else {
                    "null".to_owned()
                };
                self.answer(
                    "snapshot",
                    index == 0,
                    chunks[index],
                    &format!(r#","next_cursor":{next}"#),
                )
            })
            .collect()
    }

    fn changes(&self, ids: &[&str]) -> Vec<u8> {
        let lines: Vec<&String> = ids.iter().map(|id| &self.keys[*id]).collect();
        self.answer("changes", false, &lines, "")
    }

    /// The changes since the settings were stored, with them.
    fn settings_changed(&self) -> Vec<u8> {
        self.answer("changes", true, &[], "")
    }
}

/// A worker following the feed, with its first request made: the lease
/// it created at configure time counts from its next tick.
fn following(process: &std::rc::Rc<Process>) -> (Worker, Configuration) {
    let mut worker = Worker::new(process);
    let (mut configuration, accepted) = worker.configure(SOURCE);
    assert!(
        accepted,
        "key_source configuration refused: {:?}",
        worker.host.logs
    );
    assert!(
        worker.host.http_calls.is_empty(),
        "a VM fetched before its lease was confirmed"
    );
    // The lease is created on a first tick and counts from the next.
    for _ in 0..2 {
        worker.host.monotonic_ns += 100_000_000;
        worker.tick(&mut configuration);
    }
    (worker, configuration)
}

/// Answers the last call with `status` and `body`.
fn answer(
    worker: &mut Worker,
    configuration: &mut Configuration,
    status: Option<u32>,
    body: &[u8],
) {
    worker.host.http_status = status;
    worker.host.http_body = body.to_vec();
    let token = u32::try_from(worker.host.http_calls.len()).unwrap();
    configuration.on_http_answer(&mut worker.host, &mut worker.vm, token, body.len());
}

/// The feed token is a secret: no log line may carry it.
fn assert_token_never_logged(worker: &Worker) {
    assert!(
        worker
            .host
            .logs
            .iter()
            .all(|(_, line)| !line.contains(TOKEN)),
        "the token was logged"
    );
}

fn last_path(worker: &Worker) -> String {
    worker
        .host
        .http_calls
        .last()
        .map(|call| call.path.clone())
        .unwrap_or_default()
}

fn serve_snapshot(worker: &mut Worker, configuration: &mut Configuration, feed: &FakeFeed) {
    for page in feed.pages(2) {
        answer(worker, configuration, Some(200), &page);
    }
}

#[test]
fn a_snapshot_in_pages_is_served_only_once_complete_then_followed() {
    let process = Process::new();
    let (mut worker, mut configuration) = following(&process);
    let feed = FakeFeed::new(&[("k1", "sk_one"), ("k2", "sk_two"), ("k3", "sk_three")]);
    let first = worker
        .host
        .http_calls
        .first()
        .cloned()
        .expect("no first feed request");
    assert_eq!(first.cluster, "apikey_control");
    assert_eq!(first.authority, "apikey-control");
    assert_eq!(first.authorization, format!("Bearer {TOKEN}"));
    assert_eq!(first.path, "/v1/feed/snapshot?limit=10000");
    assert_eq!(
        worker.answer(&configuration, "sk_one").as_deref(),
        Some("not_configured")
    );

    let pages = feed.pages(2);
    answer(&mut worker, &mut configuration, Some(200), &pages[0]);
    assert_eq!(
        last_path(&worker),
        "/v1/feed/snapshot?limit=10000&cursor=s1",
        "second page not asked"
    );
    assert_eq!(
        worker.answer(&configuration, "sk_one").as_deref(),
        Some("not_configured"),
        "a partial snapshot was served"
    );
    answer(&mut worker, &mut configuration, Some(200), &pages[1]);
    for raw in ["sk_one", "sk_two", "sk_three"] {
        assert_eq!(
            worker.answer(&configuration, raw),
            None,
            "{raw} not allowed after the snapshot"
        );
    }
    assert_eq!(
        worker.answer(&configuration, "sk_other").as_deref(),
        Some("invalid_key")
    );
    assert_eq!(
        last_path(&worker),
        "/v1/feed/changes?since=7&epoch=ep0123&wait=25",
        "not long-polling"
    );
    assert_eq!(process.stat("apikey.key_source.tables"), 1);
    assert_token_never_logged(&worker);
}

#[test]
fn changes_are_applied_and_a_heartbeat_changes_nothing() {
    let process = Process::new();
    let (mut worker, mut configuration) = following(&process);
    let mut feed = FakeFeed::new(&[("k1", "sk_one"), ("k2", "sk_two")]);
    serve_snapshot(&mut worker, &mut configuration, &feed);

    feed.generation = 9;
    feed.keys
        .insert("k1".into(), key_line("k1", "sk_one", true));
    feed.keys
        .insert("k4".into(), key_line("k4", "sk_four", false));
    answer(
        &mut worker,
        &mut configuration,
        Some(200),
        &feed.changes(&["k1", "k4"]),
    );
    assert_eq!(
        worker.answer(&configuration, "sk_one").as_deref(),
        Some("key_revoked"),
        "{:#?}",
        worker.host.logs
    );
    assert_eq!(
        worker.answer(&configuration, "sk_four"),
        None,
        "a created key not allowed"
    );
    assert_eq!(
        worker.answer(&configuration, "sk_two"),
        None,
        "an unchanged key lost"
    );
    assert_eq!(
        last_path(&worker),
        "/v1/feed/changes?since=9&epoch=ep0123&wait=25"
    );

    answer(
        &mut worker,
        &mut configuration,
        Some(200),
        &feed.changes(&[]),
    );
    assert_eq!(
        process.stat("apikey.key_source.tables"),
        2,
        "a heartbeat republished the table"
    );
    assert_eq!(
        last_path(&worker),
        "/v1/feed/changes?since=9&epoch=ep0123&wait=25"
    );
}

#[test]
fn pages_across_writes_are_completed_by_the_changes_since_the_first_page() {
    let process = Process::new();
    let (mut worker, mut configuration) = following(&process);
    let mut feed = FakeFeed::new(&[("k1", "sk_one"), ("k2", "sk_two"), ("k3", "sk_three")]);
    let pages = feed.pages(2);
    answer(&mut worker, &mut configuration, Some(200), &pages[0]);
    feed.generation = 8;
    feed.keys
        .insert("k1".into(), key_line("k1", "sk_one", true));
    answer(
        &mut worker,
        &mut configuration,
        Some(200),
        &feed.pages(2)[1],
    );
    assert_eq!(
        last_path(&worker),
        "/v1/feed/changes?since=7&epoch=ep0123&wait=0"
    );
    assert_eq!(
        worker.answer(&configuration, "sk_two").as_deref(),
        Some("not_configured")
    );
    answer(
        &mut worker,
        &mut configuration,
        Some(200),
        &feed.changes(&["k1"]),
    );
    assert_eq!(
        worker.answer(&configuration, "sk_one").as_deref(),
        Some("key_revoked")
    );
    assert_eq!(worker.answer(&configuration, "sk_three"), None);
}

#[test]
fn a_cut_or_corrupt_answer_is_never_served_and_the_snapshot_restarts() {
    let process = Process::new();
    let (mut worker, mut configuration) = following(&process);
    let feed = FakeFeed::new(&[("k1", "sk_one"), ("k2", "sk_two")]);
    let page = feed.pages(10).remove(0);

    // Cut short: the last line and trailer missing.
    let cut = &page[..page.len() - 40];
    answer(&mut worker, &mut configuration, Some(200), cut);
    assert_eq!(
        worker.answer(&configuration, "sk_one").as_deref(),
        Some("not_configured")
    );
    assert_eq!(process.stat("apikey.key_source.failures"), 1);

    // Corrupt: one byte of a key line changed, so the digest differs.
    let corrupt = String::from_utf8(page.clone())
        .unwrap()
        .replace("\"tenant\":\"acme\"", "\"tenant\":\"acmf\"");
    worker.host.monotonic_ns += 10_000_000_000;
    worker.tick(&mut configuration);
    assert_eq!(
        last_path(&worker),
        "/v1/feed/snapshot?limit=10000",
        "the snapshot did not restart"
    );
    answer(
        &mut worker,
        &mut configuration,
        Some(200),
        corrupt.as_bytes(),
    );
    assert_eq!(
        worker.answer(&configuration, "sk_one").as_deref(),
        Some("not_configured"),
        "corrupt table served"
    );
    assert_eq!(process.stat("apikey.key_source.failures"), 2);

    // A corrupt change after a good table: the last table stays.
    worker.host.monotonic_ns += 10_000_000_000;
    worker.tick(&mut configuration);
    answer(&mut worker, &mut configuration, Some(200), &page);
    assert_eq!(worker.answer(&configuration, "sk_one"), None);
    let mut revoked = FakeFeed::new(&[("k1", "sk_one"), ("k2", "sk_two")]);
    revoked.generation = 8;
    revoked
        .keys
        .insert("k1".into(), key_line("k1", "sk_one", true));
    let mut change = revoked.changes(&["k1"]);
    let at = change.len() - 30;
    change[at] ^= 1;
    answer(&mut worker, &mut configuration, Some(200), &change);
    assert_eq!(
        worker.answer(&configuration, "sk_one"),
        None,
        "a corrupt change was applied"
    );
    worker.host.monotonic_ns += 10_000_000_000;
    worker.tick(&mut configuration);
    assert_eq!(last_path(&worker), "/v1/feed/snapshot?limit=10000");
}

#[test]
fn an_outage_keeps_the_last_table_and_retries_with_backoff() {
    let process = Process::new();
    let (mut worker, mut configuration) = following(&process);
    let feed = FakeFeed::new(&[("k1", "sk_one")]);
    serve_snapshot(&mut worker, &mut configuration, &feed);
    let calls = worker.host.http_calls.len();

    answer(&mut worker, &mut configuration, None, b"");
    assert_eq!(
        worker.answer(&configuration, "sk_one"),
        None,
        "the last table was dropped"
    );
    assert_eq!(process.stat("apikey.key_source.failures"), 1);
    assert!(
        worker
            .host
            .logs
            .iter()
            .any(|(level, line)| *level == LogLevel::Warn
                && line.contains("feed from cluster \"apikey_control\" failed")
                && line.contains("generation 7 stays served")),
        "no log line for the outage: {:?}",
        worker.host.logs
    );
    let mut delays = Vec::new();
    for _ in 0..8 {
        let start = worker.host.monotonic_ns;
        while worker.host.http_calls.len() == calls + delays.len() {
            worker.host.monotonic_ns += 50_000_000;
            worker.tick(&mut configuration);
        }
        delays.push((worker.host.monotonic_ns - start) / 1_000_000);
        answer(&mut worker, &mut configuration, Some(503), b"");
    }
    assert_eq!(
        delays,
        [200, 400, 800, 1600, 3200, 5000, 5000, 5000],
        "backoff (ms)"
    );
    assert_token_never_logged(&worker);

    // Back: changes since the held generation, and the backoff resets.
    while worker.host.http_calls.len() == calls + delays.len() {
        worker.host.monotonic_ns += 50_000_000;
        worker.tick(&mut configuration);
    }
    assert_eq!(
        last_path(&worker),
        "/v1/feed/changes?since=7&epoch=ep0123&wait=25"
    );
    answer(
        &mut worker,
        &mut configuration,
        Some(200),
        &feed.changes(&[]),
    );
    assert_eq!(worker.answer(&configuration, "sk_one"), None);
}

#[test]
fn a_410_takes_a_new_snapshot_keeping_the_last_table_meanwhile() {
    let process = Process::new();
    let (mut worker, mut configuration) = following(&process);
    let feed = FakeFeed::new(&[("k1", "sk_one")]);
    serve_snapshot(&mut worker, &mut configuration, &feed);
    answer(
        &mut worker,
        &mut configuration,
        Some(410),
        br#"{"error":{}}"#,
    );
    assert_eq!(last_path(&worker), "/v1/feed/snapshot?limit=10000");
    assert_eq!(worker.answer(&configuration, "sk_one"), None);
}

#[test]
fn key_source_is_validated_naming_the_field() {
    let refused = |text: &str| Config::parse(text.as_bytes()).unwrap_err().to_string();
    assert_eq!(
        refused(r#"{"key_source": {"cluster": "c", "token": "t"}, "keys": []}"#),
        "keys: not allowed beside `key_source`: settings and keys come from the key service"
    );
    assert!(
        refused(r#"{"key_source": {"cluster": "c", "token": "t"}, "plans": {}}"#)
            .starts_with("plans:")
    );
    assert!(
        refused(r#"{"key_source": {"cluster": "c", "token": "t"}, "rules": []}"#)
            .starts_with("rules:")
    );
    assert_eq!(
        refused(r#"{"key_source": {"token": "t"}}"#),
        "key_source: missing field `cluster`"
    );
    assert_eq!(
        refused(r#"{"key_source": {"cluster": "c"}}"#),
        "key_source: missing field `token`"
    );
    assert!(refused(r#"{"key_source": {"cluster": "c", "token": ""}}"#)
        .starts_with("key_source.token:"));
    assert!(
        refused(r#"{"key_source": {"cluster": "a b", "token": "t"}}"#)
            .starts_with("key_source.cluster:")
    );
    assert!(
        refused(r#"{"key_source": {"cluster": "c", "token": "t", "authority": "x/y"}}"#)
            .starts_with("key_source.authority:")
    );
    assert!(
        refused(r#"{"key_source": {"cluster": "c", "token": "t", "tls": true}}"#).contains("tls")
    );
    let secret = refused(r#"{"key_source": {"cluster": "c", "token": "sec ret"}}"#);
    assert!(
        !secret.contains("sec ret"),
        "the token was echoed: {secret}"
    );

    let config = Config::parse(
        br#"{"key_source": {"cluster": "apikey_control", "token": "t"},
             "fleet": {"cluster": "rls", "domain": "apikey"}}"#,
    )
    .unwrap()
    .unwrap();
    let source = config.key_source.expect("key_source not kept");
    assert_eq!(
        source.authority, "apikey_control",
        "authority defaults to the cluster"
    );
    assert!(source.fleet.is_some(), "fleet not carried into the tables");
}

#[test]
fn the_fleet_beside_key_source_travels_into_every_table() {
    let process = Process::new();
    let mut worker = Worker::new(&process);
    let (mut configuration, accepted) = worker.configure(
        r#"{"key_source": {"cluster": "apikey_control", "token": "feed_secret_token"},
            "fleet": {"cluster": "rls", "domain": "apikey"}}"#,
    );
    assert!(accepted);
    // The lease is created on a first tick and counts from the next.
    for _ in 0..2 {
        worker.host.monotonic_ns += 100_000_000;
        worker.tick(&mut configuration);
    }
    let feed = FakeFeed::new(&[("k1", "sk_one")]);
    serve_snapshot(&mut worker, &mut configuration, &feed);
    let gateway = configuration.gateway(&worker.vm).expect("no table served");
    assert!(gateway.fleet().is_some(), "the fleet was lost");
}

/// A second worker VM of `process`, configured and ticked once.
fn second_worker(process: &std::rc::Rc<Process>) -> (Worker, Configuration) {
    let mut worker = Worker::new(process);
    let (mut configuration, accepted) = worker.configure(SOURCE);
    assert!(accepted);
    // The lease is created on a first tick and counts from the next.
    for _ in 0..2 {
        worker.host.monotonic_ns += 100_000_000;
        worker.tick(&mut configuration);
    }
    (worker, configuration)
}

#[test]
fn one_vm_fetches_for_the_process_and_every_worker_serves_its_table() {
    let process = Process::new();
    let (mut fetcher, mut fetching) = following(&process);
    let (mut other, mut watching) = second_worker(&process);
    assert!(
        other.host.http_calls.is_empty(),
        "a second VM called the key service"
    );
    let mut feed = FakeFeed::new(&[("k1", "sk_one"), ("k2", "sk_two")]);
    serve_snapshot(&mut fetcher, &mut fetching, &feed);
    assert_eq!(
        other.answer(&watching, "sk_one").as_deref(),
        Some("not_configured"),
        "served before its tick"
    );
    other.tick(&mut watching);
    assert_eq!(
        other.answer(&watching, "sk_one"),
        None,
        "the table is not shared"
    );

    feed.generation = 8;
    feed.keys
        .insert("k1".into(), key_line("k1", "sk_one", true));
    answer(
        &mut fetcher,
        &mut fetching,
        Some(200),
        &feed.changes(&["k1"]),
    );
    // A worker may still hold the record in its cache until its tick.
    other.tick(&mut watching);
    assert_eq!(
        other.answer(&watching, "sk_one").as_deref(),
        Some("key_revoked"),
        "a revocation did not reach the other worker on its tick"
    );
    assert_eq!(other.answer(&watching, "sk_two"), None);
    // A VM configured after the table exists serves it at once.
    let mut late = Worker::new(&process);
    let (late_configuration, _) = late.configure(SOURCE);
    assert_eq!(late.answer(&late_configuration, "sk_two"), None);
}

#[test]
fn a_quiet_fetcher_is_replaced_and_the_table_keeps_serving() {
    let process = Process::new();
    let (mut fetcher, mut fetching) = following(&process);
    let (mut other, mut watching) = second_worker(&process);
    let feed = FakeFeed::new(&[("k1", "sk_one")]);
    serve_snapshot(&mut fetcher, &mut fetching, &feed);
    other.tick(&mut watching);

    // The fetcher's VM stops ticking (trapped); its lease goes stale.
    other.host.monotonic_ns += crate::live_table::lease::STALE_NS;
    other.tick(&mut watching);
    assert_eq!(
        last_path(&other),
        "/v1/feed/snapshot?limit=10000",
        "the lease was not taken over"
    );
    assert_eq!(
        other.answer(&watching, "sk_one"),
        None,
        "the table was dropped meanwhile"
    );
    serve_snapshot(&mut other, &mut watching, &feed);
    assert_eq!(other.answer(&watching, "sk_one"), None);

    // The old fetcher comes back: it follows no more.
    fetcher.host.monotonic_ns = other.host.monotonic_ns;
    let calls = fetcher.host.http_calls.len();
    fetcher.host.monotonic_ns += 10_000_000_000;
    fetcher.tick(&mut fetching);
    assert_eq!(fetcher.host.http_calls.len(), calls, "two VMs follow");
    assert_eq!(fetcher.answer(&fetching, "sk_one"), None);
}

#[test]
fn a_change_rewrites_only_the_shards_it_touches() {
    let process = Process::new();
    let (mut worker, mut configuration) = following(&process);
    let keys: Vec<(String, String)> = (0..2000)
        .map(|i| (format!("k{i}"), format!("sk_{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = keys.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut feed = FakeFeed::new(&refs);
    for page in feed.pages(500) {
        answer(&mut worker, &mut configuration, Some(200), &page);
    }
    let before = process.store.inner.writes();
    feed.generation = 8;
    feed.keys.insert("k5".into(), key_line("k5", "sk_5", true));
    answer(
        &mut worker,
        &mut configuration,
        Some(200),
        &feed.changes(&["k5"]),
    );
    let writes = process.store.inner.writes() - before;
    assert!(
        writes <= 4,
        "{writes} shared-data writes for one revocation in 2,000 keys \
         (expected a shard, the head, and the lease renewed on the answer and before the write)"
    );
    assert_eq!(
        worker.answer(&configuration, "sk_5").as_deref(),
        Some("key_revoked")
    );
    assert_eq!(worker.answer(&configuration, "sk_6"), None);
}

#[test]
fn a_refused_key_line_leaves_only_that_key_out() {
    let process = Process::new();
    let (mut worker, mut configuration) = following(&process);
    let mut feed = FakeFeed::new(&[("k1", "sk_one")]);
    feed.keys.insert(
        "k2".into(),
        key_line("k2", "sk_two", false).replace("\"tenant\"", "\"plan\":\"gold\",\"tenant\""),
    );
    serve_snapshot(&mut worker, &mut configuration, &feed);
    assert_eq!(worker.answer(&configuration, "sk_one"), None);
    assert_eq!(
        worker.answer(&configuration, "sk_two").as_deref(),
        Some("invalid_key"),
        "a key on an unknown plan was served"
    );
    assert!(
        worker
            .host
            .logged(LogLevel::Warn, "key \"k2\" left out of the table"),
        "the refusal does not name the key: {:?}",
        worker.host.logs
    );
    assert_eq!(process.stat("apikey.key_source.failures"), 1);
}

#[test]
fn settings_apply_at_once_and_a_plan_change_takes_a_new_snapshot() {
    let process = Process::new();
    let (mut worker, mut configuration) = following(&process);
    let mut feed = FakeFeed::new(&[("k1", "sk_one")]);
    serve_snapshot(&mut worker, &mut configuration, &feed);

    feed.generation = 8;
    feed.settings =
        r#"{"settings":{"rules":[{"path_prefix":"/api","scope":"leads:write"}]}}"#.into();
    answer(
        &mut worker,
        &mut configuration,
        Some(200),
        &feed.settings_changed(),
    );
    assert_eq!(
        worker.answer(&configuration, "sk_one").as_deref(),
        Some("insufficient_scope"),
        "a rule change was not applied at once"
    );

    feed.generation = 9;
    feed.settings = r#"{"settings":{"plans":{"gold":{}},"rules":[]}}"#.into();
    answer(
        &mut worker,
        &mut configuration,
        Some(200),
        &feed.settings_changed(),
    );
    assert_eq!(
        last_path(&worker),
        "/v1/feed/snapshot?limit=10000",
        "a plan change did not take a new snapshot"
    );
    assert_eq!(
        worker.answer(&configuration, "sk_one").as_deref(),
        Some("insufficient_scope"),
        "the table serving was dropped while the new snapshot is taken"
    );
    serve_snapshot(&mut worker, &mut configuration, &feed);
    assert_eq!(worker.answer(&configuration, "sk_one"), None);
}

#[test]
#[ignore = "a timing probe, run by hand: cargo test --release -- --ignored probe"]
fn probe_snapshot_cost() {
    let keys: Vec<(String, String)> = (0..100_000)
        .map(|i| (format!("key_{i:08}"), format!("sk_raw_{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = keys.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let pages = FakeFeed::new(&refs).pages(10_000);
    for _ in 0..5 {
        let process = Process::new();
        let (mut worker, mut configuration) = following(&process);
        let started = std::time::Instant::now();
        for page in &pages {
            answer(&mut worker, &mut configuration, Some(200), page);
        }
        eprintln!("100k keys: {:?}", started.elapsed());
        assert_eq!(worker.answer(&configuration, "sk_raw_5"), None);
    }
}

#[test]
fn the_gateways_fleet_replaces_one_in_the_service_settings() {
    let gateway = Config::parse(br#"{"fleet":{"cluster":"local_rls","domain":"apikey"}}"#)
        .unwrap()
        .unwrap()
        .fleet;
    let line = br#"{"settings":{"fleet":{"cluster":"service_rls","domain":"x"},"rules":[]}}"#;
    let (config, text) = settings_configuration(line, gateway.as_ref()).unwrap();
    assert_eq!(
        config.fleet.map(|fleet| fleet.cluster).as_deref(),
        Some("local_rls"),
        "the service's fleet won"
    );
    let shared = Config::parse(&text).unwrap().unwrap();
    assert_eq!(
        with_gateway_fleet(shared, gateway.as_ref())
            .unwrap()
            .fleet
            .map(|fleet| fleet.cluster)
            .as_deref(),
        Some("local_rls"),
        "a VM reading the shared settings serves another fleet"
    );
    let (config, _) = settings_configuration(line, None).unwrap();
    assert_eq!(
        config.fleet.map(|fleet| fleet.cluster).as_deref(),
        Some("service_rls")
    );
    let twice = br#"{"settings":{"rules":[],"rules":[]}}"#;
    let refused = settings_configuration(twice, gateway.as_ref()).unwrap_err();
    assert!(
        refused.contains("rules"),
        "a field given twice passed: {refused}"
    );
    let odd_period =
        br#"{"settings":{"plans":{"p":{"rate_limits":{"*":{"requests":1,"period_seconds":7}}}}}}"#;
    let refused = settings_configuration(odd_period, gateway.as_ref()).unwrap_err();
    assert!(
        refused.contains("plans.p.rate_limits.*.period_seconds"),
        "a plan the fleet cannot count passed: {refused}"
    );
}

#[test]
#[ignore = "a timing probe, run by hand: cargo test --release -- --ignored probe"]
fn probe_line_steps() {
    let config = Config::parse(br#"{"plans":{"pro":{"scopes":["leads:*"],"rate_limits":{"*":{"requests":600,"period_seconds":60}}}}}"#)
        .unwrap()
        .unwrap();
    let lines: Vec<String> = (0..100_000)
        .map(|i| {
            format!(
                r#"{{"env":"live","id":"key_b{i:08}","plan":"pro","revoked":false,"scopes":["leads:read","leads:write"],"sha256":"{}","tenant":"t{}"}}"#,
                key_hash(&format!("bench-key-{i}")),
                i % 10_000
            )
        })
        .collect();
    let time = |what: &str, step: &dyn Fn(&[u8]) -> usize| {
        let started = std::time::Instant::now();
        let total: usize = lines.iter().map(|line| step(line.as_bytes())).sum();
        eprintln!(
            "{what}: {:?} per line ({total})",
            started.elapsed() / 100_000
        );
    };
    time("sha256", &|line| line_hash(line)[0] as usize);
    time("parse_key", &|line| {
        config.parse_key(line).map_or(0, |key| key.id.len())
    });
    time("parse+encode", &|line| {
        config
            .parse_key(line)
            .map_or(0, |key| key_record::encode(&key, &config.plans, 0).len())
    });
    time("id_key", &|line| {
        id_index::id_key(core::str::from_utf8(&line[20..34]).unwrap())[0] as usize
    });
    time("parse_line+into_record", &|line| {
        let mut refused = Refusals::default();
        parse_line(&config, line).map_or(0, |parsed| {
            parsed.into_record(&config, &mut refused).0.len()
        })
    });
}
