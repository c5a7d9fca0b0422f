//! keygate's counter engine (`keygate_tools::ratelimit::counters`) beside Kuadrant's
//! limitador crate (0.14, `AsyncRedisStorage`), on one redis-server the bench starts on a free
//! port of 127.0.0.1:
//!
//! 1. keygate's memory engine: bytes per live counter at DISTINCT counters (bytes the
//!    allocator was asked for, and the process's RSS), and decisions per second;
//! 2. over-admission: one counter, LIMIT per WINDOW seconds, two replicas (two storage
//!    instances, each on a thread and tokio current-thread runtime of its own) with TASKS
//!    concurrent requesters each, hammering flat out for WINDOWS windows;
//! 3. decisions per second with the limit never reached (distinct counters), one replica,
//!    then two at once;
//! 4. what Redis holds after DISTINCT distinct counters were hit once (INFO used_memory,
//!    DBSIZE);
//! 5. limitador's limit lookup with one limit per key in a namespace, as limits that differ
//!    per key must be written there, and what `add_limit` keeps of two limits that differ
//!    only in their maximum.

use keygate_tools::ratelimit::counters::{Check, Counters, Decision};
use limitador::limit::{Context, Expression, Limit, Namespace, Predicate};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::{AsyncRateLimiter, RateLimiter};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const LIMIT: u64 = 1_000;
const WINDOW: u64 = 5;
const WINDOWS: u64 = 3;
const REPLICAS: usize = 2;
/// 48, so that a burst of all requesters (96) does not divide the limit: a burst that divides
/// it fills the window exactly, which would hide a race between checking and counting.
const TASKS: usize = 48;
const OPEN_SECS: u64 = 2;
const DISTINCT: usize = 100_000;
const ENDED: usize = 10_000;

/// Bytes the allocator was asked for and has not had back: the memory engine's own cost,
/// without the allocator's rounding (which RSS shows).
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, size) };
        if !q.is_null() {
            LIVE.fetch_add(size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The time this thread has spent on a core: what a decision costs, whatever else the
/// machine is running.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn rss() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: isize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// A limit as both engines are given it: limitador by namespace, keygate in the counter's
/// name, as keygate's service names them (`k:<seconds>:<label>:<key id>`).
#[derive(Clone, Copy)]
struct Phase {
    namespace: &'static str,
    limit: u64,
    seconds: u64,
}

const ACCURACY: Phase = Phase { namespace: "accuracy", limit: LIMIT, seconds: WINDOW };
const OPEN: Phase = Phase { namespace: "open", limit: 1 << 50, seconds: 3600 };
const SHORT: Phase = Phase { namespace: "short", limit: 100, seconds: 1 };

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Keygate,
    Limitador,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Keygate => "keygate",
            Kind::Limitador => "limitador",
        }
    }
}

enum Replica {
    Keygate(Counters),
    Limitador(AsyncRateLimiter),
}

impl Replica {
    async fn new(kind: Kind, url: &str) -> Res<Replica> {
        Ok(match kind {
            Kind::Keygate => Replica::Keygate(Counters::redis(url).await?),
            Kind::Limitador => {
                let storage = AsyncRedisStorage::new(url).await?;
                let limiter = AsyncRateLimiter::new_with_storage(Box::new(storage));
                for p in [ACCURACY, OPEN, SHORT] {
                    let key_id = Expression::try_from("key_id")?;
                    limiter.add_limit(Limit::new(
                        p.namespace,
                        p.limit,
                        p.seconds,
                        Vec::<Predicate>::new(),
                        [key_id],
                    ));
                }
                Replica::Limitador(limiter)
            }
        })
    }

    /// Whether one request of key `id` passes `phase`'s limit (and was counted).
    async fn hit(&self, phase: Phase, id: &str) -> Res<bool> {
        match self {
            Replica::Keygate(counters) => {
                let counter = format!("k:{}:per-window:{id}", phase.seconds);
                let check = Check { counter: &counter, limit: phase.limit, seconds: phase.seconds };
                Ok(matches!(counters.hit(&[check]).await?, Decision::Allowed(_)))
            }
            Replica::Limitador(limiter) => {
                let ctx: Context = HashMap::from([("key_id".to_string(), id.to_string())]).into();
                let namespace = Namespace::from(phase.namespace);
                let checked = limiter
                    .check_rate_limited_and_update(&namespace, &ctx, 1)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(!checked.limited)
            }
        }
    }
}

#[derive(Clone)]
enum Work {
    /// Every requester hits one counter from `start` until `end`: flat out, or once every
    /// `pace`, all of them at the same instants.
    Hammer { id: String, start: Instant, end: Instant, pace: Option<Duration> },
    /// Each requester cycles over 1,000 counters of its own, never limited.
    Open { prefix: String, start: Instant, end: Instant },
    /// The keys `key-000000` up to `to`, once each under `phase`, shared among the
    /// requesters.
    Distinct { to: usize, phase: Phase },
}

#[derive(Default)]
struct Tally {
    /// When each allowed request's answer came, from the start.
    allowed_at: Vec<Duration>,
    decisions: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.allowed_at.extend(other.allowed_at);
        self.decisions += other.decisions;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
    }

    fn note(&mut self, got: Res<bool>, start: Instant) -> bool {
        self.decisions += 1;
        match got {
            Ok(true) => {
                self.allowed_at.push(start.elapsed());
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
                false
            }
        }
    }
}

/// One replica: its own thread, tokio current-thread runtime and storage instance.
fn replica(kind: Kind, url: String, work: Work) -> std::thread::JoinHandle<Res<Tally>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let replica = Rc::new(Replica::new(kind, &url).await?);
            // Connected, scripts loaded, before the clock starts.
            replica.hit(OPEN, "warm-up").await?;
            let next = Rc::new(Cell::new(0usize));
            let mut tasks = Vec::new();
            for task in 0..TASKS {
                let (replica, work, next) = (Rc::clone(&replica), work.clone(), Rc::clone(&next));
                tasks.push(tokio::task::spawn_local(async move {
                    let mut tally = Tally::default();
                    match work {
                        Work::Hammer { id, start, end, pace: None } => {
                            tokio::time::sleep_until(start.into()).await;
                            while Instant::now() < end {
                                tally.note(replica.hit(ACCURACY, &id).await, start);
                            }
                        }
                        Work::Hammer { id, start, end, pace: Some(pace) } => {
                            let mut ticks = tokio::time::interval_at(start.into(), pace);
                            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            while ticks.tick().await.into_std() < end {
                                tally.note(replica.hit(ACCURACY, &id).await, start);
                            }
                        }
                        Work::Open { prefix, start, end } => {
                            tokio::time::sleep_until(start.into()).await;
                            let mut n = 0;
                            while Instant::now() < end {
                                let id = format!("{prefix}-{task}-{}", n % 1_000);
                                let got = replica.hit(OPEN, &id).await;
                                if matches!(got, Ok(false)) {
                                    tally.errors += 1;
                                    tally.first_error.get_or_insert_with(|| "refused".into());
                                }
                                tally.note(got, start);
                                n += 1;
                            }
                        }
                        Work::Distinct { to, phase } => {
                            let start = Instant::now();
                            loop {
                                let i = next.get();
                                if i >= to {
                                    break;
                                }
                                next.set(i + 1);
                                tally.note(replica.hit(phase, &format!("key-{i:06}")).await, start);
                            }
                        }
                    }
                    tally
                }));
            }
            let mut all = Tally::default();
            for task in tasks {
                all.add(task.await?);
            }
            Ok(all)
        })
    })
}

fn run(kind: Kind, url: &str, replicas: usize, work: Work) -> Res<Vec<Tally>> {
    let threads: Vec<_> =
        (0..replicas).map(|_| replica(kind, url.to_string(), work.clone())).collect();
    let mut tallies = Vec::new();
    for t in threads {
        let tally = t.join().map_err(|_| "a replica thread panicked")??;
        if let Some(e) = &tally.first_error {
            println!("  ({} errors, the first: {e})", tally.errors);
        }
        tallies.push(tally);
    }
    Ok(tallies)
}

/// The Instant of the epoch's next multiple of `seconds`, at least `lead` ahead.
fn next_boundary(seconds: u64, lead: Duration) -> Instant {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut boundary = Duration::from_secs((since.as_secs() / seconds + 1) * seconds);
    while boundary - since < lead {
        boundary += Duration::from_secs(seconds);
    }
    now + (boundary - since)
}

fn over_admission(kind: Kind, url: &str, pace: Option<Duration>) -> Res<()> {
    // keygate's windows are the epoch's, so the run starts on one; limitador's start at a
    // counter's first hit, so its run starts when it likes.
    let start = match kind {
        Kind::Keygate => next_boundary(WINDOW, Duration::from_secs(1)),
        Kind::Limitador => Instant::now() + Duration::from_secs(1),
    };
    let end = start + Duration::from_secs(WINDOW * WINDOWS);
    let id = format!("hammer-{}-{}", kind.name(), pace.is_some());
    let tallies = run(kind, url, REPLICAS, Work::Hammer { id, start, end, pace })?;
    let mut per_window = vec![0u64; WINDOWS as usize];
    for t in &tallies {
        for at in &t.allowed_at {
            // An answer comes after its decision, and every allowed decision is early in its
            // window, so the answer's time places it.
            let w = (at.as_secs_f64() / WINDOW as f64) as usize;
            if let Some(n) = per_window.get_mut(w) {
                *n += 1;
            }
        }
    }
    let decisions: u64 = tallies.iter().map(|t| t.decisions).sum();
    let over: Vec<String> = per_window
        .iter()
        .map(|&n| format!("{n} ({:+.1} %)", (n as f64 - LIMIT as f64) * 100.0 / LIMIT as f64))
        .collect();
    let rates: Vec<String> = tallies
        .iter()
        .map(|t| format!("{:.0}", t.decisions as f64 / (WINDOW * WINDOWS) as f64))
        .collect();
    println!(
        "  {:<10} allowed per window: {}; total {:+.2} %; requests {:.1}x the limit; decisions/s per replica (mostly refusals): {}",
        kind.name(),
        over.join(", "),
        (per_window.iter().sum::<u64>() as f64 - (WINDOWS * LIMIT) as f64) * 100.0 / (WINDOWS * LIMIT) as f64,
        decisions as f64 / (WINDOWS * LIMIT) as f64,
        rates.join(" + ")
    );
    Ok(())
}

fn open_rate(kind: Kind, url: &str, replicas: usize) -> Res<()> {
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + Duration::from_secs(OPEN_SECS);
    let prefix = format!("open-{}-{replicas}", kind.name());
    let tallies = run(kind, url, replicas, Work::Open { prefix, start, end })?;
    let rates: Vec<String> =
        tallies.iter().map(|t| format!("{:.0}", t.decisions as f64 / OPEN_SECS as f64)).collect();
    println!(
        "  {:<10} {replicas} replica{}: {} decisions/s",
        kind.name(),
        if replicas == 1 { "" } else { "s" },
        rates.join(" + ")
    );
    Ok(())
}

fn redis_memory(kind: Kind, redis: &RedisServer) -> Res<()> {
    redis.query::<()>(&mut redis::cmd("FLUSHALL"))?;
    let before = redis.used_memory()?;
    let started = Instant::now();
    run(kind, &redis.url(), 1, Work::Distinct { to: DISTINCT, phase: OPEN })?;
    let took = started.elapsed();
    let after = redis.used_memory()?;
    let keys: u64 = redis.query(&mut redis::cmd("DBSIZE"))?;
    let sample: Vec<String> = redis
        .query(redis::cmd("SCAN").arg(0).arg("COUNT").arg(5))
        .map(|(_, keys): (String, Vec<String>)| keys)
        .unwrap_or_default();
    let longest = sample.iter().map(String::len).max().unwrap_or(0);
    println!(
        "  {:<10} used_memory +{:.1} MiB ({} B per counter), DBSIZE {keys}, key names up to {longest} B; {:.1} s",
        kind.name(),
        (after - before) as f64 / 1048576.0,
        (after - before) / DISTINCT as i64,
        took.as_secs_f64()
    );
    Ok(())
}

/// What Redis still holds once every counter's window has ended.
fn redis_after_windows(kind: Kind, redis: &RedisServer) -> Res<()> {
    redis.query::<()>(&mut redis::cmd("FLUSHALL"))?;
    let before = redis.used_memory()?;
    run(kind, &redis.url(), 1, Work::Distinct { to: ENDED, phase: SHORT })?;
    // Past every 1-second window's end and keygate's one-second margin; then a full SCAN, so
    // keys Redis has not yet expired on its own are expired when visited.
    std::thread::sleep(Duration::from_millis(2_500));
    let mut cursor = 0u64;
    loop {
        let (next, _): (u64, Vec<String>) =
            redis.query(redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(10_000))?;
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let after = redis.used_memory()?;
    let keys: u64 = redis.query(&mut redis::cmd("DBSIZE"))?;
    let sets: u64 = redis.query(redis::cmd("EVAL").arg(
        "local n = 0 for _, k in ipairs(redis.call('KEYS', '*')) do if redis.call('TYPE', k).ok == 'set' then n = n + redis.call('SCARD', k) end end return n",
    ).arg(0))?;
    println!(
        "  {:<10} DBSIZE {keys}, set members {sets}, used_memory {:+.2} MiB",
        kind.name(),
        (after - before) as f64 / 1048576.0
    );
    Ok(())
}

fn memory_engine() -> Res<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let names: Vec<String> = (0..DISTINCT).map(|i| format!("k:3600:per-hour:key-{i:06}")).collect();
        let counters = Counters::memory();
        counters.hit(&[Check { counter: "warm-up", limit: 100, seconds: 3600 }]).await?;
        let (live, resident) = (LIVE.load(Ordering::Relaxed), rss());
        let started = thread_cpu();
        for name in &names {
            counters.hit(&[Check { counter: name, limit: 100, seconds: 3600 }]).await?;
        }
        let first = thread_cpu() - started;
        let (live_after, resident_after) = (LIVE.load(Ordering::Relaxed), rss());
        let started = thread_cpu();
        for name in &names {
            counters.hit(&[Check { counter: name, limit: 100, seconds: 3600 }]).await?;
        }
        let again = thread_cpu() - started;
        println!(
            "  keygate memory engine, {} live counters (names of {} B): {} B per counter asked of the allocator, {} B per counter of RSS; \
             {:.2} M decisions per CPU second creating them, {:.2} M counting them again (one thread)",
            counters.active(),
            names[0].len(),
            (live_after - live) / DISTINCT as isize,
            (resident_after - resident) / DISTINCT as isize,
            DISTINCT as f64 / first.as_secs_f64() / 1e6,
            DISTINCT as f64 / again.as_secs_f64() / 1e6,
        );
        Res::Ok(())
    })
}

fn limit_lookup() -> Res<()> {
    // Limits that differ per key are one limit per key, told apart by a condition; every
    // decision evaluates every limit of its namespace.
    for keys in [1usize, 1_000, 10_000] {
        let limiter = RateLimiter::new(1_000);
        for i in 0..keys {
            let condition = Predicate::try_from(format!("key_id == 'key-{i:06}'").as_str())?;
            limiter.add_limit(Limit::new(
                "keys",
                100 + i as u64,
                60,
                [condition],
                Vec::<Expression>::new(),
            ));
        }
        let ctx: Context = HashMap::from([("key_id".to_string(), "key-000000".to_string())]).into();
        let namespace = Namespace::from("keys");
        let (started, cpu) = (Instant::now(), thread_cpu());
        let mut decisions = 0u32;
        while decisions < 200_000 && started.elapsed() < Duration::from_millis(700) {
            limiter
                .check_rate_limited_and_update(&namespace, &ctx, 1)
                .map_err(|e| e.to_string())?;
            decisions += 1;
        }
        println!(
            "  limitador (in memory), {keys:>6} keys' limits in the namespace: {:.1} µs of CPU per decision ({decisions} decisions)",
            (thread_cpu() - cpu).as_secs_f64() * 1e6 / decisions as f64,
        );
    }
    let limiter = RateLimiter::new(1_000);
    let key_id = || Expression::try_from("key_id");
    let kept_100 =
        limiter.add_limit(Limit::new("owners", 100, 60, Vec::<Predicate>::new(), [key_id()?]));
    let kept_5 =
        limiter.add_limit(Limit::new("owners", 5, 60, Vec::<Predicate>::new(), [key_id()?]));
    let held: Vec<u64> =
        limiter.get_limits(&Namespace::from("owners")).iter().map(|l| l.max_value()).collect();
    println!(
        "  limitador add_limit: 100/60 s kept {kept_100}, then 5/60 s (same namespace, window, variables) kept {kept_5}: the namespace holds maximums {held:?}"
    );
    Ok(())
}

/// A redis-server of the bench's own; killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    fn start() -> Res<RedisServer> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("keygate-counters-bench-{port}"));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("/usr/bin/redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = RedisServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("redis-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> Res<T> {
        let mut connection = redis::Client::open(self.url())?.get_connection()?;
        Ok(cmd.query(&mut connection)?)
    }

    fn used_memory(&self) -> Res<i64> {
        let info: String = self.query(redis::cmd("INFO").arg("memory"))?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| "no used_memory in INFO".into())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn main() -> Res<()> {
    let began = Instant::now();
    println!("memory engine ({DISTINCT} counters, 1-hour windows)");
    memory_engine()?;

    let redis = RedisServer::start()?;
    let version: String = redis.query(redis::cmd("INFO").arg("server"))?;
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    println!(
        "redis-server {version} on 127.0.0.1:{}; {} cores; each replica one thread, one tokio current-thread runtime, its own storage instance, {TASKS} concurrent requesters",
        redis.port,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Five times the limit: every requester once a period, all of them at once.
    let pace = Duration::from_secs(WINDOW) * (REPLICAS * TASKS) as u32 / (5 * LIMIT) as u32;
    println!(
        "over-admission: one counter, {LIMIT} per {WINDOW} s window, {WINDOWS} windows, {REPLICAS} replicas x {TASKS} requesters \
         each sending one request every {} ms together (5x the limit)",
        pace.as_millis()
    );
    for kind in [Kind::Keygate, Kind::Limitador] {
        over_admission(kind, &redis.url(), Some(pace))?;
    }
    println!("over-admission: the same, every requester flat out");
    for kind in [Kind::Keygate, Kind::Limitador] {
        over_admission(kind, &redis.url(), None)?;
    }

    println!("decisions/s, the limit never reached (each requester cycling over 1,000 counters), {OPEN_SECS} s");
    for kind in [Kind::Keygate, Kind::Limitador] {
        for replicas in [1, 2] {
            redis.query::<()>(&mut redis::cmd("FLUSHALL"))?;
            open_rate(kind, &redis.url(), replicas)?;
        }
    }

    println!(
        "redis memory after {DISTINCT} distinct counters hit once (1-hour windows, one replica)"
    );
    for kind in [Kind::Keygate, Kind::Limitador] {
        redis_memory(kind, &redis)?;
    }

    println!(
        "redis after {ENDED} distinct counters were hit once with 1-second windows, and the windows ended"
    );
    for kind in [Kind::Keygate, Kind::Limitador] {
        redis_after_windows(kind, &redis)?;
    }

    println!("limitador's limits");
    limit_lookup()?;
    println!("total {:.0} s", began.elapsed().as_secs_f64());
    Ok(())
}
