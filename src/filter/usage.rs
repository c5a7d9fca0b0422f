//! Usage counting's host calls around the core's `Tally` and `Outbox` (`core::usage`): a
//! request counted where `handlers` decides it, its upstream status read in the response
//! headers, and the batches sent to the key service's cluster from the root's tick.
//!
//! Nothing here runs for a policy without `usage`.

use crate::core::keytable::Key;
use crate::core::policy::Policy;
use crate::core::usage::{Counted, Delivery, Outbox, Tally};
use crate::core::verdict::Outcome;
use crate::filter::headers;
use crate::filter::host;
use log::warn;
use std::cell::RefCell;
use std::sync::OnceLock;

struct State {
    tally: Tally,
    outbox: Outbox,
    /// What was last added to the `usage.*` counters.
    reported_overflow: u64,
    reported_dropped: u64,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// Runs `f` on the VM's usage state, made on first use.
fn with_state<T>(max_keys: usize, f: impl FnOnce(&mut State) -> T) -> Option<T> {
    STATE.with(|s| {
        let mut s = s.try_borrow_mut().ok()?;
        if s.is_none() {
            let now = host::now_ms().unwrap_or(0);
            *s = Some(State {
                tally: Tally::new(max_keys, now),
                outbox: Outbox::new(vm_id(), now),
                reported_overflow: 0,
                reported_dropped: 0,
            });
        }
        s.as_mut().map(f)
    })
}

/// 16 random hex characters naming this VM in batch ids (the clock's, without a random
/// source: unique enough across VMs started at different nanoseconds).
fn vm_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = host::now_ms().unwrap_or(0).to_le_bytes();
    }
    crate::core::hex::encode(&bytes)
}

/// Counts a decided request; where it was counted, when its upstream answer should be too.
pub fn decided(policy: &Policy, key: Option<&Key>, outcome: Outcome) -> Option<Counted> {
    let settings = policy.usage?;
    let key = key.map(|k| (&*k.id, k.owner.as_deref()));
    with_state(settings.max_keys, |s| s.tally.decided(key, outcome)).flatten()
}

/// The upstream answered a request counted as `counted`: its status class is counted.
pub fn responded(counted: &Counted) {
    let status = host::response_header(":status")
        .and_then(|v| std::str::from_utf8(&v).ok().and_then(|v| v.parse::<u32>().ok()));
    if let Some(status) = status {
        STATE.with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                if let Some(s) = s.as_mut() {
                    s.tally.responded(counted, status);
                }
            }
        });
    }
}

/// The tick of a root serving `policy`: seal a new minute or a flush interval's counts,
/// and send the oldest held batch.
pub fn tick(policy: &Policy) {
    let (Some(settings), Some(service)) = (policy.usage, policy.remote.as_ref()) else {
        return;
    };
    let Some(now) = host::now_ms() else { return };
    let send = with_state(settings.max_keys, |s| {
        if let Some(sealed) = s.tally.roll(now) {
            s.outbox.hold(&sealed);
        }
        if s.outbox.flush_due(now, settings.flush_ms) {
            if let Some(sealed) = s.tally.seal() {
                s.outbox.hold(&sealed);
            }
        }
        let counts =
            (s.tally.overflowed() - s.reported_overflow, s.outbox.dropped - s.reported_dropped);
        s.reported_overflow += counts.0;
        s.reported_dropped += counts.1;
        (s.outbox.next(now).map(|b| b.body.clone()), counts)
    });
    let Some((batch, (overflow, dropped))) = send else { return };
    let m = metrics();
    for (n, id) in [(overflow, m.overflow), (dropped, m.dropped)] {
        if let (true, Some(id)) = (n > 0, id) {
            host::add(id, n as i64);
        }
    }
    if dropped > 0 {
        warn!(
            "usage: the key service took no batch for too long; {dropped} requests' counts dropped"
        );
    }
    let Some(body) = batch else { return };
    let path = format!("{}/usage", service.path_prefix);
    let request = headers::serialize(&[
        (b":method", b"POST"),
        (b":path", path.as_bytes()),
        (b":authority", service.authority.as_bytes()),
        (b"content-type", b"application/json"),
    ]);
    let token =
        host::http_call_with_body(&service.cluster, &request, body.as_bytes(), service.timeout_ms);
    STATE.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if let Some(s) = s.as_mut() {
                s.outbox.sent(token, now);
            }
        }
    });
}

/// An answer to one of our calls: `true` when it was a batch's (taken on a 2xx).
pub fn call_response(token: u32) -> bool {
    let ours = STATE.with(|s| {
        s.try_borrow().ok().is_some_and(|s| s.as_ref().is_some_and(|s| s.outbox.expects(token)))
    });
    if !ours {
        return false;
    }
    let map = host::http_call_response_headers().unwrap_or_default();
    let status = headers::pairs(&map)
        .find(|(name, _)| *name == b":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u32>().ok())
        .unwrap_or(0);
    let now = host::now_ms().unwrap_or(0);
    let delivery = STATE.with(|s| {
        let mut s = s.try_borrow_mut().ok()?;
        Some(s.as_mut()?.outbox.answered(token, status, now))
    });
    if delivery == Some(Delivery::Refused) {
        warn!("usage: the key service refused a batch ({status}); its counts are dropped");
    }
    let m = metrics();
    let id = if delivery == Some(Delivery::Taken) { m.sent } else { m.failed };
    if let Some(id) = id {
        host::add(id, 1);
    }
    true
}

struct Metrics {
    sent: Option<u32>,
    failed: Option<u32>,
    overflow: Option<u32>,
    dropped: Option<u32>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics {
        sent: host::define_counter("keygate.usage.batches_sent"),
        failed: host::define_counter("keygate.usage.batches_failed"),
        overflow: host::define_counter("keygate.usage.overflow"),
        dropped: host::define_counter("keygate.usage.dropped"),
    })
}
