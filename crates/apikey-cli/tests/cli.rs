//! The built `apikey` binary, run as an operator runs it on a database
//! (`--db`, here through `APIKEY_DB`) in a scratch directory per test:
//! keys shown once and never stored, a missing database refused, concurrent
//! writers, the tenant cap, rotation grace, `import-state` from an old
//! state file, and the rendered documents carrying the configuration.

// This whole crate is a test: its helpers may fail loudly too (clippy's
// allow-*-in-tests only covers `#[test]` functions themselves).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use apikey_core::config::Config;
use apikey_core::key_hash::KeyHash;
use apikey_core::timestamp::parse_rfc3339;
use serde_json::Value;

const PLANS: &str = r#"{"pro": {"scopes": ["leads:*", "mcp:*"],
    "rate_limits": {"*": {"requests": 300, "period_seconds": 60}}},
  "free": {"scopes": ["leads:read"]}}"#;

/// A scratch directory with a database path, removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "apikey-cli-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    /// A scratch with `init --plans` done.
    fn initialised(name: &str) -> Self {
        Self::initialised_with(name, &[])
    }

    /// A scratch with `init --plans` and `extra` done.
    fn initialised_with(name: &str, extra: &[&str]) -> Self {
        let scratch = Self::new(name);
        let plans = scratch.dir.join("plans.json");
        fs::write(&plans, PLANS).unwrap();
        let mut args = vec!["init", "--plans", plans.to_str().unwrap()];
        args.extend_from_slice(extra);
        scratch.ok(&args);
        scratch
    }

    fn db(&self) -> PathBuf {
        self.dir.join("keys.db")
    }

    /// Every byte of the database's files (the main file, its WAL).
    fn database_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for entry in fs::read_dir(&self.dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name().to_string_lossy().starts_with("keys.db") {
                bytes.extend(fs::read(entry.path()).unwrap());
            }
        }
        bytes
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_apikey"));
        command
            .args(args)
            .current_dir(&self.dir)
            .env("APIKEY_DB", self.db())
            .env_remove("APIKEY_SERVER")
            .env_remove("APIKEY_ECDS_DIR")
            .env_remove("APIKEY_WASM")
            .env_remove("APIKEY_MAX_KEYS_PER_TENANT");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "apikey {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs and expects exit `code`; returns stderr.
    fn fails(&self, code: i32, args: &[&str]) -> String {
        let output = self.run(args);
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(
            output.status.code(),
            Some(code),
            "apikey {args:?}: stdout {:?} stderr {stderr:?}",
            String::from_utf8_lossy(&output.stdout)
        );
        stderr
    }

    /// Creates a key for `tenant` and returns (id, raw key).
    fn create(&self, tenant: &str, extra: &[&str]) -> (String, String) {
        let mut args = vec![
            "create",
            "--json",
            "--tenant",
            tenant,
            "--scopes",
            "leads:read",
            "--plan",
            "pro",
            "--name",
            "test key",
        ];
        args.extend_from_slice(extra);
        let shown: Value = serde_json::from_str(&self.ok(&args)).unwrap();
        (
            shown["id"].as_str().unwrap().to_owned(),
            shown["key"].as_str().unwrap().to_owned(),
        )
    }

    fn list(&self) -> Vec<Value> {
        let rows: Value = serde_json::from_str(&self.ok(&["list", "--json"])).unwrap();
        rows.as_array().unwrap().clone()
    }

    fn row(&self, id: &str) -> Value {
        self.list()
            .into_iter()
            .find(|row| row["id"] == id)
            .unwrap_or_else(|| panic!("{id} is not listed"))
    }

    /// The whole §1 configuration the database describes.
    fn config(&self) -> Value {
        serde_json::from_str(&self.ok(&["render", "config"])).unwrap()
    }

    /// Runs with `--json`, expects exit 1, returns the error's code and
    /// message.
    fn refused(&self, args: &[&str]) -> (String, String) {
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(args);
        let stderr = self.fails(1, &with_json);
        let error: Value = serde_json::from_str(&stderr)
            .unwrap_or_else(|e| panic!("{args:?}: stderr is not JSON ({e}): {stderr}"));
        (
            error["error"]["code"].as_str().unwrap().to_owned(),
            error["error"]["message"].as_str().unwrap().to_owned(),
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

#[test]
fn create_shows_the_key_once_and_list_shows_it_without_the_key() {
    let scratch = Scratch::initialised("create");
    let output = scratch.run(&[
        "create",
        "--tenant",
        "acme",
        "--scopes",
        "leads:read,leads:write",
        "--plan",
        "pro",
        "--env",
        "live",
        "--name",
        "n8n Production",
        "--expires-in",
        "30d",
    ]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let key = stdout.trim_end_matches('\n');
    assert_eq!(
        stdout.lines().count(),
        1,
        "the key alone on a line: {stdout:?}"
    );
    assert!(
        key.starts_with("sk_live_") && key.len() == "sk_live_".len() + 24,
        "{key}"
    );
    assert!(!stderr.contains(key), "stderr shows the key: {stderr}");

    let stored = scratch.database_bytes();
    assert!(
        !stored
            .windows(key.len())
            .any(|window| window == key.as_bytes()),
        "the database's files hold the raw key"
    );
    let config = serde_json::to_string(&scratch.config()).unwrap();
    assert!(
        config.contains(&KeyHash::of(key.as_bytes()).to_hex()),
        "the configuration lacks the key's hash"
    );

    let table = scratch.ok(&["list"]);
    let json = scratch.ok(&["list", "--json"]);
    for listing in [&table, &json] {
        assert!(!listing.contains(key), "{listing}");
        assert!(
            !listing.contains(&KeyHash::of(key.as_bytes()).to_hex()),
            "{listing}"
        );
    }
    assert!(
        table.contains("n8n Production") && table.contains("active"),
        "{table}"
    );
    let rows = scratch.list();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["tenant"], "acme");
    assert_eq!(row["plan"], "pro");
    assert_eq!(
        row["scopes"],
        serde_json::json!(["leads:read", "leads:write"])
    );
    assert_eq!(row["state"], "active");
    let hint = row["hint"].as_str().unwrap();
    assert_eq!(hint, format!("{}…{}", &key[..11], &key[key.len() - 4..]));
    let created = parse_rfc3339(row["created_at"].as_str().unwrap()).unwrap();
    let expires = parse_rfc3339(row["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires - created, 30 * 86_400 * 1_000_000_000);
    assert!(Config::parse(config.as_bytes()).unwrap().is_some());
}

#[test]
fn key_formats_follow_the_prefix_options() {
    let scratch = Scratch::initialised("formats");
    let (_, syx) = scratch.create("acme", &["--prefix", "syx_live_"]);
    let (_, crm) = scratch.create("acme", &["--prefix", "crm_"]);
    let (_, test) = scratch.create("acme", &["--env", "test"]);
    let (_, sydx) = scratch.create("acme-eu", &["--tenant-prefix"]);
    assert!(syx.starts_with("syx_live_"), "{syx}");
    assert!(crm.starts_with("crm_"), "{crm}");
    assert!(test.starts_with("sk_test_"), "{test}");
    assert!(sydx.starts_with("sydx_acme-eu_"), "{sydx}");
    for key in [&syx, &crm, &test, &sydx] {
        let random = &key[key.len() - 24..];
        assert!(random.bytes().all(|b| b.is_ascii_alphanumeric()), "{key}");
    }
    let stderr = scratch.fails(
        2,
        &[
            "create",
            "--tenant",
            "acme corp",
            "--scopes",
            "",
            "--name",
            "x",
            "--tenant-prefix",
        ],
    );
    assert!(stderr.contains("cannot be part of a key"), "{stderr}");
}

#[test]
fn a_missing_database_is_refused_by_every_command_that_reads_or_changes_keys() {
    let scratch = Scratch::new("missing");
    let out = scratch.dir.join("out.yaml");
    let out = out.to_str().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["list"],
        vec!["show", "key_x"],
        vec!["validate"],
        vec!["create", "--tenant", "acme", "--scopes", "a", "--name", "x"],
        vec!["revoke", "key_x"],
        vec!["rotate", "key_x"],
        vec!["settings", "get"],
        vec!["import", "keys.ndjson"],
        vec!["render", "ecds", "--out", out],
        vec!["render", "config"],
    ];
    for command in &commands {
        let (code, message) = scratch.refused(command);
        assert_eq!(code, "no_database", "{command:?}: {message}");
        assert!(
            message.contains("apikey init") && message.contains("import-state"),
            "{command:?}: the refusal does not say how to make one: {message}"
        );
    }
    assert!(
        !scratch.db().exists(),
        "a refused command made the database"
    );
    assert!(!Path::new(out).exists(), "a refused render wrote its file");
}

#[test]
fn a_change_the_validator_refuses_is_not_stored_and_names_the_field() {
    let scratch = Scratch::initialised("refused-change");
    scratch.create("acme", &[]);
    let before = scratch.config();
    let (code, message) = scratch.refused(&[
        "create", "--tenant", "acme", "--scopes", "a", "--plan", "gold", "--name", "x",
    ]);
    assert_eq!(code, "invalid_request", "{message}");
    assert!(
        message.contains("plan") && message.contains("gold"),
        "the refusal does not name the field and the value: {message}"
    );
    assert_eq!(
        scratch.config(),
        before,
        "a refused create changed the keys"
    );
}

#[test]
fn import_state_moves_an_old_state_file_and_explains_a_bad_one() {
    let scratch = Scratch::new("import-state");
    let state = scratch.dir.join("apikey-state.json");
    let sha = KeyHash::of(b"sk_live_importedKey0000000000000").to_hex();
    let document = serde_json::json!({
        "plans": {"pro": {"scopes": ["leads:*"]}},
        "keys": [
            {"id": "key_old", "sha256": sha, "tenant": "acme", "scopes": ["leads:read"], "plan": "pro",
             "name": "CRM", "hint": "sk_live_imp…0000", "created_at": "2025-01-01T00:00:00Z"},
            {"id": "key_gone", "sha256": KeyHash::of(b"x").to_hex(), "tenant": "acme", "revoked": true}
        ]
    });
    fs::write(&state, serde_json::to_string_pretty(&document).unwrap()).unwrap();

    let missing = scratch.refused(&["import-state", "nothere.json"]);
    assert_eq!(missing.0, "no_state", "{}", missing.1);
    assert!(
        missing.1.contains("nothere.json") && missing.1.contains("state file"),
        "the refusal does not name the file it looked for: {}",
        missing.1
    );
    let bad = scratch.dir.join("bad.json");
    fs::write(&bad, r#"{"keys": [{"id": "k", "tenant": "acme"}]}"#).unwrap();
    let invalid = scratch.refused(&["import-state", bad.to_str().unwrap()]);
    assert_eq!(invalid.0, "invalid_state", "{}", invalid.1);
    assert!(
        invalid.1.contains("keys[0]") && invalid.1.contains("not a valid state file"),
        "the refusal does not name the field: {}",
        invalid.1
    );
    fs::write(&bad, "{not json").unwrap();
    assert_eq!(
        scratch.refused(&["import-state", bad.to_str().unwrap()]).0,
        "invalid_state"
    );
    assert!(
        !scratch.db().exists() || scratch.config()["keys"] == serde_json::json!([]),
        "a refused import-state stored keys"
    );

    let done: Value =
        serde_json::from_str(&scratch.ok(&["--json", "import-state", state.to_str().unwrap()]))
            .unwrap();
    assert_eq!(
        done,
        serde_json::json!({"imported": 2, "max_keys_per_tenant": 25})
    );
    let config = scratch.config();
    assert_eq!(config["plans"], document["plans"]);
    assert_eq!(config["keys"][0]["sha256"], sha.as_str());
    assert_eq!(config["keys"][0]["created_at"], "2025-01-01T00:00:00Z");
    assert_eq!(scratch.row("key_gone")["state"], "revoked");
    let again = scratch.refused(&["import-state", state.to_str().unwrap()]);
    assert_eq!(again.0, "already_exists", "{}", again.1);
    assert!(
        fs::read(&state).is_ok(),
        "import-state removed the state file it read"
    );
}

#[test]
fn concurrent_creates_all_land() {
    let scratch = Scratch::initialised("concurrent");
    let writers = 8;
    let children: Vec<_> = (0..writers)
        .map(|n| {
            let name = format!("writer {n}");
            scratch
                .command(&[
                    "create", "--tenant", "acme", "--scopes", "a", "--name", &name,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut keys = Vec::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        keys.push(String::from_utf8(output.stdout).unwrap().trim().to_owned());
    }
    let state = scratch.config();
    let hashes: Vec<&str> = state["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["sha256"].as_str().unwrap())
        .collect();
    assert_eq!(hashes.len(), writers, "{state}");
    for key in &keys {
        let hash = KeyHash::of(key.as_bytes()).to_hex();
        assert!(hashes.contains(&hash.as_str()), "a created key was lost");
    }
}

#[test]
fn the_tenant_cap_counts_active_keys_only() {
    let scratch = Scratch::initialised_with("limit", &["--max-keys-per-tenant", "2"]);
    let (first, _) = scratch.create("acme", &[]);
    scratch.create("acme", &[]);
    let (code, message) =
        scratch.refused(&["create", "--tenant", "acme", "--scopes", "a", "--name", "x"]);
    assert_eq!(code, "key_limit_reached", "{message}");
    scratch.create("globex", &[]);
    scratch.ok(&["revoke", &first]);
    scratch.create("acme", &[]);
    // After init, the cap is a setting: the option is refused elsewhere.
    let stderr = scratch.fails(
        2,
        &[
            "--max-keys-per-tenant",
            "3",
            "create",
            "--tenant",
            "acme",
            "--scopes",
            "a",
            "--name",
            "x",
        ],
    );
    assert!(stderr.contains("settings put"), "{stderr}");
    // The environment variable sets the same cap for init.
    let env = Scratch::new("limit-env");
    let output = env
        .command(&["--json", "init"])
        .env("APIKEY_MAX_KEYS_PER_TENANT", "7")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let settings: Value = serde_json::from_str(&env.ok(&["settings", "get"])).unwrap();
    assert_eq!(settings["max_keys_per_tenant"], 7);
}

#[test]
fn rotate_keeps_the_old_key_for_the_grace_only() {
    let scratch = Scratch::initialised("rotate");
    let (old_id, _) = scratch.create("acme", &[]);
    let shown: Value =
        serde_json::from_str(&scratch.ok(&["rotate", &old_id, "--grace", "1h", "--json"])).unwrap();
    let new_id = shown["id"].as_str().unwrap();
    assert_eq!(shown["replaces"], old_id.as_str());
    let old = scratch.row(&old_id);
    let new = scratch.row(new_id);
    assert_eq!(
        (&old["state"], &new["state"]),
        (&"active".into(), &"active".into())
    );
    assert_eq!(new["scopes"], old["scopes"]);
    assert_eq!(new["name"], "test key (rotated)");
    let grace_end = parse_rfc3339(old["expires_at"].as_str().unwrap()).unwrap();
    let rotated_at = parse_rfc3339(new["created_at"].as_str().unwrap()).unwrap();
    assert_eq!(grace_end - rotated_at, 3_600 * 1_000_000_000);

    assert_eq!(
        old["replaced_by"], new_id,
        "the old key does not name its successor"
    );

    // No grace: the old key is expired at once.
    let raw = scratch.ok(&["rotate", new_id, "--grace", "0s"]);
    assert_eq!(raw.lines().count(), 1);
    assert_eq!(scratch.row(new_id)["state"], "expired");
    let (code, message) = scratch.refused(&["rotate", new_id]);
    assert_eq!(code, "conflict", "{message}");
}

#[test]
fn rotating_a_key_already_in_its_grace_period_is_refused() {
    let scratch = Scratch::initialised("rotate-twice");
    let (old_id, _) = scratch.create("acme", &[]);
    let shown: Value =
        serde_json::from_str(&scratch.ok(&["rotate", &old_id, "--grace", "1h", "--json"])).unwrap();
    let new_id = shown["id"].as_str().unwrap();
    let before = scratch.config();
    let output = scratch.run(&["rotate", &old_id, "--grace", "30d"]);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "a second rotation was not refused: {stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "a second rotation printed a key: {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        stderr.contains("already rotated") && stderr.contains(new_id),
        "the refusal does not name the key that replaced it: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(
        scratch.config(),
        before,
        "a refused rotation changed the keys"
    );
    assert_eq!(scratch.list().len(), 2, "a refused rotation made a key");
    // The successor is rotated as usual.
    scratch.ok(&["rotate", new_id]);
}

#[test]
fn revoke_keeps_the_key_for_audit_and_update_and_delete_are_gone() {
    let scratch = Scratch::initialised("revoke");
    let (id, _) = scratch.create("acme", &["--expires-in", "1d"]);
    let revoked: Value = serde_json::from_str(&scratch.ok(&["--json", "revoke", &id])).unwrap();
    assert_eq!(revoked["revoked"], true);
    assert!(
        revoked["revoked_at"].is_string(),
        "no revoked_at: {revoked}"
    );
    assert_eq!(scratch.row(&id)["state"], "revoked");
    assert_eq!(scratch.config()["keys"][0]["revoked"], true);
    let (code, message) = scratch.refused(&["revoke", "key_nothere"]);
    assert_eq!(code, "not_found", "{message}");
    for gone in ["update", "delete"] {
        let stderr = scratch.fails(2, &[gone, &id]);
        assert!(
            stderr.contains(&format!("unrecognized subcommand '{gone}'")),
            "{gone}: {stderr}"
        );
    }
    assert_eq!(
        scratch.list().len(),
        1,
        "the revoked key is no longer listed"
    );
}

#[test]
fn usage_mistakes_exit_2_with_one_line() {
    let scratch = Scratch::initialised("usage");
    for args in [
        vec!["list", "--bogus"],
        vec!["create", "--tenant"],
        vec![
            "create",
            "--tenant",
            "a",
            "--scopes",
            "a",
            "--name",
            "x",
            "--expires-in",
            "soon",
        ],
        vec!["rotate"],
        vec!["frobnicate"],
    ] {
        let stderr = scratch.fails(2, &args);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
    assert!(scratch.ok(&["help"]).contains("Usage: apikey"));
}

#[test]
fn help_version_and_completions_are_printed_on_stdout() {
    let scratch = Scratch::new("help");
    assert_eq!(
        scratch.ok(&["--version"]),
        format!("apikey {}\n", env!("CARGO_PKG_VERSION"))
    );
    for args in [["help", "create"], ["create", "--help"]] {
        let help = scratch.ok(&args);
        assert!(
            help.contains("Usage: apikey create") && help.contains("--tenant-prefix"),
            "apikey {args:?}: {help}"
        );
    }
    let bash = scratch.ok(&["completions", "bash"]);
    assert!(
        bash.contains("complete -F _apikey") && bash.contains("rotate"),
        "not a bash completion script: {bash}"
    );
    assert!(scratch
        .ok(&["completions", "zsh"])
        .starts_with("#compdef apikey"));
    assert!(scratch
        .ok(&["completions", "fish"])
        .contains("complete -c apikey"));
}

#[test]
fn with_json_errors_are_a_json_object_on_stderr_too() {
    let scratch = Scratch::initialised("json-errors");
    let cases: [(&[&str], i32, &str); 3] = [
        (&["--json", "list", "--bogus"], 2, "usage"),
        (&["revoke", "key_nothere", "--json"], 1, "not_found"),
        (
            &[
                "create", "--json", "--tenant", "a", "--scopes", "a", "--name", "x", "--plan",
                "gold",
            ],
            1,
            "invalid_request",
        ),
    ];
    for (args, exit, code) in cases {
        let output = scratch.run(args);
        assert_eq!(output.status.code(), Some(exit), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?} wrote to stdout");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        let error: Value = serde_json::from_str(&stderr)
            .unwrap_or_else(|e| panic!("{args:?}: stderr is not JSON ({e}): {stderr}"));
        assert_eq!(error["error"]["code"], code, "{args:?}: {stderr}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{args:?}: {stderr}"
        );
    }
    let plain = scratch.fails(1, &["revoke", "key_nothere"]);
    assert!(
        plain.starts_with("apikey: ") && plain.contains("key_nothere"),
        "{plain}"
    );
}

#[test]
fn init_refuses_to_overwrite_and_needs_no_options() {
    let scratch = Scratch::initialised("init");
    let before = scratch.ok(&["settings", "get"]);
    let (code, message) = scratch.refused(&["init"]);
    assert_eq!(code, "already_exists", "{message}");
    assert_eq!(
        scratch.ok(&["settings", "get"]),
        before,
        "init overwrote the settings"
    );
    let bare = Scratch::new("init-bare");
    bare.ok(&["init", "--schemes", "x-api-key", "--key-prefixes", "crm_"]);
    let settings: Value = serde_json::from_str(&bare.ok(&["settings", "get"])).unwrap();
    assert_eq!(settings["schemes"], serde_json::json!(["x-api-key"]));
    assert_eq!(settings["max_keys_per_tenant"], 25, "init set no cap");
    let stderr = bare.fails(
        1,
        &["create", "--tenant", "a", "--scopes", "", "--name", "x"],
    );
    assert!(
        stderr.contains("key_prefixes") || stderr.contains("prefix"),
        "{stderr}"
    );
    let key = bare.ok(&[
        "create", "--tenant", "a", "--scopes", "", "--name", "x", "--prefix", "crm_",
    ]);
    assert!(key.starts_with("crm_"), "{key}");
}

#[test]
fn init_writes_the_v1_1_options_and_the_validator_refuses_bad_ones() {
    let scratch = Scratch::new("init-v1-1");
    scratch.ok(&[
        "init",
        "--require-https",
        "--trusted-https-header",
        "x-forwarded-proto",
        "--error-doc-url",
        "https://docs.example.com/errors#{code}",
    ]);
    let state: Value = serde_json::from_str(&scratch.ok(&["settings", "get"])).unwrap();
    assert_eq!(state["require_https"], true);
    assert_eq!(state["trusted_https_header"], "x-forwarded-proto");
    assert_eq!(
        state["error_doc_url"],
        "https://docs.example.com/errors#{code}"
    );
    let rendered = scratch.ok(&["render", "config"]);
    let rendered: Value = serde_json::from_str(&rendered).unwrap();
    assert_eq!(rendered["require_https"], true, "{rendered}");
    // A trusted header needs --require-https (clap says so, exit 2); a
    // plain-http link is refused by the filter's own validation (exit 1).
    let usage = Scratch::new("init-v1-1-usage");
    let stderr = usage.fails(2, &["init", "--trusted-https-header", "x-forwarded-proto"]);
    assert!(stderr.contains("--require-https"), "{stderr}");
    let stderr = usage.fails(
        1,
        &["init", "--error-doc-url", "http://docs.example.com/{code}"],
    );
    assert!(stderr.contains("error_doc_url"), "{stderr}");
    assert!(!usage.db().exists(), "a refused init made the database");
    // A whole configuration with keys is import-state's to move.
    let with_keys = usage.dir.join("config.json");
    fs::write(
        &with_keys,
        serde_json::json!({"keys": [{"id": "k", "sha256": KeyHash::of(b"k").to_hex(), "tenant": "t"}]})
            .to_string(),
    )
    .unwrap();
    let stderr = usage.fails(1, &["init", "--from", with_keys.to_str().unwrap()]);
    assert!(stderr.contains("import-state"), "{stderr}");
}

#[test]
fn every_change_publishes_the_ecds_file_and_renders_carry_the_config() {
    let scratch = Scratch::initialised("render");
    let ecds = scratch.dir.join("ecds");
    fs::create_dir(&ecds).unwrap();
    let (id, key) = {
        let output = scratch
            .command(&[
                "create", "--json", "--tenant", "acme", "--scopes", "a", "--name", "x",
            ])
            .env("APIKEY_ECDS_DIR", &ecds)
            .env("APIKEY_WASM", "/opt/apikey_filter.wasm")
            .output()
            .unwrap();
        assert!(output.status.success());
        let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
        (
            shown["id"].as_str().unwrap().to_owned(),
            shown["key"].as_str().unwrap().to_owned(),
        )
    };
    let config_of = |document: &Value| -> Value {
        let wasm = &document["resources"][0]["typed_config"];
        assert_eq!(
            wasm["@type"],
            "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
        );
        let value = wasm["config"]["configuration"]["value"].as_str().unwrap();
        assert!(Config::parse(value.as_bytes()).unwrap().is_some());
        serde_json::from_str(value).unwrap()
    };
    let published: Value = serde_json::from_str(&read(&ecds.join("apikey.yaml"))).unwrap();
    assert_eq!(config_of(&published), scratch.config());
    assert_eq!(
        published["resources"][0]["typed_config"]["config"]["vm_config"]["code"]["local"]
            ["filename"],
        "/opt/apikey_filter.wasm"
    );
    assert!(read(&ecds.join("apikey.yaml")).contains(&KeyHash::of(key.as_bytes()).to_hex()));
    let mut names: Vec<String> = fs::read_dir(&ecds)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["apikey.yaml", "apikey.yaml.lock"],
        "a temporary file was left"
    );

    scratch.ok(&["--ecds-dir", ecds.to_str().unwrap(), "revoke", &id]);
    let revoked: Value = serde_json::from_str(&read(&ecds.join("apikey.yaml"))).unwrap();
    assert_eq!(config_of(&revoked)["keys"][0]["revoked"], true);

    let out = scratch.dir.join("ecds.json");
    scratch.ok(&["render", "ecds", "--out", out.to_str().unwrap()]);
    let rendered: Value = serde_json::from_str(&read(&out)).unwrap();
    assert_eq!(config_of(&rendered), scratch.config());

    let config: Value = serde_json::from_str(&scratch.ok(&["render", "config"])).unwrap();
    assert_eq!(config, scratch.config());

    let istio = scratch.ok(&[
        "render",
        "istio",
        "--namespace",
        "edge",
        "--url",
        "oci://r/m:1",
    ]);
    assert!(istio.contains("apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n"));
    assert!(istio.contains("  namespace: \"edge\"\n"), "{istio}");
    assert!(istio.contains("  phase: AUTHN\n") && istio.contains("  failStrategy: FAIL_CLOSE\n"));
    let (_, plugin) = istio.split_once("  pluginConfig:\n").unwrap();
    let plugin: Value = serde_json::from_str(plugin).unwrap();
    assert_eq!(plugin, scratch.config());
}

#[test]
fn usage_shows_a_keys_days_and_list_its_last_use_or_never() {
    let scratch = Scratch::initialised("key-usage");
    let (used, _) = scratch.create("acme", &[]);
    let (idle, _) = scratch.create("acme", &[]);
    // What a gateway's report stores (POST /v1/feed/usage), written with
    // the service's own operation, as `apikey serve` would.
    let now = parse_rfc3339("2026-12-05T10:00:00Z").unwrap();
    let report = format!(
        "{{\"id\":\"{used}\",\"count\":3,\"last_used_at\":\"2026-12-04T22:00:00Z\"}}\n\
         {{\"id\":\"{used}\",\"count\":4,\"last_used_at\":\"2026-12-05T09:30:00Z\"}}\n"
    );
    let mut connection = apikey_service::db::open(&scratch.db()).unwrap();
    let uses = apikey_service::usage::parse(report.as_bytes()).unwrap();
    apikey_service::usage::record(&mut connection, &uses, now).unwrap();
    drop(connection);

    let table = scratch.ok(&["list"]);
    let header = table.lines().next().unwrap();
    assert!(header.ends_with("LAST USED"), "{table}");
    let line = |id: &str| {
        table
            .lines()
            .find(|line| line.starts_with(id))
            .unwrap_or_else(|| panic!("{id} not listed: {table}"))
            .to_owned()
    };
    assert!(
        line(&used).ends_with("2026-12-05T09:30:00Z"),
        "the used key's last use: {table}"
    );
    assert!(line(&idle).ends_with("never"), "the idle key: {table}");
    assert_eq!(scratch.row(&used)["last_used_at"], "2026-12-05T09:30:00Z");
    assert_eq!(scratch.row(&idle)["last_used_at"], Value::Null);

    let shown = scratch.ok(&["usage", &used]);
    assert_eq!(
        shown.lines().collect::<Vec<_>>(),
        [
            format!("{used}  last used 2026-12-05T09:30:00Z").as_str(),
            "DAY         REQUESTS",
            "2026-12-04  3",
            "2026-12-05  4"
        ],
        "{shown}"
    );
    let json: Value = serde_json::from_str(&scratch.ok(&["--json", "usage", &used])).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"id": used, "days": [{"day": "2026-12-04", "count": 3},
                                                {"day": "2026-12-05", "count": 4}]})
    );
    let idle_shown = scratch.ok(&["usage", &idle]);
    assert!(
        idle_shown.contains("last used never") && idle_shown.contains("no requests reported"),
        "{idle_shown}"
    );
    let (code, message) = scratch.refused(&["usage", "key_nowhere"]);
    assert_eq!(code, "not_found", "{message}");
}
