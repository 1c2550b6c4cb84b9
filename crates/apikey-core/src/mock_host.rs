//! A [`Host`] for tests: it records what the core did instead of scripting
//! what it must do.
//!
//! Kuadrant's wasm-shim tests script every host call in exact order and
//! break on harmless reorderings. Here a test sets up the world (the
//! request's headers, the plugin configuration, the clocks, which host
//! calls fail) and then asserts on effects: the header map after the
//! edits, the local reply, the audit record in filter state, the stats,
//! the gRPC calls made, the tick period, the log.
//!
//! [`Process`] is what one Envoy process shares between its VMs (shared
//! data and stats, which Envoy sums over workers); each [`MockHost`] is one
//! VM's view of it, so two workers, or two filters on one VM, are two hosts
//! over one process.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use crate::config_lifecycle::{Configuration, VmState};
use crate::denial::Reply;
use crate::host::{Clock, GrpcCall, Host, HostError, HttpCall, LogLevel, Property};
use crate::key_table::{SharedStore, StoreError};
use crate::memory_store::MemoryStore;
use crate::metrics::{Metric, MetricKind};
use crate::request_flow::{Action, RequestFlow};

/// Shared data that can be made to fail, as a worker trapping mid-write
/// would leave it.
#[derive(Default)]
pub struct FlakyStore {
    /// The entries.
    pub inner: MemoryStore,
    /// When set, how many more writes succeed before every write fails.
    writes_left: Cell<Option<u64>>,
}

impl FlakyStore {
    /// Lets `count` more writes succeed, then fails every write.
    pub fn fail_writes_after(&self, count: u64) {
        self.writes_left.set(Some(count));
    }

    /// Lets every write succeed again.
    pub fn heal(&self) {
        self.writes_left.set(None);
    }
}

impl SharedStore for FlakyStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        match self.writes_left.get() {
            Some(0) => return Err(StoreError::Host(10)),
            Some(left) => self.writes_left.set(Some(left - 1)),
            None => {}
        }
        self.inner.set(key, value, cas)
    }
}

/// One Envoy process: shared data and stats.
#[derive(Default)]
pub struct Process {
    /// Shared data, keyed by `vm_id` in Envoy: one per process here.
    pub store: FlakyStore,
    stats: RefCell<HashMap<String, u64>>,
}

impl Process {
    /// A process with empty shared data and no stats.
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// The stat named `name` (0 when never touched), summed over VMs.
    pub fn stat(&self, name: &str) -> u64 {
        self.stats.borrow().get(name).copied().unwrap_or(0)
    }

    /// Every non-zero stat, for assertion messages.
    pub fn stats(&self) -> Vec<(String, u64)> {
        let mut stats: Vec<_> = self
            .stats
            .borrow()
            .iter()
            .filter(|(_, value)| **value != 0)
            .map(|(name, value)| (name.clone(), *value))
            .collect();
        stats.sort();
        stats
    }
}

/// A gRPC call the core made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedCall {
    /// The cluster.
    pub cluster: String,
    /// `service/method`.
    pub method: String,
    /// The request message.
    pub message: Vec<u8>,
    /// The timeout.
    pub timeout_ms: u32,
}

/// An HTTP callout the core made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedHttpCall {
    /// The cluster.
    pub cluster: String,
    /// The `:authority`.
    pub authority: String,
    /// The `:method`.
    pub method: String,
    /// The `:path`.
    pub path: String,
    /// The `authorization` value.
    pub authorization: String,
    /// The `content-type` value (empty: none).
    pub content_type: String,
    /// The body.
    pub body: Vec<u8>,
    /// The timeout.
    pub timeout_ms: u32,
}

/// One header: name and value bytes.
pub type Header = (Vec<u8>, Vec<u8>);

/// Where the tokens of callouts other than `GET` start.
pub const POST_TOKENS: u32 = 1 << 24;

/// One VM's host, recording effects.
pub struct MockHost {
    process: Rc<Process>,
    /// The wall clock (ns since the epoch).
    pub wall_ns: i64,
    /// The monotonic clock shared by every worker.
    pub monotonic_ns: u64,

    /// The request's header map, edited in place.
    pub request_headers: Vec<Header>,
    /// The response's header map.
    pub response_headers: Vec<Header>,
    /// Refuse every request header edit with this error.
    pub refuse_header_edits: Option<HostError>,
    /// How many times the whole request header map was read.
    pub header_map_reads: Cell<usize>,
    /// Refuse to hand the header map over, with this error.
    pub header_map_error: Option<HostError>,
    /// Hand these bytes over as the header map instead of the headers.
    pub header_map_bytes: Option<Vec<u8>>,
    /// The local reply sent, with its details.
    pub local_reply: Option<(Reply, String)>,
    /// Filter state by name.
    pub filter_state: HashMap<String, Vec<u8>>,
    /// How many times a paused request was resumed.
    pub resumed: usize,

    /// `plugin_name`, `None` when the host has none.
    pub plugin_name: Option<Vec<u8>>,
    /// `plugin_root_id`.
    pub plugin_root_id: Option<Vec<u8>>,
    /// The connection's TLS version (`None`: plain TCP).
    pub tls_version: Option<Vec<u8>>,
    /// Every property read, in order.
    pub property_reads: RefCell<Vec<Property>>,

    /// Every gRPC call made.
    pub grpc_calls: Vec<RecordedCall>,
    /// Refuse gRPC calls with this error.
    pub refuse_grpc: Option<HostError>,
    /// The body of the answer being reported.
    pub grpc_body: Vec<u8>,

    /// Every `GET` callout made (the feed's); the call's token is its
    /// position from 1.
    pub http_calls: Vec<RecordedHttpCall>,
    /// Every other callout made (usage reports), kept apart so a test of
    /// the feed sees only the feed's calls; the call's token is
    /// [`POST_TOKENS`] plus its position from 1.
    pub http_posts: Vec<RecordedHttpCall>,
    /// Refuse HTTP callouts with this error.
    pub refuse_http: Option<HostError>,
    /// The `:status` of the HTTP answer being reported (`None`: the call
    /// failed without an answer).
    pub http_status: Option<u32>,
    /// The body of the HTTP answer being reported.
    pub http_body: Vec<u8>,

    /// The tick period now (`None`: never set).
    pub tick_period_ms: Option<u32>,
    /// Every tick period set, in order.
    pub tick_periods_set: Vec<u32>,

    /// The plugin configuration.
    pub configuration: Vec<u8>,
    /// Every (start, max size) read of the configuration.
    pub configuration_reads: RefCell<Vec<(usize, usize)>>,
    /// Refuse to hand the configuration over, with this error.
    pub configuration_error: Option<HostError>,

    /// Every log line.
    pub logs: Vec<(LogLevel, String)>,
}

impl MockHost {
    /// A VM of `process` named `apikey` (plugin name and root id), at
    /// monotonic time 1 s, wall time 2026-11-25.
    pub fn new(process: &Rc<Process>) -> Self {
        Self {
            process: Rc::clone(process),
            wall_ns: 1_795_564_800_000_000_000,
            monotonic_ns: 1_000_000_000,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            refuse_header_edits: None,
            header_map_reads: Cell::new(0),
            header_map_error: None,
            header_map_bytes: None,
            local_reply: None,
            filter_state: HashMap::new(),
            resumed: 0,
            plugin_name: Some(b"apikey".to_vec()),
            plugin_root_id: Some(b"apikey".to_vec()),
            tls_version: None,
            property_reads: RefCell::new(Vec::new()),
            grpc_calls: Vec::new(),
            refuse_grpc: None,
            grpc_body: Vec::new(),
            http_calls: Vec::new(),
            http_posts: Vec::new(),
            refuse_http: None,
            http_status: None,
            http_body: Vec::new(),
            tick_period_ms: None,
            tick_periods_set: Vec::new(),
            configuration: Vec::new(),
            configuration_reads: RefCell::new(Vec::new()),
            configuration_error: None,
            logs: Vec::new(),
        }
    }

    /// The same VM, as the plugin `name` (another filter sharing it).
    pub fn named(mut self, name: &str) -> Self {
        self.plugin_name = Some(name.as_bytes().to_vec());
        self
    }

    /// The process this VM belongs to.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Starts a new request with these headers (`:method`, `:path` first),
    /// forgetting the previous request's effects.
    pub fn start_request(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) {
        self.request_headers = [(":method", method), (":path", path)]
            .iter()
            .chain(headers)
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        self.response_headers = Vec::new();
        self.header_map_reads.set(0);
        self.local_reply = None;
        self.filter_state.clear();
        self.resumed = 0;
        self.property_reads.borrow_mut().clear();
    }

    /// The request header `name`'s values, as text.
    pub fn request_header(&self, name: &str) -> Vec<String> {
        values(&self.request_headers, name)
    }

    /// The response header `name`'s values, as text.
    pub fn response_header(&self, name: &str) -> Vec<String> {
        values(&self.response_headers, name)
    }

    /// The local reply's status, when one was sent.
    pub fn reply_status(&self) -> Option<u32> {
        self.local_reply.as_ref().map(|(reply, _)| reply.status)
    }

    /// The local reply's error code (from its details), when one was sent.
    pub fn reply_code(&self) -> Option<String> {
        self.local_reply
            .as_ref()
            .map(|(_, details)| details.trim_start_matches("apikey_").to_owned())
    }

    /// The audit record's `decision` field, when one was recorded.
    pub fn audited_decision(&self) -> Option<String> {
        let record = self.filter_state.get(crate::audit::FILTER_STATE_NAME)?;
        let record: serde_json::Value = serde_json::from_slice(record).ok()?;
        record["decision"].as_str().map(str::to_owned)
    }

    /// Whether some log line at `level` contains `text`.
    pub fn logged(&self, level: LogLevel, text: &str) -> bool {
        self.logs
            .iter()
            .any(|(at, line)| *at == level && line.contains(text))
    }

    fn edit(&self) -> Result<(), HostError> {
        self.refuse_header_edits.map_or(Ok(()), Err)
    }
}

fn values(map: &[Header], name: &str) -> Vec<String> {
    map.iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn remove(map: &mut Vec<Header>, name: &[u8]) {
    map.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
}

impl Clock for MockHost {
    fn wall_ns(&self) -> i64 {
        self.wall_ns
    }

    fn monotonic_ns(&self) -> u64 {
        self.monotonic_ns
    }
}

impl Host for MockHost {
    fn store(&self) -> &dyn SharedStore {
        &self.process.store
    }

    fn request_headers(&self) -> Result<Vec<u8>, HostError> {
        self.header_map_reads.set(self.header_map_reads.get() + 1);
        if let Some(error) = self.header_map_error {
            return Err(error);
        }
        if let Some(bytes) = &self.header_map_bytes {
            return Ok(bytes.clone());
        }
        Ok(crate::header_map::serialise(&self.request_headers))
    }

    fn remove_request_header(&mut self, name: &[u8]) -> Result<(), HostError> {
        self.edit()?;
        remove(&mut self.request_headers, name);
        Ok(())
    }

    fn add_request_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError> {
        self.edit()?;
        self.request_headers.push((name.to_vec(), value.to_vec()));
        Ok(())
    }

    fn replace_request_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError> {
        self.edit()?;
        remove(&mut self.request_headers, name);
        self.request_headers.push((name.to_vec(), value.to_vec()));
        Ok(())
    }

    fn replace_response_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError> {
        remove(&mut self.response_headers, name);
        self.response_headers.push((name.to_vec(), value.to_vec()));
        Ok(())
    }

    fn send_local_reply(&mut self, reply: &Reply, details: &str) -> Result<(), HostError> {
        assert!(
            self.local_reply.is_none(),
            "a second local reply for one request: {reply:?} after {:?}",
            self.local_reply
        );
        self.local_reply = Some((reply.clone(), details.to_owned()));
        Ok(())
    }

    fn set_filter_state(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        self.filter_state.insert(name.to_owned(), value.to_vec());
        Ok(())
    }

    fn resume_request(&mut self) -> Result<(), HostError> {
        self.resumed += 1;
        Ok(())
    }

    fn increment(&mut self, metric: Metric, by: u64) {
        assert_eq!(metric.kind(), MetricKind::Counter, "{metric:?} incremented");
        *self
            .process
            .stats
            .borrow_mut()
            .entry(metric.name().into_owned())
            .or_default() += by;
    }

    fn record(&mut self, metric: Metric, value: u64) {
        assert_eq!(metric.kind(), MetricKind::Gauge, "{metric:?} recorded");
        self.process
            .stats
            .borrow_mut()
            .insert(metric.name().into_owned(), value);
    }

    fn property(&self, property: Property) -> Result<Option<Vec<u8>>, HostError> {
        self.property_reads.borrow_mut().push(property);
        Ok(match property {
            Property::PluginName => self.plugin_name.clone(),
            Property::PluginRootId => self.plugin_root_id.clone(),
            Property::ConnectionTlsVersion => self.tls_version.clone(),
        })
    }

    fn dispatch_grpc(&mut self, call: &GrpcCall<'_>) -> Result<u32, HostError> {
        if let Some(error) = self.refuse_grpc {
            return Err(error);
        }
        self.grpc_calls.push(RecordedCall {
            cluster: call.cluster.to_owned(),
            method: format!("{}/{}", call.service, call.method),
            message: call.message.to_vec(),
            timeout_ms: call.timeout_ms,
        });
        u32::try_from(self.grpc_calls.len()).map_err(|_| HostError::InternalFailure)
    }

    fn grpc_response_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        Ok(self.grpc_body.iter().copied().take(size).collect())
    }

    fn dispatch_http(&mut self, call: &HttpCall<'_>) -> Result<u32, HostError> {
        if let Some(error) = self.refuse_http {
            return Err(error);
        }
        let recorded = RecordedHttpCall {
            cluster: call.cluster.to_owned(),
            authority: call.authority.to_owned(),
            method: call.method.to_owned(),
            path: call.path.to_owned(),
            authorization: call.authorization.to_owned(),
            content_type: call.content_type.to_owned(),
            body: call.body.to_vec(),
            timeout_ms: call.timeout_ms,
        };
        if call.method == "GET" {
            self.http_calls.push(recorded);
            u32::try_from(self.http_calls.len()).map_err(|_| HostError::InternalFailure)
        } else {
            self.http_posts.push(recorded);
            u32::try_from(self.http_posts.len())
                .map(|n| POST_TOKENS + n)
                .map_err(|_| HostError::InternalFailure)
        }
    }

    fn http_response_headers(&self) -> Result<Vec<u8>, HostError> {
        let status = self.http_status.map(|status| status.to_string());
        let pairs: Vec<(&str, &str)> = status.iter().map(|s| (":status", s.as_str())).collect();
        Ok(crate::header_map::serialise(&pairs))
    }

    fn http_response_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        Ok(self.http_body.iter().copied().take(size).collect())
    }

    fn set_tick_period(&mut self, period_ms: u32) -> Result<(), HostError> {
        self.tick_period_ms = Some(period_ms);
        self.tick_periods_set.push(period_ms);
        Ok(())
    }

    fn plugin_configuration(&self, start: usize, max_size: usize) -> Result<Vec<u8>, HostError> {
        self.configuration_reads
            .borrow_mut()
            .push((start, max_size));
        if let Some(error) = self.configuration_error {
            return Err(error);
        }
        let piece = self.configuration.get(start..).unwrap_or_default();
        Ok(piece.iter().copied().take(max_size).collect())
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        self.logs.push((level, message.to_owned()));
    }
}

/// One worker VM: its host and what it keeps across configurations.
pub struct Worker {
    /// The VM's host.
    pub host: MockHost,
    /// What the VM keeps per lineage (the edge's one thread-local).
    pub vm: VmState,
}

impl Worker {
    /// A worker of `process` whose filter is named `apikey`.
    pub fn new(process: &Rc<Process>) -> Self {
        Self {
            host: MockHost::new(process),
            vm: VmState::new(),
        }
    }

    /// A new root context configured with `text`, and whether it was
    /// accepted.
    pub fn configure(&mut self, text: &str) -> (Configuration, bool) {
        self.host.configuration = text.as_bytes().to_vec();
        self.host.configuration_reads.borrow_mut().clear();
        let mut configuration = Configuration::new();
        let accepted = configuration.configure(&mut self.host, &mut self.vm, text.len());
        (configuration, accepted)
    }

    /// A tick of `configuration`'s root context.
    pub fn tick(&mut self, configuration: &mut Configuration) {
        configuration.tick(&mut self.host, &mut self.vm);
    }

    /// A request to the filter `configuration` serves, with the given
    /// headers after `:method` and `:path`; the flow (for what comes next)
    /// and what the request headers callback returned.
    pub fn request(
        &mut self,
        configuration: &Configuration,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (RequestFlow, Action) {
        self.host.start_request(method, path, headers);
        let mut flow =
            RequestFlow::new(configuration.gateway(&self.vm)).with_usage(configuration.usage_log());
        let action = flow.on_request_headers(&mut self.host);
        (flow, action)
    }

    /// The error code a request with `x-api-key: key` gets (`None`:
    /// forwarded).
    pub fn answer(&mut self, configuration: &Configuration, key: &str) -> Option<String> {
        let (_, action) = self.request(configuration, "GET", "/api/leads", &[("x-api-key", key)]);
        match action {
            Action::Continue => None,
            Action::Pause => Some(self.host.reply_code().unwrap_or_default()),
        }
    }
}

/// The hex SHA-256 of a raw key, as configurations spell it.
pub fn key_hash(raw: &str) -> String {
    crate::key_hash::KeyHash::of(raw.as_bytes()).to_hex()
}

/// A configuration with one key per `(id, raw key)`, each holding
/// `leads:read` for `/api`, and `extra` top-level fields (JSON, each
/// followed by a comma) before the keys.
pub fn config_with(extra: &str, keys: &[(&str, &str)]) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|(id, raw)| {
            format!(
                r#"{{"id": "{id}", "sha256": "{}", "tenant": "acme", "scopes": ["leads:read"],
                    "rate_limits": {{"*": {{"requests": 100, "period_seconds": 60, "burst": 100}}}}}}"#,
                key_hash(raw)
            )
        })
        .collect();
    format!(
        r#"{{{extra}
          "keys": [{}],
          "rules": [
            {{"path_prefix": "/healthz", "public": true}},
            {{"path_prefix": "/api", "scope": "leads:read"}}
          ]
        }}"#,
        keys.join(",")
    )
}
