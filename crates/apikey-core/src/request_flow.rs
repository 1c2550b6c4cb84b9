//! One request through the filter, as a small state machine over the
//! [`Host`] port.
//!
//! `on_request_headers` reads the header map once (as bytes), asks the
//! gateway for a decision and either answers with the JSON denial or
//! applies the header edits (forged identity and credential headers out,
//! identity headers in, `:path` normalised) and lets the request go. With a
//! fleet configured, a request its local bucket admitted is paused while
//! the shared rate-limit service is asked (unless that service's circuit is
//! open); `on_fleet_answer` books the answer against the circuit and
//! resumes or denies the request. `on_response_headers` adds the
//! `RateLimit` headers of an allowed request.
//!
//! ```text
//! on_request_headers ── denied ─────────────────────────► local reply (Pause)
//!        │ ├─────────── allowed, no fleet question ─────► Continue
//!        │ └─────────── circuit open / call not made ───► on_failure now
//!        ▼ call made
//!     Waiting ── on_fleet_answer ── OK ─────────────────► resume
//!                                 └ over limit / deny ──► local reply
//! ```
//!
//! With `key_source`, a request whose key authenticated (found, neither
//! revoked nor expired), allowed or not, is counted in the configuration's
//! [`UsageLog`] (contract §8.4): a map update in the VM, nothing more.
//!
//! The audit record and the allowed/denied metric are written only once
//! the forwarding outcome is known, so a request refused because a header
//! edit failed is logged and counted as the 503 it got, never as allowed
//! (contract §7.1).

use std::rc::Rc;

use crate::audit;
use crate::decision::{Decision, Gateway, RequestEditor, RequestHead};
use crate::denial::{Denial, DenialText, ErrorCode, RateLimitReport, Reply};
use crate::fleet::{self, FleetQuery};
use crate::header_map;
use crate::host::{GrpcCall, Host, HostError, LogLevel, Property};
use crate::metrics::{FleetEvent, Metric};
use crate::rls_codec;
use crate::usage::UsageSink;

/// What the proxy does with the request after a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Go on with the request.
    Continue,
    /// Hold it: a local reply was sent, or the fleet is being asked.
    Pause,
}

/// One request's state.
pub struct RequestFlow {
    gateway: Option<Rc<Gateway>>,
    /// `RateLimit` headers for the response, when configured.
    rate_limit: Option<RateLimitReport>,
    /// An allowed request waiting for the fleet's answer.
    waiting: Option<Waiting>,
    /// Where an authenticated key's use is counted (`key_source` only).
    usage: Option<Rc<dyn UsageSink>>,
}

/// What is kept while the fleet's rate-limit service is asked.
struct Waiting {
    gateway: Rc<Gateway>,
    /// Allowed so far (its fleet question taken out).
    decision: Decision,
    query: FleetQuery,
    request_id: Option<Vec<u8>>,
    asked_at_ns: u64,
}

impl RequestFlow {
    /// A request served by `gateway` (`None`: not configured).
    pub fn new(gateway: Option<Rc<Gateway>>) -> Self {
        Self {
            gateway,
            rate_limit: None,
            waiting: None,
            usage: None,
        }
    }

    /// Counts the use of the key this request authenticates with in
    /// `usage` (`None`: nothing to report to): the VM's own log on the
    /// Wasm edge, a hand-off to the reporting thread on the native one.
    #[must_use]
    pub fn with_usage<S: UsageSink + 'static>(mut self, usage: Option<Rc<S>>) -> Self {
        self.usage = usage.map(|usage| usage as Rc<dyn UsageSink>);
        self
    }

    /// Whether the request is paused waiting for the fleet's answer.
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// Decides the request from its headers.
    pub fn on_request_headers<H: Host>(&mut self, host: &mut H) -> Action {
        let buffer = match host.request_headers() {
            Ok(buffer) => buffer,
            Err(error) => {
                return fail_closed(host, &format!("request headers unreadable ({error:?})"))
            }
        };
        let Ok(pairs) = header_map::parse(&buffer) else {
            return fail_closed(host, "request header map malformed");
        };
        let mut request = RequestHead::from_pairs(&pairs);
        let Some(gateway) = self.gateway.clone() else {
            record_audit(host, &audit::not_configured());
            let denial = Denial::new(ErrorCode::NotConfigured);
            return deny(
                host,
                &DenialText::default().render(&denial, request.request_id),
                denial.code,
            );
        };
        if gateway.requires_tls_flag() {
            match host.property(Property::ConnectionTlsVersion) {
                Ok(version) => request.tls = version.is_some_and(|v| !v.is_empty()),
                Err(error) => {
                    return fail_closed(host, &format!("connection unreadable ({error:?})"))
                }
            }
        }
        let reader: &H = host;
        let mut decision = gateway.decide(&request, reader.store(), reader);
        self.count_use(&decision);
        if decision.cas_conflicts > 0 {
            host.increment(Metric::CasConflicts, u64::from(decision.cas_conflicts));
        }
        if decision.contention {
            host.increment(Metric::ContentionDenials, 1);
        }
        let query = match &mut decision.result {
            Ok(allow) => allow.fleet.take(),
            Err(_) => None,
        };
        match query {
            Some(query) => self.ask_fleet(
                host,
                Waiting {
                    gateway,
                    decision,
                    query,
                    request_id: request.request_id.map(<[u8]>::to_vec),
                    asked_at_ns: 0,
                },
            ),
            None => self.conclude(host, &gateway, decision, request.request_id),
        }
    }

    /// Counts the use of a key that authenticated: its record was found and
    /// it is neither revoked nor expired, whatever was decided after (a
    /// scope, plan, tenant or rate-limit denial is still a use of a valid
    /// key, as the seeds' "last used" shows it).
    fn count_use(&self, decision: &Decision) {
        let (Some(usage), Some(id)) = (&self.usage, decision.key_id.as_deref()) else {
            return;
        };
        let refused_key = matches!(
            &decision.result,
            Err(denial) if matches!(denial.code, ErrorCode::KeyRevoked | ErrorCode::KeyExpired)
        );
        if !refused_key {
            usage.record(id);
        }
    }

    /// Applies the fleet's answer to the paused request: `grpc_status` 0
    /// with a body of `response_size` bytes, or a failure. Books the
    /// result against the service's circuit, then resumes the request or
    /// answers it.
    pub fn on_fleet_answer<H: Host>(
        &mut self,
        host: &mut H,
        grpc_status: u32,
        response_size: usize,
    ) {
        let Some(waiting) = self.waiting.take() else {
            return;
        };
        let now = host.monotonic_ns();
        let answer = if grpc_status == 0 {
            host.grpc_response_body(response_size)
                .ok()
                .and_then(|body| rls_codec::decode_response(&body).ok())
        } else {
            None
        };
        let gateway = Rc::clone(&waiting.gateway);
        if let Some(fleet) = gateway.fleet() {
            if FleetQuery::is_success(answer.as_ref()) {
                let _ = fleet::record_result(host.store(), &fleet.cluster, true, now);
            } else {
                let elapsed_ns = now.saturating_sub(waiting.asked_at_ns);
                let timed_out = is_timeout(elapsed_ns, fleet.timeout_ms);
                record_failure(host, &fleet.cluster, now, timed_out);
            }
        }
        if self.settle(host, waiting, answer.as_ref()) == Action::Continue {
            if let Err(error) = host.resume_request() {
                host.log(
                    LogLevel::Critical,
                    &format!("cannot resume the request ({error:?})"),
                );
            }
        }
    }

    /// Adds the `RateLimit` headers of an allowed request, when configured.
    pub fn on_response_headers<H: Host>(&mut self, host: &mut H) -> Action {
        if let Some(report) = self.rate_limit.take() {
            for (name, value) in report.headers() {
                if let Err(error) = host.replace_response_header(name.as_bytes(), value.as_bytes())
                {
                    host.log(LogLevel::Warn, &format!("cannot set {name} ({error:?})"));
                }
            }
        }
        Action::Continue
    }

    /// Forwards or refuses the request as `decision` says, then records and
    /// counts what the client got.
    fn conclude<H: Host>(
        &mut self,
        host: &mut H,
        gateway: &Gateway,
        mut decision: Decision,
        request_id: Option<&[u8]>,
    ) -> Action {
        if let Err(error) = decision.forward(&mut RequestHeaders(host)) {
            // Forwarding with a credential or forged header left in would be
            // worse than failing the request; `forward` made it a 503.
            host.log(
                LogLevel::Warn,
                &format!("header edit failed ({error:?}); request refused"),
            );
        }
        record_audit(host, &audit::record(&decision));
        match decision.result {
            Ok(allow) => {
                self.rate_limit = allow.rate_limit;
                host.increment(Metric::Allowed, 1);
                Action::Continue
            }
            Err(denial) => deny(host, &gateway.render(&denial, request_id), denial.code),
        }
    }

    /// Pauses the request and asks the fleet's service, unless its circuit
    /// is open or the call cannot be made (then `on_failure` decides now).
    fn ask_fleet<H: Host>(&mut self, host: &mut H, mut waiting: Waiting) -> Action {
        let gateway = Rc::clone(&waiting.gateway);
        let Some(fleet) = gateway.fleet() else {
            return self.settle(host, waiting, None);
        };
        let now = host.monotonic_ns();
        if !fleet::read_circuit(host.store(), &fleet.cluster)
            .is_ok_and(|circuit| circuit.allows_call(now))
        {
            host.increment(Metric::Fleet(FleetEvent::SkippedOpenCircuit), 1);
            return self.settle(host, waiting, None);
        }
        host.increment(Metric::Fleet(FleetEvent::Call), 1);
        let called = host.dispatch_grpc(&GrpcCall {
            cluster: &fleet.cluster,
            service: fleet::SERVICE,
            method: fleet::METHOD,
            message: &waiting.query.message,
            timeout_ms: fleet.timeout_ms,
        });
        match called {
            Ok(_token) => {
                waiting.asked_at_ns = now;
                self.waiting = Some(waiting);
                Action::Pause
            }
            Err(error) => {
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "rate-limit service call to {:?} not made ({error:?})",
                        fleet.cluster
                    ),
                );
                record_failure(host, &fleet.cluster, now, false);
                self.settle(host, waiting, None)
            }
        }
    }

    /// Applies the fleet's answer (`None`: a failure) to a waiting request.
    fn settle<H: Host>(
        &mut self,
        host: &mut H,
        mut waiting: Waiting,
        answer: Option<&rls_codec::Answer>,
    ) -> Action {
        let on_failure = waiting
            .gateway
            .fleet()
            .map_or(fleet::OnFailure::Local, |f| f.on_failure);
        if let Some(denial) = waiting.query.outcome(answer, on_failure) {
            if denial.code == ErrorCode::RateLimited {
                host.increment(Metric::Fleet(FleetEvent::OverLimit), 1);
            }
            waiting.decision.result = Err(denial);
        }
        self.conclude(
            host,
            &waiting.gateway,
            waiting.decision,
            waiting.request_id.as_deref(),
        )
    }
}

/// Whether a failed call that took `elapsed_ns` counts as a timeout.
/// Envoy reports a timeout as status 14, like a refused connection, and
/// its timer can fire a little before `timeout_ms` by our clock: a failure
/// at 90% of the timeout or later is counted as one.
fn is_timeout(elapsed_ns: u64, timeout_ms: u32) -> bool {
    let elapsed_ms = elapsed_ns / 1_000_000;
    elapsed_ms.saturating_mul(10) >= u64::from(timeout_ms) * 9
}

/// Counts a failed call and opens the circuit after five in a row.
fn record_failure<H: Host>(host: &mut H, cluster: &str, now: u64, timed_out: bool) {
    host.increment(
        Metric::Fleet(if timed_out {
            FleetEvent::Timeout
        } else {
            FleetEvent::Failure
        }),
        1,
    );
    let before = fleet::read_circuit(host.store(), cluster).unwrap_or_default();
    if let Ok(after) = fleet::record_result(host.store(), cluster, false, now) {
        if after.open_until_ns != before.open_until_ns && !after.allows_call(now) {
            host.increment(Metric::Fleet(FleetEvent::CircuitOpened), 1);
            host.log(
                LogLevel::Warn,
                &format!("rate-limit service {cluster:?} failing: not asked for 10 s"),
            );
        }
    }
}

/// Leaves the audit record for the access log; a failure costs the log
/// line its fields, not the request.
fn record_audit<H: Host>(host: &mut H, record: &str) {
    if let Err(error) = host.set_filter_state(audit::FILTER_STATE_NAME, record.as_bytes()) {
        host.log(
            LogLevel::Warn,
            &format!("cannot record the audit fields ({error:?})"),
        );
    }
}

/// Refuses a request the filter cannot decide or forward safely.
fn fail_closed<H: Host>(host: &mut H, reason: &str) -> Action {
    host.log(LogLevel::Warn, &format!("{reason}; request refused"));
    let denial = Denial::new(ErrorCode::NotConfigured);
    deny(
        host,
        &DenialText::default().render(&denial, None),
        denial.code,
    )
}

/// Sends `reply` and counts the denial.
fn deny<H: Host>(host: &mut H, reply: &Reply, code: ErrorCode) -> Action {
    host.increment(Metric::Denied(code), 1);
    // `%RESPONSE_CODE_DETAILS%` in access logs: `apikey_invalid_key`, …
    if let Err(error) = host.send_local_reply(reply, code.response_details()) {
        host.log(
            LogLevel::Critical,
            &format!("cannot send the denial ({error:?})"),
        );
    }
    Action::Pause
}

/// The request's header map, edited through the host.
struct RequestHeaders<'a, H>(&'a mut H);

impl<H: Host> RequestEditor for RequestHeaders<'_, H> {
    fn remove(&mut self, name: &[u8]) -> Result<(), HostError> {
        self.0.remove_request_header(name)
    }

    fn add(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError> {
        self.0.add_request_header(name, value)
    }

    fn replace(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError> {
        self.0.replace_request_header(name, value)
    }
}

#[cfg(test)]
mod tests;
