//! The request flow driven through a [`MockHost`]: what only the
//! end-to-end tests reached before the flow moved into the core.

use super::*;
use crate::config_lifecycle::Configuration;
use crate::host::LogLevel;
use crate::mock_host::{config_with, Process, Worker};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const KEY: &str = "sk_live_one";
const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000 * MS;
/// `RateLimitResponse { overall_code: OK }`.
const ANSWER_OK: &[u8] = &[0x08, 0x01];
/// `RateLimitResponse { overall_code: OVER_LIMIT }`.
const ANSWER_OVER_LIMIT: &[u8] = &[0x08, 0x02];
/// gRPC `UNAVAILABLE`: how Envoy reports a refused connection and a
/// timeout alike.
const UNAVAILABLE: u32 = 14;

/// A worker serving one key (`k1`) with `extra` top-level fields.
fn serving(extra: &str) -> (Worker, Configuration) {
    let mut worker = Worker::new(&Process::new());
    let (configuration, accepted) = worker.configure(&config_with(extra, &[("k1", KEY)]));
    assert!(accepted, "refused: {:?}", worker.host.logs);
    (worker, configuration)
}

fn fleet(on_failure: &str) -> String {
    format!(
        r#""fleet": {{"cluster": "ratelimit", "domain": "apikey", "timeout_ms": 50, "on_failure": "{on_failure}"}},"#
    )
}

/// Sends a request with the key and returns its flow, paused on the fleet.
fn ask(worker: &mut Worker, configuration: &Configuration) -> RequestFlow {
    let (flow, action) = worker.request(configuration, "GET", "/api/leads", &[("x-api-key", KEY)]);
    assert_eq!(
        action,
        Action::Pause,
        "not paused: reply {:?}",
        worker.host.local_reply
    );
    assert!(flow.is_waiting(), "paused but not waiting for the fleet");
    flow
}

#[test]
fn a_request_before_any_configuration_is_answered_503_not_configured() {
    let mut worker = Worker::new(&Process::new());
    let unconfigured = Configuration::new();
    let (_, action) = worker.request(&unconfigured, "GET", "/api/leads", &[("x-api-key", KEY)]);
    assert_eq!(action, Action::Pause);
    assert_eq!(worker.host.reply_status(), Some(503));
    assert_eq!(worker.host.reply_code().as_deref(), Some("not_configured"));
    assert_eq!(
        worker.host.audited_decision().as_deref(),
        Some("not_configured")
    );
    let process = worker.host.process();
    assert_eq!(
        (
            process.stat("apikey.requests.denied.not_configured"),
            process.stat("apikey.requests.allowed")
        ),
        (1, 0),
        "{:?}",
        process.stats()
    );
}

#[test]
fn an_allowed_request_is_forwarded_with_its_identity_and_audited_reading_the_map_once() {
    let (mut worker, configuration) = serving("");
    let (_, action) = worker.request(
        &configuration,
        "GET",
        "/api/leads",
        &[("x-api-key", KEY), ("x-api-tenant", "forged")],
    );
    let host = &worker.host;
    assert_eq!(action, Action::Continue, "reply: {:?}", host.local_reply);
    assert_eq!(host.request_header("x-api-key"), Vec::<String>::new());
    assert_eq!(host.request_header("x-api-key-id"), ["k1"]);
    assert_eq!(host.request_header("x-api-tenant"), ["acme"]);
    assert_eq!(host.audited_decision().as_deref(), Some("allowed"));
    assert_eq!(host.process().stat("apikey.requests.allowed"), 1);
    // The hot path's host calls: one read of the map, no property.
    assert_eq!(host.header_map_reads.get(), 1, "header map read again");
    assert_eq!(*host.property_reads.borrow(), [], "a property was read");
}

#[test]
fn a_denied_request_gets_its_json_reply_audited_and_counted() {
    let (mut worker, configuration) = serving("");
    assert_eq!(
        worker.answer(&configuration, "sk_live_nobody").as_deref(),
        Some("invalid_key")
    );
    let host = &worker.host;
    assert_eq!(host.reply_status(), Some(401));
    let (reply, _) = host.local_reply.as_ref().unwrap();
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["error"]["code"], "invalid_key", "body: {}", reply.body);
    assert_eq!(host.audited_decision().as_deref(), Some("invalid_key"));
    assert_eq!(host.process().stat("apikey.requests.denied.invalid_key"), 1);
}

#[test]
fn a_refused_header_edit_is_answered_audited_and_counted_as_the_503_it_got() {
    let (mut worker, configuration) = serving("");
    worker.host.refuse_header_edits = Some(HostError::BadArgument);
    let (_, action) = worker.request(&configuration, "GET", "/api/leads", &[("x-api-key", KEY)]);
    let host = &worker.host;
    assert_eq!(action, Action::Pause);
    assert_eq!(host.reply_status(), Some(503));
    assert_eq!(
        host.audited_decision().as_deref(),
        Some("not_configured"),
        "audited as something other than the 503 the client got"
    );
    let process = host.process();
    assert_eq!(
        (
            process.stat("apikey.requests.allowed"),
            process.stat("apikey.requests.denied.not_configured")
        ),
        (0, 1),
        "{:?}",
        process.stats()
    );
    assert!(host.logged(LogLevel::Warn, "header edit failed"));
}

#[test]
fn an_unreadable_or_malformed_header_map_fails_closed() {
    let (mut worker, configuration) = serving("");
    worker.host.header_map_error = Some(HostError::NotFound);
    let (_, action) = worker.request(&configuration, "GET", "/api/leads", &[("x-api-key", KEY)]);
    assert_eq!(
        (action, worker.host.reply_status()),
        (Action::Pause, Some(503))
    );
    worker.host.header_map_error = None;
    worker.host.header_map_bytes = Some(vec![9, 0, 0, 0, 1]);
    let (_, action) = worker.request(&configuration, "GET", "/api/leads", &[("x-api-key", KEY)]);
    assert_eq!(
        (action, worker.host.reply_code().as_deref()),
        (Action::Pause, Some("not_configured"))
    );
    assert!(worker.host.logged(LogLevel::Warn, "header map malformed"));
    assert_eq!(
        worker.host.process().stat("apikey.requests.allowed"),
        0,
        "a request the filter could not read went through"
    );
}

#[test]
fn ratelimit_headers_are_added_to_the_response_only_when_configured_always() {
    let (mut worker, configuration) = serving(r#""rate_limit_headers": "always","#);
    let (mut flow, action) =
        worker.request(&configuration, "GET", "/api/leads", &[("x-api-key", KEY)]);
    assert_eq!(action, Action::Continue);
    assert_eq!(flow.on_response_headers(&mut worker.host), Action::Continue);
    assert_eq!(
        worker.host.response_header("ratelimit-policy"),
        [r#""*";q=100;w=60"#]
    );
    assert_eq!(worker.host.response_header("ratelimit").len(), 1);

    let (mut worker, configuration) = serving("");
    let (mut flow, _) = worker.request(&configuration, "GET", "/api/leads", &[("x-api-key", KEY)]);
    flow.on_response_headers(&mut worker.host);
    assert_eq!(
        worker.host.response_headers,
        [],
        "headers added without rate_limit_headers: always"
    );
}

#[test]
fn https_is_checked_against_the_connection_only_when_required() {
    let (mut worker, configuration) = serving(r#""require_https": true,"#);
    assert_eq!(
        worker.answer(&configuration, KEY).as_deref(),
        Some("https_required")
    );
    assert_eq!(
        *worker.host.property_reads.borrow(),
        [Property::ConnectionTlsVersion]
    );
    worker.host.tls_version = Some(b"TLSv1.3".to_vec());
    assert_eq!(worker.answer(&configuration, KEY), None);
}

#[test]
fn the_fleet_is_asked_while_the_request_waits_and_its_ok_resumes_it() {
    let (mut worker, configuration) = serving(&fleet("local"));
    let mut flow = ask(&mut worker, &configuration);
    let call = worker.host.grpc_calls.last().cloned().unwrap();
    assert_eq!(
        (call.cluster.as_str(), call.method.as_str(), call.timeout_ms),
        (
            "ratelimit",
            "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            50
        )
    );
    // Nothing is recorded or counted before the outcome is known.
    assert_eq!(worker.host.audited_decision(), None);
    assert_eq!(worker.host.process().stat("apikey.requests.allowed"), 0);
    assert_eq!(
        worker.host.request_header("x-api-key-id"),
        Vec::<String>::new()
    );

    worker.host.monotonic_ns += 3 * MS;
    worker.host.grpc_body = ANSWER_OK.to_vec();
    flow.on_fleet_answer(&mut worker.host, 0, ANSWER_OK.len());
    let host = &worker.host;
    assert_eq!(host.resumed, 1, "not resumed; reply {:?}", host.local_reply);
    assert_eq!(host.request_header("x-api-key-id"), ["k1"]);
    assert_eq!(host.audited_decision().as_deref(), Some("allowed"));
    let process = host.process();
    assert_eq!(
        (
            process.stat("apikey.fleet.calls"),
            process.stat("apikey.requests.allowed")
        ),
        (1, 1),
        "{:?}",
        process.stats()
    );
    assert!(!flow.is_waiting());
}

#[test]
fn the_fleets_over_limit_is_answered_429_and_never_resumed() {
    let (mut worker, configuration) = serving(&fleet("local"));
    let mut flow = ask(&mut worker, &configuration);
    worker.host.grpc_body = ANSWER_OVER_LIMIT.to_vec();
    flow.on_fleet_answer(&mut worker.host, 0, ANSWER_OVER_LIMIT.len());
    let host = &worker.host;
    assert_eq!(host.resumed, 0, "an over-limit request resumed");
    assert_eq!(host.reply_status(), Some(429));
    assert_eq!(host.audited_decision().as_deref(), Some("rate_limited"));
    assert_eq!(host.process().stat("apikey.fleet.over_limit"), 1);
}

#[test]
fn five_failures_open_the_circuit_and_ten_seconds_later_a_success_closes_it() {
    let (mut worker, configuration) = serving(&fleet("local"));
    for failure in 1..=5 {
        let mut flow = ask(&mut worker, &configuration);
        worker.host.monotonic_ns += MS;
        flow.on_fleet_answer(&mut worker.host, UNAVAILABLE, 0);
        assert_eq!(
            worker.host.resumed, 1,
            "failure {failure}: on_failure local must let the request through"
        );
    }
    let process = worker.host.process();
    assert_eq!(
        (
            process.stat("apikey.fleet.failures"),
            process.stat("apikey.fleet.circuit_opened")
        ),
        (5, 1),
        "{:?}",
        process.stats()
    );
    assert!(worker.host.logged(LogLevel::Warn, "not asked for 10 s"));

    // Open: the local answer stands at once, without asking.
    let calls = worker.host.grpc_calls.len();
    let (_, action) = worker.request(&configuration, "GET", "/api/leads", &[("x-api-key", KEY)]);
    assert_eq!(action, Action::Continue);
    assert_eq!(worker.host.grpc_calls.len(), calls, "asked an open circuit");
    assert_eq!(
        worker
            .host
            .process()
            .stat("apikey.fleet.skipped_open_circuit"),
        1
    );

    // Ten seconds later it is asked again, and a success closes it.
    worker.host.monotonic_ns += 10 * SECOND;
    let mut flow = ask(&mut worker, &configuration);
    worker.host.grpc_body = ANSWER_OK.to_vec();
    flow.on_fleet_answer(&mut worker.host, 0, ANSWER_OK.len());
    let circuit = fleet::read_circuit(worker.host.store(), "ratelimit").unwrap();
    assert_eq!(
        circuit,
        fleet::Circuit::default(),
        "not closed by a success"
    );
    let flow = ask(&mut worker, &configuration);
    assert!(flow.is_waiting());
    assert_eq!(worker.host.process().stat("apikey.fleet.circuit_opened"), 1);
}

#[test]
fn a_failure_at_ninety_percent_of_the_timeout_counts_as_a_timeout() {
    let (mut worker, configuration) = serving(&fleet("local"));
    // timeout_ms is 50: 44 ms is a failure, 45 ms a timeout.
    for elapsed_ms in [44, 45] {
        let mut flow = ask(&mut worker, &configuration);
        worker.host.monotonic_ns += elapsed_ms * MS;
        flow.on_fleet_answer(&mut worker.host, UNAVAILABLE, 0);
    }
    let process = worker.host.process();
    assert_eq!(
        (
            process.stat("apikey.fleet.failures"),
            process.stat("apikey.fleet.timeouts")
        ),
        (1, 1),
        "{:?}",
        process.stats()
    );
}

#[test]
fn a_call_that_cannot_be_made_follows_on_failure_deny_at_once() {
    let (mut worker, configuration) = serving(&fleet("deny"));
    worker.host.refuse_grpc = Some(HostError::InternalFailure);
    let (flow, action) = worker.request(&configuration, "GET", "/api/leads", &[("x-api-key", KEY)]);
    assert_eq!(action, Action::Pause);
    assert!(!flow.is_waiting(), "waiting for a call never made");
    assert_eq!(worker.host.reply_status(), Some(503));
    assert_eq!(
        worker.host.reply_code().as_deref(),
        Some("rate_limiter_unavailable")
    );
    assert_eq!(worker.host.process().stat("apikey.fleet.failures"), 1);
    assert!(worker.host.logged(LogLevel::Warn, "not made"));
}

#[test]
fn a_forward_refused_after_the_fleet_agreed_is_audited_as_503_and_not_resumed() {
    let (mut worker, configuration) = serving(&fleet("local"));
    let mut flow = ask(&mut worker, &configuration);
    worker.host.refuse_header_edits = Some(HostError::BadArgument);
    worker.host.grpc_body = ANSWER_OK.to_vec();
    flow.on_fleet_answer(&mut worker.host, 0, ANSWER_OK.len());
    let host = &worker.host;
    assert_eq!(host.resumed, 0, "resumed a request that was answered 503");
    assert_eq!(host.reply_status(), Some(503));
    assert_eq!(host.audited_decision().as_deref(), Some("not_configured"));
    assert_eq!(host.process().stat("apikey.requests.allowed"), 0);
}

#[test]
fn an_answer_for_a_request_not_waiting_changes_nothing() {
    let (mut worker, configuration) = serving(&fleet("local"));
    let (mut flow, action) = worker.request(&configuration, "GET", "/healthz", &[]);
    assert_eq!(action, Action::Continue);
    let stats = worker.host.process().stats();
    flow.on_fleet_answer(&mut worker.host, UNAVAILABLE, 0);
    assert_eq!(worker.host.resumed, 0);
    assert_eq!(worker.host.process().stats(), stats);
}

#[test]
fn the_ninety_percent_rule_in_numbers() {
    for (elapsed_ms, timeout_ms, expected) in [
        (0, 50, false),
        (44, 50, false),
        (45, 50, true),
        (1_000, 50, true),
        (899, 1_000, false),
        (900, 1_000, true),
        (0, 0, true),
    ] {
        assert_eq!(
            is_timeout(elapsed_ms * MS, timeout_ms),
            expected,
            "{elapsed_ms} ms of {timeout_ms} ms"
        );
    }
}
