//! The commands on the key service's data: on its database (`--db`,
//! default `./apikey.db`) or through a running service (`--server`), and
//! `serve` itself.
//!
//! Both ways go through a [`Backend`] that answers with the API's bodies,
//! so `create`, `list`, `show`, `usage ID`, `revoke`, `rotate`, `import`
//! and `settings` print the same thing either way. A new key is printed once, alone on a
//! line (or in the `--json` body). With `--db`, `init` makes the database
//! and its settings, `render` and `validate` read the whole configuration
//! the database describes, and `--ecds-dir` rewrites the ECDS file after
//! each change (for small deployments; large tables belong in the service,
//! §8). `import-state` moves an old JSON state file into a new database.
//!
//! A database that does not exist is created only by the commands that
//! fill it (`init`, `import-state`, `settings put`) and by `serve`
//! (contract §8.1); any other command refuses it, so a mistyped path or
//! the wrong directory never leaves an empty database behind.

use std::io::Read;
use std::path::Path;

use apikey_core::config::Config;
use apikey_service::keys::ListQuery;
use apikey_service::server::{self, Options};
use apikey_service::settings::{Settings, MAX_KEYS_FIELD};
use apikey_service::{db, http::Limits, import, settings_store};
use rusqlite::Connection;
use serde_json::{json, Map, Value};

use crate::args::{
    Command, CreateArgs, Globals, InitArgs, Invocation, ServeArgs, Store, TokenSource,
};
use crate::backend::{Backend, Database, Server};
use crate::commands::{publish, render_document, report, say, table, Io};
use crate::error::{refused, refused_as, usage, CliError, Code};
use apikey_service::keygen;

/// Runs a command on the database or the server the globals name.
pub fn run(invocation: Invocation, io: &mut Io<'_>) -> Result<(), CliError> {
    let globals = &invocation.globals;
    if globals.max_keys_given
        && !matches!(
            invocation.command,
            Command::ImportState { .. } | Command::Init(_)
        )
    {
        return Err(usage(
            "--max-keys-per-tenant sets max_keys_per_tenant when init or import-state makes a database; afterwards change it with apikey settings put",
        ));
    }
    if let Store::Database(path) = &globals.store {
        let fills = matches!(
            invocation.command,
            Command::Init(_)
                | Command::ImportState { .. }
                | Command::SettingsPut { .. }
                | Command::Serve(_)
        );
        if !fills && !path.exists() {
            return Err(refused_as(
                Code::NoDatabase,
                format!(
                    "no database at {} (apikey init makes one, apikey import-state OLD.json moves a state file into one; --db or APIKEY_DB names another)",
                    path.display()
                ),
            ));
        }
    }
    match (&globals.store, invocation.command) {
        (Store::Database(path), Command::Serve(serve_args)) => serve(globals, path, serve_args),
        (_, Command::Serve(_)) => Err(usage(
            "apikey serve runs on the database: --db PATH, not --server",
        )),
        (Store::Database(path), Command::ImportState { file }) => {
            import_state(globals, path, &file, io)
        }
        (Store::Database(path), Command::Init(init_args)) => init(globals, path, init_args, io),
        (_, Command::ImportState { .. } | Command::Init(_)) => Err(usage(
            "init and import-state make a database: pass --db PATH (then apikey serve --db PATH serves it); through a running service, apikey settings put FILE sets the settings",
        )),
        (Store::Database(path), Command::Validate) => validate(path, io, globals),
        (Store::Database(path), Command::Render { target, out }) => {
            let document = Database::open(path, io.now)?.config_document()?;
            render_document(globals, &document, &target, out.as_deref(), io)
        }
        (Store::Server(_), Command::Validate | Command::Render { .. }) => Err(usage(
            "render and validate need the whole table, hashes included, which the API never returns: run them with --db on the service's database",
        )),
        (store, command) => {
            let mut backend = open_backend(globals, store, io)?;
            let changed = on_backend(globals, backend.as_mut(), command, io)?;
            if let (true, Store::Database(path)) = (changed, store) {
                drop(backend);
                publish(globals, path, io.now)?;
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
        Command::KeyUsage { id } => {
            key_usage(globals, backend, &id, io)?;
            Ok(false)
        }
        Command::Revoke { id } => {
            let record = backend.revoke(&id)?;
            report(globals, io, &format!("revoked {id}"), record)?;
            Ok(true)
        }
        Command::Rotate { id, grace } => {
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
        _ => Err(usage("this command does not work with --server")),
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
    say(io.out, &table(&records))?;
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

/// `usage ID`: the key's requests by UTC day (the API's answer with
/// `--json`), after a line with its last use.
fn key_usage(
    globals: &Globals,
    backend: &mut dyn Backend,
    id: &str,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let answer = backend.usage(id)?;
    if globals.json {
        return pretty(io, &answer);
    }
    let record = backend.get(id)?;
    let last_used = record
        .get("last_used_at")
        .and_then(Value::as_str)
        .unwrap_or("never");
    let days = answer
        .get("days")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut lines = vec![format!("{id}  last used {last_used}")];
    if days.is_empty() {
        lines.push("no requests reported".to_owned());
    } else {
        lines.push(format!("{:<10}  REQUESTS", "DAY"));
        for day in &days {
            let date = day.get("day").and_then(Value::as_str).unwrap_or("-");
            let count = day.get("count").and_then(Value::as_u64).unwrap_or(0);
            lines.push(format!("{date:<10}  {count}"));
        }
    }
    say(io.out, &lines.join("\n"))
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

/// `init`: a new database holding the settings the options describe
/// (never over settings or keys already there).
fn init(
    globals: &Globals,
    path: &Path,
    init_args: InitArgs,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let mut document = match &init_args.from {
        Some(from) => from_document(from)?,
        None => Map::new(),
    };
    if let Some(plans) = &init_args.plans {
        let plans = read_json(plans, "plans", Value::is_object)?;
        document.insert("plans".to_owned(), plans);
    }
    document.entry("plans").or_insert_with(|| json!({}));
    if let Some(rules) = &init_args.rules {
        let rules = read_json(rules, "rules", Value::is_array)?;
        document.insert("rules".to_owned(), rules);
    }
    if let Some(schemes) = init_args.schemes {
        document.insert("schemes".to_owned(), json!(schemes));
    }
    if let Some(prefixes) = init_args.key_prefixes {
        document.insert("key_prefixes".to_owned(), json!(prefixes));
    }
    if init_args.require_https {
        document.insert("require_https".to_owned(), json!(true));
    }
    if let Some(header) = init_args.trusted_https_header {
        document.insert("trusted_https_header".to_owned(), json!(header));
    }
    if let Some(template) = init_args.error_doc_url {
        document.insert("error_doc_url".to_owned(), json!(template));
    }
    if globals.max_keys_given || !document.contains_key(MAX_KEYS_FIELD) {
        document.insert(MAX_KEYS_FIELD.to_owned(), json!(globals.max_keys));
    }
    let settings = Settings::from_document(document)?;
    let mut connection = db::open(path)?;
    let transaction = db::write(&mut connection).map_err(CliError::from)?;
    refuse_filled(
        &transaction,
        path,
        "init never overwrites them (apikey settings put replaces the settings)",
    )?;
    settings_store::put_in(&transaction, &settings, io.now)?;
    transaction
        .commit()
        .map_err(|error| CliError::from(apikey_service::error::ApiError::from(error)))?;
    drop(connection);
    let ecds = publish(globals, path, io.now);
    report(
        globals,
        io,
        &format!("created {}", path.display()),
        json!({"db": path.display().to_string(), "settings": settings.document()}),
    )?;
    ecds
}

/// `init --from`: a §1 configuration's settings; one with keys is
/// `import-state`'s to move.
fn from_document(path: &Path) -> Result<Map<String, Value>, CliError> {
    let mut document = match read_json(path, "configuration", Value::is_object)? {
        Value::Object(document) => document,
        _ => Map::new(),
    };
    match document.remove("keys") {
        Some(Value::Array(keys)) if !keys.is_empty() => Err(refused_as(
            Code::InvalidState,
            format!(
                "{} holds keys: apikey import-state {} moves a configuration with its keys into a new database",
                path.display(),
                path.display()
            ),
        )),
        _ => Ok(document),
    }
}

/// Reads a JSON file that must hold a value of the right shape.
fn read_json(path: &Path, what: &str, shape: fn(&Value) -> bool) -> Result<Value, CliError> {
    let bytes = std::fs::read(path)
        .map_err(|error| refused_as(Code::IoError, format!("{}: {error}", path.display())))?;
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

/// Refuses a database that already holds settings or keys.
fn refuse_filled(connection: &Connection, path: &Path, why: &str) -> Result<(), CliError> {
    let (keys, has_settings): (i64, i64) = connection
        .query_row(
            "SELECT (SELECT count(*) FROM keys), (SELECT count(*) FROM settings)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(|error| CliError::from(apikey_service::error::ApiError::from(error)))?;
    if keys > 0 || has_settings > 0 {
        return Err(refused_as(
            Code::AlreadyExists,
            format!("{} already holds settings or keys: {why}", path.display()),
        ));
    }
    Ok(())
}

/// Reads the state file `import-state` moves: the filter's §1
/// configuration, as the old `--state` commands wrote it. A missing file,
/// one that is not JSON and one the filter would refuse each get their
/// own message, naming the file.
fn read_state(file: &Path) -> Result<Map<String, Value>, CliError> {
    let bytes = std::fs::read(file).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            refused_as(
                Code::NoState,
                format!(
                    "no state file at {}: import-state reads the JSON state file the old apikey --state commands wrote (apikey-state.json by default); give its path",
                    file.display()
                ),
            )
        } else {
            refused_as(Code::IoError, format!("cannot read {}: {error}", file.display()))
        }
    })?;
    let invalid = |reason: String| {
        refused_as(
            Code::InvalidState,
            format!(
                "{} is not a valid state file: {reason} (a state file is the filter's plugin configuration, contract §1; nothing was imported)",
                file.display()
            ),
        )
    };
    match Config::parse(&bytes) {
        Err(error) => return Err(invalid(error.to_string())),
        Ok(None) => return Err(invalid("it is empty".to_owned())),
        Ok(Some(_)) => {}
    }
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(document)) => Ok(document),
        Ok(_) => Err(invalid("it is not a JSON object".to_owned())),
        Err(error) => Err(invalid(error.to_string())),
    }
}

/// `import-state OLD.json --db NEW.db`: the state's settings and keys, in
/// one transaction, into a database that holds neither yet.
fn import_state(
    globals: &Globals,
    path: &Path,
    file: &Path,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let mut document = read_state(file)?;
    let keys = match document.remove("keys") {
        Some(Value::Array(keys)) => keys,
        _ => Vec::new(),
    };
    document.insert(MAX_KEYS_FIELD.to_owned(), json!(globals.max_keys));
    let settings = Settings::from_document(document)?;
    let lines: Vec<u8> = keys
        .iter()
        .map(|key| format!("{key}\n"))
        .collect::<String>()
        .into_bytes();
    let mut connection = db::open(path)?;
    let transaction = db::write(&mut connection).map_err(CliError::from)?;
    refuse_filled(
        &transaction,
        path,
        "import-state fills a new database (apikey import adds keys to one)",
    )?;
    settings_store::put_in(&transaction, &settings, io.now)?;
    let imported = if keys.is_empty() {
        0
    } else {
        import::import_into(&transaction, &settings, &mut lines.as_slice(), io.now)?
    };
    transaction
        .commit()
        .map_err(|error| CliError::from(apikey_service::error::ApiError::from(error)))?;
    drop(connection);
    publish(globals, path, io.now)?;
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
