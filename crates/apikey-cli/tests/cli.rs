//! The built `apikey` binary, run as an operator runs it, in a scratch
//! directory per test: keys shown once, an invalid state refused by every
//! command, concurrent writers, the tenant limit, rotation grace, and the
//! rendered documents carrying the configuration.

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

/// A scratch directory with a state file path, removed on drop.
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
        let scratch = Self::new(name);
        let plans = scratch.dir.join("plans.json");
        fs::write(&plans, PLANS).unwrap();
        scratch.ok(&["init", "--plans", plans.to_str().unwrap()]);
        scratch
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_apikey"));
        command
            .args(args)
            .current_dir(&self.dir)
            .env("APIKEY_STATE", self.state())
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

    fn state_json(&self) -> Value {
        serde_json::from_slice(&fs::read(self.state()).unwrap()).unwrap()
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

    let state = read(&scratch.state());
    assert!(!state.contains(key), "the state holds the raw key");
    assert!(state.contains(&KeyHash::of(key.as_bytes()).to_hex()));

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
    assert!(Config::parse(state.as_bytes()).unwrap().is_some());
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
fn an_invalid_hand_edited_state_is_refused_by_every_command() {
    let scratch = Scratch::initialised("invalid");
    let (id, _) = scratch.create("acme", &[]);
    let mut state = scratch.state_json();
    state["keys"][0]["plan"] = Value::from("gold");
    let edited = serde_json::to_string_pretty(&state).unwrap();
    fs::write(scratch.state(), &edited).unwrap();
    let out = scratch.dir.join("out.yaml");
    let out = out.to_str().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["list"],
        vec!["validate"],
        vec!["create", "--tenant", "acme", "--scopes", "a", "--name", "x"],
        vec!["revoke", &id],
        vec!["rotate", &id],
        vec!["update", &id, "--name", "y"],
        vec!["delete", &id],
        vec!["render", "ecds", "--out", out],
        vec!["render", "config"],
        vec!["render", "istio", "--url", "oci://r/m:1"],
    ];
    for command in &commands {
        let stderr = scratch.fails(1, command);
        assert!(
            stderr.contains("keys[0].plan: unknown plan \"gold\""),
            "{command:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{command:?}: {stderr}");
    }
    assert_eq!(read(&scratch.state()), edited, "the state was touched");
    assert!(!Path::new(out).exists());
}

#[test]
fn a_change_the_validator_refuses_is_not_written_and_names_what_was_typed() {
    let scratch = Scratch::initialised("refused-change");
    scratch.create("acme", &[]);
    let before = read(&scratch.state());
    let stderr = scratch.fails(
        1,
        &[
            "create", "--tenant", "acme", "--scopes", "a", "--plan", "gold", "--name", "x",
        ],
    );
    assert_eq!(
        stderr, "apikey: --plan gold: no such plan (plans: free, pro)\n",
        "the refusal does not name the option and value typed"
    );
    assert_eq!(read(&scratch.state()), before);
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
    let state = scratch.state_json();
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
fn the_tenant_limit_counts_active_keys_only() {
    let scratch = Scratch::initialised("limit");
    let limit = ["--max-keys-per-tenant", "2"];
    let (first, _) = scratch.create("acme", &limit);
    scratch.create("acme", &limit);
    let stderr = scratch.fails(
        1,
        &[
            "create",
            "--tenant",
            "acme",
            "--scopes",
            "a",
            "--name",
            "x",
            "--max-keys-per-tenant",
            "2",
        ],
    );
    assert!(stderr.contains("limit of 2"), "{stderr}");
    scratch.create("globex", &limit);
    scratch.ok(&["revoke", &first]);
    scratch.create("acme", &limit);
    // The environment variable sets the same limit.
    let output = scratch
        .command(&["create", "--tenant", "acme", "--scopes", "a", "--name", "x"])
        .env("APIKEY_MAX_KEYS_PER_TENANT", "2")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
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
    let stderr = scratch.fails(1, &["rotate", new_id]);
    assert!(stderr.contains("is expired"), "{stderr}");
}

#[test]
fn rotating_a_key_already_in_its_grace_period_is_refused() {
    let scratch = Scratch::initialised("rotate-twice");
    let (old_id, _) = scratch.create("acme", &[]);
    let shown: Value =
        serde_json::from_str(&scratch.ok(&["rotate", &old_id, "--grace", "1h", "--json"])).unwrap();
    let new_id = shown["id"].as_str().unwrap();
    let before = read(&scratch.state());
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
        read(&scratch.state()),
        before,
        "a refused rotation changed the state"
    );
    assert_eq!(scratch.list().len(), 2, "a refused rotation made a key");
    // The successor is rotated as usual.
    scratch.ok(&["rotate", new_id]);
}

#[test]
fn update_revoke_and_delete_change_the_key_table() {
    let scratch = Scratch::initialised("update");
    let (id, _) = scratch.create("acme", &["--expires-in", "1d"]);
    scratch.ok(&[
        "update",
        &id,
        "--scopes",
        "leads:read,mcp:*",
        "--plan",
        "free",
        "--no-expiry",
        "--name",
        "renamed",
    ]);
    let row = scratch.row(&id);
    assert_eq!(row["scopes"], serde_json::json!(["leads:read", "mcp:*"]));
    assert_eq!(row["plan"], "free");
    assert_eq!(row["expires_at"], Value::Null);
    assert_eq!(row["name"], "renamed");
    scratch.ok(&["revoke", &id]);
    assert_eq!(scratch.row(&id)["state"], "revoked");
    assert_eq!(scratch.state_json()["keys"][0]["revoked"], true);
    scratch.ok(&["delete", &id]);
    assert!(scratch.list().is_empty());
    let stderr = scratch.fails(1, &["delete", &id]);
    assert!(stderr.contains("no key with id"), "{stderr}");
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
            "invalid_change",
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
    assert!(plain.starts_with("apikey: no key with id"), "{plain}");
}

#[test]
fn init_refuses_to_overwrite_and_needs_no_options() {
    let scratch = Scratch::initialised("init");
    let before = read(&scratch.state());
    let stderr = scratch.fails(1, &["init"]);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(read(&scratch.state()), before);
    let bare = Scratch::new("init-bare");
    bare.ok(&["init", "--schemes", "x-api-key", "--key-prefixes", "crm_"]);
    assert_eq!(
        bare.state_json()["schemes"],
        serde_json::json!(["x-api-key"])
    );
    let stderr = bare.fails(
        1,
        &["create", "--tenant", "a", "--scopes", "", "--name", "x"],
    );
    assert!(stderr.contains("key_prefixes"), "{stderr}");
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
    let state = scratch.state_json();
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
    assert!(!usage.state().exists(), "a refused init wrote a state file");
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
    let state = scratch.state_json();
    assert_eq!(config_of(&published), state);
    assert_eq!(
        published["resources"][0]["typed_config"]["config"]["vm_config"]["code"]["local"]
            ["filename"],
        "/opt/apikey_filter.wasm"
    );
    assert!(read(&ecds.join("apikey.yaml")).contains(&KeyHash::of(key.as_bytes()).to_hex()));
    assert_eq!(
        fs::read_dir(&ecds).unwrap().count(),
        1,
        "a temporary file was left"
    );

    scratch.ok(&["--ecds-dir", ecds.to_str().unwrap(), "revoke", &id]);
    let revoked: Value = serde_json::from_str(&read(&ecds.join("apikey.yaml"))).unwrap();
    assert_eq!(config_of(&revoked)["keys"][0]["revoked"], true);

    let out = scratch.dir.join("ecds.json");
    scratch.ok(&["render", "ecds", "--out", out.to_str().unwrap()]);
    let rendered: Value = serde_json::from_str(&read(&out)).unwrap();
    assert_eq!(config_of(&rendered), scratch.state_json());

    let config: Value = serde_json::from_str(&scratch.ok(&["render", "config"])).unwrap();
    assert_eq!(config, scratch.state_json());

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
    assert_eq!(plugin, scratch.state_json());
}
