//! Fixed-window counters: a request is counted against several counters at once (its key's
//! limits and its owner's), allowed only if every one stays within its limit, and then
//! counted once in each; refused, it is counted in none.
//!
//! Windows are aligned to the Unix epoch: a window of `seconds` starts at `now - now %
//! seconds`, so every replica and every restart agrees on where a window begins. In memory,
//! one lock makes a decision atomic within the process. In Redis, one Lua script per
//! decision checks and counts every counter, with Redis's own clock, so replicas sharing a
//! Redis count exactly and agree on windows whatever their clocks. Each Redis counter is one
//! key that expires with its window: nothing else is kept, nothing grows.
//!
//! Why not Kuadrant's `limitador` crate: its Redis storage reads the counters in one round
//! trip and counts in a second, so concurrent deciders over-admit, and it keeps a set of
//! every counter key per limit beside the counters (`bench/counters/`, measured).

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One counter a request is counted against. A name stands for one counter with one window
/// length (memory keeps one window per name), so a caller whose limits can change length puts
/// the length in the name.
pub struct Check<'a> {
    pub counter: &'a str,
    pub limit: u64,
    pub seconds: u64,
}

/// A counter's state after the decision, for the RateLimit response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window ends (at least 1).
    pub reset_secs: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed(Vec<Status>),
    /// `index`: the first counter that refused, whose limit the answer names.
    Limited {
        index: usize,
        statuses: Vec<Status>,
    },
}

/// The counters could not be reached or answered nonsense; never holds a key.
#[derive(Debug)]
pub struct CounterError(String);

impl std::fmt::Display for CounterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CounterError {}

pub enum Counters {
    Memory(Memory),
    Redis(Redis),
}

impl Counters {
    pub fn memory() -> Counters {
        Counters::Memory(Memory::default())
    }

    /// `redis://HOST:PORT[/DB]`. Starts without Redis too: until it answers, each decision
    /// is an error (and the service's `--ratelimit-on-error` decides).
    pub async fn redis(url: &str) -> Result<Counters, CounterError> {
        Redis::new(url).map(Counters::Redis)
    }

    pub async fn hit(&self, checks: &[Check<'_>]) -> Result<Decision, CounterError> {
        if checks.is_empty() {
            return Ok(Decision::Allowed(Vec::new()));
        }
        match self {
            Counters::Memory(m) => Ok(m.hit(checks, unix_secs())),
            Counters::Redis(r) => r.hit(checks).await,
        }
    }

    /// Counters held in memory (0 for Redis): what the memory bound is about.
    pub fn active(&self) -> usize {
        match self {
            Counters::Memory(m) => m.active(),
            Counters::Redis(_) => 0,
        }
    }
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The window of `seconds` holding `now`: its end, and the seconds left in it.
fn window(now: u64, seconds: u64) -> (u64, u64) {
    let seconds = seconds.max(1);
    let end = (now - now % seconds).saturating_add(seconds);
    (end, end - now)
}

#[derive(Default)]
pub struct Memory {
    state: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    /// Counter name → its latest window. A counter's window is told by its end: a new window
    /// overwrites the old in place, so a counter costs one entry whatever its age.
    counts: HashMap<Box<str>, Slot>,
    /// No held window ends before this: until then a sweep would free nothing.
    next_end: u64,
}

struct Slot {
    end: u64,
    count: u64,
}

impl Memory {
    fn hit(&self, checks: &[Check<'_>], now: u64) -> Decision {
        let mut guard = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let w = &mut *guard;
        // Ended windows go on the first decision after one ends: memory holds only counters
        // still counting, and the sweep's cost is paid once per window end, not per decision.
        if now >= w.next_end {
            w.sweep(now);
        }
        let mut statuses = Vec::with_capacity(checks.len());
        let mut refused = None;
        for (i, c) in checks.iter().enumerate() {
            let (end, reset_secs) = window(now, c.seconds);
            let held = match w.counts.get(c.counter) {
                Some(slot) if slot.end == end => slot.count,
                _ => 0,
            };
            // A counter listed twice counts the request twice, so it needs room for both.
            let earlier = checks[..i]
                .iter()
                .filter(|e| e.counter == c.counter && e.seconds == c.seconds)
                .count() as u64;
            let used = held.saturating_add(earlier);
            if refused.is_none() && used >= c.limit {
                refused = Some(i);
            }
            statuses.push(Status {
                limit: c.limit,
                remaining: c.limit.saturating_sub(used),
                reset_secs,
            });
        }
        if let Some(index) = refused {
            return Decision::Limited { index, statuses };
        }
        for (c, status) in checks.iter().zip(statuses.iter_mut()) {
            let (end, _) = window(now, c.seconds);
            // A name is allocated only for a counter not held already.
            let count = if let Some(slot) = w.counts.get_mut(c.counter) {
                if slot.end != end {
                    *slot = Slot { end, count: 0 };
                }
                slot.count = slot.count.saturating_add(1);
                slot.count
            } else {
                w.counts.insert(Box::from(c.counter), Slot { end, count: 1 });
                1
            };
            w.next_end = w.next_end.min(end);
            status.remaining = c.limit.saturating_sub(count);
        }
        Decision::Allowed(statuses)
    }

    fn active(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.counts.len()
    }
}

impl Windows {
    fn sweep(&mut self, now: u64) {
        let mut next_end = u64::MAX;
        self.counts.retain(|_, slot| {
            let live = slot.end > now;
            if live {
                next_end = next_end.min(slot.end);
            }
            live
        });
        self.next_end = next_end;
        // A burst of counters gives its table back once its windows end; the slack left
        // keeps a table that refills every window from shrinking and regrowing each time.
        let (len, capacity) = (self.counts.len(), self.counts.capacity());
        if capacity > 1024 && len < capacity / 4 {
            self.counts.shrink_to(len * 2);
        }
    }
}

/// Key names in Redis: `kg:<counter>:<window start>`.
const PREFIX: &str = "kg:";

/// A dead or unreachable Redis must be an error well within Envoy's patience, never a
/// request held: each connection attempt and each answer gets this long...
const REDIS_WAIT: Duration = Duration::from_millis(500);
/// ...and a whole decision (a reconnection, or reloading the script after a Redis restart,
/// takes several round trips) at most this long.
const DECISION_DEADLINE: Duration = Duration::from_secs(1);

pub struct Redis {
    connection: ConnectionManager,
    script: Script,
}

impl Redis {
    fn new(url: &str) -> Result<Redis, CounterError> {
        let client = redis::Client::open(url).map_err(|e| CounterError(format!("redis: {e}")))?;
        // No retries inside a decision: a failed connection fails the decision at once, and
        // the next decision tries again, so a Redis back up is used again from the next
        // decision or the one after.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_WAIT))
            .set_response_timeout(Some(REDIS_WAIT))
            .set_number_of_retries(0);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| CounterError(format!("redis: {e}")))?;
        Ok(Redis { connection, script: Script::new(include_str!("redis_script.lua")) })
    }

    async fn hit(&self, checks: &[Check<'_>]) -> Result<Decision, CounterError> {
        let mut invocation = self.script.prepare_invoke();
        for c in checks {
            invocation.key(format!("{PREFIX}{}", c.counter));
            invocation.arg(c.limit).arg(c.seconds.max(1));
        }
        // One EVALSHA per decision; the script is loaded again only when Redis has lost it.
        let mut connection = self.connection.clone();
        let answer: Vec<u64> =
            tokio::time::timeout(DECISION_DEADLINE, invocation.invoke_async(&mut connection))
                .await
                .map_err(|_| CounterError("redis: no answer within 1 s".into()))?
                .map_err(|e| CounterError(format!("redis: {e}")))?;
        decision(checks, &answer)
    }
}

/// The script's answer as a decision; anything but its shape is an error.
fn decision(checks: &[Check<'_>], answer: &[u64]) -> Result<Decision, CounterError> {
    let malformed = || CounterError("redis: an answer not in the script's shape".into());
    let (&refused, pairs) = answer.split_first().ok_or_else(malformed)?;
    if pairs.len() != checks.len() * 2 || refused > checks.len() as u64 {
        return Err(malformed());
    }
    let statuses = checks
        .iter()
        .zip(pairs.chunks_exact(2))
        .map(|(c, pair)| Status {
            limit: c.limit,
            remaining: c.limit.saturating_sub(pair[0]),
            reset_secs: pair[1].max(1),
        })
        .collect();
    Ok(match refused {
        0 => Decision::Allowed(statuses),
        i => Decision::Limited { index: i as usize - 1, statuses },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(counter: &str, limit: u64, seconds: u64) -> Check<'_> {
        Check { counter, limit, seconds }
    }

    fn allowed(d: &Decision) -> bool {
        matches!(d, Decision::Allowed(_))
    }

    #[test]
    fn a_window_allows_its_limit_then_refuses_until_the_next() {
        let m = Memory::default();
        let t = 1_800_000_020; // 20 s into a minute
        let got: Vec<bool> = (0..5).map(|_| allowed(&m.hit(&[check("k", 3, 60)], t))).collect();
        assert_eq!(got, [true, true, true, false, false]);
        assert!(!allowed(&m.hit(&[check("k", 3, 60)], t + 39)));
        assert_eq!(
            m.hit(&[check("k", 3, 60)], t + 40),
            Decision::Allowed(vec![Status { limit: 3, remaining: 2, reset_secs: 60 }]),
            "a new minute"
        );
    }

    #[test]
    fn all_or_nothing_across_counters() {
        let m = Memory::default();
        let t = 1_800_000_000;
        let both = [check("key", 5, 60), check("owner", 2, 60)];
        assert!(allowed(&m.hit(&both, t)) && allowed(&m.hit(&both, t)));
        // The owner refuses: the key is not charged.
        assert_eq!(
            m.hit(&both, t),
            Decision::Limited {
                index: 1,
                statuses: vec![
                    Status { limit: 5, remaining: 3, reset_secs: 60 },
                    Status { limit: 2, remaining: 0, reset_secs: 60 },
                ],
            }
        );
        let alone = m.hit(&[check("key", 5, 60)], t);
        assert_eq!(
            alone,
            Decision::Allowed(vec![Status { limit: 5, remaining: 2, reset_secs: 60 }])
        );
    }

    #[test]
    fn a_counter_listed_twice_counts_twice() {
        let m = Memory::default();
        let t = 1_800_000_000;
        let twice = [check("k", 3, 60), check("k", 3, 60)];
        assert_eq!(
            m.hit(&twice, t),
            Decision::Allowed(vec![
                Status { limit: 3, remaining: 2, reset_secs: 60 },
                Status { limit: 3, remaining: 1, reset_secs: 60 },
            ])
        );
        assert_eq!(
            m.hit(&twice, t),
            Decision::Limited {
                index: 1,
                statuses: vec![
                    Status { limit: 3, remaining: 1, reset_secs: 60 },
                    Status { limit: 3, remaining: 0, reset_secs: 60 },
                ],
            }
        );
        assert!(allowed(&m.hit(&[check("k", 3, 60)], t)), "the refusal counted nothing");
    }

    #[test]
    fn ended_windows_are_freed_on_the_next_decision() {
        let m = Memory::default();
        let t = 1_800_000_000;
        for i in 0..100 {
            m.hit(&[check(&format!("k{i}"), 1, 1)], t);
        }
        m.hit(&[check("hourly", 10, 3600)], t);
        assert_eq!(m.active(), 101);
        m.hit(&[check("hourly", 10, 3600)], t + 1);
        assert_eq!(m.active(), 1, "only the counter still counting is kept");
    }

    #[test]
    fn a_table_emptied_by_a_window_end_shrinks() {
        let m = Memory::default();
        let t = 1_800_000_000;
        for i in 0..50_000 {
            m.hit(&[check(&format!("k{i}"), 1, 60)], t);
        }
        let full = m.state.lock().map(|s| s.counts.capacity()).unwrap_or(0);
        m.hit(&[check("next", 1, 60)], t + 60);
        let after = m.state.lock().map(|s| s.counts.capacity()).unwrap_or(usize::MAX);
        assert!(full >= 50_000 && after < 100, "capacity {full} → {after}");
    }

    #[test]
    fn windows_align_to_the_epoch() {
        assert_eq!(window(1_800_000_020, 60), (1_800_000_060, 40));
        assert_eq!(window(1_800_000_000, 86_400), (1_800_057_600, 57_600));
        assert_eq!(window(7, 1), (8, 1));
        assert_eq!(window(7, 0), (8, 1), "a zero-length window is a second");
    }

    #[test]
    fn only_answers_in_the_scripts_shape_are_read() {
        let checks = [check("a", 10, 60), check("b", 5, 1)];
        assert_eq!(
            decision(&checks, &[2, 3, 40, 5, 1]).ok(),
            Some(Decision::Limited {
                index: 1,
                statuses: vec![
                    Status { limit: 10, remaining: 7, reset_secs: 40 },
                    Status { limit: 5, remaining: 0, reset_secs: 1 },
                ],
            })
        );
        assert!(decision(&checks, &[]).is_err());
        assert!(decision(&checks, &[0, 1, 2]).is_err());
        assert!(decision(&checks, &[3, 1, 1, 1, 1]).is_err());
    }
}
