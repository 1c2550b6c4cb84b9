"""Contract v1.1 §7.2-§7.5 in a real Envoy: the behaviours the API products
this gateway fronts promise their users.

- HTTPS only (§7.2): the shipped bootstrap's HTTPS listener (HTTP/1.1 and
  HTTP/2 by ALPN, a certificate the test session makes) beside the plain
  one; `require_https` refuses plain requests first, says whether a key
  crossed the network in clear, and trusts `x-forwarded-proto` only when
  told to, behind a TLS-terminating proxy (a second, real Envoy here).
- The tenant in the path (§7.3): `{tenant}` rule segments, 404 `not_found`
  before scopes and limits.
- Links in error bodies (§7.4): `error_doc_url`.
- Test keys reach a sandbox (§7.5): the shipped route on `x-api-env: test`
  sends test keys to the sandbox upstream, and nothing a client sends can.
"""

from __future__ import annotations

import pytest

from conftest import make_key
from harness import SANDBOX_NAME, Gateway
from echo_upstream import MARKER_HEADER

LIVE_KEY = "sk_live_SeedLive000000000000000"
TEST_KEY = "sk_test_SeedTest000000000000000"


def sandbox_config(**extra) -> dict:
    config = {
        "keys": [make_key(LIVE_KEY, id="key_live", tenant="acme", env="live", scopes=["leads:read"]),
                 make_key(TEST_KEY, id="key_test", tenant="acme", env="test", scopes=["leads:read"])],
        "rules": [{"path_prefix": "/healthz", "public": True},
                  {"path_prefix": "/api/v1/leads", "methods": ["GET"], "scope": "leads:read"}],
    }
    config.update(extra)
    return config


@pytest.fixture(scope="module")
def gateway(wasm_module):
    with Gateway(wasm_module, config=sandbox_config(), concurrency=2) as gw:
        yield gw


def upstream_name(response) -> str | None:
    """Which upstream answered: "1" (production), "sandbox", or None (Envoy)."""
    return response.header(MARKER_HEADER)


# --- §7.5 test keys reach a sandbox -----------------------------------------------

@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
def test_a_test_key_reaches_the_sandbox_upstream_and_a_live_key_production(gateway, http2):
    test = gateway.request("GET", "/api/v1/leads", [("X-API-Key", TEST_KEY)], http2=http2)
    assert (test.status, upstream_name(test)) == (200, SANDBOX_NAME), test.body
    assert dict(test.upstream["headers"])["x-api-env"] == "test"
    live = gateway.request("GET", "/api/v1/leads", [("X-API-Key", LIVE_KEY)], http2=http2)
    assert (live.status, upstream_name(live)) == (200, "1"), live.body
    assert dict(live.upstream["headers"])["x-api-env"] == "live"


@pytest.mark.parametrize("forged", ["x-api-env", "X-Api-Env"])
def test_a_live_key_that_sends_x_api_env_test_still_reaches_production(gateway, forged):
    response = gateway.request("GET", "/api/v1/leads", [("X-API-Key", LIVE_KEY), (forged, "test")])
    assert (response.status, upstream_name(response)) == (200, "1"), \
        f"a client steered a live key to {upstream_name(response)!r}"
    assert dict(response.upstream["headers"])["x-api-env"] == "live"


def test_a_public_route_with_a_forged_x_api_env_reaches_production(gateway):
    response = gateway.request("GET", "/healthz", [("x-api-env", "test")])
    assert (response.status, upstream_name(response)) == (200, "1")
    assert "x-api-env" not in dict(response.upstream["headers"])


# --- the HTTPS listener ---------------------------------------------------------

@pytest.mark.parametrize("http2", [False, True], ids=["http1.1-over-tls", "h2-over-tls"])
def test_the_https_listener_gives_the_same_answers_as_the_plain_one(gateway, http2):
    allowed = gateway.request("GET", "/api/v1/leads", [("Authorization", f"Bearer {LIVE_KEY}")],
                              http2=http2, tls=True)
    assert (allowed.status, upstream_name(allowed)) == (200, "1"), allowed.body
    headers = dict(allowed.upstream["headers"])
    assert headers["x-api-key-id"] == "key_live"
    assert "authorization" not in {name.lower() for name in headers}, "the credential reached the upstream"
    assert headers["x-forwarded-proto"] == "https"
    missing = gateway.request("GET", "/api/v1/leads", http2=http2, tls=True)
    assert (missing.status, missing.json["error"]["code"]) == (401, "missing_credentials")
    sandbox = gateway.request("GET", "/api/v1/leads", [("X-API-Key", TEST_KEY)], http2=http2, tls=True)
    assert upstream_name(sandbox) == SANDBOX_NAME
