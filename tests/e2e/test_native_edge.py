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
