//! Key usage (contract §8.4): what gateways report, and what the API
//! shows of it.
//!
//! Every gateway worker batches, per key, how many requests the key
//! authenticated and when it was last used, and sends that at most every
//! 10 seconds to `POST /v1/feed/usage` (feed token) as NDJSON, one line
//! per key: `{"id":"key_1","count":12,"last_used_at":"2026-12-05T10:00:00Z"}`.
//! A report is read whole and checked strictly before anything is stored
//! (a refusal names the line and the field), then stored in one write
//! transaction: each line's count is added to the key's row of its UTC
//! day (the day of its `last_used_at`) in `key_usage`, and
//! `keys.last_used_at` becomes the latest of the stored and the reported
//! times, so a late or replayed report never moves it back. A line naming
//! a key this database does not hold (another database's key, or a typo)
//! is skipped and counted, not refused: a gateway's report must not fail
//! as a whole because one key is unknown here.
//!
//! Usage is not part of the feed: the feed's trigger on `keys` lists the
//! columns a gateway reads and leaves `last_used_at` out, and `key_usage`
//! has no trigger, so recording a use never makes a generation or wakes a
//! gateway's long poll.

use apikey_core::config::MAX_ID_LEN;
use apikey_core::timestamp::{format_rfc3339, parse_rfc3339, UnixNanos};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use crate::db;
use crate::error::ApiError;
use crate::strict_json;

/// The fields of a report line, all required.
pub const FIELDS: &[&str] = &["id", "count", "last_used_at"];
/// The largest count one line may carry (a bound no real window reaches,
/// which keeps every day's sum far from SQLite's 64-bit limit).
pub const MAX_COUNT: u64 = 1_000_000_000_000;
/// The longest line accepted.
pub const MAX_LINE_BYTES: usize = 1024;
/// How far ahead of the service's clock a reported time may be before it
/// is taken as the service's own time: a gateway whose clock runs fast
/// must not pin `last_used_at` in the future.
pub const MAX_AHEAD_NS: UnixNanos = 60 * 1_000_000_000;

/// One line of a report: a key's requests since the gateway's last report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    /// The key's id.
    pub id: String,
    /// Requests it authenticated.
    pub count: u64,
    /// The latest of them.
    pub last_used_at: UnixNanos,
}

/// What a stored report held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Lines whose key is in the database (their counts were added).
    pub accepted: u64,
    /// Lines naming a key the database does not hold (skipped).
    pub unknown: u64,
}

impl Recorded {
    /// The 200 body: `{"accepted": N, "unknown": M}`.
    pub fn body(&self) -> Value {
        json!({"accepted": self.accepted, "unknown": self.unknown})
    }
}

/// Reads a report: one JSON object per line, blank lines skipped, every
/// line checked before any is used.
pub fn parse(body: &[u8]) -> Result<Vec<Use>, ApiError> {
    let mut uses = Vec::new();
    for (index, line) in body.split(|byte| *byte == b'\n').enumerate() {
        let number = index + 1;
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        uses.push(parse_line(line).map_err(|error| at_line(error, number))?);
    }
    Ok(uses)
}

fn parse_line(line: &[u8]) -> Result<Use, ApiError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(ApiError::invalid(
            "",
            format!("longer than {MAX_LINE_BYTES} bytes"),
        ));
    }
    let object = strict_json::parse_object(line)?;
    if let Some(unknown) = object.keys().find(|name| !FIELDS.contains(&name.as_str())) {
        return Err(ApiError::invalid(
            unknown,
            format!("unknown field (accepted: {})", FIELDS.join(", ")),
        ));
    }
    let id = match object.get("id") {
        Some(Value::String(id)) if is_key_id(id) => id.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                "id",
                format!("must be a key id: 1 to {MAX_ID_LEN} of A-Z a-z 0-9 _ . -"),
            ))
        }
        None => return Err(ApiError::invalid("id", "required")),
    };
    let count = match object.get("count") {
        Some(value) => value
            .as_u64()
            .filter(|count| (1..=MAX_COUNT).contains(count))
            .ok_or_else(|| {
                ApiError::invalid(
                    "count",
                    format!("must be a whole number from 1 to {MAX_COUNT}"),
                )
            })?,
        None => return Err(ApiError::invalid("count", "required")),
    };
    let last_used_at = match object.get("last_used_at") {
        Some(Value::String(text)) if text.ends_with(['Z', 'z']) => {
            parse_rfc3339(text).map_err(|reason| ApiError::invalid("last_used_at", reason))?
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "last_used_at",
                "must be an RFC 3339 date-time in UTC such as 2026-12-05T10:00:00Z",
            ))
        }
        None => return Err(ApiError::invalid("last_used_at", "required")),
    };
    Ok(Use {
        id,
        count,
        last_used_at,
    })
}

/// Whether `id` can be a key id (the validator's shape, §1).
fn is_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn at_line(mut error: ApiError, number: usize) -> ApiError {
    error.message = format!("line {number}: {}", error.message);
    error.with("line", json!(number))
}

/// The UTC day of an instant, `YYYY-MM-DD`.
pub fn day_of(nanos: UnixNanos) -> String {
    let text = format_rfc3339(nanos);
    text.get(..10).unwrap_or(&text).to_owned()
}

/// Stores a parsed report in one write transaction (`now`: the service's
/// clock, which bounds how far ahead a reported time may be).
pub fn record(
    connection: &mut Connection,
    uses: &[Use],
    now: UnixNanos,
) -> Result<Recorded, ApiError> {
    let transaction = db::write(connection)?;
    let mut recorded = Recorded::default();
    {
        // Only `last_used_at` is set: the feed's trigger, which lists the
        // columns a gateway reads, does not fire.
        let mut touch = transaction.prepare_cached(
            "UPDATE keys SET last_used_at = max(coalesce(last_used_at, ?2), ?2) WHERE id = ?1",
        )?;
        let mut add = transaction.prepare_cached(
            "INSERT INTO key_usage (key_id, day, count) VALUES (?1, ?2, ?3) \
             ON CONFLICT (key_id, day) DO UPDATE SET count = count + excluded.count",
        )?;
        let latest = now.saturating_add(MAX_AHEAD_NS);
        for used in uses {
            let at = if used.last_used_at > latest {
                now
            } else {
                used.last_used_at
            };
            if touch.execute(params![used.id, at])? == 0 {
                recorded.unknown += 1;
                continue;
            }
            let count = i64::try_from(used.count).unwrap_or(i64::MAX);
            add.execute(params![used.id, day_of(at), count])?;
            recorded.accepted += 1;
        }
    }
    transaction.commit()?;
    Ok(recorded)
}

/// One day of a key's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Day {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Requests on that day, summed over every gateway and worker.
    pub count: u64,
}

/// `GET /v1/keys/{id}/usage`: the key's days, oldest first (404 for an
/// unknown id; a key never used has none).
pub fn by_day(connection: &Connection, id: &str) -> Result<Vec<Day>, ApiError> {
    let known = connection
        .query_row("SELECT 1 FROM keys WHERE id = ?1", [id], |_| Ok(()))
        .optional()?;
    if known.is_none() {
        return Err(ApiError::no_key(id));
    }
    let mut statement = connection
        .prepare_cached("SELECT day, count FROM key_usage WHERE key_id = ?1 ORDER BY day")?;
    let rows = statement.query_map([id], |row| {
        Ok(Day {
            day: row.get(0)?,
            count: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The usage answer: `{"id", "days": [{"day", "count"}, ...]}`.
pub fn days_body(id: &str, days: &[Day]) -> Value {
    let days: Vec<Value> = days
        .iter()
        .map(|day| json!({"day": day.day, "count": day.count}))
        .collect();
    json!({"id": id, "days": days})
}

#[cfg(test)]
mod tests;
