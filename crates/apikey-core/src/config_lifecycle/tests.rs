//! Configurations through their life on one or several VMs of one
//! process, driven through [`MockHost`]s: what only the end-to-end tests
//! reached before the lifecycle moved into the core.

use super::*;
use crate::key_table::{digest, ready_table, STALE_CLAIM_NS};
use crate::mock_host::{config_with, MockHost, Process, Worker};
use crate::request_flow::{Action, RequestFlow};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const ONE: &str = "sk_live_one";
const TWO: &str = "sk_live_two";
const THREE: &str = "sk_live_three";

fn text_one() -> String {
    config_with("", &[("k1", ONE)])
}

fn text_two() -> String {
    config_with("", &[("k1", ONE), ("k2", TWO)])
}

fn text_three() -> String {
    config_with("", &[("k3", THREE)])
}

const BAD: &str = r#"{"keys": [], "rules": [{"path": "/x", "scope": 7}]}"#;

/// Leaves `text`'s table claimed in `process` by a writer that died after
/// its claim: the state another worker finds while a writer is busy.
fn claim_and_die(process: &Rc<Process>, text: &str) {
    let mut writer = Worker::new(process);
    process.store.fail_writes_after(1);
    let (_, accepted) = writer.configure(text);
    process.store.heal();
    assert!(!accepted, "the dying writer published after all");
}

#[test]
fn a_valid_configuration_is_published_counted_and_served_without_a_tick() {
    let process = Process::new();
    let mut worker = Worker::new(&process);
    let (configuration, accepted) = worker.configure(&text_two());
    assert!(accepted, "{:?}", worker.host.logs);
    assert_eq!(worker.answer(&configuration, TWO), None);
    assert_eq!(
        worker.answer(&configuration, THREE).as_deref(),
        Some("invalid_key")
    );
    assert_eq!(
        (
            process.stat("apikey.config.accepted"),
            process.stat("apikey.keys_loaded")
        ),
        (1, 2),
        "{:?}",
        process.stats()
    );
    // Envoy keeps a timer entry for every context that ever set a period:
    // one that never polled must never touch it.
    assert_eq!(
        worker.host.tick_periods_set,
        Vec::<u32>::new(),
        "a tick was set"
    );
    assert!(worker
        .host
        .logged(LogLevel::Info, "configuration loaded: 2 keys"));
}

#[test]
fn another_worker_finds_the_table_ready_and_never_reads_the_whole_text() {
    let process = Process::new();
    let (_, accepted) = Worker::new(&process).configure(&text_two());
    assert!(accepted);
    let mut second = Worker::new(&process);
    let (configuration, accepted) = second.configure(&text_two());
    assert!(accepted, "{:?}", second.host.logs);
    assert_eq!(second.answer(&configuration, TWO), None);
    let reads = second.host.configuration_reads.borrow().clone();
    assert!(
        reads.iter().all(|&(_, size)| size <= HASH_PIECE_BYTES),
        "the ready table's settings were not enough: reads {reads:?}"
    );
    assert_eq!(
        process.stat("apikey.config.accepted"),
        1,
        "counted by a worker that wrote nothing"
    );
}

#[test]
fn a_configuration_is_hashed_in_pieces_of_one_mebibyte() {
    let text = text_one();
    let padded = format!(
        "{}{}}}",
        text.trim_end().trim_end_matches('}'),
        " ".repeat(HASH_PIECE_BYTES + 10)
    );
    let mut worker = Worker::new(&Process::new());
    let (_, accepted) = worker.configure(&padded);
    assert!(accepted, "{:?}", worker.host.logs);
    let reads = worker.host.configuration_reads.borrow().clone();
    assert_eq!(
        reads.get(..2),
        Some(
            [
                (0, HASH_PIECE_BYTES),
                (HASH_PIECE_BYTES, padded.len() - HASH_PIECE_BYTES)
            ]
            .as_slice()
        ),
        "hashed in other pieces: {reads:?}"
    );
    assert_eq!(
        ready_table(
            worker.host.store(),
            &Lineage::of(b"apikey", b"apikey"),
            &digest(padded.as_bytes())
        )
        .unwrap()
        .map(|ready| ready.key_count),
        Some(1),
        "the table is not filed under the digest of the whole text"
    );
}

#[test]
fn an_invalid_configuration_is_refused_and_counted_once_per_process_and_filter() {
    let process = Process::new();
    let mut first = Worker::new(&process);
    let mut second = Worker::new(&process);
    assert!(!first.configure(BAD).1);
    assert!(!second.configure(BAD).1);
    assert_eq!(
        process.stat("apikey.config.refused"),
        1,
        "every worker counted the same refusal"
    );
    assert!(second
        .host
        .logged(LogLevel::Critical, "configuration refused: rules[0].scope"));
    // Another filter refusing the same text is another refusal.
    let mut other = Worker::new(&process);
    other.host = MockHost::new(&process).named("other");
    assert!(!other.configure(BAD).1);
    assert_eq!(process.stat("apikey.config.refused"), 2);
    // A different bad configuration counts again.
    assert!(!first.configure(&BAD.replace("/x", "/y")).1);
    assert_eq!(process.stat("apikey.config.refused"), 3);
}

#[test]
fn an_empty_configuration_is_accepted_and_answers_not_configured() {
    let mut worker = Worker::new(&Process::new());
    let (configuration, accepted) = worker.configure(" \n");
    assert!(accepted);
    assert_eq!(
        worker.answer(&configuration, ONE).as_deref(),
        Some("not_configured")
    );
}

#[test]
fn an_unreadable_configuration_is_refused() {
    let mut worker = Worker::new(&Process::new());
    worker.host.configuration_error = Some(HostError::InternalFailure);
    let (_, accepted) = worker.configure(&text_one());
    assert!(!accepted);
    assert!(worker
        .host
        .logged(LogLevel::Critical, "configuration refused: unreadable"));
    assert_eq!(
        worker.host.process().stat("apikey.config.refused"),
        0,
        "an unreadable configuration is not an invalid one"
    );
}

#[test]
fn a_pending_configuration_serves_the_previous_table_until_it_takes_over_a_dead_claim() {
    let process = Process::new();
    let mut worker = Worker::new(&process);
    let (_previous, accepted) = worker.configure(&text_one());
    assert!(accepted);
    claim_and_die(&process, &text_two());

    let (mut pending, accepted) = worker.configure(&text_two());
    assert!(accepted, "a pending configuration is refused");
    assert!(pending.is_pending());
    assert_eq!(worker.host.tick_period_ms, Some(PENDING_POLL_MS));
    assert_eq!(
        (worker.answer(&pending, ONE), worker.answer(&pending, TWO)),
        (None, Some("invalid_key".to_owned())),
        "a pending configuration serves something else than the previous table"
    );

    // The claim is still fresh: keep waiting.
    worker.host.monotonic_ns += STALE_CLAIM_NS / 2;
    worker.tick(&mut pending);
    assert!(pending.is_pending(), "published over a live writer");

    // Unrenewed for longer than STALE_CLAIM_NS: taken over and served.
    worker.host.monotonic_ns += STALE_CLAIM_NS;
    worker.tick(&mut pending);
    assert!(!pending.is_pending(), "{:?}", worker.host.logs);
    assert_eq!(worker.answer(&pending, TWO), None);
    assert_eq!(
        worker.host.tick_period_ms,
        Some(0),
        "the poll goes on after the table was served"
    );
    assert_eq!(process.stat("apikey.config.accepted"), 2);
    assert_eq!(process.stat("apikey.keys_loaded"), 2);
}

#[test]
fn a_superseded_pending_configuration_stops_polling_and_publishes_nothing() {
    let process = Process::new();
    let mut worker = Worker::new(&process);
    let (_first, _) = worker.configure(&text_one());
    claim_and_die(&process, &text_two());
    let (mut pending, _) = worker.configure(&text_two());
    assert!(pending.is_pending());
    // The operator goes back to the first configuration (A → B → A).
    let (latest, accepted) = worker.configure(&text_one());
    assert!(accepted && !latest.is_pending());

    worker.host.monotonic_ns += 2 * STALE_CLAIM_NS;
    worker.tick(&mut pending);
    assert!(!pending.is_pending());
    assert_eq!(worker.host.tick_period_ms, Some(0), "still polling");
    let lineage = Lineage::of(b"apikey", b"apikey");
    assert_eq!(
        ready_table(
            worker.host.store(),
            &lineage,
            &digest(text_two().as_bytes())
        )
        .unwrap(),
        None,
        "a superseded configuration published its table"
    );
    assert_eq!(worker.answer(&latest, ONE), None);
    assert_eq!(process.stat("apikey.config.accepted"), 1);
}

#[test]
fn two_filters_on_one_vm_keep_their_own_tables_and_pending_gateways() {
    let process = Process::new();
    let mut vm = VmState::new();
    let mut a = MockHost::new(&process).named("a");
    let mut b = MockHost::new(&process).named("b");
    let configure = |host: &mut MockHost, vm: &mut VmState, text: &str| {
        host.configuration = text.as_bytes().to_vec();
        let mut configuration = Configuration::new();
        assert!(
            configuration.configure(host, vm, text.len()),
            "{:?}",
            host.logs
        );
        configuration
    };
    let answer = |host: &mut MockHost, vm: &VmState, configuration: &Configuration, key: &str| {
        host.start_request("GET", "/api/leads", &[("x-api-key", key)]);
        let mut flow = RequestFlow::new(configuration.gateway(vm));
        match flow.on_request_headers(host) {
            Action::Continue => None,
            Action::Pause => host.reply_code(),
        }
    };
    // b first, so that a's slot is the VM's newest.
    let of_b = configure(&mut b, &mut vm, &text_three());
    let of_a = configure(&mut a, &mut vm, &text_one());
    assert_eq!(answer(&mut a, &vm, &of_a, ONE), None);
    assert_eq!(
        answer(&mut a, &vm, &of_a, THREE).as_deref(),
        Some("invalid_key")
    );
    assert_eq!(answer(&mut b, &vm, &of_b, THREE), None);
    assert_eq!(
        answer(&mut b, &vm, &of_b, ONE).as_deref(),
        Some("invalid_key")
    );
    assert_eq!(process.stat("apikey.config.accepted"), 2);

    // b's next configuration waits for another worker: meanwhile b serves
    // b's previous table, never a's newer one.
    let mut dying = MockHost::new(&process).named("b");
    process.store.fail_writes_after(1);
    dying.configuration = text_two().into_bytes();
    assert!(!Configuration::new().configure(&mut dying, &mut VmState::new(), text_two().len()));
    process.store.heal();
    let pending_b = configure(&mut b, &mut vm, &text_two());
    assert!(pending_b.is_pending());
    let _newer_a = configure(&mut a, &mut vm, &text_two());
    assert_eq!(answer(&mut b, &vm, &pending_b, THREE), None);
    assert_eq!(
        answer(&mut b, &vm, &pending_b, TWO).as_deref(),
        Some("invalid_key"),
        "b's pending configuration served a's table"
    );
}

#[test]
fn a_context_that_never_set_a_tick_never_stops_one() {
    let mut worker = Worker::new(&Process::new());
    let (mut configuration, _) = worker.configure(&text_one());
    worker.tick(&mut configuration);
    let mut unconfigured = Configuration::new();
    worker.tick(&mut unconfigured);
    assert_eq!(
        worker.host.tick_periods_set,
        Vec::<u32>::new(),
        "a tick period was set"
    );
}

#[test]
fn a_host_without_plugin_names_warns_and_still_serves() {
    let mut worker = Worker::new(&Process::new());
    worker.host.plugin_name = None;
    let (configuration, accepted) = worker.configure(&text_one());
    assert!(accepted);
    assert!(worker
        .host
        .logged(LogLevel::Warn, "property plugin_name unavailable"));
    assert_eq!(worker.answer(&configuration, ONE), None);
}

#[test]
fn the_lineage_is_logged_with_its_shared_data_prefix() {
    let mut worker = Worker::new(&Process::new());
    worker.configure(&text_one());
    let prefix = Lineage::of(b"apikey", b"apikey").key("");
    assert!(
        worker.host.logged(
            LogLevel::Info,
            &format!(r#"plugin "apikey" (root_id "apikey"): shared-data entries under {prefix}"#)
        ),
        "{:?}",
        worker.host.logs
    );
}
