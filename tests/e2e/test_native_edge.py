"""The native edge (contract §9) in a real Envoy: apikey-core loaded as an
Envoy dynamic module (target/release/libapikey_dynamic.so) instead of the
Wasm VM, behind the same bootstrap, ECDS wiring and echo upstream.

These tests prove what is particular to the native edge (it loads, it
decides as the Wasm module does, its ECDS updates apply, its metrics and
audit record keep the Wasm module's names, a panic is caught and answered
503 with Envoy still serving); the contract's behaviours in full, exact
buckets across workers, key_source, fleet limits and HTTPS included, run on
both edges through the harness's edge parameter (`--edge native`).
"""

import hashlib
import json
import time

import pytest

import harness
from harness import Gateway

PRO_KEY = "sk_live_NativePro0000000000000000"
LIMITED_KEY = "sk_live_NativeLimited00000000000"
NATIVE_STATS = "dynamicmodulescustom."


def sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def config(**extra) -> dict:
    base = {
        "keys": [
            {"id": "key_pro", "sha256": sha(PRO_KEY), "tenant": "acme", "plan": "pro", "env": "live",
             "scopes": ["leads:read"]},
            {"id": "key_limited", "sha256": sha(LIMITED_KEY), "tenant": "acme",
             "rate_limits": {"*": {"requests": 1, "period_seconds": 3600, "burst": 3}}},
        ],
        "plans": {"pro": {"scopes": ["leads:*"]}},
        "rules": [
            {"path_prefix": "/healthz", "public": True},
            {"path_prefix": "/api/v1/leads", "methods": ["GET"], "scope": "leads:read"},
        ],
    }
    base.update(extra)
    return base


@pytest.fixture(scope="session")
def native_module():
    """The native module (built once; APIKEY_NATIVE overrides)."""
    return harness.build_native()


@pytest.fixture
def native_env(native_module, monkeypatch):
    """Envoy (started by the harness with this process's environment)
    finds libapikey_dynamic.so through ENVOY_DYNAMIC_MODULES_SEARCH_PATH."""
    monkeypatch.setenv(harness.NATIVE_SEARCH_PATH_VAR, str(native_module.parent))
    return native_module


def native_gateway(module, **kwargs) -> Gateway:
    return Gateway(module, customize=harness.render_native, **kwargs)


def test_the_native_module_loads_and_decides_as_the_contract_says(native_env):
    with native_gateway(native_env, config=config(), concurrency=2) as gw:
        allowed = gw.request("GET", "/api/v1/leads", [("authorization", f"Bearer {PRO_KEY}")])
        assert allowed.status == 200, f"allowed request: {allowed.status} {allowed.body!r}"
        seen = {n.lower(): v for n, v in allowed.upstream["headers"]}
        assert seen.get("x-api-key-id") == "key_pro", f"identity headers upstream: {seen}"
        assert seen.get("x-api-tenant") == "acme" and seen.get("x-api-plan") == "pro", seen
        assert "authorization" not in seen, f"the credential reached the upstream: {seen}"

        invalid = gw.request("GET", "/api/v1/leads", [("x-api-key", "sk_live_nope")])
        assert invalid.status == 401, invalid.body
        assert invalid.json["error"]["code"] == "invalid_key", invalid.body
        assert invalid.header("www-authenticate"), "a 401 without a challenge"

        public = gw.request("GET", "/healthz")
        assert public.status == 200, public.body

        statuses = [gw.request("GET", "/x", [("x-api-key", LIMITED_KEY)]).status for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429], f"burst of 3 gave {statuses}"
        limited = gw.request("GET", "/x", [("x-api-key", LIMITED_KEY)])
        assert limited.json["error"]["code"] == "rate_limited", limited.body
        assert limited.header("retry-after"), "a 429 without Retry-After"


def test_before_any_configuration_the_native_filter_fails_closed(native_env):
    with native_gateway(native_env, concurrency=2) as gw:
        response = gw.request("GET", "/api/v1/leads", [("x-api-key", PRO_KEY)])
        assert response.status == 503, f"{response.status} {response.body!r}"
        assert response.json["error"]["code"] == "not_configured", response.body


def test_an_ecds_update_revokes_a_key_on_every_worker_and_a_bad_one_is_refused(native_env):
    with native_gateway(native_env, config=config(), concurrency=4) as gw:
        # Every worker serves (and caches) the key first.
        for _ in range(16):
            ok = gw.request("GET", "/api/v1/leads", [("x-api-key", PRO_KEY)])
            assert ok.status == 200, f"before the update: {ok.status} {ok.body!r}"

        revoked = config()
        revoked["keys"][0]["revoked"] = True
        assert gw.push(revoked), f"Envoy refused the revocation\n{gw.log_text()[-2000:]}"
        statuses = set()
        for _ in range(16):  # new connections, spread over the four workers
            answer = gw.request("GET", "/api/v1/leads", [("x-api-key", PRO_KEY)])
            statuses.add((answer.status, answer.json["error"]["code"] if answer.status != 200 else ""))
        assert statuses == {(401, "key_revoked")}, f"after the revocation: {statuses}"

        refused = gw.stats(NATIVE_STATS + "apikey.config.refused")
        assert not gw.push('{"keys": [{"id": "bad"}]}'), "an invalid configuration was accepted"
        assert "configuration refused" in gw.log_text(), "the refusal was not logged"
        after = gw.stats(NATIVE_STATS + "apikey.config.refused")
        assert sum(after.values()) == sum(refused.values()) + 1, f"config.refused: {refused} -> {after}"
        still = gw.request("GET", "/api/v1/leads", [("x-api-key", PRO_KEY)])
        assert still.status == 401 and still.json["error"]["code"] == "key_revoked", \
            f"the previous configuration stopped being enforced: {still.status} {still.body!r}"


def test_metrics_and_the_audit_record_carry_the_wasm_modules_names(native_env):
    with native_gateway(native_env, config=config(), concurrency=2) as gw:
        assert gw.request("GET", "/api/v1/leads", [("x-api-key", PRO_KEY)]).status == 200
        assert gw.request("GET", "/api/v1/leads", [("x-api-key", "sk_live_unknown")]).status == 401
        stats = gw.stats(NATIVE_STATS + "apikey.")
        assert stats.get(NATIVE_STATS + "apikey.requests.allowed") == 1, stats
        assert stats.get(NATIVE_STATS + "apikey.requests.denied.invalid_key") == 1, stats
        assert stats.get(NATIVE_STATS + "apikey.keys_loaded") == 2, stats
        # The access log prints %FILTER_STATE(wasm.apikey:PLAIN)%, as for the Wasm module.
        deadline = time.monotonic() + 15  # the access log is flushed on a timer
        records = []
        while time.monotonic() < deadline and len(records) < 2:
            records = [json.loads(json.loads(line)["apikey"]) for line in gw.log_text().splitlines()
                       if line.startswith("{") and '"apikey":"{' in line]
            time.sleep(0.1)
        assert {"key_id": "key_pro", "tenant": "acme", "scope": "leads:read", "decision": "allowed",
                "rate_limited": False} in records, f"audit records: {records}"
        assert any(record["decision"] == "invalid_key" for record in records), records


PANIC_PATH = "/__native_test_panic"
PANIC_MARKER = "native-test-panic-marker"


def test_a_panic_is_answered_503_and_envoy_keeps_serving(native_module, monkeypatch):
    monkeypatch.setenv(harness.NATIVE_SEARCH_PATH_VAR, str(native_module.parent))
    monkeypatch.setenv("APIKEY_DYNAMIC_TEST_PANIC_PATH", PANIC_PATH)
    monkeypatch.setenv("APIKEY_DYNAMIC_TEST_PANIC_CONFIG", PANIC_MARKER)
    with native_gateway(native_module, config=config(), concurrency=2) as gw:
        for _ in range(4):
            crashed = gw.request("GET", PANIC_PATH, [("x-api-key", PRO_KEY)])
            assert crashed.status == 503, f"the panicking request got {crashed.status} {crashed.body!r}"
            assert crashed.json["error"]["code"] == "not_configured", crashed.body
        assert gw.running(), "Envoy died of a panic in the module"
        log = gw.log_text()
        assert "[critical]" in log and "forced panic in request_headers" in log, \
            "the panic was not logged at critical level"
        after = gw.request("GET", "/api/v1/leads", [("x-api-key", PRO_KEY)])
        assert after.status == 200, f"after the panic: {after.status} {after.body!r}"

        # A configuration whose setup panics is refused; the previous one stays.
        poisoned = config()
        poisoned["keys"][0]["name"] = PANIC_MARKER
        assert not gw.push(poisoned), "a configuration whose setup panicked was accepted"
        assert "forced panic in configuration setup" in gw.log_text()
        assert gw.running(), "Envoy died of a panic in configuration setup"
        again = gw.request("GET", "/api/v1/leads", [("x-api-key", PRO_KEY)])
        assert again.status == 200, f"after the refused configuration: {again.status} {again.body!r}"
