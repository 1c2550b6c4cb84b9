//! Each key's feed line ([`crate::feed::key_line`]), stored in
//! `keys.feed_line` when the key is written, so the feed's reads (snapshot
//! pages, changes answers, the digest's rebuild at start) copy it out
//! instead of building it per key: building it (the record's JSON columns parsed into values,
//! then a sorted map written out) cost about 2.8 µs a key, 28 ms a page of
//! 10,000 and 3 s of start-up at a million keys.
//!
//! Correctness does not depend on every writer remembering the line. The
//! schema (step 4 in [`crate::db`]) empties it by trigger, in the writer's
//! own transaction, whenever a column it is made of changes, and a new
//! row's is empty unless its writer set it; so a stored line is always the
//! line of the columns beside it, whoever wrote them (this service,
//! `apikey --db` in another process, the `sqlite3` shell). A read that
//! finds an empty line builds it from the columns ([`each_line`]): slower,
//! never wrong. The service's own writes store the line in the same
//! transaction (create, import and rotate with the new row; revoke and
//! rotate again after updating a row, which emptied it: [`store`],
//! [`refresh`]), so its rows are never read empty. Rows emptied by other processes are filled by [`fill`], a task on
//! the writer connection woken each time the feed's generation moves (at
//! once after the API's writes, within a poll after another process's).
//! Filling is not done by the reads themselves: they run on reader
//! connections in read transactions, and a write there would wait for the
//! write lock (behind a CLI's import, for seconds) inside a gateway's
//! request, and could not upgrade a read snapshot another writer had
//! overtaken anyway. Filling writes `feed_line` alone, which neither the
//! feed log's trigger nor the emptying one lists: it makes no generation,
//! wakes no long poll, and leaves `seq` (the feed's order) untouched.

use std::sync::Arc;
use std::time::Instant;

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, Rows};

use crate::db;
use crate::error::ApiError;
use crate::feed::{key_line, Feed};
use crate::pool::Pool;
use crate::record::{KeyRecord, COLUMNS};

/// Empty lines filled per write transaction: a batch holds the write lock
/// for a few milliseconds, so the API's own writes are not held up while a
/// migrated database is filled in the background.
pub const FILL_BATCH: usize = 1000;

/// Stores `record`'s line; `record` must be what the caller's write
/// transaction holds for the row (read in it, or just inserted by it).
pub fn store(connection: &Connection, record: &KeyRecord) -> Result<(), ApiError> {
    let mut statement =
        connection.prepare_cached("UPDATE keys SET feed_line = ?2 WHERE seq = ?1")?;
    statement.execute(params![record.seq, key_line(record)])?;
    Ok(())
}

/// Stores the line of key `id` as the caller's write transaction now holds
/// it: after an update of its columns (which emptied the line).
pub fn refresh(connection: &Connection, id: &str) -> Result<(), ApiError> {
    let sql = format!("SELECT {COLUMNS} FROM keys WHERE id = ?1");
    let mut statement = connection.prepare_cached(&sql)?;
    let record = statement.query_row([id], KeyRecord::from_row)?;
    store(connection, &record)
}

/// The line of the key at `seq`, built from its columns.
fn build(connection: &Connection, seq: i64) -> Result<String, ApiError> {
    let sql = format!("SELECT {COLUMNS} FROM keys WHERE seq = ?1");
    let mut statement = connection.prepare_cached(&sql)?;
    let record = statement.query_row([seq], KeyRecord::from_row)?;
    Ok(key_line(&record))
}

/// Calls `visit` with the `seq` and line of each row of `rows` (a query
/// selecting `seq, feed_line` from `keys` on `connection`), for at most
/// `limit` rows; says whether another row followed them (which is not
/// visited, nor its line built). A stored line is passed as SQLite holds
/// it, without a copy; an empty one (or one that is not text) is built
/// from the row's columns.
pub fn each_line(
    connection: &Connection,
    rows: &mut Rows<'_>,
    limit: usize,
    visit: &mut dyn FnMut(i64, &str),
) -> Result<bool, ApiError> {
    let mut visited = 0usize;
    while let Some(row) = rows.next()? {
        if visited == limit {
            return Ok(true);
        }
        visited += 1;
        let seq: i64 = row.get(0)?;
        let stored = match row.get_ref(1)? {
            ValueRef::Text(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        };
        match stored {
            Some(line) => visit(seq, line),
            None => visit(seq, &build(connection, seq)?),
        }
    }
    Ok(false)
}

/// Fills up to `batch` empty lines, oldest keys first, in one write
/// transaction (each built from the columns it holds, under the write
/// lock, so no other writer can change a row between its read and its
/// line); returns how many it filled (0: none was empty).
pub fn fill_missing(connection: &mut Connection, batch: usize) -> Result<usize, ApiError> {
    // A look through the partial index first: no write lock, no
    // transaction, when (as nearly always) there is nothing to fill.
    if !any_missing(connection)? {
        return Ok(0);
    }
    let transaction = db::write(connection)?;
    let records = {
        let sql =
            format!("SELECT {COLUMNS} FROM keys WHERE feed_line IS NULL ORDER BY seq LIMIT ?1");
        let mut statement = transaction.prepare_cached(&sql)?;
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        let rows = statement.query_map([limit], KeyRecord::from_row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    for record in &records {
        store(&transaction, record)?;
    }
    transaction.commit()?;
    Ok(records.len())
}

/// Whether some key's line is empty (through the partial index).
pub fn any_missing(connection: &Connection) -> Result<bool, ApiError> {
    Ok(connection.query_row(
        "SELECT EXISTS (SELECT 1 FROM keys WHERE feed_line IS NULL)",
        [],
        |row| row.get(0),
    )?)
}

/// Fills empty lines at start (a database migrated to step 4 has every
/// line empty), then again each time the feed's published generation
/// moves: every write that empties a line (or adds a row without one)
/// also logs a change, so a moved generation is the only time there can
/// be new empty lines. Batches of [`FILL_BATCH`] let the API's writes take
/// the writer between them. Runs until the runtime stops (or the feed is
/// dropped).
pub async fn fill(feed: Arc<Feed>, pool: Arc<Pool>) {
    let mut published = feed.subscribe();
    let started = Instant::now();
    let filled = fill_all(&pool).await;
    if filled > 0 {
        // Once, at start: how long a migrated database took to fill.
        eprintln!(
            "apikey serve: stored the feed lines of {filled} keys written without one ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    while published.changed().await.is_ok() {
        fill_all(&pool).await;
    }
}

/// Fills empty lines batch by batch until none is left; returns how many.
async fn fill_all(pool: &Arc<Pool>) -> usize {
    let mut total = 0usize;
    loop {
        match pool
            .write(|connection| fill_missing(connection, FILL_BATCH))
            .await
        {
            Ok(0) => return total,
            Ok(filled) => {
                total = total.saturating_add(filled);
                tokio::task::yield_now().await;
            }
            Err(failure) => {
                // Left empty, the lines are still served right (built per
                // read); the next generation tries again.
                eprintln!("apikey serve: cannot store the keys' feed lines: {failure}");
                return total;
            }
        }
    }
}

#[cfg(test)]
mod tests;
