//! The filter's key lookups on SQLite, read without sqlx's connection threads.
//!
//! sqlx runs every SQLite connection on a thread of its own and its pool pings a
//! connection when it hands it out and again when it takes it back, so one lookup crossed
//! threads six times. On one core those switches, not SQLite, set the lookup rate: 15,500/s
//! at 1,000,000 keys. The hot read (`/v1/filter/keys/{sha256}`) runs instead on tokio's
//! blocking threads, on read-only connections of its own: two switches, no pings. Not on
//! the async worker itself: that was faster while the file sat in the page cache, but a
//! read that went to disk then stalled every request behind it. In WAL mode the writer
//! never blocks these readers. Everything else (writes, lists, the feed) stays on sqlx.

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Lookups reading at once (each on a blocking thread and a connection of its own): enough
/// to keep a disk busy when reads miss the page cache, few enough to bound threads and files.
const MAX: usize = 16;

#[derive(Clone)]
pub struct SqliteReader(Arc<Readers>);

struct Readers {
    path: String,
    idle: Mutex<Vec<Connection>>,
    slots: Semaphore,
}

impl SqliteReader {
    /// `path` is the file SQLite itself reports for the database sqlx opened, so both read
    /// the same file however the URL spelled it. One connection opens at once, so that a
    /// file this cannot read fails at start rather than on the first lookup.
    pub fn open(path: &str) -> Result<SqliteReader, rusqlite::Error> {
        let readers = Readers {
            path: path.to_string(),
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(MAX),
        };
        let first = readers.connect()?;
        readers.put_back(first);
        Ok(SqliteReader(Arc::new(readers)))
    }

    /// The entry JSON of the key with this (lower-case hex) digest.
    pub async fn by_digest(&self, sha256: &str) -> Result<Option<String>, rusqlite::Error> {
        let _slot = self.0.slots.acquire().await.map_err(|_| closed())?;
        let (readers, sha256) = (self.0.clone(), sha256.to_string());
        tokio::task::spawn_blocking(move || readers.by_digest(&sha256))
            .await
            .map_err(|_| closed())?
    }
}

/// What a lookup whose thread could not run reports (the runtime is shutting down).
fn closed() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT), None)
}

impl Readers {
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
            idle.push(conn);
        }
    }

    fn by_digest(&self, sha256: &str) -> Result<Option<String>, rusqlite::Error> {
        let conn = self.take()?;
        let entry = conn
            .prepare_cached("SELECT entry FROM keys WHERE sha256 = ?1")?
            .query_row([sha256], |row| row.get(0))
            .optional();
        // A connection that failed is dropped, not reused.
        if entry.is_ok() {
            self.put_back(conn);
        }
        entry
    }
}
