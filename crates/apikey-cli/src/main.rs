//! `apikey`: the key-management command line of the API-key gateway, and
//! its key service.
//!
//! Keys are made here, shown once, and stored only as a SHA-256 and a hint,
//! in the key service's SQLite database (`--db`, default `./apikey.db`, or
//! through a running service with `--server`; `apikey serve` runs the
//! service, contract §8). Every change is validated by the core's own
//! validator and, with `--ecds-dir`, pushed to Envoy as an ECDS file;
//! `apikey import-state` moves an old JSON state file into a database. `apikey help` lists the commands, `apikey help
//! <command>` explains one; crates/apikey-cli/README.md describes them.

mod args;
mod backend;
mod commands;
mod duration;
mod ecds_protobuf;
mod error;
mod expiry;
mod render;
mod service_commands;
mod store;
mod usage;

use std::io::Write;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use apikey_core::timestamp::UnixNanos;

use crate::error::{refused_as, usage, CliError, Code};

fn main() -> ExitCode {
    // Not locked for the whole run: `apikey serve` writes its log lines
    // from the runtime's threads, which would wait forever for a lock this
    // thread held.
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let result = run(&mut out, &mut err);
    let _ = out.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((error, json)) => {
            let _ = if json {
                writeln!(err, "{}", error.to_json())
            } else {
                writeln!(err, "apikey: {error}")
            };
            ExitCode::from(error.exit_code())
        }
    }
}

/// Runs the command line; a failure comes with whether `--json` was asked
/// for, which decides how it is reported.
fn run(out: &mut dyn Write, err: &mut dyn Write) -> Result<(), (CliError, bool)> {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|arg| arg.into_string().unwrap_or_else(|arg| format!("{arg:?}")))
        .collect();
    let json = args::wants_json(&args);
    if let Some(arg) = std::env::args_os()
        .skip(1)
        .find(|arg| arg.to_str().is_none())
    {
        let error = usage(format!("argument {arg:?} is not UTF-8"));
        return Err((error, json));
    }
    execute(&args, out, err).map_err(|error| (error, json))
}

fn execute(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CliError> {
    let invocation = match args::parse(args, &|name| std::env::var(name).ok())? {
        args::Parsed::Run(invocation) => invocation,
        args::Parsed::Show(text) => {
            return out.write_all(text.as_bytes()).map_err(|error| {
                refused_as(Code::IoError, format!("cannot write output: {error}"))
            })
        }
    };
    let mut io = commands::Io {
        now: now(),
        out,
        err,
    };
    commands::run(invocation, &mut io)
}

/// The wall clock as nanoseconds since the epoch (read once per command).
fn now() -> UnixNanos {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(elapsed) => UnixNanos::try_from(elapsed.as_nanos()).unwrap_or(UnixNanos::MAX),
        Err(before) => UnixNanos::try_from(before.duration().as_nanos())
            .map(|nanos| -nanos)
            .unwrap_or(UnixNanos::MIN),
    }
}
