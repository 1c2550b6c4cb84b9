"""Contract §2-§3 in a real Envoy: every status, code, field and header.

Each test talks HTTP to an Envoy running the built module with two workers,
behind an upstream that echoes the request it received, so what the
upstream sees (identity headers in, credentials and forged headers out) is
checked as well as what the client sees.
"""

import hashlib
import json

import pytest

from harness import Gateway

PRO_KEY = "sk_live_ProKey000000000000000000"
FREE_KEY = "sk_live_FreeKey00000000000000000"
REVOKED_KEY = "sk_live_Revoked00000000000000000"
EXPIRED_KEY = "sk_live_Expired00000000000000000"
SCOPELESS_KEY = "sk_live_NoScope00000000000000000"
IDENTITY = ("x-api-key-id", "x-api-tenant", "x-api-scopes", "x-api-plan", "x-api-env")


def sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def contract_config(**extra) -> dict:
    config = {
        "keys": [
            {"id": "key_pro", "sha256": sha(PRO_KEY), "tenant": "acme", "plan": "pro", "env": "live",
             "scopes": ["leads:read", "leads:write", "mcp:tools"], "expires_at": "2099-01-01T00:00:00Z",
             "name": "n8n Production", "hint": "sk_live_Pro…0000"},
            {"id": "key_free", "sha256": sha(FREE_KEY).upper(), "tenant": "globex", "plan": "free",
             "scopes": ["leads:*", "mcp:*"]},
            {"id": "key_revoked", "sha256": sha(REVOKED_KEY), "tenant": "acme", "revoked": True},
            {"id": "key_expired", "sha256": sha(EXPIRED_KEY), "tenant": "acme",
             "expires_at": "2020-01-01T00:00:00Z"},
            {"id": "key_noscope", "sha256": sha(SCOPELESS_KEY), "tenant": "initech"},
        ],
        "plans": {
            "pro": {"scopes": ["leads:*", "mcp:*"]},
            "free": {"scopes": ["leads:read"]},
        },
        "rules": [
            {"path_prefix": "/healthz", "public": True},
            {"path_prefix": "/api/v1/leads", "methods": ["GET", "HEAD"], "scope": "leads:read"},
            {"path_prefix": "/api/v1/leads", "methods": ["POST", "PUT", "PATCH"], "scope": "leads:write"},
            {"path": "/api/v1/admin/keys", "scope": "admin"},
            {"path": "/mcp", "scope": "mcp:tools"},
        ],
        "key_prefixes": ["sk_live_", "sk_test_"],
    }
    config.update(extra)
    return config


@pytest.fixture(scope="module")
def gateway(module):
    with Gateway(module, config=contract_config(), concurrency=2) as gw:
        yield gw


def header(response, name):
    values = [v for n, v in response.headers if n == name]
    return values[0] if values else None


def assert_denied(response, status, code):
    assert response.status == status, f"expected {status} {code}, got {response.status}: {response.body[:300]!r}"
    assert header(response, "content-type") == "application/json", response.headers
    error = response.json["error"]
    assert error["code"] == code, error
    assert error["request_id"], f"no request id in {error}"
    assert response.upstream is None, "a denied request reached the upstream"
    return error


CHALLENGE_401 = 'Bearer realm="api", ApiKey realm="api"'

DENIALS = [
    # name, method, path, headers, status, code
    ("missing", "GET", "/api/v1/leads", [], 401, "missing_credentials"),
    ("basic only", "GET", "/api/v1/leads", [("Authorization", "Basic dXNlcjpwYXNz")], 401, "missing_credentials"),
    ("glued scheme", "GET", "/api/v1/leads", [("Authorization", "Bearer" + PRO_KEY)], 401, "missing_credentials"),
    ("bare bearer", "GET", "/api/v1/leads", [("Authorization", "Bearer ")], 401, "malformed_credentials"),
    ("empty x-api-key", "GET", "/api/v1/leads", [("X-API-Key", "")], 401, "malformed_credentials"),
    ("wrong prefix", "GET", "/api/v1/leads", [("X-API-Key", "crm_abc")], 401, "malformed_credentials"),
    ("comma in key", "GET", "/api/v1/leads", [("Authorization", "Bearer sk_live_a,b")], 401, "malformed_credentials"),
    ("too long", "GET", "/api/v1/leads", [("X-API-Key", "sk_live_" + "a" * 249)], 401, "malformed_credentials"),
    ("conflict", "GET", "/api/v1/leads", [("X-API-Key", PRO_KEY), ("Authorization", "Bearer " + FREE_KEY)], 401,
     "conflicting_credentials"),
    ("joined conflict", "GET", "/api/v1/leads", [("Authorization", f"Bearer {PRO_KEY},Bearer {FREE_KEY}")], 401,
     "conflicting_credentials"),
    ("unknown key", "GET", "/api/v1/leads", [("X-API-Key", "sk_live_Nobody000000000000000000")], 401, "invalid_key"),
    ("revoked", "GET", "/api/v1/leads", [("X-API-Key", REVOKED_KEY)], 401, "key_revoked"),
    ("expired", "GET", "/api/v1/leads", [("Authorization", "ApiKey " + EXPIRED_KEY)], 401, "key_expired"),
]


@pytest.mark.parametrize("name,method,path,headers,status,code", DENIALS, ids=[row[0] for row in DENIALS])
def test_denials_carry_their_status_code_and_challenge(gateway, name, method, path, headers, status, code):
    response = gateway.request(method, path, headers)
    assert_denied(response, status, code)
    if status == 401:
        assert header(response, "www-authenticate") == CHALLENGE_401


def test_the_edge_configuration_rejects_encoded_slashes_before_the_filter(gateway):
    # Envoy's own path_with_escaped_slashes_action (contract §5); the
    # filter's invalid_path, behind an Envoy without it, is in test_paths.
    response = gateway.request("GET", "/api/v1/leads%2F7", [("X-API-Key", PRO_KEY)])
    assert response.status == 400
    assert response.upstream is None


def test_insufficient_scope_names_the_scope_and_challenges_bearer_clients(gateway):
    response = gateway.request("GET", "/api/v1/admin/keys", [("Authorization", "Bearer " + PRO_KEY)])
    error = assert_denied(response, 403, "insufficient_scope")
    assert error["required_scope"] == "admin"
    assert error["message"] == "This key does not hold the scope admin."
    assert header(response, "www-authenticate") == (
        'Bearer realm="api", error="insufficient_scope", scope="admin"')
    response = gateway.request("GET", "/api/v1/admin/keys", [("X-API-Key", PRO_KEY)])
    assert_denied(response, 403, "insufficient_scope")
    assert header(response, "www-authenticate") is None, "an X-API-Key client got a Bearer challenge"


def test_plan_upgrade_required_names_scope_and_plan(gateway):
    response = gateway.request("POST", "/api/v1/leads", [("X-API-Key", FREE_KEY)])
    error = assert_denied(response, 403, "plan_upgrade_required")
    assert (error["required_scope"], error["plan"]) == ("leads:write", "free")


def test_an_allowed_request_reaches_the_upstream_with_identity_and_without_credentials(gateway):
    response = gateway.request("GET", "/api/v1/leads/7?page=2", [
        ("Authorization", "Bearer " + PRO_KEY),
        ("X-API-Key", PRO_KEY),
        ("X-Api-Key-Id", "forged"), ("x-api-tenant", "evil"), ("X-API-Scopes", "*"),
        ("x-api-plan", "scale"), ("x-api-env", "prod"),
    ])
    assert response.status == 200, response.body
    seen = response.upstream
    sent = {n.lower(): v for n, v in seen["headers"]}
    assert seen["path"] == "/api/v1/leads/7?page=2"
    assert sent["x-api-key-id"] == "key_pro"
    assert sent["x-api-tenant"] == "acme"
    assert sent["x-api-scopes"] == "leads:read leads:write mcp:tools"
    assert sent["x-api-plan"] == "pro"
    assert sent["x-api-env"] == "live"
    for name in IDENTITY:
        assert [n for n, _ in seen["headers"] if n.lower() == name] == [name], f"{name} forged value survived"
    assert "authorization" not in sent and "x-api-key" not in sent, "the credential reached the upstream"
    assert PRO_KEY not in json.dumps(seen), "the raw key reached the upstream"


def test_effective_scopes_are_narrowed_by_the_plan_and_absent_headers_are_not_invented(gateway):
    response = gateway.request("GET", "/api/v1/leads", [("X-API-Key", FREE_KEY)])
    sent = {n.lower(): v for n, v in response.upstream["headers"]}
    assert sent["x-api-scopes"] == "leads:read"
    assert "x-api-env" not in sent
    response = gateway.request("GET", "/other", [("X-API-Key", SCOPELESS_KEY)])
    sent = {n.lower(): v for n, v in response.upstream["headers"]}
    assert sent["x-api-scopes"] == ""
    assert "x-api-plan" not in sent


def test_public_routes_pass_without_a_key_but_lose_credentials_and_forged_headers(gateway):
    response = gateway.request("GET", "/healthz", [
        ("Authorization", "Basic abc, Bearer " + PRO_KEY), ("x-api-tenant", "evil")])
    assert response.status == 200, response.body
    sent = {n.lower(): v for n, v in response.upstream["headers"]}
    assert sent["authorization"] == "Basic abc", "other schemes' elements must be kept"
    assert "x-api-tenant" not in sent


def test_other_authorization_schemes_are_left_alone_on_allowed_requests(gateway):
    response = gateway.request("GET", "/api/v1/leads", [
        ("Authorization", "Digest username=\"a\", realm=\"b\""), ("X-API-Key", PRO_KEY)])
    sent = {n.lower(): v for n, v in response.upstream["headers"]}
    assert sent["authorization"] == 'Digest username="a", realm="b"'


def test_head_requests_are_decided_like_get(gateway):
    assert gateway.request("HEAD", "/api/v1/leads", [("X-API-Key", FREE_KEY)]).status == 200
    assert gateway.request("HEAD", "/api/v1/leads", []).status == 401


def test_no_response_ever_contains_the_presented_key(gateway):
    for key in (PRO_KEY, REVOKED_KEY, "sk_live_Nobody000000000000000000", "sk_live_a,b"):
        for headers in ([("X-API-Key", key)], [("Authorization", "Bearer " + key)]):
            response = gateway.request("GET", "/api/v1/admin/keys", headers)
            raw = response.body + json.dumps(response.headers).encode()
            assert key.encode() not in raw, f"{key} echoed in a {response.status}"


def test_an_unconfigured_gateway_fails_closed_with_503(module):
    with Gateway(module, config=None, concurrency=2) as gw:
        for path in ("/healthz", "/api/v1/leads"):
            response = gw.request("GET", path, [("X-API-Key", PRO_KEY)])
            assert_denied(response, 503, "not_configured")


def test_an_empty_configuration_means_not_configured(module):
    with Gateway(module, config="   ", concurrency=2) as gw:
        assert_denied(gw.request("GET", "/healthz", []), 503, "not_configured")


def test_an_invalid_update_is_refused_and_the_previous_table_stays(module):
    with Gateway(module, config=contract_config(), concurrency=2) as gw:
        invalid = contract_config()
        invalid["keys"][0]["plan"] = "gold"
        invalid["keys"].append({"id": "key_new", "sha256": sha("sk_live_New"), "tenant": "t"})
        assert gw.push(invalid) is False, "Envoy accepted an invalid configuration"
        assert 'keys[0].plan: unknown plan \\"gold\\"' in gw.log_text() or \
            'keys[0].plan: unknown plan "gold"' in gw.log_text(), "the refusal does not name the field"
        assert gw.request("GET", "/api/v1/leads", [("X-API-Key", PRO_KEY)]).status == 200
        assert_denied(gw.request("GET", "/x", [("X-API-Key", "sk_live_New")]), 401, "invalid_key")


def test_a_valid_update_replaces_the_table(module):
    with Gateway(module, config=contract_config(), concurrency=2) as gw:
        updated = contract_config()
        updated["keys"] = [k for k in updated["keys"] if k["id"] != "key_pro"]
        updated["keys"][0]["revoked"] = True
        assert gw.push(updated) is True
        assert_denied(gw.request("GET", "/api/v1/leads", [("X-API-Key", PRO_KEY)]), 401, "invalid_key")
        assert_denied(gw.request("GET", "/api/v1/leads", [("X-API-Key", FREE_KEY)]), 401, "key_revoked")


def test_a_table_of_100000_keys_answers_like_a_table_of_10(module):
    keys = [{"id": f"k{i}", "sha256": sha(f"sk_live_bulk{i:08d}"), "tenant": "bulk"} for i in range(100_000)]
    config = contract_config()
    config["keys"] += keys
    with Gateway(module, config=config, concurrency=2) as gw:
        for raw, expected in (("sk_live_bulk00000000", 200), ("sk_live_bulk00099999", 200),
                              ("sk_live_bulk00100000", 401)):
            assert gw.request("GET", "/x", [("X-API-Key", raw)]).status == expected, raw
        assert gw.request("GET", "/api/v1/leads", [("X-API-Key", PRO_KEY)]).status == 200
