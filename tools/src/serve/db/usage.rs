//! Usage counts: batches from the filters added to per-minute rows, rolled up into hours,
//! and read back as time series and totals.
//!
//! A batch is taken in one transaction that first records its id: a batch sent again (its
//! answer lost) finds the id and adds nothing. The rows are upserts that add, so replicas
//! taking different batches of the same minute add up. The roll-up from minutes to hours
//! holds a PostgreSQL advisory lock, so two replicas never roll the same minutes up twice.

use super::Db;
use crate::serve::error::ApiError;
use sqlx::Row;

/// The advisory lock of the roll-up ("usage" in ASCII).
const ROLLUP_LOCK: i64 = 0x0075_7361_6765;
/// Rows per multi-row statement (5 parameters each: well under either database's limit).
const CHUNK: usize = 1_000;

/// One count of a batch.
pub struct UsageRow {
    pub key_id: String,
    pub owner: Option<String>,
    pub result: &'static str,
    pub count: i64,
}

/// One point of a series: a bucket's start and its counts by result.
pub struct UsagePoint {
    pub at_ms: i64,
    pub result: String,
    pub count: i64,
}

impl Db {
    /// The `n`th (from 1) parameter of a statement with many. SQLite looks up a numbered
    /// parameter (`$n`) by walking a list of every name, so binding a thousand of them costs
    /// a million steps; its anonymous `?` takes the next value, bound in order.
    fn param(&self, n: usize) -> String {
        if self.postgres {
            format!("${n}")
        } else {
            "?".to_string()
        }
    }

    /// Adds a batch's rows at `minute` and sets `last_used_ms` of the keys in `used`;
    /// `false` (and nothing added) when the batch id was taken before.
    pub async fn add_usage(
        &self,
        batch: &str,
        minute: i64,
        rows: &[UsageRow],
        used: &[String],
        now_ms: i64,
    ) -> Result<bool, ApiError> {
        let mut tx = self.usage.as_ref().unwrap_or(&self.pool).begin().await?;
        let new = sqlx::query(
            "INSERT INTO usage_batches (id, received_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(batch)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !new {
            return Ok(false);
        }
        for chunk in rows.chunks(CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let [a, b, c, d, e] = [1, 2, 3, 4, 5].map(|j| self.param(i * 5 + j));
                    format!("({a}, {b}, {c}, {d}, {e})")
                })
                .collect();
            let sql = format!(
                "INSERT INTO usage_minutes (key_id, minute, result, owner, count) VALUES {} \
                 ON CONFLICT (key_id, minute, result) DO UPDATE SET count = usage_minutes.count + excluded.count",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for row in chunk {
                query = query
                    .bind(&row.key_id)
                    .bind(minute)
                    .bind(row.result)
                    .bind(row.owner.as_deref())
                    .bind(row.count);
            }
            query.execute(&mut *tx).await?;
        }
        for chunk in used.chunks(CHUNK) {
            let ids: Vec<String> = (0..chunk.len()).map(|i| self.param(i + 3)).collect();
            let (a, b) = (self.param(1), self.param(2));
            let sql = format!(
                "UPDATE keys SET last_used_ms = {a} \
                 WHERE (last_used_ms IS NULL OR last_used_ms < {b}) AND id IN ({})",
                ids.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(minute).bind(minute);
            for id in chunk {
                query = query.bind(id);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Rolls minutes before `minutes_before` up into hours, and deletes hours before
    /// `hours_before` and batch ids received before `batches_before` (all Unix ms).
    pub async fn roll_usage_up(
        &self,
        minutes_before: i64,
        hours_before: i64,
        batches_before: i64,
    ) -> Result<u64, ApiError> {
        let mut tx = self.usage.as_ref().unwrap_or(&self.pool).begin().await?;
        if self.postgres {
            sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS locked")
                .bind(ROLLUP_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO usage_hours (key_id, hour, result, owner, count) \
             SELECT key_id, minute - (minute % 3600000), result, MAX(owner), SUM(count) \
             FROM usage_minutes WHERE minute < $1 GROUP BY key_id, minute - (minute % 3600000), result \
             ON CONFLICT (key_id, hour, result) DO UPDATE SET count = usage_hours.count + excluded.count",
        )
        .bind(minutes_before)
        .execute(&mut *tx)
        .await?;
        let rolled = sqlx::query("DELETE FROM usage_minutes WHERE minute < $1")
            .bind(minutes_before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM usage_hours WHERE hour < $1")
            .bind(hours_before)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM usage_batches WHERE received_ms < $1")
            .bind(batches_before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rolled)
    }

    /// The counts of `key_id` (or of every key of `owner`, with `by_owner`) from `from_ms`
    /// to `to_ms` (excluded), summed per bucket of `step_ms`, from minutes and hours both.
    pub async fn usage_series(
        &self,
        key_id: Option<&str>,
        owner: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<UsagePoint>, ApiError> {
        let (filter, who) = match (key_id, owner) {
            (Some(id), _) => ("key_id = $4", id),
            (None, Some(owner)) => ("owner = $4", owner),
            (None, None) => ("$4 = $4", ""),
        };
        let sql = format!(
            "SELECT at, result, CAST(SUM(count) AS BIGINT) AS total FROM ( \
               SELECT minute - (minute % $3) AS at, result, count FROM usage_minutes \
                 WHERE {filter} AND minute >= $1 AND minute < $2 \
               UNION ALL \
               SELECT hour - (hour % $3) AS at, result, count FROM usage_hours \
                 WHERE {filter} AND hour >= $1 AND hour < $2 \
             ) AS u GROUP BY at, result ORDER BY at, result"
        );
        let rows = sqlx::query(&sql)
            .bind(from_ms)
            .bind(to_ms)
            .bind(step_ms)
            .bind(who)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(UsagePoint {
                    at_ms: r.try_get("at")?,
                    result: r.try_get("result")?,
                    count: r.try_get("total")?,
                })
            })
            .collect()
    }

    /// Per key (with its owner) in the window: counts by result, for totals and top keys.
    pub async fn usage_by_key(
        &self,
        owner: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, Option<String>, String, i64)>, ApiError> {
        let filter = if owner.is_some() { "owner = $3" } else { "$3 = $3" };
        let sql = format!(
            "SELECT key_id, MAX(owner) AS owner, result, CAST(SUM(count) AS BIGINT) AS total FROM ( \
               SELECT key_id, owner, result, count FROM usage_minutes \
                 WHERE {filter} AND minute >= $1 AND minute < $2 \
               UNION ALL \
               SELECT key_id, owner, result, count FROM usage_hours \
                 WHERE {filter} AND hour >= $1 AND hour < $2 \
             ) AS u GROUP BY key_id, result ORDER BY key_id, result"
        );
        let rows = sqlx::query(&sql)
            .bind(from_ms)
            .bind(to_ms)
            .bind(owner.unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("key_id")?,
                    r.try_get("owner")?,
                    r.try_get("result")?,
                    r.try_get("total")?,
                ))
            })
            .collect()
    }

    /// When each of these keys was last presented (Unix ms), `None` for never.
    pub async fn last_used(&self, ids: &[String]) -> Result<Vec<(String, Option<i64>)>, ApiError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 1)).collect();
            let sql =
                format!("SELECT id, last_used_ms FROM keys WHERE id IN ({})", marks.join(", "));
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for r in query.fetch_all(&self.pool).await? {
                out.push((r.try_get("id")?, r.try_get("last_used_ms")?));
            }
        }
        Ok(out)
    }
}
