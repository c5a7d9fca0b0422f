//! The key service's host calls: sending lookups and feed polls, reading their answers, and
//! flushing the `remote.*` counters. What they mean is decided in `core::remote::source`;
//! this file holds the VM's one `RemoteSource` and nothing but host calls around it.

use crate::core::policy::{KeyService, Policy};
use crate::core::remote::cache::RemoteCache;
use crate::core::remote::protocol::{self, ProtocolError};
use crate::core::remote::source::{Answer, Calls, Counter, RemoteSource};
use crate::core::verdict::RemoteUse;
use crate::filter::headers;
use crate::filter::host;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::OnceLock;

pub use crate::core::remote::source::{Pass, Stream};

/// A waiting stream carries back the policy it was decided under.
pub type Resumed = Stream<Rc<Policy>>;

thread_local! {
    static SOURCE: RefCell<RemoteSource<Rc<Policy>>> = RefCell::default();
    /// The `remote.feed_lag` this VM last set.
    static FEED_LAG: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f` on the VM's remote source; `None` if it is borrowed (never, since the host
/// does not re-enter the module), and callers fail closed.
pub fn with_source<T>(f: impl FnOnce(&mut RemoteSource<Rc<Policy>>) -> T) -> Option<T> {
    SOURCE.with(|s| s.try_borrow_mut().ok().map(|mut s| f(&mut s)))
}

/// Runs `f` with the root's cache (`None` when the policy has no key service). `None` when
/// the policy has one but the root holds no cache: the caller fails closed.
pub fn with_cache<T>(
    root: u32,
    has_service: bool,
    f: impl FnOnce(Option<&RemoteCache>) -> T,
) -> Option<T> {
    if !has_service {
        return Some(f(None));
    }
    SOURCE.with(|s| {
        let s = s.try_borrow().ok()?;
        Some(f(Some(s.cache(root)?)))
    })
}

/// Sends calls with `proxy_http_call`, on the root context.
pub struct HostCalls;

impl Calls for HostCalls {
    fn get(&mut self, service: &KeyService, path: &str, timeout_ms: u32) -> Option<u32> {
        let request = headers::serialize(&[
            (b":method", b"GET"),
            (b":path", path.as_bytes()),
            (b":authority", service.authority.as_bytes()),
            (b"accept", b"application/json"),
        ]);
        host::http_call(&service.cluster, &request, timeout_ms)
    }
}

/// An answer (or a failure: no headers, a timeout's 504) for one of our calls: the streams
/// it lets be decided again.
pub fn call_response(token: u32, body_size: usize) -> Vec<Resumed> {
    if with_source(|s| s.expects(token)) != Some(true) {
        return Vec::new();
    }
    let answer = read_answer(body_size);
    let now = host::now_ms().unwrap_or(0);
    with_source(|s| s.answered(token, answer, now, &mut HostCalls)).unwrap_or_default()
}

fn read_answer(body_size: usize) -> Answer {
    let map = host::http_call_response_headers().unwrap_or_default();
    let (mut status, mut content_type) = (0, None);
    for (name, value) in headers::pairs(&map) {
        match name {
            b":status" => {
                status = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).unwrap_or(0)
            }
            b"content-type" => content_type = Some(value.to_vec()),
            _ => {}
        }
    }
    let body = if status == 200 {
        protocol::check_body(content_type.as_deref(), body_size).and_then(|()| {
            host::http_call_response_body(body_size)
                .ok_or_else(|| ProtocolError("body could not be read".into()))
        })
    } else {
        Ok(Vec::new())
    };
    Answer { status, body }
}

/// The root's tick: forget gone roots, poll the feed when due, flush the counters. Returns
/// the streams that waited on a gone root.
pub fn tick(root: u32, gone: &[u32]) -> Vec<Resumed> {
    let now = host::now_ms().unwrap_or(0);
    let Some(flush) = with_source(|s| s.tick(root, gone, now, &mut HostCalls)) else {
        return Vec::new();
    };
    let m = metrics();
    for (n, id) in flush.counts.iter().zip(m.counters.iter()) {
        if let (true, Some(id)) = (*n > 0, id) {
            host::add(*id, i64::from(*n));
        }
    }
    if let (true, Some(id)) = (flush.entries_delta != 0, m.entries) {
        host::add(id, flush.entries_delta);
    }
    if let Some(id) = m.feed_lag {
        // A gauge shared by the process's VMs: each sets what it last heard, when it changes.
        if FEED_LAG.replace(flush.feed_lag) != flush.feed_lag {
            host::set_gauge(id, flush.feed_lag);
        }
    }
    flush.orphans
}

/// Counts what the cache contributed to a first-pass verdict.
pub fn count_use(used: RemoteUse) {
    if used != RemoteUse::None {
        with_source(|s| s.count_use(used));
    }
}

struct Metrics {
    counters: [Option<u32>; Counter::ALL.len()],
    entries: Option<u32>,
    feed_lag: Option<u32>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics {
        counters: Counter::ALL.map(|c| host::define_counter(c.name())),
        entries: host::define_gauge("keygate.remote.cache_entries"),
        feed_lag: host::define_gauge("keygate.remote.feed_lag"),
    })
}
