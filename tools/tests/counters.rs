//! The counter engine through its public API, in memory and in a real Redis: exact counts
//! under concurrency, all or nothing across counters, windows that end on the epoch's
//! boundaries, memory given back, replicas sharing one Redis, and Redis lost and back.
//!
//! Each Redis test starts a redis-server of its own (Debian's) on a free port in a temporary
//! directory, never the system service, and kills it when done.

use keygate_tools::ratelimit::counters::{Check, Counters, Decision, Status};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A test's unwrap, in the form the workspace's lints accept.
trait Must<T> {
    fn must(self) -> T;
}

impl<T, E: std::fmt::Debug> Must<T> for Result<T, E> {
    fn must(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => unreachable!("{e:?}"),
        }
    }
}

impl<T> Must<T> for Option<T> {
    fn must(self) -> T {
        match self {
            Some(v) => v,
            None => unreachable!("nothing there"),
        }
    }
}

/// A window that does not end during a test (it started at the epoch).
const LONG: u64 = 1 << 40;

fn check(counter: &str, limit: u64, seconds: u64) -> Check<'_> {
    Check { counter, limit, seconds }
}

fn status(limit: u64, remaining: u64, reset_secs: u64) -> Status {
    Status { limit, remaining, reset_secs }
}

/// Waits for the clock's next whole second and returns it: decisions made in the next few
/// hundred milliseconds all fall in that second, so their windows are known exactly.
async fn second_start() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).must();
    let next = now.as_secs() + 1;
    tokio::time::sleep(Duration::from_secs(next) - now + Duration::from_millis(20)).await;
    next
}

/// `tasks` tasks per counters instance, each hitting `counter` `hits` times in a row;
/// returns (allowed, limited). Errors fail the test.
async fn hammer(
    replicas: &[Arc<Counters>],
    counter: &str,
    limit: u64,
    tasks: usize,
    hits: usize,
) -> (usize, usize) {
    let mut handles = Vec::new();
    for counters in replicas {
        for _ in 0..tasks {
            let counters = Arc::clone(counters);
            let counter = counter.to_string();
            handles.push(tokio::spawn(async move {
                let mut allowed = 0;
                for _ in 0..hits {
                    if let Decision::Allowed(_) =
                        counters.hit(&[check(&counter, limit, LONG)]).await.must()
                    {
                        allowed += 1;
                    }
                }
                allowed
            }));
        }
    }
    let mut allowed = 0;
    for h in handles {
        allowed += h.await.must();
    }
    (allowed, replicas.len() * tasks * hits - allowed)
}

/// A decision without its reset times: the counter that refused, if one did, and what each
/// counter has left.
fn left(decision: Decision) -> (Option<usize>, Vec<u64>) {
    match decision {
        Decision::Allowed(s) => (None, s.iter().map(|s| s.remaining).collect()),
        Decision::Limited { index, statuses } => {
            (Some(index), statuses.iter().map(|s| s.remaining).collect())
        }
    }
}

async fn all_or_nothing(counters: &Counters) {
    let both = [check("key", 5, LONG), check("owner", 2, LONG)];
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(left(counters.hit(&both).await.must()));
    }
    // The owner refuses from the third request on, and the key is not charged for those.
    assert_eq!(
        got,
        [
            (None, vec![4, 1]),
            (None, vec![3, 0]),
            (Some(1), vec![3, 0]),
            (Some(1), vec![3, 0]),
            (Some(1), vec![3, 0]),
        ]
    );
    let mut alone = Vec::new();
    for _ in 0..4 {
        alone.push(left(counters.hit(&[check("key", 5, LONG)]).await.must()));
    }
    assert_eq!(alone, [(None, vec![2]), (None, vec![1]), (None, vec![0]), (Some(0), vec![0])]);
}

async fn listed_twice(counters: &Counters) {
    let twice = [check("twice", 3, LONG), check("twice", 3, LONG)];
    assert_eq!(left(counters.hit(&twice).await.must()), (None, vec![2, 1]));
    assert_eq!(left(counters.hit(&twice).await.must()), (Some(1), vec![1, 0]));
    assert_eq!(left(counters.hit(&[check("twice", 3, LONG)]).await.must()), (None, vec![0]));
}

async fn statuses(counters: &Counters, prefix: &str) {
    let s = second_start().await;
    let minute = format!("{prefix}minute");
    let hour = format!("{prefix}hour");
    let checks = [check(&minute, 10, 60), check(&hour, 2, 3600)];
    let (m, h) = (60 - s % 60, 3600 - s % 3600);
    assert_eq!(
        counters.hit(&checks).await.must(),
        Decision::Allowed(vec![status(10, 9, m), status(2, 1, h)])
    );
    assert_eq!(
        counters.hit(&checks).await.must(),
        Decision::Allowed(vec![status(10, 8, m), status(2, 0, h)])
    );
    assert_eq!(
        counters.hit(&checks).await.must(),
        Decision::Limited { index: 1, statuses: vec![status(10, 8, m), status(2, 0, h)] }
    );
    // A limit of 0 refuses from the first request.
    assert_eq!(
        counters.hit(&[check(&format!("{prefix}zero"), 0, 60)]).await.must(),
        Decision::Limited { index: 0, statuses: vec![status(0, 0, m)] }
    );
    // Nothing to count against: allowed, nothing counted.
    assert_eq!(counters.hit(&[]).await.must(), Decision::Allowed(vec![]));
}

/// Returns the second the last decision was made in.
async fn window_resets(counters: &Counters) -> u64 {
    let s = second_start().await;
    let per_second = [check("burst", 3, 1)];
    for remaining in [2, 1, 0] {
        assert_eq!(
            counters.hit(&per_second).await.must(),
            Decision::Allowed(vec![status(3, remaining, 1)]),
            "second {s}"
        );
    }
    assert_eq!(
        counters.hit(&per_second).await.must(),
        Decision::Limited { index: 0, statuses: vec![status(3, 0, 1)] }
    );
    let next = second_start().await;
    assert_eq!(
        counters.hit(&per_second).await.must(),
        Decision::Allowed(vec![status(3, 2, 1)]),
        "a new second, a new window"
    );
    next
}

// In memory.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_allows_exactly_the_limit_under_concurrency() {
    let counters = Arc::new(Counters::memory());
    assert_eq!(hammer(&[Arc::clone(&counters)], "m", 100, 1_000, 1).await, (100, 900));
    assert_eq!(left(counters.hit(&[check("m", 100, LONG)]).await.must()), (Some(0), vec![0]));
}

#[tokio::test]
async fn memory_counts_all_or_nothing() {
    all_or_nothing(&Counters::memory()).await;
}

#[tokio::test]
async fn memory_counts_a_counter_listed_twice_twice() {
    listed_twice(&Counters::memory()).await;
}

#[tokio::test]
async fn memory_statuses_say_what_is_left_and_when_it_resets() {
    statuses(&Counters::memory(), "").await;
}

#[tokio::test]
async fn memory_windows_end_on_the_second() {
    window_resets(&Counters::memory()).await;
}

#[tokio::test]
async fn memory_frees_counters_whose_window_ended() {
    let counters = Counters::memory();
    second_start().await;
    for i in 0..1_000 {
        counters.hit(&[check(&format!("short-{i}"), 5, 1)]).await.must();
    }
    counters.hit(&[check("long", 5, LONG)]).await.must();
    assert_eq!(counters.active(), 1_001);
    second_start().await;
    counters.hit(&[check("long", 5, LONG)]).await.must();
    assert_eq!(counters.active(), 1, "only the counter still counting is held");
}

// In Redis.

/// A redis-server of the test's own; killed when dropped.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0").must().local_addr().must().port();
        let dir =
            std::env::temp_dir().join(format!("keygate-counters-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).must();
        let mut server = RedisServer { child: None, port, dir };
        server.restart();
        server
    }

    /// Starts (again) on the same port, with nothing in it.
    fn restart(&mut self) {
        let child = Command::new("/usr/bin/redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            unreachable!(
                "no /usr/bin/redis-server (Debian's redis-server; scripts/setup.sh installs it)"
            )
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on {}", self.port);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).must()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn cmd<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        let client = redis::Client::open(self.url()).must();
        let mut connection = client.get_multiplexed_async_connection().await.must();
        cmd.query_async(&mut connection).await.must()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_allows_exactly_the_limit_under_concurrency() {
    let server = RedisServer::start();
    let counters = Arc::new(Counters::redis(&server.url()).await.must());
    assert_eq!(hammer(&[Arc::clone(&counters)], "r", 100, 1_000, 1).await, (100, 900));
    assert_eq!(server.cmd::<u64>(redis::cmd("GET").arg("kg:r:0")).await, 100);
    assert_eq!(counters.active(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_replicas_sharing_one_redis_allow_exactly_the_limit() {
    let server = RedisServer::start();
    let replicas = [
        Arc::new(Counters::redis(&server.url()).await.must()),
        Arc::new(Counters::redis(&server.url()).await.must()),
    ];
    // 5,000 requests for a limit of 1,000: 50 concurrent requesters on each replica.
    assert_eq!(hammer(&replicas, "shared", 1_000, 50, 50).await, (1_000, 4_000));
    assert_eq!(server.cmd::<u64>(redis::cmd("GET").arg("kg:shared:0")).await, 1_000);
}

#[tokio::test]
async fn redis_counts_all_or_nothing() {
    let server = RedisServer::start();
    all_or_nothing(&Counters::redis(&server.url()).await.must()).await;
    assert_eq!(server.cmd::<u64>(redis::cmd("GET").arg("kg:owner:0")).await, 2);
    assert_eq!(server.cmd::<u64>(redis::cmd("GET").arg("kg:key:0")).await, 5);
}

#[tokio::test]
async fn redis_counts_a_counter_listed_twice_twice() {
    let server = RedisServer::start();
    listed_twice(&Counters::redis(&server.url()).await.must()).await;
}

#[tokio::test]
async fn redis_statuses_say_what_is_left_and_when_it_resets() {
    let server = RedisServer::start();
    statuses(&Counters::redis(&server.url()).await.must(), "").await;
}

#[tokio::test]
async fn redis_windows_end_on_the_second_and_keys_expire_with_them() {
    let server = RedisServer::start();
    let counters = Counters::redis(&server.url()).await.must();
    let s = window_resets(&counters).await;
    // One key per window, and nothing else; each lives to its window's end and a second
    // more.
    let mut keys: Vec<String> = server.cmd(redis::cmd("KEYS").arg("*")).await;
    keys.sort();
    assert_eq!(keys, [format!("kg:burst:{}", s - 1), format!("kg:burst:{s}")]);
    let ended: i64 = server.cmd(redis::cmd("PTTL").arg(&keys[0])).await;
    let current: i64 = server.cmd(redis::cmd("PTTL").arg(&keys[1])).await;
    assert!((1..=1_000).contains(&ended), "the ended window's key expires in {ended} ms");
    assert!((1_001..=2_000).contains(&current), "the current window's key expires in {current} ms");
}

#[tokio::test]
async fn redis_holds_one_key_per_counter_and_window() {
    let server = RedisServer::start();
    let counters = Counters::redis(&server.url()).await.must();
    for i in 0..100 {
        let (key, owner) = (format!("k{i}"), format!("o{}", i % 10));
        counters.hit(&[check(&key, 10, 3600), check(&owner, 10, 3600)]).await.must();
    }
    assert_eq!(server.cmd::<u64>(&mut redis::cmd("DBSIZE")).await, 110);
}

#[tokio::test]
async fn redis_reloads_the_script_when_redis_lost_it() {
    let server = RedisServer::start();
    let counters = Counters::redis(&server.url()).await.must();
    counters.hit(&[check("s", 10, LONG)]).await.must();
    server.cmd::<()>(redis::cmd("SCRIPT").arg("FLUSH")).await;
    let s = second_start().await;
    assert_eq!(
        counters.hit(&[check("s", 10, LONG)]).await.must(),
        Decision::Allowed(vec![status(10, 8, LONG - s)])
    );
}

/// Hits until a decision comes back, for at most `within`; the time it took.
async fn until_answered(counters: &Counters, counter: &str, within: Duration) -> Duration {
    let start = Instant::now();
    while counters.hit(&[check(counter, 10, LONG)]).await.is_err() {
        assert!(start.elapsed() < within, "no answer from Redis in {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn redis_lost_is_an_error_within_a_second_and_back_is_used_again() {
    let mut server = RedisServer::start();
    let counters = Counters::redis(&server.url()).await.must();
    assert!(matches!(counters.hit(&[check("d", 10, LONG)]).await, Ok(Decision::Allowed(_))));

    server.kill();
    for _ in 0..5 {
        let start = Instant::now();
        let got = counters.hit(&[check("d", 10, LONG)]).await;
        assert!(got.is_err(), "a decision without Redis: {got:?}");
        assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
    }

    server.restart();
    until_answered(&counters, "d", Duration::from_secs(3)).await;
    // A restarted Redis starts from zero; the first answer above counted once.
    let s = second_start().await;
    assert_eq!(
        counters.hit(&[check("d", 10, LONG)]).await.must(),
        Decision::Allowed(vec![status(10, 8, LONG - s)])
    );
}

#[tokio::test]
async fn redis_hung_is_an_error_within_a_second() {
    let server = RedisServer::start();
    let counters = Counters::redis(&server.url()).await.must();
    counters.hit(&[check("h", 10, LONG)]).await.must();

    // SAFETY: signals to our own child process.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGSTOP) }, 0);
    let start = Instant::now();
    let got = counters.hit(&[check("h", 10, LONG)]).await;
    let took = start.elapsed();
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGCONT) }, 0);
    assert!(got.is_err(), "a decision from a stopped Redis: {got:?}");
    assert!(took < Duration::from_millis(1_100), "took {took:?}");

    until_answered(&counters, "h", Duration::from_secs(3)).await;
}

#[tokio::test]
async fn redis_absent_at_start_is_an_error_per_decision_not_at_start() {
    let port = TcpListener::bind("127.0.0.1:0").must().local_addr().must().port();
    let counters = Counters::redis(&format!("redis://127.0.0.1:{port}")).await.must();
    let start = Instant::now();
    let Err(err) = counters.hit(&[check("a", 10, LONG)]).await else {
        unreachable!("a decision without Redis")
    };
    assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
    assert!(err.to_string().starts_with("redis: "), "{err}");
    assert!(Counters::redis("http://nope").await.is_err(), "not a Redis URL");
}
