//! The settings row, and the whole §1 configuration assembled from the
//! database (for `render` and for checking stored keys against new
//! settings).
//!
//! New settings are checked against every stored key before they are
//! kept: settings that drop a plan a key names, or a fleet whose periods a
//! key's limits do not fit, would make the table a gateway receives
//! invalid, and a gateway refuses an invalid table whole. Such a `PUT` is
//! a 409 naming the first key it would break.

use apikey_core::timestamp::UnixNanos;
use rusqlite::{params, Connection, OptionalExtension};

use crate::db;
use crate::error::ApiError;
use crate::record::{KeyRecord, COLUMNS};
use crate::settings::{stored_key_conflict, Settings};

/// Keys validated per call of the filter's validator: large enough that
/// the settings are parsed rarely, small enough to hold a few MB.
pub const BATCH: usize = 10_000;

/// The stored settings (`{}` before any `PUT`).
pub fn load(connection: &Connection) -> Result<Settings, ApiError> {
    let text: Option<String> = connection
        .query_row("SELECT document FROM settings WHERE id = 1", [], |row| {
            row.get(0)
        })
        .optional()?;
    match text {
        Some(text) => Settings::from_stored(&text),
        None => Ok(Settings::default()),
    }
}

/// `PUT /v1/settings`: checks every stored key against the new settings,
/// then stores them; all in one write transaction.
pub fn put(
    connection: &mut Connection,
    settings: &Settings,
    now: UnixNanos,
) -> Result<(), ApiError> {
    let transaction = db::write(connection)?;
    put_in(&transaction, settings, now)?;
    transaction.commit()?;
    Ok(())
}

/// [`put`] within the caller's write transaction.
pub fn put_in(
    transaction: &Connection,
    settings: &Settings,
    now: UnixNanos,
) -> Result<(), ApiError> {
    check_stored_keys(transaction, settings)?;
    transaction.execute(
        "INSERT INTO settings (id, document, updated_at) VALUES (1, ?1, ?2) \
         ON CONFLICT (id) DO UPDATE SET document = excluded.document, updated_at = excluded.updated_at",
        params![settings.to_text(), now],
    )?;
    Ok(())
}

/// Runs every stored key through the validator with `settings`, in batches.
fn check_stored_keys(connection: &Connection, settings: &Settings) -> Result<(), ApiError> {
    let mut failure = None;
    for_each_batch(connection, &mut |records| {
        let objects: Vec<String> = records
            .iter()
            .map(|record| record.filter_object().to_string())
            .collect();
        if let Err(refusal) = settings.check_keys(objects.iter().map(String::as_bytes)) {
            let id = refusal
                .index
                .and_then(|index| records.get(index))
                .map_or("?", |record| record.id.as_str());
            failure = Some(stored_key_conflict(id, &refusal));
            return false;
        }
        true
    })?;
    failure.map_or(Ok(()), Err)
}

/// Calls `visit` with the stored keys in batches of [`BATCH`], oldest
/// first, until it returns `false`.
pub fn for_each_batch(
    connection: &Connection,
    visit: &mut dyn FnMut(&[KeyRecord]) -> bool,
) -> Result<(), ApiError> {
    let sql = format!("SELECT {COLUMNS} FROM keys WHERE seq > ?1 ORDER BY seq LIMIT ?2");
    let mut statement = connection.prepare(&sql)?;
    let mut after = 0i64;
    loop {
        let rows = statement.query_map(
            params![after, i64::try_from(BATCH).unwrap_or(i64::MAX)],
            KeyRecord::from_row,
        )?;
        let batch = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        let Some(last) = batch.last() else {
            return Ok(());
        };
        after = last.seq;
        if !visit(&batch) {
            return Ok(());
        }
    }
}

/// The whole §1 configuration: the settings (without the service's own
/// `max_keys_per_tenant`) and every stored key, oldest first, as the
/// filter would receive it.
pub fn config_document(connection: &Connection) -> Result<Vec<u8>, ApiError> {
    let settings = load(connection)?;
    let mut objects: Vec<String> = Vec::new();
    for_each_batch(connection, &mut |records| {
        objects.extend(
            records
                .iter()
                .map(|record| record.filter_object().to_string()),
        );
        true
    })?;
    Ok(settings.config_with_keys(objects.iter().map(String::as_bytes)))
}
