//! The host-call probe: on every request, the host calls its plugin
//! configuration names (comma-separated, repeats allowed, e.g.
//! `pairs,get_shared,add,add`), each with arguments shaped like the apikey
//! filter's, and nothing else. With an empty configuration it is an empty
//! filter, the baseline the others are measured against.

use std::cell::RefCell;
use std::ptr::null_mut;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
    ) -> u32;
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
    fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_header_map_pairs(map: u32, data: *const u8, size: usize) -> u32;
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn clock_time_get(id: u32, precision: u64, time: *mut u64) -> u16;
}

const REQUEST_HEADERS: u32 = 0;
const RECORD_KEY: &[u8] = b"probe/record";
const BUCKET_KEY: &[u8] = b"probe/bucket";
/// About the size of a key record and of a bucket in shared data.
const RECORD_BYTES: usize = 160;
const BUCKET_BYTES: usize = 40;
/// About the size of the filter's audit record.
const AUDIT_BYTES: usize = 120;

#[derive(Clone, Copy)]
enum Call {
    Pairs,
    GetHeader,
    Add,
    Replace,
    Remove,
    GetShared,
    SetShared,
    SetProperty,
    Metric,
    Monotonic,
    WallClock,
    /// Reads the whole map and writes it back in one call, the credential
    /// left out and the five identity headers in: the one-call alternative
    /// to `remove` + `add` x5.
    SetPairs,
}

impl Call {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "pairs" => Self::Pairs,
            "get_header" => Self::GetHeader,
            "add" => Self::Add,
            "replace" => Self::Replace,
            "remove" => Self::Remove,
            "get_shared" => Self::GetShared,
            "set_shared" => Self::SetShared,
            "set_property" => Self::SetProperty,
            "metric" => Self::Metric,
            "monotonic" => Self::Monotonic,
            "wall_clock" => Self::WallClock,
            "set_pairs" => Self::SetPairs,
            _ => return None,
        })
    }
}

thread_local! {
    static CALLS: RefCell<Vec<Call>> = const { RefCell::new(Vec::new()) };
    static METRIC: RefCell<u32> = const { RefCell::new(0) };
}

/// Frees a buffer the host allocated through the SDK's allocator.
fn release(data: *mut u8, size: usize) {
    if !data.is_null() {
        // SAFETY: the host filled `size` bytes it allocated with the module's allocator.
        drop(unsafe { Vec::from_raw_parts(data, size, size) });
    }
}

/// Makes one host call, ignoring its status (the probe measures cost only).
fn call(call: Call, metric: u32) {
    let (mut data, mut size, mut cas, mut time) = (null_mut(), 0, 0, 0);
    // SAFETY: every pointer and length below describes a live buffer or a
    // valid out-parameter.
    unsafe {
        match call {
            Call::Pairs => {
                proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size);
                release(data, size);
            }
            Call::GetHeader => {
                let name = b"x-api-key";
                proxy_get_header_map_value(
                    REQUEST_HEADERS,
                    name.as_ptr(),
                    name.len(),
                    &mut data,
                    &mut size,
                );
                release(data, size);
            }
            Call::Add => {
                let (name, value) = (b"x-api-tenant", b"tenant-0001");
                proxy_add_header_map_value(
                    REQUEST_HEADERS,
                    name.as_ptr(),
                    name.len(),
                    value.as_ptr(),
                    value.len(),
                );
            }
            Call::Replace => {
                let (name, value) = (b"x-api-plan", b"pro");
                proxy_replace_header_map_value(
                    REQUEST_HEADERS,
                    name.as_ptr(),
                    name.len(),
                    value.as_ptr(),
                    value.len(),
                );
            }
            Call::Remove => {
                let name = b"x-api-key";
                proxy_remove_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len());
            }
            Call::GetShared => {
                proxy_get_shared_data(
                    RECORD_KEY.as_ptr(),
                    RECORD_KEY.len(),
                    &mut data,
                    &mut size,
                    &mut cas,
                );
                release(data, size);
            }
            Call::SetShared => {
                let value = [7u8; BUCKET_BYTES];
                proxy_set_shared_data(
                    BUCKET_KEY.as_ptr(),
                    BUCKET_KEY.len(),
                    value.as_ptr(),
                    value.len(),
                    0,
                );
            }
            Call::SetProperty => {
                let (name, value) = (b"apikey", [b'a'; AUDIT_BYTES]);
                proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len());
            }
            Call::Metric => {
                proxy_increment_metric(metric, 1);
            }
            Call::Monotonic => {
                clock_time_get(1, 1, &mut time);
            }
            Call::WallClock => {
                proxy_get_current_time_nanoseconds(&mut time);
            }
            Call::SetPairs => {
                proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size);
                let map = if data.is_null() {
                    Vec::new()
                } else {
                    Vec::from_raw_parts(data, size, size)
                };
                let rebuilt = rebuilt_map(&map);
                proxy_set_header_map_pairs(REQUEST_HEADERS, rebuilt.as_ptr(), rebuilt.len());
            }
        }
    }
}

/// `map` (proxy-wasm's serialised header map) without `x-api-key` and with
/// five identity headers added, serialised again.
fn rebuilt_map(map: &[u8]) -> Vec<u8> {
    let word = |at: usize| -> usize {
        map.get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0);
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        sizes.push((word(4 + i * 8), word(8 + i * 8)));
    }
    let mut at = 4 + count * 8;
    let mut pairs: Vec<(&[u8], &[u8])> = Vec::with_capacity(count + 5);
    for (name_len, value_len) in sizes {
        let name = map.get(at..at + name_len).unwrap_or_default();
        at += name_len + 1;
        let value = map.get(at..at + value_len).unwrap_or_default();
        at += value_len + 1;
        if name != b"x-api-key" {
            pairs.push((name, value));
        }
    }
    pairs.extend([
        (b"x-api-key-id".as_slice(), b"bench_allowed".as_slice()),
        (b"x-api-tenant", b"bench"),
        (b"x-api-scopes", b"leads:read"),
        (b"x-api-plan", b"pro"),
        (b"x-api-env", b"live"),
    ]);
    let mut out = Vec::with_capacity(map.len() + 128);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in &pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in &pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

/// The module's entry point (`_initialize`), generated by the SDK.
mod entry {
    use proxy_wasm::traits::RootContext;

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(super::ProbeRoot) });
    }}
}

struct ProbeRoot;

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, _configuration_size: usize) -> bool {
        let configuration = self.get_plugin_configuration().unwrap_or_default();
        let text = String::from_utf8_lossy(&configuration);
        let mut calls = Vec::new();
        for name in text
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            match Call::parse(name) {
                Some(call) => calls.push(call),
                None => return false,
            }
        }
        CALLS.with(|c| *c.borrow_mut() = calls);
        let record = [b'r'; RECORD_BYTES];
        let name = b"probe_requests";
        let mut metric = 0;
        // SAFETY: live buffers and a valid out-parameter.
        unsafe {
            proxy_set_shared_data(
                RECORD_KEY.as_ptr(),
                RECORD_KEY.len(),
                record.as_ptr(),
                record.len(),
                0,
            );
            proxy_define_metric(0, name.as_ptr(), name.len(), &mut metric);
        }
        METRIC.with(|m| *m.borrow_mut() = metric);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeRequest))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct ProbeRequest;

impl Context for ProbeRequest {}

impl HttpContext for ProbeRequest {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let metric = METRIC.with(|m| *m.borrow());
        CALLS.with(|calls| {
            for &c in calls.borrow().iter() {
                call(c, metric);
            }
        });
        Action::Continue
    }
}
