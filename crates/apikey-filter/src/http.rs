//! The HTTP context: the SDK's `HttpContext`, delegating each callback to
//! the core's [`RequestFlow`] over [`AbiHost`].

use apikey_core::request_flow::{Action as Next, RequestFlow};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::host::AbiHost;

/// One request's context.
pub struct RequestContext(pub RequestFlow);

fn action(next: Next) -> Action {
    match next {
        Next::Continue => Action::Continue,
        Next::Pause => Action::Pause,
    }
}

impl Context for RequestContext {
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
        self.0
            .on_fleet_answer(&mut AbiHost, status_code, response_size);
    }
}

impl HttpContext for RequestContext {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        action(self.0.on_request_headers(&mut AbiHost))
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        action(self.0.on_response_headers(&mut AbiHost))
    }
}
