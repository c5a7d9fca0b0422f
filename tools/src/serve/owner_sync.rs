//! Keeps the owners' limits in memory for the rate-limit service: read whole after any
//! change, this replica's at once and other replicas' within [`RECHECK`], well inside the
//! 2 s in which a change must be in force everywhere. (The filter protocol's lookups read
//! whether an owner has limits from the database with the key instead: a lookup the feed
//! set off must not find this copy a recheck behind and be cached that way.)

use crate::ratelimit::owners::OwnerLimits;
use crate::serve::db::Db;
use crate::serve::error::ApiError;
use crate::serve::listen::Every;
use keygate::core::limits::Limit;
use keygate::core::parse;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often the database's newest change number is read for other replicas' changes.
pub const RECHECK: Duration = Duration::from_millis(250);

/// Reads every owner's limits into `owners`. A stored list the compiler now refuses (it was
/// checked when written) is left out and said, never half-read.
pub async fn load(db: &Db, owners: &OwnerLimits) -> Result<(), ApiError> {
    let rows = db.owners().await?;
    let mut map: HashMap<String, Arc<[Limit]>> = HashMap::with_capacity(rows.len());
    for row in rows {
        let body = format!("{{\"limits\": {}}}", row.limits);
        match parse::owner_limits(body.as_bytes()) {
            Ok(limits) => {
                map.insert(row.owner, limits.into());
            }
            Err(e) => eprintln!("keygate serve: owner {:?}: stored limits refused: {e}", row.owner),
        }
    }
    owners.replace(map);
    Ok(())
}

pub async fn run(db: Arc<Db>, owners: Arc<OwnerLimits>) {
    let mut committed = db.subscribe();
    let mut seen = *committed.borrow();
    let log = Every::new(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = committed.changed() => {}
            () = tokio::time::sleep(RECHECK) => {}
        }
        let last = match db.last_change().await {
            Ok(last) => last,
            Err(_) => {
                if log.now() {
                    eprintln!("keygate serve: cannot read the newest change for owners' limits");
                }
                continue;
            }
        };
        if last == seen {
            continue;
        }
        match load(&db, &owners).await {
            Ok(()) => seen = last,
            Err(_) => {
                if log.now() {
                    eprintln!("keygate serve: cannot read owners' limits; keeping the last ones");
                }
            }
        }
    }
}
