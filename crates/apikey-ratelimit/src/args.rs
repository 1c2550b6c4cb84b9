//! Command-line flags and their environment variables.
//!
//! A flag wins over its variable, a variable over the default. Parsing is
//! a pure function of the arguments and a variable lookup, so it is tested
//! without touching the process environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `--help`.
pub const USAGE: &str = "\
apikey-ratelimit: Envoy's rate-limit service (ShouldRateLimit), counting in Redis

USAGE:
    apikey-ratelimit [OPTIONS]

OPTIONS (each also read from the environment variable shown):
    --listen ADDR            gRPC address      APIKEY_RATELIMIT_LISTEN    [127.0.0.1:8081]
    --admin ADDR             /healthz, /metrics APIKEY_RATELIMIT_ADMIN    [127.0.0.1:8082]
    --redis URL              Redis (no password in it)
                                               APIKEY_RATELIMIT_REDIS     [redis://127.0.0.1:6379]
    --redis-password-file FILE
                             the Redis password, the file's content trimmed
                                               APIKEY_RATELIMIT_REDIS_PASSWORD_FILE
    --redis-no-auth          no Redis password: only for a Redis that nothing
                             else can reach (tests); no variable
    --redis-timeout-ms MS    bound on one Redis call
                                               APIKEY_RATELIMIT_REDIS_TIMEOUT_MS [1000]
    -h, --help               this text
    -V, --version            the version

One of --redis-password-file and --redis-no-auth is required.
A port of 0 picks a free port; the addresses bound are printed on stdout:
    apikey-ratelimit listening grpc=127.0.0.1:8081 admin=127.0.0.1:8082

Whoever reaches the gRPC port sets the limits (each request carries its
own): let only the gateways reach it.
";

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

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the server.
    Serve(Settings),
    /// Print [`USAGE`].
    Help,
    /// Print the version.
    Version,
}

const FLAGS: [(&str, &str, &str); 5] = [
    ("--listen", "APIKEY_RATELIMIT_LISTEN", "127.0.0.1:8081"),
    ("--admin", "APIKEY_RATELIMIT_ADMIN", "127.0.0.1:8082"),
    (
        "--redis",
        "APIKEY_RATELIMIT_REDIS",
        "redis://127.0.0.1:6379",
    ),
    (
        "--redis-timeout-ms",
        "APIKEY_RATELIMIT_REDIS_TIMEOUT_MS",
        "1000",
    ),
    // No default: empty means not given.
    (
        "--redis-password-file",
        "APIKEY_RATELIMIT_REDIS_PASSWORD_FILE",
        "",
    ),
];

/// The flag without a value that turns Redis authentication off. It has no
/// environment variable on purpose: a variable inherited by accident (a
/// shell profile, a shared `.env`) must not silently drop the password.
const NO_AUTH: &str = "--redis-no-auth";

/// Parses `args` (without the program name); `env` looks variables up.
pub fn parse(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, String> {
    let mut given: [Option<String>; FLAGS.len()] = Default::default();
    let mut no_auth = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            NO_AUTH => {
                no_auth = true;
                continue;
            }
            _ => {}
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        let slot = FLAGS
            .iter()
            .position(|(flag, _, _)| *flag == name)
            .and_then(|i| given.get_mut(i))
            .ok_or_else(|| format!("unknown argument {arg:?} (see --help)"))?;
        let value = match inline {
            Some(value) => value,
            // A flag is not a value: `--redis-password-file --redis-no-auth`
            // must not read a file named `--redis-no-auth`.
            None => args
                .next()
                .filter(|value| !value.starts_with("--"))
                .ok_or_else(|| format!("{name} needs a value"))?,
        };
        *slot = Some(value);
    }
    let [listen, admin, redis, timeout, password_file] = FLAGS
        .iter()
        .zip(given)
        .map(|((_, variable, default), flag)| {
            flag.or_else(|| env(variable).filter(|v| !v.is_empty()))
                .unwrap_or_else(|| (*default).to_owned())
        })
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|_| "internal: flag count".to_owned())?;
    let address = |what: &str, text: &str| {
        text.parse::<SocketAddr>()
            .map_err(|_| format!("{what} must be HOST:PORT with an IP address, got {text:?}"))
    };
    let timeout_ms = timeout
        .parse::<u64>()
        .ok()
        .filter(|ms| (1..=60_000).contains(ms))
        .ok_or_else(|| format!("--redis-timeout-ms must be 1 to 60000, got {timeout:?}"))?;
    let redis_auth = match (password_file.is_empty(), no_auth) {
        (false, false) => RedisAuth::PasswordFile(PathBuf::from(password_file)),
        (true, true) => RedisAuth::NoAuth,
        (false, true) => {
            return Err(format!(
            "both --redis-password-file (or APIKEY_RATELIMIT_REDIS_PASSWORD_FILE) and {NO_AUTH}: \
                 say which"
        ))
        }
        (true, false) => {
            return Err(format!(
                "Redis needs a password: --redis-password-file FILE (or \
                 APIKEY_RATELIMIT_REDIS_PASSWORD_FILE); {NO_AUTH} only for a Redis nothing else \
                 can reach"
            ))
        }
    };
    Ok(Command::Serve(Settings {
        listen: address("--listen", &listen)?,
        admin: address("--admin", &admin)?,
        redis,
        redis_auth,
        redis_timeout: Duration::from_millis(timeout_ms),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn settings(list: &[&str], env: &[(&str, &str)]) -> Result<Settings, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match parse(args(list), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })? {
            Command::Serve(settings) => Ok(settings),
            other => panic!("not serve: {other:?}"),
        }
    }

    const WITH_PASSWORD: [&str; 2] = ["--redis-password-file", "/run/secrets/redis-password"];

    #[test]
    fn defaults_are_loopback_ports_and_local_redis() {
        let s = settings(&WITH_PASSWORD, &[]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(s.admin.to_string(), "127.0.0.1:8082");
        assert_eq!(s.redis, "redis://127.0.0.1:6379");
        assert_eq!(s.redis_timeout, Duration::from_millis(1000));
    }

    #[test]
    fn a_flag_wins_over_its_variable_and_a_variable_over_the_default() {
        let env = [
            ("APIKEY_RATELIMIT_LISTEN", "0.0.0.0:9000"),
            ("APIKEY_RATELIMIT_REDIS", "redis://redis:6379"),
            ("APIKEY_RATELIMIT_REDIS_PASSWORD_FILE", "/from/variable"),
        ];
        let s = settings(&["--listen", "127.0.0.1:0", "--redis-timeout-ms=50"], &env).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:0");
        assert_eq!(s.redis, "redis://redis:6379");
        assert_eq!(s.redis_timeout, Duration::from_millis(50));
        assert_eq!(
            s.redis_auth,
            RedisAuth::PasswordFile("/from/variable".into()),
            "the variable's password file was not taken"
        );
        let s = settings(&["--redis-password-file=/from/flag"], &env).unwrap();
        assert_eq!(
            s.redis_auth,
            RedisAuth::PasswordFile("/from/flag".into()),
            "the flag did not win over the variable"
        );
    }

    #[test]
    fn without_a_password_file_the_server_refuses_to_start() {
        for (case, list, env) in [
            ("nothing given", &[][..], &[][..]),
            ("empty flag", &["--redis-password-file", ""][..], &[][..]),
            (
                "empty variable",
                &[][..],
                &[("APIKEY_RATELIMIT_REDIS_PASSWORD_FILE", "")][..],
            ),
        ] {
            let error = settings(list, env).expect_err(case);
            assert!(
                error.contains("--redis-password-file") && error.contains("--redis-no-auth"),
                "{case}: the refusal does not say what to give: {error}"
            );
        }
    }

    #[test]
    fn no_auth_is_a_flag_only_and_excludes_a_password_file() {
        let s = settings(&["--redis-no-auth"], &[]).unwrap();
        assert_eq!(s.redis_auth, RedisAuth::NoAuth);
        assert!(
            settings(&[], &[("APIKEY_RATELIMIT_REDIS_NO_AUTH", "1")]).is_err(),
            "a variable turned authentication off"
        );
        assert!(
            settings(&["--redis-no-auth=yes"], &[]).is_err(),
            "--redis-no-auth took a value"
        );
        for (case, list, env) in [
            (
                "both flags",
                &["--redis-no-auth", WITH_PASSWORD[0], WITH_PASSWORD[1]][..],
                &[][..],
            ),
            (
                "flag and variable",
                &["--redis-no-auth"][..],
                &[("APIKEY_RATELIMIT_REDIS_PASSWORD_FILE", "/run/secrets/p")][..],
            ),
        ] {
            let error = settings(list, env).expect_err(case);
            assert!(error.contains("say which"), "{case}: {error}");
        }
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        for (case, list) in [
            ("unknown flag", &["--port", "1"][..]),
            ("missing value", &["--listen"][..]),
            ("host name", &["--listen", "localhost:1"][..]),
            ("zero timeout", &["--redis-timeout-ms", "0"][..]),
            (
                "password file without a path",
                &["--redis-password-file"][..],
            ),
        ] {
            let list: Vec<&str> = list.iter().chain(&["--redis-no-auth"]).copied().collect();
            assert!(settings(&list, &[]).is_err(), "{case} accepted");
        }
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(args(&["--help"]), |_| None), Ok(Command::Help));
        assert_eq!(parse(args(&["-V"]), |_| None), Ok(Command::Version));
    }
}
