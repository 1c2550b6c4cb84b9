//! `apikey`: the key-management command line of the API-key gateway.
//!
//! Keys are made here, shown once, and stored only as a SHA-256 and a hint
//! in a state file that is the filter's plugin configuration (contract §1),
//! so the tool and the filter read one document. Each change is locked,
//! validated by the core's own validator, written atomically and, with
//! `--ecds-dir`, pushed to Envoy as an ECDS file. `apikey help` lists the
//! commands; crates/apikey-cli/README.md describes them.

mod args;
mod commands;
mod duration;
mod ecds_protobuf;
mod error;
mod keygen;
mod render;
mod state;
mod store;
mod usage;

use std::io::Write;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use apikey_core::timestamp::UnixNanos;

use crate::error::{usage, CliError};

fn main() -> ExitCode {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let (mut out, mut err) = (stdout.lock(), stderr.lock());
    let result = run(&mut out, &mut err);
    let _ = out.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(err, "apikey: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn run(out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CliError> {
    let args = std::env::args_os()
        .skip(1)
        .map(|arg| {
            arg.into_string()
                .map_err(|arg| usage(format!("argument {arg:?} is not UTF-8")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let invocation = args::parse(&args, &|name| std::env::var(name).ok())?;
    let mut random = keygen::OsRandom;
    let mut io = commands::Io {
        now: now(),
        random: &mut random,
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
