//! The change feed, as one root context follows it: when to poll, where it is, and what a
//! poll's answer invalidates.
//!
//! A poll starts at most once per `changes_poll_ms` after the last one started, unless the
//! last answer said `more` and moved the cursor on: then the next starts at once, so a
//! filter behind a burst of changes catches up at the speed of round trips (a service that
//! says `more` without moving on is polled at the usual pace, never in a loop). A service
//! that holds polls open (`wait_ms`) answers an idle feed only after the wait, which is
//! longer than `changes_poll_ms`, so the next poll starts at once then too; when a held poll
//! answers with changes, the next starts [`HELD_AGAIN_MS`] later, so that a filter is almost
//! never without a poll held, and a service that answers held polls at once with changes
//! over and over is polled at most 20 times a second. One that ignores `wait_ms` answers at
//! once and is polled once per `changes_poll_ms`, as without it.

use crate::core::remote::protocol::Changes;

/// How soon a poll follows a held poll that answered with changes.
pub const HELD_AGAIN_MS: i64 = 50;

#[derive(Default)]
pub struct Feed {
    /// `None` until the first answer (the poll without `after`).
    pub cursor: Option<String>,
    in_flight: bool,
    /// When the next poll may start: `changes_poll_ms` after the last one started, or at
    /// once.
    next_ms: i64,
    /// Failed polls in a row.
    failures: u32,
    /// Changes behind, as the service last counted them.
    pub behind: u64,
    /// The service refused a held poll (a 400 to `wait_ms`): poll without it from now on.
    pub no_wait: bool,
}

/// What a poll's answer asks of the cache.
pub enum Applied<'c> {
    /// Drop everything, and every lookup in flight: the first poll learns where the feed is
    /// (answers cached before it may predate changes it will never list), and a `reset`
    /// says the cursor no longer names a place in the feed.
    Everything,
    /// Drop what these changes name.
    Listed(&'c Changes),
}

impl Feed {
    /// Whether a poll may start at `now_ms`; when it may, it counts as started.
    pub fn poll_due(&mut self, now_ms: i64, poll_ms: u32) -> bool {
        let due = !self.in_flight && now_ms >= self.next_ms;
        if due {
            self.next_ms = now_ms.saturating_add(i64::from(poll_ms));
        }
        due
    }

    /// The host refused to send a due poll.
    pub fn refused(&mut self) {
        self.failures += 1;
    }

    pub fn sent(&mut self) {
        self.in_flight = true;
    }

    /// Whether the next poll may ask the service to hold it.
    pub fn holds(&self) -> bool {
        self.cursor.is_some() && !self.no_wait
    }

    /// A poll failed: its failures in a row, and whether to log this one (the first, then
    /// one in 60).
    pub fn failed(&mut self) -> (u32, bool) {
        self.in_flight = false;
        self.failures += 1;
        (self.failures, self.failures % 60 == 1)
    }

    /// A poll answered at `now_ms` (`held`: it asked the service to wait): the failures it
    /// ends (0 when none), and what to drop.
    pub fn answered<'c>(
        &mut self,
        changes: &'c Changes,
        now_ms: i64,
        held: bool,
    ) -> (u32, Applied<'c>) {
        self.in_flight = false;
        let ended = std::mem::take(&mut self.failures);
        let first = self.cursor.is_none();
        let moved_on = self.cursor.as_deref() != Some(changes.cursor.as_str());
        let listed = !changes.keys.is_empty() || !changes.origins.is_empty();
        if changes.more && moved_on && !changes.reset {
            self.next_ms = now_ms;
        } else if held && listed && !changes.reset {
            self.next_ms = self.next_ms.min(now_ms + HELD_AGAIN_MS);
        }
        self.behind = changes.behind.unwrap_or(0);
        let applied =
            if first || changes.reset { Applied::Everything } else { Applied::Listed(changes) };
        self.cursor = Some(changes.cursor.clone());
        (ended, applied)
    }
}
