//! The callbacks keygate exports to the host (proxy-wasm ABI 0.2.1), and nothing else.
//!
//! The host skips every callback a module does not export, and each one it does call is a
//! trip into the VM. So keygate exports only what it uses: no body, trailer, log, done or
//! delete callbacks, and its own small dispatch instead of the SDK's, which exports all of
//! them and keeps its contexts in SipHash maps of boxed trait objects. Per request the
//! host calls three of them: context create, request headers, response headers (and the
//! body callback for requests with a body, which only a paused lookup ever stops).

use crate::filter::handlers;

/// Marks the ABI version; the host reads it from the export's name.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

extern "C" {
    /// Runs the module's static constructors (wasi-libc's included).
    fn __wasm_call_ctors();
}

/// Called once when the VM starts, before any other callback. No host calls are allowed.
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: the linker-generated constructor list, run once, as a reactor must.
    unsafe { __wasm_call_ctors() };
    handlers::initialize();
}

/// The host's allocator for buffers it hands over (headers, configuration). The host
/// writes `size` bytes and passes ownership back; `host::owned` takes it over.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    // Exactly `size` bytes, so the taker can rebuild a `Vec` with that capacity.
    Box::into_raw(Box::<[u8]>::new_uninit_slice(size)).cast()
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root: u32, _vm_configuration_size: usize) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context: u32, parent: u32) {
    handlers::context_create(context, parent);
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root: u32, configuration_size: usize) -> u32 {
    handlers::configure(root, configuration_size) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(stream: u32, _headers: usize, _end: u32) -> u32 {
    handlers::request_headers(stream) as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(stream: u32, _headers: usize, _end: u32) -> u32 {
    handlers::response_headers(stream) as u32
}

/// A request with a body or trailers while its key is being looked up must not move on:
/// the host would take the body's "continue" as leave to forward the headers too.
#[no_mangle]
pub extern "C" fn proxy_on_request_body(stream: u32, _size: usize, _end: u32) -> u32 {
    handlers::request_body(stream)
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(stream: u32, _trailers: usize) -> u32 {
    handlers::request_trailers(stream)
}

/// The key service's answer to a lookup or a feed poll.
#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    _root: u32,
    token: u32,
    _headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    handlers::call_response(token, body_size);
}

/// Only root contexts tick (every `COUNTER_FLUSH_MS`): liveness and the counter flush.
#[no_mangle]
pub extern "C" fn proxy_on_tick(root: u32) {
    handlers::tick(root);
}
