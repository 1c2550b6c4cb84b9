//! The state file's document and the changes commands make to it.
//!
//! The state file IS the plugin configuration of contract §1, so the
//! filter and this tool read one document. [`State`] types only what the
//! tool changes (the keys' own fields); plans, rules and every other
//! top-level field, and any key field this tool does not know
//! (`rate_limits`), ride along untouched in `rest`. Nothing here reads the
//! clock or the random source itself: `now` and a [`RandomSource`] are
//! passed in, so every rule (the tenant limit, rotation never extending an
//! expiry, `active` / `revoked` / `expired`) is tested as a pure function.
//! The whole document is validated by the core's `Config::parse` when read
//! and again before it is written ([`State::to_checked_bytes`]).

use apikey_core::config::{Config, ConfigError};
use apikey_core::key_hash::KeyHash;
use apikey_core::timestamp::{format_rfc3339, parse_rfc3339, UnixNanos};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{refused, refused_as, CliError, Code};
use crate::keygen::{self, RandomSource, SecretKey};

/// The longest `name` the validator accepts.
const MAX_NAME_BYTES: usize = apikey_core::config::MAX_LABEL_LEN;
/// What `rotate` appends to the new key's name.
const ROTATED_SUFFIX: &str = " (rotated)";

/// One entry of `keys[]`, in the contract's field order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// Public name of the key (`key_` and 8 base62 characters when made here).
    pub id: String,
    /// Hex SHA-256 of the raw key: the only form the key is kept in.
    pub sha256: String,
    /// Owning tenant.
    pub tenant: String,
    /// Held scope patterns.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Plan name (a key of `plans`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Environment label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// RFC 3339 instant from which the key no longer works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Revoked keys are refused at once.
    #[serde(default)]
    pub revoked: bool,
    /// A label for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Prefix, first three and last four characters of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// When the key was made (the CLI's extension field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// The key a rotation made to replace this one (the CLI's extension
    /// field): a key that has it is in, or past, its grace period and is
    /// not rotated again. Absent in state files written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    /// Fields this tool does not manage (`rate_limits`), kept as they are.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A key's state, as `list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Works.
    Active,
    /// `revoked: true`.
    Revoked,
    /// `expires_at` has passed.
    Expired,
}

impl KeyStatus {
    /// The word `list` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

impl KeyEntry {
    /// The expiry as nanoseconds (the state was validated, so it parses).
    pub fn expiry(&self) -> Option<UnixNanos> {
        self.expires_at
            .as_deref()
            .and_then(|text| parse_rfc3339(text).ok())
    }

    /// Revoked beats expired beats active; expired from the instant
    /// `expires_at` names (contract §3).
    pub fn status(&self, now: UnixNanos) -> KeyStatus {
        if self.revoked {
            KeyStatus::Revoked
        } else if self.expiry().is_some_and(|expiry| expiry <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }
}

/// The whole state document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The key table.
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
    /// `plans`, `rules`, `schemes`, `key_prefixes` and the rest, untouched.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
    /// The key whose fields this command's options set (`create`,
    /// `update`): a refusal of the validator about it names the option and
    /// the value typed (`--plan pro: no such plan`), not `keys[2].plan`.
    #[serde(skip)]
    pub typed_key: Option<String>,
}

/// What an expiry option asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// `--expires <RFC 3339>`: the text as given and its instant.
    At(String, UnixNanos),
    /// `--expires-in <duration>`: this long from now.
    In(i64),
    /// `--no-expiry`.
    Never,
}

impl Expiry {
    /// The `expires_at` to store; refuses an instant already past, which
    /// would make a key that never works.
    pub fn resolve(&self, now: UnixNanos) -> Result<Option<String>, CliError> {
        let (text, at) = match self {
            Self::Never => return Ok(None),
            Self::At(text, at) => (text.clone(), *at),
            Self::In(nanos) => {
                let at = now
                    .checked_add(*nanos)
                    .ok_or_else(|| refused("the expiry is too far in the future (after 2262)"))?;
                (format_rfc3339(at), at)
            }
        };
        if at <= now {
            return Err(refused(format!(
                "expiry {text} is not in the future (now is {})",
                format_rfc3339(now)
            )));
        }
        Ok(Some(text))
    }
}

/// A key to make with `create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    /// Owning tenant.
    pub tenant: String,
    /// Held scopes.
    pub scopes: Vec<String>,
    /// Plan name.
    pub plan: Option<String>,
    /// Environment label.
    pub env: Option<String>,
    /// Label for people.
    pub name: String,
    /// When it stops working.
    pub expiry: Expiry,
    /// The key's prefix (`sk_live_`, `sydx_acme_`), already checked.
    pub prefix: String,
}

/// A key just made: shown once, then only its hash remains.
#[derive(Debug)]
pub struct Issued {
    /// Its id.
    pub id: String,
    /// The raw key.
    pub key: SecretKey,
    /// Its hint.
    pub hint: String,
}

/// What `rotate` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// How long the old key keeps working.
    pub grace: i64,
    /// The new key's prefix; `None` = the old key's (from its hint).
    pub prefix: Option<String>,
    /// The new key's expiry; `None` = the old key's lifetime again.
    pub expiry: Option<Expiry>,
}

/// The outcome of `rotate`.
#[derive(Debug)]
pub struct Rotated {
    /// The new key.
    pub issued: Issued,
    /// The old key's `expires_at` after the rotation.
    pub old_expires_at: String,
}

/// What `update` changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUpdate {
    /// New scopes.
    pub scopes: Option<Vec<String>>,
    /// New plan (`Some(None)`: no plan).
    pub plan: Option<Option<String>>,
    /// New expiry.
    pub expiry: Option<Expiry>,
    /// New name.
    pub name: Option<String>,
    /// New environment label.
    pub env: Option<String>,
}

/// A row of `list`: everything about a key but the key and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRow {
    /// Id.
    pub id: String,
    /// Name.
    pub name: Option<String>,
    /// Tenant.
    pub tenant: String,
    /// Held scopes.
    pub scopes: Vec<String>,
    /// Plan.
    pub plan: Option<String>,
    /// Environment.
    pub env: Option<String>,
    /// Hint.
    pub hint: Option<String>,
    /// Created.
    pub created_at: Option<String>,
    /// Expiry.
    pub expires_at: Option<String>,
    /// active, revoked or expired.
    pub state: KeyStatus,
    /// The key that replaced it, when it was rotated.
    pub replaced_by: Option<String>,
}

impl State {
    /// An empty state: no keys, and whatever `rest` holds (plans, rules…).
    pub fn new(rest: Map<String, Value>) -> Self {
        Self {
            keys: Vec::new(),
            rest,
            typed_key: None,
        }
    }

    /// Reads a state file's bytes, refusing anything the core validator
    /// refuses (naming the field), an empty file and a non-object.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        match Config::parse(bytes) {
            Err(error) => return Err(error.to_string()),
            Ok(None) => return Err("is empty (apikey init makes a state file)".to_owned()),
            Ok(Some(_)) => {}
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
        if !value.is_object() {
            return Err("must be a JSON object".to_owned());
        }
        serde_json::from_value(value).map_err(|error| error.to_string())
    }

    /// The document as pretty JSON (the state file's form), after checking
    /// the whole of it with the core validator: what the filter would
    /// refuse is never written.
    pub fn to_checked_bytes(&self) -> Result<Vec<u8>, CliError> {
        let mut bytes = serde_json::to_vec_pretty(self)
            .map_err(|error| refused(format!("cannot serialise the state: {error}")))?;
        bytes.push(b'\n');
        match Config::parse(&bytes) {
            Ok(_) => Ok(bytes),
            Err(error) => Err(refused_as(Code::InvalidChange, self.explain(&error))),
        }
    }

    /// A refusal of the validator in the terms the operator used: about
    /// the key the options set, the option and the value typed; otherwise
    /// the field as the validator names it.
    fn explain(&self, error: &ConfigError) -> String {
        let typed = self.typed_key.as_deref().and_then(|id| {
            let index = self.keys.iter().position(|key| key.id == id)?;
            let key = self.keys.get(index)?;
            let field = error.field.strip_prefix(&format!("keys[{index}]."))?;
            Some((key, field))
        });
        let Some((key, field)) = typed else {
            return format!("refused: the result would be an invalid configuration: {error}");
        };
        let reason = &error.reason;
        let option = |flag: &str, value: Option<&str>| match value {
            Some(value) => format!("{flag} {}: {reason}", shown(value)),
            None => format!("{flag}: {reason}"),
        };
        match field {
            "plan" => {
                let plans: Vec<&str> = self
                    .rest
                    .get("plans")
                    .and_then(Value::as_object)
                    .map(|plans| plans.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let known = if plans.is_empty() {
                    "the state defines no plans: apikey init --plans FILE sets them".to_owned()
                } else {
                    format!("plans: {}", plans.join(", "))
                };
                format!(
                    "--plan {}: no such plan ({known})",
                    shown(key.plan.as_deref().unwrap_or(""))
                )
            }
            "tenant" => option("--tenant", Some(&key.tenant)),
            "env" => option("--env", key.env.as_deref()),
            "name" => option("--name", key.name.as_deref()),
            "expires_at" => option("--expires", key.expires_at.as_deref()),
            scope if scope.starts_with("scopes") => {
                let typed = scope
                    .strip_prefix("scopes[")
                    .and_then(|rest| rest.strip_suffix(']'))
                    .and_then(|index| index.parse::<usize>().ok())
                    .and_then(|index| key.scopes.get(index));
                option("--scopes", typed.map(String::as_str))
            }
            other => format!("the key's {other}: {reason}"),
        }
    }

    /// The document as compact JSON, the form pushed to Envoy.
    pub fn to_compact(&self) -> Result<String, CliError> {
        serde_json::to_string(self)
            .map_err(|error| refused(format!("cannot serialise the state: {error}")))
    }

    /// The key with this id.
    pub fn key(&self, id: &str) -> Result<&KeyEntry, CliError> {
        self.keys
            .iter()
            .find(|key| key.id == id)
            .ok_or_else(|| unknown_id(id))
    }

    fn key_mut(&mut self, id: &str) -> Result<&mut KeyEntry, CliError> {
        self.keys
            .iter_mut()
            .find(|key| key.id == id)
            .ok_or_else(|| unknown_id(id))
    }

    /// Active keys of `tenant`, leaving out the key `except`.
    pub fn active_keys(&self, tenant: &str, now: UnixNanos, except: Option<&str>) -> usize {
        self.keys
            .iter()
            .filter(|key| key.tenant == tenant && Some(key.id.as_str()) != except)
            .filter(|key| key.status(now) == KeyStatus::Active)
            .count()
    }

    /// `key_prefixes`, when the configuration restricts them.
    fn key_prefixes(&self) -> Option<Vec<&str>> {
        let list = self.rest.get("key_prefixes")?.as_array()?;
        Some(list.iter().filter_map(Value::as_str).collect())
    }

    /// Refuses a prefix the filter's `key_prefixes` would refuse: such a key
    /// could never be used.
    fn check_prefix_allowed(&self, prefix: &str) -> Result<(), CliError> {
        match self.key_prefixes() {
            Some(allowed) if !allowed.iter().any(|p| prefix.starts_with(p)) => Err(refused(
                format!(
                    "keys starting {prefix:?} would be refused as malformed: key_prefixes allows only {allowed:?} (pass --prefix)"
                ),
            )),
            _ => Ok(()),
        }
    }

    fn check_limit(
        &self,
        tenant: &str,
        now: UnixNanos,
        except: Option<&str>,
        max_keys: usize,
    ) -> Result<(), CliError> {
        let active = self.active_keys(tenant, now, except);
        if active >= max_keys {
            return Err(refused_as(Code::LimitReached, format!(
                "tenant {tenant:?} already has {active} active keys, the limit of {max_keys}: revoke or delete one first (or raise --max-keys-per-tenant)"
            )));
        }
        Ok(())
    }

    /// Makes a key: a fresh id and key, only the hash and hint stored.
    /// Refused when the tenant already has `max_keys` active keys.
    pub fn create(
        &mut self,
        new: NewKey,
        now: UnixNanos,
        max_keys: usize,
        random: &mut dyn RandomSource,
    ) -> Result<Issued, CliError> {
        self.check_limit(&new.tenant, now, None, max_keys)?;
        self.check_prefix_allowed(&new.prefix)?;
        let expires_at = new.expiry.resolve(now)?;
        let issued = self.issue(&new.prefix, random)?;
        self.keys.push(KeyEntry {
            id: issued.id.clone(),
            sha256: KeyHash::of(issued.key.expose().as_bytes()).to_hex(),
            tenant: new.tenant,
            scopes: new.scopes,
            plan: new.plan,
            env: new.env,
            expires_at,
            revoked: false,
            name: Some(new.name),
            hint: Some(issued.hint.clone()),
            created_at: Some(format_rfc3339(now)),
            replaced_by: None,
            rest: Map::new(),
        });
        self.typed_key = Some(issued.id.clone());
        Ok(issued)
    }

    fn issue(&self, prefix: &str, random: &mut dyn RandomSource) -> Result<Issued, CliError> {
        let error = |e: keygen::RandomError| refused_as(Code::IoError, e.to_string());
        let id =
            keygen::new_id(random, |id| self.keys.iter().any(|key| key.id == id)).map_err(error)?;
        let key = keygen::new_key(random, prefix).map_err(error)?;
        let hint = keygen::hint(prefix, &key);
        Ok(Issued { id, key, hint })
    }

    /// Revokes a key; `Ok(false)` when it already was.
    pub fn revoke(&mut self, id: &str) -> Result<bool, CliError> {
        let key = self.key_mut(id)?;
        let changed = !key.revoked;
        key.revoked = true;
        Ok(changed)
    }

    /// Removes a key entirely.
    pub fn delete(&mut self, id: &str) -> Result<KeyEntry, CliError> {
        let index = self
            .keys
            .iter()
            .position(|key| key.id == id)
            .ok_or_else(|| unknown_id(id))?;
        Ok(self.keys.remove(index))
    }

    /// Replaces an active key: a new key with the same tenant, scopes, plan,
    /// env, limits and name (marked rotated); the old key keeps working for
    /// `grace`, never longer than it already would have, and records its
    /// successor in `replaced_by`. A key already rotated is refused: a
    /// second rotation would make a second successor while the first one
    /// is in use, and cut the grace the first one announced. The tenant
    /// limit does not apply: once the grace ends the count is what it was.
    pub fn rotate(
        &mut self,
        id: &str,
        rotation: Rotation,
        now: UnixNanos,
        random: &mut dyn RandomSource,
    ) -> Result<Rotated, CliError> {
        let old = self.key(id)?.clone();
        let status = old.status(now);
        if status != KeyStatus::Active {
            return Err(refused_as(
                Code::NotActive,
                format!(
                    "key {id} is {}: rotate replaces an active key (apikey create makes a new one)",
                    status.as_str()
                ),
            ));
        }
        if let Some(successor) = &old.replaced_by {
            let until = old.expires_at.as_deref().unwrap_or("its expiry");
            let next = if self.keys.iter().any(|key| key.id == *successor) {
                format!("rotate {successor} instead")
            } else {
                format!("{successor} was deleted since; apikey create makes a new key")
            };
            return Err(refused_as(Code::AlreadyRotated, format!(
                "key {id} was already rotated: {successor} replaces it and {id} works until {until} ({next}, or revoke {id} to end its grace now)"
            )));
        }
        let prefix = match rotation.prefix {
            Some(prefix) => prefix,
            None => old
                .hint
                .as_deref()
                .and_then(keygen::prefix_from_hint)
                .map(str::to_owned)
                .ok_or_else(|| {
                    refused(format!(
                        "the prefix of key {id} cannot be told from its hint: pass --prefix"
                    ))
                })?,
        };
        self.check_prefix_allowed(&prefix)?;
        let expires_at = match &rotation.expiry {
            Some(expiry) => expiry.resolve(now)?,
            None => same_lifetime(&old, now)?,
        };
        let grace_end = now.saturating_add(rotation.grace.max(0));
        let old_expires_at = match old.expiry() {
            Some(earlier) if earlier <= grace_end => old.expires_at.clone().unwrap_or_default(),
            _ => format_rfc3339(grace_end),
        };
        let issued = self.issue(&prefix, random)?;
        let new_entry = KeyEntry {
            id: issued.id.clone(),
            sha256: KeyHash::of(issued.key.expose().as_bytes()).to_hex(),
            expires_at,
            revoked: false,
            name: Some(rotated_name(&old)),
            hint: Some(issued.hint.clone()),
            created_at: Some(format_rfc3339(now)),
            replaced_by: None,
            ..old
        };
        let old_entry = self.key_mut(id)?;
        old_entry.expires_at = Some(old_expires_at.clone());
        old_entry.replaced_by = Some(issued.id.clone());
        self.keys.push(new_entry);
        Ok(Rotated {
            issued,
            old_expires_at,
        })
    }

    /// Changes a key's scopes, plan, expiry, name or env. A change that
    /// makes an expired key active again counts against the tenant limit.
    pub fn update(
        &mut self,
        id: &str,
        update: KeyUpdate,
        now: UnixNanos,
        max_keys: usize,
    ) -> Result<(), CliError> {
        let before = self.key(id)?.status(now);
        let expires_at = match &update.expiry {
            Some(expiry) => Some(expiry.resolve(now)?),
            None => None,
        };
        let key = self.key_mut(id)?;
        if let Some(scopes) = update.scopes {
            key.scopes = scopes;
        }
        if let Some(plan) = update.plan {
            key.plan = plan;
        }
        if let Some(expires_at) = expires_at {
            key.expires_at = expires_at;
        }
        if let Some(name) = update.name {
            key.name = Some(name);
        }
        if let Some(env) = update.env {
            key.env = Some(env);
        }
        let after = key.status(now);
        let tenant = key.tenant.clone();
        self.typed_key = Some(id.to_owned());
        if before != KeyStatus::Active && after == KeyStatus::Active {
            self.check_limit(&tenant, now, Some(id), max_keys)?;
        }
        Ok(())
    }

    /// The rows of `list`, in state order, optionally of one tenant.
    pub fn rows(&self, tenant: Option<&str>, now: UnixNanos) -> Vec<KeyRow> {
        self.keys
            .iter()
            .filter(|key| tenant.is_none_or(|tenant| key.tenant == tenant))
            .map(|key| KeyRow {
                id: key.id.clone(),
                name: key.name.clone(),
                tenant: key.tenant.clone(),
                scopes: key.scopes.clone(),
                plan: key.plan.clone(),
                env: key.env.clone(),
                hint: key.hint.clone(),
                created_at: key.created_at.clone(),
                expires_at: key.expires_at.clone(),
                state: key.status(now),
                replaced_by: key.replaced_by.clone(),
            })
            .collect()
    }
}

/// A value as typed, quoted only when it needs quotes to be read back
/// (spaces, quotes, control characters, nothing at all).
fn shown(value: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.:*/@+=~".contains(c);
    if !value.is_empty() && value.chars().all(plain) {
        value.to_owned()
    } else {
        format!("{value:?}")
    }
}

fn unknown_id(id: &str) -> CliError {
    refused_as(
        Code::NotFound,
        format!("no key with id {id:?} (apikey list shows them)"),
    )
}

/// The new key's expiry when rotate is given none: none if the old key had
/// none, else the old key's lifetime (`expires_at - created_at`) again from
/// now, so a "keys live 90 days" policy survives rotation.
fn same_lifetime(old: &KeyEntry, now: UnixNanos) -> Result<Option<String>, CliError> {
    let Some(expiry) = old.expiry() else {
        return Ok(None);
    };
    let created = old
        .created_at
        .as_deref()
        .and_then(|text| parse_rfc3339(text).ok());
    match created {
        Some(created) if created < expiry => Ok(Some(format_rfc3339(
            now.saturating_add(expiry.saturating_sub(created)),
        ))),
        _ => Err(refused(format!(
            "key {} has an expiry but no creation time to take its lifetime from: pass --expires, --expires-in or --no-expiry",
            old.id
        ))),
    }
}

/// The old name marked ` (rotated)` once, whatever the number of rotations.
fn rotated_name(old: &KeyEntry) -> String {
    let name = old.name.clone().unwrap_or_else(|| old.id.clone());
    if name.ends_with(ROTATED_SUFFIX) || name.len() + ROTATED_SUFFIX.len() > MAX_NAME_BYTES {
        name
    } else {
        format!("{name}{ROTATED_SUFFIX}")
    }
}

#[cfg(test)]
mod tests;
