"""The adversarial table (issue 8): every hostile request in
`adversarial.jsonl`, sent over HTTP/1.1 (raw bytes on a socket) and HTTP/2
(h2c, validation off), to two gateways running the built module:

- `edge`: envoy/envoy.yaml as shipped, Envoy's own hardening in front
  (contract §5: path normalisation, escaped slashes and underscore header
  names rejected, header limits);
- `bare`: the same bootstrap without that hardening (`edge=False`), so the
  filter itself meets the raw paths and `_` header names a deployment
  without those settings would pass to it;
- `folded`: `bare` with `case_insensitive_paths: true`, where a path
  holding a byte above ASCII is refused (issue 17, finding 8).

Each row is one request. Its `expect` is the answer: `200` (the upstream
answered), `<status> <error.code>` (the filter denied), `<status>` (a HEAD,
whose denial has no body), `envoy <status>` (Envoy answered before the
filter, no JSON) or `reset` (the HTTP/2 codec reset the stream). Where the
gateways or codecs legitimately differ the row says so with overriding
keys, most specific first: `edge_h2`, `h2`, `edge`, then `expect` (same for
`bare`, `folded`, `h1`). `upstream` checks what the upstream received on a 200:
`path`, `headers` (exactly one header of that name with that value) and
`absent` (no header of that name). Placeholders: `{KEY}` and the other key
names below, `{rep N TEXT}` (TEXT N times), and the header entries
`{fill N}` (N small headers) and `{block N}` (about N KiB of headers).

Header entries are joined with CRLF for HTTP/1.1, so an entry holding
`\\r\\n` is an obs-fold or a smuggled line there; over HTTP/2 the same entry
is one field whose value holds those bytes.

After the table, every worker of both gateways must still answer with the
filter's decision, and nothing may show a filter failure (a native module's
caught panic, contract §9, or a Wasm VM failure): Envoy 1.40 has
no counter that moves when a VM traps under the shipped fail-closed policy
(measured: `wasm.*` stats stay put, see test_a_trapping_vm_is_detected), so
the checks are the 503s a trapped VM answers with (no row expects a 5xx),
Envoy's log, and the VM and reload stats staying as they were.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from echo_upstream import MARKER_HEADER
from harness import Gateway, GatewayError, parse_http1_response

TABLE = Path(__file__).with_name("adversarial.jsonl")
GROUPS = ("encodings", "sizes", "repetition", "paths", "methods", "forged-identity", "keys-elsewhere")
PROFILES = ("edge", "bare", "folded")
PROTOCOLS = ("h1", "h2")

KEYS = {
    "KEY": "sk_live_Adversary000000000000000",
    "OTHER": "sk_live_AdversaryOther0000000000",
    "ADMIN": "sk_live_AdversaryAdmin0000000000",
    "NOSCOPE": "sk_live_AdversaryNoScope00000000",
    "REVOKED": "sk_live_AdversaryRevoked00000000",
}
PLACEHOLDERS = {**KEYS, "KEY_BASIC": base64.b64encode(f"{KEYS['KEY']}:".encode()).decode()}


def sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


CONFIG = {
    "keys": [
        {"id": "key_reader", "sha256": sha(KEYS["KEY"]), "tenant": "acme", "plan": "pro", "env": "live",
         "scopes": ["reports:read"]},
        {"id": "key_other", "sha256": sha(KEYS["OTHER"]), "tenant": "globex", "scopes": ["reports:read"]},
        {"id": "key_admin", "sha256": sha(KEYS["ADMIN"]), "tenant": "acme", "scopes": ["admin", "reports:read"]},
        {"id": "key_noscope", "sha256": sha(KEYS["NOSCOPE"]), "tenant": "initech"},
        {"id": "key_revoked", "sha256": sha(KEYS["REVOKED"]), "tenant": "acme", "revoked": True},
    ],
    "plans": {"pro": {"scopes": ["reports:*", "admin"]}},
    "rules": [
        {"path_prefix": "/public", "public": True},
        {"path_prefix": "/api/v1/admin", "scope": "admin"},
        {"path_prefix": "/api/v1/reports", "methods": ["GET", "HEAD"], "scope": "reports:read"},
        {"path": "/api/v1/exact", "scope": "admin"},
        {"path_prefix": "/api/v1/get-only", "methods": ["GET"], "scope": "admin"},
    ],
    "key_prefixes": ["sk_live_"],
}


# --- the table -------------------------------------------------------------

@dataclass
class Row:
    group: str
    name: str
    method: str
    path: str
    headers: list[str]
    expect: str
    overrides: dict[str, str] = field(default_factory=dict)
    upstream: dict = field(default_factory=dict)
    body: str | None = None
    note: str = ""

    def expected(self, profile: str, protocol: str) -> str:
        for key in (f"{profile}_{protocol}", protocol, profile):
            if key in self.overrides:
                return self.overrides[key]
        return self.expect

    @property
    def id(self) -> str:
        return f"{self.group}/{self.name}"


def load_table(path: Path = TABLE) -> list[Row]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="ascii").splitlines(), 1):
        if not line.strip():
            continue
        data = json.loads(line)
        overrides = {key: data.pop(key) for key in list(data)
                     if key in PROTOCOLS or key in PROFILES or re.fullmatch(r"(edge|bare|folded)_h[12]", key)}
        try:
            rows.append(Row(**data, overrides=overrides))
        except TypeError as error:
            raise ValueError(f"{path.name}:{number}: {error}") from None
    return rows


ROWS = load_table()


def expand(text: str) -> bytes:
    """A table string as bytes: placeholders filled in, then every
    character as one latin-1 byte (so `\\u00ff` in the file is byte 0xFF)."""
    for name, value in PLACEHOLDERS.items():
        text = text.replace("{" + name + "}", value)
    text = re.sub(r"\{rep (\d+) ([^}]*)\}", lambda m: m.group(2) * int(m.group(1)), text)
    return text.encode("latin-1")


def header_lines(row: Row) -> list[bytes]:
    """The row's header entries, with {fill N} and {block N} expanded."""
    lines = []
    for entry in row.headers:
        if match := re.fullmatch(r"\{fill (\d+)\}", entry):
            lines += [f"x-fill-{i}: filler".encode() for i in range(int(match.group(1)))]
        elif match := re.fullmatch(r"\{block (\d+)\}", entry):
            remaining = int(match.group(1)) * 1024
            index = 0
            while remaining > 0:
                # name + ": " + value + CRLF, as HTTP/1.1 counts it
                value = min(4000, max(remaining - 16, 1))
                lines.append(f"x-block-{index:02d}: ".encode() + b"b" * value)
                remaining -= len(lines[-1]) + 2
                index += 1
        else:
            lines.append(expand(entry))
    return lines


# --- sending a row -----------------------------------------------------------

@dataclass
class Outcome:
    answer: str                      # in the table's `expect` grammar
    upstream: dict | None = None     # what the echo upstream received, on a 200 with a body
    raw: bytes = b""                 # everything the client received, for the key-leak check

    def __str__(self):
        return self.answer


def classify(status: int, headers: list[tuple[str, str]], body: bytes) -> Outcome:
    names = {name for name, _ in headers}
    raw = body + json.dumps(headers).encode()
    if MARKER_HEADER in names:
        echoed = json.loads(body) if body else None
        return Outcome(str(status), echoed, raw)
    content_type = next((v for n, v in headers if n == "content-type"), "")
    if content_type == "application/json" and body:
        code = json.loads(body)["error"]["code"]
        return Outcome(f"{status} {code}", None, raw)
    if content_type == "application/json":  # a HEAD denial: the filter's headers, no body
        return Outcome(str(status), None, raw)
    return Outcome(f"envoy {status}", None, raw)


def send_h1(gw: Gateway, row: Row) -> Outcome:
    body = expand(row.body) if row.body is not None else None
    lines = [expand(row.method) + b" " + expand(row.path) + b" HTTP/1.1", b"host: localhost", b"connection: close"]
    if body is not None:
        lines.append(b"content-length: " + str(len(body)).encode())
    lines += header_lines(row)
    data = gw.raw(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))
    if not data:
        return Outcome("closed")
    response = parse_http1_response(data)
    return classify(response.status, response.headers, response.body)


def h2_fields(row: Row) -> list[tuple[bytes, bytes]]:
    fields = []
    for line in header_lines(row):
        name, _, value = line.partition(b":")
        fields.append((name, value.strip(b" \t")))
    return fields


def send_h2(gw: Gateway, row: Row) -> Outcome:
    body = expand(row.body) if row.body is not None else None
    try:
        response = gw.request(expand(row.method), expand(row.path), h2_fields(row), body=body, http2=True)
    except GatewayError as error:
        if "reset the HTTP/2 stream" in str(error):
            return Outcome("reset")
        if "closed the HTTP/2 connection" in str(error):
            return Outcome("closed")
        raise
    return classify(response.status, response.headers, response.body)


def check_upstream(row: Row, outcome: Outcome) -> None:
    """What the upstream received: the row's checks, and never a credential."""
    seen = outcome.upstream
    if seen is None:
        assert row.method == "HEAD", f"{row.id}: a 200 without the upstream's echo"
        return
    headers = [(name.lower(), value) for name, value in seen["headers"]]
    if "path" in row.upstream:
        assert seen["path"] == row.upstream["path"], f"{row.id}: upstream path {seen['path']!r}"
    for name, value in row.upstream.get("headers", {}).items():
        values = [v for n, v in headers if n == name]
        assert values == [value], f"{row.id}: upstream {name} = {values}, expected [{value!r}]"
    for name in row.upstream.get("absent", []):
        assert name not in {n for n, _ in headers}, f"{row.id}: {name} reached the upstream"
    for name, value in headers:
        if name in ("cookie",):
            continue
        for key in KEYS.values():
            assert key not in value, f"{row.id}: a raw key reached the upstream in {name}"


# --- fixtures ----------------------------------------------------------------

@dataclass
class Target:
    gateway: Gateway
    baseline: dict[str, int]
    sent: int = 0  # requests of the table sent to it


VM_STATS = ("wasm.envoy.wasm.runtime.v8.active", "wasm.envoy.wasm.runtime.v8.created", "wasm.wasm_vm_count")


def vm_stats(gw: Gateway) -> dict[str, int]:
    stats = gw.stats("wasm.")
    return {name: value for name, value in stats.items()
            if name in VM_STATS or ".vm_reload" in name}


@pytest.fixture(scope="module")
def targets(module):
    folded_config = {**CONFIG, "case_insensitive_paths": True}
    with Gateway(module, config=CONFIG, concurrency=2) as edge, \
            Gateway(module, config=CONFIG, concurrency=2, edge=False) as bare, \
            Gateway(module, config=folded_config, concurrency=2, edge=False) as folded:
        yield {"edge": Target(edge, vm_stats(edge)), "bare": Target(bare, vm_stats(bare)),
               "folded": Target(folded, vm_stats(folded))}


# --- the tests ---------------------------------------------------------------

def test_the_table_covers_every_group(capsys):
    counts = collections.Counter(row.group for row in ROWS)
    width = max(map(len, GROUPS))
    with capsys.disabled():  # the must-show: printed even when pytest captures output
        print("\nadversarial table: rows per group")
        for group in GROUPS:
            print(f"  {group:<{width}}  {counts[group]:>3}")
        print(f"  {'total':<{width}}  {len(ROWS):>3}  (x {len(PROFILES)} gateways x {len(PROTOCOLS)} protocols)")
    assert set(counts) == set(GROUPS), f"unknown or missing groups: {set(counts) ^ set(GROUPS)}"
    assert len(ROWS) >= 60
    assert len({row.id for row in ROWS}) == len(ROWS), "two rows share a name"
    for row in ROWS:
        both = [key for key in row.overrides if key in PROTOCOLS]
        ambiguous = [(profile, protocol) for profile in PROFILES for protocol in both
                     if profile in row.overrides and f"{profile}_{protocol}" not in row.overrides]
        assert not ambiguous, f"{row.id}: both a profile and a protocol override without {ambiguous}"


CASES = [pytest.param(row, profile, protocol, id=f"{row.id}[{profile}-{protocol}]")
         for row in ROWS for profile in PROFILES for protocol in PROTOCOLS]


@pytest.mark.parametrize("row,profile,protocol", CASES)
def test_row(targets, row, profile, protocol):
    gw = targets[profile].gateway
    targets[profile].sent += 1
    outcome = send_h2(gw, row) if protocol == "h2" else send_h1(gw, row)
    expected = row.expected(profile, protocol)
    assert outcome.answer == expected, f"{row.id} [{profile} {protocol}]: got {outcome}, expected {expected}"
    if outcome.upstream is not None or outcome.answer == "200":
        check_upstream(row, outcome)
    else:
        for key in KEYS.values():
            assert key.encode() not in outcome.raw, f"{row.id}: a response echoed the key"


def every_worker_answers(gw: Gateway, concurrency: int) -> None:
    """New connections until each worker's listener has served one more,
    every one answered by the filter's allow decision."""
    def per_worker():
        stats = gw.stats("listener.")
        return {name: value for name, value in stats.items()
                if ".worker_" in name and name.endswith(".downstream_cx_total")}

    before = per_worker()
    assert len(before) == concurrency, before
    for attempt in range(200):
        response = gw.request("GET", "/alive", [("X-API-Key", KEYS["KEY"])], http2=attempt % 2 == 1)
        assert response.status == 200, f"connection {attempt}: {response.status} {response.body[:200]!r}"
        assert ["x-api-key-id", "key_reader"] in response.upstream["headers"]
        if attempt >= 20 and all(value > before[name] for name, value in per_worker().items()):
            return
    raise AssertionError(f"a worker served no new connection: {before} -> {per_worker()}")


def assert_no_vm_failure(gw: Gateway, baseline: dict[str, int]) -> None:
    """No request failed in the filter: a trapped VM fails its request, and
    every later one on that worker, with 503 (`wasm_fail_stream`), a native
    module's caught panic answers 503 not_configured, and nothing in the
    table may get a 5xx (the upstream never sends one, and the filter's
    503s need no configuration or a fleet); Envoy logs the trap or panic at
    once (the access log would say it too, but only after its 10 s flush).
    On the native edge there are no VM stats: the baseline is empty."""
    fives = gw.stats("http.ingress_http.downstream_rq_5xx")["http.ingress_http.downstream_rq_5xx"]
    assert fives == 0, f"{fives} requests answered 5xx: a VM failed"
    assert not gw.filter_failures(), f"the filter failed: {gw.filter_failures()}"
    now = vm_stats(gw)
    assert now == baseline, f"Wasm VM stats moved: {baseline} -> {now}"
    assert all(value == 0 for name, value in now.items() if ".vm_reload" in name), now


@pytest.mark.parametrize("profile", PROFILES)
def test_every_worker_still_answers_and_no_vm_failed(targets, profile):
    target = targets[profile]
    if target.sent < len(ROWS) * len(PROTOCOLS):  # run alone (-k): send the table first
        for row in ROWS:
            send_h1(target.gateway, row)
            send_h2(target.gateway, row)
    every_worker_answers(target.gateway, concurrency=2)
    assert_no_vm_failure(target.gateway, target.baseline)


# --- the detector detects ------------------------------------------------------

def trapping_module(path: Path) -> Path:
    """A minimal proxy-wasm module, assembled here byte by byte, whose
    request-headers callback executes `unreachable`: a VM that traps on
    every request, to prove the checks above see a trap."""
    def leb(value: int) -> bytes:
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    def vector(items: list[bytes]) -> bytes:
        return leb(len(items)) + b"".join(items)

    def section(number: int, payload: bytes) -> bytes:
        return bytes([number]) + leb(len(payload)) + payload

    def name(text: str) -> bytes:
        return leb(len(text)) + text.encode()

    i32 = 0x7F
    types = [b"\x60" + vector([]) + vector([]),                                   # () -> ()
             b"\x60" + vector([bytes([i32])]) + vector([bytes([i32])]),           # (i32) -> i32
             b"\x60" + vector([bytes([i32])] * 2) + vector([]),                   # (i32, i32) -> ()
             b"\x60" + vector([bytes([i32])] * 2) + vector([bytes([i32])]),       # (i32, i32) -> i32
             b"\x60" + vector([bytes([i32])] * 3) + vector([bytes([i32])])]       # (i32, i32, i32) -> i32
    functions = [  # (export name, type, body)
        ("proxy_abi_version_0_2_0", 0, b"\x0b"),
        ("proxy_on_memory_allocate", 1, b"\x41" + leb(1024) + b"\x0b"),          # i32.const 1024
        ("proxy_on_context_create", 2, b"\x0b"),
        ("proxy_on_vm_start", 3, b"\x41\x01\x0b"),                               # i32.const 1
        ("proxy_on_configure", 3, b"\x41\x01\x0b"),
        ("proxy_on_request_headers", 4, b"\x00\x0b"),                            # unreachable
    ]
    exports = [name("memory") + b"\x02\x00"]
    exports += [name(export) + b"\x00" + leb(index) for index, (export, _, _) in enumerate(functions)]
    bodies = [leb(len(b"\x00" + body)) + b"\x00" + body for _, _, body in functions]
    module = (b"\x00asm" + struct.pack("<I", 1)
              + section(1, vector(types))
              + section(3, vector([leb(type_index) for _, type_index, _ in functions]))
              + section(5, vector([b"\x00" + leb(2)]))                           # memory: 2 pages
              + section(7, vector(exports))
              + section(10, vector(bodies)))
    path.write_bytes(module)
    return path


@pytest.mark.wasm_only("assembles a trapping proxy-wasm module to prove the VM checks can fail")
def test_a_trapping_vm_is_detected(tmp_path):
    with Gateway(trapping_module(tmp_path / "trap.wasm"), config="", concurrency=2) as gw:
        baseline = vm_stats(gw)
        response = gw.request("GET", "/x")
        assert response.status == 503 and response.header(MARKER_HEADER) is None
        with pytest.raises(AssertionError, match="answered 5xx"):
            assert_no_vm_failure(gw, baseline)
        assert "failed: Uncaught RuntimeError: unreachable" in gw.log_text()
        assert vm_stats(gw) == baseline, "a trap moved a VM stat after all: use it"
        with pytest.raises(AssertionError):
            every_worker_answers(gw, concurrency=2)
