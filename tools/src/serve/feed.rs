//! The change feed: `GET /v1/filter/changes?after=CURSOR`.
//!
//! A cursor is `<database id>.<change number>`. The database id is random, made by the
//! first migration, so a cursor from another database (or a restored copy of another one)
//! never names a change here: it answers `reset`, as does a number the service no longer
//! keeps (below `feed.floor`) or one it has not reached (a database restored from an older
//! backup). Numbers commit in order (see `db.rs`), so "every change after N" is exact.

use crate::serve::db::{ChangeRow, Db};
use crate::serve::error::ApiError;
use serde_json::json;
use std::collections::HashSet;

/// Change numbers one answer covers at most; the filter asks again on its next poll.
const MAX_CHANGES: i64 = 256;
/// Bytes of digests and origins in one answer at most: the filter refuses bodies over
/// 64 KiB. A single change over the budget answers `reset` (which drops everything, so the
/// change is still seen).
const BUDGET: usize = 48 * 1024;

pub fn encode(database_id: &str, seq: i64) -> String {
    format!("{database_id}.{seq}")
}

/// The change number a cursor names, if it is one of this database's.
pub fn decode(cursor: &str, database_id: &str) -> Option<i64> {
    let (id, number) = cursor.rsplit_once('.')?;
    if id != database_id || number.is_empty() || !number.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    number.parse().ok()
}

/// The answer to `changes?after=` (`None`: the current cursor, nothing listed).
pub async fn changes(db: &Db, after: Option<&str>) -> Result<String, ApiError> {
    let (last, floor) = db.feed_state().await?;
    let Some(after) = after else {
        return Ok(listing(&db.database_id, last, &[], &[]));
    };
    let after = match decode(after, &db.database_id) {
        Some(n) if (floor..=last).contains(&n) => n,
        _ => return Ok(reset(&db.database_id, last)),
    };
    let upto = last.min(after.saturating_add(MAX_CHANGES));
    let rows = db.changes(after, upto).await?;
    Ok(answer(&db.database_id, &rows, upto))
}

/// Lists whole changes (never half of a rotation) until the budget is spent.
fn answer(database_id: &str, rows: &[ChangeRow], upto: i64) -> String {
    let (mut keys, mut origins) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    let mut size = 0;
    let mut cursor = upto;
    let mut start = 0;
    while start < rows.len() {
        let seq = rows[start].seq;
        let end = rows[start..].iter().position(|r| r.seq != seq).map_or(rows.len(), |n| start + n);
        let group = &rows[start..end];
        let cost: usize = group
            .iter()
            .map(|r| r.sha256.len() + 3 + r.origins.iter().map(|o| o.len() + 3).sum::<usize>())
            .sum();
        if size + cost > BUDGET {
            if start == 0 {
                return reset(database_id, seq);
            }
            cursor = rows[start - 1].seq;
            break;
        }
        size += cost;
        for r in group {
            if seen.insert(("k", r.sha256.as_str())) {
                keys.push(r.sha256.as_str());
            }
            for o in &r.origins {
                if seen.insert(("o", o.as_str())) {
                    origins.push(o.as_str());
                }
            }
        }
        start = end;
    }
    listing(database_id, cursor, &keys, &origins)
}

fn listing(database_id: &str, seq: i64, keys: &[&str], origins: &[&str]) -> String {
    json!({ "cursor": encode(database_id, seq), "keys": keys, "origins": origins }).to_string()
}

fn reset(database_id: &str, seq: i64) -> String {
    json!({ "cursor": encode(database_id, seq), "reset": true }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, sha: &str, origins: &[&str]) -> ChangeRow {
        ChangeRow {
            seq,
            sha256: sha.into(),
            origins: origins.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn cursors_name_their_database() {
        let c = encode("4f1c", 42);
        assert_eq!(c, "4f1c.42");
        assert_eq!(decode(&c, "4f1c"), Some(42));
        assert_eq!(decode(&c, "9a9a"), None);
        for bad in
            ["", "4f1c", "4f1c.", "4f1c.-1", "4f1c.+1", "4f1c.1x", "4f1c.99999999999999999999"]
        {
            assert_eq!(decode(bad, "4f1c"), None, "{bad}");
        }
    }

    #[test]
    fn an_answer_lists_each_digest_and_origin_once_in_order() {
        let rows = [
            row(3, "aa", &["https://a.example"]),
            row(4, "bb", &[]),
            row(4, "cc", &["https://a.example", "*"]),
            row(5, "aa", &[]),
        ];
        assert_eq!(
            answer("db", &rows, 6),
            r#"{"cursor":"db.6","keys":["aa","bb","cc"],"origins":["https://a.example","*"]}"#
        );
        assert_eq!(answer("db", &[], 2), r#"{"cursor":"db.2","keys":[],"origins":[]}"#);
    }

    #[test]
    fn a_full_answer_stops_between_changes_never_inside_one() {
        let long = "o".repeat(BUDGET / 3);
        let rows = [
            row(1, "aa", &[&long]),
            row(2, "bb", &[&long]),
            row(2, "cc", &[&long]),
            row(3, "dd", &[]),
        ];
        // Change 2 (a rotation: two keys) does not fit after change 1: the answer ends at 1.
        assert_eq!(
            answer("db", &rows, 3),
            format!(r#"{{"cursor":"db.1","keys":["aa"],"origins":["{long}"]}}"#)
        );
        // A single change over the budget: reset, so the filter still drops it.
        let huge = "o".repeat(BUDGET);
        assert_eq!(answer("db", &[row(7, "aa", &[&huge])], 9), r#"{"cursor":"db.7","reset":true}"#);
    }
}
