//! The core's [`Host`] port over the proxy-wasm ABI: every host call the
//! filter makes, each status mapped to a [`HostError`] once, here.
//!
//! The SDK's `hostcalls` helpers `panic!` on an unexpected status and turn
//! header names into `String` (panicking on non-UTF-8 bytes); a panic traps
//! the VM and fails every later request on its worker. So the calls the
//! filter needs are declared directly against the ABI, take and return
//! bytes, and report a status as an error the core decides on. The one
//! exception is the gRPC call, which must go through the SDK so that its
//! dispatcher routes the answer back to the calling context.

use std::ptr::null_mut;
use std::time::Duration;

use apikey_core::denial::Reply;
use apikey_core::header_map;
use apikey_core::host::{Clock, GrpcCall, Host, HostError, HttpCall, LogLevel, Property};
use apikey_core::key_table::{SharedStore, StoreError};
use apikey_core::metrics::Metric;

use crate::metrics;

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;

const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
const HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
const HTTP_CALL_RESPONSE_BODY: u32 = 4;
const GRPC_RECEIVE_BUFFER: u32 = 5;
const PLUGIN_CONFIGURATION: u32 = 7;
const STREAM_REQUEST: u32 = 0;

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

/// The one place a proxy-wasm status becomes a [`HostError`].
fn check(status: u32) -> Result<(), HostError> {
    Err(match status {
        OK => return Ok(()),
        NOT_FOUND => HostError::NotFound,
        2 => HostError::BadArgument,
        3 => HostError::SerializationFailure,
        4 => HostError::ParseFailure,
        7 => HostError::Empty,
        8 => HostError::CasMismatch,
        10 => HostError::InternalFailure,
        12 => HostError::Unimplemented,
        other => HostError::Other(other),
    })
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

/// Writes a log line (also the panic hook's way out). Failing to log is
/// not worth failing a request over.
pub fn log(level: LogLevel, message: &str) {
    let level = match level {
        LogLevel::Info => 2,
        LogLevel::Warn => 3,
        LogLevel::Critical => 5,
    };
    // SAFETY: pointer and length describe a live string.
    let _ = unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

fn replace_header(map: u32, name: &[u8], value: &[u8]) -> Result<(), HostError> {
    // SAFETY: pointers and lengths describe live slices.
    check(unsafe {
        proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

/// Up to `max_size` bytes of buffer `buffer` from byte `start`.
fn buffer_bytes(buffer: u32, start: usize, max_size: usize) -> Result<Vec<u8>, HostError> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: out-pointers are valid for writes.
    check(unsafe { proxy_get_buffer_bytes(buffer, start, max_size, &mut data, &mut size) })?;
    Ok(owned(data, size))
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

/// Process-wide shared data, the home of the key tables and the buckets.
pub struct SharedData;

impl SharedStore for SharedData {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let mut data = null_mut();
        let mut size = 0;
        let mut cas = 0;
        // SAFETY: the key is a live string; out-pointers are valid.
        let status = unsafe {
            proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        match check(status) {
            Ok(()) => Ok(Some((owned(data, size), cas))),
            Err(HostError::NotFound) => Ok(None),
            Err(_) => Err(StoreError::Host(status)),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        // SAFETY: key and value are live buffers.
        let status = unsafe {
            proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
        };
        match check(status) {
            Ok(()) => Ok(()),
            Err(HostError::CasMismatch) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Host(status)),
        }
    }
}

/// Envoy, as the core sees it: the host calls of the context being called.
pub struct AbiHost;

impl Clock for AbiHost {
    fn wall_ns(&self) -> i64 {
        let mut time = 0;
        // SAFETY: the out-pointer is valid for writes.
        if unsafe { proxy_get_current_time_nanoseconds(&mut time) } != OK {
            // Without a wall clock, fail closed: every expiring key is expired.
            return i64::MAX;
        }
        i64::try_from(time).unwrap_or(i64::MAX)
    }

    /// Monotonic nanoseconds (0 if the host refuses, which only stops
    /// buckets from refilling: it never mints tokens).
    fn monotonic_ns(&self) -> u64 {
        let mut time = 0;
        // SAFETY: the out-pointer is valid for writes.
        let _ = unsafe { clock_time_get(WASI_CLOCK_MONOTONIC, 1, &mut time) };
        time
    }
}

impl Host for AbiHost {
    fn store(&self) -> &dyn SharedStore {
        &SharedData
    }

    fn request_headers(&self) -> Result<Vec<u8>, HostError> {
        let mut data = null_mut();
        let mut size = 0;
        // SAFETY: out-pointers are valid for writes.
        check(unsafe { proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size) })?;
        Ok(owned(data, size))
    }

    fn remove_request_header(&mut self, name: &[u8]) -> Result<(), HostError> {
        // SAFETY: pointer and length describe a live slice.
        check(unsafe { proxy_remove_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len()) })
    }

    fn add_request_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError> {
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

    fn replace_request_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError> {
        replace_header(REQUEST_HEADERS, name, value)
    }

    fn replace_response_header(&mut self, name: &[u8], value: &[u8]) -> Result<(), HostError> {
        replace_header(RESPONSE_HEADERS, name, value)
    }

    fn send_local_reply(&mut self, reply: &Reply, details: &str) -> Result<(), HostError> {
        let headers = header_map::serialise(
            &reply
                .headers
                .iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
                .collect::<Vec<_>>(),
        );
        let body = reply.body.as_bytes();
        // SAFETY: pointers and lengths describe live buffers.
        check(unsafe {
            proxy_send_local_response(
                reply.status,
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

    fn set_filter_state(&mut self, name: &str, value: &[u8]) -> Result<(), HostError> {
        // Envoy takes a one-segment path as the name itself (a trailing NUL
        // would become part of the name).
        // SAFETY: pointers and lengths describe live buffers.
        check(unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
    }

    fn resume_request(&mut self) -> Result<(), HostError> {
        // SAFETY: plain value call.
        check(unsafe { proxy_continue_stream(STREAM_REQUEST) })
    }

    fn increment(&mut self, metric: Metric, by: u64) {
        metrics::increment(metric, by);
    }

    fn record(&mut self, metric: Metric, value: u64) {
        metrics::record(metric, value);
    }

    fn property(&self, property: Property) -> Result<Option<Vec<u8>>, HostError> {
        // Segments of a longer path each end with a NUL but the last.
        let path: &[u8] = match property {
            Property::PluginName => b"plugin_name",
            Property::PluginRootId => b"plugin_root_id",
            Property::ConnectionTlsVersion => b"connection\0tls_version",
        };
        let mut data = null_mut();
        let mut size = 0;
        // SAFETY: the path is a live slice; out-pointers are valid for writes.
        match check(unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) })
        {
            Ok(()) if data.is_null() => Ok(None),
            Ok(()) => Ok(Some(owned(data, size))),
            Err(HostError::NotFound) => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn dispatch_grpc(&mut self, call: &GrpcCall<'_>) -> Result<u32, HostError> {
        proxy_wasm::hostcalls::dispatch_grpc_call(
            &grpc_service_for_cluster(call.cluster),
            call.service,
            call.method,
            Vec::new(),
            Some(call.message),
            Duration::from_millis(u64::from(call.timeout_ms)),
        )
        .map_err(|status| check(status as u32).err().unwrap_or(HostError::Other(0)))
    }

    fn grpc_response_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        buffer_bytes(GRPC_RECEIVE_BUFFER, 0, size)
    }

    /// Through the SDK, like the gRPC call, so its dispatcher routes the
    /// answer back to the calling root context.
    fn dispatch_http(&mut self, call: &HttpCall<'_>) -> Result<u32, HostError> {
        let mut headers = vec![
            (":method", call.method),
            (":path", call.path),
            (":authority", call.authority),
            ("authorization", call.authorization),
        ];
        if !call.content_type.is_empty() {
            headers.push(("content-type", call.content_type));
        }
        proxy_wasm::hostcalls::dispatch_http_call(
            call.cluster,
            headers,
            (!call.body.is_empty()).then_some(call.body),
            Vec::new(),
            Duration::from_millis(u64::from(call.timeout_ms)),
        )
        .map_err(|status| check(status as u32).err().unwrap_or(HostError::Other(0)))
    }

    fn http_response_headers(&self) -> Result<Vec<u8>, HostError> {
        let mut data = null_mut();
        let mut size = 0;
        // SAFETY: out-pointers are valid for writes.
        check(unsafe {
            proxy_get_header_map_pairs(HTTP_CALL_RESPONSE_HEADERS, &mut data, &mut size)
        })?;
        Ok(owned(data, size))
    }

    fn http_response_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        buffer_bytes(HTTP_CALL_RESPONSE_BODY, 0, size)
    }

    fn set_tick_period(&mut self, period_ms: u32) -> Result<(), HostError> {
        // SAFETY: plain value call.
        check(unsafe { proxy_set_tick_period_milliseconds(period_ms) })
    }

    /// `start` must not pass the end: Envoy 1.40 does not check it.
    fn plugin_configuration(&self, start: usize, max_size: usize) -> Result<Vec<u8>, HostError> {
        match buffer_bytes(PLUGIN_CONFIGURATION, start, max_size) {
            // No configuration at all is the empty configuration.
            Err(HostError::NotFound) => Ok(Vec::new()),
            other => other,
        }
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        log(level, message);
    }
}
