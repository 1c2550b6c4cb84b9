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

import http.client
import json
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import harness
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
def gateway(module):
    with Gateway(module, config=sandbox_config(), concurrency=2) as gw:
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


# --- §7.2 HTTPS only --------------------------------------------------------------

def https_config(**extra) -> dict:
    return sandbox_config(require_https=True, **extra)


@pytest.fixture(scope="module")
def https_gateway(module):
    with Gateway(module, config=https_config(), concurrency=2) as gw:
        yield gw


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
def test_require_https_refuses_plain_http_first_public_routes_included(https_gateway, http2):
    for path, headers, exposed in [
        ("/healthz", [], False),
        ("/api/v1/leads", [("X-API-Key", LIVE_KEY)], True),
        ("/api/v1/leads", [("Authorization", f"Bearer {LIVE_KEY}")], True),
        # A route no rule names, with an unknown key: HTTPS still comes first
        # (that it precedes the filter's path check is a core unit test:
        # Envoy's edge refuses such paths before the filter sees them).
        ("/anything", [("X-API-Key", "sk_live_unknown")], True),
    ]:
        response = https_gateway.request("GET", path, headers, http2=http2)
        error = response.json["error"]
        assert (response.status, error["code"]) == (403, "https_required"), (path, response.body)
        assert error["message"] == "Use https://; requests over plain HTTP are refused."
        assert error.get("credential_exposed", False) is exposed, (path, error)
        assert LIVE_KEY not in response.body.decode(), "the key was echoed"
        assert upstream_name(response) is None


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1-over-tls", "h2-over-tls"])
def test_require_https_serves_tls_requests_as_usual(https_gateway, http2):
    allowed = https_gateway.request("GET", "/api/v1/leads", [("X-API-Key", LIVE_KEY)], http2=http2, tls=True)
    assert (allowed.status, upstream_name(allowed)) == (200, "1"), allowed.body
    public = https_gateway.request("GET", "/healthz", http2=http2, tls=True)
    assert public.status == 200
    missing = https_gateway.request("GET", "/api/v1/leads", http2=http2, tls=True)
    assert missing.json["error"]["code"] == "missing_credentials"


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
def test_a_client_forging_x_forwarded_proto_over_plain_http_is_refused(https_gateway, http2):
    # Without trusted_https_header no header is believed; h2c also lets a
    # client send `:scheme: https`, which must not count either.
    response = https_gateway.request("GET", "/api/v1/leads",
                                     [("X-API-Key", LIVE_KEY), ("x-forwarded-proto", "https")], http2=http2)
    assert (response.status, response.json["error"]["code"]) == (403, "https_required")


def front_proxy_bootstrap(gateway_port: int) -> dict:
    """A TLS-terminating load balancer: a second Envoy that accepts HTTPS
    with the session's certificate and forwards plain HTTP/1.1 to the
    gateway, setting x-forwarded-proto: https as such proxies do."""
    certificate, key = harness.tls_certificate()
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "front",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                     "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "front",
                            "use_remote_address": True,
                            "route_config": {"virtual_hosts": [{
                                "name": "all", "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "gateway"}}]}]},
                            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                        },
                    }],
                    "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "common_tls_context": {
                            "alpn_protocols": ["h2", "http/1.1"],
                            "tls_certificates": [{"certificate_chain": {"filename": str(certificate)},
                                                  "private_key": {"filename": str(key)}}]}}},
                }],
            }],
            "clusters": [{
                "name": "gateway", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "gateway", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": gateway_port}}}}]}]},
            }],
        },
    }


class FrontProxy:
    """The front Envoy as a context manager; `port` is its HTTPS listener."""

    def __init__(self, workdir: Path, gateway_port: int):
        self.workdir = workdir
        self.bootstrap = front_proxy_bootstrap(gateway_port)
        self.process: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> FrontProxy:
        path = self.workdir / "front.json"
        path.write_text(json.dumps(self.bootstrap), encoding="utf-8")
        address_file = self.workdir / "front-admin"
        with open(self.workdir / "front.log", "wb") as log:
            self.process = subprocess.Popen(
                [str(harness.envoy_binary()), "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
                 "--base-id-path", str(self.workdir / "front-base-id"), "--admin-address-path", str(address_file)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise harness.GatewayError((self.workdir / "front.log").read_text()[-3000:])
            try:
                admin = address_file.read_text().strip()
                with urllib.request.urlopen(f"http://{admin}/listeners?format=json", timeout=2) as answer:
                    statuses = json.loads(answer.read())["listener_statuses"]
                self.port = statuses[0]["local_address"]["socket_address"]["port_value"]
                if self.port:
                    return self
            except (OSError, ValueError, KeyError, IndexError):
                pass
            time.sleep(0.05)
        raise harness.GatewayError("the front proxy did not start in 30 s")

    def __exit__(self, *exc_info) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def get(self, path: str, headers: dict[str, str]) -> tuple[int, dict]:
        context = ssl.create_default_context(cafile=str(harness.tls_certificate()[0]))
        connection = http.client.HTTPSConnection("localhost", self.port, timeout=10, context=context)
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()


def trust_one_hop(bootstrap: dict) -> None:
    """The gateway behind a load balancer: Envoy keeps the x-forwarded-proto
    the one trusted hop in front of it sent (instead of overwriting it with
    its own plain-HTTP view), as a deployment behind a TLS terminator does."""
    harness._connection_manager(bootstrap)["xff_num_trusted_hops"] = 1


def test_behind_a_tls_terminating_proxy_the_trusted_header_counts_and_a_forged_one_does_not(module, tmp_path):
    config = https_config(trusted_https_header="x-forwarded-proto")
    with Gateway(module, config=config, concurrency=2, customize=trust_one_hop) as gw, \
         FrontProxy(tmp_path, gw.port) as front:
        status, body = front.get("/api/v1/leads", {"X-API-Key": LIVE_KEY})
        assert status == 200, body
        assert dict(body["headers"])["x-forwarded-proto"] == "https"
        # Straight to the gateway over plain HTTP, with no header: refused.
        direct = gw.request("GET", "/api/v1/leads", [("X-API-Key", LIVE_KEY)])
        assert (direct.status, direct.json["error"]["code"]) == (403, "https_required")
        # A client that reaches the gateway directly and says http: refused.
        claimed = gw.request("GET", "/api/v1/leads", [("X-API-Key", LIVE_KEY), ("x-forwarded-proto", "http")])
        assert claimed.json["error"]["code"] == "https_required"
    # The same header at a gateway that does not trust it: refused.
    with Gateway(module, config=https_config(), concurrency=1, customize=trust_one_hop) as gw, \
         FrontProxy(tmp_path, gw.port) as front:
        status, body = front.get("/api/v1/leads", {"X-API-Key": LIVE_KEY})
        assert (status, body["error"]["code"]) == (403, "https_required")


def test_the_trusted_header_alone_is_refused_at_configure_time(module):
    with Gateway(module, config=sandbox_config(), concurrency=1) as gw:
        assert gw.push(sandbox_config(trusted_https_header="x-forwarded-proto")) is False
        assert "trusted_https_header" in gw.log_text()


# --- §7.3 the tenant in the path ----------------------------------------------------

TENANT_KEY = "sk_live_SeedTenant0000000000000"
SPACED_KEY = "sk_live_SeedSpaced0000000000000"


def tenant_config() -> dict:
    return {
        "keys": [make_key(TENANT_KEY, id="key_acme", tenant="acme", scopes=["leads:read"],
                          rate_limits={"*": {"requests": 2, "period_seconds": 3600}}),
                 make_key(SPACED_KEY, id="key_spaced", tenant="acme corp/é", scopes=["leads:read"])],
        "rules": [{"path_prefix": "/api/v1/tenants/{tenant}/leads", "scope": "leads:read"},
                  {"path": "/api/v1/tenants/{tenant}/admin", "scope": "admin"}],
    }


@pytest.fixture(scope="module")
def tenant_gateway(module):
    with Gateway(module, config=tenant_config(), concurrency=2) as gw:
        yield gw


def test_a_tenant_path_serves_the_keys_own_tenant_and_hides_every_other(tenant_gateway):
    key = [("X-API-Key", TENANT_KEY)]
    for path in ["/api/v1/tenants/globex/leads", "/api/v1/tenants/globex/admin", "/api/v1/tenants/acme2/leads/7"]:
        for http2 in (False, True):
            response = tenant_gateway.request("GET", path, key, http2=http2)
            assert response.status == 404, (path, response.body)
            assert response.json["error"] == {"code": "not_found", "message": "No such resource.",
                                               "request_id": response.json["error"]["request_id"]}
    # Neither 404 took a token: both of the key's two are still there.
    for _ in range(2):
        allowed = tenant_gateway.request("GET", "/api/v1/tenants/acme/leads/7", key)
        assert allowed.status == 200, allowed.body
        assert allowed.upstream["path"] == "/api/v1/tenants/acme/leads/7"
    limited = tenant_gateway.request("GET", "/api/v1/tenants/acme/leads", key)
    assert limited.json["error"]["code"] == "rate_limited"
    # Its own admin page: the scope decides, after the tenant matched.
    assert tenant_gateway.request("GET", "/api/v1/tenants/acme/admin", key).json["error"]["code"] \
        == "insufficient_scope"


def test_a_tenant_that_needs_percent_encoding_matches_its_encoded_segment(tenant_gateway):
    key = [("X-API-Key", SPACED_KEY)]
    # "acme corp/é": its "/" can never appear in a segment (%2F is refused
    # at the edge), so the tenant's resources are unreachable by path; an
    # encoded space and é match when the tenant has no slash.
    refused = tenant_gateway.request("GET", "/api/v1/tenants/acme%20corp%2F%C3%A9/leads", key)
    assert refused.status == 400
    other = tenant_gateway.request("GET", "/api/v1/tenants/acme%20corp/leads", key)
    assert other.status == 404


def test_an_empty_tenant_segment_matches_no_tenant_rule(tenant_gateway):
    # Envoy merges `//`; the filter's rule then does not match, and the
    # request needs only a valid key (no tenant rule, no scope; this key
    # has no limit, so the earlier tests' spent tokens do not matter).
    response = tenant_gateway.request("GET", "/api/v1/tenants//leads", [("X-API-Key", SPACED_KEY)])
    assert response.status == 200, response.body
    assert response.upstream["path"] == "/api/v1/tenants/leads"


def test_a_percent_encoded_tenant_segment_names_its_tenant(module):
    config = {"keys": [make_key(SPACED_KEY, id="key_spaced", tenant="acme corp é", scopes=["leads:read"])],
              "rules": [{"path_prefix": "/t/{tenant}", "scope": "leads:read"}]}
    with Gateway(module, config=config, concurrency=1) as gw:
        key = [("X-API-Key", SPACED_KEY)]
        assert gw.request("GET", "/t/acme%20corp%20%C3%A9/x", key).status == 200
        assert gw.request("GET", "/t/acme%20corp/x", key).status == 404
        assert gw.request("GET", "/t/acme%20Corp%20%C3%A9/x", key).status == 404


# --- §7.4 links in error bodies ------------------------------------------------------

def test_every_denial_body_links_its_code(module):
    config = https_config(error_doc_url="https://docs.example.com/errors#{code}")
    with Gateway(module, config=config, concurrency=1) as gw:
        plain = gw.request("GET", "/api/v1/leads")
        assert plain.json["error"]["doc_url"] == "https://docs.example.com/errors#https_required"
        for headers, code in [([], "missing_credentials"), ([("X-API-Key", "sk_live_nope")], "invalid_key")]:
            response = gw.request("GET", "/api/v1/leads", headers, tls=True)
            assert response.json["error"]["doc_url"] == f"https://docs.example.com/errors#{code}"
        assert gw.push(https_config(error_doc_url="http://docs.example.com/{code}")) is False
        assert "error_doc_url" in gw.log_text()
