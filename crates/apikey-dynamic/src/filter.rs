//! One stream's state: the core's [`RequestFlow`] and what the fleet's
//! gRPC answer has brought so far.

use std::sync::Arc;

use apikey_core::request_flow::RequestFlow;

use crate::state::SharedConfig;

/// One stream's filter.
pub struct Filter {
    /// The request's flow through the core.
    pub flow: RequestFlow,
    /// The configuration it was made from.
    pub shared: Arc<SharedConfig>,
    /// A panic was caught in one of this stream's hooks: it was answered
    /// 503 and nothing more is done with it.
    pub poisoned: bool,
    /// The fleet call's answer so far.
    pub answer: GrpcAnswer,
}

/// A gRPC answer as its HTTP/2 stream delivers it.
#[derive(Default)]
pub struct GrpcAnswer {
    /// `:status` of the response headers.
    pub http_status: Option<u32>,
    /// `grpc-status` from the headers (trailers-only) or the trailers.
    pub grpc_status: Option<u32>,
    /// The length-prefixed response body.
    pub body: Vec<u8>,
}

/// gRPC's UNKNOWN: an answer with no `grpc-status`.
const UNKNOWN: u32 = 2;
/// gRPC's UNAVAILABLE: no answer (reset, no connection, timeout) or an
/// HTTP error instead of a gRPC answer.
pub const UNAVAILABLE: u32 = 14;

impl GrpcAnswer {
    /// Takes in response headers or trailers.
    pub fn headers(&mut self, pairs: &[(&[u8], &[u8])]) {
        for (name, value) in pairs {
            let number = || std::str::from_utf8(value).ok()?.trim().parse().ok();
            match *name {
                b":status" => self.http_status = number(),
                b"grpc-status" => self.grpc_status = number(),
                _ => {}
            }
        }
    }

    /// The call's gRPC status and its one message (the body's first
    /// length-prefixed frame; empty when there is none).
    pub fn outcome(&self) -> (u32, &[u8]) {
        let status = match (self.http_status, self.grpc_status) {
            (_, Some(status)) => status,
            (Some(200), None) => UNKNOWN,
            _ => UNAVAILABLE,
        };
        let message = self
            .body
            .get(1..5)
            .and_then(|length| <[u8; 4]>::try_from(length).ok())
            .and_then(|length| usize::try_from(u32::from_be_bytes(length)).ok())
            .and_then(|length| self.body.get(5..5usize.saturating_add(length)))
            .unwrap_or_default();
        (status, message)
    }
}

impl Filter {
    /// Whether the request is held (waiting for the fleet's answer).
    pub fn holds_request(&self) -> bool {
        !self.poisoned && self.flow.is_waiting()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailers_only_error_is_read_from_the_headers() {
        let mut answer = GrpcAnswer::default();
        answer.headers(&[(b":status", b"200"), (b"grpc-status", b"14")]);
        assert_eq!(answer.outcome(), (14, &[][..]));
    }

    #[test]
    fn an_ok_answer_yields_its_first_message() {
        let mut answer = GrpcAnswer::default();
        answer.headers(&[(b":status", b"200")]);
        answer.body = vec![0, 0, 0, 0, 3, 1, 2, 3, 9];
        answer.headers(&[(b"grpc-status", b"0")]);
        assert_eq!(answer.outcome(), (0, &[1u8, 2, 3][..]));
    }

    #[test]
    fn an_http_error_without_grpc_status_is_unavailable() {
        let mut answer = GrpcAnswer::default();
        answer.headers(&[(b":status", b"503")]);
        assert_eq!(answer.outcome().0, UNAVAILABLE);
        let mut ok_without_status = GrpcAnswer::default();
        ok_without_status.headers(&[(b":status", b"200")]);
        assert_eq!(
            ok_without_status.outcome().0,
            2,
            "missing grpc-status is UNKNOWN"
        );
    }

    #[test]
    fn a_truncated_frame_yields_no_message() {
        let answer = GrpcAnswer {
            grpc_status: Some(0),
            body: vec![0, 0, 0, 0, 9, 1],
            ..GrpcAnswer::default()
        };
        assert_eq!(answer.outcome(), (0, &[][..]));
    }
}
