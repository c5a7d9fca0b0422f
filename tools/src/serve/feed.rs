//! The change feed: `GET /v1/filter/changes?after=CURSOR&wait_ms=N`.
//!
//! A cursor is `<database id>.<mark>.<change number>`. The database id is random, made by
//! the first migration, so a cursor from another database never names a change here: it
//! answers `reset`, as does a number the service no longer keeps (below `feed.floor`) or one
//! it has not reached (a database restored from an older backup). The mark is the one
//! stored with that change number (the `marks` table): the database's epoch when it was
//! written, 8 random hex characters drawn anew at every start of the service (see `db.rs`).
//! A copy restored from a backup under the same id and then written past a filter's cursor
//! stores other marks for those numbers, so the cursor no longer matches and answers
//! `reset` (the filter drops its cache) instead of silently skipping the changes it missed.
//! Number 0 (no change yet) carries the current epoch and matches any: every change of
//! every copy comes after it. A cursor of the older form `<database id>.<change number>`
//! answers `reset` too. The number stays last, so a cursor reads in order. Numbers commit
//! in order (see `db.rs`), so "every change after N" is exact.
//!
//! Every answer says `"more": true` when changes remain after its cursor, and `"behind": N`,
//! how many (the newest change number minus the cursor's); both are left out when nothing
//! remains.

use crate::serve::db::{ChangeRow, Db};
use crate::serve::error::ApiError;
use crate::serve::metrics::{self, Feed, Op};
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Change numbers one answer covers at most; the filter asks again on its next poll.
const MAX_CHANGES: i64 = 256;
/// Bytes of digests and origins in one answer at most: the filter refuses bodies over
/// 64 KiB. A single change over the budget answers `reset` (which drops everything, so the
/// change is still seen).
const BUDGET: usize = 48 * 1024;
/// The longest `wait_ms` a poll may ask for.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Polls held at once at most, per process; past it a poll is answered at once (the filter
/// then polls again after `changes_poll_ms`, as with a service that does not hold polls).
pub const MAX_HELD: usize = 10_000;
/// How often the database is read while polls are held, to notice changes this process did
/// not make (another replica's, or another process's on the same SQLite file).
const RECHECK: Duration = Duration::from_millis(100);

pub fn encode(database_id: &str, mark: &str, seq: i64) -> String {
    format!("{database_id}.{mark}.{seq}")
}

/// The mark and change number a cursor names, if it is one of this database's.
pub fn decode<'a>(cursor: &'a str, database_id: &str) -> Option<(&'a str, i64)> {
    let rest = cursor.strip_prefix(database_id)?.strip_prefix('.')?;
    let (mark, number) = rest.split_once('.')?;
    let hex = |s: &str| s.len() == 8 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if number.is_empty() || !number.bytes().all(|c| c.is_ascii_digit()) || !hex(mark) {
        return None;
    }
    Some((mark, number.parse().ok()?))
}

/// Polls held now, and the task that reads the database for them.
pub struct Held {
    count: AtomicUsize,
    /// Wakes [`watch`] when the first poll is held.
    first: Notify,
}

impl Held {
    pub fn new() -> Arc<Held> {
        Arc::new(Held { count: AtomicUsize::new(0), first: Notify::new() })
    }

    /// A place among the held polls, or `None` when [`MAX_HELD`] are held already.
    fn enter(self: &Arc<Held>) -> Option<Slot> {
        let before = self.count.fetch_add(1, Ordering::SeqCst);
        if before >= MAX_HELD {
            self.count.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        if before == 0 {
            self.first.notify_one();
        }
        metrics::feed_held(1);
        Some(Slot(self.clone()))
    }
}

/// One held poll; dropped when it answers or its client goes away.
struct Slot(Arc<Held>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        metrics::feed_held(-1);
    }
}

/// While any poll is held, reads the newest change number every [`RECHECK`] and publishes
/// it, which wakes the held polls. One read per process however many polls are held; this
/// process's own writes wake them at once, at commit (`db.rs`).
///
/// Polling rather than PostgreSQL's LISTEN/NOTIFY: it works the same on SQLite (where
/// another process may write the same file) and on PostgreSQL, needs no connection held
/// for listening (and re-listening after a restart or failover), and notices every writer,
/// a replica of an older version included. It costs one small read every 100 ms, only while
/// polls are held, and up to 100 ms of latency for other writers' changes.
pub async fn watch(db: Arc<Db>, held: Arc<Held>) {
    loop {
        let first = held.first.notified();
        tokio::pin!(first);
        first.as_mut().enable();
        if held.count.load(Ordering::SeqCst) == 0 {
            first.await;
        }
        tokio::time::sleep(RECHECK).await;
        if held.count.load(Ordering::SeqCst) > 0 {
            if let Ok((last, _)) = db.feed_state().await {
                db.published(last);
            }
        }
    }
}

/// The answer to `changes?after=` (`None`: the current cursor, nothing listed, at once).
/// With `wait_ms` and nothing after the cursor, the answer waits until a change commits or
/// the time is up.
pub async fn changes(
    db: &Db,
    held: &Arc<Held>,
    after: Option<&str>,
    wait_ms: u64,
) -> Result<String, ApiError> {
    // Subscribed before the first read: a change committed after that read wakes us.
    let mut committed = db.subscribe();
    let (body, idle) = answer(db, after).await?;
    if !idle || wait_ms == 0 {
        return Ok(body);
    }
    let Some(_slot) = held.enter() else { return Ok(body) };
    let deadline = Instant::now() + Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
    loop {
        match tokio::time::timeout_at(deadline, committed.changed()).await {
            Ok(Ok(())) => {
                let (body, idle) = answer(db, after).await?;
                if !idle {
                    return Ok(body);
                }
            }
            // The time is up (or the sender is gone): answer as things are.
            _ => return Ok(answer(db, after).await?.0),
        }
    }
}

/// One answer, and whether it is idle: a valid cursor with nothing after it.
async fn answer(db: &Db, after: Option<&str>) -> Result<(String, bool), ApiError> {
    let _timer = metrics::timer(Op::Feed);
    let (last, floor) = db.feed_state().await?;
    // What every replica serving the feed knows committed: a write that later finds the
    // database behind it (restored under the running service) starts a new epoch.
    db.published(last);
    let id = &db.database_id;
    let Some(after) = after else {
        return Ok((
            body(&encode(id, &db.mark(last).await?, last), &Page::empty(last), last),
            false,
        ));
    };
    let valid = match decode(after, id) {
        Some((mark, n)) if (floor..=last).contains(&n) => n == 0 || db.mark(n).await? == mark,
        _ => false,
    };
    let Some((_, after)) = decode(after, id).filter(|_| valid) else {
        return Ok((
            body(&encode(id, &db.mark(last).await?, last), &Page::reset(last), last),
            false,
        ));
    };
    let upto = last.min(after.saturating_add(MAX_CHANGES));
    let rows = db.changes(after, upto).await?;
    let page = page(&rows, upto);
    let cursor = encode(id, &db.mark(page.seq).await?, page.seq);
    Ok((body(&cursor, &page, last), after == last))
}

/// What one answer lists: whole changes up to `seq`, or a reset at `seq`.
#[derive(Debug, PartialEq)]
struct Page<'a> {
    seq: i64,
    reset: bool,
    keys: Vec<&'a str>,
    origins: Vec<&'a str>,
}

impl Page<'_> {
    fn empty(seq: i64) -> Page<'static> {
        Page { seq, reset: false, keys: Vec::new(), origins: Vec::new() }
    }

    fn reset(seq: i64) -> Page<'static> {
        Page { reset: true, ..Page::empty(seq) }
    }
}

/// Lists whole changes (never half of a rotation) until the budget is spent.
fn page(rows: &[ChangeRow], upto: i64) -> Page<'_> {
    let (mut keys, mut origins) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    let mut size = 0;
    let mut cursor = upto;
    let mut start = 0;
    while start < rows.len() {
        let seq = rows[start].seq;
        let end = rows[start..].iter().position(|r| r.seq != seq).map_or(rows.len(), |n| start + n);
        let group = &rows[start..end];
        let cost: usize = group
            .iter()
            .map(|r| r.sha256.len() + 3 + r.origins.iter().map(|o| o.len() + 3).sum::<usize>())
            .sum();
        if size + cost > BUDGET {
            if start == 0 {
                return Page::reset(seq);
            }
            cursor = rows[start - 1].seq;
            break;
        }
        size += cost;
        for r in group {
            if seen.insert(("k", r.sha256.as_str())) {
                keys.push(r.sha256.as_str());
            }
            for o in &r.origins {
                if seen.insert(("o", o.as_str())) {
                    origins.push(o.as_str());
                }
            }
        }
        start = end;
    }
    Page { seq: cursor, reset: false, keys, origins }
}

/// The JSON of an answer whose cursor names `page.seq`, `last` being the newest change.
fn body(cursor: &str, page: &Page, last: i64) -> String {
    let mut answer = Map::new();
    answer.insert("cursor".into(), cursor.into());
    if page.reset {
        answer.insert("reset".into(), true.into());
    } else {
        answer.insert("keys".into(), json!(page.keys));
        answer.insert("origins".into(), json!(page.origins));
    }
    let behind = last - page.seq;
    if behind > 0 {
        answer.insert("more".into(), true.into());
        answer.insert("behind".into(), behind.into());
    }
    Value::Object(answer).to_string()
}

/// What an answer [`body`] wrote carried, read back from its JSON (for the metrics, once per
/// answer sent, however often a held poll read the database).
pub fn carried(body: &str) -> Feed {
    if body.contains(r#""reset":true"#) {
        Feed::Reset
    } else if body.contains(r#""keys":[]"#) {
        Feed::Empty
    } else {
        Feed::Changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, sha: &str, origins: &[&str]) -> ChangeRow {
        ChangeRow {
            seq,
            sha256: sha.into(),
            origins: origins.iter().map(|o| o.to_string()).collect(),
        }
    }

    fn answer(rows: &[ChangeRow], upto: i64, last: i64) -> String {
        let page = page(rows, upto);
        body(&encode("db", "0a0b0c0d", page.seq), &page, last)
    }

    #[test]
    fn cursors_name_their_database_and_the_mark_of_their_change() {
        let c = encode("4f1c", "0123abcd", 42);
        assert_eq!(c, "4f1c.0123abcd.42");
        assert_eq!(decode(&c, "4f1c"), Some(("0123abcd", 42)));
        assert_eq!(decode(&c, "9a9a"), None);
        for bad in [
            "",
            "4f1c",
            "4f1c.",
            "4f1c.42",
            "4f1c.0123abcd.-1",
            "4f1c.0123abcd.+1",
            "4f1c.0123abcd.1x",
            "4f1c.0123abcd.",
            "4f1c.0123ABCD.1",
            "4f1c.0123abc.1",
            "4f1c.0123abcde.1",
            "4f1c.0123abcd.1.",
            "4f1c.0123abcd.1.2",
            "4f1cc.0123abcd.1",
            "4f1c.0123abcd.99999999999999999999",
        ] {
            assert_eq!(decode(bad, "4f1c"), None, "{bad}");
        }
    }

    #[test]
    fn at_most_max_held_polls_are_held_at_once() {
        let held = Held::new();
        let slots: Vec<Slot> = (0..MAX_HELD).filter_map(|_| held.enter()).collect();
        assert_eq!(slots.len(), MAX_HELD);
        assert!(held.enter().is_none(), "one past the bound is answered at once");
        assert_eq!(held.count.load(Ordering::SeqCst), MAX_HELD);
        drop(slots);
        assert_eq!(held.count.load(Ordering::SeqCst), 0);
        assert!(held.enter().is_some());
    }

    #[test]
    fn an_answer_lists_each_digest_and_origin_once_in_order() {
        let rows = [
            row(3, "aa", &["https://a.example"]),
            row(4, "bb", &[]),
            row(4, "cc", &["https://a.example", "*"]),
            row(5, "aa", &[]),
        ];
        assert_eq!(
            answer(&rows, 6, 6),
            r#"{"cursor":"db.0a0b0c0d.6","keys":["aa","bb","cc"],"origins":["https://a.example","*"]}"#
        );
        assert_eq!(answer(&[], 2, 2), r#"{"cursor":"db.0a0b0c0d.2","keys":[],"origins":[]}"#);
    }

    #[test]
    fn an_answer_short_of_the_newest_change_says_more_and_how_far_behind() {
        assert_eq!(
            answer(&[row(3, "aa", &[])], 3, 1000),
            r#"{"cursor":"db.0a0b0c0d.3","keys":["aa"],"origins":[],"more":true,"behind":997}"#
        );
    }

    #[test]
    fn a_full_answer_stops_between_changes_never_inside_one() {
        let long = "o".repeat(BUDGET / 3);
        let rows = [
            row(1, "aa", &[&long]),
            row(2, "bb", &[&long]),
            row(2, "cc", &[&long]),
            row(3, "dd", &[]),
        ];
        // Change 2 (a rotation: two keys) does not fit after change 1: the answer ends at 1.
        assert_eq!(
            answer(&rows, 3, 3),
            format!(
                r#"{{"cursor":"db.0a0b0c0d.1","keys":["aa"],"origins":["{long}"],"more":true,"behind":2}}"#
            )
        );
        // A single change over the budget: reset, so the filter still drops it.
        let huge = "o".repeat(BUDGET);
        assert_eq!(
            answer(&[row(7, "aa", &[&huge])], 9, 9),
            r#"{"cursor":"db.0a0b0c0d.7","reset":true,"more":true,"behind":2}"#
        );
    }

    #[test]
    fn what_an_answer_carried_is_read_back_from_its_body() {
        let huge = "o".repeat(BUDGET);
        assert_eq!(carried(&answer(&[row(7, "aa", &[&huge])], 9, 9)), Feed::Reset);
        assert_eq!(carried(&answer(&[], 2, 2)), Feed::Empty);
        assert_eq!(carried(&answer(&[row(3, "aa", &[])], 3, 1000)), Feed::Changes);
        // An origin cannot pass for either: its quotes are escaped.
        let tricky = r#"x","reset":true,"keys":[]"#;
        assert_eq!(carried(&answer(&[row(3, "aa", &[tricky])], 3, 3)), Feed::Changes);
    }
}
