"""A saboteur between a gateway and the key service's feed: an HTTP proxy
that forwards Envoy's `apikey_control` requests to `apikey serve` and, when
switched to, damages the feed's answers on purpose (issue 21: "a feed
answer cut short or corrupted on purpose"). Python's standard library only.

    python3 feed_saboteur.py --upstream 8600

It binds a free port of 127.0.0.1 and prints `listening on 127.0.0.1:PORT`.
`PUT /__saboteur/mode` (the mode's name as the body) switches it;
`GET /__saboteur/counts` answers {"mode", "forwarded", "sabotaged":
{"snapshot": n, "changes": n}, "damaged_since_switch": n}, the last
counting only answers to requests that arrived after the last switch
(retries and new calls, not a long poll already waiting when the mode
changed). Those paths are never forwarded.

Only 200 answers of `/v1/feed/...` are touched, read whole, then:

- honest: forwarded as they came.
- truncate: the body cut in the middle of a line; Content-Length says the
  cut length, so HTTP-wise the answer is whole and only the feed is short.
- cut: the full Content-Length announced, half the body sent, then the
  connection closed (a transfer cut short).
- drop_trailer: the trailer line removed.
- alter_digest: one hex digit of the trailer's digest changed.
- flip_tenant: one bit flipped in each key line of tenant "acme", which
  then reads "acmf" (another tenant's key).
- escalate: `"leads:read"` replaced by `"admin:write"` in the key lines (a
  key given a scope it was not granted).
- revive: `"revoked":true` replaced by `"revoked":false` (a revoked key made
  to look live).

A key-line mode that finds nothing to change forwards the answer as it is
and does not count it as sabotaged. Each answer's mode is read when the
service's answer arrives, so a long poll in flight when the mode changes
is damaged too. Requests are logged by path (never their headers: the
feed token is one).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import selectors
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

MODES = ("honest", "truncate", "cut", "drop_trailer", "alter_digest", "flip_tenant", "escalate", "revive")
CONTROL = "/__saboteur/"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "content-length", "host"}
UPSTREAM_TIMEOUT_S = 120  # above the feed's longest long poll (60 s)


def _split_lines(body: bytes) -> list[bytes]:
    """The NDJSON lines, each with its newline."""
    return body.splitlines(keepends=True)


def _key_lines(lines: list[bytes], change: Callable[[bytes], bytes]) -> tuple[list[bytes], bool]:
    """Applies `change` to the key lines (not the header, settings or
    trailer); whether any changed."""
    out, changed = [], False
    for index, line in enumerate(lines):
        is_key = index > 0 and line.startswith(b'{"') and b'"sha256":' in line
        new = change(line) if is_key else line
        changed |= new != line
        out.append(new)
    return out, changed


def sabotage(mode: str, body: bytes) -> bytes | None:
    """The damaged body, or None when this mode leaves it as it is."""
    lines = _split_lines(body)
    if mode == "truncate":
        cut = len(body) // 2
        if cut > 0 and body[cut - 1:cut] == b"\n":
            cut -= 1  # mid-line, not at a line's end
        return body[:cut] if cut > 0 else None
    if mode == "drop_trailer":
        if lines and b'"end":true' in lines[-1]:
            return b"".join(lines[:-1])
        return None
    if mode == "alter_digest":
        if not lines:
            return None
        trailer = lines[-1]
        found = re.search(rb'"digest":"([0-9a-f])', trailer)
        if not found:
            return None
        digit = found.group(1)
        other = b"0" if digit != b"0" else b"1"
        return b"".join(lines[:-1]) + trailer[:found.start(1)] + other + trailer[found.end(1):]
    replacements = {
        "flip_tenant": (b'"tenant":"acme"', b'"tenant":"acmf"'),  # 'e' ^ 0x03 = 'f': one bit
        "escalate": (b'"leads:read"', b'"admin:write"'),
        "revive": (b'"revoked":true', b'"revoked":false'),
    }
    if mode in replacements:
        old, new = replacements[mode]
        changed_lines, changed = _key_lines(lines, lambda line: line.replace(old, new))
        return b"".join(changed_lines) if changed else None
    return None


class SaboteurHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        sys.stderr.write(f"{self.log_date_time_string()} {format % args}\n")

    def do_PUT(self):
        if self.path != CONTROL + "mode":
            self._reply(404, b"not a saboteur control path\n")
            return
        mode = self.rfile.read(int(self.headers.get("content-length", "0"))).decode().strip()
        if mode not in MODES:
            self._reply(400, f"unknown mode {mode!r}; one of {', '.join(MODES)}\n".encode())
            return
        with self.server.lock:
            self.server.mode = mode
            self.server.switched_at = time.monotonic()
            self.server.damaged_since_switch = 0
        sys.stderr.write(f"mode: {mode}\n")
        self._reply(200, b"ok\n")

    def do_GET(self):
        if self.path.startswith(CONTROL):
            with self.server.lock:
                counts = {"mode": self.server.mode, "forwarded": self.server.forwarded,
                          "sabotaged": dict(self.server.sabotaged),
                          "damaged_since_switch": self.server.damaged_since_switch}
            self._reply(200, json.dumps(counts).encode(), "application/json")
            return
        self._forward()

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self) -> None:
        arrived = time.monotonic()
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=UPSTREAM_TIMEOUT_S)
        headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
        try:
            upstream.request("GET", self.path, headers=headers)
            response = upstream.getresponse()
            body = response.read()
        except OSError as error:
            sys.stderr.write(f"upstream failed for {self.path.split('?')[0]}: {error}\n")
            self._reply(502, b"saboteur: the service did not answer\n")
            return
        finally:
            upstream.close()
        with self.server.lock:
            mode = self.server.mode
            self.server.forwarded += 1
        damaged = None
        kind = "snapshot" if self.path.startswith("/v1/feed/snapshot") else "changes"
        if response.status == 200 and self.path.startswith("/v1/feed/") and mode != "honest":
            damaged = body if mode == "cut" else sabotage(mode, body)
        if damaged is not None:
            with self.server.lock:
                self.server.sabotaged[kind] += 1
                if arrived > self.server.switched_at:
                    self.server.damaged_since_switch += 1
            sys.stderr.write(f"{mode}: {self.path.split('?')[0]} {len(body)} bytes damaged\n")
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        sent = body if damaged is None else damaged
        self.send_header("content-length", str(len(sent)))
        self.end_headers()
        if mode == "cut" and damaged is not None:
            # Content-Length announced the whole body: send half and close.
            self.wfile.write(sent[:len(sent) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(sent)


class SaboteurServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream_port: int):
        super().__init__(("127.0.0.1", 0), SaboteurHandler)
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.mode = "honest"
        self.forwarded = 0
        self.sabotaged = {"snapshot": 0, "changes": 0}
        self.switched_at = time.monotonic()
        self.damaged_since_switch = 0


class FeedSaboteur:
    """The saboteur as a child process, for the tests:

        with FeedSaboteur(service.port, log_path) as saboteur:
            ... cluster to saboteur.port ...
            saboteur.set_mode("revive")
    """

    def __init__(self, upstream_port: int, log_path: Path):
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, __file__, "--upstream", str(upstream_port)],
                                            stdout=subprocess.PIPE, stderr=log)
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            line = self.process.stdout.readline() if selector.select(10) else b""
        self.process.stdout.close()
        found = re.fullmatch(rb"listening on 127\.0\.0\.1:(\d+)\n", line)
        if not found:
            self.stop()
            raise AssertionError(f"the feed saboteur did not start ({line!r}), see {log_path}")
        self.port = int(found.group(1))

    def _control(self, method: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{CONTROL}{path}", data=body, method=method)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.read()

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        self._control("PUT", "mode", mode.encode())

    def counts(self) -> dict:
        return json.loads(self._control("GET", "counts"))

    def sabotaged(self) -> int:
        return sum(self.counts()["sabotaged"].values())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def __enter__(self) -> "FeedSaboteur":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", type=int, required=True, help="the key service's port on 127.0.0.1")
    args = parser.parse_args()
    server = SaboteurServer(args.upstream)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
