//! Command-line flags and their environment variables.
//!
//! A flag wins over its variable, a variable over the default. Parsing is
//! a pure function of the arguments and a variable lookup, so it is tested
//! without touching the process environment.

use std::net::SocketAddr;
use std::time::Duration;

/// `--help`.
pub const USAGE: &str = "\
apikey-ratelimit: Envoy's rate-limit service (ShouldRateLimit), counting in Redis

USAGE:
    apikey-ratelimit [OPTIONS]

OPTIONS (each also read from the environment variable shown):
    --listen ADDR            gRPC address      APIKEY_RATELIMIT_LISTEN    [127.0.0.1:8081]
    --admin ADDR             /healthz, /metrics APIKEY_RATELIMIT_ADMIN    [127.0.0.1:8082]
    --redis URL              Redis             APIKEY_RATELIMIT_REDIS     [redis://127.0.0.1:6379]
    --redis-timeout-ms MS    bound on one Redis call
                                               APIKEY_RATELIMIT_REDIS_TIMEOUT_MS [1000]
    -h, --help               this text
    -V, --version            the version

A port of 0 picks a free port; the addresses bound are printed on stdout:
    apikey-ratelimit listening grpc=127.0.0.1:8081 admin=127.0.0.1:8082
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
    /// Bound on each Redis call (and on connecting).
    pub redis_timeout: Duration,
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

const FLAGS: [(&str, &str, &str); 4] = [
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
];

/// Parses `args` (without the program name); `env` looks variables up.
pub fn parse(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, String> {
    let mut given: [Option<String>; FLAGS.len()] = Default::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
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
            None => args.next().ok_or_else(|| format!("{name} needs a value"))?,
        };
        *slot = Some(value);
    }
    let [listen, admin, redis, timeout] = FLAGS
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
    Ok(Command::Serve(Settings {
        listen: address("--listen", &listen)?,
        admin: address("--admin", &admin)?,
        redis,
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

    #[test]
    fn defaults_are_loopback_ports_and_local_redis() {
        let s = settings(&[], &[]).unwrap();
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
        ];
        let s = settings(&["--listen", "127.0.0.1:0", "--redis-timeout-ms=50"], &env).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:0");
        assert_eq!(s.redis, "redis://redis:6379");
        assert_eq!(s.redis_timeout, Duration::from_millis(50));
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        for (case, list) in [
            ("unknown flag", &["--port", "1"][..]),
            ("missing value", &["--listen"][..]),
            ("host name", &["--listen", "localhost:1"][..]),
            ("zero timeout", &["--redis-timeout-ms", "0"][..]),
        ] {
            assert!(settings(list, &[]).is_err(), "{case} accepted");
        }
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(args(&["--help"]), |_| None), Ok(Command::Help));
        assert_eq!(parse(args(&["-V"]), |_| None), Ok(Command::Version));
    }
}
