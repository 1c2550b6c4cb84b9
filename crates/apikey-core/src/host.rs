//! The host port: everything the core asks of the proxy, as one trait.
//!
//! The request flow ([`crate::request_flow`]) and the configuration
//! lifecycle ([`crate::config_lifecycle`]) talk to Envoy only through
//! [`Host`], so they run unchanged in the proxy-wasm module (the filter
//! crate implements it over the ABI, mapping each host status to
//! [`HostError`] once) and natively in tests (a mock records what they
//! did). Methods take and return bytes where Envoy does: header names and
//! values need not be UTF-8, and the core never assumes they are.

use crate::denial::Reply;
use crate::key_table::SharedStore;
use crate::metrics::Metric;

/// The clocks a decision reads.
pub trait Clock {
    /// Wall-clock nanoseconds since the Unix epoch (for expiry only).
    fn wall_ns(&self) -> i64;
    /// Monotonic nanoseconds, shared by every worker (for buckets, claims
    /// and the fleet's circuit).
    fn monotonic_ns(&self) -> u64;
}

/// A host call that did not succeed, by its proxy-wasm status. The edge
/// turns a status into one of these in one place; the core decides what
/// each means where it is met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// The host has no such item (a header map, a buffer, a property).
    NotFound,
    /// The host refused an argument (for a header edit: a bad name or
    /// value, or a map that can no longer change).
    BadArgument,
    /// The host could not serialise its answer.
    SerializationFailure,
    /// The host could not parse what it was given.
    ParseFailure,
    /// The buffer asked for is empty.
    Empty,
    /// A shared-data entry changed since it was read.
    CasMismatch,
    /// The host failed internally.
    InternalFailure,
    /// The host does not implement the call.
    Unimplemented,
    /// Any other status, by number.
    Other(u32),
}

/// How loud a log line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Routine events (a configuration loaded).
    Info,
    /// Something an operator should look at.
    Warn,
    /// A refused configuration, a trap.
    Critical,
}

/// The properties the core reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Property {
    /// The Wasm plugin's `name` (one half of a [`crate::key_table::Lineage`]).
    PluginName,
    /// The Wasm plugin's `root_id` (the other half).
    PluginRootId,
    /// The downstream connection's TLS version; absent or empty on plain
    /// TCP.
    ConnectionTlsVersion,
}

/// A unary gRPC call to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcCall<'a> {
    /// The Envoy cluster serving the service.
    pub cluster: &'a str,
    /// The fully qualified service name.
    pub service: &'a str,
    /// The method name.
    pub method: &'a str,
    /// The serialised request message.
    pub message: &'a [u8],
    /// Bound on the call; Envoy answers with a failure when it passes.
    pub timeout_ms: u32,
}

/// An HTTP/1.1 request to make through an Envoy cluster (the key
/// service's feed, [`crate::key_source`], and usage reports,
/// [`crate::usage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpCall<'a> {
    /// The Envoy cluster serving the service.
    pub cluster: &'a str,
    /// The `:authority` of the request.
    pub authority: &'a str,
    /// The `:method` (`GET`, `POST`).
    pub method: &'a str,
    /// The `:path`, query included.
    pub path: &'a str,
    /// The `authorization` header's value (a credential: never logged).
    pub authorization: &'a str,
    /// The `content-type` header's value; empty: none sent.
    pub content_type: &'a str,
    /// The request body; empty: none sent.
    pub body: &'a [u8],
    /// Bound on the call; Envoy answers with a failure when it passes.
    pub timeout_ms: u32,
}

/// What the core asks of the proxy.
///
/// Reads take `&self`; anything that changes the request, the reply or the
/// world takes `&mut self`. A refused call returns a [`HostError`] and the
/// core decides what it means (a failed header edit refuses the request; a
/// failed log line costs nothing).
pub trait Host: Clock {
    /// The process-wide shared data (the key tables, buckets and circuits).
    fn store(&self) -> &dyn SharedStore;

    /// The request's header map in the proxy-wasm wire format (parse it
    /// with [`crate::header_map::parse`]): one copy of the whole map.
    fn request_headers(&self) -> Result<Vec<u8>, HostError>;
    /// Removes every value of request header `name`.
    fn remove_request_header(&mut self, name: &[u8]) -> Result<(), HostError>;
    /// Adds a value of request header `name`.
    fn add_request_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError>;
    /// Sets request header (or pseudo-header such as `:path`) `name` to one
    /// value.
    fn replace_request_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError>;
    /// Sets response header `name` to one value.
    fn replace_response_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError>;

    /// Answers the request locally with `reply`; `details` shows in
    /// Envoy's `%RESPONSE_CODE_DETAILS%`.
    fn send_local_reply(&mut self, reply: &Reply, details: &str) -> Result<(), HostError>;
    /// Stores `value` in the request's filter state as `wasm.<name>`,
    /// where access logs can print it.
    fn set_filter_state(&mut self, name: &str, value: &[u8]) -> Result<(), HostError>;
    /// Resumes a request paused in `on_request_headers`.
    fn resume_request(&mut self) -> Result<(), HostError>;

    /// Adds `by` to counter `metric`. A lost increment is not worth failing
    /// a request over, so there is no error.
    fn increment(&mut self, metric: Metric, by: u64);
    /// Sets gauge `metric` to `value`.
    fn record(&mut self, metric: Metric, value: u64);

    /// The value of `property`, or `None` when the host has none.
    fn property(&self, property: Property) -> Result<Option<Vec<u8>>, HostError>;

    /// Starts `call`; its answer arrives later, through the request flow's
    /// `on_fleet_answer`. Returns the call's token.
    fn dispatch_grpc(&mut self, call: &GrpcCall<'_>) -> Result<u32, HostError>;
    /// The first `size` bytes of the answer to the call being reported.
    fn grpc_response_body(&self, size: usize) -> Result<Vec<u8>, HostError>;

    /// Starts `call` from the root context; its answer arrives later,
    /// through the configuration lifecycle's `on_http_answer`. Returns the
    /// call's token.
    fn dispatch_http(&mut self, call: &HttpCall<'_>) -> Result<u32, HostError>;
    /// The headers of the answer being reported, in the proxy-wasm wire
    /// format ([`crate::header_map::parse`]); empty when the call failed
    /// before an answer (no connection, a timeout).
    fn http_response_headers(&self) -> Result<Vec<u8>, HostError>;
    /// The first `size` bytes of the body of the answer being reported.
    fn http_response_body(&self, size: usize) -> Result<Vec<u8>, HostError>;

    /// Asks for a tick every `period_ms` (0 stops it).
    fn set_tick_period(&mut self, period_ms: u32) -> Result<(), HostError>;

    /// Up to `max_size` bytes of the plugin configuration from byte
    /// `start`; fewer at its end, none when there is no configuration.
    fn plugin_configuration(&self, start: usize, max_size: usize) -> Result<Vec<u8>, HostError>;

    /// Writes a log line. Failing to log is not worth failing anything.
    fn log(&mut self, level: LogLevel, message: &str);
}

/// The `:status` of the HTTP callout answer being reported (read from
/// [`Host::http_response_headers`]); `None` without an answer (the call
/// failed, was reset or timed out).
pub fn http_answer_status<H: Host>(host: &H) -> Option<u32> {
    let bytes = host.http_response_headers().ok()?;
    let pairs = crate::header_map::parse(&bytes).ok()?;
    pairs
        .iter()
        .find(|(name, _)| *name == b":status")
        .and_then(|(_, value)| core::str::from_utf8(value).ok())
        .and_then(|value| value.parse().ok())
}
