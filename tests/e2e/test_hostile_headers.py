"""Hostile header bytes cannot trap the Wasm VM (contract §2: "No byte
sequence in any header may trap the Wasm VM") nor panic the native module
(§9).

Requests are written as raw HTTP/1.1 bytes, so values Python's HTTP client
would refuse (non-UTF-8, control bytes, 8 KiB keys) reach Envoy. Each gets
its contract answer (or Envoy's own 400 where its codec refuses the bytes
first); afterwards every worker still answers normally and the log shows no
VM failure.
"""

import hashlib

import pytest

from harness import Gateway

KEY = "sk_live_Hostile0000000000000000"
OTHER = "sk_live_Other000000000000000000"


def sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


CONFIG = {
    "keys": [{"id": "key_h", "sha256": sha(KEY), "tenant": "t", "scopes": ["*"]},
             {"id": "key_o", "sha256": sha(OTHER), "tenant": "t", "scopes": ["*"]}],
    "rules": [{"path_prefix": "/public", "public": True}],
}


@pytest.fixture(scope="module")
def gateway(module):
    with Gateway(module, config=CONFIG, concurrency=2) as gw:
        yield gw


def raw_request(headers: list[bytes], path: bytes = b"/x") -> bytes:
    lines = [b"GET " + path + b" HTTP/1.1", b"host: localhost", b"connection: close", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def status_and_code(gateway, headers, path=b"/x"):
    response = gateway.raw(raw_request(headers, path))
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    code = None
    if b'"code":"' in body:
        code = body.split(b'"code":"', 1)[1].split(b'"', 1)[0].decode()
    return status, code


HOSTILE = [
    # name, header lines, acceptable (status, code) answers
    ("non-utf8 bearer key", [b"authorization: Bearer sk_live_\xff\xfe\x80"], {(401, "malformed_credentials"), (400, None)}),
    ("non-utf8 x-api-key", [b"x-api-key: \xc3\x28sk_live_"], {(401, "malformed_credentials"), (400, None)}),
    ("non-utf8 other header", [b"x-note: \xff\xff\xff", b"x-api-key: " + KEY.encode()], {(200, None), (400, None)}),
    ("non-utf8 header name", [b"x-\xffname: v", b"x-api-key: " + KEY.encode()], {(200, None), (400, None)}),
    ("authorization then x-api-key differing", [b"authorization: Bearer " + KEY.encode(), b"x-api-key: " + OTHER.encode()],
     {(401, "conflicting_credentials")}),
    ("x-api-key then authorization differing", [b"x-api-key: " + OTHER.encode(), b"authorization: Bearer " + KEY.encode()],
     {(401, "conflicting_credentials")}),
    ("repeated authorization differing", [b"authorization: Bearer " + KEY.encode(), b"authorization: ApiKey " + OTHER.encode()],
     {(401, "conflicting_credentials")}),
    ("repeated authorization reversed", [b"authorization: ApiKey " + OTHER.encode(), b"authorization: Bearer " + KEY.encode()],
     {(401, "conflicting_credentials")}),
    ("repeated x-api-key differing", [b"x-api-key: " + KEY.encode(), b"x-api-key: " + OTHER.encode()],
     {(401, "conflicting_credentials")}),
    ("repeated x-api-key reversed", [b"x-api-key: " + OTHER.encode(), b"x-api-key: " + KEY.encode()],
     {(401, "conflicting_credentials")}),
    ("repeated x-api-key equal", [b"x-api-key: " + KEY.encode(), b"x-api-key: " + KEY.encode()], {(200, None)}),
    ("8 KiB credential", [b"x-api-key: sk_live_" + b"A" * 8192], {(401, "malformed_credentials")}),
    ("8 KiB bearer", [b"authorization: Bearer " + b"B" * 8192], {(401, "malformed_credentials")}),
    ("control byte in key", [b"x-api-key: sk_live_\x01abc"], {(401, "malformed_credentials"), (400, None)}),
    ("tab-separated scheme", [b"authorization: Bearer\t\t" + KEY.encode()], {(200, None)}),
    ("non-utf8 on a public route", [b"authorization: Bearer \xff"], {(200, None), (400, None)}),
]


@pytest.mark.parametrize("name,headers,expected", HOSTILE, ids=[row[0] for row in HOSTILE])
def test_hostile_headers_get_their_contract_answer(gateway, name, headers, expected):
    path = b"/public" if "public" in name else b"/x"
    answer = status_and_code(gateway, headers, path)
    assert answer in expected, f"{name}: got {answer}, expected one of {expected}"


def test_every_worker_still_answers_after_the_hostile_requests(gateway):
    for name, headers, _ in HOSTILE:
        status_and_code(gateway, headers)
    # Separate connections spread over both workers; each must answer.
    for _ in range(40):
        assert status_and_code(gateway, [b"x-api-key: " + KEY.encode()]) == (200, None)
    assert not gateway.filter_failures(), f"the filter failed: {gateway.filter_failures()}"
    failures = {name: value for name, value in gateway.stats().items()
                if name.startswith("wasm.") and ("fail" in name or "crash" in name) and value}
    assert not failures, f"Wasm runtime failures: {failures}"
