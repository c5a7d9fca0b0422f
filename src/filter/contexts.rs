//! Which configuration serves a stream, and what a stream's response still needs: the
//! bookkeeping of proxy-wasm contexts, with no host calls so it is tested natively.
//!
//! keygate exports no `proxy_on_delete` (nor `proxy_on_done`): the host would call it for
//! every stream, and each call is a trip into the VM that costs about as much as a host
//! call. So nothing is freed per stream, and nothing is kept per stream either:
//! - a stream needs its root context only for its request headers, and Envoy creates a
//!   stream's context immediately before calling them, so the newest stream context is the
//!   one being served (anything else is refused);
//! - only a forwarded browser request keeps an entry, from its request headers to its
//!   response headers; entries left by streams that never got a response are bounded;
//! - a root context is known to be gone when it stops ticking: Envoy keeps ticking every
//!   root context it has and stops when it deletes one.

use hashbrown::HashMap;
use std::collections::BTreeMap;
use std::rc::Rc;

/// A root is forgotten once the VM has seen this many ticks per root it holds since that
/// root last ticked: 5 s with one other root at 50 ms ticks, 10 s with two. A live root
/// ticks every period, so it never falls that far behind.
pub const ROOT_GONE_PERIODS: u64 = 100;

/// Most forwarded browser requests one VM waits on. Past it the oldest entry goes, and that
/// response, if it ever comes, carries no CORS headers.
pub const MAX_AWAITING: usize = 16_384;

/// The contexts of one VM, serving configurations of type `P`; `A` is what a forwarded
/// request's response needs.
pub struct Contexts<P, A> {
    roots: HashMap<u32, Root<P>>,
    /// The stream context created last, and its root context.
    newest: Option<(u32, u32)>,
    /// Forwarded requests whose response needs something, by stream, oldest first.
    awaiting: BTreeMap<u32, A>,
    /// Ticks seen by this VM, from any root context.
    ticks: u64,
}

struct Root<P> {
    config: Option<Rc<P>>,
    /// `Contexts::ticks` when this root last ticked (or was created or configured).
    ticked: u64,
}

impl<P, A> Default for Contexts<P, A> {
    fn default() -> Self {
        Contexts { roots: HashMap::new(), newest: None, awaiting: BTreeMap::new(), ticks: 0 }
    }
}

impl<P, A> Contexts<P, A> {
    /// `proxy_on_context_create`: a root context has no parent; a stream's parent is the
    /// root context of its plugin.
    pub fn created(&mut self, context: u32, parent: u32) {
        if parent == 0 {
            self.roots.insert(context, Root { config: None, ticked: self.ticks });
        } else {
            self.newest = Some((context, parent));
        }
    }

    /// A root context's configuration was compiled; it replaces the root's previous one.
    pub fn configured(&mut self, root: u32, config: Rc<P>) {
        self.roots.insert(root, Root { config: Some(config), ticked: self.ticks });
    }

    /// The configuration serving `stream`'s request headers: its root's, when `stream` is
    /// the context created last. `None` means refuse the request.
    pub fn config_for(&self, stream: u32) -> Option<Rc<P>> {
        self.serving(stream).map(|(_, config)| config)
    }

    /// Like `config_for`, with the root context's id.
    pub fn serving(&self, stream: u32) -> Option<(u32, Rc<P>)> {
        let (newest, root) = self.newest?;
        if newest != stream {
            return None;
        }
        Some((root, self.roots.get(&root)?.config.clone()?))
    }

    /// The configuration `root` serves, if it has one.
    pub fn root_config(&self, root: u32) -> Option<Rc<P>> {
        self.roots.get(&root)?.config.clone()
    }

    /// Remembers what `stream`'s response needs, until `response` takes it.
    pub fn await_response(&mut self, stream: u32, need: A) {
        if self.awaiting.len() >= MAX_AWAITING {
            self.awaiting.pop_first();
        }
        self.awaiting.insert(stream, need);
    }

    /// What `stream`'s response headers need, if anything.
    pub fn response(&mut self, stream: u32) -> Option<A> {
        self.awaiting.remove(&stream)
    }

    /// `proxy_on_tick` of `root`: it is alive; roots that stopped ticking are forgotten, and
    /// their ids returned.
    pub fn ticked(&mut self, root: u32) -> Vec<u32> {
        self.ticks += 1;
        let now = self.ticks;
        if let Some(r) = self.roots.get_mut(&root) {
            r.ticked = now;
        }
        // Each live root ticks once a period, so a period moves `ticks` by at most the
        // number of roots.
        let gone_after = ROOT_GONE_PERIODS * self.roots.len() as u64;
        let gone: Vec<u32> = self
            .roots
            .iter()
            .filter(|(_, r)| now - r.ticked > gone_after)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.roots.remove(id);
        }
        gone
    }

    /// How many root contexts are held.
    #[cfg(test)]
    pub fn roots(&self) -> usize {
        self.roots.len()
    }

    /// How many responses are awaited.
    #[cfg(test)]
    pub fn awaiting(&self) -> usize {
        self.awaiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type C = Contexts<&'static str, &'static str>;

    fn with_root(root: u32, config: &'static str) -> C {
        let mut c = C::default();
        c.created(root, 0);
        c.configured(root, Rc::new(config));
        c
    }

    #[test]
    fn the_newest_stream_gets_its_roots_configuration() {
        let mut c = with_root(1, "a");
        c.created(2, 0);
        c.configured(2, Rc::new("b"));
        c.created(7, 1);
        assert_eq!(c.config_for(7).as_deref(), Some(&"a"));
        c.created(8, 2);
        assert_eq!(c.config_for(8).as_deref(), Some(&"b"));
    }

    #[test]
    fn any_other_stream_is_refused() {
        let mut c = with_root(1, "a");
        assert_eq!(c.config_for(5), None, "no stream created yet");
        c.created(5, 1);
        c.created(6, 1);
        assert_eq!(c.config_for(5), None, "not the newest");
        c.created(9, 3);
        assert_eq!(c.config_for(9), None, "unknown root");
        let mut unconfigured = C::default();
        unconfigured.created(1, 0);
        unconfigured.created(2, 1);
        assert_eq!(unconfigured.config_for(2), None, "root without a configuration");
    }

    #[test]
    fn a_new_configuration_serves_new_streams_only() {
        let mut c = with_root(1, "old");
        c.created(2, 1);
        let old = c.config_for(2);
        c.configured(1, Rc::new("new"));
        c.created(3, 1);
        assert_eq!(c.config_for(3).as_deref(), Some(&"new"));
        assert_eq!(old.as_deref(), Some(&"old"), "a stream keeps what it started with");
    }

    #[test]
    fn responses_are_taken_once() {
        let mut c = with_root(1, "a");
        assert_eq!(c.response(4), None);
        c.await_response(4, "allow");
        assert_eq!(c.response(5), None);
        assert_eq!(c.response(4), Some("allow"));
        assert_eq!(c.response(4), None);
        assert_eq!(c.awaiting(), 0);
    }

    #[test]
    fn abandoned_responses_are_bounded_and_the_oldest_go_first() {
        let mut c = with_root(1, "a");
        for stream in 0..(MAX_AWAITING as u32 + 10) {
            c.await_response(stream + 100, "allow");
        }
        assert_eq!(c.awaiting(), MAX_AWAITING);
        assert_eq!(c.response(100), None, "the oldest was dropped");
        assert_eq!(c.response(109), None);
        assert_eq!(c.response(110), Some("allow"));
        assert_eq!(c.response(MAX_AWAITING as u32 + 109), Some("allow"), "the newest stays");
    }

    #[test]
    fn a_root_that_stops_ticking_is_forgotten_and_a_live_one_never() {
        let mut c = with_root(1, "old");
        c.created(2, 0);
        c.configured(2, Rc::new("new"));
        // Both tick every period for a long time: neither goes.
        for _ in 0..10 * ROOT_GONE_PERIODS {
            assert!(c.ticked(1).is_empty());
            assert!(c.ticked(2).is_empty());
        }
        // The host deletes root 1: only root 2 ticks from now on.
        let mut gone = Vec::new();
        let mut periods = 0;
        while gone.is_empty() {
            gone = c.ticked(2);
            periods += 1;
            assert!(periods <= 2 * ROOT_GONE_PERIODS + 1, "root 1 never forgotten");
        }
        assert_eq!(gone, vec![1]);
        assert!(periods > ROOT_GONE_PERIODS, "forgotten after {periods} periods");
        assert_eq!(c.roots(), 1);
        c.created(3, 2);
        assert_eq!(c.config_for(3).as_deref(), Some(&"new"));
    }

    #[test]
    fn a_root_created_between_ticks_is_not_forgotten_before_it_ticks() {
        let mut c = with_root(1, "a");
        for _ in 0..5 * ROOT_GONE_PERIODS {
            c.ticked(1);
        }
        c.created(2, 0);
        c.configured(2, Rc::new("b"));
        assert!(c.ticked(1).is_empty());
        assert!(c.ticked(2).is_empty());
        assert_eq!(c.roots(), 2);
    }
}
