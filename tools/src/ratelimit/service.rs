//! The gRPC server: Envoy's `RateLimitService.ShouldRateLimit` on `--ratelimit-listen`
//! (h2c). Each keygate descriptor is counted against its key's and its owner's limits at
//! once (`counters`): all of them allow it, or none is charged.
//!
//! When the counters cannot be reached (Redis down), `--ratelimit-on-error allow` answers OK
//! (the request goes on: its key was already checked by the filter) and `deny` answers gRPC
//! `UNAVAILABLE`, which Envoy turns into a refusal only with `failure_mode_deny: true`.
//! Either way the failure is counted and logged at most every 10 s.

use crate::ratelimit::counters::{Check, Counters};
use crate::ratelimit::decision::{self, Counted};
use crate::ratelimit::owners::OwnerLimits;
use crate::serve::listen::Every;
use crate::serve::metrics::{self, Decision};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// What a decision does when the counters fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Allow,
    Deny,
}

/// Decisions since the service started, by result (for logs and metrics).
#[derive(Default)]
pub struct Stats {
    pub allowed: AtomicU64,
    pub limited: AtomicU64,
    pub errors: AtomicU64,
    pub malformed: AtomicU64,
}

pub struct Limiter {
    counters: Counters,
    owners: Arc<OwnerLimits>,
    on_error: OnError,
    pub stats: Stats,
    log: Every,
}

impl Limiter {
    pub fn new(counters: Counters, owners: Arc<OwnerLimits>, on_error: OnError) -> Limiter {
        Limiter {
            counters,
            owners,
            on_error,
            stats: Stats::default(),
            log: Every::new(Duration::from_secs(10)),
        }
    }

    /// One request, every descriptor in it (keygate's: normally one).
    pub async fn decide(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let mut answer = decision::allowed();
        for descriptor in &request.descriptors {
            let entries = descriptor.entries.iter().map(|e| (e.key.as_str(), e.value.as_str()));
            let subject = match decision::subject(entries) {
                Ok(Some(subject)) => subject,
                Ok(None) => continue,
                Err(reason) => {
                    // Only the filter sets these headers, so this is a misconfiguration
                    // (another descriptor named `limits`): said, and not counted.
                    let n = self.stats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                    if self.log.now() {
                        eprintln!("keygate serve: rate limit: a descriptor not keygate's ({reason}); {n} so far");
                    }
                    continue;
                }
            };
            let owner_limits = match &subject.owner {
                Some(owner) => self.owners.get(owner),
                None => None,
            };
            let counted = decision::counted(&subject, owner_limits.as_deref().unwrap_or(&[]));
            if counted.is_empty() {
                continue;
            }
            let checks: Vec<Check> = counted.iter().map(check).collect();
            match self.counters.hit(&checks).await {
                Ok(decided) => {
                    let one = decision::response(&counted, &decided);
                    let refused = !one.raw_body.is_empty();
                    if refused || answer.statuses.is_empty() {
                        answer = one;
                    }
                    if refused {
                        break;
                    }
                }
                Err(e) => {
                    let n = self.stats.errors.fetch_add(1, Ordering::Relaxed) + 1;
                    metrics::decision(Decision::Error);
                    if self.log.now() {
                        eprintln!(
                            "keygate serve: rate limit: counters unavailable ({e}); {} ({n} so far)",
                            match self.on_error {
                                OnError::Allow => "allowing",
                                OnError::Deny => "answering UNAVAILABLE",
                            }
                        );
                    }
                    return match self.on_error {
                        OnError::Allow => Ok(decision::allowed()),
                        OnError::Deny => {
                            Err(Status::unavailable("rate-limit counters unavailable"))
                        }
                    };
                }
            }
        }
        let stat =
            if answer.raw_body.is_empty() { &self.stats.allowed } else { &self.stats.limited };
        stat.fetch_add(1, Ordering::Relaxed);
        metrics::decision(if answer.raw_body.is_empty() {
            Decision::Ok
        } else {
            Decision::OverLimit
        });
        Ok(answer)
    }
}

fn check(c: &Counted) -> Check<'_> {
    Check { counter: &c.counter, limit: c.limit.requests, seconds: c.limit.per.seconds() }
}

struct Rls(Arc<Limiter>);

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.0.decide(request.get_ref()).await.map(Response::new)
    }
}

/// Serves until the process stops.
pub async fn serve(listener: TcpListener, limiter: Arc<Limiter>) -> Result<(), String> {
    tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(Rls(limiter)))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
        .await
        .map_err(|e| e.to_string())
}
