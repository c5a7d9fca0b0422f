//! The change feed, as one root context follows it: when to poll, where it is, and what a
//! poll's answer invalidates.

use crate::core::remote::protocol::Changes;

#[derive(Default)]
pub struct Feed {
    /// `None` until the first answer (the poll without `after`).
    pub cursor: Option<String>,
    in_flight: bool,
    last_poll_ms: i64,
    /// Failed polls in a row.
    failures: u32,
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
    /// Whether a poll is due at `now_ms`; when it is, it counts as started.
    pub fn poll_due(&mut self, now_ms: i64, poll_ms: u32) -> bool {
        let due = now_ms - self.last_poll_ms >= i64::from(poll_ms) && !self.in_flight;
        if due {
            self.last_poll_ms = now_ms;
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

    /// A poll failed: its failures in a row, and whether to log this one (the first, then
    /// one in 60).
    pub fn failed(&mut self) -> (u32, bool) {
        self.in_flight = false;
        self.failures += 1;
        (self.failures, self.failures % 60 == 1)
    }

    /// A poll answered: the failures it ends (0 when none), and what to drop.
    pub fn answered<'c>(&mut self, changes: &'c Changes) -> (u32, Applied<'c>) {
        self.in_flight = false;
        let ended = std::mem::take(&mut self.failures);
        let applied = if self.cursor.is_none() || changes.reset {
            Applied::Everything
        } else {
            Applied::Listed(changes)
        };
        self.cursor = Some(changes.cursor.clone());
        (ended, applied)
    }
}
