"""Contract §5 paths, proven in real Envoy with Envoy's own path handling
switched off (`edge=False`), so what is tested is the filter's: rules see
the normalised path, the upstream receives exactly that path, and unsafe
paths get 400 `invalid_path` before any rule or key is looked at.
Every case runs over HTTP/1.1 and HTTP/2 (h2c), whose codecs differ.
"""

import hashlib

import pytest

from harness import Gateway

KEY = "sk_live_Paths0000000000000000000"
ADMIN_KEY = "sk_live_PathsAdmin00000000000000"


def sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


CONFIG = {
    "keys": [
        {"id": "key_reader", "sha256": sha(KEY), "tenant": "t", "scopes": ["reports:read"]},
        {"id": "key_admin", "sha256": sha(ADMIN_KEY), "tenant": "t", "scopes": ["admin", "reports:read"]},
    ],
    "rules": [
        {"path_prefix": "/public", "public": True},
        {"path_prefix": "/api/v1/admin", "scope": "admin"},
        {"path_prefix": "/api/v1/reports", "scope": "reports:read"},
        {"path": "/api/v1/exact", "scope": "admin"},
    ],
}

PROTOCOLS = [pytest.param(False, id="h1"), pytest.param(True, id="h2c")]


@pytest.fixture(scope="module")
def gateway(module):
    with Gateway(module, config=CONFIG, concurrency=2, edge=False) as gw:
        yield gw


# Raw path -> the path the upstream must receive (reader key, allowed).
NORMALISED = [
    ("/api/v1/%72eports", "/api/v1/reports"),
    ("/api/v1/reports/%2e/x", "/api/v1/reports/x"),
    ("/api/v1/reports//7", "/api/v1/reports/7"),
    ("/api//v1/./reports/a/../b", "/api/v1/reports/b"),
    ("/api/v1/reports?q=%2F..%2F", "/api/v1/reports?q=%2F..%2F"),
    ("/api/v1/x/../reports?a=1", "/api/v1/reports?a=1"),
    ("/api/v1/%52EPORTS", "/api/v1/REPORTS"),
    # Path parameters go upstream as sent (contract §7.1).
    ("/api/v1/reports;v=2/a;b/../c?x=1", "/api/v1/reports;v=2/c?x=1"),
    ("/api/v1/reports/%3b", "/api/v1/reports/%3B"),
]


@pytest.mark.parametrize("http2", PROTOCOLS)
@pytest.mark.parametrize("raw,expected", NORMALISED, ids=[r for r, _ in NORMALISED])
def test_the_upstream_receives_the_normalised_path(gateway, raw, expected, http2):
    response = gateway.request("GET", raw, [("X-API-Key", ADMIN_KEY)], http2=http2)
    assert response.status == 200, f"{raw}: {response.status} {response.body[:200]!r}"
    assert response.upstream["path"] == expected


# Paths that dodge a scope by spelling: the reader key must not reach admin.
DODGES = [
    "/api/v1/%61dmin/keys",
    "/api/v1/reports/../admin/keys",
    "/api/v1/reports/%2e%2e/admin",
    "/api/v1/reports/%2E%2E/admin",
    "//api//v1//admin",
    "/api/v1/./admin",
    "/api/v1/exact/",
    "/public/../api/v1/admin",
    # Rules compare the path without its parameters (contract §7.1).
    "/api/v1/admin;x=1",
    "/api/v1/admin;x=1/keys",
    "/api;v=1/v1/admin",
    "/api/v1/exact;v=2",
]


@pytest.mark.parametrize("http2", PROTOCOLS)
@pytest.mark.parametrize("raw", DODGES)
def test_spelling_a_path_differently_does_not_dodge_its_rule(gateway, raw, http2):
    response = gateway.request("GET", raw, [("X-API-Key", KEY)], http2=http2)
    assert response.status == 403, f"{raw}: {response.status} {response.body[:200]!r}"
    assert response.json["error"]["code"] == "insufficient_scope"


UNSAFE = [
    "/api/v1/reports%2Fx",
    "/api/v1/reports%2fx",
    "/api/v1/reports%5Cx",
    "/api/v1/reports%5cx",
    "/api/v1/reports/%",
    "/api/v1/reports/%zz",
    "/api/v1/reports/%4",
    "/..",
    "/api/../../etc/passwd",
    "/%2e%2e/x",
    "/api/v1/reports%00",
    "/public%2F..%2Fapi/v1/admin",
    # Dot segments with parameters: Tomcat's /public/..;/x is /x.
    "/public/..;x=1/api/v1/admin",
    "/public/..;/api/v1/admin",
    "/public/%2e%2e;/api/v1/admin",
    "/public/;x/../api/v1/admin",
]


@pytest.mark.parametrize("http2", PROTOCOLS)
@pytest.mark.parametrize("raw", UNSAFE)
def test_unsafe_paths_get_invalid_path_before_any_key_check(gateway, raw, http2):
    for headers in ([], [("X-API-Key", ADMIN_KEY)]):
        response = gateway.request("GET", raw, headers, http2=http2)
        if response.json is None:
            # Envoy's codec refused the request line before the filter ran.
            assert response.status == 400, f"{raw}: {response.status}"
            continue
        assert response.status == 400, f"{raw}: {response.status} {response.body[:200]!r}"
        assert response.json["error"]["code"] == "invalid_path"


def test_a_raw_backslash_is_refused(gateway):
    response = gateway.raw(b"GET /api/v1/reports\\..\\admin HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert response.split(b" ", 2)[1] == b"400", response[:200]


@pytest.mark.parametrize("http2", PROTOCOLS)
def test_public_routes_are_matched_on_the_normalised_path_too(gateway, http2):
    response = gateway.request("GET", "/public/%2e/x", [], http2=http2)
    assert response.status == 200
    assert response.upstream["path"] == "/public/x"
