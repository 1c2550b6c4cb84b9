//! The command line: global options, a subcommand and its options, read by
//! clap (derive) so `apikey --version`, `apikey help create`, `apikey
//! create --help`, typo suggestions and shell completions behave as in
//! gh, kubectl or stripe.
//!
//! Options are `--name value` or `--name=value`. Global options may come
//! before or after the subcommand and fall back to environment variables
//! (`APIKEY_DB`, `APIKEY_SERVER`, `APIKEY_ADMIN_TOKEN`,
//! `APIKEY_ECDS_DIR`, `APIKEY_ECDS_FORMAT`, `APIKEY_EDGE`, `APIKEY_WASM`,
//! `APIKEY_DYNAMIC_MODULE`, `APIKEY_MAX_KEYS_PER_TENANT`; empty counts as
//! unset), read here rather
//! than by clap so tests pass their own environment. Where the keys live
//! ([`Store`]) is `--db` (default `./apikey.db`) or `--server`. A list option
//! (`--scopes`, `--schemes`, `--key-prefixes`) takes commas and may be
//! given again to add to the list; any other option given twice is a
//! mistake. `--` ends options (for an id that starts with `-`). Every
//! mistake is a [`CliError::Usage`] of one line naming what was typed, and
//! values are checked here (durations, dates, numbers) so a bad one never
//! reaches the database.

use std::path::PathBuf;

use apikey_core::timestamp::parse_rfc3339;
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

use crate::duration::parse_duration;
use crate::error::{usage, CliError};
use crate::expiry::Expiry;
use crate::render::{self, EcdsFormat, FilterModule, IstioOptions};

/// The default database, in the working directory (as the JSON state file
/// it replaces was), so `apikey init` then `apikey create` work in a
/// directory without naming it.
pub const DEFAULT_DB: &str = "apikey.db";
/// The default `max_keys_per_tenant` that `init` and `import-state` write
/// (the seeds' 25).
pub const DEFAULT_MAX_KEYS: usize = 25;
/// The default grace of `rotate`.
pub const DEFAULT_GRACE: &str = "24h";

/// Where the keys live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// An SQLite database (`--db`, default [`DEFAULT_DB`]), the one
    /// `apikey serve` serves.
    Database(PathBuf),
    /// A running key service (`--server URL`).
    Server(String),
}

/// Where the admin token for `--server` comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--admin-token-file`: read (and trimmed) when needed.
    File(PathBuf),
    /// `APIKEY_ADMIN_TOKEN`.
    Value(String),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "File({})", path.display()),
            Self::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

/// Options every subcommand takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Globals {
    /// Where the keys live.
    pub store: Store,
    /// The admin token for `--server` (and `serve`'s admin token file).
    pub admin_token: Option<TokenSource>,
    /// When set, every change also writes the ECDS file here.
    pub ecds_dir: Option<PathBuf>,
    /// How the ECDS file is written (and so its name).
    pub ecds_format: EcdsFormat,
    /// The filter build (and its module) written into ECDS resources.
    pub filter: FilterModule,
    /// Machine-readable output (and errors).
    pub json: bool,
    /// The `max_keys_per_tenant` that `init` and `import-state` write.
    pub max_keys: usize,
    /// Whether `--max-keys-per-tenant` was given on the command line (only
    /// `init` and `import-state` take it: afterwards the cap is
    /// `settings.max_keys_per_tenant`).
    pub max_keys_given: bool,
}

/// `serve`'s options (`--db` and `--admin-token-file` are global).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeArgs {
    /// `HOST:PORT`.
    pub listen: String,
    /// The feed token's file.
    pub feed_token_file: PathBuf,
    /// The largest JSON body.
    pub max_body_bytes: usize,
    /// The largest NDJSON import.
    pub max_import_bytes: u64,
    /// No line per request on stderr.
    pub quiet: bool,
}

/// `create`'s options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateArgs {
    /// Owning tenant.
    pub tenant: String,
    /// Held scopes.
    pub scopes: Vec<String>,
    /// Plan.
    pub plan: Option<String>,
    /// Environment label.
    pub env: String,
    /// Name.
    pub name: String,
    /// Expiry.
    pub expiry: Expiry,
    /// Prefix (`--prefix`).
    pub prefix: Option<String>,
    /// `--tenant-prefix`: spell the tenant into the key.
    pub tenant_prefix: bool,
}

/// What `init` starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitArgs {
    /// A whole configuration to start from.
    pub from: Option<PathBuf>,
    /// A JSON file holding the `plans` object.
    pub plans: Option<PathBuf>,
    /// A JSON file holding the `rules` array.
    pub rules: Option<PathBuf>,
    /// `schemes`.
    pub schemes: Option<Vec<String>>,
    /// `key_prefixes`.
    pub key_prefixes: Option<Vec<String>>,
    /// `require_https: true`.
    pub require_https: bool,
    /// `trusted_https_header`.
    pub trusted_https_header: Option<String>,
    /// `error_doc_url`.
    pub error_doc_url: Option<String>,
}

/// What `render` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderTarget {
    /// The Envoy ECDS file.
    Ecds,
    /// The Istio `WasmPlugin`.
    Istio(IstioOptions),
    /// The plugin configuration JSON.
    Config,
}

/// A subcommand and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Make a database with settings.
    Init(InitArgs),
    /// Make a key.
    Create(CreateArgs),
    /// Show keys.
    List {
        /// Only this tenant's.
        tenant: Option<String>,
        /// One page of this many.
        limit: Option<usize>,
        /// The page after this cursor.
        cursor: Option<String>,
    },
    /// Show one key.
    Show {
        /// Its id.
        id: String,
    },
    /// Run the key service.
    Serve(ServeArgs),
    /// Load NDJSON §1 key objects, all or nothing.
    Import {
        /// The file (`-` for standard input).
        file: String,
    },
    /// Move a JSON state file into a new database.
    ImportState {
        /// The state file.
        file: PathBuf,
    },
    /// Print the settings.
    SettingsGet,
    /// Replace the settings.
    SettingsPut {
        /// The file (`-` for standard input).
        file: String,
    },
    /// Revoke a key.
    Revoke {
        /// Its id.
        id: String,
    },
    /// Replace a key.
    Rotate {
        /// Its id.
        id: String,
        /// How long the old key keeps working.
        grace: i64,
    },
    /// Check the configuration the database describes.
    Validate,
    /// Per-key activity from an access log.
    Usage {
        /// The JSON access log (`-` for standard input).
        log: String,
    },
    /// One key's requests by day, as gateways reported them (§8.4).
    KeyUsage {
        /// Its id.
        id: String,
    },
    /// Write a deployment document.
    Render {
        /// Which.
        target: RenderTarget,
        /// Where (stdout when `None`).
        out: Option<PathBuf>,
    },
    /// Print a shell's completion script.
    Completions {
        /// Which shell.
        shell: Shell,
    },
}

/// A parsed command line: a command to run, or text to print (the help,
/// the version).
#[derive(Debug, Clone, PartialEq, Eq)]
// One value per process: boxing the larger variant would gain nothing.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// Run this.
    Run(Invocation),
    /// Print this on standard output and exit 0.
    Show(String),
}

/// A command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Global options.
    pub globals: Globals,
    /// The subcommand.
    pub command: Command,
}

const ABOUT: &str = "Manage the API-key gateway's keys";

const LONG_ABOUT: &str = "\
Manage the API-key gateway's keys: in the key service's SQLite database (--db,
default ./apikey.db) or through a running key service (--server; apikey serve
runs one). A key is shown once, when it is made, and only its SHA-256 and a hint
are kept. Each change is validated by the filter's own validator and, with
--ecds-dir, pushed to Envoy. apikey import-state moves an old JSON state file
into a database.";

const AFTER_HELP: &str = "\
Exit codes: 0 done, 1 refused (unknown id, limit reached, invalid request, I/O),
2 usage (unknown option, missing value, bad duration or date). Either failure
is one line on stderr, `apikey: <message>`; with --json it is the object
{\"error\": {\"code\": ..., \"message\": ...}}, also on stderr. Codes: usage;
the key service's (invalid_request, unauthorized, not_found, conflict,
payload_too_large, key_limit_reached, internal_error, unavailable), the same
with --db and --server; and no_database, no_state, invalid_state,
already_exists, io_error, refused.";

const EXPIRY_HELP: &str = "RFC3339";

/// The whole command line, as clap reads it.
#[derive(Debug, Parser)]
#[command(
    name = "apikey",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    max_term_width = 100
)]
struct Cli {
    #[command(flatten)]
    globals: GlobalArgs,
    #[command(subcommand)]
    command: Option<Sub>,
}

/// Options every subcommand takes, before or after it.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
struct GlobalArgs {
    /// Work on this SQLite database, the one apikey serve serves (init,
    /// import-state, settings put and serve create it when missing)
    /// [env: APIKEY_DB] [default: ./apikey.db]
    #[arg(long, global = true, value_name = "PATH")]
    db: Option<PathBuf>,
    /// Work through a running key service at URL (http://host:port)
    /// [env: APIKEY_SERVER]
    #[arg(long, global = true, value_name = "URL")]
    server: Option<String>,
    /// The admin token's file, for --server and serve [env: APIKEY_ADMIN_TOKEN
    /// holds the token itself]
    #[arg(long, global = true, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Every change also writes DIR/apikey.yaml (or apikey.pb) for Envoy to
    /// load [env: APIKEY_ECDS_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    ecds_dir: Option<PathBuf>,
    /// How the ECDS file is written: yaml, or pb (binary protobuf, which
    /// Envoy reads without a text parser; for large tables)
    /// [env: APIKEY_ECDS_FORMAT] [default: yaml]
    #[arg(long, global = true, value_name = "FORMAT")]
    ecds_format: Option<FormatArg>,
    /// Which filter the ECDS resource runs, as the bootstrap does: wasm
    /// (envoy/envoy.yaml) or native, the dynamic module
    /// (envoy/envoy-native.yaml) [env: APIKEY_EDGE] [default: wasm]
    #[arg(long, global = true, value_name = "EDGE")]
    edge: Option<EdgeArg>,
    /// The module path in the ECDS resource [env: APIKEY_WASM]
    /// [default: target/wasm32-wasip1/release/apikey_filter.wasm]
    #[arg(long, global = true, value_name = "PATH")]
    wasm: Option<String>,
    /// With --edge native: the dynamic module's name in the ECDS resource
    /// (Envoy opens libNAME.so) [env: APIKEY_DYNAMIC_MODULE] [default:
    /// apikey_dynamic]
    #[arg(long, global = true, value_name = "NAME")]
    dynamic_module: Option<String>,
    /// Machine-readable output, and errors as {"error": {"code", "message"}}
    /// on stderr
    #[arg(long, global = true)]
    json: bool,
    /// For init and import-state: the max_keys_per_tenant setting, the
    /// active keys a tenant may have [env: APIKEY_MAX_KEYS_PER_TENANT]
    /// [default: 25]
    #[arg(long = "max-keys-per-tenant", global = true, value_name = "N", value_parser = positive)]
    max_keys: Option<usize>,
}

/// `--ecds-format`'s values.
/// `--edge`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EdgeArg {
    Wasm,
    Native,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormatArg {
    // No doc comments: clap would list them at length under every command.
    Yaml,
    Pb,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Make the database and its settings (never over existing ones)
    ///
    /// Starts from nothing, or from a §1 configuration without keys
    /// (--from; one with keys is moved by import-state), and sets plans,
    /// rules, schemes, key prefixes and the §7 options from the options;
    /// plans default to {}, max_keys_per_tenant to --max-keys-per-tenant.
    Init(InitOpts),
    /// Make a key and print it once
    ///
    /// The key is printed alone on a line (with --json: {"id", "key",
    /// "hint"}) and never again: only its SHA-256 and a hint are kept. Its
    /// prefix is --prefix, else sk_<env>_; --tenant-prefix spells the
    /// tenant in (sydx_<tenant>_...).
    Create(CreateOpts),
    /// Show the keys (never a key or its hash)
    ///
    /// Id, name, tenant, scopes, plan, hint, created, expiry, state
    /// (active, revoked or expired) and last used (as gateways following
    /// the key service reported it; never, until one did); --json adds env
    /// and replaced_by.
    #[command(visible_alias = "ls")]
    List {
        /// Only this tenant's keys
        #[arg(long, value_name = "TENANT")]
        tenant: Option<String>,
        /// One page of N keys, newest first (the next page's cursor goes to
        /// stderr, or into the --json object)
        #[arg(long, value_name = "N", value_parser = page_size)]
        limit: Option<usize>,
        /// The page after this cursor
        #[arg(long, value_name = "CURSOR")]
        cursor: Option<String>,
    },
    /// Show one key (never the key or its hash)
    Show {
        /// The key's id (apikey list shows them)
        id: String,
    },
    /// Run the key service on the --db database (contract §8)
    ///
    /// apikey --db keys.db serve --listen 127.0.0.1:8470 --admin-token-file
    /// admin.token --feed-token-file feed.token. Stops on SIGTERM or SIGINT
    /// after the requests in flight.
    Serve(ServeOpts),
    /// Load newline-delimited §1 key objects (with sha256), all or nothing
    Import {
        /// The NDJSON file [default: standard input]
        #[arg(value_name = "FILE", default_value = "-", hide_default_value = true)]
        file: String,
    },
    /// Move an old JSON state file (plans, rules, keys) into a new, empty
    /// database
    ///
    /// The settings become the state's plans, rules and options, with
    /// max_keys_per_tenant set to --max-keys-per-tenant (default 25, the
    /// limit the state-file commands enforced); the keys keep their ids,
    /// hashes, hints, creation times and rotations. The state file is only
    /// read: delete it once the database serves.
    ImportState {
        /// The state file
        file: PathBuf,
    },
    /// Print or replace the settings
    #[command(subcommand_required = true, arg_required_else_help = false)]
    Settings {
        #[command(subcommand)]
        action: SettingsSub,
    },
    /// Revoke a key: refused at once; the row stays for audit
    Revoke {
        /// The key's id (apikey list shows them)
        id: String,
    },
    /// Replace a key with a new one, printed once
    ///
    /// The new key has the old key's tenant, scopes, plan, env, limits and
    /// prefix, and its lifetime again from now. The old key works for the
    /// grace more (never longer than it already would), then expires. A key
    /// is rotated once: rotating it again during its grace is refused
    /// (rotate its successor instead).
    Rotate(RotateOpts),
    /// Check the configuration the database describes with the filter's
    /// own validator
    Validate,
    /// One key's requests by day, or per-key activity from an access log
    ///
    /// apikey usage ID: the key's requests by UTC day and its last use, as
    /// gateways following the key service reported them (at most every
    /// 10 s; --json gives the API's answer). apikey usage [--log FILE]:
    /// requests, allowed, denials by code and last use per key from Envoy's
    /// JSON access log; denials that named no key are counted apart.
    Usage {
        /// The key's id (apikey list shows them)
        #[arg(value_name = "ID", conflicts_with = "log")]
        id: Option<String>,
        /// The access log [default: standard input]
        #[arg(
            long,
            value_name = "FILE",
            default_value = "-",
            hide_default_value = true
        )]
        log: String,
    },
    /// Write a deployment document (stdout without --out)
    // A missing target is a mistake (exit 2), not a request for help.
    #[command(subcommand_required = true, arg_required_else_help = false)]
    Render {
        #[command(subcommand)]
        target: RenderSub,
        /// Write to FILE (atomically) instead of stdout
        #[arg(long, global = true, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the completion script of a shell
    ///
    /// bash: apikey completions bash > /etc/bash_completion.d/apikey;
    /// zsh: apikey completions zsh > "${fpath[1]}/_apikey";
    /// fish: apikey completions fish > ~/.config/fish/completions/apikey.fish
    Completions {
        /// The shell
        shell: Shell,
    },
    /// Print the version
    Version,
}

#[derive(Debug, Subcommand)]
enum SettingsSub {
    /// Print the settings (the §1 configuration without keys)
    Get,
    /// Replace the settings with a JSON file's object, validated as the filter validates §1
    Put {
        /// The JSON file [default: standard input]
        #[arg(value_name = "FILE", default_value = "-", hide_default_value = true)]
        file: String,
    },
}

#[derive(Debug, Args)]
struct ServeOpts {
    /// HOST:PORT to listen on (port 0: any free port, printed on stderr)
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    /// The file holding the token gateways present (trimmed)
    #[arg(long, value_name = "FILE")]
    feed_token_file: PathBuf,
    /// The largest JSON body accepted (larger: 413)
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024, value_parser = positive)]
    max_body_bytes: usize,
    /// The largest NDJSON import accepted (larger: 413)
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024 * 1024, value_parser = positive_u64)]
    max_import_bytes: u64,
    /// No line per request on stderr
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct InitOpts {
    /// A whole configuration to start from
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,
    /// A JSON file holding the "plans" object
    #[arg(long, value_name = "FILE")]
    plans: Option<PathBuf>,
    /// A JSON file holding the "rules" array
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Enabled credential schemes, comma-separated; repeatable
    #[arg(long, value_name = "a,b", action = ArgAction::Append)]
    schemes: Vec<String>,
    /// Accepted key prefixes, comma-separated; repeatable
    #[arg(long, value_name = "p,q", action = ArgAction::Append)]
    key_prefixes: Vec<String>,
    /// Refuse requests that did not arrive over TLS (403 https_required)
    #[arg(long)]
    require_https: bool,
    /// With --require-https, a header whose value "https" counts as TLS (behind a TLS-terminating balancer)
    #[arg(long, value_name = "HEADER", requires = "require_https")]
    trusted_https_header: Option<String>,
    /// Add doc_url to every denial body; {code} is replaced by the error code
    #[arg(long, value_name = "https://…{code}")]
    error_doc_url: Option<String>,
}

#[derive(Debug, Args)]
struct CreateOpts {
    /// The owning tenant
    #[arg(long, value_name = "TENANT")]
    tenant: String,
    /// A label for people
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Scope patterns, comma-separated; repeatable. '*' grants what the
    /// plan grants, '' none (required: no silent default between the two)
    #[arg(long, value_name = "a,b", required = true, action = ArgAction::Append)]
    scopes: Vec<String>,
    /// The plan (a name in the settings' plans)
    #[arg(long, value_name = "PLAN")]
    plan: Option<String>,
    /// The environment label; also the default prefix sk_<env>_
    #[arg(long, value_name = "ENV", default_value = "live")]
    env: String,
    /// Expires at this instant (RFC 3339, e.g. 2027-01-31T00:00:00Z)
    #[arg(long, value_name = EXPIRY_HELP, value_parser = expires_at, conflicts_with = "expires_in")]
    expires: Option<Expiry>,
    /// Expires this long from now (30d, 12h, 1h30m)
    #[arg(long, value_name = "DURATION", value_parser = expires_in)]
    expires_in: Option<Expiry>,
    /// The key's prefix (sk_live_, crm_, ...)
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
    /// Spell the tenant into the key: sydx_<tenant>_... (--prefix replaces sydx_)
    #[arg(long)]
    tenant_prefix: bool,
}

#[derive(Debug, Args)]
struct RotateOpts {
    /// The key's id (apikey list shows them)
    id: String,
    /// How long the old key keeps working (0s: it stops at once)
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_GRACE, value_parser = duration)]
    grace: i64,
}

#[derive(Debug, Subcommand)]
enum RenderSub {
    /// The Envoy ECDS document (what --ecds-dir writes)
    Ecds,
    /// An Istio WasmPlugin (phase AUTHN, failStrategy FAIL_CLOSE)
    Istio(IstioOpts),
    /// The plugin configuration JSON
    Config,
}

#[derive(Debug, Args)]
struct IstioOpts {
    /// metadata.name [default: apikey]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// metadata.namespace [default: istio-system]
    #[arg(long, value_name = "NAMESPACE")]
    namespace: Option<String>,
    /// The workload selector, label=value[,label=value]
    /// [default: app=istio-ingressgateway]
    #[arg(long, value_name = "LABELS", value_parser = selector)]
    selector: Option<Selector>,
    /// Where Istio fetches the module: oci://HOST/REPO@sha256:...
    /// [env: APIKEY_WASM_URL] (without either: a placeholder, and a warning)
    #[arg(long, value_name = "URL")]
    url: Option<String>,
}

/// A parsed `--selector`: a newtype so clap does not read the list as
/// many values.
#[derive(Debug, Clone)]
struct Selector(Vec<(String, String)>);

fn selector(text: &str) -> Result<Selector, String> {
    render::parse_selector(text).map(Selector)
}

fn duration(text: &str) -> Result<i64, String> {
    parse_duration(text)
}

fn expires_in(text: &str) -> Result<Expiry, String> {
    parse_duration(text).map(Expiry::In)
}

fn expires_at(text: &str) -> Result<Expiry, String> {
    let nanos = parse_rfc3339(text).map_err(|reason| format!("{text:?} {reason}"))?;
    Ok(Expiry::At(text.to_owned(), nanos))
}

fn positive_u64(text: &str) -> Result<u64, String> {
    text.parse()
        .ok()
        .filter(|&n: &u64| n > 0)
        .ok_or_else(|| format!("{text:?} is not a positive number"))
}

fn page_size(text: &str) -> Result<usize, String> {
    text.parse()
        .ok()
        .filter(|n: &usize| (1..=apikey_service::keys::MAX_PAGE).contains(n))
        .ok_or_else(|| {
            format!(
                "{text:?} is not a page size from 1 to {}",
                apikey_service::keys::MAX_PAGE
            )
        })
}

fn positive(text: &str) -> Result<usize, String> {
    text.parse()
        .ok()
        .filter(|&n: &usize| n > 0)
        .ok_or_else(|| format!("{text:?} is not a positive number"))
}

/// Parses the arguments after the program name; `env` reads an
/// environment variable (empty counts as unset).
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Parsed, CliError> {
    let env = |name: &str| env(name).filter(|value| !value.is_empty());
    let argv = std::iter::once("apikey").chain(args.iter().map(String::as_str));
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(error) => return shown_or_usage(&error, args),
    };
    let Some(sub) = cli.command else {
        return Ok(Parsed::Show(long_help()));
    };
    let Some(command) = command(sub, &env)? else {
        return Ok(Parsed::Show(version_line()));
    };
    let globals = globals(cli.globals, &env)?;
    Ok(Parsed::Run(Invocation { globals, command }))
}

/// Whether the command line asks for `--json` (read before parsing, so a
/// mistake in it is reported as JSON too).
pub fn wants_json(args: &[String]) -> bool {
    args.iter()
        .take_while(|arg| *arg != "--")
        .any(|arg| arg == "--json")
}

/// The completion script of `shell`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "apikey", &mut script);
    script
}

/// `apikey --help`.
fn long_help() -> String {
    Cli::command().render_long_help().to_string()
}

/// `apikey --version`: `apikey 0.1.0`.
fn version_line() -> String {
    format!("apikey {}\n", env!("CARGO_PKG_VERSION"))
}

/// Help and version requests become text to print; any other clap error
/// becomes one line naming what was typed, with clap's tip folded in.
fn shown_or_usage(error: &clap::Error, args: &[String]) -> Result<Parsed, CliError> {
    use clap::error::ErrorKind;
    let text = error.to_string();
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Ok(Parsed::Show(text)),
        _ => Err(usage(one_line(&text, args))),
    }
}

/// clap's rendered error (`error: ...`, indented details and tips, a blank
/// line, `Usage: ...`, `For more information, try '--help'.`) as one line:
/// `<message> <details> (<tips>; usage: <usage>; see apikey <command> --help)`.
fn one_line(text: &str, args: &[String]) -> String {
    let mut message = Vec::new();
    let mut notes = Vec::new();
    let mut usage_line = None;
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if let Some(tip) = line.strip_prefix("tip: ") {
            notes.push(tip.to_owned());
        } else if let Some(usage) = line.strip_prefix("Usage: ") {
            usage_line = Some(usage.to_owned());
        } else if line.starts_with("For more information") {
            // Replaced by the command's own help, named below.
        } else {
            message.push(line.strip_prefix("error: ").unwrap_or(line).to_owned());
        }
    }
    if let Some(usage) = usage_line {
        notes.push(format!("usage: {usage}"));
    }
    notes.push(format!("see {} --help", command_path(args)));
    format!("{} ({})", message.join(" "), notes.join("; "))
}

/// The subcommand the arguments name, as `apikey render istio`: each
/// argument that names a subcommand of the one before descends (a value
/// that happens to be a command's name only makes the pointer less exact).
fn command_path(args: &[String]) -> String {
    let mut command = Cli::command();
    let mut path = vec!["apikey".to_owned()];
    for arg in args.iter().take_while(|arg| *arg != "--") {
        let Some(sub) = command.find_subcommand(arg).cloned() else {
            continue;
        };
        path.push(sub.get_name().to_owned());
        command = sub;
    }
    path.join(" ")
}

fn globals(args: GlobalArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Globals, CliError> {
    let ecds_format = match (args.ecds_format, env("APIKEY_ECDS_FORMAT")) {
        (Some(FormatArg::Yaml), _) => EcdsFormat::Yaml,
        (Some(FormatArg::Pb), _) => EcdsFormat::Protobuf,
        (None, None) => EcdsFormat::default(),
        (None, Some(text)) => EcdsFormat::parse(&text).ok_or_else(|| {
            usage(format!(
                "APIKEY_ECDS_FORMAT={text:?}: must be yaml or pb (--ecds-format overrides it)"
            ))
        })?,
    };
    let max_keys = match (args.max_keys, env("APIKEY_MAX_KEYS_PER_TENANT")) {
        (Some(n), _) => n,
        (None, None) => DEFAULT_MAX_KEYS,
        (None, Some(text)) => positive(&text).map_err(|reason| {
            usage(format!(
                "APIKEY_MAX_KEYS_PER_TENANT: {reason} (--max-keys-per-tenant overrides it)"
            ))
        })?,
    };
    let native = match (args.edge, env("APIKEY_EDGE")) {
        (Some(edge), _) => edge == EdgeArg::Native,
        (None, None) => false,
        (None, Some(text)) => match text.as_str() {
            "wasm" => false,
            "native" => true,
            _ => {
                return Err(usage(format!(
                    "APIKEY_EDGE={text:?}: must be wasm or native (--edge overrides it)"
                )))
            }
        },
    };
    let filter = if native {
        FilterModule::Native(
            args.dynamic_module
                .clone()
                .or_else(|| env("APIKEY_DYNAMIC_MODULE"))
                .unwrap_or_else(|| render::DEFAULT_DYNAMIC_MODULE.to_owned()),
        )
    } else {
        FilterModule::Wasm(
            args.wasm
                .clone()
                .or_else(|| env("APIKEY_WASM"))
                .unwrap_or_else(|| render::DEFAULT_WASM.to_owned()),
        )
    };
    let store = store(&args, env)?;
    if matches!(store, Store::Server(_))
        && (args.ecds_dir.is_some() || env("APIKEY_ECDS_DIR").is_some())
    {
        return Err(usage(
            "--ecds-dir writes the ECDS file from a database: with --server, run apikey --db on the service's database to render it",
        ));
    }
    let admin_token = args
        .admin_token_file
        .clone()
        .map(TokenSource::File)
        .or_else(|| env("APIKEY_ADMIN_TOKEN").map(TokenSource::Value));
    Ok(Globals {
        store,
        admin_token,
        max_keys_given: args.max_keys.is_some(),
        ecds_dir: args
            .ecds_dir
            .or_else(|| env("APIKEY_ECDS_DIR").map(PathBuf::from)),
        ecds_format,
        filter,
        json: args.json,
        max_keys,
    })
}

/// Where the keys live: `--db` or `--server` on the command line (not
/// both); else `APIKEY_DB` or `APIKEY_SERVER` (not both); else the
/// database [`DEFAULT_DB`] in the working directory.
fn store(args: &GlobalArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Store, CliError> {
    match (&args.db, &args.server) {
        (Some(_), Some(_)) => {
            return Err(usage(
                "--db and --server each name where the keys live: give one",
            ))
        }
        (Some(db), None) => return Ok(Store::Database(db.clone())),
        (None, Some(url)) => return Ok(Store::Server(url.clone())),
        (None, None) => {}
    }
    match (env("APIKEY_DB"), env("APIKEY_SERVER")) {
        (Some(_), Some(_)) => Err(usage(
            "APIKEY_DB and APIKEY_SERVER are both set: unset one (or pass --db or --server)",
        )),
        (Some(db), None) => Ok(Store::Database(PathBuf::from(db))),
        (None, Some(url)) => Ok(Store::Server(url)),
        (None, None) => Ok(Store::Database(PathBuf::from(DEFAULT_DB))),
    }
}

/// The command to run; `None` for `version`, which only prints.
fn command(sub: Sub, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Command>, CliError> {
    Ok(Some(match sub {
        Sub::Init(init) => Command::Init(InitArgs {
            from: init.from,
            plans: init.plans,
            rules: init.rules,
            schemes: given_list(&init.schemes),
            key_prefixes: given_list(&init.key_prefixes),
            require_https: init.require_https,
            trusted_https_header: init.trusted_https_header,
            error_doc_url: init.error_doc_url,
        }),
        Sub::Create(create) => Command::Create(CreateArgs {
            tenant: create.tenant,
            name: create.name,
            scopes: split_list(&create.scopes),
            plan: create.plan,
            env: create.env,
            expiry: create
                .expires
                .or(create.expires_in)
                .unwrap_or(Expiry::Never),
            prefix: create.prefix,
            tenant_prefix: create.tenant_prefix,
        }),
        Sub::List {
            tenant,
            limit,
            cursor,
        } => Command::List {
            tenant,
            limit,
            cursor,
        },
        Sub::Show { id } => Command::Show { id },
        Sub::Serve(serve) => Command::Serve(ServeArgs {
            listen: serve.listen,
            feed_token_file: serve.feed_token_file,
            max_body_bytes: serve.max_body_bytes,
            max_import_bytes: serve.max_import_bytes,
            quiet: serve.quiet,
        }),
        Sub::Import { file } => Command::Import { file },
        Sub::ImportState { file } => Command::ImportState { file },
        Sub::Settings { action } => match action {
            SettingsSub::Get => Command::SettingsGet,
            SettingsSub::Put { file } => Command::SettingsPut { file },
        },
        Sub::Revoke { id } => Command::Revoke { id },
        Sub::Validate => Command::Validate,
        Sub::Usage { id: Some(id), .. } => Command::KeyUsage { id },
        Sub::Usage { id: None, log } => Command::Usage { log },
        Sub::Rotate(rotate) => Command::Rotate {
            id: rotate.id,
            grace: rotate.grace,
        },
        Sub::Render { target, out } => Command::Render {
            target: match target {
                RenderSub::Ecds => RenderTarget::Ecds,
                RenderSub::Config => RenderTarget::Config,
                RenderSub::Istio(istio) => {
                    let defaults = IstioOptions::default();
                    RenderTarget::Istio(IstioOptions {
                        name: istio.name.unwrap_or(defaults.name),
                        namespace: istio.namespace.unwrap_or(defaults.namespace),
                        selector: istio.selector.map_or(defaults.selector, |s| s.0),
                        url: istio
                            .url
                            .or_else(|| env("APIKEY_WASM_URL"))
                            .unwrap_or(defaults.url),
                    })
                }
            },
            out,
        },
        Sub::Completions { shell } => Command::Completions { shell },
        Sub::Version => return Ok(None),
    }))
}

/// A list option's values, or `None` when it was not given at all (an
/// empty list, `--scopes ''`, is a value).
fn given_list(values: &[String]) -> Option<Vec<String>> {
    (!values.is_empty()).then(|| split_list(values))
}

/// `["a, b,,c", "d"]` → `["a", "b", "c", "d"]`: commas within a value and
/// the option given again both add to the list.
fn split_list(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests;
