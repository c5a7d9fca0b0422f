//! Usage counts: batches from the filters added to per-minute rows, rolled up into hours,
//! and read back as time series and totals.
//!
//! A batch is taken in one transaction that first records its id: a batch sent again (its
//! answer lost) finds the id and adds nothing. The rows are upserts that add, so replicas
//! taking different batches of the same minute add up.
//!
//! Batches add to `usage_recent`, in minute order, where a batch's keys share pages; once it
//! holds [`MOVE_ROWS`] rows (and before every roll-up: `serve::usage`) they are moved into
//! `usage_minutes`, in key order, where a key's series is read from a few pages. Written there batch by batch,
//! every key of a batch would cost a page write of its own. The roll-up from minutes to
//! hours holds a PostgreSQL advisory lock, so two replicas never roll the same minutes up
//! twice. Readers add the three tables.

use super::Db;
use crate::serve::error::ApiError;
use axum::http::StatusCode;
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// The advisory lock of the roll-up ("usage" in ASCII).
const ROLLUP_LOCK: i64 = 0x0075_7361_6765;
/// Rows `usage_recent` holds before they are moved: about 12 MB, read whole by a query of one
/// key (the table has no index by key), and moved in about a second (bench_usage.py).
pub const MOVE_ROWS: usize = 200_000;
/// Rows per multi-row statement (5 parameters each: well under either database's limit).
const CHUNK: usize = 1_000;

/// Every result a batch may count, in name order: the columns of `usage_recent`,
/// `usage_minutes` and `usage_hours` (migrations 0006 and 0007), NULL where not counted.
pub const RESULTS: [&str; 21] = [
    "allowed",
    "denied_checksum",
    "denied_cors_backend_key",
    "denied_disabled",
    "denied_endpoint",
    "denied_expired",
    "denied_malformed",
    "denied_missing",
    "denied_not_yet_valid",
    "denied_origin",
    "denied_resource",
    "denied_unknown",
    "preflight_allowed",
    "preflight_denied",
    "public",
    "unavailable",
    "upstream_2xx",
    "upstream_3xx",
    "upstream_429",
    "upstream_4xx",
    "upstream_5xx",
];

/// One key's counts of a batch, by column of [`RESULTS`].
struct KeyCounts<'a> {
    key_id: &'a str,
    owner: Option<&'a str>,
    counts: [Option<i64>; RESULTS.len()],
}

/// A batch's rows gathered by key, in key order.
fn by_key(rows: &[UsageRow]) -> Result<Vec<KeyCounts<'_>>, ApiError> {
    let mut keys: Vec<KeyCounts> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for row in rows {
        let column = RESULTS.binary_search(&row.result).map_err(|_| {
            let why = format!("usage result {:?} has no column", row.result);
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, why)
        })?;
        let i = *at.entry(&row.key_id).or_insert_with(|| {
            keys.push(KeyCounts {
                key_id: &row.key_id,
                owner: row.owner.as_deref(),
                counts: [None; RESULTS.len()],
            });
            keys.len() - 1
        });
        let count = &mut keys[i].counts[column];
        *count = Some(count.unwrap_or(0) + row.count);
    }
    // In the primary key's order: two replicas upserting the same rows take their locks in
    // the same order, so neither waits on the other for a lock it holds.
    keys.sort_unstable_by_key(|k| k.key_id);
    Ok(keys)
}

/// `r = ...` that adds the inserted row's count of `r` to `table`'s, where either may be NULL.
fn add_to(table: &str, r: &str) -> String {
    format!("{r} = COALESCE({table}.{r} + excluded.{r}, {table}.{r}, excluded.{r})")
}

/// `CAST(SUM(r) AS BIGINT) AS r` for every result (PostgreSQL sums BIGINT into NUMERIC).
fn totals() -> String {
    let sums: Vec<String> =
        RESULTS.iter().map(|r| format!("CAST(SUM({r}) AS BIGINT) AS {r}")).collect();
    sums.join(", ")
}

/// Where usage is kept, each table with its time column: minutes not yet moved, minutes,
/// and hours rolled up from minutes. A reader sums across all three.
const TABLES: [(&str, &str); 3] =
    [("usage_recent", "minute"), ("usage_minutes", "minute"), ("usage_hours", "hour")];

/// The rows of every usage table that pass `filter` and lie in `[$1, $2)`, as one
/// `UNION ALL`; `select` makes the select list from the table's time column.
fn every_table(filter: &str, select: impl Fn(&str) -> String) -> String {
    let parts: Vec<String> = TABLES
        .iter()
        .map(|(table, time)| {
            format!(
                "SELECT {} FROM {table} WHERE {filter} AND {time} >= $1 AND {time} < $2",
                select(time)
            )
        })
        .collect();
    parts.join(" UNION ALL ")
}

/// The results a row of [`totals`] counts, in name order.
fn counted(row: &AnyRow) -> Result<Vec<(&'static str, i64)>, ApiError> {
    let mut out = Vec::new();
    for result in RESULTS {
        if let Some(n) = row.try_get::<Option<i64>, _>(result)? {
            out.push((result, n));
        }
    }
    Ok(out)
}

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
        let keys = by_key(rows)?;
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
        // Only the columns this batch counts: the statement stays short, and the few
        // combinations batches have are each prepared once.
        let counted: Vec<usize> =
            (0..RESULTS.len()).filter(|&c| keys.iter().any(|k| k.counts[c].is_some())).collect();
        let names: Vec<&str> = counted.iter().map(|&c| RESULTS[c]).collect();
        let added: Vec<String> = names.iter().map(|r| add_to("usage_recent", r)).collect();
        let width = 3 + counted.len();
        for chunk in keys.chunks(CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let marks: Vec<String> =
                        (1..=width).map(|j| self.param(i * width + j)).collect();
                    format!("({})", marks.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO usage_recent (key_id, minute, owner, {}) VALUES {} \
                 ON CONFLICT (minute, key_id) DO UPDATE SET {}",
                names.join(", "),
                values.join(", "),
                added.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for key in chunk {
                query = query.bind(key.key_id).bind(minute).bind(key.owner);
                for &c in &counted {
                    query = query.bind(key.counts[c]);
                }
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
        let before = self.recent_rows.fetch_add(keys.len(), Ordering::Relaxed);
        if before < MOVE_ROWS && before + keys.len() >= MOVE_ROWS {
            self.recent_due.notify_one();
        }
        Ok(true)
    }

    /// Moves every row of `usage_recent` into `usage_minutes`, in key order; the rows moved.
    pub async fn move_recent_usage(&self) -> Result<u64, ApiError> {
        self.recent_rows.store(0, Ordering::Relaxed);
        let mut tx = self.usage.as_ref().unwrap_or(&self.pool).begin().await?;
        if self.postgres {
            // Batches wait for the move (readers only for its last step): a row a batch added
            // after the copy would otherwise go with the truncate.
            sqlx::query("LOCK TABLE usage_recent IN EXCLUSIVE MODE").execute(&mut *tx).await?;
        }
        let columns = RESULTS.join(", ");
        let added: Vec<String> = RESULTS.iter().map(|r| add_to("usage_minutes", r)).collect();
        // `WHERE true`: SQLite reads `ON` after a bare `FROM t` as a join's.
        let sql = format!(
            "INSERT INTO usage_minutes (key_id, minute, owner, {columns}) \
             SELECT key_id, minute, owner, {columns} FROM usage_recent WHERE true \
             ORDER BY key_id, minute \
             ON CONFLICT (key_id, minute) DO UPDATE SET {}",
            added.join(", ")
        );
        let moved = sqlx::query(&sql).execute(&mut *tx).await?.rows_affected();
        // PostgreSQL's DELETE would leave every row dead until a vacuum; TRUNCATE frees the
        // table at once (under a lock that makes readers wait for the commit, briefly).
        let empty =
            if self.postgres { "TRUNCATE usage_recent" } else { "DELETE FROM usage_recent" };
        sqlx::query(empty).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(moved)
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
            // Another replica's move must not add minutes between the copy into hours and the
            // delete: each statement sees what committed before it, so the delete would take
            // a late minute (one before `minutes_before`) that the copy never summed. Moves
            // wait for the roll-up; readers do not.
            sqlx::query("LOCK TABLE usage_minutes IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        let sums: Vec<String> = RESULTS.iter().map(|r| format!("SUM({r})")).collect();
        let added: Vec<String> = RESULTS.iter().map(|r| add_to("usage_hours", r)).collect();
        let sql = format!(
            "INSERT INTO usage_hours (key_id, hour, owner, {}) \
             SELECT key_id, minute - (minute % 3600000), MAX(owner), {} \
             FROM usage_minutes WHERE minute < $1 GROUP BY key_id, minute - (minute % 3600000) \
             ON CONFLICT (key_id, hour) DO UPDATE SET {}",
            RESULTS.join(", "),
            sums.join(", "),
            added.join(", ")
        );
        sqlx::query(&sql).bind(minutes_before).execute(&mut *tx).await?;
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
    /// to `to_ms` (excluded), summed per bucket of `step_ms`, from recent minutes, minutes and
    /// hours; by bucket, then result.
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
        let columns = RESULTS.join(", ");
        let rows = every_table(filter, |time| format!("{time} - ({time} % $3) AS at, {columns}"));
        let sql = format!("SELECT at, {} FROM ({rows}) AS u GROUP BY at ORDER BY at", totals());
        let rows = sqlx::query(&sql)
            .bind(from_ms)
            .bind(to_ms)
            .bind(step_ms)
            .bind(who)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for r in &rows {
            let at_ms: i64 = r.try_get("at")?;
            for (result, count) in counted(r)? {
                out.push(UsagePoint { at_ms, result: result.to_string(), count });
            }
        }
        Ok(out)
    }

    /// Per key (with its owner) in the window: counts by result, for totals and top keys;
    /// by key, then result.
    pub async fn usage_by_key(
        &self,
        owner: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(String, Option<String>, String, i64)>, ApiError> {
        let filter = if owner.is_some() { "owner = $3" } else { "$3 = $3" };
        let columns = RESULTS.join(", ");
        let rows = every_table(filter, |_| format!("key_id, owner, {columns}"));
        let sql = format!(
            "SELECT key_id, MAX(owner) AS owner, {} FROM ({rows}) AS u \
             GROUP BY key_id ORDER BY key_id",
            totals()
        );
        let rows = sqlx::query(&sql)
            .bind(from_ms)
            .bind(to_ms)
            .bind(owner.unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for r in &rows {
            let (key_id, key_owner): (String, Option<String>) =
                (r.try_get("key_id")?, r.try_get("owner")?);
            for (result, count) in counted(r)? {
                out.push((key_id.clone(), key_owner.clone(), result.to_string(), count));
            }
        }
        Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::db::{Limits, SQLITE};
    use keygate::core::usage::{usage_name, CLASSES};
    use keygate::core::verdict::Outcome;
    use sqlx::migrate::Migrator;
    use sqlx::Connection;
    use std::borrow::Cow;
    use std::fmt::Debug;

    trait Must<T> {
        fn must(self) -> T;
    }

    impl<T, E: Debug> Must<T> for Result<T, E> {
        fn must(self) -> T {
            self.unwrap_or_else(|e| unreachable!("{e:?}"))
        }
    }

    #[test]
    fn every_result_a_batch_counts_has_its_column() {
        let mut names: Vec<String> =
            Outcome::ALL.iter().map(|o| usage_name(*o).to_string()).collect();
        names.extend(CLASSES.iter().map(|c| format!("upstream_{c}")));
        names.sort();
        assert_eq!(names, RESULTS);
    }

    fn row(key_id: &str, owner: Option<&str>, result: &'static str, count: i64) -> UsageRow {
        UsageRow { key_id: key_id.into(), owner: owner.map(Into::into), result, count }
    }

    async fn series(db: &Db, key: &str) -> Vec<(i64, String, i64)> {
        let points = db.usage_series(Some(key), None, 0, i64::MAX / 2, 60_000).await.must();
        points.into_iter().map(|p| (p.at_ms, p.result, p.count)).collect()
    }

    async fn totals(db: &Db) -> Vec<(String, Option<String>, String, i64)> {
        db.usage_by_key(None, 0, i64::MAX / 2).await.must()
    }

    #[tokio::test]
    async fn counts_from_before_0006_are_kept_and_batches_add_up_once_wherever_they_are() {
        const M: i64 = 1_800_000_000_000;
        const H: i64 = M - 7_200_000;
        let dir = std::env::temp_dir().join(format!("keygate-usage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).must();
        let url = format!("sqlite:{}", dir.join("usage.db").display());
        sqlx::any::install_default_drivers();
        // A database of 0005, one row per key, minute and result.
        let mut conn = sqlx::AnyConnection::connect(&format!("{url}?mode=rwc")).await.must();
        let before = SQLITE.iter().filter(|m| m.version <= 5).cloned().collect::<Vec<_>>();
        let up_to_5 = Migrator {
            migrations: Cow::Owned(before),
            ignore_missing: false,
            locking: true,
            no_tx: false,
        };
        up_to_5.run(&mut conn).await.must();
        for (table, at, key, result, owner, n) in [
            ("usage_minutes", M, "web", "allowed", Some("acme"), 3),
            ("usage_minutes", M, "web", "upstream_2xx", Some("acme"), 2),
            ("usage_minutes", M, "cli", "unavailable", None, 1),
            ("usage_hours", H, "web", "denied_expired", Some("acme"), 4),
        ] {
            let column = if table == "usage_hours" { "hour" } else { "minute" };
            let sql = format!(
                "INSERT INTO {table} (key_id, {column}, result, owner, count) VALUES ($1, $2, $3, $4, $5)"
            );
            let q = sqlx::query(&sql).bind(key).bind(at).bind(result).bind(owner).bind(n);
            q.execute(&mut conn).await.must();
        }
        conn.close().await.must();

        let db = Db::open(&url, Limits::default()).await.must();
        let web = |allowed: i64| {
            vec![
                (H, "denied_expired".to_string(), 4),
                (M, "allowed".to_string(), allowed),
                (M, "upstream_2xx".to_string(), 2),
            ]
        };
        assert_eq!(series(&db, "web").await, web(3));

        let rows = [row("web", Some("acme"), "allowed", 5), row("new", None, "public", 1)];
        assert!(db.add_usage("b1", M, &rows, &[], M).await.must());
        assert!(!db.add_usage("b1", M, &rows, &[], M).await.must());
        // Moved into the key-ordered table, the minute's counts add to what it holds there,
        // and a batch after the move adds to them across the two tables.
        assert_eq!(db.move_recent_usage().await.must(), 2);
        assert_eq!(db.move_recent_usage().await.must(), 0);
        assert_eq!(series(&db, "web").await, web(8));
        let rows = [row("web", Some("acme"), "allowed", 1)];
        assert!(db.add_usage("b2", M, &rows, &[], M).await.must());
        assert_eq!(series(&db, "web").await, web(9));

        let expected = vec![
            ("cli".to_string(), None, "unavailable".to_string(), 1),
            ("new".to_string(), None, "public".to_string(), 1),
            ("web".to_string(), Some("acme".to_string()), "allowed".to_string(), 9),
            ("web".to_string(), Some("acme".to_string()), "denied_expired".to_string(), 4),
            ("web".to_string(), Some("acme".to_string()), "upstream_2xx".to_string(), 2),
        ];
        assert_eq!(totals(&db).await, expected);

        // Rolled up into its hour, the minute's counts add to what the hour holds.
        assert_eq!(db.move_recent_usage().await.must(), 1);
        assert_eq!(db.roll_usage_up(M + 3_600_000, 0, 0).await.must(), 3);
        assert_eq!(totals(&db).await, expected);
        let hour = M - M % 3_600_000;
        let hourly: Vec<_> = (db.usage_series(Some("web"), None, 0, 2 * M, 3_600_000).await)
            .must()
            .into_iter()
            .map(|p| (p.at_ms, p.result, p.count))
            .collect();
        assert_eq!(
            hourly,
            [
                (H, "denied_expired".to_string(), 4),
                (hour, "allowed".to_string(), 9),
                (hour, "upstream_2xx".to_string(), 2),
            ]
        );
        drop(db);
        std::fs::remove_dir_all(&dir).must();
    }
}
