//! A stored key and the three ways it is shown: to the management API
//! (no hash, never a raw key), to a create or rotate answer (plus the hash
//! and the raw key, once), and to the filter (the §1 key object).

use apikey_core::key_hash::KeyHash;
use apikey_core::timestamp::{format_rfc3339, UnixNanos};
use rusqlite::Row;
use serde_json::{json, Map, Value};

/// The columns [`KeyRecord::from_row`] reads, in its order.
pub const COLUMNS: &str = "seq, id, sha256, tenant, scopes, plan, env, name, hint, expires_at, \
     expires_ns, revoked, revoked_at, rate_limits, created_at, replaced_by, replaces, last_used_at";

/// One row of `keys`.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// Insertion order: newest first is highest first; list cursors.
    pub seq: i64,
    /// The key's public name.
    pub id: String,
    /// SHA-256 of the raw key.
    pub sha256: KeyHash,
    /// Owning tenant.
    pub tenant: String,
    /// Held scope patterns (a JSON array).
    pub scopes: Value,
    /// Plan name.
    pub plan: Option<String>,
    /// Environment label.
    pub env: Option<String>,
    /// Label for people.
    pub name: Option<String>,
    /// Prefix, first three and last four characters.
    pub hint: Option<String>,
    /// RFC 3339 expiry, as given.
    pub expires_at: Option<String>,
    /// The expiry as nanoseconds (for the tenant cap).
    pub expires_ns: Option<UnixNanos>,
    /// Revoked keys are refused at once and kept for audit.
    pub revoked: bool,
    /// When it was revoked through the API.
    pub revoked_at: Option<UnixNanos>,
    /// The key's own limits (a JSON object).
    pub rate_limits: Option<Value>,
    /// When it was made (or the `created_at` it was imported with).
    pub created_at: UnixNanos,
    /// The key a rotation made to replace this one.
    pub replaced_by: Option<String>,
    /// The key this one replaced.
    pub replaces: Option<String>,
    /// The latest use gateways reported (contract §8.4, [`crate::usage`]);
    /// `None` until one did.
    pub last_used_at: Option<UnixNanos>,
}

/// `active`, `revoked` or `expired`, as the CLI's `list` says it.
pub fn state_word(record: &KeyRecord, now: UnixNanos) -> &'static str {
    if record.revoked {
        "revoked"
    } else if record.expires_ns.is_some_and(|expiry| expiry <= now) {
        "expired"
    } else {
        "active"
    }
}

impl KeyRecord {
    /// Reads a row selected with [`COLUMNS`].
    pub fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        let hash: Vec<u8> = row.get(2)?;
        let hash: [u8; 32] = hash.try_into().map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Blob,
                "a sha256 that is not 32 bytes".into(),
            )
        })?;
        let json = |index: usize, text: Option<String>| -> rusqlite::Result<Option<Value>> {
            text.map(|text| {
                serde_json::from_str(&text).map_err(|error| {
                    rusqlite::Error::FromSqlConversionFailure(
                        index,
                        rusqlite::types::Type::Text,
                        Box::new(error),
                    )
                })
            })
            .transpose()
        };
        Ok(Self {
            seq: row.get(0)?,
            id: row.get(1)?,
            sha256: KeyHash::from_bytes(hash),
            tenant: row.get(3)?,
            scopes: json(4, row.get(4)?)?.unwrap_or_else(|| json!([])),
            plan: row.get(5)?,
            env: row.get(6)?,
            name: row.get(7)?,
            hint: row.get(8)?,
            expires_at: row.get(9)?,
            expires_ns: row.get(10)?,
            revoked: row.get(11)?,
            revoked_at: row.get(12)?,
            rate_limits: json(13, row.get(13)?)?,
            created_at: row.get(14)?,
            replaced_by: row.get(15)?,
            replaces: row.get(16)?,
            last_used_at: row.get(17)?,
        })
    }

    /// The record as the management API shows it: every field, absent ones
    /// as `null` (`last_used_at` too, until a gateway reports a use), with
    /// `hint` and without `sha256`.
    pub fn public(&self, now: UnixNanos) -> Map<String, Value> {
        let time = |nanos: Option<UnixNanos>| nanos.map(format_rfc3339);
        let mut map = Map::new();
        map.insert("id".to_owned(), json!(self.id));
        map.insert("tenant".to_owned(), json!(self.tenant));
        map.insert("name".to_owned(), json!(self.name));
        map.insert("scopes".to_owned(), self.scopes.clone());
        map.insert("plan".to_owned(), json!(self.plan));
        map.insert("env".to_owned(), json!(self.env));
        map.insert("hint".to_owned(), json!(self.hint));
        map.insert("expires_at".to_owned(), json!(self.expires_at));
        map.insert("revoked".to_owned(), json!(self.revoked));
        map.insert("revoked_at".to_owned(), json!(time(self.revoked_at)));
        map.insert(
            "rate_limits".to_owned(),
            self.rate_limits.clone().unwrap_or(Value::Null),
        );
        map.insert(
            "created_at".to_owned(),
            json!(format_rfc3339(self.created_at)),
        );
        map.insert("replaces".to_owned(), json!(self.replaces));
        map.insert("replaced_by".to_owned(), json!(self.replaced_by));
        map.insert("state".to_owned(), json!(state_word(self, now)));
        map.insert("last_used_at".to_owned(), json!(time(self.last_used_at)));
        map
    }

    /// The §1 key object the filter reads (with `sha256`, `created_at`
    /// and `replaced_by`, which the validator accepts; absent fields left
    /// out).
    pub fn filter_object(&self) -> Value {
        let mut map = Map::new();
        map.insert("id".to_owned(), json!(self.id));
        map.insert("sha256".to_owned(), json!(self.sha256.to_hex()));
        map.insert("tenant".to_owned(), json!(self.tenant));
        map.insert("scopes".to_owned(), self.scopes.clone());
        let optional = |map: &mut Map<String, Value>, name: &str, value: &Option<String>| {
            if let Some(value) = value {
                map.insert(name.to_owned(), json!(value));
            }
        };
        optional(&mut map, "plan", &self.plan);
        optional(&mut map, "env", &self.env);
        optional(&mut map, "expires_at", &self.expires_at);
        if self.revoked {
            map.insert("revoked".to_owned(), json!(true));
        }
        optional(&mut map, "name", &self.name);
        optional(&mut map, "hint", &self.hint);
        if let Some(limits) = &self.rate_limits {
            map.insert("rate_limits".to_owned(), limits.clone());
        }
        map.insert(
            "created_at".to_owned(),
            json!(format_rfc3339(self.created_at)),
        );
        if let Some(successor) = &self.replaced_by {
            map.insert("replaced_by".to_owned(), json!(successor));
        }
        Value::Object(map)
    }
}
