//! The command line of the real binary, run with an environment of our
//! choosing (`env_clear`): each `APIKEY_RATELIMIT_*` variable is read, a
//! flag wins over it, an empty one counts as unset, and every refusal
//! exits 2 before anything listens.
//!
//! Nothing here reaches Redis or binds a port: a variable is shown to be
//! read by the refusal it causes, or by the password file the server then
//! fails to open (exit 1, naming the file).

// This whole crate is a test: its helpers may fail loudly too (clippy's
// allow-*-in-tests only covers `#[test]` functions themselves).
#![allow(clippy::panic)]

use std::process::{Command, Output};

const BINARY: &str = env!("CARGO_BIN_EXE_apikey-ratelimit");

/// Runs the server with `args` and only the variables `env`.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {BINARY}: {error}"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts that the server refused to start with exit code 2, saying
/// `reason`, and printed nothing on stdout.
fn assert_refused(case: &str, output: &Output, reason: &str) {
    let text = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{case}: not refused with exit 2: {text}"
    );
    assert!(
        text.contains(reason),
        "{case}: the refusal does not say {reason:?}: {text}"
    );
    assert!(
        output.stdout.is_empty(),
        "{case}: stdout was written: {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// Asserts that the server got past its flags and stopped at opening the
/// password file `path` (which does not exist): exit 1, naming it.
fn assert_took_password_file(case: &str, output: &Output, path: &str) {
    let text = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{case}: the flags were not accepted: {text}"
    );
    assert!(
        text.contains(&format!("Redis password file {path}:")),
        "{case}: the server did not try the password file {path}: {text}"
    );
}

const MISSING_FROM_VARIABLE: &str = "/nonexistent/apikey-ratelimit/from-variable";
const MISSING_FROM_FLAG: &str = "/nonexistent/apikey-ratelimit/from-flag";

#[test]
fn the_password_file_comes_from_its_variable_and_the_flag_wins() {
    let variable = [(
        "APIKEY_RATELIMIT_REDIS_PASSWORD_FILE",
        MISSING_FROM_VARIABLE,
    )];
    assert_took_password_file("variable", &run(&[], &variable), MISSING_FROM_VARIABLE);
    assert_took_password_file(
        "flag and variable",
        &run(&["--redis-password-file", MISSING_FROM_FLAG], &variable),
        MISSING_FROM_FLAG,
    );
}

#[test]
fn without_a_password_file_or_no_auth_the_server_refuses_to_start() {
    for (case, args, env) in [
        ("nothing given", &[][..], &[][..]),
        (
            "empty variable",
            &[][..],
            &[("APIKEY_RATELIMIT_REDIS_PASSWORD_FILE", "")][..],
        ),
        ("empty flag", &["--redis-password-file", ""][..], &[][..]),
        (
            "a variable cannot turn authentication off",
            &[][..],
            &[("APIKEY_RATELIMIT_REDIS_NO_AUTH", "1")][..],
        ),
    ] {
        let output = run(args, env);
        assert_refused(case, &output, "--redis-password-file");
        assert_refused(case, &output, "--redis-no-auth");
    }
}

#[test]
fn no_auth_and_a_password_file_together_are_refused() {
    for (case, args, env) in [
        (
            "both flags",
            &[
                "--redis-no-auth",
                "--redis-password-file",
                MISSING_FROM_FLAG,
            ][..],
            &[][..],
        ),
        (
            "flag and variable",
            &["--redis-no-auth"][..],
            &[(
                "APIKEY_RATELIMIT_REDIS_PASSWORD_FILE",
                MISSING_FROM_VARIABLE,
            )][..],
        ),
    ] {
        assert_refused(case, &run(args, env), "say which");
    }
}

#[test]
fn each_variable_is_read_and_refused_when_malformed() {
    for (variable, value, reason) in [
        ("APIKEY_RATELIMIT_LISTEN", "localhost:8081", "--listen"),
        ("APIKEY_RATELIMIT_ADMIN", "not-an-address", "--admin"),
        (
            "APIKEY_RATELIMIT_REDIS_TIMEOUT_MS",
            "0",
            "--redis-timeout-ms",
        ),
    ] {
        assert_refused(
            variable,
            &run(&["--redis-no-auth"], &[(variable, value)]),
            reason,
        );
    }
    // The URL is checked when the store is made, after the password file:
    // exit 1, and the password in it is not repeated.
    let output = run(
        &["--redis-no-auth"],
        &[("APIKEY_RATELIMIT_REDIS", "redis://:hunter2@127.0.0.1:6379")],
    );
    let text = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the URL was accepted: {text}"
    );
    assert!(
        text.contains("carries a password") && !text.contains("hunter2"),
        "{text}"
    );
}

#[test]
fn a_flag_wins_over_a_malformed_variable() {
    let output = run(
        &["--listen", "127.0.0.1:0", "--redis-timeout-ms=5"],
        &[
            ("APIKEY_RATELIMIT_LISTEN", "localhost:8081"),
            ("APIKEY_RATELIMIT_REDIS_TIMEOUT_MS", "0"),
            (
                "APIKEY_RATELIMIT_REDIS_PASSWORD_FILE",
                MISSING_FROM_VARIABLE,
            ),
        ],
    );
    assert_took_password_file("flags over variables", &output, MISSING_FROM_VARIABLE);
}

#[test]
fn empty_variables_count_as_unset() {
    let mut env: Vec<(&str, &str)> = [
        "APIKEY_RATELIMIT_LISTEN",
        "APIKEY_RATELIMIT_ADMIN",
        "APIKEY_RATELIMIT_REDIS",
        "APIKEY_RATELIMIT_REDIS_TIMEOUT_MS",
    ]
    .into_iter()
    .map(|variable| (variable, ""))
    .collect();
    env.push((
        "APIKEY_RATELIMIT_REDIS_PASSWORD_FILE",
        MISSING_FROM_VARIABLE,
    ));
    assert_took_password_file("empty variables", &run(&[], &env), MISSING_FROM_VARIABLE);
}

#[test]
fn help_lists_every_flag_and_variable_and_version_names_the_server() {
    let help = run(&["--help"], &[]);
    assert_eq!(
        help.status.code(),
        Some(0),
        "--help failed: {}",
        stderr(&help)
    );
    let text = String::from_utf8_lossy(&help.stdout);
    for expected in [
        "--listen",
        "APIKEY_RATELIMIT_LISTEN",
        "--admin",
        "APIKEY_RATELIMIT_ADMIN",
        "--redis ",
        "APIKEY_RATELIMIT_REDIS=",
        "--redis-password-file",
        "APIKEY_RATELIMIT_REDIS_PASSWORD_FILE",
        "--redis-no-auth",
        "--redis-timeout-ms",
        "APIKEY_RATELIMIT_REDIS_TIMEOUT_MS",
        "127.0.0.1:8081",
        "127.0.0.1:8082",
        "redis://127.0.0.1:6379",
    ] {
        assert!(
            text.contains(expected),
            "--help does not show {expected:?}:\n{text}"
        );
    }
    for flag in ["-V", "--version"] {
        let version = run(&[flag], &[]);
        assert_eq!(version.status.code(), Some(0), "{flag} failed");
        assert_eq!(
            String::from_utf8_lossy(&version.stdout),
            format!("apikey-ratelimit {}\n", env!("CARGO_PKG_VERSION")),
            "{flag} printed something else"
        );
    }
}
