//! The filter's key lookups on SQLite, read without sqlx's connection threads.
//!
//! sqlx runs every SQLite connection on a thread of its own and its pool pings a
//! connection when it hands it out and again when it takes it back, so one lookup crossed
//! threads six times; on one core those switches, not SQLite, set the lookup rate (15,500/s
//! at 1,000,000 keys). A point lookup through the digest index takes a few microseconds
//! inside SQLite, so the hot read (`/v1/filter/keys/{sha256}`) runs right on the task's
//! thread, on read-only connections of its own: 36,000-48,000/s on one core.
//!
//! The price: a read that misses the page cache holds its worker thread (one per core)
//! for the disk's latency. Tokio's blocking threads avoid that but cost two thread
//! switches per lookup, and measured 12,000-17,500/s side by side with this. A serving
//! host keeps a key database in its page cache; see the README's figures for a VM that
//! does not. In WAL mode the writer never blocks these readers. Everything else (writes,
//! lists, the feed) stays on sqlx.

use crate::serve::db::{Found, BY_DIGEST};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::sync::Mutex;
use std::time::Duration;

/// Idle connections kept; more are opened under a burst and closed after it.
const KEEP: usize = 8;

pub struct SqliteReader {
    path: String,
    idle: Mutex<Vec<Connection>>,
}

impl SqliteReader {
    /// `path` is the file SQLite itself reports for the database sqlx opened, so both read
    /// the same file however the URL spelled it. One connection opens at once, so that a
    /// file this cannot read fails at start rather than on the first lookup.
    pub fn open(path: &str) -> Result<SqliteReader, rusqlite::Error> {
        let reader = SqliteReader { path: path.to_string(), idle: Mutex::new(Vec::new()) };
        let first = reader.connect()?;
        reader.put_back(first);
        Ok(reader)
    }

    fn connect(&self) -> Result<Connection, rusqlite::Error> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        // WAL readers wait only while another process recovers the WAL index; short.
        conn.busy_timeout(Duration::from_millis(250))?;
        Ok(conn)
    }

    fn take(&self) -> Result<Connection, rusqlite::Error> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match idle {
            Some(conn) => Ok(conn),
            None => self.connect(),
        }
    }

    fn put_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < KEEP {
                idle.push(conn);
            }
        }
    }

    /// The key with this (lower-case hex) digest.
    pub fn by_digest(&self, sha256: &str) -> Result<Option<Found>, rusqlite::Error> {
        let conn = self.take()?;
        let entry = conn
            .prepare_cached(BY_DIGEST)?
            .query_row([sha256], |row| Ok(Found { entry: row.get(0)?, limited_owner: row.get(1)? }))
            .optional();
        // A connection that failed is dropped, not reused.
        if entry.is_ok() {
            self.put_back(conn);
        }
        entry
    }
}
