//! Command-line flags and their environment variables, declared with
//! `clap`'s derive.
//!
//! A flag wins over its variable, a variable over the default, and an
//! empty variable counts as unset (compose's `VAR:` with no value). clap
//! prints `--help`, `--version` and its own refusals and exits (0, 0, 2);
//! how the server authenticates to Redis is decided here, after clap, so
//! its refusals say exactly what to give.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory as _, FromArgMatches as _, Parser};

/// Printed under the options by `--help`.
const AFTER_HELP: &str = "\
One of --redis-password-file and --redis-no-auth is required.
A port of 0 picks a free port; the addresses bound are printed on stdout:
    apikey-ratelimit listening grpc=127.0.0.1:8081 admin=127.0.0.1:8082

Whoever reaches the gRPC port sets the limits (each request carries its
own): let only the gateways reach it.";

/// The command line as clap reads it.
#[derive(Debug, Parser)]
#[command(
    name = "apikey-ratelimit",
    version,
    about = "Envoy's rate-limit service (ShouldRateLimit), counting in Redis",
    after_help = AFTER_HELP,
    // A flag given twice: the last one counts.
    args_override_self = true
)]
struct Cli {
    /// gRPC address (IP:PORT)
    #[arg(
        long,
        value_name = "ADDR",
        env = "APIKEY_RATELIMIT_LISTEN",
        default_value = "127.0.0.1:8081",
        value_parser = ip_and_port
    )]
    listen: SocketAddr,

    /// /healthz and /metrics address (IP:PORT)
    #[arg(
        long,
        value_name = "ADDR",
        env = "APIKEY_RATELIMIT_ADMIN",
        default_value = "127.0.0.1:8082",
        value_parser = ip_and_port
    )]
    admin: SocketAddr,

    /// Redis (no password in it)
    #[arg(
        long,
        value_name = "URL",
        env = "APIKEY_RATELIMIT_REDIS",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,

    /// The Redis password: the file's content, trimmed
    // A String, not a PathBuf: an empty value must reach `settings`, which
    // refuses it as no password at all (clap would refuse an empty path
    // without naming --redis-no-auth).
    #[arg(
        long,
        value_name = "FILE",
        env = "APIKEY_RATELIMIT_REDIS_PASSWORD_FILE"
    )]
    redis_password_file: Option<String>,

    /// No Redis password: only for a Redis that nothing else can reach
    /// (tests); no variable
    // No environment variable on purpose: a variable inherited by accident
    // (a shell profile, a shared `.env`) must not silently drop the
    // password.
    #[arg(long)]
    redis_no_auth: bool,

    /// Bound on one Redis call and on connecting (1 to 60000)
    #[arg(
        long,
        value_name = "MS",
        env = "APIKEY_RATELIMIT_REDIS_TIMEOUT_MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(1..=60_000)
    )]
    redis_timeout_ms: u64,
}

/// The server's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The gRPC listen address.
    pub listen: SocketAddr,
    /// The admin (health, metrics) listen address.
    pub admin: SocketAddr,
    /// The Redis URL.
    pub redis: String,
    /// How the server proves itself to Redis.
    pub redis_auth: RedisAuth,
    /// Bound on each Redis call (and on connecting).
    pub redis_timeout: Duration,
}

/// How the server authenticates to Redis. There is no default: a server
/// started without either flag refuses to run, so a forgotten password is
/// an error at start, not a Redis that anyone on the network can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisAuth {
    /// `AUTH` with the password in this file, read once at start (the path
    /// only: the value never reaches [`Settings`], so it cannot be
    /// printed with them).
    PasswordFile(PathBuf),
    /// No `AUTH` (`--redis-no-auth`), for a Redis on loopback that only
    /// the machine's own tests use.
    NoAuth,
}

/// The settings from the process's arguments and environment. clap
/// answers `--help`, `--version` and malformed flags itself and exits;
/// an `Err` is a refusal to print before exiting 2.
pub fn from_process() -> Result<Settings, String> {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches)
        .map_err(|error| error.to_string())?
        .settings()
}

/// The command, with the bindings of empty variables dropped: clap would
/// take an empty variable as the value `""`.
fn command() -> clap::Command {
    Cli::command().mut_args(|arg| {
        let empty = arg
            .get_env()
            .and_then(std::env::var_os)
            .is_some_and(|value| value.is_empty());
        if empty {
            arg.env(None)
        } else {
            arg
        }
    })
}

/// An `IP:PORT` socket address; a host name is refused (the server binds,
/// it does not resolve).
fn ip_and_port(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| "give IP:PORT with an IP address (a host name is not resolved)".to_owned())
}

impl Cli {
    /// The settings, once the Redis authentication is decided.
    fn settings(self) -> Result<Settings, String> {
        let password_file = self.redis_password_file.filter(|path| !path.is_empty());
        let redis_auth = match (password_file, self.redis_no_auth) {
            (Some(path), false) => RedisAuth::PasswordFile(PathBuf::from(path)),
            (None, true) => RedisAuth::NoAuth,
            (Some(_), true) => {
                return Err(
                    "both --redis-password-file (or APIKEY_RATELIMIT_REDIS_PASSWORD_FILE) and \
                     --redis-no-auth: say which"
                        .to_owned(),
                )
            }
            (None, false) => {
                return Err("Redis needs a password: --redis-password-file FILE (or \
                     APIKEY_RATELIMIT_REDIS_PASSWORD_FILE); --redis-no-auth only for a Redis \
                     nothing else can reach"
                    .to_owned())
            }
        };
        Ok(Settings {
            listen: self.listen,
            admin: self.admin,
            redis: self.redis,
            redis_auth,
            redis_timeout: Duration::from_millis(self.redis_timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    //! The flags alone, with every environment binding dropped so the
    //! shell running the tests cannot change them; the variables are
    //! tested on the real binary in `tests/cli.rs`.

    use super::*;

    fn settings(list: &[&str]) -> Result<Settings, String> {
        let command = Cli::command().mut_args(|arg| arg.env(None));
        let matches = command
            .try_get_matches_from(std::iter::once("apikey-ratelimit").chain(list.iter().copied()))
            .map_err(|error| error.to_string())?;
        Cli::from_arg_matches(&matches)
            .map_err(|error| error.to_string())?
            .settings()
    }

    const WITH_PASSWORD: [&str; 2] = ["--redis-password-file", "/run/secrets/redis-password"];

    #[test]
    fn the_command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_loopback_ports_and_local_redis() {
        let s = settings(&WITH_PASSWORD).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(s.admin.to_string(), "127.0.0.1:8082");
        assert_eq!(s.redis, "redis://127.0.0.1:6379");
        assert_eq!(s.redis_timeout, Duration::from_millis(1000));
        assert_eq!(
            s.redis_auth,
            RedisAuth::PasswordFile("/run/secrets/redis-password".into())
        );
    }

    #[test]
    fn flags_take_their_value_after_a_space_or_an_equals_sign_and_the_last_one_counts() {
        let s = settings(&[
            "--listen",
            "0.0.0.0:9000",
            "--admin=127.0.0.1:0",
            "--redis",
            "redis://redis:6379",
            "--redis-timeout-ms=50",
            "--redis-password-file=/first",
            "--redis-password-file",
            "/second",
        ])
        .unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(s.admin.to_string(), "127.0.0.1:0");
        assert_eq!(s.redis, "redis://redis:6379");
        assert_eq!(s.redis_timeout, Duration::from_millis(50));
        assert_eq!(
            s.redis_auth,
            RedisAuth::PasswordFile("/second".into()),
            "the last --redis-password-file did not win"
        );
    }

    #[test]
    fn without_a_password_file_the_server_refuses_to_start() {
        for (case, list) in [
            ("nothing given", &[][..]),
            ("empty flag", &["--redis-password-file", ""][..]),
            ("empty flag after =", &["--redis-password-file="][..]),
        ] {
            let error = settings(list).expect_err(case);
            assert!(
                error.contains("--redis-password-file") && error.contains("--redis-no-auth"),
                "{case}: the refusal does not say what to give: {error}"
            );
        }
    }

    #[test]
    fn no_auth_is_a_flag_without_a_value_and_excludes_a_password_file() {
        let s = settings(&["--redis-no-auth"]).unwrap();
        assert_eq!(s.redis_auth, RedisAuth::NoAuth);
        assert!(
            settings(&["--redis-no-auth=yes"]).is_err(),
            "--redis-no-auth took a value"
        );
        let error = settings(&["--redis-no-auth", WITH_PASSWORD[0], WITH_PASSWORD[1]])
            .expect_err("both were accepted");
        assert!(error.contains("say which"), "{error}");
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        for (case, list, reason) in [
            ("unknown flag", &["--port", "1"][..], "--port"),
            ("missing value", &["--listen"][..], "--listen"),
            (
                "host name",
                &["--listen", "localhost:1"][..],
                "with an IP address",
            ),
            (
                "zero timeout",
                &["--redis-timeout-ms", "0"][..],
                "1..=60000",
            ),
            (
                "timeout over a minute",
                &["--redis-timeout-ms", "60001"][..],
                "1..=60000",
            ),
            (
                "password file without a path",
                &["--redis-password-file"][..],
                "--redis-password-file",
            ),
        ] {
            let list: Vec<&str> = list.iter().chain(&["--redis-no-auth"]).copied().collect();
            let error = settings(&list).expect_err(case);
            assert!(
                error.contains(reason),
                "{case}: the refusal does not say {reason:?}: {error}"
            );
        }
    }

    #[test]
    fn a_flag_is_not_taken_as_the_password_files_path() {
        // `--redis-password-file --redis-no-auth` must not read a file
        // named `--redis-no-auth`.
        let error = settings(&["--redis-password-file", "--redis-no-auth"])
            .expect_err("a flag was taken as the path");
        assert!(error.contains("--redis-password-file"), "{error}");
    }
}
