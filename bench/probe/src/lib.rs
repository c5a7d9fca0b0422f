//! A proxy-wasm filter that does as little as the host allows, with cargo features that
//! each add one per-request cost. Measured side by side, the variants price a VM entry and
//! a host call on this Envoy, which is what keygate's own design choices trade in.
//!
//! It declares the few ABI imports and exports it uses itself, like keygate's `host.rs` and
//! `abi.rs` do: depending on keygate (or the SDK) would add their costs to every probe.

use std::ptr::null_mut;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    #[cfg(feature = "status_property")]
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    // Only the exported response callback uses it.
    #[cfg(any(feature = "response", feature = "reply_late_headers"))]
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
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
}

/// The headers of keygate's 401 in the host's serialized map form.
const REPLY_HEADERS: &[u8] =
    b"\x02\x00\x00\x00\x0c\x00\x00\x00\x10\x00\x00\x00\x10\x00\x00\x00\x1c\x00\x00\x00\
content-type\0application/json\0www-authenticate\0Bearer error=\"invalid_token\"\0";
const REPLY_BODY: &[u8] = br#"{"error": "Unauthorized", "message": "Invalid API key"}"#;

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

extern "C" {
    fn __wasm_call_ctors();
}

/// Exporting `_initialize` makes the module a reactor: without it the linker wraps every
/// export in a constructor and destructor run, which would be measured as the ABI's cost.
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: the linker-generated constructor list, run once by the host.
    unsafe { __wasm_call_ctors() };
}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    Box::into_raw(Box::<[u8]>::new_uninit_slice(size)).cast()
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(_root: u32, _size: usize) -> u32 {
    1
}

/// Frees a buffer the host allocated through `proxy_on_memory_allocate`.
fn release(data: *mut u8, size: usize) {
    if !data.is_null() {
        // SAFETY: the host filled a boxed slice of exactly `size` bytes from our allocator.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(data, size)) });
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_stream: u32, _headers: usize, _end: u32) -> u32 {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: out-pointers to locals.
    unsafe {
        if cfg!(feature = "pairs") {
            proxy_get_header_map_pairs(0, &mut data, &mut size);
        } else {
            let name = b"authorization";
            proxy_get_header_map_value(0, name.as_ptr(), name.len(), &mut data, &mut size);
        }
    }
    #[cfg(feature = "sha256")]
    {
        use sha2::Digest;
        // SAFETY: the host wrote `size` bytes at `data` (or nothing).
        let value = if data.is_null() {
            &[][..]
        } else {
            unsafe { std::slice::from_raw_parts(data, size) }
        };
        let digest = sha2::Sha256::digest(value);
        std::hint::black_box(digest);
    }
    release(data, size);
    if cfg!(feature = "reply") {
        // SAFETY: pointers and lengths of static slices.
        let headers: &[u8] = if cfg!(feature = "reply_bare") { b"" } else { REPLY_HEADERS };
        unsafe {
            proxy_send_local_response(
                401,
                std::ptr::null(),
                0,
                REPLY_BODY.as_ptr(),
                REPLY_BODY.len(),
                headers.as_ptr(),
                headers.len(),
                -1,
            )
        };
        return if cfg!(feature = "reply_continue") { 0 } else { 1 };
    }
    if cfg!(feature = "add_header") {
        let (name, value) = (b"x-api-key-id", b"k1");
        // SAFETY: pointers and lengths of live slices.
        unsafe {
            proxy_add_header_map_value(0, name.as_ptr(), name.len(), value.as_ptr(), value.len())
        };
    }
    0
}

#[cfg(any(feature = "response", feature = "reply_late_headers"))]
#[no_mangle]
pub extern "C" fn proxy_on_response_headers(_stream: u32, _headers: usize, _end: u32) -> u32 {
    if cfg!(any(feature = "status", feature = "status_property")) {
        let (mut data, mut size) = (null_mut(), 0);
        // SAFETY: out-pointers to locals; the name and path are static.
        unsafe {
            #[cfg(feature = "status_property")]
            {
                let path = b"response\0code";
                proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size);
            }
            #[cfg(not(feature = "status_property"))]
            {
                let name = b":status";
                proxy_get_header_map_value(2, name.as_ptr(), name.len(), &mut data, &mut size);
            }
        }
        release(data, size);
    }
    if cfg!(feature = "reply_late_headers") {
        let set = |name: &[u8], value: &[u8], replace: bool| {
            // SAFETY: pointers and lengths of static slices.
            unsafe {
                if replace {
                    proxy_replace_header_map_value(
                        2,
                        name.as_ptr(),
                        name.len(),
                        value.as_ptr(),
                        value.len(),
                    );
                } else {
                    proxy_add_header_map_value(
                        2,
                        name.as_ptr(),
                        name.len(),
                        value.as_ptr(),
                        value.len(),
                    );
                }
            }
        };
        set(b"content-type", b"application/json", true);
        set(b"www-authenticate", b"Bearer error=\"invalid_token\"", false);
    }
    0
}

#[cfg(feature = "lifecycle")]
#[no_mangle]
pub extern "C" fn proxy_on_context_create(_context: u32, _parent: u32) {}

#[cfg(feature = "lifecycle")]
#[no_mangle]
pub extern "C" fn proxy_on_delete(_context: u32) {}
