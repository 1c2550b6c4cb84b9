"""Contract additions (issue 8, item 1) that need their own configuration,
proven in real Envoy over HTTP/1.1 and HTTP/2 (h2c): `realm`, the
challenge when only `x-api-key` is enabled, an `Authorization` (or
`X-API-Key`) of a scheme that `schemes` leaves out left alone, the
credential removed on public routes, and an empty configuration meaning
`not_configured`. The rest of §2/§3/§5 over both codecs is in the
adversarial table (test_adversarial.py) and test_paths.py.
"""

import hashlib

import pytest

from harness import Gateway

KEY = "sk_live_Additions00000000000000"
OTHER = "sk_live_AdditionsOther000000000"
PROTOCOLS = [pytest.param(False, id="h1"), pytest.param(True, id="h2c")]


def sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def config(**extra) -> dict:
    return {
        "keys": [{"id": "key_a", "sha256": sha(KEY), "tenant": "t", "scopes": ["reports:read"]},
                 {"id": "key_b", "sha256": sha(OTHER), "tenant": "t"}],
        "rules": [{"path_prefix": "/public", "public": True}, {"path_prefix": "/admin", "scope": "admin"}],
        **extra,
    }


def sent(response) -> list[tuple[str, str]]:
    """The headers the upstream received, names lower-cased."""
    return [(name.lower(), value) for name, value in response.upstream["headers"]]


def denied(response, status, code):
    assert response.status == status, f"{response.status} {response.body[:200]!r}"
    assert response.header("content-type") == "application/json"
    assert response.json["error"]["code"] == code
    return response


@pytest.fixture(scope="module")
def gateways(module):
    with Gateway(module, config=config(realm="partners"), concurrency=2) as realm, \
            Gateway(module, config=config(schemes=["x-api-key"]), concurrency=2) as x_only, \
            Gateway(module, config=config(schemes=["bearer"]), concurrency=2) as bearer_only:
        yield {"realm": realm, "x_only": x_only, "bearer_only": bearer_only}


@pytest.mark.parametrize("http2", PROTOCOLS)
def test_realm_names_the_protection_space_of_every_challenge(gateways, http2):
    gw = gateways["realm"]
    response = denied(gw.request("GET", "/x", [], http2=http2), 401, "missing_credentials")
    assert response.header("www-authenticate") == 'Bearer realm="partners", ApiKey realm="partners"'
    response = denied(gw.request("GET", "/admin", [("Authorization", "Bearer " + KEY)], http2=http2),
                      403, "insufficient_scope")
    assert response.header("www-authenticate") == \
        'Bearer realm="partners", error="insufficient_scope", scope="admin"'


@pytest.mark.parametrize("http2", PROTOCOLS)
def test_with_only_x_api_key_the_challenge_names_the_header(gateways, http2):
    gw = gateways["x_only"]
    for headers in ([], [("Authorization", "Bearer " + KEY)]):
        response = denied(gw.request("GET", "/x", headers, http2=http2), 401, "missing_credentials")
        assert response.header("www-authenticate") == 'ApiKey realm="api", header="X-API-Key"'


@pytest.mark.parametrize("http2", PROTOCOLS)
def test_an_authorization_of_a_disabled_scheme_is_left_alone(gateways, http2):
    gw = gateways["x_only"]
    # Not a second credential (no conflict), and forwarded as it came.
    response = gw.request("GET", "/x", [("X-API-Key", KEY), ("Authorization", "Bearer " + OTHER)], http2=http2)
    assert response.status == 200, response.body
    headers = sent(response)
    assert ("authorization", "Bearer " + OTHER) in headers
    assert "x-api-key" not in {name for name, _ in headers}
    assert ("x-api-key-id", "key_a") in headers


@pytest.mark.parametrize("http2", PROTOCOLS)
def test_an_x_api_key_of_a_disabled_scheme_is_left_alone(gateways, http2):
    gw = gateways["bearer_only"]
    response = denied(gw.request("GET", "/x", [("X-API-Key", KEY)], http2=http2), 401, "missing_credentials")
    assert response.header("www-authenticate") == 'Bearer realm="api"'
    denied(gw.request("GET", "/x", [("Authorization", "ApiKey " + KEY)], http2=http2), 401, "missing_credentials")
    response = gw.request("GET", "/x", [("Authorization", "Bearer " + KEY), ("X-API-Key", OTHER)], http2=http2)
    assert response.status == 200, response.body
    headers = sent(response)
    assert ("x-api-key", OTHER) in headers
    assert "authorization" not in {name for name, _ in headers}


@pytest.mark.parametrize("http2", PROTOCOLS)
def test_the_credential_is_removed_on_public_routes_too(gateways, http2):
    gw = gateways["realm"]
    response = gw.request("GET", "/public/a", [("Authorization", "Bearer " + KEY), ("X-API-Key", KEY)], http2=http2)
    assert response.status == 200, response.body
    names = {name for name, _ in sent(response)}
    assert not names & {"authorization", "x-api-key", "x-api-key-id"}, names


@pytest.mark.parametrize("http2", PROTOCOLS)
def test_empty_and_white_space_configurations_mean_not_configured(module, http2):
    with Gateway(module, config=config(), concurrency=2) as gw:
        for text in ("", " \n\t "):
            assert gw.push(text) is True, "an empty configuration is valid"
            for path in ("/public", "/x"):
                denied(gw.request("GET", path, [("X-API-Key", KEY)], http2=http2), 503, "not_configured")
        assert gw.push("{}") is True
        denied(gw.request("GET", "/x", [("X-API-Key", KEY)], http2=http2), 401, "invalid_key")
        denied(gw.request("GET", "/x", [], http2=http2), 401, "missing_credentials")
