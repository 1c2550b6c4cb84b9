//! Runs a parsed command: the commands that need no keys (`completions`,
//! `usage --log`) here, every other one on the key service's data
//! ([`crate::service_commands`]), and what both share: the renderers
//! behind `render` and `--ecds-dir`, and the one-line reports.
//!
//! `--ecds-dir` is published after the change was committed to the
//! database: the database is the commit point, so a new key is printed
//! only after it was stored, and a failed ECDS write after it is reported
//! (exit code 1) without hiding the key that now exists. Raw keys go to
//! `out` once, alone on a line (or in the `--json` object); messages go to
//! `err`.

use std::io::Write;
use std::path::Path;

use apikey_core::timestamp::UnixNanos;
use serde_json::Value;

use crate::args::{self, Command, Globals, Invocation, RenderTarget};
use crate::backend::Database;
use crate::error::{refused, refused_as, CliError, Code};
use crate::render;
use crate::store;

/// What a command needs from the world: the time and the two output
/// streams (new keys come from the OS's random source, in the service's
/// operations).
pub struct Io<'a> {
    /// The wall clock, read once per command.
    pub now: UnixNanos,
    /// Standard output: results (and a new key, once).
    pub out: &'a mut dyn Write,
    /// Standard error: messages for people.
    pub err: &'a mut dyn Write,
}

/// Runs one invocation.
pub fn run(invocation: Invocation, io: &mut Io<'_>) -> Result<(), CliError> {
    match invocation.command {
        Command::Completions { shell } => io
            .out
            .write_all(&args::completions(shell))
            .map_err(|error| refused_as(Code::IoError, format!("cannot write output: {error}"))),
        Command::Usage { log } => usage_report(&invocation.globals, &log, io),
        _ => crate::service_commands::run(invocation, io),
    }
}

/// Writes `<ecds-dir>/apikey.yaml` (or `apikey.pb`) from the database at
/// `db`, when an ECDS directory is set.
///
/// Two commands may change the database at once; each publishes after its
/// own commit. The read of the database and the write of the file happen
/// under an exclusive lock beside the ECDS file, so the last file written
/// was read after every earlier commit: a change is never undone by a
/// slower run writing an older table over it.
pub fn publish(globals: &Globals, db: &Path, now: UnixNanos) -> Result<(), CliError> {
    let Some(dir) = &globals.ecds_dir else {
        return Ok(());
    };
    let file = dir.join(globals.ecds_format.file_name());
    let not_published = |error: CliError| {
        refused_as(
            Code::IoError,
            format!(
                "the database was updated but the ECDS file was not: {error} (apikey render ecds --out {} retries)",
                file.display()
            ),
        )
    };
    let _lock = store::lock(&file).map_err(not_published)?;
    let document = Database::open(db, now)?.config_document()?;
    let bytes = ecds_bytes(globals, &document)?;
    store::write_atomic(&file, &bytes, store::PUBLIC_MODE).map_err(not_published)
}

/// The ECDS file of a §1 configuration (compact JSON).
fn ecds_bytes(globals: &Globals, document: &[u8]) -> Result<Vec<u8>, CliError> {
    let configuration = std::str::from_utf8(document)
        .map_err(|error| refused(format!("the configuration is not UTF-8: {error}")))?;
    render::ecds_file(configuration, &globals.filter, globals.ecds_format)
        .map_err(|error| refused(format!("cannot render the ECDS file: {error}")))
}

/// Writes a deployment document of the §1 configuration `document` (the
/// one the database describes) to `out`, or to stdout.
pub fn render_document(
    globals: &Globals,
    document: &[u8],
    target: &RenderTarget,
    out: Option<&Path>,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let failed = |error: serde_json::Error| refused(format!("cannot render: {error}"));
    let bytes = match target {
        RenderTarget::Ecds => ecds_bytes(globals, document)?,
        RenderTarget::Config => {
            let value: Value = serde_json::from_slice(document).map_err(failed)?;
            let mut text = serde_json::to_string_pretty(&value).map_err(failed)?;
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
            let value: Value = serde_json::from_slice(document).map_err(failed)?;
            render::istio_wasm_plugin(&value, options)
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

/// `usage`: reads an access log (no keys needed).
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

/// The human table of `list`: one row per API record (never a key or its
/// hash: the records carry neither), its last use "never" until a gateway
/// reported one.
pub fn table(records: &[Value]) -> String {
    let header = [
        "ID",
        "NAME",
        "TENANT",
        "SCOPES",
        "PLAN",
        "HINT",
        "CREATED",
        "EXPIRES",
        "STATE",
        "LAST USED",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for record in records {
        let text = |name: &str, absent: &str| {
            record
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or(absent)
                .to_owned()
        };
        let scopes: Vec<&str> = record
            .get("scopes")
            .and_then(Value::as_array)
            .map(|scopes| scopes.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        lines.push(vec![
            text("id", ""),
            text("name", "-"),
            text("tenant", ""),
            if scopes.is_empty() {
                "-".to_owned()
            } else {
                scopes.join(",")
            },
            text("plan", "-"),
            text("hint", "-"),
            text("created_at", "-"),
            text("expires_at", "never"),
            text("state", "active"),
            text("last_used_at", "never"),
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

/// Writes one line.
pub fn say(stream: &mut dyn Write, line: &str) -> Result<(), CliError> {
    writeln!(stream, "{line}")
        .map_err(|error| refused_as(Code::IoError, format!("cannot write output: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_list_table_shows_dashes_for_what_a_key_lacks() {
        let records = [
            json!({"id": "key_a", "name": "CRM", "tenant": "acme", "scopes": ["leads:read", "leads:write"],
                   "plan": "pro", "hint": "sk_live_AbC…9Mn0", "created_at": "2026-01-01T00:00:00Z",
                   "expires_at": null, "state": "active", "last_used_at": "2026-01-03T10:00:00Z"}),
            json!({"id": "key_b", "name": null, "tenant": "globex", "scopes": [], "plan": null,
                   "hint": "sk_live_XyZ…0000", "created_at": "2026-01-02T00:00:00Z",
                   "expires_at": "2026-02-01T00:00:00Z", "state": "revoked", "last_used_at": null}),
        ];
        let text = table(&records);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "a header and a row per key: {text}");
        assert!(
            lines[1].contains("leads:read,leads:write") && lines[1].contains("never"),
            "the first row lacks its scopes or 'never': {text}"
        );
        assert!(
            lines[0].ends_with("STATE    LAST USED"),
            "the header lacks LAST USED: {text}"
        );
        assert!(
            lines[1].ends_with("active   2026-01-03T10:00:00Z"),
            "the first row lacks its last use: {text}"
        );
        assert!(
            lines[2].contains("globex  -") && lines[2].ends_with("revoked  never"),
            "the second row lacks its dashes, its state or 'never': {text}"
        );
    }
}
