use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

fn parse_line(line: &str) -> Result<Parsed, CliError> {
    parse(&words(line), &no_env)
}

fn invocation(line: &str) -> Invocation {
    match parse_line(line) {
        Ok(Parsed::Run(invocation)) => invocation,
        other => panic!("{line:?} gave {other:?}, not a command to run"),
    }
}

fn usage_message(line: &str) -> String {
    match parse_line(line) {
        Err(CliError::Usage(message)) => message,
        other => panic!("{line:?} gave {other:?}, not a usage error"),
    }
}

fn shown(line: &str) -> String {
    match parse_line(line) {
        Ok(Parsed::Show(text)) => text,
        other => panic!("{line:?} gave {other:?}, not text to print"),
    }
}

#[test]
fn the_command_line_model_is_consistent() {
    // clap's own checks: no two options share a name, defaults parse, …
    Cli::command().debug_assert();
}

#[test]
fn create_takes_its_options_in_any_order_with_either_spelling() {
    let invocation = invocation(
        "--db /tmp/k.db create --name=CRM --tenant acme --scopes leads:read,leads:write --plan pro --expires-in 30d --json",
    );
    assert_eq!(
        invocation.globals.store,
        Store::Database(PathBuf::from("/tmp/k.db"))
    );
    assert!(invocation.globals.json);
    let Command::Create(create) = invocation.command else {
        panic!("{:?}", invocation.command)
    };
    assert_eq!(create.tenant, "acme");
    assert_eq!(create.name, "CRM");
    assert_eq!(create.scopes, ["leads:read", "leads:write"]);
    assert_eq!(create.plan.as_deref(), Some("pro"));
    assert_eq!(create.env, "live");
    assert_eq!(create.expiry, Expiry::In(30 * 86_400 * 1_000_000_000));
}

#[test]
fn a_list_option_given_twice_adds_up() {
    let Command::Create(create) =
        invocation("create --tenant a --name x --scopes a --scopes b,c --scopes=d").command
    else {
        panic!("not a create")
    };
    assert_eq!(
        create.scopes,
        ["a", "b", "c", "d"],
        "--scopes did not add up"
    );
    let Command::Init(init) =
        invocation("init --schemes bearer --schemes x-api-key --key-prefixes sk_,crm_").command
    else {
        panic!("not an init")
    };
    assert_eq!(
        init.schemes,
        Some(vec!["bearer".into(), "x-api-key".into()])
    );
    assert_eq!(init.key_prefixes, Some(vec!["sk_".into(), "crm_".into()]));
    assert_eq!(
        invocation("init").command,
        Command::Init(InitArgs::default())
    );
}

#[test]
fn an_empty_scopes_value_means_no_scopes() {
    let args = ["create", "--tenant", "a", "--name", "x", "--scopes", ""].map(str::to_owned);
    let Ok(Parsed::Run(Invocation {
        command: Command::Create(create),
        ..
    })) = parse(&args, &no_env)
    else {
        panic!("--scopes '' was refused")
    };
    assert!(create.scopes.is_empty(), "{:?}", create.scopes);
}

#[test]
fn global_options_fall_back_to_the_environment_and_flags_win() {
    let env = |name: &str| match name {
        "APIKEY_DB" => Some("/env/keys.db".to_owned()),
        "APIKEY_ECDS_DIR" => Some("/env/ecds".to_owned()),
        "APIKEY_WASM" => Some("/env/m.wasm".to_owned()),
        "APIKEY_MAX_KEYS_PER_TENANT" => Some("3".to_owned()),
        "APIKEY_ECDS_FORMAT" => Some("pb".to_owned()),
        _ => None,
    };
    let Ok(Parsed::Run(run)) = parse(&words("list"), &env) else {
        panic!("list did not parse")
    };
    let globals = run.globals;
    assert_eq!(
        globals.store,
        Store::Database(PathBuf::from("/env/keys.db"))
    );
    assert_eq!(globals.ecds_dir, Some(PathBuf::from("/env/ecds")));
    assert_eq!(globals.ecds_format, EcdsFormat::Protobuf);
    assert_eq!(globals.filter, FilterModule::Wasm("/env/m.wasm".to_owned()));
    assert_eq!(globals.max_keys, 3);
    let Ok(Parsed::Run(run)) = parse(
        &words("list --db flag.db --ecds-format yaml --max-keys-per-tenant 4"),
        &env,
    ) else {
        panic!("list with flags did not parse")
    };
    assert_eq!(run.globals.store, Store::Database(PathBuf::from("flag.db")));
    assert_eq!(run.globals.ecds_format, EcdsFormat::Yaml);
    assert_eq!(run.globals.max_keys, 4);
}

#[test]
fn the_native_edge_names_the_dynamic_module_from_flag_environment_or_default() {
    let native = |name: &str| (name == "APIKEY_EDGE").then(|| "native".to_owned());
    let Ok(Parsed::Run(run)) = parse(&words("list"), &native) else {
        panic!("list did not parse")
    };
    assert_eq!(
        run.globals.filter,
        FilterModule::Native(render::DEFAULT_DYNAMIC_MODULE.to_owned())
    );
    let Ok(Parsed::Run(run)) = parse(
        &words("list --edge native --dynamic-module other --wasm ignored.wasm"),
        &no_env,
    ) else {
        panic!("list --edge native did not parse")
    };
    assert_eq!(run.globals.filter, FilterModule::Native("other".to_owned()));
    let Ok(Parsed::Run(run)) = parse(&words("list --edge wasm"), &native) else {
        panic!("list --edge wasm did not parse")
    };
    assert_eq!(
        run.globals.filter,
        FilterModule::Wasm(render::DEFAULT_WASM.to_owned()),
        "--edge wins over APIKEY_EDGE"
    );
}

#[test]
fn a_bad_environment_variable_is_named() {
    for (name, value) in [
        ("APIKEY_EDGE", "both"),
        ("APIKEY_ECDS_FORMAT", "json"),
        ("APIKEY_MAX_KEYS_PER_TENANT", "0"),
    ] {
        let env = |asked: &str| (asked == name).then(|| value.to_owned());
        match parse(&words("list"), &env) {
            Err(CliError::Usage(message)) => {
                assert!(message.contains(name), "{name}={value}: {message}");
            }
            other => panic!("{name}={value} gave {other:?}"),
        }
    }
    let empty = |_: &str| Some(String::new());
    assert!(
        matches!(parse(&words("list"), &empty), Ok(Parsed::Run(_))),
        "an empty variable does not count as unset"
    );
}

#[test]
fn defaults_apply_without_flags_or_environment() {
    let globals = invocation("list").globals;
    assert_eq!(globals.store, Store::Database(PathBuf::from("apikey.db")));
    assert_eq!(globals.ecds_dir, None);
    assert_eq!(globals.ecds_format, EcdsFormat::Yaml);
    assert_eq!(globals.ecds_format.file_name(), "apikey.yaml");
    assert_eq!(
        globals.filter,
        FilterModule::Wasm(render::DEFAULT_WASM.to_owned())
    );
    assert_eq!(globals.max_keys, 25);
}

#[test]
fn mistakes_are_one_line_usage_errors_naming_what_was_typed() {
    let cases = [
        ("create --tenant acme --name x --bogus", "--bogus"),
        ("create --tenant acme --name", "--name"),
        ("create --name x --scopes a", "--tenant"),
        ("create --name x --tenant a", "--scopes"),
        (
            "create --tenant a --scopes a --name x --expires-in 30",
            "'30' for '--expires-in <DURATION>': bad duration",
        ),
        (
            "create --tenant a --scopes a --name x --expires 2027-01-31",
            "'2027-01-31' for '--expires",
        ),
        (
            "create --tenant a --scopes a --name x --expires-in 1d --expires 2027-01-31T00:00:00Z",
            "cannot be used with",
        ),
        (
            "create --tenant a --tenant b --name x --scopes a",
            "'--tenant <TENANT>' cannot be used multiple times",
        ),
        ("rotate key_1 --grace soon", "'soon' for '--grace"),
        ("rotate key_1 --prefix p_", "'--prefix'"),
        ("rotate key_1 --expires-in 1d", "'--expires-in'"),
        ("revoke", "<ID>"),
        ("revoke a b", "unexpected argument 'b'"),
        ("update key_1 --name n", "'update'"),
        ("delete key_1", "'delete'"),
        ("list --state s.json", "'--state'"),
        ("render", "ecds, istio, config"),
        ("render yaml", "'yaml'"),
        ("render ecds --url x", "'--url'"),
        ("render istio --selector app", "bad selector"),
        ("frobnicate", "'frobnicate'"),
        ("creat --tenant a", "similar subcommand exists: 'create'"),
        ("list --tenat x", "similar argument exists: '--tenant'"),
        ("list --max-keys-per-tenant 0", "positive"),
        ("list -x", "'-x'"),
        ("list --json=yes", "'yes' for '--json'"),
        ("list --ecds-format json", "'json' for '--ecds-format"),
        ("completions tcsh", "'tcsh'"),
    ];
    for (line, expected) in cases {
        let message = usage_message(line);
        assert!(message.contains(expected), "{line:?}: {message}");
        assert_eq!(message.lines().count(), 1, "{line:?}: {message}");
    }
}

#[test]
fn a_mistake_points_at_the_help_of_its_command() {
    let message = usage_message("--db k.db render istio --bogus");
    assert!(
        message.ends_with("see apikey render istio --help)"),
        "{message}"
    );
    let message = usage_message("ls --tenat x");
    assert!(message.ends_with("see apikey list --help)"), "{message}");
}

#[test]
fn rotate_reads_its_grace_with_a_default_of_a_day() {
    let Command::Rotate { id, grace } = invocation("rotate key_1").command else {
        panic!("rotate key_1 is not a rotation")
    };
    assert_eq!(id, "key_1");
    assert_eq!(
        grace,
        24 * 3_600 * 1_000_000_000,
        "the default grace is not 24h"
    );
    let Command::Rotate { grace, .. } = invocation("rotate key_1 --grace 0s").command else {
        panic!("rotate --grace 0s is not a rotation")
    };
    assert_eq!(grace, 0, "--grace 0s is not an immediate end");
}

#[test]
fn an_id_after_double_dash_may_start_with_a_dash() {
    let Command::Revoke { id } = invocation("revoke -- -odd").command else {
        panic!()
    };
    assert_eq!(id, "-odd");
}

#[test]
fn render_istio_reads_its_placement() {
    let command = invocation(
        "render istio --namespace gw --selector app=edge --url oci://r/apikey:1 --out p.yaml",
    )
    .command;
    let Command::Render {
        target: RenderTarget::Istio(options),
        out,
    } = command
    else {
        panic!("{command:?}")
    };
    assert_eq!(options.name, "apikey");
    assert_eq!(options.namespace, "gw");
    assert_eq!(options.selector, [("app".to_owned(), "edge".to_owned())]);
    assert_eq!(options.url, "oci://r/apikey:1");
    assert_eq!(out, Some(PathBuf::from("p.yaml")));
    // --out may also come before the target.
    let Command::Render { target, out } = invocation("render --out e.yaml ecds").command else {
        panic!("render --out e.yaml ecds")
    };
    assert_eq!((target, out), (RenderTarget::Ecds, Some("e.yaml".into())));
}

#[test]
fn no_command_or_help_anywhere_prints_the_help() {
    let top = shown("");
    assert!(top.contains("Usage: apikey"), "{top}");
    for command in ["create", "rotate", "render"] {
        assert!(top.contains(command), "the help lists no {command}: {top}");
    }
    for line in ["help", "--help", "-h", "--db x"] {
        assert!(shown(line).contains("Usage: apikey"), "{line:?}");
    }
    for line in [
        "help create",
        "create --help",
        "create -h",
        "create --tenant a -h",
    ] {
        let text = shown(line);
        assert!(
            text.contains("Usage: apikey create") && text.contains("--tenant-prefix"),
            "{line:?} is not create's help: {text}"
        );
    }
    assert!(shown("help rotate").contains("--grace"));
}

#[test]
fn the_version_is_printed_by_flag_and_command() {
    let expected = format!("apikey {}\n", env!("CARGO_PKG_VERSION"));
    for line in ["--version", "-V", "version"] {
        assert_eq!(shown(line), expected, "{line:?}");
    }
}

#[test]
fn completions_name_every_command_for_each_shell() {
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let script = String::from_utf8(completions(shell)).unwrap();
        for word in ["create", "rotate", "tenant-prefix", "ecds-dir"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    assert_eq!(
        invocation("completions zsh").command,
        Command::Completions { shell: Shell::Zsh }
    );
}

#[test]
fn json_is_seen_before_parsing_and_not_after_double_dash() {
    assert!(wants_json(&words("frobnicate --json")));
    assert!(!wants_json(&words("revoke -- --json")));
    assert!(!wants_json(&words("list")));
}

fn parse_with(line: &str, env: &[(&str, &str)]) -> Result<Parsed, CliError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    parse(&words(line), &move |name: &str| {
        env.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    })
}

fn store_of(line: &str, env: &[(&str, &str)]) -> Store {
    match parse_with(line, env) {
        Ok(Parsed::Run(invocation)) => invocation.globals.store,
        other => panic!("{line:?} with {env:?} gave {other:?}"),
    }
}

#[test]
fn where_the_keys_live_is_one_flag_else_one_variable_else_the_default_database() {
    assert_eq!(
        store_of("list", &[]),
        Store::Database(PathBuf::from("apikey.db"))
    );
    assert_eq!(
        store_of("--db k.db list", &[]),
        Store::Database(PathBuf::from("k.db"))
    );
    assert_eq!(
        store_of("list --server http://h:1", &[]),
        Store::Server("http://h:1".to_owned())
    );
    assert_eq!(
        store_of("list", &[("APIKEY_DB", "env.db")]),
        Store::Database(PathBuf::from("env.db"))
    );
    // A flag beats the environment, whichever it names.
    assert_eq!(
        store_of("--db k.db list", &[("APIKEY_SERVER", "http://h")]),
        Store::Database(PathBuf::from("k.db"))
    );
    assert_eq!(
        store_of("--server http://h list", &[("APIKEY_DB", "env.db")]),
        Store::Server("http://h".to_owned())
    );
    let line = "--db a --server http://h list";
    assert!(
        matches!(parse_line(line), Err(CliError::Usage(m)) if m.contains("give one")),
        "{line}"
    );
    let both = parse_with("list", &[("APIKEY_DB", "a"), ("APIKEY_SERVER", "http://h")]);
    assert!(matches!(both, Err(CliError::Usage(_))), "{both:?}");
}

#[test]
fn the_admin_token_comes_from_its_file_or_the_environment_and_never_shows_in_debug() {
    let Ok(Parsed::Run(invocation)) = parse_with(
        "--server http://h list",
        &[("APIKEY_ADMIN_TOKEN", "secret-token-value")],
    ) else {
        panic!("not a command")
    };
    let token = invocation.globals.admin_token.clone();
    assert_eq!(
        token,
        Some(TokenSource::Value("secret-token-value".to_owned()))
    );
    assert!(
        !format!("{invocation:?}").contains("secret-token-value"),
        "the token is in the Debug output"
    );
    let file = invocation_with_file();
    assert_eq!(
        file.globals.admin_token,
        Some(TokenSource::File(PathBuf::from("t.token")))
    );
}

fn invocation_with_file() -> Invocation {
    invocation("--server http://h --admin-token-file t.token list")
}

#[test]
fn serve_and_the_service_commands_parse() {
    let Command::Serve(serve) = invocation(
        "serve --db k.db --listen 127.0.0.1:0 --admin-token-file a --feed-token-file f --max-body-bytes 10 --quiet",
    )
    .command
    else {
        panic!("not serve")
    };
    assert_eq!(serve.listen, "127.0.0.1:0");
    assert_eq!(serve.max_body_bytes, 10);
    assert_eq!(serve.max_import_bytes, 1024 * 1024 * 1024);
    assert!(serve.quiet);
    assert_eq!(
        invocation("--db k settings put s.json").command,
        Command::SettingsPut {
            file: "s.json".to_owned()
        }
    );
    assert_eq!(
        invocation("--db k import").command,
        Command::Import {
            file: "-".to_owned()
        }
    );
    assert!(matches!(
        parse_line("--db k list --limit 0"),
        Err(CliError::Usage(_))
    ));
    assert!(matches!(
        parse_line("--server http://h --ecds-dir d list"),
        Err(CliError::Usage(m)) if m.contains("--ecds-dir")
    ));
}

#[test]
fn usage_reads_a_keys_days_with_an_id_and_an_access_log_without() {
    assert_eq!(
        invocation("usage key_a").command,
        Command::KeyUsage {
            id: "key_a".to_owned()
        }
    );
    assert_eq!(
        invocation("usage").command,
        Command::Usage {
            log: "-".to_owned()
        }
    );
    assert_eq!(
        invocation("usage --log access.log").command,
        Command::Usage {
            log: "access.log".to_owned()
        }
    );
    assert!(
        matches!(
            parse_line("usage key_a --log access.log"),
            Err(CliError::Usage(_))
        ),
        "an id and --log together were taken"
    );
}
