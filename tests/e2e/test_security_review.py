"""Issue 17, the security review of contract v1, in a real Envoy: findings
3 (HEAD follows GET) and 4 (a field given twice), as contract §7.1
amends v1.
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
def gateways(wasm_module):
    with Gateway(wasm_module, config=CONFIG, concurrency=2) as edge, \
            Gateway(wasm_module, config=CONFIG, concurrency=2, edge=False) as bare:
        yield {"edge": edge, "bare": bare}


def denied(response, status: int, code: str, what: str) -> None:
    assert response.upstream is None, f"{what}: reached the upstream ({response.status})"
    assert response.status == status, f"{what}: {response.status} {response.body[:200]!r}, expected {status} {code}"
    assert response.json["error"]["code"] == code, f"{what}: {response.json}"


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


def test_a_field_given_twice_is_refused_even_when_the_second_is_null(wasm_module):
    base = json.loads(json.dumps(CONFIG))
    base["realm"] = "api"
    base["keys"][0]["expires_at"] = "2020-01-01T00:00:00Z"
    base["keys"][0]["rate_limits"] = {"*": {"requests": 100, "period_seconds": 60, "burst": 1}}
    with Gateway(wasm_module, config=CONFIG, concurrency=2) as gw:
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
