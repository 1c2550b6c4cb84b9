//! The key operations of contract §8.2 on the database: create, get, list,
//! revoke, rotate (import is [`crate::import`]). The HTTP handlers and the
//! CLI's `--db` mode both call these, so a key made either way is checked
//! the same way.
//!
//! Every write is one `BEGIN IMMEDIATE` transaction that reads what it
//! depends on (the settings, the tenant's count, the key being rotated)
//! after taking the write lock, so two writers (two requests, or the
//! service and a CLI in another process) never act on the same stale read:
//! the tenant cap holds and no rotation or revocation is lost. A new key's
//! §1 object is checked by the filter's validator
//! ([`Settings::check_key`]) before it is stored; the raw key leaves this
//! module only inside a [`Created`], which the caller shows once.

use apikey_core::key_hash::KeyHash;
use apikey_core::timestamp::{format_rfc3339, parse_rfc3339, UnixNanos};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::{json, Map, Value};

use crate::db;
use crate::error::{ApiError, Kind};
use crate::keygen::{self, RandomSource, SecretKey};
use crate::record::{state_word, KeyRecord, COLUMNS};
use crate::settings::Settings;
use crate::settings_store;
use crate::{feed, feed_lines};

/// The fields `POST /v1/keys` takes.
pub const CREATE_FIELDS: &[&str] = &[
    "tenant",
    "scopes",
    "plan",
    "env",
    "name",
    "expires_at",
    "rate_limits",
    "prefix",
];
/// The fields `POST /v1/keys/{id}/rotate` takes.
pub const ROTATE_FIELDS: &[&str] = &["grace_seconds"];
/// The grace of a rotation when none is given: 24 hours.
pub const DEFAULT_GRACE_SECONDS: u64 = 86_400;
/// The longest grace accepted: ten years.
pub const MAX_GRACE_SECONDS: u64 = 10 * 365 * 86_400;
/// A list page when `limit` is not given.
pub const DEFAULT_PAGE: usize = 100;
/// The largest list page.
pub const MAX_PAGE: usize = 1000;
/// What rotation appends to the new key's name.
const ROTATED_SUFFIX: &str = " (rotated)";
const NANOS: i64 = 1_000_000_000;

/// A key just made: its record and the raw key, to be shown once.
#[derive(Debug)]
pub struct Created {
    /// The stored record.
    pub record: KeyRecord,
    /// The raw key (in this answer only).
    pub key: SecretKey,
    /// After a rotation: when the old key stops working.
    pub old_expires_at: Option<String>,
}

impl Created {
    /// The 201 body: the record, its `sha256`, and the raw `key`.
    pub fn body(&self, now: UnixNanos) -> Value {
        let mut map = self.record.public(now);
        map.insert("sha256".to_owned(), json!(self.record.sha256.to_hex()));
        map.insert("key".to_owned(), json!(self.key.expose()));
        if let Some(old_expires_at) = &self.old_expires_at {
            map.insert("old_expires_at".to_owned(), json!(old_expires_at));
        }
        Value::Object(map)
    }
}

/// Refuses a field not in `allowed`, naming it.
pub fn check_fields(body: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match body.keys().find(|name| !allowed.contains(&name.as_str())) {
        Some(unknown) => Err(ApiError::invalid(
            unknown,
            format!("unknown field (accepted: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// `POST /v1/keys`: makes a key of 24 base62 characters after the prefix
/// from the OS random source, stores its SHA-256 and hint, and returns it
/// once.
pub fn create(
    connection: &mut Connection,
    mut body: Map<String, Value>,
    now: UnixNanos,
    random: &mut dyn RandomSource,
) -> Result<Created, ApiError> {
    check_fields(&body, CREATE_FIELDS)?;
    // `null` means "not given", as in the filter's configuration.
    body.retain(|_, value| !value.is_null());
    let tenant = match body.get("tenant") {
        Some(Value::String(tenant)) => tenant.clone(),
        Some(_) => return Err(ApiError::invalid("tenant", "must be a string")),
        None => return Err(ApiError::invalid("tenant", "required")),
    };
    let prefix = match body.remove("prefix") {
        Some(Value::String(prefix)) => {
            keygen::check_prefix(&prefix).map_err(|reason| ApiError::invalid("prefix", reason))?;
            prefix
        }
        Some(_) => return Err(ApiError::invalid("prefix", "must be a string")),
        None => default_prefix(body.get("env").and_then(Value::as_str))?,
    };
    if let Some(Value::String(text)) = body.get("expires_at") {
        if parse_rfc3339(text).is_ok_and(|expiry| expiry <= now) {
            return Err(ApiError::invalid(
                "expires_at",
                "must be in the future (a new key that never works is a mistake)",
            ));
        }
    }
    let transaction = db::write(connection)?;
    let settings = settings_store::load(&transaction)?;
    if !settings.allows_prefix(&prefix) {
        return Err(ApiError::invalid(
            "prefix",
            format!(
                "keys starting {prefix:?} would be refused as malformed: the settings' key_prefixes allow only {:?}",
                settings.key_prefixes().unwrap_or_default()
            ),
        ));
    }
    let (object, key) = new_key_object(&transaction, &prefix, body, random)?;
    // A request the filter would refuse is a 400 whatever the tenant holds.
    settings.check_key(&object)?;
    check_cap(&transaction, &settings, &tenant, now, 1)?;
    let record = record_from_object(&object, now)?;
    insert(&transaction, &record)?;
    transaction.commit()?;
    let record = get(connection, &record.id)?;
    Ok(Created {
        record,
        key,
        old_expires_at: None,
    })
}

/// `sk_<env>_`, `sk_live_` without an env.
fn default_prefix(env: Option<&str>) -> Result<String, ApiError> {
    keygen::choose_prefix(None, None, env)
        .map_err(|reason| ApiError::invalid("env", format!("{reason} (or give prefix)")))
}

/// A fresh id and key, and the §1 object holding the id, the hash, the
/// given `fields` and the hint.
fn new_key_object(
    transaction: &Transaction<'_>,
    prefix: &str,
    fields: Map<String, Value>,
    random: &mut dyn RandomSource,
) -> Result<(Value, SecretKey), ApiError> {
    let failed = |error: keygen::RandomError| ApiError::new(Kind::Internal, error.to_string());
    let id = keygen::new_id(random, |id| id_taken(transaction, id)).map_err(failed)?;
    let key = keygen::new_key(random, prefix).map_err(failed)?;
    let mut object = Map::new();
    object.insert("id".to_owned(), json!(id));
    object.insert(
        "sha256".to_owned(),
        json!(KeyHash::of(key.expose().as_bytes()).to_hex()),
    );
    object.extend(fields);
    object.insert("hint".to_owned(), json!(keygen::hint(prefix, &key)));
    Ok((Value::Object(object), key))
}

/// Whether an id is in use (a failed look-up counts as free: the UNIQUE
/// constraint still refuses a duplicate).
fn id_taken(transaction: &Transaction<'_>, id: &str) -> bool {
    transaction
        .query_row("SELECT 1 FROM keys WHERE id = ?1", [id], |_| Ok(()))
        .optional()
        .ok()
        .flatten()
        .is_some()
}

/// Keys of `tenant` that count against the cap: neither revoked nor
/// expired at `now`.
pub fn active_keys(connection: &Connection, tenant: &str, now: UnixNanos) -> Result<u64, ApiError> {
    let count: i64 = connection.query_row(
        "SELECT count(*) FROM keys WHERE tenant = ?1 AND revoked = 0 \
         AND (expires_ns IS NULL OR expires_ns > ?2)",
        params![tenant, now],
        |row| row.get(0),
    )?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Refuses adding `adding` active keys to `tenant` past the settings' cap.
pub fn check_cap(
    connection: &Connection,
    settings: &Settings,
    tenant: &str,
    now: UnixNanos,
    adding: u64,
) -> Result<(), ApiError> {
    let Some(cap) = settings.max_keys_per_tenant() else {
        return Ok(());
    };
    let active = active_keys(connection, tenant, now)?;
    if active.saturating_add(adding) > cap {
        return Err(cap_reached(tenant, cap, active, adding));
    }
    Ok(())
}

/// The 422 of a tenant at its cap.
pub fn cap_reached(tenant: &str, cap: u64, active: u64, adding: u64) -> ApiError {
    ApiError::new(
        Kind::KeyLimitReached,
        format!(
            "tenant {tenant:?} holds {active} active keys and max_keys_per_tenant is {cap}: adding {adding} would pass it (revoke keys, or raise the cap with PUT /v1/settings)"
        ),
    )
    .with("tenant", json!(tenant))
    .with("limit", json!(cap))
    .with("active", json!(active))
}

/// The record a validated §1 key object describes (`now` is its
/// `created_at` unless it carries one).
pub fn record_from_object(object: &Value, now: UnixNanos) -> Result<KeyRecord, ApiError> {
    let text = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_owned);
    let internal =
        |what: &str| ApiError::new(Kind::Internal, format!("a validated key has no {what}"));
    let sha256 = text("sha256")
        .and_then(|hex| KeyHash::from_hex(&hex).ok())
        .ok_or_else(|| internal("sha256"))?;
    let expires_at = text("expires_at");
    let created_at = text("created_at")
        .and_then(|text| parse_rfc3339(&text).ok())
        .unwrap_or(now);
    Ok(KeyRecord {
        seq: 0,
        id: text("id").ok_or_else(|| internal("id"))?,
        sha256,
        tenant: text("tenant").ok_or_else(|| internal("tenant"))?,
        scopes: object
            .get("scopes")
            .filter(|scopes| !scopes.is_null())
            .cloned()
            .unwrap_or_else(|| json!([])),
        plan: text("plan"),
        env: text("env"),
        name: text("name"),
        hint: text("hint"),
        expires_ns: expires_at
            .as_deref()
            .and_then(|text| parse_rfc3339(text).ok()),
        expires_at,
        revoked: object
            .get("revoked")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        revoked_at: None,
        rate_limits: object
            .get("rate_limits")
            .filter(|limits| !limits.is_null())
            .cloned(),
        created_at,
        replaced_by: text("replaced_by"),
        replaces: None,
        last_used_at: None,
    })
}

/// The INSERT of [`insert`] (prepared once per transaction).
pub const INSERT: &str = "INSERT INTO keys (id, sha256, tenant, scopes, plan, env, name, hint, \
     expires_at, expires_ns, revoked, revoked_at, rate_limits, created_at, replaced_by, replaces, \
     feed_line) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)";

/// Stores a new record (its `seq` is assigned by the database), with its
/// feed line ([`crate::feed_lines`]). The line is built from `record`
/// itself rather than read back: the columns are `record`'s fields, the
/// JSON ones written by `serde_json` and read back into equal values, so
/// the line built from the stored row is the same (the feed's tests
/// compare the two).
pub fn insert(connection: &Connection, record: &KeyRecord) -> rusqlite::Result<()> {
    let mut statement = connection.prepare_cached(INSERT)?;
    statement.execute(params![
        record.id,
        record.sha256.as_bytes().as_slice(),
        record.tenant,
        record.scopes.to_string(),
        record.plan,
        record.env,
        record.name,
        record.hint,
        record.expires_at,
        record.expires_ns,
        record.revoked,
        record.revoked_at,
        record.rate_limits.as_ref().map(Value::to_string),
        record.created_at,
        record.replaced_by,
        record.replaces,
        feed::key_line(record),
    ])?;
    Ok(())
}

/// `GET /v1/keys/{id}`.
pub fn get(connection: &Connection, id: &str) -> Result<KeyRecord, ApiError> {
    find(connection, id)?.ok_or_else(|| ApiError::no_key(id))
}

fn find(connection: &Connection, id: &str) -> Result<Option<KeyRecord>, ApiError> {
    let sql = format!("SELECT {COLUMNS} FROM keys WHERE id = ?1");
    let mut statement = connection.prepare_cached(&sql)?;
    Ok(statement.query_row([id], KeyRecord::from_row).optional()?)
}

/// The query of `GET /v1/keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only this tenant's keys.
    pub tenant: Option<String>,
    /// Records per page.
    pub limit: usize,
    /// Start after this position (a previous page's `next_cursor`).
    pub cursor: Option<i64>,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            tenant: None,
            limit: DEFAULT_PAGE,
            cursor: None,
        }
    }
}

impl ListQuery {
    /// Reads `tenant=&limit=&cursor=`; any other parameter, or one given
    /// twice, is refused.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut list = Self::default();
        let mut seen: Vec<String> = Vec::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if seen.iter().any(|earlier| *earlier == name) {
                return Err(ApiError::invalid(&name, "given twice"));
            }
            seen.push(name.clone().into_owned());
            match name.as_ref() {
                "tenant" => list.tenant = Some(value.into_owned()),
                "limit" => {
                    list.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "limit",
                                format!("must be a whole number from 1 to {MAX_PAGE}"),
                            )
                        })?;
                }
                "cursor" => list.cursor = Some(parse_cursor(&value)?),
                other => {
                    return Err(ApiError::invalid(
                        other,
                        "unknown parameter (accepted: tenant, limit, cursor)",
                    ))
                }
            }
        }
        Ok(list)
    }
}

fn parse_cursor(text: &str) -> Result<i64, ApiError> {
    text.strip_prefix('c')
        .and_then(|digits| digits.parse::<i64>().ok())
        .filter(|&seq| seq > 0)
        .ok_or_else(|| {
            ApiError::invalid(
                "cursor",
                "not a cursor this service gave (pass next_cursor as it came)",
            )
        })
}

/// The cursor that continues after `seq`.
pub fn cursor_after(seq: i64) -> String {
    format!("c{seq}")
}

/// One page of `GET /v1/keys`.
#[derive(Debug)]
pub struct Page {
    /// The records, newest first.
    pub records: Vec<KeyRecord>,
    /// Where the next page starts, when there is one.
    pub next_cursor: Option<String>,
}

impl Page {
    /// The 200 body: `{"keys": [...], "next_cursor": ...}`.
    pub fn body(&self, now: UnixNanos) -> Value {
        let keys: Vec<Value> = self
            .records
            .iter()
            .map(|record| Value::Object(record.public(now)))
            .collect();
        json!({"keys": keys, "next_cursor": self.next_cursor})
    }
}

/// `GET /v1/keys`: newest first (the order they were stored), one page.
pub fn list(connection: &Connection, query: &ListQuery) -> Result<Page, ApiError> {
    let before = query.cursor.unwrap_or(i64::MAX);
    let fetch = i64::try_from(query.limit.saturating_add(1)).unwrap_or(i64::MAX);
    let mut records = if let Some(tenant) = &query.tenant {
        let sql = format!(
            "SELECT {COLUMNS} FROM keys WHERE tenant = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
        );
        let mut statement = connection.prepare_cached(&sql)?;
        let rows = statement.query_map(params![tenant, before, fetch], KeyRecord::from_row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    } else {
        let sql = format!("SELECT {COLUMNS} FROM keys WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2");
        let mut statement = connection.prepare_cached(&sql)?;
        let rows = statement.query_map(params![before, fetch], KeyRecord::from_row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    let next_cursor = if records.len() > query.limit {
        records.truncate(query.limit);
        records.last().map(|last| cursor_after(last.seq))
    } else {
        None
    };
    Ok(Page {
        records,
        next_cursor,
    })
}

/// `POST /v1/keys/{id}/revoke`: at once, and kept (`revoked: true`,
/// `revoked_at`). Revoking a revoked key changes nothing and answers the
/// record as it is.
pub fn revoke(
    connection: &mut Connection,
    id: &str,
    now: UnixNanos,
) -> Result<KeyRecord, ApiError> {
    let transaction = db::write(connection)?;
    let changed = transaction.execute(
        "UPDATE keys SET revoked = 1, revoked_at = ?2 WHERE id = ?1 AND revoked = 0",
        params![id, now],
    )?;
    let record = get(&transaction, id)?;
    if changed > 0 {
        // The update emptied the stored line (by trigger): store the new
        // one in the same transaction.
        feed_lines::store(&transaction, &record)?;
        transaction.commit()?;
    }
    Ok(record)
}

/// `POST /v1/keys/{id}/rotate`: a new key with the old one's tenant,
/// scopes, plan, env and limits (and its name, marked rotated), shown
/// once, with `old_expires_at`; the old key expires at now + grace, never
/// later than it already would. A key already rotated, revoked or expired is not rotated: 409.
/// The tenant cap does not apply: after the grace the tenant holds as many
/// keys as before.
pub fn rotate(
    connection: &mut Connection,
    id: &str,
    body: &Map<String, Value>,
    now: UnixNanos,
    random: &mut dyn RandomSource,
) -> Result<Created, ApiError> {
    check_fields(body, ROTATE_FIELDS)?;
    let grace = match body.get("grace_seconds") {
        None | Some(Value::Null) => DEFAULT_GRACE_SECONDS,
        Some(value) => value
            .as_u64()
            .filter(|&seconds| seconds <= MAX_GRACE_SECONDS)
            .ok_or_else(|| {
                ApiError::invalid(
                    "grace_seconds",
                    format!("must be a whole number of seconds from 0 to {MAX_GRACE_SECONDS}"),
                )
            })?,
    };
    let transaction = db::write(connection)?;
    let old = get(&transaction, id)?;
    refuse_rotation(&old, now)?;
    let settings = settings_store::load(&transaction)?;
    let prefix = rotation_prefix(&old, &settings)?;
    let grace_end = now.saturating_add(
        i64::try_from(grace)
            .unwrap_or(i64::MAX)
            .saturating_mul(NANOS),
    );
    let (old_expires_at, old_expires_ns) = match (&old.expires_at, old.expires_ns) {
        (Some(text), Some(expiry)) if expiry <= grace_end => (text.clone(), expiry),
        _ => {
            let text = format_rfc3339(grace_end);
            let nanos = parse_rfc3339(&text).unwrap_or(grace_end);
            (text, nanos)
        }
    };
    let mut fields = Map::new();
    fields.insert("tenant".to_owned(), json!(old.tenant));
    fields.insert("scopes".to_owned(), old.scopes.clone());
    let mut copy = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            fields.insert(name.to_owned(), value);
        }
    };
    copy("plan", old.plan.as_ref().map(|plan| json!(plan)));
    copy("env", old.env.as_ref().map(|env| json!(env)));
    copy(
        "expires_at",
        same_lifetime(&old, now).map(|text| json!(text)),
    );
    copy("name", Some(json!(rotated_name(&old))));
    copy("rate_limits", old.rate_limits.clone());
    let (object, key) = new_key_object(&transaction, &prefix, fields, random)?;
    settings.check_key(&object)?;
    let mut record = record_from_object(&object, now)?;
    record.replaces = Some(old.id.clone());
    insert(&transaction, &record)?;
    transaction.execute(
        "UPDATE keys SET expires_at = ?2, expires_ns = ?3, replaced_by = ?4 WHERE id = ?1",
        params![old.id, old_expires_at, old_expires_ns, record.id],
    )?;
    // The update emptied the old key's stored line (by trigger); the new
    // key's was stored with it.
    feed_lines::refresh(&transaction, &old.id)?;
    transaction.commit()?;
    let record = get(connection, &record.id)?;
    Ok(Created {
        record,
        key,
        old_expires_at: Some(old_expires_at),
    })
}

/// Why a key cannot be rotated now, if it cannot.
fn refuse_rotation(old: &KeyRecord, now: UnixNanos) -> Result<(), ApiError> {
    let id = &old.id;
    if let Some(successor) = &old.replaced_by {
        let until = old.expires_at.as_deref().unwrap_or("its expiry");
        return Err(ApiError::new(
            Kind::Conflict,
            format!(
                "key {id} was already rotated: {successor} replaces it and {id} works until {until} (rotate {successor} instead, or revoke {id} to end its grace now)"
            ),
        )
        .with("id", json!(id))
        .with("replaced_by", json!(successor)));
    }
    match state_word(old, now) {
        "active" => Ok(()),
        state => Err(ApiError::new(
            Kind::Conflict,
            format!("key {id} is {state}: rotation replaces an active key (POST /v1/keys makes a new one)"),
        )
        .with("id", json!(id))
        .with("state", json!(state))),
    }
}

/// The new key's prefix: the old key's (read from its hint), else the
/// default of its env, else the first the settings allow.
fn rotation_prefix(old: &KeyRecord, settings: &Settings) -> Result<String, ApiError> {
    let from_hint = old
        .hint
        .as_deref()
        .and_then(keygen::prefix_from_hint)
        .map(str::to_owned);
    let by_env = default_prefix(old.env.as_deref()).ok();
    let first_allowed = settings
        .key_prefixes()
        .and_then(|allowed| allowed.first().map(|p| (*p).to_owned()));
    [from_hint, by_env, first_allowed]
        .into_iter()
        .flatten()
        .find(|prefix| settings.allows_prefix(prefix) && keygen::check_prefix(prefix).is_ok())
        .ok_or_else(|| {
            ApiError::new(
                Kind::Conflict,
                format!("no prefix for the new key of {}: the settings' key_prefixes allow none this service can use", old.id),
            )
        })
}

/// The new key's expiry: none if the old key had none, else the old key's
/// lifetime again from now (a "keys live 90 days" policy survives rotation).
fn same_lifetime(old: &KeyRecord, now: UnixNanos) -> Option<String> {
    let expiry = old.expires_ns?;
    let lifetime = expiry.saturating_sub(old.created_at);
    (lifetime > 0).then(|| format_rfc3339(now.saturating_add(lifetime)))
}

/// The old name marked rotated once, whatever the number of rotations.
fn rotated_name(old: &KeyRecord) -> String {
    let name = old.name.clone().unwrap_or_else(|| old.id.clone());
    if name.ends_with(ROTATED_SUFFIX)
        || name.len() + ROTATED_SUFFIX.len() > apikey_core::config::MAX_LABEL_LEN
    {
        name
    } else {
        format!("{name}{ROTATED_SUFFIX}")
    }
}

#[cfg(test)]
mod tests;
