//! The HTTP context: one request, decided by the core, applied to Envoy.
//!
//! It reads the request header map in one host call as bytes, asks the
//! gateway for a decision, and either sends the JSON denial or applies the
//! header edits (forged identity and credential headers out, identity
//! headers in, `:path` normalised). Nothing here decides anything.

use std::rc::Rc;

use apikey_core::audit;
use apikey_core::decision::{Allow, Gateway, HeaderEdits, RequestHead};
use apikey_core::denial::{Denial, DenialText, ErrorCode, RateLimitReport, Reply};
use apikey_core::header_map;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::host::{self, HostClock, Level, SharedData};
use crate::metrics;

/// One request's context.
pub struct RequestContext {
    gateway: Option<Rc<Gateway>>,
    /// `RateLimit` headers for the response, when configured.
    rate_limit: Option<RateLimitReport>,
}

impl RequestContext {
    /// A context serving `gateway` (`None`: not configured).
    pub fn new(gateway: Option<Rc<Gateway>>) -> Self {
        Self {
            gateway,
            rate_limit: None,
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
        let request = RequestHead::from_pairs(&pairs);
        let Some(gateway) = self.gateway.clone() else {
            record_audit(&audit::not_configured());
            let denial = Denial::new(ErrorCode::NotConfigured);
            return deny(
                &DenialText::default().render(&denial, request.request_id),
                denial.code,
            );
        };
        let decision = gateway.decide(&request, &SharedData, &HostClock);
        if decision.cas_conflicts > 0 || decision.contention {
            metrics::bucket_contention(decision.cas_conflicts, decision.contention);
        }
        record_audit(&audit::record(&decision));
        match decision.result {
            Ok(allow) => self.forward(allow),
            Err(denial) => deny(&gateway.render(&denial, request.request_id), denial.code),
        }
    }

    fn forward(&mut self, allow: Allow) -> Action {
        if let Err(error) = apply(&allow.edits) {
            // Forwarding with a credential or forged header left in would be
            // worse than failing the request.
            return fail_closed(&format!("header edit failed ({error:?})"));
        }
        self.rate_limit = allow.rate_limit;
        metrics::allowed();
        Action::Continue
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

fn apply(edits: &HeaderEdits) -> Result<(), host::HostError> {
    for name in &edits.remove {
        host::remove_request_header(name)?;
    }
    if let Some(authorization) = &edits.authorization {
        host::add_request_header(b"authorization", authorization)?;
    }
    for (name, value) in &edits.add {
        host::add_request_header(name.as_bytes(), value.as_bytes())?;
    }
    if let Some(path) = &edits.path {
        host::replace_request_header(b":path", path)?;
    }
    Ok(())
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

impl Context for RequestContext {}

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
