"""The native edge (contract §9) in a real Envoy: apikey-core loaded as an
Envoy dynamic module (target/release/libapikey_dynamic.so) instead of the
Wasm VM, behind the same bootstrap, ECDS wiring and echo upstream.

These tests prove what is particular to the native edge (it loads, it
decides as the Wasm module does, its ECDS updates apply, its buckets are
exact across workers in the module's own memory, a panic is caught and
answered 503 with Envoy still serving); the contract's behaviours in full
run on both edges through the harness's edge parameter.
"""

import hashlib
import json
import os
import time

import asyncio

import pytest

import harness
import test_contention
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


def test_buckets_are_exact_across_four_workers_in_the_modules_memory(native_env):
    """test_contention's load and bounds, on the native edge: four
    workers, 256 requests in flight, each bucket admitting burst + refill
    to within one token (see test_contention for the bounds)."""
    with native_gateway(native_env, config=test_contention.config(), concurrency=4) as gw:
        before = gw.stats(NATIVE_STATS + "apikey.")
        seen, failures = asyncio.run(test_contention.load(gw.port, test_contention.DURATION))
        after = gw.stats(NATIVE_STATS + "apikey.")
        assert gw.running(), "Envoy died under load"

    assert not failures, f"{len(failures)} requests failed: {failures[:5]}"
    report = []
    for bucket in test_contention.BUCKETS:
        record = seen[bucket.raw_key]
        requests = sum(record.statuses.values())
        most = bucket.burst + bucket.per_second * (record.last_answer - record.first_send)
        least = bucket.burst + bucket.per_second * (record.last_send - record.first_answer) - 1
        report.append(f"{bucket.key_id}: {requests} requests, admitted {record.admitted} "
                      f"in [{least:.1f}, {most:.1f}], statuses {record.statuses}")
        assert set(record.statuses) <= {200, 429}, f"{bucket.key_id}: unexpected answers {record.odd[:3]}"
        assert record.admitted <= most, f"over-admitted: {report[-1]}"
        assert requests >= 2 * most, f"not saturated (too few requests for the bound): {report[-1]}"
        silence = record.longest_silence()
        assert silence < bucket.burst / bucket.per_second, \
            f"{bucket.key_id} went {silence:.2f} s without an answer: {report[-1]}"
        assert record.admitted >= least, f"under-admitted (tokens lost): {report[-1]}"
    print("\n" + "\n".join(report))
    admitted = sum(record.admitted for record in seen.values())
    allowed = after.get(NATIVE_STATS + "apikey.requests.allowed", 0) - \
        before.get(NATIVE_STATS + "apikey.requests.allowed", 0)
    assert allowed == admitted, f"allowed counter {allowed} != {admitted} admitted answers"


def test_the_native_edge_follows_the_key_service(native_env, tmp_path):
    """test_key_source's scenario in short on the native edge: the main
    thread follows the service through configuration callouts; every
    worker serves the table it writes; a revocation through the API is
    enforced on every worker."""
    from test_key_source import FixedPortService, answer, control_cluster, wait_for

    port = harness.free_port()
    with FixedPortService(tmp_path / "service", port) as service:
        service.put_settings({"rules": [{"path_prefix": "/api", "scope": "leads:read"}]})
        first = service.create(scopes=["leads:read"])
        source = {"key_source": {"cluster": "apikey_control", "token": service.feed_token,
                                 "authority": "apikey-control"}}

        def customize(bootstrap: dict) -> None:
            harness.render_native(bootstrap)
            control_cluster(port)(bootstrap)

        with Gateway(native_env, config=source, concurrency=2, customize=customize) as gw:
            wait_for("the first table on every worker",
                     lambda: all(answer(gw, first["key"]) == (200, None) for _ in range(10)), 10)
            assert answer(gw, "sk_live_" + "x" * 24) == (401, "invalid_key")

            second = service.create(scopes=["leads:read"])
            wait_for("a created key allowed", lambda: answer(gw, second["key"]) == (200, None), 5)

            service.ok("POST", f"/v1/keys/{first['id']}/revoke")
            answered = time.monotonic()
            seen = wait_for("the revocation on every worker",
                            lambda: all(answer(gw, first["key"]) == (401, "key_revoked") for _ in range(10)), 10)
            print(f"\nnative: revocation enforced {(seen - answered) * 1000:.0f} ms after the API's answer")
            assert seen - answered <= 3.0, f"revocation took {seen - answered:.2f} s"
            tables = gw.stats(NATIVE_STATS + "apikey.key_source.tables")
            assert sum(tables.values()) >= 2, f"key_source.tables: {tables}"
            assert service.feed_token not in gw.log_text(), "the feed token was logged"


# Fleet-wide limits (contract §6): test_fleet's fixtures (a password-protected
# Redis and the project's rate-limit server), native gateways.
from fleet_services import SilentListener  # noqa: E402
from test_fleet import (  # noqa: E402,F401  (fixtures are found by name)
    assert_fleet_429, clear_of_window_edge, key_pair, ratelimit_binary, redis, server_factory,
    PERIOD,
)
from test_fleet import config as fleet_config  # noqa: E402

NATIVE_FLEET = NATIVE_STATS + "apikey.fleet."


def native_fleet_stats(*gateways: Gateway) -> dict[str, int]:
    total: dict[str, int] = {}
    for gateway in gateways:
        for name, value in gateway.stats(NATIVE_FLEET).items():
            short = name.removeprefix(NATIVE_FLEET)
            total[short] = total.get(short, 0) + value
    return total


def test_two_native_gateways_admit_exactly_n_of_2n_through_the_fleet(native_env, server_factory):
    n = 20
    raw, key_id = key_pair()
    server = server_factory()
    shared = fleet_config(raw, key_id, requests=n, burst=2 * n, fleet={"timeout_ms": 1000})
    with native_gateway(native_env, config=shared, concurrency=2, ratelimit_port=server.port) as first, \
         native_gateway(native_env, config=shared, concurrency=2, ratelimit_port=server.port) as second:
        clear_of_window_edge()
        seconds_left = PERIOD - time.time() % PERIOD
        responses = [gw.request("GET", "/x", [("X-API-Key", raw)]) for _ in range(n) for gw in (first, second)]
        statuses = [r.status for r in responses]
        assert statuses.count(200) == n, f"admitted {statuses.count(200)} of {2 * n}, limit {n}: {statuses}"
        for denied in (r for r in responses if r.status == 429):
            assert_fleet_429(denied, seconds_left, quota=n)
        stats = native_fleet_stats(first, second)
        assert (stats["calls"], stats["over_limit"], stats["failures"], stats["timeouts"]) == (2 * n, n, 0, 0), stats
    assert server.metrics()["requests"] == 2 * n, server.metrics()


def test_a_silent_fleet_service_is_bounded_by_timeout_ms_on_the_native_edge(native_env):
    timeout_ms = 200
    raw, key_id = key_pair()
    fleet = {"timeout_ms": timeout_ms, "on_failure": "deny"}
    with SilentListener() as silent, \
         native_gateway(native_env, config=fleet_config(raw, key_id, requests=5, burst=50, fleet=fleet),
                        concurrency=2, ratelimit_port=silent.port) as gw:
        for _ in range(2):
            started = time.monotonic()
            response = gw.request("GET", "/x", [("X-API-Key", raw)])
            took = time.monotonic() - started
            assert (response.status, response.json["error"]["code"]) == (503, "rate_limiter_unavailable"), \
                (response.status, response.body)
            assert timeout_ms / 1000 * 0.9 <= took < timeout_ms / 1000 + 0.6, f"{took:.3f} s"
        stats = native_fleet_stats(gw)
        assert (stats["calls"], stats["timeouts"]) == (2, 2), stats
        assert gw.running()


def test_require_https_reads_the_connections_tls_version_on_the_native_edge(native_env):
    """§7.2 through the ABI's connection.tls_version attribute: refused over
    plain HTTP, served over TLS."""
    with native_gateway(native_env, config=config(require_https=True), concurrency=2) as gw:
        plain = gw.request("GET", "/api/v1/leads", [("x-api-key", PRO_KEY)])
        assert (plain.status, plain.json["error"]["code"]) == (403, "https_required"), plain.body
        secure = gw.request("GET", "/api/v1/leads", [("x-api-key", PRO_KEY)], tls=True)
        assert secure.status == 200, f"over TLS: {secure.status} {secure.body!r}"
