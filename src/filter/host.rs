//! The few proxy-wasm host calls keygate makes, declared directly against the ABI.
//!
//! The SDK's wrappers `panic!` on any status they do not expect and unwrap UTF-8, and a
//! panic traps the VM for every later request on the worker. These wrappers return what
//! the host said and never panic; callers decide how to fail closed.

use std::ptr::{null, null_mut};

const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
const HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
const HTTP_CALL_RESPONSE_BODY: u32 = 4;
const PLUGIN_CONFIGURATION: u32 = 7;
const COUNTER: u32 = 0;
const GAUGE: u32 = 1;
const HTTP_REQUEST_STREAM: u32 = 0;
const OK: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_log_level(level: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    #[allow(clippy::too_many_arguments)]
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
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_set_effective_context(context: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
}

/// Takes ownership of a buffer the host allocated through the SDK's
/// `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes).
fn owned(status: u32, data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if status != OK {
        return None;
    }
    if data.is_null() {
        return Some(Vec::new());
    }
    // SAFETY: the host wrote `size` bytes into memory it obtained from our allocator
    // with exactly that capacity, and hands ownership to us.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

pub fn log(level: log::Level, message: &str) {
    let level = match level {
        log::Level::Trace => 0,
        log::Level::Debug => 1,
        log::Level::Info => 2,
        log::Level::Warn => 3,
        log::Level::Error => 4,
    };
    // SAFETY: pointer and length describe a live `str`.
    unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

/// The host's log level for this plugin, as a `log` filter.
pub fn log_level() -> log::LevelFilter {
    let mut level = 2;
    // SAFETY: the host writes one u32.
    unsafe { proxy_get_log_level(&mut level) };
    match level {
        0 => log::LevelFilter::Trace,
        1 => log::LevelFilter::Debug,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Warn,
        4 => log::LevelFilter::Error,
        _ => log::LevelFilter::Off,
    }
}

/// Wall-clock time in Unix milliseconds, or `None` if the host refuses.
pub fn now_ms() -> Option<i64> {
    let mut nanos = 0u64;
    // SAFETY: the host writes one u64.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    (status == OK).then_some((nanos / 1_000_000) as i64)
}

pub fn plugin_configuration(size: usize) -> Option<Vec<u8>> {
    let (mut data, mut len) = (null_mut(), 0);
    // SAFETY: out-pointers to locals; the buffer is taken over by `owned`.
    let status =
        unsafe { proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, &mut data, &mut len) };
    owned(status, data, len)
}

/// All request headers in the host's serialized form (see `headers::pairs`).
pub fn request_header_map() -> Option<Vec<u8>> {
    let (mut data, mut len) = (null_mut(), 0);
    // SAFETY: as above.
    let status = unsafe { proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut len) };
    owned(status, data, len)
}

pub fn response_header(name: &str) -> Option<Vec<u8>> {
    let (mut data, mut len) = (null_mut(), 0);
    // SAFETY: as above.
    let status = unsafe {
        proxy_get_header_map_value(RESPONSE_HEADERS, name.as_ptr(), name.len(), &mut data, &mut len)
    };
    owned(status, data, len)
}

#[derive(Clone, Copy)]
pub enum Map {
    Request,
    Response,
}

impl Map {
    fn id(self) -> u32 {
        match self {
            Map::Request => REQUEST_HEADERS,
            Map::Response => RESPONSE_HEADERS,
        }
    }
}

pub fn set_header(map: Map, name: impl AsRef<[u8]>, value: &[u8]) -> bool {
    let name = name.as_ref();
    // SAFETY: pointers and lengths describe live slices.
    let s = unsafe {
        proxy_replace_header_map_value(
            map.id(),
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    s == OK
}

pub fn add_header(map: Map, name: &str, value: &[u8]) -> bool {
    // SAFETY: as above.
    let s = unsafe {
        proxy_add_header_map_value(map.id(), name.as_ptr(), name.len(), value.as_ptr(), value.len())
    };
    s == OK
}

pub fn remove_header(map: Map, name: &str) -> bool {
    // SAFETY: as above.
    unsafe { proxy_remove_header_map_value(map.id(), name.as_ptr(), name.len()) == OK }
}

/// Sends a local reply; `headers` is a serialized map (see `headers::serialize`).
pub fn send_response(status: u32, headers: &[u8], body: &[u8]) -> bool {
    // SAFETY: pointers and lengths describe live slices.
    let s = unsafe {
        proxy_send_local_response(
            status,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    s == OK
}

pub fn define_counter(name: &str) -> Option<u32> {
    let mut id = 0;
    // SAFETY: as above; the host writes one u32.
    let s = unsafe { proxy_define_metric(COUNTER, name.as_ptr(), name.len(), &mut id) };
    (s == OK).then_some(id)
}

pub fn increment(id: u32, by: u32) {
    // SAFETY: plain values.
    unsafe { proxy_increment_metric(id, i64::from(by)) };
}

/// Asks for `proxy_on_tick` on this root context every `ms` milliseconds.
pub fn set_tick_period(ms: u32) {
    // SAFETY: a plain value.
    unsafe { proxy_set_tick_period_milliseconds(ms) };
}

/// Sets filter state; Envoy stores it under `wasm.<path>`.
pub fn set_property(path: &[u8], value: &[u8]) -> bool {
    // SAFETY: as above.
    unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) == OK }
}

/// Sends an HTTP request to `cluster` (headers serialized, see `headers::serialize`) and
/// returns its token; the answer comes to `proxy_on_http_call_response` on the root
/// context. `None` when the host refuses at once (unknown cluster, missing pseudo-header).
pub fn http_call(cluster: &str, headers: &[u8], timeout_ms: u32) -> Option<u32> {
    http_call_with_body(cluster, headers, &[], timeout_ms)
}

/// As [`http_call`], with a request body.
pub fn http_call_with_body(
    cluster: &str,
    headers: &[u8],
    body: &[u8],
    timeout_ms: u32,
) -> Option<u32> {
    let mut token = 0;
    // SAFETY: pointers and lengths describe live slices; the host writes one u32.
    let s = unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            if body.is_empty() { null() } else { body.as_ptr() },
            body.len(),
            null(),
            0,
            timeout_ms,
            &mut token,
        )
    };
    (s == OK).then_some(token)
}

/// The headers of the HTTP call answer being delivered, serialized.
pub fn http_call_response_headers() -> Option<Vec<u8>> {
    let (mut data, mut len) = (null_mut(), 0);
    // SAFETY: out-pointers to locals; the buffer is taken over by `owned`.
    let status =
        unsafe { proxy_get_header_map_pairs(HTTP_CALL_RESPONSE_HEADERS, &mut data, &mut len) };
    owned(status, data, len)
}

/// The body of the HTTP call answer being delivered (`size` bytes, as announced).
pub fn http_call_response_body(size: usize) -> Option<Vec<u8>> {
    let (mut data, mut len) = (null_mut(), 0);
    // SAFETY: as above.
    let status =
        unsafe { proxy_get_buffer_bytes(HTTP_CALL_RESPONSE_BODY, 0, size, &mut data, &mut len) };
    owned(status, data, len)
}

/// Makes `context` the one later host calls act on; false when it is gone.
pub fn set_effective_context(context: u32) -> bool {
    // SAFETY: a plain value.
    unsafe { proxy_set_effective_context(context) == OK }
}

/// Resumes the effective stream's request, paused in its request headers.
pub fn continue_request() -> bool {
    // SAFETY: a plain value.
    unsafe { proxy_continue_stream(HTTP_REQUEST_STREAM) == OK }
}

pub fn define_gauge(name: &str) -> Option<u32> {
    let mut id = 0;
    // SAFETY: as above; the host writes one u32.
    let s = unsafe { proxy_define_metric(GAUGE, name.as_ptr(), name.len(), &mut id) };
    (s == OK).then_some(id)
}

/// Adds `by` (possibly negative) to a counter or gauge.
pub fn add(id: u32, by: i64) {
    // SAFETY: plain values.
    unsafe { proxy_increment_metric(id, by) };
}

/// Sets a gauge.
pub fn set_gauge(id: u32, value: u64) {
    // SAFETY: plain values.
    unsafe { proxy_record_metric(id, value) };
}

/// Routes the `log` crate to the host; messages are formatted only when enabled.
pub struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            log(record.level(), &record.args().to_string());
        }
    }

    fn flush(&self) {}
}
