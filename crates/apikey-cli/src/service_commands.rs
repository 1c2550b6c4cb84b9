//! The commands on the key service's data: on its database (`--db`) or
//! through a running service (`--server`), and `serve` itself.
//!
//! Both ways go through a [`Backend`] that answers with the API's bodies,
//! so `create`, `list`, `show`, `revoke`, `rotate`, `import` and `settings`
//! print the same thing either way. A new key is printed once, alone on a
//! line (or in the `--json` body), exactly as with a state file. With
//! `--db`, `render` and `validate` read the whole configuration the
//! database describes, and `--ecds-dir` rewrites the ECDS file after each
//! change, as it does for a state file (for small deployments; large
//! tables belong in the service, §8). `import-state` moves a state file
//! into a new database.

use std::io::Read;
use std::path::Path;

use apikey_core::config::Config;
use apikey_service::keys::ListQuery;
use apikey_service::server::{self, Options};
use apikey_service::settings::{Settings, MAX_KEYS_FIELD};
use apikey_service::{db, http::Limits, import, settings_store};
use serde_json::{json, Map, Value};

use crate::args::{Command, CreateArgs, Globals, Invocation, ServeArgs, Store, TokenSource};
use crate::backend::{Backend, Database, Server};
use crate::commands::{publish, render_state, report, say, table, Io};
use crate::error::{refused, refused_as, usage, CliError, Code};
use crate::keygen;
use crate::state::{KeyRow, KeyStatus, State};

/// Runs a command on the database or the server the globals name.
pub fn run(invocation: Invocation, io: &mut Io<'_>) -> Result<(), CliError> {
    let globals = &invocation.globals;
    if globals.max_keys_given && !matches!(invocation.command, Command::ImportState { .. }) {
        return Err(usage(
            "--max-keys-per-tenant is the state file's limit: with --db or --server the cap is settings.max_keys_per_tenant (apikey settings put)",
        ));
    }
    match (&globals.store, invocation.command) {
        (Store::Database(path), Command::Serve(serve_args)) => serve(globals, path, serve_args),
        (_, Command::Serve(_)) => Err(usage("apikey serve needs the database: --db PATH")),
        (Store::Database(path), Command::ImportState { file }) => {
            import_state(globals, path, &file, io)
        }
        (_, Command::ImportState { .. }) => Err(usage(
            "import-state fills a new database: pass --db PATH (then apikey serve --db PATH serves it)",
        )),
        (Store::Database(path), Command::Validate) => validate(path, io, globals),
        (Store::Database(path), Command::Render { target, out }) => {
            let state = database_state(&Database::open(path, io.now)?)?;
            render_state(globals, &state, &target, out.as_deref(), io)
        }
        (Store::Server(_), Command::Validate | Command::Render { .. }) => Err(usage(
            "render and validate need the whole table, hashes included, which the API never returns: run them with --db on the service's database",
        )),
        (_, Command::Init(_)) => Err(usage(
            "init makes a state file; with --db or --server, apikey settings put FILE sets plans, rules and options",
        )),
        (
            _,
            Command::Rotate {
                prefix: Some(_), ..
            }
            | Command::Rotate {
                expiry: Some(_), ..
            },
        ) => Err(usage(
            "with --db or --server, rotate takes only --grace: the new key keeps the old key's prefix, and its lifetime again from now",
        )),
        (_, Command::Update { .. } | Command::Delete { .. }) => Err(usage(
            "update and delete change a state file; the key service keeps every key for audit: revoke it, or rotate it, or create a new one",
        )),
        (store, command) => {
            let mut backend = open_backend(globals, store, io)?;
            let changed = on_backend(globals, backend.as_mut(), command, io)?;
            if changed {
                if let (Store::Database(path), Some(_)) = (store, &globals.ecds_dir) {
                    drop(backend);
                    let state = database_state(&Database::open(path, io.now)?)?;
                    publish(globals, &state)?;
                }
            }
            Ok(())
        }
    }
}

fn open_backend(
    globals: &Globals,
    store: &Store,
    io: &Io<'_>,
) -> Result<Box<dyn Backend>, CliError> {
    match store {
        Store::Database(path) => Ok(Box::new(Database::open(path, io.now)?)),
        Store::Server(url) => Ok(Box::new(Server::new(url, &admin_token(globals)?))),
        Store::StateFile => Err(usage("no database or server named")),
    }
}

/// The admin token: `--admin-token-file`'s content (trimmed), else
/// `APIKEY_ADMIN_TOKEN`.
fn admin_token(globals: &Globals) -> Result<String, CliError> {
    match &globals.admin_token {
        Some(TokenSource::File(path)) => std::fs::read_to_string(path)
            .map(|text| text.trim().to_owned())
            .map_err(|error| {
                refused_as(
                    Code::IoError,
                    format!("--admin-token-file {}: {error}", path.display()),
                )
            }),
        Some(TokenSource::Value(token)) => Ok(token.trim().to_owned()),
        None => Err(usage(
            "--server needs the admin token: set APIKEY_ADMIN_TOKEN or pass --admin-token-file FILE",
        )),
    }
}

/// Runs one command on the backend; whether it changed anything.
fn on_backend(
    globals: &Globals,
    backend: &mut dyn Backend,
    command: Command,
    io: &mut Io<'_>,
) -> Result<bool, CliError> {
    match command {
        Command::Create(create_args) => {
            let body = backend.create(create_fields(create_args, io)?)?;
            show_new_key(globals, io, &body, "created")?;
            Ok(true)
        }
        Command::List {
            tenant,
            limit,
            cursor,
        } => {
            list(globals, backend, tenant, limit, cursor, io)?;
            Ok(false)
        }
        Command::Show { id } => {
            let record = backend.get(&id)?;
            print_record(globals, io, &record)?;
            Ok(false)
        }
        Command::Revoke { id } => {
            let record = backend.revoke(&id)?;
            report(globals, io, &format!("revoked {id}"), record)?;
            Ok(true)
        }
        Command::Rotate { id, grace, .. } => {
            let seconds = grace / crate::duration::SECOND_NANOS;
            let body = backend.rotate(&id, json_object(json!({"grace_seconds": seconds})))?;
            show_new_key(globals, io, &body, "rotated")?;
            Ok(true)
        }
        Command::Import { file } => {
            let source: Box<dyn Read + Send> = if file == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(
                    std::fs::File::open(&file)
                        .map_err(|error| refused_as(Code::IoError, format!("{file}: {error}")))?,
                )
            };
            let body = backend.import(source)?;
            let count = body.get("imported").and_then(Value::as_u64).unwrap_or(0);
            report(globals, io, &format!("imported {count} keys"), body)?;
            Ok(true)
        }
        Command::SettingsGet => {
            let settings = backend.settings()?;
            pretty(io, &settings)?;
            Ok(false)
        }
        Command::SettingsPut { file } => {
            let bytes = read_input(&file)?;
            let settings = backend.put_settings(&bytes)?;
            report(globals, io, "settings stored", settings)?;
            Ok(true)
        }
        _ => Err(usage("this command does not work with --db or --server")),
    }
}

/// `create`'s options as the fields of `POST /v1/keys`.
fn create_fields(create_args: CreateArgs, io: &Io<'_>) -> Result<Map<String, Value>, CliError> {
    let tenant_in_key = create_args
        .tenant_prefix
        .then_some(create_args.tenant.as_str());
    let prefix = keygen::choose_prefix(
        create_args.prefix.as_deref(),
        tenant_in_key,
        Some(&create_args.env),
    )
    .map_err(usage)?;
    let mut fields = Map::new();
    fields.insert("tenant".to_owned(), json!(create_args.tenant));
    fields.insert("name".to_owned(), json!(create_args.name));
    fields.insert("scopes".to_owned(), json!(create_args.scopes));
    if let Some(plan) = create_args.plan {
        fields.insert("plan".to_owned(), json!(plan));
    }
    fields.insert("env".to_owned(), json!(create_args.env));
    if let Some(expires_at) = create_args.expiry.resolve(io.now)? {
        fields.insert("expires_at".to_owned(), json!(expires_at));
    }
    fields.insert("prefix".to_owned(), json!(prefix));
    Ok(fields)
}

fn json_object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Prints a new key once: alone on stdout (or the whole `--json` body),
/// and a line for people on stderr.
fn show_new_key(
    globals: &Globals,
    io: &mut Io<'_>,
    body: &Value,
    done: &str,
) -> Result<(), CliError> {
    let text = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or("");
    if globals.json {
        say(io.out, &body.to_string())?;
    } else {
        say(io.out, text("key"))?;
    }
    let replaces = match body.get("replaces").and_then(Value::as_str) {
        Some(old) => format!(" replacing {old}"),
        None => String::new(),
    };
    say(
        io.err,
        &format!(
            "{done} {} ({}){replaces}. The key is shown once: store it now; only its SHA-256 is kept.",
            text("id"),
            text("hint")
        ),
    )
}

/// `list`: one page with `--limit`/`--cursor`, else every page.
fn list(
    globals: &Globals,
    backend: &mut dyn Backend,
    tenant: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let one_page = limit.is_some() || cursor.is_some();
    let mut query = list_query(tenant.as_deref(), limit, cursor.as_deref())?;
    let mut records: Vec<Value> = Vec::new();
    let next = loop {
        let page = backend.list(&query)?;
        if let Some(keys) = page.get("keys").and_then(Value::as_array) {
            records.extend(keys.iter().cloned());
        }
        let next = page
            .get("next_cursor")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match (&next, one_page) {
            (Some(cursor), false) => {
                query = list_query(tenant.as_deref(), limit, Some(cursor))?;
            }
            _ => break next,
        }
    };
    if globals.json {
        let value = if one_page {
            json!({"keys": records, "next_cursor": next})
        } else {
            Value::Array(records)
        };
        return pretty(io, &value);
    }
    let rows: Vec<KeyRow> = records.iter().map(row).collect();
    say(io.out, &table(&rows))?;
    if let Some(next) = next {
        say(io.err, &format!("more: apikey list --cursor {next}"))?;
    }
    Ok(())
}

fn list_query(
    tenant: Option<&str>,
    limit: Option<usize>,
    cursor: Option<&str>,
) -> Result<ListQuery, CliError> {
    let mut params = form_urlencoded::Serializer::new(String::new());
    params.append_pair(
        "limit",
        &limit.unwrap_or(apikey_service::keys::MAX_PAGE).to_string(),
    );
    if let Some(tenant) = tenant {
        params.append_pair("tenant", tenant);
    }
    if let Some(cursor) = cursor {
        params.append_pair("cursor", cursor);
    }
    ListQuery::parse(Some(&params.finish())).map_err(|error| usage(error.message))
}

/// A record of the API as a row of the `list` table.
fn row(record: &Value) -> KeyRow {
    let text = |name: &str| record.get(name).and_then(Value::as_str).map(str::to_owned);
    KeyRow {
        id: text("id").unwrap_or_default(),
        name: text("name"),
        tenant: text("tenant").unwrap_or_default(),
        scopes: record
            .get("scopes")
            .and_then(Value::as_array)
            .map(|scopes| {
                scopes
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        plan: text("plan"),
        env: text("env"),
        hint: text("hint"),
        created_at: text("created_at"),
        expires_at: text("expires_at"),
        state: match text("state").as_deref() {
            Some("revoked") => KeyStatus::Revoked,
            Some("expired") => KeyStatus::Expired,
            _ => KeyStatus::Active,
        },
        replaced_by: text("replaced_by"),
    }
}

/// `show`: the record as `field: value` lines, or pretty JSON.
fn print_record(globals: &Globals, io: &mut Io<'_>, record: &Value) -> Result<(), CliError> {
    if globals.json {
        return pretty(io, record);
    }
    let Some(fields) = record.as_object() else {
        return pretty(io, record);
    };
    let width = fields.keys().map(String::len).max().unwrap_or(0);
    let lines: Vec<String> = fields
        .iter()
        .map(|(name, value)| {
            let shown = match value {
                Value::String(text) => text.clone(),
                Value::Null => "-".to_owned(),
                other => other.to_string(),
            };
            format!("{name:width$}  {shown}")
        })
        .collect();
    say(io.out, &lines.join("\n"))
}

fn pretty(io: &mut Io<'_>, value: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|error| refused(error.to_string()))?;
    say(io.out, &text)
}

fn read_input(file: &str) -> Result<Vec<u8>, CliError> {
    let mut bytes = Vec::new();
    let result = if file == "-" {
        std::io::stdin().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut bytes).map(|_| ()))
    };
    result.map_err(|error| refused_as(Code::IoError, format!("{file}: {error}")))?;
    Ok(bytes)
}

/// The state a database describes (for the renderers and `--ecds-dir`).
fn database_state(database: &Database) -> Result<State, CliError> {
    let document = database.config_document()?;
    State::parse(&document).map_err(|reason| {
        refused_as(
            Code::InvalidState,
            format!("the database's configuration is invalid: {reason}"),
        )
    })
}

/// `validate` on a database: the whole configuration it describes, through
/// the filter's validator.
fn validate(path: &Path, io: &mut Io<'_>, globals: &Globals) -> Result<(), CliError> {
    let database = Database::open(path, io.now)?;
    let document = database.config_document()?;
    let config = Config::parse(&document)
        .map_err(|error| {
            refused_as(
                Code::InvalidState,
                format!(
                    "{} describes an invalid configuration: {error}",
                    path.display()
                ),
            )
        })?
        .ok_or_else(|| refused("the database describes no configuration"))?;
    let revoked = config.keys.iter().filter(|key| key.revoked).count();
    let expired = config
        .keys
        .iter()
        .filter(|key| !key.revoked && key.expires_at.is_some_and(|at| at <= io.now))
        .count();
    let active = config.keys.len() - revoked - expired;
    let (keys, plans) = (config.keys.len(), config.plans.len());
    report(
        globals,
        io,
        &format!(
            "{} is valid: {keys} keys ({active} active, {revoked} revoked, {expired} expired), {plans} plans",
            path.display()
        ),
        json!({"valid": true, "keys": keys, "active": active, "revoked": revoked,
               "expired": expired, "plans": plans}),
    )
}

/// `apikey serve`.
fn serve(globals: &Globals, path: &Path, serve_args: ServeArgs) -> Result<(), CliError> {
    let Some(TokenSource::File(admin_token_file)) = &globals.admin_token else {
        return Err(usage(
            "apikey serve needs --admin-token-file FILE (a file, so the token is in no process list or environment)",
        ));
    };
    let options = Options {
        db: path.to_path_buf(),
        listen: serve_args.listen,
        admin_token_file: admin_token_file.clone(),
        feed_token_file: serve_args.feed_token_file,
        limits: Limits {
            body_bytes: serve_args.max_body_bytes,
            import_bytes: serve_args.max_import_bytes,
        },
        access_log: !serve_args.quiet,
    };
    server::run(&options).map_err(|message| refused_as(Code::IoError, message))
}

/// `import-state OLD.json --db NEW.db`: the state's settings and keys, in
/// one transaction, into a database that holds neither yet.
fn import_state(
    globals: &Globals,
    path: &Path,
    file: &Path,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let bytes = crate::store::read(file)?;
    let state = State::parse(&bytes).map_err(|reason| {
        refused_as(
            Code::InvalidState,
            format!("{} is invalid: {reason}", file.display()),
        )
    })?;
    let mut document = state.rest.clone();
    document.insert(MAX_KEYS_FIELD.to_owned(), json!(globals.max_keys));
    let settings = Settings::from_document(document)?;
    let lines: Vec<u8> = state
        .keys
        .iter()
        .map(|key| serde_json::to_string(key).map(|line| line + "\n"))
        .collect::<Result<String, _>>()
        .map_err(|error| refused(error.to_string()))?
        .into_bytes();
    let mut connection = db::open(path)?;
    let transaction = db::write(&mut connection).map_err(CliError::from)?;
    let (keys, has_settings): (i64, i64) = transaction
        .query_row(
            "SELECT (SELECT count(*) FROM keys), (SELECT count(*) FROM settings)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(|error| CliError::from(apikey_service::error::ApiError::from(error)))?;
    if keys > 0 || has_settings > 0 {
        return Err(refused_as(
            Code::AlreadyExists,
            format!(
                "{} already holds settings or keys: import-state fills a new database (apikey import adds keys to one)",
                path.display()
            ),
        ));
    }
    settings_store::put_in(&transaction, &settings, io.now)?;
    let imported = if state.keys.is_empty() {
        0
    } else {
        import::import_into(&transaction, &settings, &mut lines.as_slice(), io.now)?
    };
    transaction
        .commit()
        .map_err(|error| CliError::from(apikey_service::error::ApiError::from(error)))?;
    drop(connection);
    if globals.ecds_dir.is_some() {
        publish(globals, &database_state(&Database::open(path, io.now)?)?)?;
    }
    report(
        globals,
        io,
        &format!(
            "imported {} into {}: {imported} keys, max_keys_per_tenant {}",
            file.display(),
            path.display(),
            globals.max_keys
        ),
        json!({"imported": imported, "max_keys_per_tenant": globals.max_keys}),
    )
}
