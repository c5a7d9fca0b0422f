//! The webhook outbox. An event is written here, one row for each `--webhook` URL, in the
//! transaction of the change it reports: it exists exactly when the change committed.
//! `serve::webhooks` sends the due rows and marks them delivered or due again later.
//!
//! Several replicas may send from one database: a replica claims a row by moving its
//! `next_ms` forward from the value it read, so only one of them sends each attempt.

use super::{Db, Write};
use crate::serve::error::ApiError;
use serde_json::{json, Value};
use sqlx::Row;

/// An undelivered event for one URL.
pub struct Due {
    pub id: String,
    pub url: String,
    pub kind: String,
    pub body: String,
    pub attempts: i64,
    pub next_ms: i64,
}

/// `evt_` and 16 random hex characters: the event's id, the same for every URL it goes to.
fn event_id() -> Result<String, ApiError> {
    crate::secret::random_id("evt_").map_err(|e| {
        eprintln!("keygate serve: {e}");
        ApiError::internal()
    })
}

/// The body every URL receives: `{"id", "type", "created_at", "data"}`.
pub fn envelope(id: &str, kind: &str, created_at: &str, data: Value) -> String {
    json!({"id": id, "type": kind, "created_at": created_at, "data": data}).to_string()
}

async fn enqueue(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    urls: &[String],
    kind: &str,
    now: &str,
    now_ms: i64,
    data: Value,
) -> Result<(), ApiError> {
    if urls.is_empty() {
        return Ok(());
    }
    let id = event_id()?;
    let body = envelope(&id, kind, now, data);
    for url in urls {
        sqlx::query(
            "INSERT INTO outbox (id, url, kind, body, created_at, attempts, next_ms) \
             VALUES ($1, $2, $3, $4, $5, 0, $6)",
        )
        .bind(&id)
        .bind(url)
        .bind(kind)
        .bind(&body)
        .bind(now)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Write<'_> {
    /// An event about this change, sent once it commits (nothing without `--webhook`).
    pub async fn event(&mut self, kind: &str, data: Value) -> Result<(), ApiError> {
        let now_ms = crate::serve::now_ms();
        enqueue(&mut self.tx, &self.db.webhooks, kind, &self.now, now_ms, data).await
    }
}

impl Db {
    /// Up to `limit` undelivered rows due at `now_ms`, the longest waiting first.
    pub async fn due(&self, now_ms: i64, limit: i64) -> Result<Vec<Due>, ApiError> {
        let rows = sqlx::query(
            "SELECT id, url, kind, body, attempts, next_ms FROM outbox \
             WHERE delivered_at IS NULL AND next_ms <= $1 ORDER BY next_ms LIMIT $2",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Due {
                    id: r.try_get("id")?,
                    url: r.try_get("url")?,
                    kind: r.try_get("kind")?,
                    body: r.try_get("body")?,
                    attempts: r.try_get("attempts")?,
                    next_ms: r.try_get("next_ms")?,
                })
            })
            .collect()
    }

    /// Takes this attempt for this replica until `until_ms`: `false` when another replica
    /// took it first (it moved `next_ms`, or delivered it).
    pub async fn claim(&self, due: &Due, until_ms: i64) -> Result<bool, ApiError> {
        let claimed = sqlx::query(
            "UPDATE outbox SET next_ms = $3 \
             WHERE id = $1 AND url = $2 AND next_ms = $4 AND delivered_at IS NULL",
        )
        .bind(&due.id)
        .bind(&due.url)
        .bind(until_ms)
        .bind(due.next_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(claimed == 1)
    }

    pub async fn delivered(&self, due: &Due, at: &str) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE outbox SET delivered_at = $3, attempts = attempts + 1, last_error = NULL \
             WHERE id = $1 AND url = $2",
        )
        .bind(&due.id)
        .bind(&due.url)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A failed attempt: due again at `next_ms`.
    pub async fn failed(&self, due: &Due, next_ms: i64, error: &str) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, next_ms = $3, last_error = $4 \
             WHERE id = $1 AND url = $2",
        )
        .bind(&due.id)
        .bind(&due.url)
        .bind(next_ms)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets rows delivered before `before` (RFC 3339).
    pub async fn prune_delivered(&self, before: &str) -> Result<u64, ApiError> {
        Ok(sqlx::query("DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// The id, entry and end of every key ending after `from_ms` and at or before `to_ms`.
    pub async fn ending_between(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, String, i64)>, ApiError> {
        let rows = sqlx::query(
            "SELECT id, entry, expires_ms FROM keys \
             WHERE expires_ms > $1 AND expires_ms <= $2 ORDER BY expires_ms",
        )
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("entry")?, r.try_get("expires_ms")?)))
            .collect()
    }

    /// A `key.expiring` notice for this key, end and lead time (`7d`, `1d`), written once:
    /// `false` when it was written before (by this replica or another).
    pub async fn expiring_notice(
        &self,
        key_id: &str,
        expires_ms: i64,
        ahead: &str,
        now: &str,
        data: Value,
    ) -> Result<bool, ApiError> {
        let mut tx = self.pool.begin().await?;
        let new = sqlx::query(
            "INSERT INTO expiry_notices (key_id, expires_ms, ahead) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(key_id)
        .bind(expires_ms)
        .bind(ahead)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if new {
            let now_ms = crate::serve::now_ms();
            enqueue(&mut tx, &self.webhooks, "key.expiring", now, now_ms, data).await?;
        }
        tx.commit().await?;
        Ok(new)
    }
}
