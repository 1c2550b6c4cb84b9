"""Metrics and the audit trail against real Envoy traffic (issue 9): after
a scripted mix of requests, the filter's `apikey.*` counters equal the
counts sent, and `apikey usage` reads the same numbers back from the
access log the shipped configuration writes.

Metrics as Prometheus users expect them (issue 16): on /stats/prometheus
the denial code is a label (`apikey_requests_denied{code="invalid_key"}`),
from envoy/envoy.yaml's stats tag and, on Istio, from the custom bootstrap
in envoy/istio/; the alert rules in envoy/observability/ pass promtool's
check and their unit tests; and every metric, label and label value the
rules and the dashboard query exists on a real Envoy after traffic.
"""

import hashlib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

import harness
from harness import REPO_ROOT, Gateway

GOOD = "sk_live_Observed000000000000000"
REVOKED = "sk_live_ObservedRevoked00000000"


def sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


CONFIG = {
    "keys": [
        {"id": "key_good", "sha256": sha(GOOD), "tenant": "acme", "scopes": ["leads:read"], "plan": "p"},
        {"id": "key_revoked", "sha256": sha(REVOKED), "tenant": "globex", "revoked": True},
    ],
    "plans": {"p": {"rate_limits": {"leads:read": {"requests": 1, "period_seconds": 3600, "burst": 3}}}},
    "rules": [{"path_prefix": "/leads", "scope": "leads:read"}, {"path": "/admin", "scope": "admin"}],
}

# (path, headers, how many times)
MIX = [
    ("/leads", [("X-API-Key", GOOD)], 5),        # 3 allowed, then 2 rate_limited
    ("/admin", [("X-API-Key", GOOD)], 2),        # insufficient_scope
    ("/leads", [("X-API-Key", REVOKED)], 1),     # key_revoked
    ("/leads", [("X-API-Key", "sk_live_x")], 2),  # invalid_key
    ("/leads", [], 1),                            # missing_credentials
]


def cli():
    return REPO_ROOT / "target" / "debug" / "apikey"


def test_counters_and_usage_report_what_was_sent(module):
    subprocess.run(["cargo", "build", "-q", "-p", "apikey-cli"], cwd=REPO_ROOT, check=True)
    with Gateway(module, config=CONFIG, concurrency=2) as gw:
        statuses = []
        for path, headers, times in MIX:
            statuses += [gw.request("GET", path, headers, http2=True).status for _ in range(times)]
        assert statuses == [200, 200, 200, 429, 429, 403, 403, 401, 401, 401, 401], statuses

        stats = gw.metrics("apikey.")
        expected = {
            "requests.allowed": 3,
            "requests.denied.rate_limited": 2,
            "requests.denied.insufficient_scope": 2,
            "requests.denied.key_revoked": 1,
            "requests.denied.invalid_key": 2,
            "requests.denied.missing_credentials": 1,
            "requests.denied.not_configured": 0,
            "config.accepted": 1,
            "config.refused": 0,
            "keys_loaded": 2,
        }
        for name, value in expected.items():
            assert stats.get(f"apikey.{name}") == value, f"{name}: {stats.get('apikey.' + name)}"

        report = None
        # Envoy writes the access log out every 10 s (--file-flush-interval-msec):
        # wait one interval and a margin (at 10 s exactly, a run missed it by 0.1 s).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            run = subprocess.run([str(cli()), "--json", "usage", "--log", str(gw.log_path)],
                                 capture_output=True, text=True, check=True)
            report = json.loads(run.stdout)
            requests = sum(k["requests"] for k in report["keys"]) + sum(report["unattributed"].values())
            if requests >= len(statuses):
                break
            time.sleep(0.2)
        keys = {k["key_id"]: k for k in report["keys"]}
        good = keys["key_good"]
        assert (good["requests"], good["allowed"], good["tenant"]) == (7, 3, "acme"), good
        assert good["denied"] == {"rate_limited": 2, "insufficient_scope": 2}, good
        assert good["last_used"], "no Last Used for a key that was used"
        assert keys["key_revoked"]["denied"] == {"key_revoked": 1}
        assert report["unattributed"] == {"invalid_key": 2, "missing_credentials": 1}
        log = Path(gw.log_path).read_text(errors="replace")
        assert GOOD not in log and REVOKED not in log, "a raw key reached Envoy's log"


# --- Prometheus (issue 16) ---------------------------------------------------

OBSERVABILITY = REPO_ROOT / "envoy" / "observability"
ALERTS = OBSERVABILITY / "alerts.yaml"
ALERT_TESTS = OBSERVABILITY / "alerts.test.yaml"
DASHBOARD = OBSERVABILITY / "dashboard.json"
ISTIO_BOOTSTRAP = REPO_ROOT / "envoy" / "istio" / "stats-bootstrap.yaml"
ISTIO_PATCH = REPO_ROOT / "envoy" / "istio" / "gateway-stats-patch.yaml"

EXPIRED = "sk_live_ObservedExpired00000000"
OTHER = "sk_live_ObservedOther0000000000"
# ErrorCode::as_str in crates/apikey-core/src/denial.rs: every code is a
# label value from the start, at 0 until a request gets it.
CODES = {"invalid_path", "missing_credentials", "malformed_credentials", "conflicting_credentials",
         "invalid_key", "key_revoked", "key_expired", "insufficient_scope", "plan_upgrade_required",
         "rate_limited", "not_configured", "rate_limiter_unavailable", "https_required", "not_found"}
PROM_CONFIG = {**CONFIG, "keys": CONFIG["keys"] + [
    {"id": "key_expired", "sha256": sha(EXPIRED), "tenant": "acme", "expires_at": "2020-01-01T00:00:00Z"},
    {"id": "key_other", "sha256": sha(OTHER), "tenant": "acme", "scopes": ["leads:read"]},
]}
# (path, headers, how many times, the code each gets)
PROM_MIX = MIX[:4] + [
    ("/leads", [], 1, "missing_credentials"),
    ("/leads", [("Authorization", "Bearer sk_live_a,b")], 3, "malformed_credentials"),
    ("/leads", [("X-API-Key", GOOD), ("Authorization", f"Bearer {OTHER}")], 1, "conflicting_credentials"),
    ("/leads", [("X-API-Key", EXPIRED)], 2, "key_expired"),
]
# Before its first configuration the gateway answers one request with 503.
EXPECTED_DENIALS = {"rate_limited": 2, "insufficient_scope": 2, "key_revoked": 1, "invalid_key": 2,
                    "missing_credentials": 1, "malformed_credentials": 3, "conflicting_credentials": 1,
                    "key_expired": 2, "not_configured": 1}
# Labels Prometheus adds to every scraped sample; Envoy cannot show them.
SCRAPE_LABELS = {"instance", "job"}

SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text exposition: (name, labels, value)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.fullmatch(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        name, labels, value = match.groups()
        samples.append((name, dict(LABEL.findall(labels or "")), float(value)))
    return samples


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: run scripts/setup.sh (scripts/setup.d/prometheus.sh installs Debian's prometheus)"
    return path


@pytest.fixture(scope="module")
def exposition(module):
    """/stats/prometheus of a gateway that answered one request before its
    first configuration and then the mix above, parsed."""
    with Gateway(module, config=None) as gw:
        early = gw.request("GET", "/leads", [("X-API-Key", GOOD)])
        assert (early.status, early.json["error"]["code"]) == (503, "not_configured"), early.body
        assert gw.push(PROM_CONFIG), "the configuration was refused"
        for path, headers, times, *code in PROM_MIX:
            for _ in range(times):
                answer = gw.request("GET", path, headers)
                if code:
                    assert answer.json["error"]["code"] == code[0], (path, headers, answer.body)
        return parse_exposition(gw.prometheus_as_stored())


def test_prometheus_shows_each_denial_code_as_a_label_of_one_metric(exposition):
    denied = {labels.get("code"): value for name, labels, value in exposition if name == "apikey_requests_denied"}
    assert set(denied) == CODES, f"code labels on apikey_requests_denied: {sorted(map(str, denied))}"
    sent = {code: denied[code] for code in EXPECTED_DENIALS}
    assert sent == EXPECTED_DENIALS, f"denials by code label: {sent}"
    others = {code: value for code, value in denied.items() if code not in EXPECTED_DENIALS}
    assert set(others.values()) == {0}, f"codes no request got: {others}"
    per_code = sorted(name for name, _, _ in exposition if name.startswith("apikey_requests_denied_"))
    assert not per_code, f"per-code metric names left on /stats/prometheus: {per_code}"
    allowed = [value for name, _, value in exposition if name == "apikey_requests_allowed"]
    assert allowed == [3], f"apikey_requests_allowed: {allowed}"


def test_promtool_accepts_the_alert_rules():
    checked = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, f"promtool check rules failed:\n{checked.stdout}{checked.stderr}"
    assert "SUCCESS" in checked.stdout, checked.stdout


def test_the_alert_rules_unit_tests_pass():
    # The tests name alerts.yaml relative to their own directory.
    tested = subprocess.run([promtool(), "test", "rules", ALERT_TESTS.name], cwd=OBSERVABILITY,
                            capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, f"promtool test rules failed:\n{tested.stdout}{tested.stderr}"
    alerts = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    tested_alerts = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])}
    firing = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case["exp_alerts"]}
    assert tested_alerts == alerts, f"alerts without a unit test: {sorted(alerts - tested_alerts)}"
    assert firing == alerts, f"alerts never shown firing in alerts.test.yaml: {sorted(alerts - firing)}"


# PromQL words that are neither functions (followed by "(") nor metrics.
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metrics a PromQL expression reads: every bare identifier once
    strings, template variables, ranges, label matchers and grouping
    clauses are gone, less functions (followed by "(") and keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = GROUPING.sub("", text)
    text = re.sub(r"\{[^}]*\}", "", text)
    names = set()
    for match in IDENTIFIER.finditer(text):
        if re.match(r"\s*\(", text[match.end():]) or match.group().lower() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def shipped_queries() -> dict[str, str]:
    """Every PromQL expression the rules and the dashboard hold, by where it is."""
    queries = {}
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            queries[f"alert {rule['alert']}"] = rule["expr"]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["definition"])
            assert query, f"dashboard variable {variable['name']}: unexpected query {variable['definition']!r}"
            queries[f"variable {variable['name']}"] = query.group(1)
    return queries


def test_the_metric_name_parser_finds_metrics_not_labels_or_functions():
    expr = ('sum without (code) (rate(apikey_requests_denied{code!~"a|b", '
            'envoy_http_conn_manager_prefix!="admin"}[$__rate_interval])) / on (instance) '
            'histogram_quantile(0.99, sum by (le) (rate(envoy_http_downstream_rq_time_bucket[5m]))) '
            '> 0.5 and absent(apikey_keys_loaded) or increase(apikey_config_refused[10m]) > 0')
    assert metric_names(expr) == {"apikey_requests_denied", "envoy_http_downstream_rq_time_bucket",
                                  "apikey_keys_loaded", "apikey_config_refused"}


def test_every_metric_label_and_value_queried_exists_in_real_envoy(exposition):
    exported: dict[str, list[dict[str, str]]] = {}
    for name, labels, _ in exposition:
        exported.setdefault(name, []).append(labels)
    problems = []
    queried = set()
    for where, expr in shipped_queries().items():
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: no metric found in {expr!r}")
        queried |= names
        problems += [f"{where}: {name} is not on /stats/prometheus" for name in names if name not in exported]
        for name, matchers in SELECTOR.findall(expr):
            for label, operator, value in MATCHER.findall(matchers):
                values = {labels.get(label) for labels in exported.get(name, [])} - {None}
                if label in SCRAPE_LABELS:
                    continue
                if not values:
                    problems.append(f"{where}: {name} has no label {label}")
                elif operator == "=" and value not in values:
                    problems.append(f"{where}: {name}{{{label}={value!r}}} matches nothing (values: {sorted(values)})")
        grouped = {label.strip() for labels in GROUPING.findall(expr) for label in labels.split(",") if label.strip()}
        carried = {label for name in names for labels in exported.get(name, []) for label in labels}
        problems += [f"{where}: grouped by {label}, which none of {sorted(names)} has"
                     for label in grouped - carried - SCRAPE_LABELS]
    assert not problems, "\n".join(problems)
    # Every metric the filter defines is watched somewhere.
    filter_metrics = {name for name in exported if name.startswith("apikey_")}
    assert filter_metrics - queried == set(), f"filter metrics no rule or panel reads: {sorted(filter_metrics - queried)}"


def test_the_alert_unit_tests_feed_the_exported_names(exposition):
    exported = {name for name, _, _ in exposition}
    series = [case["series"] for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
              for case in test["input_series"]]
    names = {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text).group() for text in series}
    # `up` is Prometheus's own series, not Envoy's.
    assert names - exported == {"up"}, f"unit-test series Envoy does not export: {sorted(names - exported - {'up'})}"


def istio_stats_files() -> tuple[dict, dict]:
    """The custom bootstrap (parsed custom_bootstrap.json) and the gateway patch."""
    config_map = yaml.safe_load(ISTIO_BOOTSTRAP.read_text())
    return json.loads(config_map["data"]["custom_bootstrap.json"]), yaml.safe_load(ISTIO_PATCH.read_text())


def test_the_istio_custom_bootstrap_carries_envoy_yamls_stats_tags_and_is_mounted():
    custom, patch = istio_stats_files()
    assert custom == {"stats_config": {"stats_tags": harness.load_bootstrap()["stats_config"]["stats_tags"]}}, \
        "envoy/istio/stats-bootstrap.yaml's stats tags differ from envoy/envoy.yaml's"
    config_map = yaml.safe_load(ISTIO_BOOTSTRAP.read_text())["metadata"]
    pod = patch["spec"]["template"]["spec"]
    (proxy,) = [container for container in pod["containers"] if container["name"] == "istio-proxy"]
    override = {env["name"]: env["value"] for env in proxy["env"]}["ISTIO_BOOTSTRAP_OVERRIDE"]
    (volume,) = [volume for volume in pod["volumes"] if volume.get("configMap", {}).get("name") == config_map["name"]]
    (mount,) = [mount for mount in proxy["volumeMounts"] if mount["name"] == volume["name"]]
    assert override == f"{mount['mountPath']}/custom_bootstrap.json", \
        f"ISTIO_BOOTSTRAP_OVERRIDE {override} is not the mounted ConfigMap's file"


@pytest.mark.wasm_only("Istio's bootstrap: Istio runs the Wasm module")
def test_an_istio_like_bootstrap_with_the_custom_bootstrap_shows_the_code_label(module):
    custom, patch = istio_stats_files()
    annotation = yaml.safe_load(patch["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"])
    prefixes = annotation["proxyStatsMatcher"]["inclusionPrefixes"]

    def istio_like(bootstrap: dict) -> None:
        # What Istio's generated bootstrap does to stats: its own tags in
        # place of Envoy's defaults, and only the stats its inclusion list
        # names (the proxyStatsMatcher prefixes among them).
        bootstrap["stats_config"] = {
            "use_all_default_tags": False,
            "stats_tags": [{"tag_name": "cluster_name", "regex": r"^cluster\.((.+?)\.)"}],
            "stats_matcher": {"inclusion_list": {"patterns": [
                {"prefix": prefix} for prefix in ["reporter=", "component", "istio", *prefixes,
                                                  # the harness reads these to follow updates
                                                  "extension_config_discovery."]]}},
        }

    with Gateway(module, config=CONFIG, customize=istio_like, config_yaml=json.dumps(custom)) as gw:
        assert gw.request("GET", "/leads", [("X-API-Key", "sk_live_x")]).status == 401
        samples = parse_exposition(gw.prometheus())
    denied = {labels.get("code"): value for name, labels, value in samples if name == "apikey_requests_denied"}
    assert denied.get("invalid_key") == 1, f"apikey_requests_denied under the Istio-like bootstrap: {denied}"
    assert set(denied) == CODES, f"code labels: {sorted(map(str, denied))}"
    names = {name for name, _, _ in samples}
    assert "envoy_http_downstream_rq_xx" not in names, \
        "the Istio-like stats matcher let everything through, so it proves nothing about the inclusion prefix"
