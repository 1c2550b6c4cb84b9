//! Every host call the filter makes, each mapped to a `Result` once, here.
//!
//! The SDK's `hostcalls` helpers `panic!` on an unexpected status and turn
//! header names into `String` (panicking on non-UTF-8 bytes); a panic traps
//! the VM and fails every later request on its worker. So the few calls the
//! filter needs are declared directly against the proxy-wasm ABI, take and
//! return bytes, and report a status as an error the caller decides on.

use std::ptr::null_mut;

use apikey_core::decision::{Clock, RequestEditor};
use apikey_core::host::HostError as Refused;
use apikey_core::key_table::{SharedStore, StoreError};

/// A host status other than `Ok`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostError(pub u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;

const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
const PLUGIN_CONFIGURATION: u32 = 7;
const GRPC_RECEIVE_BUFFER: u32 = 5;
const STREAM_REQUEST: u32 = 0;

/// proxy-wasm log levels.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub enum Level {
    /// Routine events (configuration loaded).
    Info = 2,
    /// Something an operator should look at.
    Warn = 3,
    /// A refused configuration, a trap.
    Critical = 5,
}

// The SDK declares these imports too, with its own enum types for the
// same `u32`s; ours keep statuses as plain numbers so no unknown value can
// become an invalid enum.
#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: u32,
        start: usize,
        max_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    /// WASI's clock; Envoy answers the monotonic id with its process-wide
    /// steady clock, so every worker reads the same timeline.
    fn clock_time_get(id: u32, precision: u64, time: *mut u64) -> u16;
}

const WASI_CLOCK_MONOTONIC: u32 = 1;

fn check(status: u32) -> Result<(), HostError> {
    if status == OK {
        Ok(())
    } else {
        Err(HostError(status))
    }
}

/// Takes ownership of a buffer the host allocated through the SDK's
/// `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes).
fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host wrote `size` bytes into memory it obtained from the
    // module's allocator for exactly `size` bytes, and hands it over.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Writes a log line. Failing to log is not worth failing a request over.
pub fn log(level: Level, message: &str) {
    // SAFETY: pointer and length describe a live string.
    let _ = unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

fn header_pairs(map: u32) -> Result<Vec<u8>, HostError> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: out-pointers are valid for writes.
    check(unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) })?;
    Ok(owned(data, size))
}

/// The request headers, serialised (parse with `apikey_core::header_map`).
pub fn request_headers() -> Result<Vec<u8>, HostError> {
    header_pairs(REQUEST_HEADERS)
}

/// Removes every value of a request header.
pub fn remove_request_header(name: &[u8]) -> Result<(), HostError> {
    // SAFETY: pointer and length describe a live slice.
    check(unsafe { proxy_remove_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len()) })
}

/// Adds a request header value.
pub fn add_request_header(name: &[u8], value: &[u8]) -> Result<(), HostError> {
    // SAFETY: pointers and lengths describe live slices.
    check(unsafe {
        proxy_add_header_map_value(
            REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Sets a request header (or pseudo-header such as `:path`) to one value.
pub fn replace_request_header(name: &[u8], value: &[u8]) -> Result<(), HostError> {
    // SAFETY: pointers and lengths describe live slices.
    check(unsafe {
        proxy_replace_header_map_value(
            REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Sets a response header to one value.
pub fn replace_response_header(name: &[u8], value: &[u8]) -> Result<(), HostError> {
    // SAFETY: pointers and lengths describe live slices.
    check(unsafe {
        proxy_replace_header_map_value(
            RESPONSE_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Answers the request locally; `details` shows in Envoy's
/// `%RESPONSE_CODE_DETAILS%`.
pub fn send_local_response(
    status: u32,
    details: &str,
    headers: &[u8],
    body: &[u8],
) -> Result<(), HostError> {
    // SAFETY: pointers and lengths describe live buffers.
    check(unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// The plugin configuration, whole.
pub fn plugin_configuration() -> Result<Vec<u8>, HostError> {
    plugin_configuration_piece(0, usize::MAX)
}

/// Up to `max_size` bytes of the plugin configuration from byte `start`
/// (fewer at its end). `start` must not pass the end: Envoy 1.40 does not
/// check it.
pub fn plugin_configuration_piece(start: usize, max_size: usize) -> Result<Vec<u8>, HostError> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: out-pointers are valid for writes.
    match unsafe {
        proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, start, max_size, &mut data, &mut size)
    } {
        OK => Ok(owned(data, size)),
        // No configuration at all is the empty configuration.
        NOT_FOUND => Ok(Vec::new()),
        status => Err(HostError(status)),
    }
}

/// Stores `value` in the request's filter state as `wasm.<name>`, where
/// access logs can print it (`%FILTER_STATE(wasm.<name>:PLAIN)%`).
pub fn set_filter_state(name: &str, value: &[u8]) -> Result<(), HostError> {
    // Envoy takes a one-segment path as the name itself (a trailing NUL
    // would become part of the name).
    // SAFETY: pointers and lengths describe live buffers.
    check(unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// The value of the property at `path` (`plugin_name`; segments of a longer
/// path each end with a NUL but the last), or `None` when the host has none.
pub fn property(path: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the path is a live slice; out-pointers are valid for writes.
    match unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) } {
        OK if data.is_null() => Ok(None),
        OK => Ok(Some(owned(data, size))),
        NOT_FOUND => Ok(None),
        status => Err(HostError(status)),
    }
}

/// Whether the request's downstream connection is TLS, as Envoy sees it:
/// its `connection.tls_version` attribute, which plain TCP does not have.
pub fn downstream_tls() -> Result<bool, HostError> {
    property(b"connection\0tls_version").map(|version| version.is_some_and(|v| !v.is_empty()))
}

/// Resumes a request paused in `on_http_request_headers`.
pub fn resume_request() -> Result<(), HostError> {
    // SAFETY: plain value call.
    check(unsafe { proxy_continue_stream(STREAM_REQUEST) })
}

/// The body of a gRPC call's response.
pub fn grpc_response_body(size: usize) -> Result<Vec<u8>, HostError> {
    let mut data = null_mut();
    let mut len = 0;
    // SAFETY: out-pointers are valid for writes.
    check(unsafe { proxy_get_buffer_bytes(GRPC_RECEIVE_BUFFER, 0, size, &mut data, &mut len) })?;
    Ok(owned(data, len))
}

/// The `grpc_service` argument of a gRPC call for `cluster`: a serialised
/// `envoy.config.core.v3.GrpcService { envoy_grpc { cluster_name } }`.
/// Envoy answers a bare cluster name it does not know with a status the
/// SDK's dispatcher panics on; a `GrpcService` makes an unknown cluster fail
/// the call itself (a gRPC error the filter handles). The configuration
/// bounds cluster names to 120 visible ASCII bytes, so the serialised form
/// is ASCII and can travel as the SDK's `&str`.
pub fn grpc_service_for_cluster(cluster: &str) -> String {
    let name = cluster.get(..cluster.len().min(120)).unwrap_or_default();
    let mut out = String::with_capacity(name.len() + 4);
    out.push('\n');
    out.push(char::from(u8::try_from(name.len() + 2).unwrap_or(122)));
    out.push('\n');
    out.push(char::from(u8::try_from(name.len()).unwrap_or(120)));
    out.push_str(name);
    out
}

/// Asks for `on_tick` every `period_ms` (0 stops it).
pub fn set_tick_period(period_ms: u32) -> Result<(), HostError> {
    // SAFETY: plain value call.
    check(unsafe { proxy_set_tick_period_milliseconds(period_ms) })
}

/// Process-wide shared data, the home of the key table and the buckets.
pub struct SharedData;

impl SharedStore for SharedData {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let mut data = null_mut();
        let mut size = 0;
        let mut cas = 0;
        // SAFETY: the key is a live string; out-pointers are valid.
        match unsafe {
            proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        } {
            OK => Ok(Some((owned(data, size), cas))),
            NOT_FOUND => Ok(None),
            status => Err(StoreError::Host(status)),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        // SAFETY: key and value are live buffers.
        match unsafe {
            proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
        } {
            OK => Ok(()),
            CAS_MISMATCH => Err(StoreError::CasMismatch),
            status => Err(StoreError::Host(status)),
        }
    }
}

/// The request's header map, edited through the host.
pub struct RequestHeaders;

impl RequestEditor for RequestHeaders {
    fn remove(&mut self, name: &[u8]) -> Result<(), Refused> {
        remove_request_header(name).map_err(|HostError(status)| Refused::Other(status))
    }

    fn add(&mut self, name: &[u8], value: &[u8]) -> Result<(), Refused> {
        add_request_header(name, value).map_err(|HostError(status)| Refused::Other(status))
    }

    fn replace(&mut self, name: &[u8], value: &[u8]) -> Result<(), Refused> {
        replace_request_header(name, value).map_err(|HostError(status)| Refused::Other(status))
    }
}

/// The host's clocks.
pub struct HostClock;

impl HostClock {
    /// Monotonic nanoseconds (0 if the host refuses, which only stops
    /// buckets from refilling: it never mints tokens).
    pub fn monotonic() -> u64 {
        let mut time = 0;
        // SAFETY: the out-pointer is valid for writes.
        let _ = unsafe { clock_time_get(WASI_CLOCK_MONOTONIC, 1, &mut time) };
        time
    }
}

impl Clock for HostClock {
    fn wall_ns(&self) -> i64 {
        let mut time = 0;
        // SAFETY: the out-pointer is valid for writes.
        if unsafe { proxy_get_current_time_nanoseconds(&mut time) } != OK {
            // Without a wall clock, fail closed: every expiring key is expired.
            return i64::MAX;
        }
        i64::try_from(time).unwrap_or(i64::MAX)
    }

    fn monotonic_ns(&self) -> u64 {
        Self::monotonic()
    }
}
