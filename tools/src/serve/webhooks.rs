//! Signed webhooks (`--webhook URL`, the secret in `KEYGATE_WEBHOOK_SECRET`): the sender of
//! the outbox (`db::events`) and the `key.expiring` notices.
//!
//! Every event is written in the transaction of its change, so it is sent only for a change
//! that committed and survives a restart. The sender polls for due rows, posts each with an
//! HMAC-SHA256 of the body, and on any answer but a 2xx (or no answer within
//! [`TIMEOUT`]) tries again after a backoff that doubles from one second up to
//! [`MAX_BACKOFF`], for as long as it takes. Delivery is at least once: a receiver drops a
//! repeated `keygate-delivery` id.

use crate::serve::db::{Db, Due};
use crate::serve::listen::Every;
use crate::serve::{now_ms, rfc3339};
use hmac::{Hmac, Mac};
use keygate::core::hex;
use serde_json::{json, Map, Value};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

/// How long one attempt may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often the outbox is read for due rows, and keys for coming ends.
const POLL: Duration = Duration::from_millis(250);
const SCAN: Duration = Duration::from_secs(5);
/// Delivered rows are kept this long (for an operator reading the table), then deleted.
const KEEP_DELIVERED_MS: i64 = 7 * 86_400_000;
const DAY_MS: i64 = 86_400_000;

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`: the `keygate-signature-256`
/// header.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length, so this never fails.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(&mac.finalize().into_bytes()))
}

/// The wait after the `attempts`-th failed attempt: 1 s, 2 s, 4 s ... up to [`MAX_BACKOFF`].
pub fn backoff(attempts: i64) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 16) as u32;
    Duration::from_secs(1u64 << doublings).min(MAX_BACKOFF)
}

/// Sends due events until the process stops; reads keys for `key.expiring` notices too.
pub async fn run(db: Arc<Db>, secret: Arc<[u8]>) {
    let agent = ureq::AgentBuilder::new().timeout(TIMEOUT).redirects(0).build();
    let log = Every::new(Duration::from_secs(10));
    let mut last_scan = 0i64;
    loop {
        let now = now_ms();
        if now - last_scan >= SCAN.as_millis() as i64 {
            last_scan = now;
            if let Err(e) = notices(&db, now).await {
                if log.now() {
                    eprintln!("keygate serve: webhooks: cannot read coming key ends: {}", e.body());
                }
            }
            if let Err(e) = db.prune_delivered(&rfc3339(now - KEEP_DELIVERED_MS)).await {
                if log.now() {
                    eprintln!("keygate serve: webhooks: cannot prune the outbox: {}", e.body());
                }
            }
        }
        match db.due(now, 50).await {
            Ok(due) => {
                for row in due {
                    send(&db, &agent, &secret, row, &log).await;
                }
            }
            Err(e) => {
                if log.now() {
                    eprintln!("keygate serve: webhooks: cannot read the outbox: {}", e.body());
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn send(db: &Db, agent: &ureq::Agent, secret: &[u8], row: Due, log: &Every) {
    // The attempt is this replica's until it could have timed out twice over.
    let lease = now_ms() + 2 * TIMEOUT.as_millis() as i64;
    match db.claim(&row, lease).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            if log.now() {
                eprintln!("keygate serve: webhooks: cannot claim an event: {}", e.body());
            }
            return;
        }
    }
    let request = agent
        .post(&row.url)
        .set("content-type", "application/json")
        .set("user-agent", concat!("keygate/", env!("CARGO_PKG_VERSION")))
        .set("keygate-event", &row.kind)
        .set("keygate-delivery", &row.id)
        .set("keygate-signature-256", &signature(secret, row.body.as_bytes()));
    let body = row.body.clone();
    let outcome = tokio::task::spawn_blocking(move || match request.send_string(&body) {
        Ok(r) if (200..300).contains(&r.status()) => Ok(()),
        Ok(r) => Err(format!("answered {}", r.status())),
        Err(ureq::Error::Status(status, _)) => Err(format!("answered {status}")),
        Err(ureq::Error::Transport(t)) => Err(format!("no answer: {}", t.kind())),
    })
    .await
    .unwrap_or_else(|e| Err(format!("sender stopped: {e}")));
    let written = match outcome {
        Ok(()) => db.delivered(&row, &rfc3339(now_ms())).await,
        Err(why) => {
            let wait = backoff(row.attempts + 1);
            if log.now() {
                eprintln!(
                    "keygate serve: webhooks: {} {} to {}: {why}; next attempt in {} s",
                    row.kind,
                    row.id,
                    row.url,
                    wait.as_secs()
                );
            }
            db.failed(&row, now_ms() + wait.as_millis() as i64, &why).await
        }
    };
    if let Err(e) = written {
        eprintln!("keygate serve: webhooks: cannot record an attempt: {}", e.body());
    }
}

/// A `key.expiring` notice for every enabled key ending within 7 days (`ahead: "7d"`) or
/// within a day (`"1d"`), each once per key and end.
async fn notices(db: &Db, now: i64) -> Result<(), crate::serve::error::ApiError> {
    for (id, entry, end) in db.ending_between(now, now + 7 * DAY_MS).await? {
        let entry: Map<String, Value> = serde_json::from_str(&entry).unwrap_or_default();
        if entry.get("disabled") == Some(&Value::Bool(true)) {
            continue;
        }
        let ahead = if end - now <= DAY_MS { "1d" } else { "7d" };
        let data = json!({
            "key_id": id,
            "owner": entry.get("owner"),
            "expires_at": rfc3339(end),
            "ahead": ahead,
        });
        db.expiring_notice(&id, end, ahead, &rfc3339(now), data).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_from_a_second_up_to_five_minutes() {
        let waits: Vec<u64> = (1..=11).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(i64::MAX), MAX_BACKOFF);
        assert_eq!(backoff(0).as_secs(), 1);
    }
}
