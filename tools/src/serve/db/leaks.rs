//! Leak records: one per key a report named, numbered like the change that acted on it, and
//! the `leak` audit record every report leaves (a report naming no key this service holds
//! too, with an empty key id).

use super::{stored, Db, StoredKey, Write};
use crate::serve::error::ApiError;
use sqlx::Row;

pub struct LeakRow {
    pub seq: i64,
    pub key_id: String,
    pub at: String,
    /// An admin (their token's first 8 hex digest characters) or `github`.
    pub reporter: String,
    pub source: String,
    /// `disabled`, `expires` or `none` (the key was already disabled).
    pub action: String,
}

impl Write<'_> {
    /// The key with this digest, read inside this transaction.
    pub async fn by_digest(&mut self, sha256: &str) -> Result<Option<StoredKey>, ApiError> {
        let row =
            sqlx::query("SELECT id, sha256, name, entry, last_used_ms FROM keys WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(&mut *self.tx)
                .await?;
        row.map(|r| stored(&r)).transpose()
    }

    pub async fn leak(
        &mut self,
        key_id: &str,
        reporter: &str,
        source: &str,
        action: &str,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO leaks (seq, key_id, at, reporter, source, action) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(self.seq)
        .bind(key_id)
        .bind(&self.now)
        .bind(reporter)
        .bind(source)
        .bind(action)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// The `leak` audit record; `key_id` is empty when the report named no key held here.
    pub async fn audit_leak(
        &mut self,
        reporter: &str,
        key_id: &str,
        source: &str,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO audit (seq, at, admin, action, key_id, source) VALUES ($1, $2, $3, 'leak', $4, $5)",
        )
        .bind(self.seq)
        .bind(&self.now)
        .bind(reporter)
        .bind(key_id)
        .bind(source)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}

impl Db {
    /// Every leak recorded for a key, oldest first.
    pub async fn leaks_of(&self, key_id: &str) -> Result<Vec<LeakRow>, ApiError> {
        let rows = sqlx::query(
            "SELECT seq, key_id, at, reporter, source, action FROM leaks WHERE key_id = $1 ORDER BY seq",
        )
        .bind(key_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LeakRow {
                    seq: r.try_get("seq")?,
                    key_id: r.try_get("key_id")?,
                    at: r.try_get("at")?,
                    reporter: r.try_get("reporter")?,
                    source: r.try_get("source")?,
                    action: r.try_get("action")?,
                })
            })
            .collect()
    }

    /// Which of these keys (one page of the list, in id order) were ever reported leaked: one
    /// range read of the leaks index from the page's first id to its last.
    pub async fn leaked_among(&self, page: &[StoredKey]) -> Result<Vec<String>, ApiError> {
        let (Some(first), Some(last)) = (page.first(), page.last()) else {
            return Ok(Vec::new());
        };
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT key_id FROM leaks WHERE key_id >= $1 AND key_id <= $2",
        )
        .bind(&first.id)
        .bind(&last.id)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().filter(|id| page.iter().any(|k| &k.id == id)).collect())
    }
}
