//! The key store, on SQLite or PostgreSQL through sqlx's `Any` driver: the same SQL for
//! both (numbered `$1` parameters work in each), with the schema in `tools/migrations/`.
//!
//! # Why the change feed is exact
//! Every write runs in one transaction opened by [`Db::begin_write`], which first takes a
//! write lock and then the next change number (`UPDATE feed SET last = last + 1`). Writers
//! are therefore serialized: in one process by a mutex, across replicas on one PostgreSQL
//! by `pg_advisory_xact_lock` (held until commit or rollback) and, on SQLite, by SQLite's
//! single writer. A writer takes its number only after the previous writer committed, so
//! numbers commit in increasing order with no gaps (a rolled-back writer also rolls back
//! its number). A sequence would not do: its values are handed out at once and can commit
//! in any order, so a reader could pass number 7 before number 6 became visible.
//!
//! A reader first reads `feed.last` (committed, so every change up to it is committed and
//! visible to the next statement) and then the change rows up to that number. Nothing can
//! later appear below a cursor the service has answered.
//!
//! Every change number also gets a mark (the `marks` table), which feed cursors carry: the
//! database's epoch when it was written (`meta.epoch`, 8 random hex characters). Every
//! service process draws a new epoch when it starts, and a writer draws one when it finds
//! the database behind a number this process saw committed (a restore under a running
//! service). So the same number written twice, in a database and in a restored copy of it,
//! has two different marks (unless by a 1 in 2^32 chance): see `feed.rs`.
//!
//! # PostgreSQL sessions
//! Every connection (the pool's and the lookups') pins `READ COMMITTED` and sets
//! `lock_timeout`, `statement_timeout` and `idle_in_transaction_session_timeout` ([`Limits`]).
//! `READ COMMITTED` because a write's first statement waits for the write lock: under
//! `REPEATABLE READ` (a database default an operator may have set) its snapshot would predate
//! the previous writer's commit, and `UPDATE feed` would fail to serialize. The timeouts
//! because one replica that freezes while holding the write lock (a stopped VM, a stalled
//! process) would otherwise stop every write on every replica: a waiting write now fails
//! after `lock_timeout` with a 503, and PostgreSQL ends the frozen session (and its lock)
//! after `idle_in_transaction_session_timeout`.

mod events;
mod leaks;
mod usage;

pub use events::Due;
pub use leaks::LeakRow;
pub use usage::UsageRow;

use crate::serve::error::{one_line, ApiError};
use crate::serve::postgres_reader::PostgresReader;
use crate::serve::sqlite_reader::SqliteReader;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Connection, Row, Transaction};
use std::sync::atomic::AtomicUsize;
use std::time::Duration;
use tokio::sync::{watch, Mutex, MutexGuard, Notify};

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// The advisory lock every write transaction holds on PostgreSQL ("keygate" in ASCII).
const WRITE_LOCK: i64 = 0x006b_6579_6761_7465;

/// Every SQLite connection's settings. WAL: readers never wait for the writer; busy_timeout:
/// a second process (or this one's usage connection) on the same file waits instead of failing.
const SQLITE_SESSION: [&str; 2] = ["PRAGMA journal_mode = WAL", "PRAGMA busy_timeout = 10000"];

pub struct Db {
    pool: AnyPool,
    postgres: bool,
    /// Made by the first migration; every feed cursor carries it.
    pub database_id: String,
    /// Serializes this process's writers (the database serializes them across processes).
    writer: Mutex<()>,
    /// SQLite: the one connection usage is written on (`db::usage`); PostgreSQL: none.
    usage: Option<AnyPool>,
    /// Rows added to `usage_recent` since this process last moved them (`db::usage`), and
    /// the signal that there are enough to move.
    recent_rows: AtomicUsize,
    pub recent_due: Notify,
    /// The filter's key lookups, off the pool (see the two modules for why).
    reader: Reader,
    /// The newest change number this process knows committed: its own writes publish it at
    /// commit, every feed answer what it read, and `feed::watch` what it reads while polls
    /// are held. Goes down only when a write finds the database behind it (restored from a
    /// backup).
    committed: watch::Sender<i64>,
    /// Where each event is sent (`--webhook`): every change that makes one writes a row per
    /// URL into the outbox, in its own transaction (`events`).
    pub webhooks: Vec<String>,
}

/// PostgreSQL session settings, in milliseconds (0: none). See the module's documentation.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub lock_timeout_ms: u32,
    pub statement_timeout_ms: u32,
    pub idle_in_transaction_timeout_ms: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            lock_timeout_ms: 5_000,
            statement_timeout_ms: 15_000,
            idle_in_transaction_timeout_ms: 10_000,
        }
    }
}

impl Limits {
    /// The statements that set up a PostgreSQL session.
    pub fn session(&self) -> Vec<String> {
        vec![
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED".into(),
            format!("SET lock_timeout = {}", self.lock_timeout_ms),
            format!("SET statement_timeout = {}", self.statement_timeout_ms),
            format!(
                "SET idle_in_transaction_session_timeout = {}",
                self.idle_in_transaction_timeout_ms
            ),
        ]
    }
}

enum Reader {
    Sqlite(SqliteReader),
    Postgres(PostgresReader),
}

/// A key as the filter's lookups read it: its entry JSON, and its owner when that owner has
/// limits. Both come from one read, so an answer is never older than the change the feed
/// announced before it (owners' limits kept in memory may be, for up to a recheck).
pub struct Found {
    pub entry: String,
    pub limited_owner: Option<String>,
}

/// The lookup by digest, on either database (SQLite reads `$1` as the first parameter).
pub const BY_DIGEST: &str = "SELECT k.entry, l.owner FROM keys k \
     LEFT JOIN owners l ON l.owner = k.owner WHERE k.sha256 = $1";

/// A key as stored: the entry JSON exactly as the filter receives it (no name, no digest).
pub struct StoredKey {
    pub id: String,
    pub sha256: String,
    pub name: Option<String>,
    pub entry: String,
    /// The minute the key was last presented to a filter counting usage (Unix ms).
    pub last_used_ms: Option<i64>,
}

/// What one key contributes to a change: its digest and every origin it listed before or
/// after (normalised, or `*`), so the filter drops all of them from its cache.
pub struct Touched {
    pub sha256: String,
    pub origins: Vec<String>,
}

pub struct ChangeRow {
    pub seq: i64,
    pub sha256: String,
    pub origins: Vec<String>,
}

pub struct AuditRow {
    pub seq: i64,
    pub at: String,
    pub admin: String,
    pub action: String,
    pub key_id: String,
    pub successor: Option<String>,
    pub owner: Option<String>,
    /// Where a reported leak was seen (`leak` records).
    pub source: Option<String>,
}

/// An owner's limits as stored: the JSON list the admin API took.
pub struct OwnerRow {
    pub owner: String,
    pub limits: String,
    pub created_at: String,
    pub updated_at: String,
}

/// A key to insert or the new state of one: what `keys` and `key_origins` hold.
pub struct KeyRow<'a> {
    pub id: &'a str,
    pub sha256: &'a str,
    pub name: Option<&'a str>,
    pub owner: Option<&'a str>,
    pub entry: &'a str,
    pub origins: &'a [String],
    /// The entry's `expires_at` in Unix milliseconds (for the `key.expiring` notices).
    pub expires_ms: Option<i64>,
}

impl Db {
    /// Opens (creating a SQLite file if missing) and migrates; the error is one line.
    pub async fn open(url: &str, limits: Limits) -> Result<Db, String> {
        sqlx::any::install_default_drivers();
        let (connect, postgres) = if let Some(path) = url.strip_prefix("sqlite:") {
            if path.is_empty() || path.contains('?') {
                return Err(format!("--db {url}: expected sqlite:PATH"));
            }
            (format!("sqlite:{path}?mode=rwc"), false)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (url.to_string(), true)
        } else {
            return Err(format!(
                "--db {}: expected sqlite:PATH or postgres://USER@HOST:PORT/DB",
                redact(url)
            ));
        };
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            format!("{what} {}: {}", redact(url), one_line(&e.to_string()))
        };
        // One connection first: the pool would retry until its timeout and then report only
        // that it timed out, where this says why (refused, no such database, no such file).
        let mut probe = sqlx::AnyConnection::connect(&connect)
            .await
            .map_err(|e| fail("cannot open database", &e))?;
        // Migrations run on this connection, without the session limits below: a replica
        // waiting for another's migration, or a migration moving many rows, may take longer.
        let migrator = if postgres { &POSTGRES } else { &SQLITE };
        migrator.run(&mut probe).await.map_err(|e| fail("cannot migrate database", &e))?;
        let _ = probe.close().await;
        let session = limits.session();
        let pool = AnyPoolOptions::new()
            .max_connections(if postgres { 16 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                let session = session.clone();
                Box::pin(async move {
                    if postgres {
                        for statement in &session {
                            sqlx::query(statement).execute(&mut *conn).await?;
                        }
                    } else {
                        for pragma in SQLITE_SESSION {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&connect)
            .await
            .map_err(|e| fail("cannot open database", &e))?;
        // Usage batches come many a second and each touches a page per key: on a connection
        // of their own, one at a time, that connection's page cache stays valid from one
        // batch to the next (SQLite empties it whenever another connection wrote) and holds
        // 64 MiB. Its statement journals (a multi-row upsert keeps one) stay in memory. Its
        // commits copy the log back into the database once it holds 20,000 pages (80 MiB,
        // not SQLite's 1,000): a page written by several batches is copied once, and the
        // copy's fsync is paid less often.
        let usage = if postgres {
            None
        } else {
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        let usage = [
                            "PRAGMA cache_size = -65536",
                            "PRAGMA temp_store = MEMORY",
                            "PRAGMA wal_autocheckpoint = 20000",
                        ];
                        for pragma in SQLITE_SESSION.into_iter().chain(usage) {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                        Ok(())
                    })
                })
                .connect(&connect)
                .await
                .map_err(|e| fail("cannot open database", &e))?;
            Some(pool)
        };
        let database_id: String =
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'database_id'")
                .fetch_one(&pool)
                .await
                .map_err(|e| fail("cannot read database", &e))?;
        let reader = if postgres {
            Reader::Postgres(PostgresReader::new(&connect, limits.session()))
        } else {
            // The file SQLite itself opened, however the URL spelled it.
            let file: String =
                sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                    .fetch_one(&pool)
                    .await
                    .map_err(|e| fail("cannot read database", &e))?;
            Reader::Sqlite(SqliteReader::open(&file).map_err(|e| fail("cannot open database", &e))?)
        };
        let (last, _) = feed_state(&pool).await.map_err(|e| fail("cannot read database", &e))?;
        let (committed, _) = watch::channel(last);
        // A new epoch: a copy of this database restored from a backup is written from here on
        // with marks its old cursors cannot carry. A single statement, not under the write
        // lock: a write that read the previous epoch just before is as good.
        sqlx::query("UPDATE meta SET value = $1 WHERE name = 'epoch'")
            .bind(new_mark()?)
            .execute(&pool)
            .await
            .map_err(|e| fail("cannot write database", &e))?;
        Ok(Db {
            pool,
            postgres,
            database_id,
            writer: Mutex::new(()),
            usage,
            recent_rows: AtomicUsize::new(0),
            recent_due: Notify::new(),
            reader,
            committed,
            webhooks: Vec::new(),
        })
    }

    /// Starts a write: serialized against every other writer, holding the next change number.
    pub async fn begin_write(&self, now: String) -> Result<Write<'_>, ApiError> {
        let serial = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        if self.postgres {
            // Wrapped in a SELECT of an integer: the Any driver cannot read `void`.
            sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS locked")
                .bind(WRITE_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        let mut write = Write { tx, _serial: serial, seq: 0, now, db: self, epoch: None };
        write.next_change().await?;
        Ok(write)
    }

    pub async fn get(&self, id: &str) -> Result<Option<StoredKey>, ApiError> {
        let row =
            sqlx::query("SELECT id, sha256, name, entry, last_used_ms FROM keys WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| stored(&r)).transpose()
    }

    /// Up to `limit` keys with ids after `after`, in id order.
    /// With `unused_since` (Unix ms), only keys not presented since then (never-used ones
    /// included).
    pub async fn list(
        &self,
        owner: Option<&str>,
        unused_since: Option<i64>,
        after: &str,
        limit: i64,
    ) -> Result<Vec<StoredKey>, ApiError> {
        let mut sql =
            String::from("SELECT id, sha256, name, entry, last_used_ms FROM keys WHERE id > $1");
        if owner.is_some() {
            sql.push_str(" AND owner = $3");
        }
        if unused_since.is_some() {
            let n = if owner.is_some() { 4 } else { 3 };
            sql.push_str(&format!(" AND (last_used_ms IS NULL OR last_used_ms < ${n})"));
        }
        sql.push_str(" ORDER BY id LIMIT $2");
        let mut query = sqlx::query(&sql).bind(after).bind(limit);
        if let Some(owner) = owner {
            query = query.bind(owner);
        }
        if let Some(since) = unused_since {
            query = query.bind(since);
        }
        query.fetch_all(&self.pool).await?.iter().map(stored).collect()
    }

    /// Every key, in id order (the export and the ECDS file).
    pub async fn all(&self) -> Result<Vec<StoredKey>, ApiError> {
        let rows =
            sqlx::query("SELECT id, sha256, name, entry, last_used_ms FROM keys ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(stored).collect()
    }

    /// The key with this digest.
    pub async fn by_digest(&self, sha256: &str) -> Result<Option<Found>, ApiError> {
        Ok(match &self.reader {
            Reader::Sqlite(reader) => reader.by_digest(sha256)?,
            Reader::Postgres(reader) => reader.by_digest(sha256).await?,
        })
    }

    /// Every key listing this (normalised) origin or `*`, in id order.
    pub async fn by_origin(&self, origin: &str) -> Result<Vec<Found>, ApiError> {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT k.entry, l.owner FROM key_origins o JOIN keys k ON k.id = o.key_id \
             LEFT JOIN owners l ON l.owner = k.owner \
             WHERE o.origin = $1 OR o.origin = '*' ORDER BY k.id",
        )
        .bind(origin)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(entry, limited_owner)| Found { entry, limited_owner }).collect())
    }

    /// The newest committed change number and the oldest one a cursor may still name.
    pub async fn feed_state(&self) -> Result<(i64, i64), ApiError> {
        Ok(feed_state(&self.pool).await?)
    }

    /// Notes that change `seq` committed (read by `feed::watch`); wakes held polls.
    pub fn published(&self, seq: i64) {
        publish(&self.committed, seq);
    }

    /// Follows the newest committed change number this process knows of.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.committed.subscribe()
    }

    /// The mark of change `seq` (which must be committed: at most `feed.last`); for 0 (no
    /// change yet), the current epoch. A change written by a service from before marks
    /// existed (a replica not yet upgraded) has none: it gets one here, once (the first
    /// writer wins, everyone reads that one).
    pub async fn mark(&self, seq: i64) -> Result<String, ApiError> {
        if seq == 0 {
            return Ok(sqlx::query_scalar("SELECT value FROM meta WHERE name = 'epoch'")
                .fetch_one(&self.pool)
                .await?);
        }
        let read = || {
            sqlx::query_scalar::<_, String>("SELECT mark FROM marks WHERE seq = $1")
                .bind(seq)
                .fetch_optional(&self.pool)
        };
        if let Some(mark) = read().await? {
            return Ok(mark);
        }
        sqlx::query("INSERT INTO marks (seq, mark) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(seq)
            .bind(new_mark().map_err(|_| ApiError::internal())?)
            .execute(&self.pool)
            .await?;
        read().await?.ok_or_else(ApiError::internal)
    }

    /// The rows of changes `after+1 ..= upto`, in order. Call with `upto` at most the
    /// `last` that [`Db::feed_state`] returned, so that every one of them is committed.
    pub async fn changes(&self, after: i64, upto: i64) -> Result<Vec<ChangeRow>, ApiError> {
        let rows = sqlx::query(
            "SELECT seq, sha256, origins FROM changes WHERE seq > $1 AND seq <= $2 ORDER BY seq",
        )
        .bind(after)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let origins: String = r.try_get("origins")?;
                Ok(ChangeRow {
                    seq: r.try_get("seq")?,
                    sha256: r.try_get("sha256")?,
                    origins: serde_json::from_str(&origins).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Audit records numbered below `before`, newest first.
    pub async fn audit(&self, before: i64, limit: i64) -> Result<Vec<AuditRow>, ApiError> {
        let rows = sqlx::query(
            "SELECT seq, at, admin, action, key_id, successor, owner, source FROM audit \
             WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    admin: r.try_get("admin")?,
                    action: r.try_get("action")?,
                    key_id: r.try_get("key_id")?,
                    successor: r.try_get("successor")?,
                    owner: r.try_get("owner")?,
                    source: r.try_get("source")?,
                })
            })
            .collect()
    }
}

impl Db {
    pub async fn owner(&self, owner: &str) -> Result<Option<OwnerRow>, ApiError> {
        let row = sqlx::query(
            "SELECT owner, limits, created_at, updated_at FROM owners WHERE owner = $1",
        )
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| owner_row(&r)).transpose()
    }

    /// Every owner with limits, in name order (a few thousand at most: they are customers).
    pub async fn owners(&self) -> Result<Vec<OwnerRow>, ApiError> {
        let rows =
            sqlx::query("SELECT owner, limits, created_at, updated_at FROM owners ORDER BY owner")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(owner_row).collect()
    }

    /// The newest committed change number, as the database has it (other replicas' too).
    pub async fn last_change(&self) -> Result<i64, ApiError> {
        Ok(feed_state(&self.pool).await?.0)
    }
}

fn owner_row(r: &sqlx::any::AnyRow) -> Result<OwnerRow, ApiError> {
    Ok(OwnerRow {
        owner: r.try_get("owner")?,
        limits: r.try_get("limits")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

async fn feed_state(pool: &AnyPool) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query("SELECT last, floor FROM feed WHERE id = 1").fetch_one(pool).await?;
    Ok((row.try_get("last")?, row.try_get("floor")?))
}

fn publish(committed: &watch::Sender<i64>, seq: i64) {
    committed.send_if_modified(|known| {
        let newer = seq > *known;
        if newer {
            *known = seq;
        }
        newer
    });
}

/// 32 random bits as 8 hex characters: an epoch.
fn new_mark() -> Result<String, String> {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).map_err(|e| format!("OS random source: {e}"))?;
    Ok(keygate::core::hex::encode(&bytes))
}

fn stored(r: &sqlx::any::AnyRow) -> Result<StoredKey, ApiError> {
    Ok(StoredKey {
        id: r.try_get("id")?,
        sha256: r.try_get("sha256")?,
        name: r.try_get("name")?,
        entry: r.try_get("entry")?,
        last_used_ms: r.try_get("last_used_ms")?,
    })
}

/// The database URL without a password, for messages: the one in the user information
/// (`postgres://u:***@h/db`) and any query parameter naming one (`?password=***`,
/// `sslpassword`).
pub fn redact(url: &str) -> String {
    let Some(scheme) = url.find("://").map(|i| i + 3) else { return url.to_string() };
    let (mut out, rest) = match url[scheme..].rfind('@').map(|i| scheme + i) {
        Some(at) => match url[scheme..at].split_once(':') {
            Some((user, _)) => (format!("{}{user}:***", &url[..scheme]), &url[at..]),
            None => (url[..at].to_string(), &url[at..]),
        },
        None => (url[..scheme].to_string(), &url[scheme..]),
    };
    let (before, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    out.push_str(before);
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((name, _)) if name.to_ascii_lowercase().contains("password") => {
                    format!("{name}=***")
                }
                _ => param.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// One write transaction, holding change number `seq`. Dropped without [`Write::commit`],
/// it rolls back, number included.
pub struct Write<'a> {
    tx: Transaction<'static, Any>,
    _serial: MutexGuard<'a, ()>,
    pub seq: i64,
    /// RFC 3339 UTC, for `created_at`, `updated_at` and the audit record.
    pub now: String,
    db: &'a Db,
    /// The epoch this transaction's changes are marked with, read at its first change.
    epoch: Option<String>,
}

impl Write<'_> {
    /// Takes the next change number for the following change in this transaction: an
    /// import records one change (and one audit record) per key but commits thousands in
    /// one transaction, as the numbers stay gapless and in commit order all the same.
    pub async fn next_change(&mut self) -> Result<(), ApiError> {
        self.seq =
            sqlx::query_scalar("UPDATE feed SET last = last + 1 WHERE id = 1 RETURNING last")
                .fetch_one(&mut *self.tx)
                .await?;
        // A number at or below one this process saw committed: the database was restored
        // from a backup under the running service. A new epoch, so that cursors of the lost
        // history answer `reset`.
        if self.seq <= *self.db.committed.borrow() {
            let epoch = new_mark().map_err(|e| {
                eprintln!("keygate serve: {e}");
                ApiError::internal()
            })?;
            sqlx::query("UPDATE meta SET value = $1 WHERE name = 'epoch'")
                .bind(&epoch)
                .execute(&mut *self.tx)
                .await?;
            self.db.committed.send_replace(self.seq - 1);
            self.epoch = Some(epoch);
            eprintln!(
                "keygate serve: the database is behind changes this service saw committed \
                 (restored from a backup?): a new epoch from change {} on",
                self.seq
            );
        }
        if self.epoch.is_none() {
            self.epoch = Some(
                sqlx::query_scalar("SELECT value FROM meta WHERE name = 'epoch'")
                    .fetch_one(&mut *self.tx)
                    .await?,
            );
        }
        sqlx::query("INSERT INTO marks (seq, mark) VALUES ($1, $2)")
            .bind(self.seq)
            .bind(self.epoch.as_deref())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    pub async fn get(&mut self, id: &str) -> Result<Option<StoredKey>, ApiError> {
        let row =
            sqlx::query("SELECT id, sha256, name, entry, last_used_ms FROM keys WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *self.tx)
                .await?;
        row.map(|r| stored(&r)).transpose()
    }

    pub async fn insert(&mut self, key: &KeyRow<'_>) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO keys (id, sha256, name, owner, entry, created_at, updated_at, expires_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7)",
        )
        .bind(key.id)
        .bind(key.sha256)
        .bind(key.name)
        .bind(key.owner)
        .bind(key.entry)
        .bind(&self.now)
        .bind(key.expires_ms)
        .execute(&mut *self.tx)
        .await?;
        self.set_origins(key.id, key.origins).await
    }

    /// The new state of an existing key (its digest never changes).
    pub async fn update(&mut self, key: &KeyRow<'_>) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE keys SET name = $2, owner = $3, entry = $4, updated_at = $5, expires_ms = $6 \
             WHERE id = $1",
        )
        .bind(key.id)
        .bind(key.name)
        .bind(key.owner)
        .bind(key.entry)
        .bind(&self.now)
        .bind(key.expires_ms)
        .execute(&mut *self.tx)
        .await?;
        self.set_origins(key.id, key.origins).await
    }

    pub async fn delete(&mut self, id: &str) -> Result<(), ApiError> {
        self.set_origins(id, &[]).await?;
        sqlx::query("DELETE FROM keys WHERE id = $1").bind(id).execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn set_origins(&mut self, id: &str, origins: &[String]) -> Result<(), ApiError> {
        sqlx::query("DELETE FROM key_origins WHERE key_id = $1")
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        for origin in origins {
            sqlx::query("INSERT INTO key_origins (origin, key_id) VALUES ($1, $2)")
                .bind(origin)
                .bind(id)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// Records what this change touched, for the feed.
    pub async fn touched(&mut self, t: &Touched) -> Result<(), ApiError> {
        let origins = serde_json::Value::from(t.origins.clone()).to_string();
        sqlx::query("INSERT INTO changes (seq, sha256, origins) VALUES ($1, $2, $3)")
            .bind(self.seq)
            .bind(&t.sha256)
            .bind(origins)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    pub async fn audit(
        &mut self,
        admin: &str,
        action: &str,
        key_id: &str,
        successor: Option<&str>,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO audit (seq, at, admin, action, key_id, successor) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(self.seq)
        .bind(&self.now)
        .bind(admin)
        .bind(action)
        .bind(key_id)
        .bind(successor)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Sets an owner's limits; `true` when the owner is new.
    pub async fn put_owner(&mut self, owner: &str, limits: &str) -> Result<bool, ApiError> {
        let updated =
            sqlx::query("UPDATE owners SET limits = $2, updated_at = $3 WHERE owner = $1")
                .bind(owner)
                .bind(limits)
                .bind(&self.now)
                .execute(&mut *self.tx)
                .await?
                .rows_affected();
        if updated > 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO owners (owner, limits, created_at, updated_at) VALUES ($1, $2, $3, $3)",
        )
        .bind(owner)
        .bind(limits)
        .bind(&self.now)
        .execute(&mut *self.tx)
        .await?;
        Ok(true)
    }

    /// `false` when the owner had no limits.
    pub async fn delete_owner(&mut self, owner: &str) -> Result<bool, ApiError> {
        let deleted = sqlx::query("DELETE FROM owners WHERE owner = $1")
            .bind(owner)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }

    /// Every key of `owner`: what an owner's change touches for the feed.
    pub async fn keys_of(&mut self, owner: &str) -> Result<Vec<StoredKey>, ApiError> {
        let rows =
            sqlx::query("SELECT id, sha256, name, entry, last_used_ms FROM keys WHERE owner = $1")
                .bind(owner)
                .fetch_all(&mut *self.tx)
                .await?;
        rows.iter().map(stored).collect()
    }

    pub async fn audit_owner(
        &mut self,
        admin: &str,
        action: &str,
        owner: &str,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO audit (seq, at, admin, action, key_id, owner) VALUES ($1, $2, $3, $4, '', $5)",
        )
        .bind(self.seq)
        .bind(&self.now)
        .bind(admin)
        .bind(action)
        .bind(owner)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    pub async fn commit(self) -> Result<(), ApiError> {
        self.tx.commit().await?;
        publish(&self.db.committed, self.seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgres://kg:s3cret@127.0.0.1:5432/kg"),
            "postgres://kg:***@127.0.0.1:5432/kg"
        );
        assert_eq!(redact("postgres://kg@127.0.0.1:5432/kg"), "postgres://kg@127.0.0.1:5432/kg");
        assert_eq!(redact("sqlite:keygate.db"), "sqlite:keygate.db");
        assert_eq!(
            redact("postgres://kg@h/kg?sslmode=disable&password=s3cret&PassWord=x"),
            "postgres://kg@h/kg?sslmode=disable&password=***&PassWord=***"
        );
        assert_eq!(
            redact("postgresql://kg:p@ss:w0rd@h:5432/kg?sslpassword=s3cret"),
            "postgresql://kg:***@h:5432/kg?sslpassword=***"
        );
        assert_eq!(redact("postgres://h/kg?password=s3cret"), "postgres://h/kg?password=***");
    }
}
