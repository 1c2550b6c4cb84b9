"""Issue 17, the security review of contract v1, in a real Envoy: findings
2 (path parameters), 3 (HEAD follows GET) and 4 (a field given twice),
as contract §7.1 amends v1.

Path cases run over HTTP/1.1 and HTTP/2 (h2c), against the shipped edge
configuration and against one without Envoy's path hardening
(`edge=False`), so what is proven is the filter's own handling: Envoy's
`normalize_path` leaves `;` alone either way.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from echo_upstream import MARKER_HEADER
from harness import Gateway

READER = "sk_live_ReviewReader000000000000"
ADMIN = "sk_live_ReviewAdmin0000000000000"
NOSCOPE = "sk_live_ReviewNoScope00000000000"


def sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


CONFIG = {
    "keys": [
        {"id": "key_reader", "sha256": sha(READER), "tenant": "acme", "scopes": ["reports:read"]},
        {"id": "key_admin", "sha256": sha(ADMIN), "tenant": "acme", "scopes": ["admin", "reports:read"]},
        {"id": "key_noscope", "sha256": sha(NOSCOPE), "tenant": "initech"},
    ],
    "rules": [
        {"path_prefix": "/public", "public": True},
        {"path_prefix": "/api/v1/admin", "scope": "admin"},
        {"path_prefix": "/v2/reports", "methods": ["GET"], "scope": "reports:read"},
        {"path": "/api/v1/exact", "scope": "admin"},
    ],
}

PROTOCOLS = [pytest.param(False, id="h1"), pytest.param(True, id="h2c")]
PROFILES = ["edge", "bare"]


@pytest.fixture(scope="module")
def gateways(module):
    with Gateway(module, config=CONFIG, concurrency=2) as edge, \
            Gateway(module, config=CONFIG, concurrency=2, edge=False) as bare:
        yield {"edge": edge, "bare": bare}


def denied(response, status: int, code: str, what: str) -> None:
    assert response.upstream is None, f"{what}: reached the upstream ({response.status})"
    assert response.status == status, f"{what}: {response.status} {response.body[:200]!r}, expected {status} {code}"
    assert response.json["error"]["code"] == code, f"{what}: {response.json}"


# --- finding 2: `;` path parameters -------------------------------------------

# (path, key) -> the rule whose scope the key lacks must still apply.
PARAMETER_DODGES = [
    ("/v2/reports;x=1", NOSCOPE, "reports:read"),
    ("/v2/reports;jsessionid=ABC/7", NOSCOPE, "reports:read"),
    ("/api/v1/admin;x=1", READER, "admin"),
    ("/api/v1/admin;x=1/keys", READER, "admin"),
    ("/api/v1;v=1/admin", READER, "admin"),
    ("/api/v1/admin;/keys?q=1", READER, "admin"),
    ("/api/v1/exact;v=2", READER, "admin"),
    ("/api/v1/exact;v=2/", READER, "admin"),
    ("/api/v1/%61dmin;x=1", READER, "admin"),
]


@pytest.mark.parametrize("http2", PROTOCOLS)
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("path,key,scope", PARAMETER_DODGES, ids=[p for p, _, _ in PARAMETER_DODGES])
def test_path_parameters_do_not_dodge_a_rule(gateways, profile, http2, path, key, scope):
    response = gateways[profile].request("GET", path, [("X-API-Key", key)], http2=http2)
    denied(response, 403, "insufficient_scope", f"{path} [{profile}]")
    assert response.json["error"]["required_scope"] == scope


@pytest.mark.parametrize("http2", PROTOCOLS)
@pytest.mark.parametrize("profile", PROFILES)
def test_the_upstream_receives_the_path_parameters(gateways, profile, http2):
    response = gateways[profile].request("GET", "/api/v1/admin;x=1/keys;v=2?q=1", [("X-API-Key", ADMIN)],
                                         http2=http2)
    assert response.status == 200, f"{response.status} {response.body[:200]!r}"
    assert response.upstream["path"] == "/api/v1/admin;x=1/keys;v=2?q=1"


# Tomcat removes parameters and then resolves dot segments:
# /public/..;x=1/api/v1/admin is /api/v1/admin there, while a server that
# keeps `..;x=1` as a name serves something under /public. No rule can be
# matched safely for both readings, so the filter refuses the path (bare).
# Envoy's own normalize_path (edge) reads `..;x` as `..` and `.;x` as `.`
# and forwards what it made, so there the filter judges, and the upstream
# receives, a path without the ambiguity: (path, edge answer to the reader
# key, the upstream's path on a 200).
AMBIGUOUS_DOT_SEGMENTS = [
    ("/public/..;x=1/api/v1/admin", "403 insufficient_scope", None),
    ("/public/..;/api/v1/admin", "403 insufficient_scope", None),
    ("/public/.;x/api/v1/admin", "200", "/public/api/v1/admin"),
    ("/public/%2e%2e;x=1/api/v1/admin", "400 invalid_path", None),
    ("/public/;x/../api/v1/admin", "200", "/public/api/v1/admin"),
    ("/v2/reports/..;/x?q=1", "200", "/v2/x?q=1"),
]


def answer(response) -> str:
    if response.upstream is not None:
        return str(response.status)
    return f"{response.status} {response.json['error']['code']}"


@pytest.mark.parametrize("http2", PROTOCOLS)
@pytest.mark.parametrize("path,edge,upstream", AMBIGUOUS_DOT_SEGMENTS, ids=[p for p, _, _ in AMBIGUOUS_DOT_SEGMENTS])
def test_a_dot_segment_with_parameters_is_refused_as_an_invalid_path(gateways, http2, path, edge, upstream):
    for headers in ([], [("X-API-Key", ADMIN)], [("X-API-Key", READER)]):
        response = gateways["bare"].request("GET", path, headers, http2=http2)
        denied(response, 400, "invalid_path", f"{path} [bare] with {headers}")
    response = gateways["edge"].request("GET", path, [("X-API-Key", READER)], http2=http2)
    assert answer(response) == edge, f"{path} [edge]: {answer(response)}, expected {edge}"
    if upstream is not None:
        assert response.upstream["path"] == upstream, f"{path} [edge]: upstream got {response.upstream['path']}"


@pytest.mark.parametrize("http2", PROTOCOLS)
@pytest.mark.parametrize("profile", PROFILES)
def test_an_encoded_semicolon_is_data_not_a_parameter(gateways, profile, http2):
    # %3B stays encoded (contract §5 decodes only unreserved characters)
    # and, as in Tomcat and Spring, is part of the segment's name.
    response = gateways[profile].request("GET", "/api/v1/admin%3bx=1", [("X-API-Key", READER)], http2=http2)
    assert response.status == 200, f"{response.status} {response.body[:200]!r}"
    assert response.upstream["path"] == "/api/v1/admin%3Bx=1"


# --- finding 3: HEAD follows GET -----------------------------------------------

@pytest.mark.parametrize("http2", PROTOCOLS)
def test_a_get_rule_also_guards_head(gateways, http2):
    gw = gateways["bare"]
    response = gw.request("HEAD", "/v2/reports", [("X-API-Key", NOSCOPE)], http2=http2)
    assert response.status == 403, f"HEAD without reports:read: {response.status}"
    assert response.header(MARKER_HEADER) is None, "a denied HEAD reached the upstream"
    response = gw.request("HEAD", "/v2/reports/7", [("X-API-Key", READER)], http2=http2)
    assert response.status == 200 and response.header(MARKER_HEADER) is not None, \
        f"HEAD with reports:read: {response.status}"
    # Other methods are still outside the GET rule.
    response = gw.request("DELETE", "/v2/reports", [("X-API-Key", NOSCOPE)], http2=http2)
    assert response.status == 200, f"DELETE outside the rule's methods: {response.status}"


# --- finding 4: a field given twice ----------------------------------------------

def document_with(config: dict, repeat: tuple[str, str], value: str) -> str:
    """`config` as JSON text, with the field whose text is `repeat[0]`
    followed by the same field again holding `value` (JSON cannot say this
    through a dict)."""
    text = json.dumps(config)
    marker, name = repeat
    assert text.count(marker) == 1, f"{marker} is not unique in the document"
    return text.replace(marker, f'{marker}, "{name}": {value}')


REPEATS = [
    ("a key field", 'keys[0].expires_at', ('"expires_at": "2020-01-01T00:00:00Z"', "expires_at")),
    ("a top-level field", "realm", ('"realm": "api"', "realm")),
    ("a limit field", "keys[0].rate_limits.*.burst", ('"burst": 1', "burst")),
]


def test_a_field_given_twice_is_refused_even_when_the_second_is_null(module):
    base = json.loads(json.dumps(CONFIG))
    base["realm"] = "api"
    base["keys"][0]["expires_at"] = "2020-01-01T00:00:00Z"
    base["keys"][0]["rate_limits"] = {"*": {"requests": 100, "period_seconds": 60, "burst": 1}}
    with Gateway(module, config=CONFIG, concurrency=2) as gw:
        for what, field, repeat in REPEATS:
            assert gw.push(document_with(base, repeat, "null")) is False, \
                f"{what} given twice, the second time null, was accepted"
            assert f"{field}: is given twice" in gw.log_text(), f"the refusal of {what} does not name {field}"
        # The configuration before the refusals stays enforced: the reader
        # key (whose expires_at the refused documents set in the past)
        # still works, and its scope is still checked.
        response = gw.request("GET", "/v2/reports", [("X-API-Key", READER)])
        assert response.status == 200, f"the previous configuration is gone: {response.status}"
        denied(gw.request("GET", "/api/v1/admin", [("X-API-Key", READER)]), 403, "insufficient_scope",
               "admin after the refusals")
