//! The filter's key lookups on PostgreSQL, on connections of their own.
//!
//! sqlx's pool pings a connection when it hands it out and again when it takes it back
//! (sqlx 0.8), so a lookup through the pool costs three round trips where one will do. The
//! hot read (`/v1/filter/keys/{sha256}`) takes a connection from this small set instead and
//! sends just its query; a connection that fails is dropped, and a lookup whose idle
//! connection died (a PostgreSQL restart) is retried once on a new one. Everything
//! else (writes, lists, the feed) stays on the pool. Each connection gets the same session
//! settings as the pool's (`db::Limits`), so a lookup never waits without a bound.

use crate::serve::db::{Found, BY_DIGEST};
use sqlx::{Connection, PgConnection};
use std::sync::Mutex;
use tokio::sync::Semaphore;

/// Connections at most, busy or idle: lookups beyond this wait for one, so that a flood of
/// misses cannot open more connections than PostgreSQL's `max_connections` allows.
const MAX: usize = 16;

pub struct PostgresReader {
    url: String,
    /// Statements run on each new connection.
    session: Vec<String>,
    idle: Mutex<Vec<PgConnection>>,
    slots: Semaphore,
}

impl PostgresReader {
    pub fn new(url: &str, session: Vec<String>) -> PostgresReader {
        PostgresReader {
            url: url.to_string(),
            session,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(MAX),
        }
    }

    /// The key with this (lower-case hex) digest.
    pub async fn by_digest(&self, sha256: &str) -> Result<Option<Found>, sqlx::Error> {
        let _slot = self.slots.acquire().await.map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        if let Some(conn) = idle {
            // An idle connection may have died with the server (a restart, a failover):
            // then the read is retried once on a new connection, so the lookup still works.
            if let Ok(entry) = self.lookup(conn, sha256).await {
                return Ok(entry);
            }
        }
        self.lookup(self.connect().await?, sha256).await
    }

    async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        let mut conn = PgConnection::connect(&self.url).await?;
        for statement in &self.session {
            sqlx::query(statement).execute(&mut conn).await?;
        }
        Ok(conn)
    }

    async fn lookup(
        &self,
        mut conn: PgConnection,
        sha256: &str,
    ) -> Result<Option<Found>, sqlx::Error> {
        let entry = sqlx::query_as(BY_DIGEST)
            .bind(sha256)
            .fetch_optional(&mut conn)
            .await
            .map(|row| row.map(|(entry, limited_owner)| Found { entry, limited_owner }));
        // A connection that failed is dropped, not reused (and one whose lookup was
        // cancelled never gets here: it is dropped with the future).
        if entry.is_ok() {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(conn);
            }
        }
        entry
    }
}
