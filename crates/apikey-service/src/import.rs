//! `POST /v1/keys/import`: newline-delimited §1 key objects (with
//! `sha256`, never raw keys), all or nothing.
//!
//! The whole import is one write transaction: it commits after the last
//! line, or not at all, so a refusal on line 900,000 (or the process
//! killed half way) leaves the database as it was. Lines are checked in
//! batches by the filter's own validator (one `Config::parse` over the
//! stored settings and the batch's keys); a refusal names the line and the
//! field. A duplicate `id` or `sha256` (within the import, or against a
//! stored key) is a 409 naming the line; a tenant pushed past
//! `max_keys_per_tenant` is a 422 naming the tenant.

use std::collections::HashMap;
use std::io::{BufRead, Read};

use apikey_core::timestamp::UnixNanos;
use rusqlite::Connection;
use serde_json::{json, Value};

use crate::db;
use crate::error::{ApiError, Kind};
use crate::keys::{self, active_keys, cap_reached, record_from_object};
use crate::record::state_word;
use crate::settings::Settings;
use crate::settings_store::{self, BATCH};
use crate::strict_json;

/// The longest line (one key object) accepted.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// One line waiting for its batch to be validated.
struct Line {
    number: usize,
    text: Vec<u8>,
    object: Value,
}

/// Imports every line of `source`; returns how many keys were stored.
pub fn import(
    connection: &mut Connection,
    source: &mut dyn BufRead,
    now: UnixNanos,
) -> Result<u64, ApiError> {
    let transaction = db::write(connection)?;
    let settings = settings_store::load(&transaction)?;
    let total = import_into(&transaction, &settings, source, now)?;
    transaction.commit()?;
    Ok(total)
}

/// Imports every line of `source` within the caller's write transaction
/// (which commits it, or drops it to undo everything), checking keys
/// against `settings`.
pub fn import_into(
    transaction: &Connection,
    settings: &Settings,
    source: &mut dyn BufRead,
    now: UnixNanos,
) -> Result<u64, ApiError> {
    let mut batch: Vec<Line> = Vec::with_capacity(BATCH);
    let mut added: HashMap<String, u64> = HashMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    let mut total = 0u64;
    let mut buffer = Vec::new();
    let mut number = 0usize;
    loop {
        buffer.clear();
        let limit = u64::try_from(MAX_LINE_BYTES + 2).unwrap_or(u64::MAX);
        let read = (&mut *source)
            .take(limit)
            .read_until(b'\n', &mut buffer)
            .map_err(|error| {
                ApiError::new(Kind::Internal, format!("cannot read the import: {error}"))
            })?;
        if read == 0 {
            break;
        }
        number += 1;
        let text = buffer.trim_ascii();
        if text.is_empty() {
            continue;
        }
        if text.len() > MAX_LINE_BYTES {
            return Err(at_line(
                ApiError::invalid("", format!("longer than {MAX_LINE_BYTES} bytes")),
                number,
            ));
        }
        let object = strict_json::parse(text).map_err(|error| at_line(error, number))?;
        if !object.is_object() {
            return Err(at_line(
                ApiError::invalid("", "each line must be one JSON object (a §1 key)"),
                number,
            ));
        }
        batch.push(Line {
            number,
            text: text.to_vec(),
            object,
        });
        if batch.len() == BATCH {
            total += store_batch(
                transaction,
                settings,
                &mut batch,
                &mut added,
                &mut links,
                now,
            )?;
        }
    }
    total += store_batch(
        transaction,
        settings,
        &mut batch,
        &mut added,
        &mut links,
        now,
    )?;
    if total == 0 {
        return Err(ApiError::invalid(
            "",
            "the body holds no keys (one §1 key object per line)",
        ));
    }
    if let Some(cap) = settings.max_keys_per_tenant() {
        for (tenant, adding) in &added {
            let active = active_keys(transaction, tenant, now)?;
            if active > cap {
                return Err(cap_reached(
                    tenant,
                    cap,
                    active.saturating_sub(*adding),
                    *adding,
                ));
            }
        }
    }
    link_successors(transaction, &links)?;
    Ok(total)
}

/// Sets `replaces` on the keys an imported `replaced_by` names, so a
/// rotation carried over from a state file reads the same both ways.
fn link_successors(transaction: &Connection, links: &[(String, String)]) -> Result<(), ApiError> {
    let mut statement =
        transaction.prepare("UPDATE keys SET replaces = ?2 WHERE id = ?1 AND replaces IS NULL")?;
    for (successor, predecessor) in links {
        statement.execute([successor, predecessor])?;
    }
    Ok(())
}

/// Validates and stores one batch; counts the active keys added per
/// tenant and notes each `replaced_by`.
fn store_batch(
    connection: &Connection,
    settings: &Settings,
    batch: &mut Vec<Line>,
    added: &mut HashMap<String, u64>,
    links: &mut Vec<(String, String)>,
    now: UnixNanos,
) -> Result<u64, ApiError> {
    refuse_repeats(batch)?;
    settings
        .check_keys(batch.iter().map(|line| line.text.as_slice()))
        .map_err(|refusal| {
            let number = refusal
                .index
                .and_then(|index| batch.get(index))
                .map_or(0, |line| line.number);
            at_line(ApiError::invalid(&refusal.field, refusal.reason), number)
        })?;
    let mut stored = 0;
    for line in batch.iter() {
        let record = record_from_object(&line.object, now)?;
        keys::insert(connection, &record)
            .map_err(|error| duplicate(error, line.number, &record.id))?;
        if let Some(successor) = &record.replaced_by {
            links.push((successor.clone(), record.id.clone()));
        }
        if state_word(&record, now) == "active" {
            *added.entry(record.tenant).or_default() += 1;
        }
        stored += 1;
    }
    batch.clear();
    Ok(stored)
}

/// Refuses an `id` or `sha256` given on two lines of one batch (the
/// database's UNIQUE constraints catch repeats across batches).
fn refuse_repeats(batch: &[Line]) -> Result<(), ApiError> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut hashes: HashMap<String, usize> = HashMap::new();
    for line in batch {
        if let Some(id) = line.object.get("id").and_then(Value::as_str) {
            if let Some(first) = ids.insert(id, line.number) {
                return Err(repeated("id", line.number, first).with("id", json!(id)));
            }
        }
        if let Some(hash) = line.object.get("sha256").and_then(Value::as_str) {
            if let Some(first) = hashes.insert(hash.to_ascii_lowercase(), line.number) {
                return Err(repeated("sha256", line.number, first));
            }
        }
    }
    Ok(())
}

fn repeated(field: &str, number: usize, first: usize) -> ApiError {
    ApiError::new(
        Kind::Conflict,
        format!("line {number}: {field}: the same {field} as line {first}"),
    )
    .with("line", json!(number))
    .with("field", json!(field))
}

/// A UNIQUE violation is a 409 naming the field; anything else passes on.
fn duplicate(error: rusqlite::Error, number: usize, id: &str) -> ApiError {
    let text = error.to_string();
    if error.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
        && text.contains("UNIQUE")
    {
        let field = if text.contains("keys.sha256") {
            "sha256"
        } else {
            "id"
        };
        let mut refusal = ApiError::new(
            Kind::Conflict,
            format!("line {number}: {field}: a stored key already has this {field}"),
        )
        .with("line", json!(number))
        .with("field", json!(field));
        if field == "id" {
            refusal = refusal.with("id", json!(id));
        }
        return refusal;
    }
    ApiError::from(error)
}

/// Prefixes a refusal with its line: `line 12: plan: unknown plan "gold"`.
fn at_line(mut error: ApiError, number: usize) -> ApiError {
    error.message = format!("line {number}: {}", error.message);
    error.with("line", json!(number))
}
