//! The command line: global options, a subcommand and its options.
//!
//! Hand-written rather than a parser crate: a dozen subcommands with a few
//! options each do not earn clap's build time. Options are `--name value`
//! or `--name=value`, may come before or after the subcommand, and may not
//! be repeated; `--` ends options (for an id that starts with `-`). Global
//! options fall back to environment variables (`APIKEY_STATE`,
//! `APIKEY_ECDS_DIR`, `APIKEY_ECDS_FORMAT`, `APIKEY_WASM`,
//! `APIKEY_MAX_KEYS_PER_TENANT`). Every
//! mistake is a [`CliError::Usage`] naming the flag, and values are checked
//! here (durations, dates, numbers) so a bad one never reaches the state.

use std::collections::BTreeMap;
use std::path::PathBuf;

use apikey_core::timestamp::parse_rfc3339;

use crate::duration::parse_duration;
use crate::error::{usage, CliError};
use crate::render::{self, EcdsFormat, IstioOptions};
use crate::state::{Expiry, KeyUpdate};

/// The default state file, in the working directory.
pub const DEFAULT_STATE: &str = "apikey-state.json";
/// The default limit of active keys per tenant (the seeds' 25).
pub const DEFAULT_MAX_KEYS: usize = 25;
/// The default grace of `rotate`.
pub const DEFAULT_GRACE: &str = "24h";

/// Options every subcommand takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Globals {
    /// The state file.
    pub state: PathBuf,
    /// When set, every change also writes the ECDS file here.
    pub ecds_dir: Option<PathBuf>,
    /// How the ECDS file is written (and so its name).
    pub ecds_format: EcdsFormat,
    /// The module path written into ECDS resources.
    pub wasm: String,
    /// Machine-readable output.
    pub json: bool,
    /// Active keys a tenant may have.
    pub max_keys: usize,
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
    /// Print the usage.
    Help,
    /// Print the version.
    Version,
    /// Make a state file.
    Init(InitArgs),
    /// Make a key.
    Create(CreateArgs),
    /// Show keys.
    List {
        /// Only this tenant's.
        tenant: Option<String>,
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
        /// The new key's prefix.
        prefix: Option<String>,
        /// The new key's expiry.
        expiry: Option<Expiry>,
    },
    /// Change a key.
    Update {
        /// Its id.
        id: String,
        /// The changes.
        update: KeyUpdate,
    },
    /// Remove a key.
    Delete {
        /// Its id.
        id: String,
    },
    /// Check the state file.
    Validate,
    /// Per-key activity from an access log.
    Usage {
        /// The JSON access log (`-` for standard input).
        log: String,
    },
    /// Write a deployment document.
    Render {
        /// Which.
        target: RenderTarget,
        /// Where (stdout when `None`).
        out: Option<PathBuf>,
    },
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Global options.
    pub globals: Globals,
    /// The subcommand.
    pub command: Command,
}

/// The usage text.
pub const USAGE: &str = "\
apikey: manage the API-key gateway's keys. The state file is the filter's
plugin configuration; keys are shown once, only their SHA-256 is kept.

usage: apikey [global options] <command> [options]

commands:
  init [--from FILE] [--plans FILE] [--rules FILE] [--schemes a,b] [--key-prefixes p,q]
  create --tenant T --name N --scopes a,b|'*'|'' [--plan P] [--env live]
         [--expires RFC3339 | --expires-in 30d] [--prefix sk_live_] [--tenant-prefix]
  list [--tenant T]
  revoke ID
  rotate ID [--grace 24h] [--prefix P] [--expires RFC3339 | --expires-in 90d | --no-expiry]
  update ID [--scopes a,b] [--plan P | --no-plan] [--expires RFC3339 | --expires-in 30d | --no-expiry]
         [--name N] [--env E]
  delete ID
  validate
  usage [--log FILE]         per key from Envoy's JSON access log (default: standard input):
                             requests, allowed, denials by code, last used
  render ecds [--out FILE]
  render istio [--out FILE] [--name apikey] [--namespace istio-system]
         [--selector app=istio-ingressgateway] [--url oci://...]
  render config [--out FILE]
  help | version

global options (flag, else environment variable):
  --state FILE               APIKEY_STATE, default ./apikey-state.json
  --ecds-dir DIR             APIKEY_ECDS_DIR: every change also writes DIR/apikey.yaml
  --ecds-format yaml|pb      APIKEY_ECDS_FORMAT, default yaml; pb writes DIR/apikey.pb,
                             binary protobuf Envoy reads without a text parser (large tables)
  --wasm PATH                APIKEY_WASM: module path in the ECDS resource,
                             default target/wasm32-wasip1/release/apikey_filter.wasm
  --max-keys-per-tenant N    APIKEY_MAX_KEYS_PER_TENANT, default 25 active keys
  --json                     machine-readable output

exit codes: 0 done, 1 refused (invalid state, unknown id, limit reached), 2 usage.
";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Value,
    Flag,
}

const GLOBAL_OPTIONS: &[(&str, Kind)] = &[
    ("state", Kind::Value),
    ("ecds-dir", Kind::Value),
    ("ecds-format", Kind::Value),
    ("wasm", Kind::Value),
    ("json", Kind::Flag),
    ("max-keys-per-tenant", Kind::Value),
    ("help", Kind::Flag),
];

fn command_options(command: &str) -> Option<&'static [(&'static str, Kind)]> {
    use Kind::{Flag, Value};
    Some(match command {
        "init" => &[
            ("from", Value),
            ("plans", Value),
            ("rules", Value),
            ("schemes", Value),
            ("key-prefixes", Value),
        ],
        "create" => &[
            ("tenant", Value),
            ("scopes", Value),
            ("plan", Value),
            ("env", Value),
            ("name", Value),
            ("expires", Value),
            ("expires-in", Value),
            ("prefix", Value),
            ("tenant-prefix", Flag),
        ],
        "list" => &[("tenant", Value)],
        "usage" => &[("log", Value)],
        "rotate" => &[
            ("grace", Value),
            ("prefix", Value),
            ("expires", Value),
            ("expires-in", Value),
            ("no-expiry", Flag),
        ],
        "update" => &[
            ("scopes", Value),
            ("plan", Value),
            ("no-plan", Flag),
            ("expires", Value),
            ("expires-in", Value),
            ("no-expiry", Flag),
            ("name", Value),
            ("env", Value),
        ],
        "render" => &[
            ("out", Value),
            ("name", Value),
            ("namespace", Value),
            ("selector", Value),
            ("url", Value),
        ],
        "revoke" | "delete" | "validate" | "help" | "version" => &[],
        _ => return None,
    })
}

/// Options and positionals as given.
struct Tokens {
    positionals: Vec<String>,
    values: BTreeMap<&'static str, String>,
    flags: Vec<&'static str>,
}

impl Tokens {
    fn take(&mut self, name: &str) -> Option<String> {
        self.values.remove(name)
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }
}

fn find_option(specs: &[&[(&'static str, Kind)]], name: &str) -> Option<(&'static str, Kind)> {
    specs
        .iter()
        .flat_map(|spec| spec.iter())
        .find(|(known, _)| *known == name)
        .copied()
}

/// The subcommand: the first argument that is neither an option nor the
/// value of a global option.
fn find_command(args: &[String]) -> Option<&str> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            return iter.next().map(String::as_str);
        }
        if let Some(name) = arg.strip_prefix("--") {
            if !name.contains('=')
                && find_option(&[GLOBAL_OPTIONS], name).is_some_and(|(_, k)| k == Kind::Value)
            {
                iter.next();
            }
            continue;
        }
        if arg.starts_with('-') && arg.len() > 1 {
            continue;
        }
        return Some(arg);
    }
    None
}

fn tokenize(args: &[String], command: &str) -> Result<Tokens, CliError> {
    let specs: Vec<&[(&'static str, Kind)]> = match command_options(command) {
        Some(spec) => vec![GLOBAL_OPTIONS, spec],
        None => vec![GLOBAL_OPTIONS],
    };
    let mut tokens = Tokens {
        positionals: Vec::new(),
        values: BTreeMap::new(),
        flags: Vec::new(),
    };
    let mut iter = args.iter();
    let mut only_positionals = false;
    while let Some(arg) = iter.next() {
        if only_positionals {
            tokens.positionals.push(arg.clone());
            continue;
        }
        if arg == "--" {
            only_positionals = true;
            continue;
        }
        if arg == "-h" {
            tokens.flags.push("help");
            continue;
        }
        let Some(option) = arg.strip_prefix("--") else {
            if arg.starts_with('-') && arg.len() > 1 {
                return Err(usage(format!("unknown option {arg}")));
            }
            tokens.positionals.push(arg.clone());
            continue;
        };
        let (name, inline) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (option, None),
        };
        let Some((name, kind)) = find_option(&specs, name) else {
            return Err(usage(format!("unknown option --{name} for {command}")));
        };
        if tokens.values.contains_key(name) || tokens.flag(name) {
            return Err(usage(format!("--{name} is given twice")));
        }
        match kind {
            Kind::Flag => {
                if inline.is_some() {
                    return Err(usage(format!("--{name} takes no value")));
                }
                tokens.flags.push(name);
            }
            Kind::Value => {
                let value = match inline {
                    Some(value) => value,
                    None => iter
                        .next()
                        .cloned()
                        .ok_or_else(|| usage(format!("--{name} needs a value")))?,
                };
                tokens.values.insert(name, value);
            }
        }
    }
    Ok(tokens)
}

/// Parses the arguments after the program name; `env` reads an
/// environment variable (empty counts as unset).
pub fn parse(
    args: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Invocation, CliError> {
    let env = |name: &str| env(name).filter(|value| !value.is_empty());
    let command = find_command(args).unwrap_or("help").to_owned();
    let mut tokens = tokenize(args, &command)?;
    let globals = Globals {
        state: PathBuf::from(
            tokens
                .take("state")
                .or_else(|| env("APIKEY_STATE"))
                .unwrap_or_else(|| DEFAULT_STATE.to_owned()),
        ),
        ecds_dir: tokens
            .take("ecds-dir")
            .or_else(|| env("APIKEY_ECDS_DIR"))
            .map(PathBuf::from),
        ecds_format: match tokens
            .take("ecds-format")
            .or_else(|| env("APIKEY_ECDS_FORMAT"))
        {
            None => EcdsFormat::default(),
            Some(text) => EcdsFormat::parse(&text)
                .ok_or_else(|| usage(format!("--ecds-format {text:?} must be yaml or pb")))?,
        },
        wasm: tokens
            .take("wasm")
            .or_else(|| env("APIKEY_WASM"))
            .unwrap_or_else(|| render::DEFAULT_WASM.to_owned()),
        json: tokens.flag("json"),
        max_keys: match tokens
            .take("max-keys-per-tenant")
            .or_else(|| env("APIKEY_MAX_KEYS_PER_TENANT"))
        {
            None => DEFAULT_MAX_KEYS,
            Some(text) => text
                .parse()
                .ok()
                .filter(|&n: &usize| n > 0)
                .ok_or_else(|| {
                    usage(format!(
                        "--max-keys-per-tenant {text:?} is not a positive number"
                    ))
                })?,
        },
    };
    if tokens.flag("help") {
        return Ok(Invocation {
            globals,
            command: Command::Help,
        });
    }
    // The subcommand itself is the first positional.
    if !tokens.positionals.is_empty() {
        tokens.positionals.remove(0);
    }
    let command = build(&command, &mut tokens, &env)?;
    if let Some(extra) = tokens.positionals.first() {
        return Err(usage(format!("unexpected argument {extra:?}")));
    }
    Ok(Invocation { globals, command })
}

fn build(
    command: &str,
    tokens: &mut Tokens,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Command, CliError> {
    Ok(match command {
        "help" => Command::Help,
        "version" => Command::Version,
        "init" => Command::Init(InitArgs {
            from: tokens.take("from").map(PathBuf::from),
            plans: tokens.take("plans").map(PathBuf::from),
            rules: tokens.take("rules").map(PathBuf::from),
            schemes: tokens.take("schemes").map(|text| split_list(&text)),
            key_prefixes: tokens.take("key-prefixes").map(|text| split_list(&text)),
        }),
        "create" => Command::Create(CreateArgs {
            tenant: required(tokens, "tenant")?,
            name: required(tokens, "name")?,
            // Required: no silent default between "nothing" and "all"
            // (`--scopes '*'` grants what the plan grants, `--scopes ''` none).
            scopes: split_list(&required(tokens, "scopes")?),
            plan: tokens.take("plan"),
            env: tokens.take("env").unwrap_or_else(|| "live".to_owned()),
            expiry: expiry(tokens)?.unwrap_or(Expiry::Never),
            prefix: tokens.take("prefix"),
            tenant_prefix: tokens.flag("tenant-prefix"),
        }),
        "list" => Command::List {
            tenant: tokens.take("tenant"),
        },
        "revoke" => Command::Revoke { id: id(tokens)? },
        "delete" => Command::Delete { id: id(tokens)? },
        "validate" => Command::Validate,
        "usage" => Command::Usage {
            log: tokens.take("log").unwrap_or_else(|| "-".to_owned()),
        },
        "rotate" => Command::Rotate {
            id: id(tokens)?,
            grace: parse_duration(
                &tokens
                    .take("grace")
                    .unwrap_or_else(|| DEFAULT_GRACE.to_owned()),
            )
            .map_err(|reason| usage(format!("--grace: {reason}")))?,
            prefix: tokens.take("prefix"),
            expiry: expiry(tokens)?,
        },
        "update" => {
            let id = id(tokens)?;
            if tokens.flag("no-plan") && tokens.values.contains_key("plan") {
                return Err(usage("give --plan or --no-plan, not both"));
            }
            let plan = match tokens.take("plan") {
                Some(plan) => Some(Some(plan)),
                None if tokens.flag("no-plan") => Some(None),
                None => None,
            };
            let update = KeyUpdate {
                scopes: tokens.take("scopes").map(|text| split_list(&text)),
                plan,
                expiry: expiry(tokens)?,
                name: tokens.take("name"),
                env: tokens.take("env"),
            };
            if update.is_empty() {
                return Err(usage(
                    "update needs at least one of --scopes, --plan, --no-plan, --expires, --expires-in, --no-expiry, --name, --env",
                ));
            }
            Command::Update { id, update }
        }
        "render" => {
            let what = if tokens.positionals.is_empty() {
                return Err(usage("render needs what to render: ecds, istio or config"));
            } else {
                tokens.positionals.remove(0)
            };
            let istio_only = ["name", "namespace", "selector", "url"];
            if what != "istio" {
                if let Some(name) = istio_only.iter().find(|n| tokens.values.contains_key(**n)) {
                    return Err(usage(format!("--{name} is an option of render istio")));
                }
            }
            let target = match what.as_str() {
                "ecds" => RenderTarget::Ecds,
                "config" => RenderTarget::Config,
                "istio" => {
                    let defaults = IstioOptions::default();
                    RenderTarget::Istio(IstioOptions {
                        name: tokens.take("name").unwrap_or(defaults.name),
                        namespace: tokens.take("namespace").unwrap_or(defaults.namespace),
                        selector: match tokens.take("selector") {
                            Some(text) => render::parse_selector(&text).map_err(usage)?,
                            None => defaults.selector,
                        },
                        url: tokens
                            .take("url")
                            .or_else(|| env("APIKEY_WASM_URL"))
                            .unwrap_or(defaults.url),
                    })
                }
                other => {
                    return Err(usage(format!(
                        "cannot render {other:?}: ecds, istio or config"
                    )))
                }
            };
            Command::Render {
                target,
                out: tokens.take("out").map(PathBuf::from),
            }
        }
        other => return Err(usage(format!("unknown command {other:?}"))),
    })
}

fn required(tokens: &mut Tokens, name: &str) -> Result<String, CliError> {
    tokens
        .take(name)
        .ok_or_else(|| usage(format!("--{name} is required")))
}

fn id(tokens: &mut Tokens) -> Result<String, CliError> {
    if tokens.positionals.is_empty() {
        return Err(usage("the key id is missing (apikey list shows them)"));
    }
    Ok(tokens.positionals.remove(0))
}

/// `--expires`, `--expires-in`, `--no-expiry`: at most one.
fn expiry(tokens: &mut Tokens) -> Result<Option<Expiry>, CliError> {
    let at = tokens.take("expires");
    let within = tokens.take("expires-in");
    let never = tokens.flag("no-expiry");
    match (at, within, never) {
        (None, None, false) => Ok(None),
        (Some(text), None, false) => {
            let nanos = parse_rfc3339(&text)
                .map_err(|reason| usage(format!("--expires {text:?} {reason}")))?;
            Ok(Some(Expiry::At(text, nanos)))
        }
        (None, Some(text), false) => {
            let nanos =
                parse_duration(&text).map_err(|reason| usage(format!("--expires-in: {reason}")))?;
            Ok(Some(Expiry::In(nanos)))
        }
        (None, None, true) => Ok(Some(Expiry::Never)),
        _ => Err(usage("give one of --expires, --expires-in and --no-expiry")),
    }
}

/// `a, b,,c` → `["a", "b", "c"]`.
fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests;
