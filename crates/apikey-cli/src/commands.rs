//! Runs a parsed command: the glue between the arguments, the state file,
//! the pure changes of [`crate::state`] and the renderers.
//!
//! Every mutating command goes through [`mutate`]: lock, read and validate
//! the state (an invalid state is refused by every command, naming the
//! field), change it, validate the whole result, write it atomically, then
//! write the ECDS file under the same lock so concurrent runs publish in
//! order. Writing the state is the commit point: a new key is printed only
//! after it was stored, and a failed ECDS write after it is reported
//! (exit code 1) without hiding the key that now exists. Raw keys go to
//! `out` once, alone on a line (or in the `--json` object); messages go to `err`.

use std::io::Write;
use std::path::Path;

use apikey_core::timestamp::UnixNanos;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::args::{self, Command, CreateArgs, Globals, InitArgs, Invocation, RenderTarget, Store};
use crate::error::{refused, refused_as, usage, CliError, Code};
use crate::keygen::{self, RandomSource};
use crate::render;
use crate::state::{Issued, KeyRow, KeyStatus, NewKey, Rotation, State};
use crate::store;

/// What a command needs from the world: the time, randomness and the two
/// output streams.
pub struct Io<'a> {
    /// The wall clock, read once per command.
    pub now: UnixNanos,
    /// The source of new keys and ids.
    pub random: &'a mut dyn RandomSource,
    /// Standard output: results (and a new key, once).
    pub out: &'a mut dyn Write,
    /// Standard error: messages for people.
    pub err: &'a mut dyn Write,
}

/// Runs one invocation.
pub fn run(invocation: Invocation, io: &mut Io<'_>) -> Result<(), CliError> {
    let globals = &invocation.globals;
    match invocation.command {
        Command::Completions { shell } => io
            .out
            .write_all(&args::completions(shell))
            .map_err(|error| refused_as(Code::IoError, format!("cannot write output: {error}"))),
        Command::Usage { log } => usage_report(globals, &log, io),
        _ if globals.store != Store::StateFile => crate::service_commands::run(invocation, io),
        Command::Serve(_)
        | Command::Show { .. }
        | Command::Import { .. }
        | Command::ImportState { .. }
        | Command::SettingsGet
        | Command::SettingsPut { .. } => Err(usage(
            "this command works on the key service's database or through the service: pass --db PATH or --server URL",
        )),
        Command::List {
            limit: Some(_), ..
        }
        | Command::List {
            cursor: Some(_), ..
        } => Err(usage(
            "--limit and --cursor page through a database or a service (--db or --server); a state file lists whole",
        )),
        Command::Init(init_args) => init(globals, init_args, io),
        Command::Create(create_args) => create(globals, create_args, io),
        Command::List { tenant, .. } => list(globals, tenant.as_deref(), io),
        Command::Revoke { id } => {
            let (changed, ecds) = mutate(globals, |state| state.revoke(&id))?;
            let message = if changed {
                format!("revoked {id}")
            } else {
                format!("{id} was already revoked")
            };
            report(globals, io, &message, json!({"id": id, "revoked": true}))?;
            ecds
        }
        Command::Delete { id } => {
            let (deleted, ecds) = mutate(globals, |state| state.delete(&id))?;
            report(
                globals,
                io,
                &format!("deleted {id} ({})", deleted.name.as_deref().unwrap_or("")),
                json!({"id": id, "deleted": true}),
            )?;
            ecds
        }
        Command::Rotate {
            id,
            grace,
            prefix,
            expiry,
        } => {
            if let Some(prefix) = &prefix {
                keygen::check_prefix(prefix).map_err(usage)?;
            }
            let rotation = Rotation {
                grace,
                prefix,
                expiry,
            };
            let now = io.now;
            let random = &mut *io.random;
            let (rotated, ecds) =
                mutate(globals, |state| state.rotate(&id, rotation, now, random))?;
            let issued = &rotated.issued;
            let mut extra = Map::new();
            extra.insert("replaces".to_owned(), json!(id));
            extra.insert("old_expires_at".to_owned(), json!(rotated.old_expires_at));
            show_key(globals, io, issued, extra)?;
            say(
                io.err,
                &format!(
                    "rotated {id} to {} ({}); {id} stops working at {}. The new key is shown once: store it now.",
                    issued.id, issued.hint, rotated.old_expires_at
                ),
            )?;
            ecds
        }
        Command::Update { id, update } => {
            let now = io.now;
            let max_keys = globals.max_keys;
            let (row, ecds) = mutate(globals, |state| {
                state.update(&id, update, now, max_keys)?;
                Ok(state.rows(None, now).into_iter().find(|row| row.id == id))
            })?;
            let value = serde_json::to_value(&row).map_err(|e| refused(e.to_string()))?;
            report(globals, io, &format!("updated {id}"), value)?;
            ecds
        }
        Command::Validate => validate(globals, io),
        Command::Render { target, out } => {
            let state = load(&globals.state)?;
            render_state(globals, &state, &target, out.as_deref(), io)
        }
    }
}

/// Locks, reads and validates the state, applies `change`, validates and
/// writes the result, and (with `--ecds-dir`) writes the ECDS file. The
/// second value is the ECDS outcome: the state is already written then.
fn mutate<T>(
    globals: &Globals,
    change: impl FnOnce(&mut State) -> Result<T, CliError>,
) -> Result<(T, Result<(), CliError>), CliError> {
    let _lock = store::lock(&globals.state)?;
    let mut state = load(&globals.state)?;
    let result = change(&mut state)?;
    let bytes = state.to_checked_bytes()?;
    store::write_atomic(&globals.state, &bytes, store::STATE_MODE)?;
    Ok((result, publish(globals, &state)))
}

/// Writes `<ecds-dir>/apikey.yaml` (or `apikey.pb`) when an ECDS directory
/// is set.
pub fn publish(globals: &Globals, state: &State) -> Result<(), CliError> {
    let Some(dir) = &globals.ecds_dir else {
        return Ok(());
    };
    let document = render::ecds_file(&state.to_compact()?, &globals.wasm, globals.ecds_format)
        .map_err(|error| refused(format!("cannot render the ECDS file: {error}")))?;
    store::write_atomic(
        &dir.join(globals.ecds_format.file_name()),
        &document,
        store::PUBLIC_MODE,
    )
    .map_err(|error| {
        refused_as(Code::IoError, format!(
            "the state was updated but the ECDS file was not: {error} (apikey render ecds --out … retries)"
        ))
    })
}

/// Reads and validates the state file.
fn load(path: &Path) -> Result<State, CliError> {
    let bytes = store::read(path)?;
    State::parse(&bytes).map_err(|reason| {
        refused_as(Code::InvalidState, format!(
            "refused: {} is invalid: {reason} (every command refuses an invalid state; fix the file)",
            path.display()
        ))
    })
}

fn init(globals: &Globals, init_args: InitArgs, io: &mut Io<'_>) -> Result<(), CliError> {
    let mut state = match &init_args.from {
        Some(path) => load(path)?,
        None => State::new(Map::new()),
    };
    if let Some(path) = &init_args.plans {
        let plans = read_json(path, "plans", Value::is_object)?;
        state.rest.insert("plans".to_owned(), plans);
    }
    state.rest.entry("plans").or_insert_with(|| json!({}));
    if let Some(path) = &init_args.rules {
        let rules = read_json(path, "rules", Value::is_array)?;
        state.rest.insert("rules".to_owned(), rules);
    }
    if let Some(schemes) = init_args.schemes {
        state.rest.insert("schemes".to_owned(), json!(schemes));
    }
    if let Some(prefixes) = init_args.key_prefixes {
        state
            .rest
            .insert("key_prefixes".to_owned(), json!(prefixes));
    }
    if init_args.require_https {
        state.rest.insert("require_https".to_owned(), json!(true));
    }
    if let Some(header) = init_args.trusted_https_header {
        state
            .rest
            .insert("trusted_https_header".to_owned(), json!(header));
    }
    if let Some(template) = init_args.error_doc_url {
        state
            .rest
            .insert("error_doc_url".to_owned(), json!(template));
    }
    let _lock = store::lock(&globals.state)?;
    if globals.state.exists() {
        return Err(refused_as(
            Code::AlreadyExists,
            format!(
                "{} already exists: init never overwrites a state file",
                globals.state.display()
            ),
        ));
    }
    let bytes = state.to_checked_bytes()?;
    store::write_atomic(&globals.state, &bytes, store::STATE_MODE)?;
    let ecds = publish(globals, &state);
    report(
        globals,
        io,
        &format!("created {}", globals.state.display()),
        json!({"state": globals.state.display().to_string()}),
    )?;
    ecds
}

/// Reads a JSON file that must hold a value of the right shape.
fn read_json(path: &Path, what: &str, shape: fn(&Value) -> bool) -> Result<Value, CliError> {
    let bytes = store::read(path)?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|error| refused(format!("{}: {error}", path.display())))?;
    if !shape(&value) {
        return Err(refused(format!(
            "{} must hold the {what} value itself ({})",
            path.display(),
            if what == "rules" {
                "an array"
            } else {
                "an object"
            }
        )));
    }
    Ok(value)
}

fn create(globals: &Globals, create_args: CreateArgs, io: &mut Io<'_>) -> Result<(), CliError> {
    let tenant_in_key = create_args
        .tenant_prefix
        .then_some(create_args.tenant.as_str());
    let prefix = keygen::choose_prefix(
        create_args.prefix.as_deref(),
        tenant_in_key,
        Some(&create_args.env),
    )
    .map_err(usage)?;
    let new = NewKey {
        tenant: create_args.tenant,
        scopes: create_args.scopes,
        plan: create_args.plan,
        env: Some(create_args.env),
        name: create_args.name,
        expiry: create_args.expiry,
        prefix,
    };
    let (now, max_keys) = (io.now, globals.max_keys);
    let random = &mut *io.random;
    let (issued, ecds) = mutate(globals, |state| state.create(new, now, max_keys, random))?;
    show_key(globals, io, &issued, Map::new())?;
    say(
        io.err,
        &format!(
            "created {} ({}). The key is shown once: store it now; only its SHA-256 is kept.",
            issued.id, issued.hint
        ),
    )?;
    ecds
}

/// The `--json` answer of `create` and `rotate`, `id` first.
#[derive(Serialize)]
struct ShownKey<'a> {
    id: &'a str,
    key: &'a str,
    hint: &'a str,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// Prints a new key: alone on a line, or as `{"id", "key", "hint", …}`.
fn show_key(
    globals: &Globals,
    io: &mut Io<'_>,
    issued: &Issued,
    extra: Map<String, Value>,
) -> Result<(), CliError> {
    if globals.json {
        let shown = ShownKey {
            id: &issued.id,
            key: issued.key.expose(),
            hint: &issued.hint,
            extra,
        };
        let text = serde_json::to_string(&shown).map_err(|e| refused(e.to_string()))?;
        say(io.out, &text)
    } else {
        say(io.out, issued.key.expose())
    }
}

/// `usage`: reads an access log (not the state file: it needs no lock).
fn usage_report(globals: &Globals, log: &str, io: &mut Io<'_>) -> Result<(), CliError> {
    let report = if log == "-" {
        crate::usage::summarise(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(log)
            .map_err(|e| refused_as(Code::IoError, format!("{log}: {e}")))?;
        crate::usage::summarise(std::io::BufReader::new(file))
    }
    .map_err(|e| refused_as(Code::IoError, format!("{log}: {e}")))?;
    if globals.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| refused(e.to_string()))?;
        return say(io.out, &text);
    }
    say(io.out, crate::usage::table(&report).trim_end())
}

fn list(globals: &Globals, tenant: Option<&str>, io: &mut Io<'_>) -> Result<(), CliError> {
    let state = load(&globals.state)?;
    let rows = state.rows(tenant, io.now);
    if globals.json {
        let text = serde_json::to_string_pretty(&rows).map_err(|e| refused(e.to_string()))?;
        return say(io.out, &text);
    }
    say(io.out, &table(&rows))
}

/// The human table of `list`.
pub fn table(rows: &[KeyRow]) -> String {
    let header = [
        "ID", "NAME", "TENANT", "SCOPES", "PLAN", "HINT", "CREATED", "EXPIRES", "STATE",
    ];
    let or_dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for row in rows {
        lines.push(vec![
            row.id.clone(),
            or_dash(&row.name),
            row.tenant.clone(),
            if row.scopes.is_empty() {
                "-".to_owned()
            } else {
                row.scopes.join(",")
            },
            or_dash(&row.plan),
            or_dash(&row.hint),
            or_dash(&row.created_at),
            row.expires_at.clone().unwrap_or_else(|| "never".to_owned()),
            row.state.as_str().to_owned(),
        ]);
    }
    let mut widths = vec![0usize; header.len()];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell}{}", " ".repeat(width - cell.chars().count())))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text.trim_end().to_owned()
}

fn validate(globals: &Globals, io: &mut Io<'_>) -> Result<(), CliError> {
    let state = load(&globals.state)?;
    let count = |status| {
        state
            .keys
            .iter()
            .filter(|key| key.status(io.now) == status)
            .count()
    };
    let (active, revoked, expired) = (
        count(KeyStatus::Active),
        count(KeyStatus::Revoked),
        count(KeyStatus::Expired),
    );
    let plans = state
        .rest
        .get("plans")
        .and_then(Value::as_object)
        .map_or(0, Map::len);
    let rules = state
        .rest
        .get("rules")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    report(
        globals,
        io,
        &format!(
            "{} is valid: {} keys ({active} active, {revoked} revoked, {expired} expired), {plans} plans, {rules} rules",
            globals.state.display(),
            state.keys.len()
        ),
        json!({"valid": true, "keys": state.keys.len(), "active": active, "revoked": revoked,
               "expired": expired, "plans": plans, "rules": rules}),
    )
}

/// Writes a deployment document of `state` (a state file's, or the one a
/// database describes).
pub fn render_state(
    globals: &Globals,
    state: &State,
    target: &RenderTarget,
    out: Option<&Path>,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let failed = |error: serde_json::Error| refused(format!("cannot render: {error}"));
    let bytes = match target {
        RenderTarget::Ecds => {
            render::ecds_file(&state.to_compact()?, &globals.wasm, globals.ecds_format)
                .map_err(failed)?
        }
        RenderTarget::Config => {
            let mut text = serde_json::to_string_pretty(state).map_err(failed)?;
            text.push('\n');
            text.into_bytes()
        }
        RenderTarget::Istio(options) => {
            if options.url == render::IstioOptions::default().url {
                say(
                    io.err,
                    "apikey: no --url (or APIKEY_WASM_URL): spec.url is a placeholder to replace with where Istio fetches the module",
                )?;
            }
            render::istio_wasm_plugin(state, options)
                .map_err(failed)?
                .into_bytes()
        }
    };
    match out {
        Some(path) => store::write_atomic(path, &bytes, store::PUBLIC_MODE),
        None => io
            .out
            .write_all(&bytes)
            .map_err(|error| refused_as(Code::IoError, format!("cannot write to stdout: {error}"))),
    }
}

/// A result line: the message, or with `--json` the object.
pub fn report(
    globals: &Globals,
    io: &mut Io<'_>,
    message: &str,
    object: Value,
) -> Result<(), CliError> {
    if globals.json {
        say(io.out, &object.to_string())
    } else {
        say(io.out, message)
    }
}

pub fn say(stream: &mut dyn Write, line: &str) -> Result<(), CliError> {
    writeln!(stream, "{line}")
        .map_err(|error| refused_as(Code::IoError, format!("cannot write output: {error}")))
}
