//! The glue: host callbacks in (via `abi`), host calls out. All decisions are made by
//! `Policy::decide`; this file only reads the request and carries out the verdict.

use crate::core::decide::{Decision, Failed, Remote};
use crate::core::keytable::Key;
use crate::core::policy::Policy;
use crate::core::response::{self, Headers, Response, WOULD_DENY_HEADER};
use crate::core::usage::Counted;
use crate::core::verdict::{Outcome, RemoteUse, Verdict};
use crate::filter::contexts::Contexts;
use crate::filter::headers;
use crate::filter::host::{self, Map};
use crate::filter::remote::{self, HostCalls, Pass, Stream};
use crate::filter::usage;
use log::{debug, error, info, warn};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::OnceLock;

/// What the host does next with a stream (`proxy_on_*_headers` return values).
#[derive(Clone, Copy)]
pub enum Action {
    Continue = 0,
    /// Stop: keygate has sent a local reply.
    Pause = 1,
}

/// Everything one VM holds: its contexts (see `contexts`) and the outcomes counted since the
/// last flush, `[done, reported]` per outcome.
#[derive(Default)]
struct Vm {
    contexts: Contexts<Policy, Awaiting>,
    pending: [[u32; 2]; Outcome::ALL.len()],
}

/// How often counts reach Envoy's counters. Batching saves a host call per request; a
/// counter is at most this far behind.
pub const COUNTER_FLUSH_MS: u32 = 50;

/// What the response of a forwarded request needs: CORS headers for a browser's, under the
/// policy it started with, and its key's usage count for its status.
struct Awaiting {
    cors: Option<CorsAwait>,
    usage: Option<Counted>,
}

struct CorsAwait {
    policy: Rc<Policy>,
    origin: Vec<u8>,
    /// Whether the origin may read the response (`Verdict::allow_origin`).
    allowed: bool,
}

thread_local! {
    static VM: RefCell<Vm> = RefCell::default();
}

/// Runs `f` on the VM state. The host never re-enters the module during a callback (local
/// replies are sent after it returns), so the borrow cannot fail; if it ever did, `f` is
/// skipped and callers fail closed.
fn with_vm<T>(f: impl FnOnce(&mut Vm) -> T) -> Option<T> {
    VM.with(|vm| vm.try_borrow_mut().ok().map(|mut vm| f(&mut vm)))
}

pub fn initialize() {
    // No host calls here: `_initialize` runs before the host allows any.
    let _ = log::set_logger(&host::HostLogger);
}

/// Counter ids, defined once per VM: `keygate.<outcome>` for what was done, and
/// `keygate.report.<outcome>` for each denial report mode let through.
struct Metrics {
    done: [Option<u32>; Outcome::ALL.len()],
    reported: [Option<u32>; Outcome::ALL.len()],
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics {
        done: Outcome::ALL.map(|o| host::define_counter(&format!("keygate.{}", o.name()))),
        reported: Outcome::ALL.map(|o| {
            let reportable = o.reply().is_some() && o != Outcome::PreflightDenied;
            reportable
                .then(|| host::define_counter(&format!("keygate.report.{}", o.name())))
                .flatten()
        }),
    })
}

/// Counts the outcome as done, or as reported when report mode let a denial through; the
/// next tick adds it to Envoy's counter.
fn count(outcome: Outcome, reported: bool) {
    with_vm(|vm| {
        if let Some(slot) = vm.pending.get_mut(outcome as usize) {
            let n = &mut slot[usize::from(reported)];
            *n = n.saturating_add(1);
        }
    });
}

/// A root context's tick: it is alive, roots that stopped ticking are forgotten, and the
/// pending counts are added to Envoy's counters.
pub fn tick(root: u32) {
    let Some((gone, pending)) =
        with_vm(|vm| (vm.contexts.ticked(root), std::mem::take(&mut vm.pending)))
    else {
        return;
    };
    for id in &gone {
        debug!("root context {id} stopped ticking: its configuration is released");
    }
    resume(remote::tick(root, &gone));
    if let Some(Some(policy)) = with_vm(|vm| vm.contexts.root_config(root)) {
        usage::tick(&policy);
    }
    let m = metrics();
    for (i, [done, reported]) in pending.into_iter().enumerate() {
        for (n, ids) in [(done, &m.done), (reported, &m.reported)] {
            if let (true, Some(Some(id))) = (n > 0, ids.get(i)) {
                host::increment(*id, n);
            }
        }
    }
}

pub fn context_create(context: u32, parent: u32) {
    with_vm(|vm| vm.contexts.created(context, parent));
}

/// Compiles the plugin configuration; on failure the root keeps what it had (if anything)
/// and the host refuses the update.
pub fn configure(root: u32, size: usize) -> bool {
    log::set_max_level(host::log_level());
    metrics();
    host::set_tick_period(COUNTER_FLUSH_MS);
    let started = host::now_ms();
    let Some(json) = host::plugin_configuration(size) else {
        error!("config: no plugin configuration");
        return false;
    };
    match Policy::from_json(&json) {
        Ok(compiled) => {
            for warning in &compiled.warnings {
                warn!("{warning}");
            }
            let took = host::now_ms().zip(started).map_or(0, |(end, start)| end - start);
            info!(
                "configured {} keys in {} ms ({:?} mode)",
                compiled.policy.keys.len(),
                took,
                compiled.policy.mode
            );
            let service = compiled.policy.remote.as_ref();
            if remote::with_source(|s| s.configure(root, service)) != Some(true) {
                error!("key_service: no OS random source for the lookup cache's secret");
                return false;
            }
            let policy = Rc::new(compiled.policy);
            with_vm(|vm| vm.contexts.configured(root, policy)).is_some()
        }
        Err(e) => {
            // The previous policy, if any, keeps serving: Envoy rejects this update.
            error!("invalid configuration: {e}");
            false
        }
    }
}

pub fn request_headers(stream: u32) -> Action {
    let Some((root, policy)) = with_vm(|vm| vm.contexts.serving(stream)).flatten() else {
        // Unreachable with Envoy (a stream's context is created right before its request
        // headers, under a configured root); fail closed.
        error!("no configuration for stream {stream}: refused");
        let denied = Outcome::DeniedMissing;
        let body = denied.reply().map_or("", |r| r.body);
        host::send_response(401, denial_headers(denied), body.as_bytes());
        return Action::Pause;
    };
    serve(stream, root, policy, Pass::FIRST)
}

/// Decides the stream's request and carries out the verdict, or starts the lookup it
/// needs and pauses it. On a resumed stream, "continue" is a host call.
pub fn serve(stream: u32, root: u32, policy: Rc<Policy>, pass: Pass) -> Action {
    let map = host::request_header_map().unwrap_or_default();
    let scan = headers::scan(&map, &policy.forward);
    let req = &scan.request;
    let now = if policy.needs_clock { host::now_ms().unwrap_or(i64::MAX) } else { 0 };
    let failed = pass.failed;
    let decided = remote::with_cache(root, policy.remote.is_some(), |cache| {
        let view = cache.map(|cache| Remote { cache, failed });
        match policy.decide_with(req, now, view) {
            Decision::Done(verdict) => {
                let used = if pass.resumed { RemoteUse::None } else { verdict.remote };
                Ok((carry_out(&policy, &scan, &verdict, stream), used))
            }
            Decision::Ask(ask) => Err(ask),
        }
    });
    let action = match decided {
        Some(Ok((action, used))) => {
            // Counted here: the cache is no longer borrowed.
            remote::count_use(used);
            action
        }
        Some(Err(ask)) => {
            let origin = req.origin.value().unwrap_or_default();
            let retry = Rc::clone(&policy);
            let paused = Stream { stream, root, payload: policy, pass };
            let asked = remote::with_source(|s| s.ask(paused, ask, origin, &mut HostCalls));
            return match asked {
                Some(Ok(())) => Action::Pause,
                // No lookup: decide again without it.
                Some(Err(s)) => serve(stream, root, s.payload, s.pass),
                None => serve(stream, root, retry, Pass { failed: Failed::BOTH, ..pass }),
            };
        }
        // The policy has a key service but this root holds no cache: fail closed, as a
        // failed lookup would.
        None => {
            let verdict = Verdict {
                outcome: Outcome::Unavailable,
                key: None,
                allow_origin: false,
                remote: RemoteUse::None,
            };
            carry_out(&policy, &scan, &verdict, stream)
        }
    };
    if let (Action::Continue, true) = (action, pass.resumed) {
        host::continue_request();
    }
    action
}

/// What to do while a stream waits for a lookup: hold its body and trailers.
pub fn request_body(stream: u32) -> u32 {
    // FilterDataStatus::StopIterationAndBuffer, or Continue.
    u32::from(is_waiting(stream))
}

pub fn request_trailers(stream: u32) -> u32 {
    // FilterTrailersStatus::StopIteration, or Continue.
    u32::from(is_waiting(stream))
}

fn is_waiting(stream: u32) -> bool {
    remote::with_source(|s| s.is_waiting(stream)).unwrap_or(false)
}

/// The key service answered one of the root's calls.
pub fn call_response(token: u32, body_size: usize) {
    if usage::call_response(token) {
        return;
    }
    resume(remote::call_response(token, body_size));
    // An answer the feed overtook served the streams that waited for it, and no one else.
    remote::with_source(|s| s.settle());
}

/// Decides streams that waited for a lookup again, with its answer now cached (or failed).
fn resume(streams: Vec<remote::Resumed>) {
    for r in streams {
        // A stream reset while it waited is gone: nothing to answer.
        if host::set_effective_context(r.stream) {
            serve(r.stream, r.root, r.payload, r.pass);
        }
    }
}

/// Carries out a verdict: a local reply, or the request forwarded with its identity.
fn carry_out(policy: &Rc<Policy>, scan: &headers::Scan, verdict: &Verdict, stream: u32) -> Action {
    let req = &scan.request;
    let response = response::respond(policy, verdict, req);
    let denied = verdict.outcome.reply().is_some();
    let forwarded = matches!(response, Response::Forward { .. });
    count(verdict.outcome, denied && forwarded);
    let counted = usage::decided(policy, verdict.key, verdict.outcome);
    if denied {
        debug!(
            "{} key={}{}",
            verdict.outcome.name(),
            verdict.key.map_or("-", |k| &k.id),
            if forwarded { " (report mode: let through)" } else { "" }
        );
    }
    match response {
        Response::Reply { status, headers, body } => {
            match (req.origin.is_present(), verdict.outcome.reply()) {
                // Most denials: the headers depend on the outcome alone, serialized once.
                (false, Some(_)) => {
                    host::send_response(status, denial_headers(verdict.outcome), body.as_bytes())
                }
                _ => host::send_response(
                    status,
                    &headers::serialize(&headers.list()),
                    body.as_bytes(),
                ),
            };
            Action::Pause
        }
        Response::Forward { identity, would_deny, .. } => {
            forward(policy, scan, identity, would_deny);
            let cors = req.origin.value().map(|origin| CorsAwait {
                policy: Rc::clone(policy),
                origin: origin.to_vec(),
                allowed: verdict.allow_origin,
            });
            // The upstream's status costs a header read per forwarded request: only if asked.
            let wants_status = policy.usage.is_some_and(|u| u.upstream_status);
            let usage = counted.filter(|_| identity.is_some() && wants_status);
            if cors.is_some() || usage.is_some() {
                with_vm(|vm| vm.contexts.await_response(stream, Awaiting { cors, usage }));
            }
            Action::Continue
        }
    }
}

pub fn response_headers(stream: u32) -> Action {
    let taken = with_vm(|vm| vm.contexts.response(stream));
    let Some(Some(Awaiting { cors, usage })) = taken else {
        return Action::Continue;
    };
    if let Some(counted) = &usage {
        usage::responded(counted);
    }
    let Some(CorsAwait { policy, origin, allowed }) = cors else {
        return Action::Continue;
    };
    Headers::cors(&policy, Some(&origin), allowed).each(|name, value| {
        if name == b"vary" {
            add_vary_origin();
        } else {
            host::set_header(Map::Response, name, value);
        }
    });
    Action::Continue
}

/// Sets the upstream request's identity headers; client-sent copies never survive.
fn forward(
    policy: &Policy,
    scan: &headers::Scan,
    identity: Option<&Key>,
    would_deny: Option<&'static str>,
) {
    let fwd = &policy.forward;
    match identity {
        Some(key) => {
            put_header(
                &fwd.key_id_header,
                key.id.as_bytes(),
                scan.spoofed_key_id || !scan.complete,
            );
            if fwd.filter_state {
                // Filter state `wasm.keygate.key_id` / `wasm.keygate.owner`, for access logs.
                host::set_property(b"keygate.key_id", key.id.as_bytes());
                if let Some(owner) = &key.owner {
                    host::set_property(b"keygate.owner", owner.as_bytes());
                }
            }
            match &key.owner {
                Some(owner) => put_header(
                    &fwd.owner_header,
                    owner.as_bytes(),
                    scan.spoofed_owner || !scan.complete,
                ),
                None if scan.spoofed_owner => {
                    host::remove_header(Map::Request, &fwd.owner_header);
                }
                None => {}
            }
            match &key.limits {
                Some(limits) => put_header(
                    &fwd.limits_header,
                    limits.as_bytes(),
                    scan.spoofed_limits || !scan.complete,
                ),
                None if scan.spoofed_limits => {
                    host::remove_header(Map::Request, &fwd.limits_header);
                }
                None => {}
            }
        }
        None => {
            if scan.spoofed_key_id {
                host::remove_header(Map::Request, &fwd.key_id_header);
            }
            if scan.spoofed_owner {
                host::remove_header(Map::Request, &fwd.owner_header);
            }
            if scan.spoofed_limits {
                host::remove_header(Map::Request, &fwd.limits_header);
            }
        }
    }
    if let Some(outcome) = would_deny {
        host::set_header(Map::Request, WOULD_DENY_HEADER, outcome.as_bytes());
    } else if scan.spoofed_would_deny {
        host::remove_header(Map::Request, WOULD_DENY_HEADER);
    }
    if fwd.strip_authorization && scan.request.authorization.is_present() {
        host::remove_header(Map::Request, "authorization");
    }
}

/// Sets a request header keygate owns. Adding is cheaper for the host than replacing, and
/// is enough when a complete scan saw no client-sent copy.
fn put_header(name: &str, value: &[u8], client_sent: bool) {
    if client_sent {
        host::set_header(Map::Request, name, value);
    } else {
        host::add_header(Map::Request, name, value);
    }
}

/// The serialized headers of each denial's reply to a request without `Origin`.
static DENIAL_HEADERS: OnceLock<[Vec<u8>; Outcome::ALL.len()]> = OnceLock::new();

fn denial_headers(outcome: Outcome) -> &'static [u8] {
    let all = DENIAL_HEADERS.get_or_init(|| {
        Outcome::ALL.map(|o| {
            o.reply().map_or_else(Vec::new, |r| headers::serialize(&Headers::denial(r).list()))
        })
    });
    all.get(outcome as usize).map_or(&[], Vec::as_slice)
}

/// Adds `Origin` to the upstream's `vary`, keeping what it already varies on.
fn add_vary_origin() {
    match host::response_header("vary") {
        Some(v) if !v.is_empty() => {
            let covered = v.split(|&c| c == b',').any(|t| {
                let t = t.trim_ascii();
                t == b"*" || t.eq_ignore_ascii_case(b"origin")
            });
            if !covered {
                let merged = [&v[..], b", Origin"].concat();
                host::set_header(Map::Response, "vary", &merged);
            }
        }
        _ => {
            host::add_header(Map::Response, "vary", b"Origin");
        }
    }
}
