//! `rls-load ADDR CONCURRENCY SECONDS KEYS LIMITS [OWNER]`: CONCURRENCY callers on one
//! HTTP/2 connection (a current-thread runtime: one core) ask ADDR about keygate's descriptor
//! (`limits`, `key_id`, `owner`) for SECONDS, cycling over KEYS key ids; prints one JSON line:
//! decisions per second, answers by code, and latency percentiles in microseconds.
//! With SECONDS 0, asks once per key instead (to fill KEYS counters) and prints the same.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

fn request(key: usize, limits: &str, owner: Option<&str>) -> RateLimitRequest {
    let entry = |k: &str, v: String| Entry { key: k.into(), value: v };
    let mut entries = vec![entry("limits", limits.into()), entry("key_id", format!("bench-{key}"))];
    if let Some(o) = owner {
        entries.push(entry("owner", o.into()));
    }
    RateLimitRequest {
        domain: "keygate".into(),
        descriptors: vec![RateLimitDescriptor { entries, ..Default::default() }],
        hits_addend: 1,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        return Err("usage: rls-load ADDR CONCURRENCY SECONDS KEYS LIMITS [OWNER]".into());
    }
    let number = |i: usize| args[i].parse::<usize>().map_err(|e| format!("{}: {e}", args[i]));
    let (concurrency, seconds, keys) = (number(2)?, number(3)?, number(4)?.max(1));
    let limits = args[5].clone();
    let owner = args.get(6).cloned();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", args[1]))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let client = RateLimitServiceClient::new(channel);
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<u32>::new()));
    let codes = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    let began = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (mut client, stop, next, latencies, codes) =
            (client.clone(), stop.clone(), next.clone(), latencies.clone(), codes.clone());
        let (limits, owner) = (limits.clone(), owner.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if seconds == 0 && n >= keys {
                    break;
                }
                let at = Instant::now();
                let answer =
                    client.should_rate_limit(request(n % keys, &limits, owner.as_deref())).await;
                mine.push(at.elapsed().as_micros().min(u32::MAX as u128) as u32);
                let code = match answer {
                    Ok(a) => a.into_inner().overall_code as usize,
                    Err(_) => 3,
                };
                codes[code.min(3)].fetch_add(1, Ordering::Relaxed);
            }
            latencies.lock().await.extend(mine);
        }));
    }
    if seconds > 0 {
        tokio::time::sleep(Duration::from_secs(seconds as u64)).await;
        stop.store(true, Ordering::Relaxed);
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let mut all = latencies.lock().await.clone();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let total = all.len();
    println!(
        "{{\"decisions\": {total}, \"seconds\": {elapsed:.3}, \"per_second\": {:.0}, \"ok\": {}, \"over_limit\": {}, \"errors\": {}, \"p50_us\": {}, \"p99_us\": {}}}",
        total as f64 / elapsed,
        codes[1].load(Ordering::Relaxed),
        codes[2].load(Ordering::Relaxed),
        codes[3].load(Ordering::Relaxed) + codes[0].load(Ordering::Relaxed),
        pct(0.50),
        pct(0.99),
    );
    Ok(())
}
