#!/usr/bin/env python3
"""The key service's targets (issue 20), measured on this machine by hand:

    .venv/bin/python bench/service_bench.py            # 1,000,000 keys
    .venv/bin/python bench/service_bench.py --keys 100000 --requests 500

1. Import: N §1 key objects (10,000 tenants) as one NDJSON body to
   `POST /v1/keys/import`, timed from the first byte sent to the answer
   (target at 1,000,000: 30 s or less).
2. With the N keys stored, one client on one keep-alive connection, one
   request at a time (no concurrency, so each figure is the service's own
   latency plus the loopback): `POST /v1/keys` (each create counts the
   tenant's active keys under the cap), `POST /v1/keys/{id}/revoke` (of
   imported keys, picked at random), and `GET /v1/keys` pages of 100
   (newest first, from random cursors over the whole table, half of them
   filtered by tenant). Targets: create and revoke p99 20 ms or less, a
   list page p99 50 ms or less.

It builds the release CLI, runs `apikey serve --quiet` on a scratch
database (synchronous = FULL: each create and revoke waits for its fsync),
and prints medians and p99s. Not part of the tests: timing is the
machine's, and the tests assert behaviour only.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BINARY = REPO / "target" / "release" / "apikey"
TENANTS = 10_000
SETTINGS = {"plans": {"pro": {"scopes": ["leads:*"], "rate_limits": {"*": {"requests": 600, "period_seconds": 60}}},
                      "free": {"scopes": ["leads:read"]}},
            "max_keys_per_tenant": 1000}


def key_line(index: int) -> str:
    digest = hashlib.sha256(f"bench-key-{index}".encode()).hexdigest()
    return json.dumps({"id": f"key_b{index:08d}", "sha256": digest, "tenant": f"t{index % TENANTS}",
                       "scopes": ["leads:read", "leads:write"], "plan": "pro" if index % 2 else "free",
                       "env": "live", "name": f"bench key {index}", "hint": f"sk_live_{digest[:3]}…{digest[-4:]}",
                       "created_at": "2026-01-01T00:00:00Z"}, ensure_ascii=False)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


class Client:
    def __init__(self, port: int, token: str):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: bytes | None = None, expect: int = 200) -> tuple[float, dict]:
        started = time.perf_counter()
        self.connection.request(method, path, body=body, headers=self.headers)
        response = self.connection.getresponse()
        data = response.read()
        took = time.perf_counter() - started
        if response.status != expect:
            raise SystemExit(f"{method} {path}: {response.status} {data[:300]!r}")
        return took, json.loads(data)


def summary(name: str, seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    result = {"requests": len(ms), "median_ms": round(statistics.median(ms), 2),
              "p99_ms": round(percentile(ms, 0.99), 2), "max_ms": round(max(ms), 2)}
    print(f"  {name:<22} n={result['requests']:<6} median {result['median_ms']:>7.2f} ms   "
          f"p99 {result['p99_ms']:>7.2f} ms   max {result['max_ms']:>7.2f} ms", flush=True)
    return result


def start_service(scratch: Path, admin: str, feed: str) -> tuple[subprocess.Popen, int]:
    """The release `apikey serve --quiet` on a fresh database in `scratch`
    (tokens in files there, its log in serve.log), listening on a free port
    of 127.0.0.1: the process and the port. bench/key_source_bench.py runs
    its services this way too."""
    (scratch / "admin.token").write_text(admin)
    (scratch / "feed.token").write_text(feed)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIKEY_")}
    with open(scratch / "serve.log", "w") as log:
        server = subprocess.Popen([str(BINARY), "--db", str(scratch / "keys.db"), "serve", "--listen",
                                   "127.0.0.1:0", "--admin-token-file", str(scratch / "admin.token"),
                                   "--feed-token-file", str(scratch / "feed.token"), "--max-import-bytes",
                                   str(4 << 30), "--quiet"], stderr=log, env=env)
    for _ in range(500):
        found = re.search(r"listening on http://[0-9.]+:([0-9]+)", (scratch / "serve.log").read_text())
        if found:
            return server, int(found.group(1))
        if server.poll() is not None:
            break
        time.sleep(0.02)
    server.kill()
    server.wait()
    raise SystemExit("apikey serve did not start: " + (scratch / "serve.log").read_text())


def import_ndjson(port: int, admin: str, body_path: Path) -> tuple[float, dict]:
    """`POST /v1/keys/import` of the NDJSON file `body_path` as one request,
    timed from the first byte sent to the answer: the seconds and the
    answer (`{"imported": N}`)."""
    size = body_path.stat().st_size
    importer = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    started = time.perf_counter()
    with open(body_path, "rb") as body:
        importer.request("POST", "/v1/keys/import", body=body,
                         headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/x-ndjson",
                                  "Content-Length": str(size)})
        response = importer.getresponse()
        answer = response.read()
    imported_in = time.perf_counter() - started
    importer.close()
    if response.status != 200:
        raise SystemExit(f"import: {response.status} {answer[:300]!r}")
    return imported_in, json.loads(answer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys imported first (default 1,000,000)")
    parser.add_argument("--requests", type=int, default=2000, help="creates, revokes and list pages each")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (its path is printed)")
    args = parser.parse_args()

    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "apikey-cli"], cwd=REPO, check=True)
    scratch = Path(tempfile.mkdtemp(prefix="apikey-service-bench-"))
    admin, feed = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    server, port = start_service(scratch, admin, feed)
    try:
        client = Client(port, admin)
        client.call("PUT", "/v1/settings", json.dumps(SETTINGS).encode())

        print(f"machine: {os.cpu_count()} cores; {args.keys:,} keys over {TENANTS:,} tenants", flush=True)
        body_path = scratch / "keys.ndjson"
        with open(body_path, "w") as out:
            for index in range(args.keys):
                out.write(key_line(index) + "\n")
        size = body_path.stat().st_size
        imported_in, answer = import_ndjson(port, admin, body_path)
        print(f"  import                 {args.keys:,} keys ({size / 1e6:.0f} MB) in {imported_in:.1f} s "
              f"({args.keys / imported_in:,.0f} keys/s): {json.dumps(answer)}", flush=True)
        body_path.unlink()

        rng = random.Random(20)
        creates = [client.call("POST", "/v1/keys", json.dumps(
            {"tenant": f"t{rng.randrange(TENANTS)}", "scopes": ["leads:read"], "plan": "pro",
             "name": "bench create"}).encode(), expect=201)[0] for _ in range(args.requests)]
        victims = rng.sample(range(args.keys), args.requests)
        revokes = [client.call("POST", f"/v1/keys/key_b{index:08d}/revoke", b"")[0] for index in victims]
        pages = []
        for turn in range(args.requests):
            query = "limit=100"
            if turn % 2:
                query += f"&tenant=t{rng.randrange(TENANTS)}"
            # A cursor is a position in the table: start anywhere in it.
            query += f"&cursor=c{rng.randrange(2, args.keys + args.requests)}"
            took, page = client.call("GET", f"/v1/keys?{query}")
            pages.append(took)
        results = {"keys": args.keys, "import_seconds": round(imported_in, 2),
                   "create": summary("create (POST)", creates),
                   "revoke": summary("revoke (POST)", revokes),
                   "list page of 100 (GET)": summary("list page of 100 (GET)", pages)}
        print(json.dumps(results))
        db = scratch / "keys.db"
        print(f"  database {db.stat().st_size / 1e6:.0f} MB", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
