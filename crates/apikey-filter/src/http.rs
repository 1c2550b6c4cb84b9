//! The HTTP context: one request, decided by the core, applied to Envoy.
//!
//! It reads the request header map in one host call as bytes, asks the
//! gateway for a decision, and either sends the JSON denial or applies the
//! header edits (forged identity and credential headers out, identity
//! headers in, `:path` normalised). With a fleet configured, a request its
//! local bucket admitted is paused while the shared rate-limit service is
//! asked, and resumed or denied when it answers. Nothing here decides
//! anything.

use std::rc::Rc;
use std::time::Duration;

use apikey_core::audit;
use apikey_core::decision::{Decision, Gateway, RequestHead};
use apikey_core::denial::{Denial, DenialText, ErrorCode, RateLimitReport, Reply};
use apikey_core::fleet::{self, FleetQuery};
use apikey_core::header_map;
use apikey_core::rls_codec;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::host::{self, HostClock, Level, RequestHeaders, SharedData};
use crate::metrics::{self, FleetEvent};

/// One request's context.
pub struct RequestContext {
    gateway: Option<Rc<Gateway>>,
    /// `RateLimit` headers for the response, when configured.
    rate_limit: Option<RateLimitReport>,
    /// An allowed request waiting for the fleet's answer.
    waiting: Option<Waiting>,
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

impl RequestContext {
    /// A context serving `gateway` (`None`: not configured).
    pub fn new(gateway: Option<Rc<Gateway>>) -> Self {
        Self {
            gateway,
            rate_limit: None,
            waiting: None,
        }
    }

    fn decide(&mut self) -> Action {
        let buffer = match host::request_headers() {
            Ok(buffer) => buffer,
            Err(error) => return fail_closed(&format!("request headers unreadable ({error:?})")),
        };
        let Ok(pairs) = header_map::parse(&buffer) else {
            return fail_closed("request header map malformed");
        };
        let mut request = RequestHead::from_pairs(&pairs);
        let Some(gateway) = self.gateway.clone() else {
            record_audit(&audit::not_configured());
            let denial = Denial::new(ErrorCode::NotConfigured);
            return deny(
                &DenialText::default().render(&denial, request.request_id),
                denial.code,
            );
        };
        if gateway.requires_tls_flag() {
            match host::downstream_tls() {
                Ok(tls) => request.tls = tls,
                Err(error) => return fail_closed(&format!("connection unreadable ({error:?})")),
            }
        }
        let mut decision = gateway.decide(&request, &SharedData, &HostClock);
        if decision.cas_conflicts > 0 || decision.contention {
            metrics::bucket_contention(decision.cas_conflicts, decision.contention);
        }
        let query = match &mut decision.result {
            Ok(allow) => allow.fleet.take(),
            Err(_) => None,
        };
        match query {
            Some(query) => self.ask_fleet(Waiting {
                gateway,
                decision,
                query,
                request_id: request.request_id.map(<[u8]>::to_vec),
                asked_at_ns: 0,
            }),
            None => self.conclude(&gateway, decision, request.request_id),
        }
    }

    /// Forwards or refuses the request as `decision` says, then records and
    /// counts what the client got: the audit record and the metric are
    /// written only once the forwarding outcome is known, so a request
    /// refused because a header edit failed is logged and counted as the
    /// 503 it received, never as allowed (contract §7.1).
    fn conclude(
        &mut self,
        gateway: &Gateway,
        mut decision: Decision,
        request_id: Option<&[u8]>,
    ) -> Action {
        if let Err(error) = decision.forward(&mut RequestHeaders) {
            // Forwarding with a credential or forged header left in would be
            // worse than failing the request; `forward` made it a 503.
            host::log(
                Level::Warn,
                &format!("header edit failed ({error:?}); request refused"),
            );
        }
        record_audit(&audit::record(&decision));
        match decision.result {
            Ok(allow) => {
                self.rate_limit = allow.rate_limit;
                metrics::allowed();
                Action::Continue
            }
            Err(denial) => deny(&gateway.render(&denial, request_id), denial.code),
        }
    }

    /// Pauses the request and asks the fleet's service, unless its circuit
    /// is open or the call cannot be made (then `on_failure` decides now).
    fn ask_fleet(&mut self, mut waiting: Waiting) -> Action {
        let Some(fleet) = waiting.gateway.fleet().cloned() else {
            return self.settle(waiting, None);
        };
        let now = HostClock::monotonic();
        if !fleet::read_circuit(&SharedData, &fleet.cluster)
            .is_ok_and(|circuit| circuit.allows_call(now))
        {
            metrics::fleet(FleetEvent::SkippedOpenCircuit);
            return self.settle(waiting, None);
        }
        metrics::fleet(FleetEvent::Call);
        let target = host::grpc_service_for_cluster(&fleet.cluster);
        let called = self.dispatch_grpc_call(
            &target,
            fleet::SERVICE,
            fleet::METHOD,
            Vec::new(),
            Some(&waiting.query.message),
            Duration::from_millis(u64::from(fleet.timeout_ms)),
        );
        match called {
            Ok(_token) => {
                waiting.asked_at_ns = now;
                self.waiting = Some(waiting);
                Action::Pause
            }
            Err(status) => {
                host::log(
                    Level::Warn,
                    &format!(
                        "rate-limit service call to {:?} not made ({status:?})",
                        fleet.cluster
                    ),
                );
                self.record_failure(&fleet.cluster, now, false);
                self.settle(waiting, None)
            }
        }
    }

    /// Counts a failed call and opens the circuit after five in a row.
    fn record_failure(&self, cluster: &str, now: u64, timed_out: bool) {
        metrics::fleet(if timed_out {
            FleetEvent::Timeout
        } else {
            FleetEvent::Failure
        });
        let before = fleet::read_circuit(&SharedData, cluster).unwrap_or_default();
        if let Ok(after) = fleet::record_result(&SharedData, cluster, false, now) {
            if after.open_until_ns != before.open_until_ns && !after.allows_call(now) {
                metrics::fleet(FleetEvent::CircuitOpened);
                host::log(
                    Level::Warn,
                    &format!("rate-limit service {cluster:?} failing: not asked for 10 s"),
                );
            }
        }
    }

    /// Applies the fleet's answer (`None`: a failure) to a waiting request.
    fn settle(&mut self, mut waiting: Waiting, answer: Option<&rls_codec::Answer>) -> Action {
        let on_failure = waiting
            .gateway
            .fleet()
            .map_or(fleet::OnFailure::Local, |f| f.on_failure);
        if let Some(denial) = waiting.query.outcome(answer, on_failure) {
            if denial.code == ErrorCode::RateLimited {
                metrics::fleet(FleetEvent::OverLimit);
            }
            waiting.decision.result = Err(denial);
        }
        self.conclude(
            &waiting.gateway,
            waiting.decision,
            waiting.request_id.as_deref(),
        )
    }
}

/// Leaves the audit record for the access log; a failure costs the log
/// line its fields, not the request.
fn record_audit(record: &str) {
    if let Err(error) = host::set_filter_state(audit::FILTER_STATE_NAME, record.as_bytes()) {
        host::log(
            Level::Warn,
            &format!("cannot record the audit fields ({error:?})"),
        );
    }
}

/// Refuses a request the filter cannot decide or forward safely.
fn fail_closed(reason: &str) -> Action {
    host::log(Level::Warn, &format!("{reason}; request refused"));
    let denial = Denial::new(ErrorCode::NotConfigured);
    deny(&DenialText::default().render(&denial, None), denial.code)
}

fn deny(reply: &Reply, code: ErrorCode) -> Action {
    metrics::denied(code);
    let headers = header_map::serialise(
        &reply
            .headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect::<Vec<_>>(),
    );
    // `%RESPONSE_CODE_DETAILS%` in access logs: `apikey_invalid_key`, …
    let details = format!("apikey_{}", code.as_str());
    if let Err(error) =
        host::send_local_response(reply.status, &details, &headers, reply.body.as_bytes())
    {
        host::log(
            Level::Critical,
            &format!("cannot send the denial ({error:?})"),
        );
    }
    Action::Pause
}

impl Context for RequestContext {
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
        let Some(waiting) = self.waiting.take() else {
            return;
        };
        let now = HostClock::monotonic();
        let answer = if status_code == 0 {
            host::grpc_response_body(response_size)
                .ok()
                .and_then(|body| rls_codec::decode_response(&body).ok())
        } else {
            None
        };
        let cluster = waiting
            .gateway
            .fleet()
            .map(|f| (f.cluster.clone(), f.timeout_ms));
        if let Some((cluster, timeout_ms)) = cluster {
            if FleetQuery::is_success(answer.as_ref()) {
                let _ = fleet::record_result(&SharedData, &cluster, true, now);
            } else {
                // Envoy reports a timeout as status 14, like a refused
                // connection, and its timer can fire a little before
                // `timeout_ms` by our clock: a failure at 90% of the
                // timeout or later is counted as one.
                let elapsed_ms = now.saturating_sub(waiting.asked_at_ns) / 1_000_000;
                let timed_out = elapsed_ms.saturating_mul(10) >= u64::from(timeout_ms) * 9;
                self.record_failure(&cluster, now, timed_out);
            }
        }
        let action = self.settle(waiting, answer.as_ref());
        if matches!(action, Action::Continue) {
            if let Err(error) = host::resume_request() {
                host::log(
                    Level::Critical,
                    &format!("cannot resume the request ({error:?})"),
                );
            }
        }
    }
}

impl HttpContext for RequestContext {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.decide()
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Some(report) = self.rate_limit.take() {
            for (name, value) in report.headers() {
                if let Err(error) = host::replace_response_header(name.as_bytes(), value.as_bytes())
                {
                    host::log(Level::Warn, &format!("cannot set {name} ({error:?})"));
                }
            }
        }
        Action::Continue
    }
}
