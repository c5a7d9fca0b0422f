//! Fixed-window counters: a request is counted against several counters at once (its key's
//! limits and its owner's), allowed only if every one stays within its limit, and then
//! counted once in each; refused, it is counted in none.
//!
//! Windows are aligned to the Unix epoch: a window of `seconds` starts at `now - now %
//! seconds`. In memory, one lock makes a decision atomic within the process. In Redis, one Lua
//! script per decision checks and counts every counter, with Redis's own clock, so replicas
//! sharing a Redis count exactly and agree on windows whatever their clocks. Each Redis
//! counter is one key that expires with its window: nothing else is kept, nothing grows.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One counter a request is counted against.
pub struct Check<'a> {
    pub counter: &'a str,
    pub limit: u64,
    pub seconds: u64,
}

/// A counter's state after the decision, for the RateLimit response fields.
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
    /// `index`: the first counter that refused.
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

/// The window of `seconds` holding `now`: its start, and the seconds left in it.
fn window(now: u64, seconds: u64) -> (u64, u64) {
    let seconds = seconds.max(1);
    let start = now - now % seconds;
    (start, start + seconds - now)
}

/// How many decisions pass between two sweeps of ended windows, at most.
const SWEEP_EVERY: u32 = 4_096;

#[derive(Default)]
pub struct Memory {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    /// Counter name → (its window's start, its window's end, count in it).
    counts: HashMap<String, (u64, u64, u64)>,
    since_sweep: u32,
}

impl Memory {
    fn hit(&self, checks: &[Check<'_>], now: u64) -> Decision {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.since_sweep += 1;
        // Ended windows go every few thousand decisions: memory stays bounded by the
        // counters still counting (and those that ended since the last sweep).
        if state.since_sweep >= SWEEP_EVERY {
            state.counts.retain(|_, (_, end, _)| *end > now);
            state.since_sweep = 0;
        }
        let mut statuses = Vec::with_capacity(checks.len());
        let mut refused = None;
        for (i, c) in checks.iter().enumerate() {
            let (start, reset_secs) = window(now, c.seconds);
            let used = match state.counts.get(c.counter) {
                Some((s, _, n)) if *s == start => *n,
                _ => 0,
            };
            if used >= c.limit && refused.is_none() {
                refused = Some(i);
            }
            let remaining = c.limit.saturating_sub(used);
            statuses.push(Status { limit: c.limit, remaining, reset_secs });
        }
        if let Some(index) = refused {
            return Decision::Limited { index, statuses };
        }
        for (c, status) in checks.iter().zip(statuses.iter_mut()) {
            let (start, reset_secs) = window(now, c.seconds);
            let slot = state.counts.entry(c.counter.to_string()).or_insert((start, 0, 0));
            if slot.0 != start {
                *slot = (start, 0, 0);
            }
            slot.1 = now + reset_secs;
            slot.2 += 1;
            status.remaining = c.limit.saturating_sub(slot.2);
        }
        Decision::Allowed(statuses)
    }

    fn active(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.counts.len()
    }
}

/// Checks, then counts, every counter in one step on Redis's clock. KEYS are the counter
/// names; ARGV holds each one's limit and window length. Answers `{refused, count, reset,
/// count, reset, ...}`, `refused` being the 1-based index of the first counter over its
/// limit, or 0 when the request was counted.
const SCRIPT: &str = r"
local now = tonumber(redis.call('TIME')[1])
local n = #KEYS
local names, counts, resets = {}, {}, {}
for i = 1, n do
  local seconds = tonumber(ARGV[2 * i])
  local start = now - now % seconds
  names[i] = KEYS[i] .. ':' .. start
  counts[i] = tonumber(redis.call('GET', names[i]) or '0')
  resets[i] = start + seconds - now
end
local refused = 0
for i = 1, n do
  if counts[i] >= tonumber(ARGV[2 * i - 1]) then
    refused = i
    break
  end
end
if refused == 0 then
  for i = 1, n do
    counts[i] = redis.call('INCR', names[i])
    if counts[i] == 1 then
      redis.call('EXPIRE', names[i], resets[i] + 1)
    end
  end
end
local out = {refused}
for i = 1, n do
  out[#out + 1] = counts[i]
  out[#out + 1] = resets[i]
end
return out
";

/// Key names in Redis: `kg:<counter>:<window start>`.
const PREFIX: &str = "kg:";

pub struct Redis {
    connection: ConnectionManager,
    script: Script,
}

impl Redis {
    fn new(url: &str) -> Result<Redis, CounterError> {
        let client = redis::Client::open(url).map_err(|e| CounterError(e.to_string()))?;
        // A dead Redis is an error within half a second, never a request held for long; the
        // manager reconnects in the background when Redis comes back.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| CounterError(e.to_string()))?;
        Ok(Redis { connection, script: Script::new(SCRIPT) })
    }

    async fn hit(&self, checks: &[Check<'_>]) -> Result<Decision, CounterError> {
        let mut invocation = self.script.prepare_invoke();
        for c in checks {
            invocation.key(format!("{PREFIX}{}", c.counter));
            invocation.arg(c.limit).arg(c.seconds.max(1));
        }
        let mut connection = self.connection.clone();
        let answer: Vec<u64> = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| CounterError(format!("redis: {e}")))?;
        decision(checks, &answer)
    }
}

/// The script's answer as a decision; anything but its shape is an error.
fn decision(checks: &[Check<'_>], answer: &[u64]) -> Result<Decision, CounterError> {
    let malformed = || CounterError("redis: an answer not in the script's shape".into());
    let (&refused, pairs) = answer.split_first().ok_or_else(malformed)?;
    if pairs.len() != checks.len() * 2 || refused as usize > checks.len() {
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
        assert!(allowed(&m.hit(&[check("k", 3, 60)], t + 40)), "a new minute");
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
    fn ended_windows_are_freed() {
        let m = Memory::default();
        let t = 1_800_000_000;
        for i in 0..100 {
            m.hit(&[check(&format!("k{i}"), 1, 1)], t);
        }
        assert_eq!(m.active(), 100);
        for _ in 0..SWEEP_EVERY {
            m.hit(&[check("live", u64::MAX, 3600)], t + 5);
        }
        assert_eq!(m.active(), 1, "only the counter still counting is kept");
    }

    #[test]
    fn windows_align_to_the_epoch() {
        assert_eq!(window(1_800_000_020, 60), (1_800_000_000, 40));
        assert_eq!(window(1_800_000_000, 86_400), (1_799_971_200, 57_600));
        assert_eq!(window(7, 1), (7, 1));
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
