//! The remote key source without Envoy: lookups started, joined and refused, answers and
//! what they resume, the change feed's polls and what they invalidate, and roots that go.
//! A recorder stands in for the host's `proxy_http_call`.

mod common;

use common::{hex, policy};
use keygate::core::decide::{Ask, Failed};
use keygate::core::keytable::sha256;
use keygate::core::policy::{KeyService, Policy};
use keygate::core::remote::cache::Cached;
use keygate::core::remote::source::{
    Answer, Calls, Counter, Counts, Flush, Pass, RemoteSource, Stream,
};

const ROOT: u32 = 1;
const NOW: i64 = 1_000_000;

/// Records every call and hands out tokens 100, 101, ...; refuses all while `refuse`.
#[derive(Default)]
struct Recorder {
    paths: Vec<String>,
    timeouts: Vec<u32>,
    refuse: bool,
}

impl Calls for Recorder {
    fn get(&mut self, _service: &KeyService, path: &str, timeout_ms: u32) -> Option<u32> {
        if self.refuse {
            return None;
        }
        self.paths.push(path.to_string());
        self.timeouts.push(timeout_ms);
        Some(99 + self.paths.len() as u32)
    }
}

fn service_policy(extra: &str) -> Policy {
    // Plain polling unless a test asks for held polls.
    let wait = if extra.contains("changes_wait_ms") { "" } else { r#", "changes_wait_ms": 0"# };
    let extra = format!("{extra}{wait}");
    policy(&format!(
        r#"{{"keys": [], "key_service": {{"cluster": "keys", "changes_poll_ms": 1000{extra},
            "cache": {{"ttl_seconds": 60, "negative_ttl_seconds": 10, "stale_if_error_seconds": 300}}}}}}"#
    ))
}

struct Rig {
    source: RemoteSource<&'static str>,
    calls: Recorder,
    /// Every count flushed so far.
    counts: Counts,
}

fn rig(extra: &str) -> Rig {
    let policy = service_policy(extra);
    let mut source = RemoteSource::default();
    assert!(source.configure(ROOT, policy.remote.as_ref()));
    Rig { source, calls: Recorder::default(), counts: [0; Counter::ALL.len()] }
}

fn key_ask(key: &str) -> Ask {
    Ask::Key { tag: 0, digest: sha256(key.as_bytes()) }
}

fn ok(body: String) -> Answer {
    Answer { status: 200, body: Ok(body.into_bytes()) }
}

fn status(status: u32) -> Answer {
    Answer { status, body: Ok(Vec::new()) }
}

fn key_answer(key: &str, id: &str) -> Answer {
    ok(format!(r#"{{"sha256": "{}", "key": {{"id": "{id}"}}}}"#, hex(key)))
}

fn changes(json: &str) -> Answer {
    ok(json.to_string())
}

impl Rig {
    /// Stream `stream` asks for `ask`, tagged by its own name.
    fn ask(&mut self, stream: u32, ask: Ask, pass: Pass) -> Result<(), (u32, Pass)> {
        let s = Stream { stream, root: ROOT, payload: "policy", pass };
        self.source
            .ask(s, ask, b"https://app.example", &mut self.calls)
            .map_err(|s| (s.stream, s.pass))
    }

    /// The streams an answer resumes, with their passes.
    fn answer(&mut self, token: u32, answer: Answer) -> Vec<(u32, Pass)> {
        self.answer_at(token, answer, NOW)
    }

    fn answer_at(&mut self, token: u32, answer: Answer, at: i64) -> Vec<(u32, Pass)> {
        let resumed = self.source.answered(token, answer, at, &mut self.calls);
        resumed.into_iter().map(|s| (s.stream, s.pass)).collect()
    }

    fn tick(&mut self, at: i64) -> Flush<&'static str> {
        let flush = self.source.tick(ROOT, &[], at, &mut self.calls);
        for (total, n) in self.counts.iter_mut().zip(flush.counts) {
            *total += n;
        }
        flush
    }

    /// What has been counted so far of `counter`.
    fn counted(&mut self, counter: Counter, at: i64) -> u32 {
        self.tick(at);
        self.counts[counter as usize]
    }

    fn cached(&self, key: &str) -> bool {
        let cache = self.source.cache(ROOT);
        cache.is_some_and(|c| matches!(c.get(c.tag(key.as_bytes()), NOW), Cached::Fresh(_)))
    }

    fn cache_answer(&mut self, key: &str, id: &str) {
        let stream = 900 + self.calls.paths.len() as u32;
        let ask = Ask::Key { tag: self.tag(key), digest: sha256(key.as_bytes()) };
        assert_eq!(self.ask(stream, ask, Pass::FIRST), Ok(()));
        let token = self.last_token();
        assert_eq!(self.answer(token, key_answer(key, id)).len(), 1);
    }

    fn tag(&self, key: &str) -> u128 {
        self.source.cache(ROOT).map_or(0, |c| c.tag(key.as_bytes()))
    }

    /// Key and origin lookups sent so far (feed polls aside).
    fn lookups(&self) -> usize {
        self.calls.paths.iter().filter(|p| !p.contains("/changes")).count()
    }

    fn last_token(&self) -> u32 {
        99 + self.calls.paths.len() as u32
    }
}

fn resumed(failed: Failed) -> Pass {
    Pass { resumed: true, failed, asks: 1 }
}

#[test]
fn streams_asking_for_one_key_share_one_lookup_and_all_resume_with_its_answer() {
    let mut r = rig("");
    assert_eq!(r.ask(7, key_ask("k"), Pass::FIRST), Ok(()));
    assert_eq!(r.ask(8, key_ask("k"), Pass::FIRST), Ok(()));
    assert_eq!(r.calls.paths, [format!("/v1/filter/keys/{}", hex("k"))]);
    assert!(r.source.is_waiting(7) && r.source.is_waiting(8));
    let back = r.answer(100, key_answer("k", "web"));
    assert_eq!(back, [(7, resumed(Failed::NONE)), (8, resumed(Failed::NONE))]);
    assert!(!r.source.is_waiting(7));
    let counts = r.tick(NOW).counts;
    assert_eq!(counts[Counter::Lookups as usize], 1);
    assert_eq!(counts[Counter::Errors as usize], 0);
}

#[test]
fn an_answer_is_cached_under_the_tag_the_decision_asked_with() {
    let mut r = rig("");
    r.cache_answer("k", "web");
    assert!(r.cached("k"));
    assert!(!r.cached("other"));
    assert_eq!(r.tick(NOW).entries_delta, 1);
}

#[test]
fn a_404_is_cached_as_absent() {
    let mut r = rig("");
    let ask = Ask::Key { tag: r.tag("gone"), digest: sha256(b"gone") };
    assert_eq!(r.ask(3, ask, Pass::FIRST), Ok(()));
    assert_eq!(r.answer(100, status(404)), [(3, resumed(Failed::NONE))]);
    let cache = r.source.cache(ROOT);
    assert!(cache.is_some_and(|c| matches!(c.get(c.tag(b"gone"), NOW), Cached::Absent)));
}

#[test]
fn a_failed_lookup_resumes_its_streams_marked_failed_and_counts_an_error() {
    for answer in [
        status(0),
        status(500),
        status(504),
        ok("{".into()),
        key_answer("another key", "web"),
        Answer {
            status: 200,
            body: Err(keygate::core::remote::protocol::ProtocolError("too large".into())),
        },
    ] {
        let mut r = rig("");
        assert_eq!(r.ask(5, key_ask("k"), Pass::FIRST), Ok(()));
        assert_eq!(r.answer(100, answer), [(5, resumed(Failed::KEY))]);
        assert!(!r.cached("k"));
        assert_eq!(r.tick(NOW).counts[Counter::Errors as usize], 1);
    }
}

#[test]
fn an_origin_lookup_failing_marks_only_the_origin_failed() {
    let mut r = rig("");
    assert_eq!(r.ask(5, Ask::Origin, Pass::FIRST), Ok(()));
    assert_eq!(r.calls.paths, ["/v1/filter/origins/https%3a%2f%2fapp.example"]);
    assert_eq!(r.answer(100, status(503)), [(5, resumed(Failed::ORIGIN))]);
}

#[test]
fn a_third_ask_is_refused_and_decided_as_failed() {
    let mut r = rig("");
    let second = Pass { resumed: true, failed: Failed::NONE, asks: 2 };
    let refused = Pass { failed: Failed::KEY, ..second };
    assert_eq!(r.ask(5, key_ask("k"), second), Err((5, refused)));
    assert!(r.calls.paths.is_empty());
}

#[test]
fn max_pending_refuses_new_lookups_but_lets_streams_join_one_in_flight() {
    let mut r = rig(r#", "max_pending": 2"#);
    assert_eq!(r.ask(1, key_ask("a"), Pass::FIRST), Ok(()));
    assert_eq!(r.ask(2, key_ask("b"), Pass::FIRST), Ok(()));
    let refused = Pass { failed: Failed::KEY, ..Pass::FIRST };
    assert_eq!(r.ask(3, key_ask("c"), Pass::FIRST), Err((3, refused)));
    assert_eq!(r.ask(4, key_ask("a"), Pass::FIRST), Ok(()));
    assert_eq!(r.calls.paths.len(), 2);
    assert_eq!(r.tick(NOW).counts[Counter::Errors as usize], 1);
}

#[test]
fn a_call_the_host_refuses_is_decided_as_failed_and_counted() {
    let mut r = rig("");
    r.calls.refuse = true;
    let refused = Pass { failed: Failed::KEY, ..Pass::FIRST };
    assert_eq!(r.ask(1, key_ask("a"), Pass::FIRST), Err((1, refused)));
    assert!(!r.source.is_waiting(1));
    let counts = r.tick(NOW).counts;
    assert_eq!((counts[Counter::Lookups as usize], counts[Counter::Errors as usize]), (0, 1));
}

#[test]
fn an_answer_to_a_call_that_is_not_ours_changes_nothing() {
    let mut r = rig("");
    assert!(!r.source.expects(42));
    assert!(r.answer(42, key_answer("k", "web")).is_empty());
    assert!(!r.cached("k"));
}

#[test]
fn the_feed_polls_from_the_start_then_after_its_cursor_once_per_interval() {
    let mut r = rig("");
    r.tick(NOW);
    assert_eq!(r.calls.paths, ["/v1/filter/changes"]);
    r.tick(NOW + 5_000);
    assert_eq!(r.calls.paths.len(), 1, "one poll in flight at a time");
    assert!(r.answer(100, changes(r#"{"cursor": "db.7/x+"}"#)).is_empty());
    r.tick(NOW + 5_000);
    assert_eq!(r.calls.paths[1], "/v1/filter/changes?after=db.7%2fx%2b");
    assert!(r.answer(101, changes(r#"{"cursor": "db.8"}"#)).is_empty());
    r.tick(NOW + 5_500);
    assert_eq!(r.calls.paths.len(), 2, "not due within changes_poll_ms");
    r.tick(NOW + 6_000);
    assert_eq!(r.calls.paths[2], "/v1/filter/changes?after=db.8");
}

/// Polls the feed once and answers it with `json`.
fn feed(r: &mut Rig, at: i64, json: &str) {
    r.tick(at);
    let token = r.last_token();
    assert!(r.answer_at(token, changes(json), at).is_empty());
}

#[test]
fn the_first_poll_drops_answers_cached_before_it_and_later_ones_drop_what_they_list() {
    let mut r = rig("");
    r.cache_answer("early", "e");
    feed(&mut r, NOW, r#"{"cursor": "db.1"}"#);
    assert!(!r.cached("early"), "may predate changes the feed will never list");
    r.cache_answer("a", "a");
    r.cache_answer("b", "b");
    feed(&mut r, NOW + 1_000, &format!(r#"{{"cursor": "db.2", "keys": ["{}"]}}"#, hex("a")));
    assert!(!r.cached("a"));
    assert!(r.cached("b"), "kept when the feed moves on without listing it");
    assert_eq!(r.counted(Counter::Invalidations, NOW + 1_000), 2);
    // A negative answer is kept too while the feed moves on without listing it.
    let ask = Ask::Key { tag: r.tag("unknown"), digest: sha256(b"unknown") };
    assert_eq!(r.ask(9, ask, Pass::FIRST), Ok(()));
    let token = r.last_token();
    r.answer(token, status(404));
    feed(&mut r, NOW + 2_000, &format!(r#"{{"cursor": "db.3", "keys": ["{}"]}}"#, hex("b")));
    let cache = r.source.cache(ROOT);
    assert!(cache.is_some_and(|c| matches!(c.get(c.tag(b"unknown"), NOW), Cached::Absent)));
    assert!(!r.cached("b"));
}

#[test]
fn a_reset_drops_everything() {
    let mut r = rig("");
    feed(&mut r, NOW, r#"{"cursor": "db.1"}"#);
    r.cache_answer("a", "a");
    r.cache_answer("b", "b");
    feed(&mut r, NOW + 1_000, r#"{"cursor": "db2.1", "reset": true}"#);
    assert!(!r.cached("a") && !r.cached("b"));
}

#[test]
fn a_key_listed_while_its_lookup_is_in_flight_serves_only_the_streams_that_waited_before() {
    let mut r = rig("");
    feed(&mut r, NOW, r#"{"cursor": "db.1"}"#);
    let ask = Ask::Key { tag: r.tag("k"), digest: sha256(b"k") };
    assert_eq!(r.ask(5, ask, Pass::FIRST), Ok(()));
    let before = r.last_token();
    feed(&mut r, NOW + 1_000, &format!(r#"{{"cursor": "db.2", "keys": ["{}"]}}"#, hex("k")));
    // A request arriving after the change does not join the lookup from before it.
    assert_eq!(r.ask(6, ask, Pass::FIRST), Ok(()));
    assert_eq!(r.lookups(), 2, "a fresh lookup");
    let after = r.last_token();
    // The old answer decides the stream that waited for it, and no one else: it is there
    // while that stream is decided, and gone once settled.
    assert_eq!(r.answer(before, key_answer("k", "web")), [(5, resumed(Failed::NONE))]);
    assert!(r.cached("k"));
    r.source.settle();
    assert!(!r.cached("k"));
    assert_eq!(r.answer(after, status(404)), [(6, resumed(Failed::NONE))]);
    r.source.settle();
    let cache = r.source.cache(ROOT);
    assert!(cache.is_some_and(|c| matches!(c.get(c.tag(b"k"), NOW), Cached::Absent)));
}

#[test]
fn the_old_answer_arriving_after_the_fresh_one_is_not_kept_and_leaves_the_fresh_one() {
    let mut r = rig("");
    feed(&mut r, NOW, r#"{"cursor": "db.1"}"#);
    let ask = Ask::Key { tag: r.tag("k"), digest: sha256(b"k") };
    assert_eq!(r.ask(5, ask, Pass::FIRST), Ok(()));
    let before = r.last_token();
    feed(&mut r, NOW + 1_000, r#"{"cursor": "db2.1", "reset": true}"#);
    assert_eq!(r.ask(6, ask, Pass::FIRST), Ok(()));
    let after = r.last_token();
    assert_eq!(r.answer(after, status(404)), [(6, resumed(Failed::NONE))]);
    r.source.settle();
    // The old answer decides its stream on the fresher one, and is not cached.
    assert_eq!(r.answer(before, key_answer("k", "web")), [(5, resumed(Failed::NONE))]);
    r.source.settle();
    assert!(!r.cached("k"), "the answer from before the reset is not kept");
    let cache = r.source.cache(ROOT);
    assert!(cache.is_some_and(|c| matches!(c.get(c.tag(b"k"), NOW), Cached::Absent)));
    assert_eq!(r.lookups(), 2);
}

#[test]
fn overtaken_lookups_still_count_against_max_pending() {
    let mut r = rig(r#", "max_pending": 1"#);
    feed(&mut r, NOW, r#"{"cursor": "db.1"}"#);
    assert_eq!(r.ask(5, key_ask("a"), Pass::FIRST), Ok(()));
    feed(&mut r, NOW + 1_000, r#"{"cursor": "db2.1", "reset": true}"#);
    let refused = Pass { failed: Failed::KEY, ..Pass::FIRST };
    assert_eq!(r.ask(6, key_ask("a"), Pass::FIRST), Err((6, refused)));
}

#[test]
fn an_origin_listed_while_its_lookup_is_in_flight_is_not_kept() {
    for listed in [r#""https://app.example""#, r#""*""#] {
        let mut r = rig("");
        feed(&mut r, NOW, r#"{"cursor": "db.1"}"#);
        assert_eq!(r.ask(5, Ask::Origin, Pass::FIRST), Ok(()));
        let lookup = r.last_token();
        feed(&mut r, NOW + 1_000, &format!(r#"{{"cursor": "db.2", "origins": [{listed}]}}"#));
        let body =
            r#"{"keys": [{"id": "w", "cors": {"allowed_origins": ["https://app.example"]}}]}"#;
        assert_eq!(r.answer(lookup, ok(body.into())), [(5, resumed(Failed::NONE))]);
        r.source.settle();
        let cache = r.source.cache(ROOT);
        assert!(cache.is_some_and(|c| c.origin(b"https://app.example", NOW).is_none()), "{listed}");
    }
}

#[test]
fn a_failing_feed_is_counted_and_keeps_the_cache_until_it_recovers() {
    let mut r = rig("");
    feed(&mut r, NOW, r#"{"cursor": "db.1"}"#);
    r.cache_answer("k", "web");
    for (i, bad) in [status(500), status(0), ok("not json".into()), ok(r#"{"cursor": ""}"#.into())]
        .into_iter()
        .enumerate()
    {
        let at = NOW + 1_000 * (i as i64 + 1);
        r.tick(at);
        let token = r.last_token();
        assert!(r.answer(token, bad).is_empty());
    }
    assert!(r.cached("k"));
    assert_eq!(r.counted(Counter::FeedErrors, NOW + 4_500), 4);
    feed(&mut r, NOW + 5_000, r#"{"cursor": "db.2"}"#);
    assert_eq!(r.calls.paths.last().map(String::as_str), Some("/v1/filter/changes?after=db.1"));
    assert!(r.cached("k"));
}

#[test]
fn streams_waiting_on_a_root_that_went_resume_as_if_every_lookup_failed() {
    let mut r = rig("");
    assert_eq!(r.ask(5, key_ask("k"), Pass::FIRST), Ok(()));
    let flush = r.source.tick(2, &[ROOT], NOW, &mut r.calls);
    let orphans: Vec<_> = flush.orphans.into_iter().map(|s| (s.stream, s.pass)).collect();
    assert_eq!(orphans, [(5, resumed(Failed::BOTH))]);
    assert!(r.source.cache(ROOT).is_none());
    // Its answer, arriving later, resumes nobody.
    assert!(r.answer(100, key_answer("k", "web")).is_empty());
}

#[test]
fn a_new_policy_with_the_same_service_keeps_the_cache_and_another_service_starts_afresh() {
    let mut r = rig("");
    r.cache_answer("k", "web");
    let same = service_policy("");
    assert!(r.source.configure(ROOT, same.remote.as_ref()));
    assert!(r.cached("k"));
    // A lookup in flight across a change of service still resumes its stream.
    assert_eq!(r.ask(5, key_ask("x"), Pass::FIRST), Ok(()));
    let other = service_policy(r#", "timeout_ms": 900"#);
    assert!(r.source.configure(ROOT, other.remote.as_ref()));
    assert!(!r.cached("k"));
    assert_eq!(r.answer(r.last_token(), status(404)), [(5, resumed(Failed::NONE))]);
    let none = policy(r#"{"keys": []}"#);
    assert!(r.source.configure(ROOT, none.remote.as_ref()));
    assert!(r.source.cache(ROOT).is_none());
}

#[test]
fn cache_hits_are_counted_by_kind() {
    use keygate::core::verdict::RemoteUse;
    let mut r = rig("");
    for used in [RemoteUse::Hit, RemoteUse::Stale, RemoteUse::NegativeHit, RemoteUse::None] {
        r.source.count_use(used);
    }
    let counts = r.tick(NOW).counts;
    assert_eq!(counts[Counter::CacheHits as usize], 2);
    assert_eq!(counts[Counter::NegativeHits as usize], 1);
    assert_eq!(r.tick(NOW).counts, [0; Counter::ALL.len()], "a flush empties the counts");
}

#[test]
fn a_feed_answer_saying_more_is_followed_by_the_next_poll_at_once() {
    let mut r = rig("");
    feed(&mut r, NOW, r#"{"cursor": "db.1"}"#);
    assert_eq!(r.calls.paths.len(), 1, "the first answer learns the cursor; the next poll waits");
    r.tick(NOW + 1_000);
    let token = r.last_token();
    let answer = format!(
        r#"{{"cursor": "db.257", "keys": ["{}"], "more": true, "behind": 4744}}"#,
        hex("a")
    );
    r.answer_at(token, changes(&answer), NOW + 1_010);
    assert_eq!(r.calls.paths.len(), 3, "sent from the answer, not the next tick");
    assert_eq!(r.calls.paths[2], "/v1/filter/changes?after=db.257");
    assert_eq!(r.tick(NOW + 1_010).feed_lag, 4744);
    let token = r.last_token();
    r.answer_at(token, changes(r#"{"cursor": "db.257"}"#), NOW + 1_020);
    assert_eq!(r.calls.paths.len(), 3);
    // Changes without `more`, a `more` that does not move on, a reset: the usual pace.
    for (i, json) in [
        format!(r#"{{"cursor": "db.300", "keys": ["{}"]}}"#, hex("b")),
        r#"{"cursor": "db.300", "more": true}"#.to_string(),
        r#"{"cursor": "db2.1", "reset": true, "more": true}"#.to_string(),
    ]
    .iter()
    .enumerate()
    {
        let at = NOW + 2_010 + 1_000 * i as i64;
        r.tick(at);
        let sent = r.calls.paths.len();
        assert_eq!(sent, 4 + i, "one poll per interval");
        let token = r.last_token();
        r.answer_at(token, changes(json), at + 10);
        assert_eq!(r.calls.paths.len(), sent, "{json}");
        r.tick(at + 999);
        assert_eq!(r.calls.paths.len(), sent, "{json}");
    }
    assert_eq!(r.tick(NOW + 5_100).feed_lag, 0);
}

#[test]
fn held_polls_ask_the_service_to_wait_and_allow_for_it_in_their_timeout() {
    let mut r = rig(r#", "changes_wait_ms": 25000, "timeout_ms": 300"#);
    feed(&mut r, NOW, r#"{"cursor": "db.1"}"#);
    r.tick(NOW + 1_000);
    assert_eq!(
        r.calls.paths,
        ["/v1/filter/changes", "/v1/filter/changes?after=db.1&wait_ms=25000"]
    );
    assert_eq!(r.calls.timeouts, [300, 25_300]);
    // The service held it until the wait ran out: an empty answer 25 s later, the next poll
    // at once.
    let token = r.last_token();
    r.answer_at(token, changes(r#"{"cursor": "db.1"}"#), NOW + 26_000);
    assert_eq!(r.calls.paths.len(), 3);
    // Held again, it answers with a change 100 ms later: the next poll is held again within a
    // tick, not a whole changes_poll_ms after the last one started.
    let token = r.last_token();
    let listed = format!(r#"{{"cursor": "db.2", "keys": ["{}"]}}"#, hex("a"));
    r.answer_at(token, changes(&listed), NOW + 26_100);
    r.tick(NOW + 26_140);
    assert_eq!(r.calls.paths.len(), 3);
    r.tick(NOW + 26_150);
    assert_eq!(r.calls.paths.len(), 4);
    assert_eq!(r.calls.paths[3], "/v1/filter/changes?after=db.2&wait_ms=25000");
    // A lookup's timeout stays its own.
    assert_eq!(r.ask(5, key_ask("k"), Pass::FIRST), Ok(()));
    assert_eq!(r.calls.timeouts.last(), Some(&300));
}

#[test]
fn polls_are_held_by_default_and_a_service_refusing_that_is_polled_plainly() {
    let p = policy(r#"{"keys": [], "key_service": {"cluster": "keys"}}"#);
    assert_eq!(p.remote.as_ref().map(|s| s.changes_wait_ms), Some(25_000));
    let mut r = rig(r#", "changes_wait_ms": 25000"#);
    feed(&mut r, NOW, r#"{"cursor": "db.1"}"#);
    r.tick(NOW + 1_000);
    assert_eq!(r.calls.paths[1], "/v1/filter/changes?after=db.1&wait_ms=25000");
    let token = r.last_token();
    r.answer_at(token, status(400), NOW + 1_010);
    r.tick(NOW + 2_000);
    assert_eq!(r.calls.paths[2], "/v1/filter/changes?after=db.1");
    assert_eq!(r.calls.timeouts[2], 250, "no longer held, so no longer waited for");
    assert_eq!(r.counted(Counter::FeedErrors, NOW + 2_000), 1);
}
