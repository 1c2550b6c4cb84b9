//! Envoy's dynamic-module ABI, as this module uses it: the `extern "C"`
//! callbacks it calls, the event hooks it exports, and safe wrappers over
//! both. Every `unsafe` of the crate is in this file.
//!
//! Written against `source/extensions/dynamic_modules/abi/abi.h` of
//! Envoy's repository (`ENVOY_DYNAMIC_MODULES_ABI_VERSION`, v0.1.x
//! declarations, which Envoy promises compatible with the v0.2.0 that
//! Envoy 1.40.0 implements; every callback named here is exported by the
//! 1.40.0 binary). Envoy's Rust SDK is not on crates.io, so the few
//! declarations needed are written out here by hand; C enums travel as
//! `u32`, C `bool` as Rust `bool`, and buffers as pointer + length pairs.
//!
//! Envoy 1.40 refuses a filter configuration unless the module exports the
//! whole set of HTTP filter hooks, so hooks this filter has no use for are
//! exported too and do nothing. Each hook converts its raw pointers to the
//! crate's types and calls [`crate::entry`], which catches any panic: no
//! unwind ever crosses into Envoy.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use crate::entry;
use crate::filter::Filter;
use crate::state::SharedConfig;

/// The ABI version this module was written for, returned to Envoy at load.
const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// A buffer Envoy owns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

/// A buffer the module owns, lent to Envoy for one call.
#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }

    /// Envoy reads a null pointer as "no value" (a header to remove).
    const NULL: Self = Self {
        ptr: std::ptr::null(),
        length: 0,
    };
}

/// A header Envoy owns (`envoy_dynamic_module_type_envoy_http_header`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

/// A header the module owns (`envoy_dynamic_module_type_module_http_header`).
#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleHeader {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

impl ModuleHeader {
    fn of(name: &[u8], value: &[u8]) -> Self {
        Self {
            key_ptr: name.as_ptr(),
            key_length: name.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        }
    }
}

/// Envoy's `DynamicModuleHttpFilterConfig`: one per filter configuration,
/// made on the main thread, used from every worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigEnvoy(*mut c_void);

// SAFETY: Envoy's filter configuration object lives until the module's
// `..._config_destroy` hook has returned, and the callbacks this module
// calls with it from workers (metrics) are thread-safe in Envoy; the
// main-thread-only ones (callouts, scheduler) are only called from the
// main thread's hooks.
unsafe impl Send for ConfigEnvoy {}
// SAFETY: as for Send: the pointer is only passed back to Envoy.
unsafe impl Sync for ConfigEnvoy {}

/// Envoy's `DynamicModuleHttpFilter`: one per HTTP stream, on one worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterEnvoy(*mut c_void);

/// A configuration scheduler: posts events to the main thread from any
/// thread (the module's ticker).
#[derive(Debug)]
pub struct Scheduler(*mut c_void);

// SAFETY: Envoy documents the scheduler's commit as callable from any
// thread ("including the ones managed by the module"); the module deletes
// it only after removing it from the ticker, under the ticker's lock.
unsafe impl Send for Scheduler {}

/// Which header map a header call reads or changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderMap {
    /// The request headers.
    Request = 0,
    /// The response headers.
    Response = 2,
}

/// Log levels, as Envoy numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// `info`.
    Info = 2,
    /// `warning`.
    Warn = 3,
    /// `critical`.
    Critical = 5,
}

/// `envoy_dynamic_module_type_attribute_id_ConnectionTlsVersion`.
pub const ATTRIBUTE_CONNECTION_TLS_VERSION: u32 = 31;

/// `..._request_headers_status_Continue` (and every other `_Continue`).
const CONTINUE: u32 = 0;
/// `..._request_headers_status_StopIteration`.
const STOP_ITERATION: u32 = 1;
/// `..._request_body_status_StopIterationAndBuffer`.
const STOP_AND_BUFFER: u32 = 1;

extern "C" {
    #[cfg_attr(test, allow(dead_code))]
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: *mut c_void, map: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        map: u32,
        result: *mut EnvoyHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        map: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        map: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: *mut c_void,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        attribute: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_start_http_stream(
        filter: *mut c_void,
        stream_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        end_stream: bool,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: *mut c_void,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *mut ModuleHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: *mut c_void,
    ) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: *mut c_void,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: *mut c_void,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}

// ---------------------------------------------------------------------------
// Safe wrappers over the callbacks.
// ---------------------------------------------------------------------------

/// Writes `message` to Envoy's log (`[dynamic_modules]`).
#[cfg(not(test))]
pub fn log(level: Level, message: &str) {
    // SAFETY: the buffer describes a live string for the call's duration.
    unsafe { envoy_dynamic_module_callback_log(level as u32, ModuleBuffer::of(message.as_bytes())) }
}

/// Unit tests run without Envoy: log lines go to stderr.
#[cfg(test)]
pub fn log(level: Level, message: &str) {
    eprintln!("{level:?}: {message}");
}

/// Copies slice `(ptr, len)` that Envoy lent; empty for a null pointer.
///
/// # Safety
/// `ptr` must be null or valid for reads of `len` bytes for `'a`.
unsafe fn lent<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: the caller promises `len` readable bytes at `ptr`.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// Envoy-owned headers as borrowed pairs (valid for the hook's duration).
///
/// # Safety
/// `headers` must be null or point to `size` headers Envoy keeps alive for `'a`.
unsafe fn header_pairs<'a>(headers: *const EnvoyHeader, size: usize) -> Vec<(&'a [u8], &'a [u8])> {
    if headers.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the caller promises `size` headers at `headers`.
    let headers = unsafe { std::slice::from_raw_parts(headers, size) };
    headers
        .iter()
        .map(|header| {
            // SAFETY: Envoy keeps each name and value alive for the hook.
            unsafe {
                (
                    lent(header.key_ptr, header.key_length),
                    lent(header.value_ptr, header.value_length),
                )
            }
        })
        .collect()
}

/// Envoy-owned body chunks, concatenated.
///
/// # Safety
/// `chunks` must be null or point to `count` buffers Envoy keeps alive for the call.
unsafe fn concatenated(chunks: *const EnvoyBuffer, count: usize) -> Vec<u8> {
    if chunks.is_null() || count == 0 {
        return Vec::new();
    }
    // SAFETY: the caller promises `count` buffers at `chunks`.
    let chunks = unsafe { std::slice::from_raw_parts(chunks, count) };
    let mut body = Vec::new();
    for chunk in chunks {
        // SAFETY: each buffer is live for the hook.
        body.extend_from_slice(unsafe { lent(chunk.ptr, chunk.length) });
    }
    body
}

impl FilterEnvoy {
    /// The header map `map` in the proxy-wasm wire format the core parses.
    pub fn headers(self, map: HeaderMap) -> Option<Vec<u8>> {
        // SAFETY: a live filter pointer, given to the current hook.
        let size =
            unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.0, map as u32) };
        let mut headers = vec![
            EnvoyHeader {
                key_ptr: std::ptr::null(),
                key_length: 0,
                value_ptr: std::ptr::null(),
                value_length: 0,
            };
            size
        ];
        // SAFETY: `headers` has room for the `size` entries Envoy reported.
        if !unsafe {
            envoy_dynamic_module_callback_http_get_headers(self.0, map as u32, headers.as_mut_ptr())
        } {
            return None;
        }
        // SAFETY: Envoy filled `size` headers that live until the hook
        // returns or the map changes; they are copied before either.
        let pairs = unsafe { header_pairs(headers.as_ptr(), size) };
        Some(apikey_core::header_map::serialise(&pairs))
    }

    /// Sets header `name` of `map` to `value`, or removes it (`None`).
    pub fn set_header(self, map: HeaderMap, name: &[u8], value: Option<&[u8]>) -> bool {
        let value = value.map_or(ModuleBuffer::NULL, ModuleBuffer::of);
        // SAFETY: live filter pointer; buffers live for the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                map as u32,
                ModuleBuffer::of(name),
                value,
            )
        }
    }

    /// Adds a value of header `name` to `map`.
    pub fn add_header(self, map: HeaderMap, name: &[u8], value: &[u8]) -> bool {
        // SAFETY: live filter pointer; buffers live for the call.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.0,
                map as u32,
                ModuleBuffer::of(name),
                ModuleBuffer::of(value),
            )
        }
    }

    /// Answers the request locally.
    pub fn send_response(self, status: u32, headers: &[(&str, &str)], body: &[u8], details: &str) {
        let mut headers: Vec<ModuleHeader> = headers
            .iter()
            .map(|(name, value)| ModuleHeader::of(name.as_bytes(), value.as_bytes()))
            .collect();
        // SAFETY: live filter pointer; headers, body and details live for the call.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                status,
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(details.as_bytes()),
            );
        }
    }

    /// Stores `value` as the stream's filter state `key` (a string
    /// accessor access logs print with `%FILTER_STATE(key:PLAIN)%`).
    pub fn set_filter_state(self, key: &str, value: &[u8]) -> bool {
        // SAFETY: live filter pointer; buffers live for the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_bytes(
                self.0,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value),
            )
        }
    }

    /// A string attribute of the stream (`None`: absent or not a string).
    pub fn attribute_string(self, attribute: u32) -> Option<Vec<u8>> {
        let mut result = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: live filter pointer; the out-pointer is valid.
        if !unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.0,
                attribute,
                &mut result,
            )
        } {
            return None;
        }
        // SAFETY: Envoy lent the buffer for the hook; it is copied now.
        Some(unsafe { lent(result.ptr, result.length) }.to_vec())
    }

    /// Resumes a request stopped in its request-headers hook.
    pub fn continue_decoding(self) {
        // SAFETY: live filter pointer.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    /// Starts an HTTP stream to `cluster` (request ended at once); its
    /// events arrive through this filter's `http_stream_*` hooks. `Err`
    /// carries Envoy's init result.
    pub fn start_stream(
        self,
        cluster: &str,
        headers: &[(&[u8], &[u8])],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, u32> {
        let mut headers: Vec<ModuleHeader> = headers
            .iter()
            .map(|(name, value)| ModuleHeader::of(name, value))
            .collect();
        let mut id = 0;
        // SAFETY: live filter pointer; every buffer lives for the call.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_start_http_stream(
                self.0,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::of(body),
                true,
                timeout_ms,
            )
        };
        if result == 0 {
            Ok(id)
        } else {
            Err(result)
        }
    }

    /// Adds `by` to counter `id` (defined on this filter's configuration).
    pub fn increment_counter(self, id: usize, by: u64) {
        // SAFETY: live filter pointer; no labels.
        let _ = unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                self.0,
                id,
                std::ptr::null_mut(),
                0,
                by,
            )
        };
    }

    /// Sets gauge `id` (defined on this filter's configuration).
    pub fn set_gauge(self, id: usize, value: u64) {
        // SAFETY: live filter pointer; no labels.
        let _ = unsafe {
            envoy_dynamic_module_callback_http_filter_set_gauge(
                self.0,
                id,
                std::ptr::null_mut(),
                0,
                value,
            )
        };
    }
}

/// Which metric kind to define.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// A counter.
    Counter,
    /// A gauge.
    Gauge,
}

impl ConfigEnvoy {
    /// Defines metric `name`; its id, or `None` when Envoy refused.
    pub fn define(self, kind: MetricKind, name: &str) -> Option<usize> {
        let mut id = 0;
        let name = ModuleBuffer::of(name.as_bytes());
        // SAFETY: a live configuration pointer (config_new is running);
        // no labels; the out-pointer is valid.
        let result = unsafe {
            match kind {
                MetricKind::Counter => {
                    envoy_dynamic_module_callback_http_filter_config_define_counter(
                        self.0,
                        name,
                        std::ptr::null_mut(),
                        0,
                        &mut id,
                    )
                }
                MetricKind::Gauge => envoy_dynamic_module_callback_http_filter_config_define_gauge(
                    self.0,
                    name,
                    std::ptr::null_mut(),
                    0,
                    &mut id,
                ),
            }
        };
        (result == 0).then_some(id)
    }

    /// Adds `by` to counter `id` outside any request.
    pub fn increment_counter(self, id: usize, by: u64) {
        // SAFETY: a live configuration pointer; no labels.
        let _ = unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.0,
                id,
                std::ptr::null_mut(),
                0,
                by,
            )
        };
    }

    /// Sets gauge `id` outside any request.
    pub fn set_gauge(self, id: usize, value: u64) {
        // SAFETY: a live configuration pointer; no labels.
        let _ = unsafe {
            envoy_dynamic_module_callback_http_filter_config_set_gauge(
                self.0,
                id,
                std::ptr::null_mut(),
                0,
                value,
            )
        };
    }

    /// Starts an HTTP callout from the configuration (main thread); the
    /// answer arrives through `..._config_http_callout_done`. `Err`
    /// carries Envoy's init result.
    pub fn http_callout(
        self,
        cluster: &str,
        headers: &[(&[u8], &[u8])],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, u32> {
        let mut headers: Vec<ModuleHeader> = headers
            .iter()
            .map(|(name, value)| ModuleHeader::of(name, value))
            .collect();
        let mut id = 0;
        // SAFETY: a live configuration pointer, on the main thread; every
        // buffer lives for the call.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.0,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        };
        if result == 0 {
            Ok(id)
        } else {
            Err(result)
        }
    }

    /// A scheduler that posts events to this configuration on the main
    /// thread.
    pub fn scheduler(self) -> Option<Scheduler> {
        // SAFETY: a live configuration pointer, on the main thread.
        let scheduler =
            unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0) };
        (!scheduler.is_null()).then_some(Scheduler(scheduler))
    }
}

impl Scheduler {
    /// Posts event `id` to the configuration's main-thread hook.
    pub fn commit(&self, id: u64) {
        // SAFETY: a scheduler not yet deleted (deletion consumes it).
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, id) }
    }

    /// Deletes the scheduler.
    pub fn delete(self) {
        // SAFETY: made by scheduler_new, deleted once (consumed here).
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

// ---------------------------------------------------------------------------
// Exported event hooks.
// ---------------------------------------------------------------------------

/// The configuration behind a module configuration pointer.
///
/// # Safety
/// `config` must be a pointer `..._config_new` returned and not yet destroyed.
unsafe fn shared<'a>(config: *const c_void) -> Option<&'a Arc<SharedConfig>> {
    // SAFETY: made by Box::into_raw in config_new, freed only in config_destroy.
    unsafe { config.cast::<Arc<SharedConfig>>().as_ref() }
}

/// The filter behind a module filter pointer.
///
/// # Safety
/// `filter` must be a pointer `..._filter_new` returned and not yet
/// destroyed; Envoy calls one stream's hooks one at a time.
unsafe fn filter<'a>(filter: *const c_void) -> Option<&'a mut Filter> {
    // SAFETY: made by Box::into_raw in filter_new, freed only in filter_destroy.
    unsafe { filter.cast::<Filter>().cast_mut().as_mut() }
}

/// Called once when Envoy loads the module: the ABI version it was built for.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    entry::program_init();
    ABI_VERSION.as_ptr().cast()
}

/// A new filter configuration (main thread); null refuses it.
///
/// # Safety
/// Envoy passes buffers valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    // SAFETY: Envoy lends both buffers for the call.
    let (name, bytes) = unsafe { (lent(name.ptr, name.length), lent(config.ptr, config.length)) };
    match entry::config_new(ConfigEnvoy(config_envoy), name, bytes) {
        Some(shared) => Box::into_raw(Box::new(shared)).cast_const().cast(),
        None => std::ptr::null(),
    }
}

/// A filter configuration Envoy no longer uses.
///
/// # Safety
/// `config` is a pointer config_new returned; Envoy destroys it once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    if config.is_null() {
        return;
    }
    // SAFETY: made by Box::into_raw in config_new; Envoy destroys it once.
    let shared = unsafe { Box::from_raw(config.cast::<Arc<SharedConfig>>().cast_mut()) };
    entry::config_destroy(*shared);
}

/// A new stream (worker thread); null closes the stream.
///
/// # Safety
/// `config` is a live module configuration pointer.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    filter_envoy: *mut c_void,
) -> *const c_void {
    // SAFETY: a live configuration pointer.
    let Some(shared) = (unsafe { shared(config) }) else {
        return std::ptr::null();
    };
    let filter = entry::filter_new(shared, FilterEnvoy(filter_envoy));
    Box::into_raw(Box::new(filter)).cast_const().cast()
}

/// The request headers.
///
/// # Safety
/// `filter` is a live module filter pointer.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: *mut c_void,
    filter_module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: a live filter pointer.
    let Some(filter) = (unsafe { filter(filter_module) }) else {
        return CONTINUE;
    };
    if entry::request_headers(filter, FilterEnvoy(filter_envoy)) {
        CONTINUE
    } else {
        STOP_ITERATION
    }
}

/// A request body frame: held while the request waits for the fleet.
///
/// # Safety
/// `filter` is a live module filter pointer.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy: *mut c_void,
    filter_module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: a live filter pointer.
    match unsafe { filter(filter_module) } {
        Some(filter) if filter.holds_request() => STOP_AND_BUFFER,
        _ => CONTINUE,
    }
}

/// Request trailers: nothing to do.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
) -> u32 {
    CONTINUE
}

/// The response headers: the `RateLimit` headers of an allowed request.
///
/// # Safety
/// `filter` is a live module filter pointer.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: *mut c_void,
    filter_module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: a live filter pointer.
    if let Some(filter) = unsafe { filter(filter_module) } {
        entry::response_headers(filter, FilterEnvoy(filter_envoy));
    }
    CONTINUE
}

/// A response body frame: nothing to do.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

/// Response trailers: nothing to do.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
) -> u32 {
    CONTINUE
}

/// The stream is complete: nothing to do (the audit record was written
/// when the decision was made).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
) {
}

/// The stream's filter is destroyed.
///
/// # Safety
/// `filter` is a pointer filter_new returned; Envoy destroys it once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter_module: *const c_void) {
    if filter_module.is_null() {
        return;
    }
    // SAFETY: made by Box::into_raw in filter_new; destroyed once.
    let filter = unsafe { Box::from_raw(filter_module.cast::<Filter>().cast_mut()) };
    entry::filter_destroy(*filter);
}

/// A per-stream one-shot callout's answer: this filter makes none.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _body_chunks: *const EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

/// The fleet call's response headers.
///
/// # Safety
/// `filter` is a live module filter pointer; Envoy lends the headers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: *mut c_void,
    filter_module: *const c_void,
    _stream_id: u64,
    headers: *const EnvoyHeader,
    headers_size: usize,
    _end_stream: bool,
) {
    // SAFETY: a live filter pointer; headers lent for the call.
    if let Some(filter) = unsafe { filter(filter_module) } {
        let pairs = unsafe { header_pairs(headers, headers_size) };
        entry::stream_headers(filter, &pairs);
    }
}

/// A chunk of the fleet call's response body.
///
/// # Safety
/// `filter` is a live module filter pointer; Envoy lends the chunks.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: *mut c_void,
    filter_module: *const c_void,
    _stream_id: u64,
    data: *const EnvoyBuffer,
    data_count: usize,
    _end_stream: bool,
) {
    // SAFETY: a live filter pointer; chunks lent for the call.
    if let Some(filter) = unsafe { filter(filter_module) } {
        let chunk = unsafe { concatenated(data, data_count) };
        entry::stream_data(filter, &chunk);
    }
}

/// The fleet call's response trailers (`grpc-status`).
///
/// # Safety
/// `filter` is a live module filter pointer; Envoy lends the trailers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: *mut c_void,
    filter_module: *const c_void,
    _stream_id: u64,
    trailers: *const EnvoyHeader,
    trailers_size: usize,
) {
    // SAFETY: a live filter pointer; trailers lent for the call.
    if let Some(filter) = unsafe { filter(filter_module) } {
        let pairs = unsafe { header_pairs(trailers, trailers_size) };
        entry::stream_headers(filter, &pairs);
    }
}

/// The fleet call completed.
///
/// # Safety
/// `filter` is a live module filter pointer.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    filter_envoy: *mut c_void,
    filter_module: *const c_void,
    _stream_id: u64,
) {
    // SAFETY: a live filter pointer.
    if let Some(filter) = unsafe { filter(filter_module) } {
        entry::stream_end(filter, FilterEnvoy(filter_envoy), true);
    }
}

/// The fleet call failed (reset, no connection, timeout).
///
/// # Safety
/// `filter` is a live module filter pointer.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    filter_envoy: *mut c_void,
    filter_module: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
    // SAFETY: a live filter pointer.
    if let Some(filter) = unsafe { filter(filter_module) } {
        entry::stream_end(filter, FilterEnvoy(filter_envoy), false);
    }
}

/// A per-stream scheduled event: this filter schedules none.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
    _event_id: u64,
) {
}

/// Downstream write buffer over its high watermark: nothing to do.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
) {
}

/// Downstream write buffer under its low watermark: nothing to do.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: *mut c_void,
    _filter_module: *const c_void,
) {
}

/// A configuration's tick, posted by the module's ticker (main thread).
///
/// # Safety
/// `config` is a live module configuration pointer.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: *mut c_void,
    config: *const c_void,
    _event_id: u64,
) {
    // SAFETY: a live configuration pointer.
    if let Some(shared) = unsafe { shared(config) } {
        entry::config_tick(shared, ConfigEnvoy(config_envoy));
    }
}

/// The answer to a configuration's HTTP callout (the key service).
///
/// # Safety
/// `config` is a live module configuration pointer; Envoy lends the
/// headers and body for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    config_envoy: *mut c_void,
    config: *const c_void,
    callout_id: u64,
    _result: u32,
    headers: *const EnvoyHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    // SAFETY: a live configuration pointer; headers and body lent for the call.
    if let Some(shared) = unsafe { shared(config) } {
        let pairs = unsafe { header_pairs(headers, headers_size) };
        let body = unsafe { concatenated(body_chunks, body_chunks_size) };
        entry::config_http_answer(shared, ConfigEnvoy(config_envoy), callout_id, &pairs, body);
    }
}

/// Configuration-level stream events: this module starts no such stream.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _stream_id: u64,
    _headers: *const EnvoyHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

/// See [`envoy_dynamic_module_on_http_filter_config_http_stream_headers`].
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

/// See [`envoy_dynamic_module_on_http_filter_config_http_stream_headers`].
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _stream_id: u64,
    _trailers: *const EnvoyHeader,
    _trailers_size: usize,
) {
}

/// See [`envoy_dynamic_module_on_http_filter_config_http_stream_headers`].
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _stream_id: u64,
) {
}

/// See [`envoy_dynamic_module_on_http_filter_config_http_stream_headers`].
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}
