use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse_line(line: &str) -> Result<Invocation, CliError> {
    let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    parse(&args, &no_env)
}

fn usage_message(line: &str) -> String {
    match parse_line(line) {
        Err(CliError::Usage(message)) => message,
        other => panic!("{line:?} gave {other:?}, not a usage error"),
    }
}

#[test]
fn create_takes_its_options_in_any_order_with_either_spelling() {
    let invocation = parse_line(
        "--state /tmp/s.json create --name=CRM --tenant acme --scopes leads:read,leads:write --plan pro --expires-in 30d --json",
    )
    .unwrap();
    assert_eq!(invocation.globals.state, PathBuf::from("/tmp/s.json"));
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
fn global_options_fall_back_to_the_environment_and_flags_win() {
    let env = |name: &str| match name {
        "APIKEY_STATE" => Some("/env/state.json".to_owned()),
        "APIKEY_ECDS_DIR" => Some("/env/ecds".to_owned()),
        "APIKEY_WASM" => Some("/env/m.wasm".to_owned()),
        "APIKEY_MAX_KEYS_PER_TENANT" => Some("3".to_owned()),
        "APIKEY_ECDS_FORMAT" => Some("pb".to_owned()),
        _ => None,
    };
    let args = ["list".to_owned()];
    let globals = parse(&args, &env).unwrap().globals;
    assert_eq!(globals.state, PathBuf::from("/env/state.json"));
    assert_eq!(globals.ecds_dir, Some(PathBuf::from("/env/ecds")));
    assert_eq!(globals.ecds_format, EcdsFormat::Protobuf);
    assert_eq!(globals.wasm, "/env/m.wasm");
    assert_eq!(globals.max_keys, 3);
    let args: Vec<String> = ["list", "--state", "flag.json"].map(str::to_owned).to_vec();
    assert_eq!(
        parse(&args, &env).unwrap().globals.state,
        PathBuf::from("flag.json")
    );
}

#[test]
fn defaults_apply_without_flags_or_environment() {
    let globals = parse_line("list").unwrap().globals;
    assert_eq!(globals.state, PathBuf::from("apikey-state.json"));
    assert_eq!(globals.ecds_dir, None);
    assert_eq!(globals.ecds_format, EcdsFormat::Yaml);
    assert_eq!(globals.ecds_format.file_name(), "apikey.yaml");
    assert_eq!(globals.wasm, render::DEFAULT_WASM);
    assert_eq!(globals.max_keys, 25);
}

#[test]
fn mistakes_are_usage_errors_naming_the_flag() {
    let cases = [
        ("create --tenant acme --name x --bogus", "--bogus"),
        ("create --tenant acme --name", "--name needs a value"),
        ("create --name x --scopes a", "--tenant is required"),
        ("create --name x --tenant a", "--scopes is required"),
        (
            "create --tenant a --scopes a --name x --expires-in 30",
            "bad duration",
        ),
        (
            "create --tenant a --scopes a --name x --expires 2027-01-31",
            "--expires",
        ),
        (
            "create --tenant a --scopes a --name x --expires-in 1d --expires 2027-01-31T00:00:00Z",
            "one of",
        ),
        (
            "create --tenant a --tenant b --name x --scopes a",
            "given twice",
        ),
        ("rotate key_1 --grace soon", "--grace"),
        ("revoke", "key id is missing"),
        ("revoke a b", "unexpected argument"),
        ("update key_1", "at least one"),
        ("update key_1 --plan pro --no-plan", "not both"),
        ("render", "ecds, istio or config"),
        ("render yaml", "cannot render"),
        ("render ecds --url x", "render istio"),
        ("frobnicate", "unknown command"),
        ("list --max-keys-per-tenant 0", "positive"),
        ("list -x", "unknown option -x"),
        ("list --json=yes", "takes no value"),
        ("list --ecds-format json", "must be yaml or pb"),
    ];
    for (line, expected) in cases {
        let message = usage_message(line);
        assert!(message.contains(expected), "{line:?}: {message}");
    }
}

#[test]
fn update_and_rotate_read_their_changes() {
    let Command::Update { id, update } =
        parse_line("update key_1 --no-plan --no-expiry --scopes a:*")
            .unwrap()
            .command
    else {
        panic!()
    };
    assert_eq!(id, "key_1");
    assert_eq!(update.plan, Some(None));
    assert_eq!(update.expiry, Some(Expiry::Never));
    assert_eq!(update.scopes, Some(vec!["a:*".to_owned()]));
    let Command::Rotate { grace, expiry, .. } = parse_line("rotate key_1").unwrap().command else {
        panic!()
    };
    assert_eq!(grace, 24 * 3_600 * 1_000_000_000);
    assert_eq!(expiry, None);
}

#[test]
fn an_id_after_double_dash_may_start_with_a_dash() {
    let Command::Revoke { id } = parse_line("revoke -- -odd").unwrap().command else {
        panic!()
    };
    assert_eq!(id, "-odd");
}

#[test]
fn render_istio_reads_its_placement() {
    let command = parse_line(
        "render istio --namespace gw --selector app=edge --url oci://r/apikey:1 --out p.yaml",
    )
    .unwrap()
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
}

#[test]
fn no_command_or_help_anywhere_asks_for_the_usage() {
    for line in ["", "help", "--help", "create -h", "--state x"] {
        assert_eq!(parse_line(line).unwrap().command, Command::Help, "{line:?}");
    }
}
