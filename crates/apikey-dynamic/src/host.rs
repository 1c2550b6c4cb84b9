//! The core's [`Host`] port over the dynamic-module ABI.
//!
//! A [`NativeHost`] lives for one hook call: it knows which Envoy object
//! the hook was given (a stream's filter, or a configuration on the main
//! thread), the filter configuration it serves, the store view of its
//! thread, and, while an answer is being reported, that answer. Each ABI
//! result becomes a [`HostError`] here, once. What the proxy-wasm edge
//! gets from Envoy's host calls comes from the module itself where the
//! ABI has no equivalent: the clocks are the process's (`Instant` is the
//! kernel's monotonic clock, the same timeline on every worker), plugin
//! properties are the filter's name, and a tick period is recorded for
//! the edge's ticker (main thread) or request-path tick (workers).

use std::sync::LazyLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use apikey_core::audit;
use apikey_core::denial::Reply;
use apikey_core::header_map;
use apikey_core::host::{Clock, GrpcCall, Host, HostError, HttpCall, LogLevel, Property};
use apikey_core::key_table::SharedStore;
use apikey_core::metrics::{Metric, MetricKind};

use crate::abi::{self, ConfigEnvoy, FilterEnvoy, HeaderMap, Level};
use crate::state::SharedConfig;

/// The audit record's filter-state name, as the proxy-wasm edge's
/// records are named (`wasm.` and the core's name).
const AUDIT_FILTER_STATE: &str = "wasm.apikey";

/// The process's monotonic origin: every worker measures from it.
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Monotonic nanoseconds since the module's first clock read.
pub fn monotonic_ns() -> u64 {
    u64::try_from(ORIGIN.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The Envoy object a hook was called with.
#[derive(Clone, Copy, Debug)]
pub enum Context {
    /// A stream's filter (worker thread).
    Filter(FilterEnvoy),
    /// A filter configuration (main thread: callouts allowed).
    Config(ConfigEnvoy),
}

/// A reported HTTP callout answer: headers and body.
pub type Answer<'a> = (&'a [(&'a [u8], &'a [u8])], &'a [u8]);

/// Envoy, as the core sees it during one hook.
pub struct NativeHost<'a> {
    context: Context,
    shared: &'a SharedConfig,
    store: &'a dyn SharedStore,
    answer: Option<Answer<'a>>,
    grpc_body: &'a [u8],
    /// The last period the core asked a tick for, if it asked.
    pub tick_period: Option<u32>,
    /// Whether a local reply was sent during this hook.
    pub replied: bool,
    /// Whether this hook changed the request headers and cleared the
    /// route cache for it.
    route_cleared: bool,
}

impl<'a> NativeHost<'a> {
    /// A host for a hook given `context`, serving `shared`.
    pub fn new(context: Context, shared: &'a SharedConfig, store: &'a dyn SharedStore) -> Self {
        Self {
            context,
            shared,
            store,
            answer: None,
            grpc_body: &[],
            tick_period: None,
            replied: false,
            route_cleared: false,
        }
    }

    /// Reports `answer` as the HTTP callout answer being delivered.
    #[must_use]
    pub fn with_answer(mut self, answer: Answer<'a>) -> Self {
        self.answer = Some(answer);
        self
    }

    /// Reports `body` as the gRPC answer's message being delivered.
    #[must_use]
    pub fn with_grpc_body(mut self, body: &'a [u8]) -> Self {
        self.grpc_body = body;
        self
    }

    fn filter(&self) -> Result<FilterEnvoy, HostError> {
        match self.context {
            Context::Filter(filter) => Ok(filter),
            Context::Config(_) => Err(HostError::NotFound),
        }
    }

    /// The filter whose request headers are about to change; the first
    /// change of a hook clears Envoy's route cache (once is enough: the
    /// route is chosen again only when the router asks for it).
    fn request_edit(&mut self) -> Result<FilterEnvoy, HostError> {
        let filter = self.filter()?;
        if !self.route_cleared {
            filter.clear_route_cache();
            self.route_cleared = true;
        }
        Ok(filter)
    }

    fn edit(done: bool) -> Result<(), HostError> {
        if done {
            Ok(())
        } else {
            Err(HostError::BadArgument)
        }
    }
}

/// The first `size` bytes of `bytes` (all of them when shorter).
fn prefix(bytes: &[u8], size: usize) -> Vec<u8> {
    bytes
        .get(..size.min(bytes.len()))
        .unwrap_or_default()
        .to_vec()
}

/// An ABI callout init result as a host error: 2 is "cluster not found".
fn callout_error(result: u32) -> HostError {
    match result {
        2 => HostError::NotFound,
        1 => HostError::BadArgument,
        other => HostError::Other(other),
    }
}

impl Clock for NativeHost<'_> {
    fn wall_ns(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_nanos()).unwrap_or(i64::MAX),
            // A clock before 1970 is broken: fail closed (everything expired).
            Err(_) => i64::MAX,
        }
    }

    fn monotonic_ns(&self) -> u64 {
        monotonic_ns()
    }
}

impl Host for NativeHost<'_> {
    fn store(&self) -> &dyn SharedStore {
        self.store
    }

    fn request_headers(&self) -> Result<Vec<u8>, HostError> {
        self.filter()?
            .headers(HeaderMap::Request)
            .ok_or(HostError::NotFound)
    }

    fn remove_request_header(&mut self, name: &[u8]) -> Result<(), HostError> {
        let filter = self.request_edit()?;
        Self::edit(filter.set_header(HeaderMap::Request, name, None))
    }

    /// Envoy's add callback refuses an empty value and its set callback
    /// removes the header for one (1.40's `addHeaderValueImpl` and
    /// `setHeaderValueImpl`), so the empty `x-api-scopes:` of a key with no
    /// scopes is sent as one space: white space around a field value is
    /// not part of it (RFC 9110 §5.5), so the upstream reads it empty.
    fn add_request_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError> {
        let filter = self.request_edit()?;
        let value = if value.is_empty() {
            b" ".as_slice()
        } else {
            value
        };
        Self::edit(filter.add_header(HeaderMap::Request, name, value))
    }

    fn replace_request_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError> {
        let filter = self.request_edit()?;
        Self::edit(filter.set_header(HeaderMap::Request, name, Some(value)))
    }

    fn replace_response_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError> {
        Self::edit(
            self.filter()?
                .set_header(HeaderMap::Response, name, Some(value)),
        )
    }

    fn send_local_reply(&mut self, reply: &Reply, details: &str) -> Result<(), HostError> {
        let filter = self.filter()?;
        send_reply(filter, reply, details);
        self.replied = true;
        Ok(())
    }

    /// Stored as `wasm.<name>`, the name the proxy-wasm edge's records
    /// get, so one access-log format serves both edges.
    fn set_filter_state(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        let filter = self.filter()?;
        // The audit record is written on every request: its name is spelled
        // once here rather than formatted each time.
        if name == audit::FILTER_STATE_NAME {
            return Self::edit(filter.set_filter_state(AUDIT_FILTER_STATE, value));
        }
        Self::edit(filter.set_filter_state(&format!("wasm.{name}"), value))
    }

    fn resume_request(&mut self) -> Result<(), HostError> {
        self.filter()?.continue_decoding();
        Ok(())
    }

    fn increment(&mut self, metric: Metric, by: u64) {
        let Some(id) = self.shared.metric_id(metric) else {
            return;
        };
        match self.context {
            Context::Filter(filter) => filter.increment_counter(id, by),
            Context::Config(config) => config.increment_counter(id, by),
        }
    }

    fn record(&mut self, metric: Metric, value: u64) {
        if metric.kind() != MetricKind::Gauge {
            return;
        }
        let Some(id) = self.shared.metric_id(metric) else {
            return;
        };
        match self.context {
            Context::Filter(filter) => filter.set_gauge(id, value),
            Context::Config(config) => config.set_gauge(id, value),
        }
    }

    fn property(&self, property: Property) -> Result<Option<Vec<u8>>, HostError> {
        match property {
            Property::PluginName => Ok(Some(self.shared.name.clone())),
            Property::PluginRootId => Ok(Some(self.shared.root_id.clone())),
            Property::ConnectionTlsVersion => Ok(self
                .filter()?
                .attribute_string(abi::ATTRIBUTE_CONNECTION_TLS_VERSION)),
        }
    }

    /// A unary gRPC call as Envoy's gRPC client would send it over the
    /// cluster's HTTP/2: a POST of the length-prefixed message with
    /// `te: trailers`; the answer's `grpc-status` is read from its
    /// headers or trailers ([`crate::filter`]).
    fn dispatch_grpc(&mut self, call: &GrpcCall<'_>) -> Result<u32, HostError> {
        let filter = self.filter()?;
        let path = format!("/{}/{}", call.service, call.method);
        let length = u32::try_from(call.message.len()).map_err(|_| HostError::BadArgument)?;
        let mut body = Vec::with_capacity(call.message.len() + 5);
        body.push(0);
        body.extend_from_slice(&length.to_be_bytes());
        body.extend_from_slice(call.message);
        let headers: [(&[u8], &[u8]); 5] = [
            (b":method", b"POST"),
            (b":path", path.as_bytes()),
            (b":authority", call.cluster.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        filter
            .start_stream(call.cluster, &headers, &body, u64::from(call.timeout_ms))
            .map(|id| u32::try_from(id & u64::from(u32::MAX)).unwrap_or(0))
            .map_err(callout_error)
    }

    fn grpc_response_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        Ok(prefix(self.grpc_body, size))
    }

    /// Only from a configuration (the main thread): Envoy's workers have
    /// no callout outside a stream.
    fn dispatch_http(&mut self, call: &HttpCall<'_>) -> Result<u32, HostError> {
        let Context::Config(config) = self.context else {
            return Err(HostError::Unimplemented);
        };
        let mut headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", call.method.as_bytes()),
            (b":path", call.path.as_bytes()),
            (b":authority", call.authority.as_bytes()),
            (b"authorization", call.authorization.as_bytes()),
        ];
        if !call.content_type.is_empty() {
            headers.push((b"content-type", call.content_type.as_bytes()));
        }
        config
            .http_callout(
                call.cluster,
                &headers,
                call.body,
                u64::from(call.timeout_ms),
            )
            .map(|id| u32::try_from(id & u64::from(u32::MAX)).unwrap_or(0))
            .map_err(callout_error)
    }

    fn http_response_headers(&self) -> Result<Vec<u8>, HostError> {
        Ok(self
            .answer
            .map(|(headers, _)| header_map::serialise(headers))
            .unwrap_or_default())
    }

    fn http_response_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        Ok(self
            .answer
            .map(|(_, body)| prefix(body, size))
            .unwrap_or_default())
    }

    fn set_tick_period(&mut self, period_ms: u32) -> Result<(), HostError> {
        self.tick_period = Some(period_ms);
        Ok(())
    }

    fn plugin_configuration(&self, start: usize, max_size: usize) -> Result<Vec<u8>, HostError> {
        let bytes = &self.shared.bytes;
        let end = start.saturating_add(max_size).min(bytes.len());
        Ok(bytes.get(start..end).unwrap_or_default().to_vec())
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        log(level, message);
    }
}

/// Writes a log line at the core's `level`.
pub fn log(level: LogLevel, message: &str) {
    let level = match level {
        LogLevel::Info => Level::Info,
        LogLevel::Warn => Level::Warn,
        LogLevel::Critical => Level::Critical,
    };
    abi::log(level, message);
}

/// Sends `reply` on `filter`.
pub fn send_reply(filter: FilterEnvoy, reply: &Reply, details: &str) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    filter.send_response(reply.status, &headers, reply.body.as_bytes(), details);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_record_keeps_the_wasm_edges_filter_state_name() {
        assert_eq!(
            AUDIT_FILTER_STATE,
            format!("wasm.{}", audit::FILTER_STATE_NAME),
            "the native edge's audit record would not reach the shared access-log format"
        );
    }
}
