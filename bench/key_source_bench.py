#!/usr/bin/env python3
"""Issue 21's targets for gateways that follow the key service
(`key_source`, contract §8.3), measured on this machine:

    scripts/bench.sh --key-source                      # 100,000 and 1,000,000 keys (~40 min)
    scripts/bench.sh --key-source --quick              # 100,000 keys only, shorter runs (~4 min)
    .venv/bin/python bench/key_source_bench.py --render-only   # the section again from the last results

It writes the `<!-- key-source:begin -->` … `<!-- key-source:end -->`
section of docs/performance.md (bench/bench.py keeps it when it
regenerates the rest) and its per-run figures to
docs/performance-key-source.json.

Method (the numbers are only worth their method):
- The release `apikey serve` (bench/service_bench.py's start and import)
  holds N keys imported as one NDJSON request (10,000 tenants, every key
  on a plan with a rate limit: 600 or 6,000 per minute), the bench key on a
  plan that never denies, and one imported key revoked. A second service
  holds 10 keys, for the look-up comparison. The gateways are
  envoy/envoy.yaml as bench/bench.py renders it (direct_response after the
  filter, no access log) plus an `apikey_control` cluster to the service;
  their configuration, by ECDS, holds only `key_source`.
- Every worker, not just one: Envoy's listener has one socket per worker
  (SO_REUSEPORT), and the kernel picks the socket from a hash of the
  connection's addresses, so a connection from a given source port always
  reaches the same worker. The bench learns, per gateway, a few source
  ports for every worker (one connection each, read back from Envoy's
  per-worker `listener.….worker_N.downstream_cx_total`), then probes with
  fresh connections from those ports (closed with a reset, so no
  TIME_WAIT keeps the port): every answer is attributed to its worker.
  The mapping is checked again after each start-up run.
- Probing runs one thread per worker, so a worker that holds its
  connections (the one writing the table into shared data) delays only
  its own probes.
- Start: a new Envoy at `--concurrency 4` is spawned while the service
  holds the table, on each edge of --edges (default both, run by run in
  turn): the Wasm filter, and the native edge (contract §9: the same
  wiring with the dynamic-module filter, libapikey_dynamic.so found
  through ENVOY_DYNAMIC_MODULES_SEARCH_PATH; its start judged against
  issue 23's 2 s and 400 MB, the Wasm filter's against issue 21's); from the spawn, each worker is probed (its learned
  ports in turn, 5 ms apart, a key of a random sample of imported keys)
  until it answers 200. A worker enforces from its first 200 (the head of
  the shared table switches whole, so a worker that served one key of it
  serves all); *every worker* is the last of them. Then every sampled
  key must answer 200 on every worker, the revoked key 401 `key_revoked`
  and an absent key 401 `invalid_key`. RSS is VmRSS (and VmHWM) from
  /proc once it settled (bench.py's settled_memory_kb). The filter's own
  log lines (timestamps, thread ids) say where the time went: the VM that
  took the lease, the table written, each VM serving it.
- Revocation (the Wasm filter): two such gateways follow the service. Before each
  revocation the victim answers 200 on every worker of both; the
  revocation is `POST /v1/keys/{id}/revoke`, and the clock starts at the
  API's answer. Then every worker of both gateways is probed (two ports
  per worker, 10 ms apart) until each answered 401 `key_revoked` five
  times in a row; a worker's time is its first denial of that run (a 200,
  or a 429 — the key still authenticates, its plan's limit spent by the
  probes — restarts the run). The revocation's time is the slowest
  worker's. Any other answer (503, `invalid_key`) is counted.
- Look-up throughput: bench/bench.py's method (Envoy `--concurrency 1`
  on core 1, wrk one thread on core 0, 128 connections, interleaved
  rounds, medians of per-round ratios, judged on measured req/s when
  Envoy was saturated in both set-ups and on capacity = 1 / CPU per
  request otherwise) for gateways following the N-key and the 10-key
  services: one key (the per-worker cache answers it, as in bench.py) and
  keys spread over 50,000 (N) or all 10 (10-key) keys, so that at N every
  request misses the per-worker cache (16,384 entries) and reads its
  shard from shared data.
- A start with no table on every worker after --start-timeout (90 s) is
  recorded as not enforced, with the memory and the filter's log counts
  then (lease handovers, failed fetches); the revocation and look-up
  gateways get --load-timeout (600 s), one after the other, since how they
  loaded is not what they measure. Two diagnostics say where a start's time
  goes: the same keys on plans without limits (no rate-limit bucket
  entries to write), and the feed's whole snapshot read by a plain client
  (the service's own share).
- ECDS beside it, at 100,000 keys: the same table (settings and keys as
  one §1 configuration) in the ECDS file an Envoy starts with; revocation
  by renaming in a new table with the key revoked, in both gateways'
  directories at once (the clock starts at the first rename).
- The machine has 2 cores shared with other work: the report gives
  medians, per-run figures and the CPU others used meanwhile. Nothing here
  is a test: the tests assert behaviour only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import http.client
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (bench.py's Envoy, ECDS, wrk and report machinery)
import service_bench  # noqa: E402  (the service's start and import)

REPO = bench.REPO
WORK = bench.WORK / "key-source"
DOC = bench.DOC
JSON_OUT = REPO / "docs" / "performance-key-source.json"
SECTION = "key-source"

TARGET_START_S = 3.0
TARGET_RSS_MB = 600
# Issue 23's start target for the native edge (contract §9): 1,000,000 keys
# enforced ≤ 2 s from Envoy's start with RSS ≤ 400 MB at 4 workers.
TARGET_NATIVE_START_S = 2.0
TARGET_NATIVE_RSS_MB = 400
TARGET_REVOKE_S = 1.0
TARGET_LOOKUP = 0.95

TENANTS = 10_000
PATH = bench.PATH
BENCH_KEY = bench.BENCH_KEY
ABSENT_KEY = bench.INVALID_KEY
SPREAD_KEYS = 50_000
SAMPLE_KEYS = 64
# Source ports the probes bind: below Linux's ephemeral range (32768–60999),
# so no connect() elsewhere on the machine is handed one of them.
SOURCE_PORTS = (20_000, 32_000)
# Between two probes of one worker (each worker has its own prober).
START_PACE_S = 0.005
REVOKE_PACE_S = 0.01
CONFIRM_DENIALS = 5
GATEWAY_CONCURRENCY = 4
# crates/apikey-core/src/key_cache.rs CAPACITY: a worker's cache of records
# read, emptied when full; cycling over more keys than this misses on every request.
CACHE_ENTRIES = 16_384

SETTINGS = {
    "plans": {
        "pro": {"scopes": ["leads:*"], "rate_limits": {"*": {"requests": 600, "period_seconds": 60}}},
        "team": {"scopes": ["leads:*"], "rate_limits": {"*": {"requests": 6000, "period_seconds": 60}}},
        "bench": {"scopes": ["leads:*"], "rate_limits": {"*": bench.NEVER_DENY}},
    },
    "rules": [
        {"path_prefix": "/healthz", "public": True},
        {"path_prefix": "/api/v1/leads", "methods": ["GET", "HEAD"], "scope": "leads:read"},
        {"path_prefix": "/api/v1/leads", "methods": ["POST", "PUT", "PATCH"], "scope": "leads:write"},
    ],
    "schemes": ["bearer", "apikey", "x-api-key"],
    "key_prefixes": ["sk_live_"],
}


# The start's diagnostic: the same plans without rate limits.
UNLIMITED_SETTINGS = {**SETTINGS,
                      "plans": {name: {"scopes": plan["scopes"]} for name, plan in SETTINGS["plans"].items()}}

BenchError = bench.BenchError

# The edges whose start is measured (--edges): the name bench.py's
# render_bootstrap gives each, and how the report calls it.
EDGE_KINDS = {"wasm": "wasm", "native": "dynamic"}
EDGE_NAMES = {"wasm": "Wasm filter", "native": "native edge"}


def sha256_hex(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def label(size: int) -> str:
    return bench.table_label(size)


# --- the keys ----------------------------------------------------------------

def raw_key(index: int) -> str:
    return f"sk_live_ks{index:024d}"


def key_object(index: int) -> dict:
    """Imported key `index`: a tenant's key on a plan with a rate limit."""
    raw = raw_key(index)
    return {"id": f"ks_{index:08d}", "sha256": sha256_hex(raw), "tenant": f"t{index % TENANTS}",
            "scopes": ["leads:read", "leads:write"], "plan": "pro" if index % 2 else "team", "env": "live"}


def bench_key_object() -> dict:
    return {"id": "ks_bench", "sha256": sha256_hex(BENCH_KEY), "tenant": "bench", "scopes": ["leads:read"],
            "plan": "bench", "env": "live"}


def ten_raw_key(index: int) -> str:
    return f"sk_live_ks_ten_{index:019d}"


def ten_key_objects() -> list[dict]:
    """The 10-key service's table: the bench key and nine more, all on the
    plan that never denies (wrk spreads ~20,000 req/s over them)."""
    return [bench_key_object()] + [
        {"id": f"ks_ten_{i}", "sha256": sha256_hex(ten_raw_key(i)), "tenant": "bench", "scopes": ["leads:read"],
         "plan": "bench", "env": "live"} for i in range(9)]


def ndjson_line(record: dict) -> str:
    """A §1 key object as service_bench.py imports them (name, hint and
    creation time as a migration carries them)."""
    digest = record["sha256"]
    return json.dumps({**record, "name": f"bench {record['id']}", "hint": f"sk_live_{digest[:3]}…{digest[-4:]}",
                       "created_at": "2026-01-01T00:00:00Z"}, ensure_ascii=False)


@dataclass
class Table:
    """What a service holds for one size: imported keys 0 … size-2 and the
    bench key; which are sampled, spread over, revoked."""
    size: int
    revoked: int  # the known-revoked imported key
    sample: list[int]
    victims: list[int]
    spread: int  # keys 0 … spread-1 carry the spread look-ups

    @classmethod
    def plan(cls, size: int, revocations: int, rng: random.Random) -> "Table":
        imported = size - 1
        spread = min(SPREAD_KEYS, imported // 2)
        picks = rng.sample(range(spread, imported - 1), SAMPLE_KEYS + revocations)
        return cls(size, imported - 1, picks[:SAMPLE_KEYS], picks[SAMPLE_KEYS:], spread)

    def records(self):
        yield bench_key_object()
        for index in range(self.size - 1):
            yield key_object(index)


# --- the service -------------------------------------------------------------

class Service:
    """One `apikey serve` on its own database, holding one table."""

    def __init__(self, name: str, settings: dict | None = None):
        self.scratch = WORK / name
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        self.admin, self.feed = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.process, self.port = service_bench.start_service(self.scratch, self.admin, self.feed)
        SERVICES.append(self)
        self.call("PUT", "/v1/settings", settings or SETTINGS)

    def call(self, method: str, path: str, body=None, expect: int = 200) -> dict:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            data = json.dumps(body).encode() if body is not None else b""
            connection.request(method, path, body=data, headers={"Authorization": f"Bearer {self.admin}",
                                                                 "Content-Type": "application/json"})
            response = connection.getresponse()
            text = response.read()
        finally:
            connection.close()
        if response.status != expect:
            raise BenchError(f"{method} {path}: {response.status} {text[:300]!r}")
        return json.loads(text) if text else {}

    def import_records(self, records) -> dict:
        """Imports `records` as one NDJSON request; the seconds and bytes."""
        body = self.scratch / "keys.ndjson"
        count = 0
        with open(body, "w", encoding="utf-8") as out:
            for record in records:
                out.write(ndjson_line(record) + "\n")
                count += 1
        size = body.stat().st_size
        seconds, answer = service_bench.import_ndjson(self.port, self.admin, body)
        body.unlink()
        if answer.get("imported") != count:
            raise BenchError(f"import answered {answer}, sent {count} keys")
        return {"keys": count, "seconds": round(seconds, 2), "bytes": size}

    def snapshot_read_seconds(self, page: int = 10_000) -> float:
        """How long a plain client takes to read the feed's whole snapshot in
        pages of `page` keys (the filter's page size), bodies read and
        dropped: the service's share of a gateway's first fetch."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        started = time.monotonic()
        cursor = None
        try:
            while True:
                path = f"/v1/feed/snapshot?limit={page}" + (f"&cursor={cursor}" if cursor else "")
                connection.request("GET", path, headers={"Authorization": f"Bearer {self.feed}"})
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    raise BenchError(f"GET {path}: {response.status} {body[:200]!r}")
                cursor = json.loads(body.split(b"\n", 1)[0]).get("next_cursor")
                if not cursor:
                    return time.monotonic() - started
        finally:
            connection.close()

    def revoke(self, key_id: str) -> float:
        """Revokes through the API; the monotonic time of its answer."""
        self.call("POST", f"/v1/keys/{key_id}/revoke")
        return time.monotonic()

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self in SERVICES:
            SERVICES.remove(self)

    def key_source(self) -> str:
        return json.dumps({"key_source": {"cluster": "apikey_control", "token": self.feed,
                                          "authority": "apikey-control"}})


SERVICES: list[Service] = []


# --- gateways ----------------------------------------------------------------

@dataclass
class Gateway(bench.Envoy):
    """bench.Envoy with a listener port known before it starts (so probes
    run from the spawn), the filter's info log lines (its key_source
    timeline) and the spawn's time."""
    listener_port: int = 0
    spawned: float = field(init=False, default=0.0)
    spawned_wall: float = field(init=False, default=0.0)
    loaded: dict = field(init=False, default_factory=dict)

    def spawn(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        (self.workdir / "ecds").mkdir(parents=True)
        if self.initial is not None:
            self._write(self.initial)
        path = self.workdir / "bootstrap.json"
        path.write_text(json.dumps(self.bootstrap, indent=1), encoding="utf-8")
        self.address_file = self.workdir / "admin-address"
        command = ["taskset", "-c", self.cores, str(bench.ENVOY), "-c", str(path),
                   "--concurrency", str(self.concurrency), "-l", "warning",
                   # The filter's info lines: the Wasm VM's, or the native edge's (Envoy's dynamic_modules).
                   "--component-log-level", "wasm:info,dynamic_modules:info",
                   "--admin-address-path", str(self.address_file), "--disable-hot-restart"]
        with open(self.workdir / "envoy.log", "wb") as log:
            self.spawned_wall = time.time()
            self.spawned = time.monotonic()
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                            env={**os.environ, **(self.env or {})})
        bench.LIVE.append(self)

    def await_admin(self, timeout: float = 120) -> None:
        self.wait("the admin address", lambda: self.address_file.read_text().strip(), timeout)
        self.admin = self.address_file.read_text().strip()
        self.wait("/ready", lambda: self.admin_get("/ready") == "LIVE\n", timeout)
        listeners = json.loads(self.admin_get("/listeners?format=json"))["listener_statuses"]
        self.port = bench._named(listeners, "ingress")["local_address"]["socket_address"]["port_value"]
        if self.listener_port and self.port != self.listener_port:
            raise BenchError(f"{self.name}: listening on {self.port}, not {self.listener_port}")
        self.listener_port = self.port

    def start(self, timeout: float = 120) -> "Gateway":
        self.spawn()
        self.await_admin(timeout)
        return self

    def worker_connections(self) -> dict[int, int]:
        """Connections each worker accepted so far (per-worker listener stats)."""
        prefix = f"listener.127.0.0.1_{self.listener_port}.worker_"
        pattern = "^" + re.escape(prefix) + r"[0-9]+\.downstream_cx_total$"
        stats = json.loads(self.admin_get("/stats?format=json&filter=" + urllib.parse.quote(pattern, safe="")))["stats"]
        return {int(s["name"][len(prefix):].split(".")[0]): s["value"] for s in stats}

    def log_text(self) -> str:
        return (self.workdir / "envoy.log").read_text(errors="replace")


def gateway(name: str, config: str, concurrency: int = GATEWAY_CONCURRENCY, cores: str = "0,1",
            listener_port: int = 0, control_port: int | None = None, edge: str = "wasm") -> Gateway:
    """A gateway (not started) on `edge` (the Wasm filter, or the native
    edge: the same ECDS wiring, the dynamic module found through
    bench.dynamic_env()) whose ECDS file holds `config` from the start.
    Its listener port is chosen here (a free one unless given): Envoy names
    the listener's stats by the configured port, and the probes need both."""
    listener_port = listener_port or free_port()
    workdir = bench.WORK / f"{name}-c{concurrency}"
    kind = EDGE_KINDS[edge]
    bootstrap = bench.render_bootstrap(kind, workdir, bench.FILTER_WASM if kind == "wasm" else None)
    listener = bench._named(bootstrap["static_resources"]["listeners"], "ingress")
    listener["address"]["socket_address"]["port_value"] = listener_port
    if control_port is not None:
        bootstrap["static_resources"]["clusters"].append({
            "name": "apikey_control", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "apikey_control", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": control_port}}}}]}]},
        })
    return Gateway(name, bootstrap, concurrency, cores, initial=bench.ecds_document(bootstrap, config),
                   env=bench.dynamic_env() if kind == "dynamic" else None, listener_port=listener_port)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- probes: fresh connections that reach a known worker ---------------------

REQUEST = "GET {path} HTTP/1.1\r\nhost: localhost\r\nx-api-key: {key}\r\n\r\n"


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while True:
        head, separator, body = data.partition(b"\r\n\r\n")
        if separator:
            length = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
            if length and len(body) >= int(length.group(1)):
                return data
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def ask(source_port: int, listener_port: int, key: str, timeout: float = 10.0) -> tuple[int, str | None, float]:
    """One request on a new connection from `source_port`: the status (0
    when nothing answered: not listening yet, reset), the error code of a
    denial, and the monotonic time the answer was read. The connection is
    closed with a reset, so the port is free again at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.settimeout(timeout)
    try:
        sock.bind(("127.0.0.1", source_port))
        sock.connect(("127.0.0.1", listener_port))
        sock.sendall(REQUEST.format(path=PATH, key=key).encode())
        data = _read_response(sock)
    except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, socket.timeout):
        return 0, None, time.monotonic()
    finally:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        sock.close()
    answered = time.monotonic()
    if not data.startswith(b"HTTP/1.1 "):
        return 0, None, answered
    status = int(data.split(b" ", 2)[1])
    code = None
    if status != 200:
        try:
            code = json.loads(data.partition(b"\r\n\r\n")[2])["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
    return status, code, answered


def learn_ports(envoy: Gateway, per_worker: int, rng: random.Random, taken: set[int]) -> dict[int, list[int]]:
    """Source ports whose connections reach each worker of `envoy`:
    `per_worker` for each, found one connection at a time from the
    per-worker accept counters."""
    pool: dict[int, list[int]] = {w: [] for w in range(envoy.concurrency)}
    for _ in range(3000):
        if all(len(ports) >= per_worker for ports in pool.values()):
            return pool
        port = rng.randrange(*SOURCE_PORTS)
        if port in taken:
            continue
        taken.add(port)
        before = envoy.worker_connections()
        status, _, _ = ask(port, envoy.listener_port, ABSENT_KEY)
        after = envoy.worker_connections()
        moved = [w for w in after if after[w] != before.get(w, 0)]
        if status == 0 or len(moved) != 1:
            continue
        if len(pool[moved[0]]) < per_worker:
            pool[moved[0]].append(port)
    raise BenchError(f"{envoy.name}: no source ports found for every worker: {pool}")


def port_workers(envoy: Gateway, ports: list[int]) -> dict[int, int]:
    """Which worker each port's connections reach now (one connection each)."""
    found = {}
    for port in ports:
        before = envoy.worker_connections()
        ask(port, envoy.listener_port, ABSENT_KEY)
        after = envoy.worker_connections()
        moved = [w for w in after if after[w] != before.get(w, 0)]
        if len(moved) == 1:
            found[port] = moved[0]
    return found


# --- 1. start: spawn → every worker enforcing ----------------------------------

LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\]\[(\d+)\]\[\w+\]\[\w+\] .*?(key_source: .*)$")


def key_source_timeline(envoy: Gateway) -> dict:
    """The filter's log lines, in seconds after the spawn: the first VM to
    confirm the lease (and whether it runs on the main thread), the lease
    of the VM that wrote the table, the table written, each VM's first
    serving of it; and how often the lease changed hands, a fetch failed
    or a write was refused."""
    out: dict = {"serving_s": [], "pid": envoy.pid, "leases": 0, "handovers": 0, "feed_failures": 0,
                 "write_failures": 0}
    for line in envoy.log_text().splitlines():
        match = LOG_LINE.match(line)
        if not match:
            continue
        stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        at = round(stamp - envoy.spawned_wall, 3)
        thread, text = int(match.group(2)), match.group(3)
        if text.startswith("key_source: following the key service through") and "configured_s" not in out:
            out["configured_s"] = at
        elif "follows the key service for the process" in text:
            out["leases"] += 1
            out.setdefault("lease_s", at)
            out.setdefault("fetcher", "main thread" if thread == envoy.pid else "a worker")
            if "written_s" not in out:
                out["writer_lease_s"] = at
        elif "another VM follows the key service now" in text:
            out["handovers"] += 1
        elif text.startswith("key_source: feed from cluster") and " failed: " in text:
            out["feed_failures"] += 1
        elif "cannot be written" in text:
            out["write_failures"] += 1
        elif " written: " in text and "written_s" not in out:
            out["written_s"] = at
            out["written"] = text.split(" written: ", 1)[1]
        elif text.startswith("key_source: serving the table"):
            out["serving_s"].append(at)
    return out


def each_worker(probe, workers: list, stop: threading.Event) -> list:
    """`probe(worker)` for every worker at once, one thread each, so that a
    worker that holds its connections (busy writing a table) delays only
    its own probes; the results in the order of `workers`. An interruption
    sets `stop`, which every probe loop watches."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(workers)) as pool:
        try:
            return list(pool.map(probe, workers))
        except BaseException:
            stop.set()
            raise


def await_every_worker(envoy: Gateway, pool: dict[int, list[int]], keys: list[str], timeout: float) -> dict:
    """Probes each worker (its ports in turn, START_PACE_S apart) from the
    spawn until it answers 200: per worker, that answer and the last one
    before it, in seconds after the spawn; `failed` for the workers that did
    not within `timeout` (or when Envoy exited)."""
    failed = threading.Event()

    def probe(worker: int) -> dict:
        ports = pool[worker]
        last_not, probes = None, 0
        while not failed.is_set():
            status, _, answered = ask(ports[probes % len(ports)], envoy.listener_port, keys[probes % len(keys)])
            probes += 1
            if status == 200:
                return {"worker": worker, "port": ports[(probes - 1) % len(ports)],
                        "enforced_s": answered - envoy.spawned, "not_yet_s": last_not, "probes": probes}
            last_not = answered - envoy.spawned
            if envoy.process.poll() is not None or time.monotonic() - envoy.spawned > timeout:
                failed.set()
            time.sleep(START_PACE_S)
        return {"worker": worker, "failed": True, "probes": probes}

    seen = each_worker(probe, sorted(pool), failed)
    return {entry["worker"]: entry for entry in seen}


def check_answers(envoy: Gateway, pool: dict[int, list[int]], expected: list[tuple[str, int, str | None]]) -> dict:
    """Each (key, status, code) on every worker, on fresh connections: the
    answers that differed."""
    wrong = []
    for worker, ports in sorted(pool.items()):
        for i, (key, status, code) in enumerate(expected):
            got = ask(ports[i % len(ports)], envoy.listener_port, key)
            if got[:2] != (status, code):
                wrong.append({"worker": worker, "key_hint": key[:11] + "…" + key[-4:], "expected": [status, code],
                              "got": list(got[:2])})
    return {"checked": len(expected) * len(pool), "wrong": wrong}


def start_run(name: str, config: str, control_port: int | None, listener_port: int, pool: dict[int, list[int]],
              table: Table, raw, timeout: float, edge: str = "wasm") -> dict:
    """One start-up on `edge`: spawn → every worker enforcing, the answers
    checked, memory once settled, the filter's timeline."""
    envoy = gateway(name, config, listener_port=listener_port, control_port=control_port, edge=edge)
    envoy.spawn()
    try:
        workers = await_every_worker(envoy, pool, [raw(i) for i in table.sample], timeout)
        if envoy.process.poll() is not None:
            raise BenchError(f"{name}: Envoy exited\n{envoy.log_tail()}")
        if any(w.get("failed") for w in workers.values()):
            # Kept for the report: what the filter logged, what Envoy held.
            shutil.copyfile(envoy.workdir / "envoy.log", WORK / f"{name}-not-enforced.log")
            memory = envoy.memory_kb()
            return {"failed": f"not every worker enforced within {timeout:.0f} s",
                    "workers_s": [None if w.get("failed") else round(w["enforced_s"], 3)
                                  for _, w in sorted(workers.items())],
                    "rss_kb": memory["VmRSS"], "hwm_kb": memory["VmHWM"],
                    "probes": sum(w["probes"] for w in workers.values()), "timeline": key_source_timeline(envoy)}
        envoy.await_admin()
        # The premise: each port still reaches the worker it was learned on.
        actual = port_workers(envoy, [p for ports in pool.values() for p in ports])
        moved = {p: w for p, w in actual.items() if p not in pool.get(w, [])}
        if moved or len(actual) != sum(len(ports) for ports in pool.values()):
            raise BenchError(f"{name}: source ports reach other workers than they did: {moved}")
        expected = [(raw(i), 200, None) for i in table.sample]
        expected += [(raw(table.revoked), 401, "key_revoked"), (ABSENT_KEY, 401, "invalid_key")]
        answers = check_answers(envoy, pool, expected)
        memory = envoy.settled_memory_kb()
        timeline = key_source_timeline(envoy)
    finally:
        envoy.stop()
    every = max(w["enforced_s"] for w in workers.values())
    return {"every_worker_s": round(every, 3),
            "workers_s": [round(workers[w]["enforced_s"], 3) for w in sorted(workers)],
            "resolution_s": round(max(w["enforced_s"] - (w["not_yet_s"] or 0) for w in workers.values()), 3),
            "rss_kb": memory["VmRSS"], "hwm_kb": memory["VmHWM"], "answers": answers,
            "probes": sum(w["probes"] for w in workers.values()), "timeline": timeline}


# --- 2. revocation: API answer → every worker of two gateways denies -----------

def await_denials(gateways: list[Gateway], pools: list[dict[int, list[int]]], key: str, t0: float,
                  timeout: float) -> dict:
    """Probes every worker of every gateway at once (a thread each, its two
    ports in turn, REVOKE_PACE_S apart) until each answered 401
    `key_revoked` CONFIRM_DENIALS times in a row: per worker, the first
    denial of that run, in seconds after t0. A 200 or a 429 (the key still
    authenticates) restarts the run."""
    failed = threading.Event()

    def probe(target: tuple[int, int]) -> dict:
        g, w = target
        ports, listener = pools[g][w][:2], gateways[g].listener_port
        first_deny, last_allow, run, relapses, probes = None, None, 0, 0, 0
        others: dict[str, int] = {}
        while run < CONFIRM_DENIALS and not failed.is_set():
            status, code, answered = ask(ports[probes % len(ports)], listener, key)
            probes += 1
            if status == 401 and code == "key_revoked":
                first_deny = answered - t0 if first_deny is None else first_deny
                run += 1
            elif status in (200, 429):
                if first_deny is not None:
                    relapses += 1
                first_deny, run, last_allow = None, 0, answered - t0
            else:
                name = f"{status} {code}" if code else str(status)
                others[name] = others.get(name, 0) + 1
            if time.monotonic() - t0 > timeout:
                failed.set()
            if run < CONFIRM_DENIALS:
                time.sleep(REVOKE_PACE_S)
        return {"first_deny": first_deny, "last_allow": last_allow, "relapses": relapses, "others": others,
                "probes": probes, "failed": run < CONFIRM_DENIALS}

    targets = [(g, w) for g, pool in enumerate(pools) for w in sorted(pool)]
    seen = each_worker(probe, targets, failed)
    if any(entry["failed"] for entry in seen):
        raise BenchError(f"revocation not enforced on every worker within {timeout} s: "
                         f"{[(t, e['first_deny']) for t, e in zip(targets, seen)]}")
    others: dict[str, int] = {}
    for entry in seen:
        for name, count in entry["others"].items():
            others[name] = others.get(name, 0) + count
    allowed = [e["last_allow"] for e in seen if e["last_allow"] is not None]
    return {"every_worker_s": round(max(e["first_deny"] for e in seen), 3),
            "workers_s": [round(e["first_deny"], 3) for e in seen],
            "last_allowed_s": round(max(allowed), 3) if allowed else None,
            "resolution_s": round(max(e["first_deny"] - (e["last_allow"] or 0) for e in seen), 3),
            "relapses": sum(e["relapses"] for e in seen), "other_answers": others,
            "probes": sum(e["probes"] for e in seen)}


def allowed_everywhere(gateways: list[Gateway], pools: list[dict[int, list[int]]], key: str) -> bool:
    return all(ask(ports[0], g.listener_port, key)[0] == 200 for g, pool in zip(gateways, pools)
               for ports in pool.values())


def revocations(gateways: list[Gateway], pools, victims: list[int], revoke, timeout: float, log,
                what: str) -> list[dict]:
    """Each victim: allowed everywhere first, then revoked (`revoke`
    returns the clock's start) and timed to every worker's denial."""
    out = []
    for number, index in enumerate(victims, 1):
        key = raw_key(index)
        deadline = time.monotonic() + 10
        while not allowed_everywhere(gateways, pools, key):
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: key {index} is not allowed on every worker before its revocation")
            time.sleep(0.05)
        t0 = revoke(index)
        result = await_denials(gateways, pools, key, t0, timeout)
        out.append(result)
        log(f"  {what} revocation {number}/{len(victims)}: every worker denies after "
            f"{result['every_worker_s'] * 1000:.0f} ms" + (f" (other answers {result['other_answers']})"
                                                         if result["other_answers"] else ""))
        time.sleep(0.3)
    return out


def start_gateways(names: list[str], config: str, control_port: int | None, timeout: float) -> list[Gateway]:
    """Gateways up and enforcing (the bench key allowed), started one after
    the other (how they loaded is not what they measure), or BenchError
    with them stopped."""
    gateways = []
    try:
        for name in names:
            gateways.append(gateway(name, config, control_port=control_port).start())
            envoy = gateways[-1]
            envoy.wait("the bench key allowed", lambda e=envoy: e.request(BENCH_KEY) == 200, timeout)
            timeline = key_source_timeline(envoy)
            envoy.loaded = {"loaded_s": round(time.monotonic() - envoy.spawned, 1),
                            "handovers": timeline["handovers"], "feed_failures": timeline["feed_failures"]}
    except BenchError:
        for envoy in gateways:
            if envoy.process is not None and envoy.process.poll() is None:
                shutil.copyfile(envoy.workdir / "envoy.log", WORK / f"{envoy.name}-not-enforced.log")
            envoy.stop()
        raise
    return gateways


# --- 3. look-up throughput: N keys against 10 ----------------------------------

SPREAD_SCRIPT = """-- Each request carries the next key of the file (bench/key_source_bench.py).
local requests, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do
    requests[#requests + 1] = wrk.format("GET", nil, {["X-API-Key"] = line})
  end
end
function request()
  i = i % #requests + 1
  return requests[i]
end
"""


def throughput(services: dict[int, Service], tables: dict[int, Table], args, log) -> dict:
    script = WORK / "spread.lua"
    script.write_text(SPREAD_SCRIPT)
    envoys = {}
    setups = []
    failed = {}
    for size, service in services.items():
        envoy = gateway(f"ks-lookup-{label(size)}", service.key_source(), concurrency=1, cores=bench.ENVOY_CORE,
                        control_port=service.port).start()
        try:
            envoy.wait("the bench key allowed", lambda e=envoy: e.request(BENCH_KEY) == 200, args.load_timeout)
        except BenchError:
            shutil.copyfile(envoy.workdir / "envoy.log", WORK / f"{envoy.name}-not-enforced.log")
            envoy.stop()
            failed[str(size)] = f"the gateway did not enforce the table within {args.load_timeout:.0f} s"
            log(f"look-ups at {label(size)} keys not measured: {failed[str(size)]}")
            continue
        envoys[size] = envoy
        keys_file = WORK / f"spread-{label(size)}.txt"
        if size == 10:
            spread = [BENCH_KEY] + [ten_raw_key(i) for i in range(9)]
        else:
            spread = [raw_key(i) for i in range(tables[size].spread)]
        keys_file.write_text("\n".join(spread) + "\n")
        for key in spread[:3] + spread[-3:]:
            if envoy.request(key) != 200:
                raise BenchError(f"{envoy.name}: a spread key is not allowed")
        setups.append({"name": f"one-{label(size)}", "size": size, "envoy": envoy, "key": BENCH_KEY, "script": None,
                       "spread": 1})
        setups.append({"name": f"spread-{label(size)}", "size": size, "envoy": envoy, "key": None,
                       "script": [str(script), str(keys_file)], "spread": len(spread)})
    log(f"look-ups: warming up {len(setups)} set-ups ({args.warmup} s each)")
    for setup in setups:
        bench.run_wrk(setup["envoy"], setup["key"], args.warmup, args.connections, setup["script"])
    runs: dict[str, list[dict]] = {s["name"]: [] for s in setups}
    for round_index in range(args.rounds):
        order = setups[round_index % len(setups):] + setups[:round_index % len(setups)]
        for setup in order:
            result = bench.run_wrk(setup["envoy"], setup["key"], args.seconds, args.connections, setup["script"])
            runs[setup["name"]].append(result)
            log(f"  round {round_index + 1}/{args.rounds} {setup['name']:12} {result['rps']:8.0f} req/s (busy "
                f"{result['busy']:.2f}) {result['cpu_us_per_request']:.1f} µs/req"
                + (f" NON-2XX {result['non_2xx']}" if result["non_2xx"] else ""))
    for envoy in envoys.values():
        envoy.stop()
    summary = [{"name": s["name"], "size": s["size"], "spread": s["spread"],
                "rps": statistics.median(r["rps"] for r in runs[s["name"]]),
                "busy": statistics.median(r["busy"] for r in runs[s["name"]]),
                "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in runs[s["name"]]),
                "non_2xx": sum(r["non_2xx"] for r in runs[s["name"]]),
                "socket_errors": sum(r["socket_errors"] for r in runs[s["name"]])} for s in setups]
    slim = {name: [{k: r[k] for k in ("rps", "busy", "cpu_us_per_request", "non_2xx", "socket_errors", "requests")}
                   for r in results] for name, results in runs.items()}
    judged = {}
    for size in envoys:
        if size == 10 or 10 not in envoys:
            continue
        for kind in ("one", "spread"):
            numerator, denominator = f"{kind}-{label(size)}", f"{kind}-10"
            ratio, how = bench.judged_ratio({"setups": summary, "runs": runs}, numerator, denominator)
            judged[numerator] = {"ratio": round(ratio, 3), "how": how, "against": denominator}
    sizes = sorted(size for size in envoys if size != 10)
    between = None
    if len(sizes) >= 2:
        # Both miss the cache on every request: what the table's size alone does.
        numerator, denominator = f"spread-{label(sizes[-1])}", f"spread-{label(sizes[0])}"
        ratio, how = bench.judged_ratio({"setups": summary, "runs": runs}, numerator, denominator)
        between = {"name": numerator, "against": denominator, "ratio": round(ratio, 3), "how": how}
    return {"between_sizes": between, "failed": failed, "rounds": args.rounds, "seconds": args.seconds, "connections": args.connections, "setups": summary,
            "runs": slim, "judged": judged}


# --- the run -----------------------------------------------------------------

def account() -> dict:
    """bench.cpu_account() with the services' CPU counted as this run's."""
    now = bench.cpu_account()
    for service in list(SERVICES):
        try:
            now["ours"] += service.cpu_seconds()
        except OSError:
            pass
    return now


def ecds_config(table: Table, revoked: set[int]) -> str:
    """The same table as one §1 configuration, for ECDS."""
    keys = []
    for record in table.records():
        index = int(record["id"][3:]) if record["id"][3:].isdigit() else None
        if index is not None and (index in revoked or index == table.revoked):
            record = {**record, "revoked": True}
        keys.append(record)
    return json.dumps({**SETTINGS, "keys": keys}, separators=(",", ":"))


def describe_start(result: dict) -> str:
    timeline = result["timeline"]
    counts = (f"lease confirmed {timeline['leases']}× (handed over {timeline['handovers']}×), "
              f"{timeline['feed_failures']} feed failures")
    if result.get("failed"):
        return (f"{result['failed']}: workers {result['workers_s']}; {counts}; VmRSS {result['rss_kb'] / 1024:.0f} MB, "
                f"VmHWM {result['hwm_kb'] / 1024:.0f} MB")
    return (f"every worker enforcing after {result['every_worker_s']:.2f} s (workers "
            f"{', '.join(f'{v:.2f}' for v in result['workers_s'])}); RSS {result['rss_kb'] / 1024:.0f} MB, "
            f"peak {result['hwm_kb'] / 1024:.0f} MB; {len(result['answers']['wrong'])} wrong answers; "
            f"configured {timeline.get('configured_s')} s, lease {timeline.get('lease_s')} s, "
            f"written {timeline.get('written_s')} s; {counts}")


def cleanup() -> None:
    bench.cleanup()
    for service in list(SERVICES):
        service.stop()


def run(args) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {message}", flush=True)

    rng = random.Random(21)
    git = bench.git_head()
    bench.snapshot_modules()
    quiet = bench.wait_for_quiet(args.quiet_load, args.quiet_wait, log)
    account_start = account()
    results: dict = {"sizes": args.sizes, "runs": args.runs, "revocations": args.revocations, "git": git,
                     "start_timeout": args.start_timeout, "load_timeout": args.load_timeout,
                     "started": started.isoformat(timespec="seconds"), "machine": bench.machine(),
                     "envoy_version": bench.envoy_version(), "quiet": quiet, "quick": args.quick,
                     "edges": args.edges, "import": {}, "start": {}, "native": {"start": {}},
                     "revocation": {}, "revocation_loads": {}, "ecds": {}}

    log("the 10-key service")
    ten = Service("service-10")
    ten.import_records(ten_key_objects())
    services: dict[int, Service] = {10: ten}
    tables: dict[int, Table] = {}
    for size in args.sizes:
        table = Table.plan(size, args.revocations, rng)
        service = Service(f"service-{label(size)}")
        log(f"importing {size:,} keys into the service")
        results["import"][str(size)] = service.import_records(table.records())
        service.revoke(f"ks_{table.revoked:08d}")
        results["import"][str(size)]["snapshot_read_s"] = round(service.snapshot_read_seconds(), 2)
        log(f"  imported in {results['import'][str(size)]['seconds']:.1f} s "
            f"({results['import'][str(size)]['bytes'] / 1e6:.0f} MB of NDJSON); a plain client reads the feed's "
            f"snapshot in {results['import'][str(size)]['snapshot_read_s']:.2f} s")
        services[size], tables[size] = service, table

    # Source ports per worker for the start-up runs, learned once (the
    # kernel's choice depends on the addresses only) and checked per run.
    start_port = free_port()
    learner = gateway("ks-learn", json.dumps({"key_source": {"cluster": "apikey_control", "token": "x" * 24}}),
                      listener_port=start_port, control_port=1).start()
    start_pool = learn_ports(learner, 3, rng, set())
    learner.stop()

    for size in args.sizes:
        table, service = tables[size], services[size]
        with_ecds = size == args.ecds_size
        if with_ecds:
            ecds_text = ecds_config(table, set())
            log(f"the same {size:,}-key table as one ECDS configuration ({len(ecds_text) / 1e6:.1f} MB)")
        runs: dict[str, list[dict]] = {edge: [] for edge in args.edges}
        ecds_runs = []
        for number in range(args.runs):
            # The edges take turns, run by run, so a neighbour's load falls on both alike.
            for edge in args.edges:
                log(f"start {number + 1}/{args.runs} at {label(size)} keys, {EDGE_NAMES[edge]}: following the service")
                runs[edge].append(start_run(f"ks-start-{label(size)}" + ("" if edge == "wasm" else f"-{edge}"),
                                            service.key_source(), service.port, start_port, start_pool, table,
                                            raw_key, args.start_timeout, edge))
                log("  " + describe_start(runs[edge][-1]))
            if with_ecds:
                log(f"start {number + 1}/{args.runs} at {label(size)} keys: the table in the ECDS file")
                ecds_runs.append(start_run(f"ecds-start-{label(size)}", ecds_text, None, start_port, start_pool,
                                           table, raw_key, args.start_timeout))
                log("  " + describe_start(ecds_runs[-1]))
        if "wasm" in runs:
            results["start"][str(size)] = runs["wasm"]
        if "native" in runs:
            results["native"]["start"][str(size)] = runs["native"]
        if with_ecds:
            results["ecds"].update(start=ecds_runs, size=size, config_bytes=len(ecds_text))

    if args.unlimited_size:
        # Where the start's time goes: the same keys on plans without a
        # limit, so the table written needs no rate-limit bucket entries.
        size = args.unlimited_size
        table = Table.plan(size, 0, rng)
        service = Service(f"service-{label(size)}-unlimited", settings=UNLIMITED_SETTINGS)
        log(f"diagnostic: importing {size:,} keys on plans without limits")
        entry = {"size": size, "import": service.import_records(table.records())}
        service.revoke(f"ks_{table.revoked:08d}")
        entry["start"] = []
        for number in range(args.runs):
            log(f"start {number + 1}/{args.runs} at {label(size)} keys on plans without limits")
            entry["start"].append(start_run(f"ks-start-{label(size)}-unlimited", service.key_source(), service.port,
                                            start_port, start_pool, table, raw_key, args.start_timeout))
            log("  " + describe_start(entry["start"][-1]))
        service.stop()
        results["unlimited"] = entry

    for size in args.sizes:
        table, service = tables[size], services[size]
        log(f"revocations at {label(size)} keys: two gateways (--concurrency 4) following the service")
        try:
            gateways = start_gateways([f"ks-revoke-{label(size)}-a", f"ks-revoke-{label(size)}-b"],
                                      service.key_source(), service.port, args.load_timeout)
        except BenchError:
            reason = f"a gateway did not enforce the table within {args.load_timeout:.0f} s"
            log(f"  not measured: {reason}")
            results["revocation"][str(size)] = {"failed": reason}
        else:
            pools = [learn_ports(g, 2, rng, set()) for g in gateways]
            results["revocation_loads"][str(size)] = [g.loaded for g in gateways]
            log(f"  the gateways enforce the table: {results['revocation_loads'][str(size)]}")
            results["revocation"][str(size)] = revocations(
                gateways, pools, table.victims, lambda index, s=service: s.revoke(f"ks_{index:08d}"),
                args.revoke_timeout, log, label(size))
            for envoy in gateways:
                envoy.stop()
        if size == args.ecds_size:
            log(f"revocations at {label(size)} keys: two gateways (--concurrency 4) with the table by ECDS")
            gateways = start_gateways([f"ecds-revoke-{label(size)}-a", f"ecds-revoke-{label(size)}-b"],
                                      ecds_config(table, set()), None, args.load_timeout)
            pools = [learn_ports(g, 2, rng, set()) for g in gateways]
            revoked: set[int] = set()

            def push(index: int, gateways=gateways, table=table, revoked=revoked) -> float:
                revoked.add(index)
                document = json.dumps(bench.ecds_document(gateways[0].bootstrap, ecds_config(table, revoked)))
                staged = []
                for envoy in gateways:
                    path = envoy.workdir / "ecds" / envoy.ecds_file
                    temporary = path.with_name(f".{path.name}.tmp")
                    temporary.write_text(document, encoding="utf-8")
                    staged.append((temporary, path))
                start = time.monotonic()
                for temporary, path in staged:
                    os.replace(temporary, path)
                return start

            # The ECDS table is the gateways' own: the service's revocations do not reach it.
            results["ecds"]["revocation"] = revocations(gateways, pools, table.victims, push,
                                                        args.ecds_revoke_timeout, log, f"ECDS {label(size)}")
            for envoy in gateways:
                envoy.stop()

    account_lookups = account()
    results["lookups"] = throughput(services, tables, args, log)
    account_end = account()
    results["neighbours"] = {"before_lookups": bench.neighbour_cores(account_start, account_lookups),
                             "lookups": bench.neighbour_cores(account_lookups, account_end),
                             "whole": bench.neighbour_cores(account_start, account_end)}
    cleanup()
    results["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results["wall_s"] = round(time.monotonic() - t0, 1)
    return results


# --- the report --------------------------------------------------------------

def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def _s(value: float) -> str:
    return f"{value:.2f} s"


def _ms(value: float) -> str:
    return f"{value * 1000:.0f} ms"


def _verdict(held: bool) -> str:
    return "**held**" if held else "**missed**"


def start_summary(runs: list[dict]) -> dict:
    """Medians over the runs; a run that never enforced counts as slower
    than any that did."""
    done = [r for r in runs if not r.get("failed")]
    times = sorted(r["every_worker_s"] if not r.get("failed") else float("inf") for r in runs)
    return {"every": statistics.median(times), "failed": len(runs) - len(done), "runs": len(runs),
            "rss_mb": statistics.median(r["rss_kb"] for r in done) / 1024 if done else None,
            "hwm_mb": statistics.median(r["hwm_kb"] for r in done) / 1024 if done else None,
            "wrong": sum(len(r["answers"]["wrong"]) for r in done),
            "checked": sum(r["answers"]["checked"] for r in done)}


def revocation_summary(events: list[dict]) -> dict:
    times = [e["every_worker_s"] for e in events]
    others: dict[str, int] = {}
    for e in events:
        for name, count in e["other_answers"].items():
            others[name] = others.get(name, 0) + count
    return {"p50": statistics.median(times), "p90": percentile(times, 0.9), "max": max(times),
            "relapses": sum(e["relapses"] for e in events), "others": others, "count": len(times),
            "resolution": max(e.get("resolution_s", 0) for e in events)}


def _run_time(run: dict) -> str:
    return "not enforced" if run.get("failed") else f"{run['every_worker_s']:.2f}"


def start_target_rows(name: str, runs: list[dict], start_timeout: float, target_s: float, target_mb: float,
                      who: str = "") -> list[list[str]]:
    """The start's two targets (time to every worker enforcing, RSS once
    loaded) for one size and edge: `who` names the edge in the target."""
    start = start_summary(runs)
    per_run = ", ".join(_run_time(r) for r in runs)
    if start["failed"]:
        median = _s(start["every"]) if start["every"] != float("inf") else "none"
        measured = (f"median {median}; not enforced within {start_timeout:.0f} s in "
                    f"{start['failed']} of {start['runs']} runs (runs: {per_run})")
    else:
        measured = f"{_s(start['every'])} (runs: {per_run} s)"
    if start["wrong"]:
        measured += f"; {start['wrong']} of {start['checked']} checked answers wrong"
    rows = [[f"{name} keys{who}: a new Envoy (`--concurrency 4`) enforces on every worker ≤ {target_s:.0f} s "
             "after its spawn", measured, _verdict(start["every"] <= target_s and not start["wrong"])]]
    if start["rss_mb"] is None:
        peak = max(r["hwm_kb"] for r in runs) / 1024
        rows.append([f"{name} keys{who}: Envoy RSS once loaded ≤ {target_mb} MB",
                     f"no run loaded the table (VmHWM at the timeout up to {peak:.0f} MB)", "**not measured**"])
    else:
        rss_runs = ", ".join(f"{r['rss_kb'] / 1024:.0f}" for r in runs if not r.get("failed"))
        rows.append([f"{name} keys{who}: Envoy RSS once loaded ≤ {target_mb} MB",
                     f"{start['rss_mb']:.0f} MB (runs: {rss_runs} MB; peak VmHWM {start['hwm_mb']:.0f} MB)",
                     _verdict(start["rss_mb"] <= target_mb)])
    return rows


def target_rows(results: dict) -> list[list[str]]:
    rows = []
    lookups = results.get("lookups", {})
    by_name = {s["name"]: s for s in lookups.get("setups", [])}
    not_measured = "**not measured**"
    timeout = results.get("start_timeout", 0)
    for size in sorted(results["sizes"], reverse=True):
        key = str(size)
        name = label(size)
        native = results.get("native", {}).get("start", {}).get(key)
        if native:
            # Issue 23's target, on the native edge (contract §9).
            rows += start_target_rows(name, native, timeout, TARGET_NATIVE_START_S, TARGET_NATIVE_RSS_MB,
                                      f", {EDGE_NAMES['native']}")
        if key in results["start"]:  # not when --edges left the Wasm filter's start out
            rows += start_target_rows(name, results["start"][key], timeout, TARGET_START_S, TARGET_RSS_MB,
                                      f", {EDGE_NAMES['wasm']}" if native else "")
        target = (f"{name} keys: one revocation, API answer → every worker of two gateways denies, ≤ "
                  f"{TARGET_REVOKE_S:.0f} s (p50 and max)")
        events = results["revocation"][key]
        if isinstance(events, dict):
            rows.append([target, f"not measured: {events['failed']}", not_measured])
        else:
            revocation = revocation_summary(events)
            rows.append([target, f"p50 {_ms(revocation['p50'])}, max {_ms(revocation['max'])} "
                                 f"({revocation['count']} revocations)", _verdict(revocation["max"] <= TARGET_REVOKE_S)])
        failed = lookups.get("failed", {}).get(key)
        if failed:
            rows.append([f"{name} keys: look-up throughput ≥ {TARGET_LOOKUP} × 10 keys", f"not measured: {failed}",
                         not_measured])
            continue
        spread = by_name.get(f"spread-{name}", {}).get("spread", 0)
        for kind, what in (("one", "one key (the per-worker cache answers)"),
                           ("spread", f"keys spread over {spread:,}" + (
                               " (every request misses the per-worker cache)" if spread > CACHE_ENTRIES else ""))):
            judged = lookups.get("judged", {}).get(f"{kind}-{name}")
            if not judged:
                continue
            numerator, denominator = by_name[f"{kind}-{name}"], by_name[judged["against"]]
            rows.append([f"{name} keys: look-up throughput ≥ {TARGET_LOOKUP} × 10 keys, {what}",
                         f"{judged['ratio']:.3f}× ({numerator['cpu_us_per_request']:.1f} against "
                         f"{denominator['cpu_us_per_request']:.1f} µs of Envoy CPU per request)",
                         _verdict(judged["ratio"] >= TARGET_LOOKUP)])
    return rows


def start_row(delivery: str, size: int, number: int, r: dict) -> str:
    timeline = r["timeline"]

    def at(name: str) -> str:
        return f"{timeline[name]:.2f} s" if name in timeline else "–"

    if r.get("failed"):
        head = (f"| {delivery} | {size:,} | {number} | not enforced | "
                f"{', '.join('–' if v is None else f'{v:.2f}' for v in r['workers_s'])} | – | – | "
                f"at the timeout {r['rss_kb'] / 1024:.0f} MB | {r['hwm_kb'] / 1024:.0f} MB | ")
    else:
        head = (f"| {delivery} | {size:,} | {number} | {_s(r['every_worker_s'])} | "
                f"{', '.join(f'{v:.2f}' for v in r['workers_s'])} | {_ms(r['resolution_s'])} | "
                f"{r['answers']['checked']} / {len(r['answers']['wrong'])} | {r['rss_kb'] / 1024:.0f} MB | "
                f"{r['hwm_kb'] / 1024:.0f} MB | ")
    if "leases" not in timeline:  # delivered by ECDS: no following
        return head + "– | – | – | – | – |"
    lease = at("lease_s") + (f" ({timeline['fetcher']})" if "fetcher" in timeline else "")
    if timeline.get("writer_lease_s") not in (None, timeline.get("lease_s")):
        lease += f"; writer's {at('writer_lease_s')}"
    return (head + f"{at('configured_s')} | {lease} | {timeline['handovers']} / {timeline['feed_failures']} | "
            f"{at('written_s')} | " + (", ".join(f"{v:.2f}" for v in timeline["serving_s"]) or "–") + " |")


def render_section(results: dict) -> str:
    lines = [f"<!-- {SECTION}:begin -->",
             "## Gateways following the key service (`key_source`): start, revocation, look-up",
             "",
             f"Generated by `scripts/bench.sh --key-source` (bench/key_source_bench.py) — do not edit by hand. "
             f"Run {results['started']} → {results['finished']} ({results['wall_s'] / 60:.1f} min), at "
             f"`{results['git']}`" + (" (`--quick`)" if results.get("quick") else "") + ". Envoy "
             f"{results['envoy_version']}; {results['machine']['model']}, {results['machine']['cpus']} cores. "
             "Per-run figures: [performance-key-source.json](performance-key-source.json).",
             ""]
    quiet = results.get("quiet")
    neighbours = results.get("neighbours", {})
    lines += [
        "How (the module docstring has the details): the release `apikey serve` holds the keys (imported as one "
        "NDJSON request; every key on a plan with a rate limit; one imported key revoked); gateways are "
        "`envoy/envoy.yaml` as bench.py renders it plus an `apikey_control` cluster, their configuration only "
        "`key_source`"
        + ("; the native edge's the same with the dynamic-module filter in the Wasm filter's place "
           "(`envoy/envoy-native.yaml`'s wiring, libapikey_dynamic.so found through "
           "`ENVOY_DYNAMIC_MODULES_SEARCH_PATH`), its start judged against issue 23's target "
           f"(≤ {TARGET_NATIVE_START_S:.0f} s, ≤ {TARGET_NATIVE_RSS_MB} MB), the Wasm filter's against issue 21's; "
           "revocation and look-ups are the Wasm filter's" if results.get("native", {}).get("start") else "")
        + ". *Every worker* is checked, not assumed: a connection from a given source port always "
        "reaches the same worker (one listener socket per worker, chosen by the kernel from the addresses), so "
        "the bench learns source ports for each worker from Envoy's per-worker accept counters and probes with "
        "fresh connections from them. A worker enforces a table from its first 200; a revocation from the first "
        f"of {CONFIRM_DENIALS} consecutive 401 `key_revoked` answers. 2 cores shared with other work: "
        + (f"1-minute load {quiet['load']:.2f} at the start; " if quiet else "")
        + (f"other processes used {neighbours.get('whole', 0):.2f} cores on average over the run "
           f"({neighbours.get('lookups', 0):.2f} during the look-up rounds)." if neighbours else ""),
        "",
        "| target | measured (median) | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in target_rows(results)]

    lines += ["", "### Start: spawn → every worker enforcing", "",
              "Per run: when each worker answered its first 200 (seconds after the spawn; the slowest is the "
              "run's figure), how finely that was seen (the last non-200 on that worker before it), the sampled "
              f"keys ({SAMPLE_KEYS} imported keys, then the revoked and an absent key) checked on every worker, "
              "RSS once settled and its peak. The rest is the filter's own log lines, in seconds after the spawn: "
              "the configuration applied, the first VM to confirm the lease (on the main thread or a worker; "
              "when the lease changed hands before the table was written, also the writer's), how often the "
              "lease was handed over and a feed request failed, the table written to shared data, each VM's "
              "first serving of it. A run with no table on every worker after "
              f"{results.get('start_timeout', 0):.0f} s is *not enforced*; its memory is read then.", "",
              "| delivery | keys | run | every worker | workers | resolution | answers checked / wrong | RSS | peak RSS "
              "| configured | lease confirmed | lease handovers / feed failures | table written | VMs serving |",
              "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    native_starts = results.get("native", {}).get("start", {})
    rows = []
    for size in results["sizes"]:
        if str(size) in native_starts:
            rows.append((f"`key_source`, {EDGE_NAMES['native']}", size, native_starts[str(size)]))
        if str(size) in results["start"]:
            rows.append(("`key_source`" + (f", {EDGE_NAMES['wasm']}" if native_starts else ""), size,
                         results["start"][str(size)]))
    if results.get("unlimited"):
        rows.append(("`key_source`, plans without limits (diagnostic)", results["unlimited"]["size"],
                     results["unlimited"]["start"]))
    if results.get("ecds", {}).get("start"):
        rows.append(("ECDS file", results["ecds"]["size"], results["ecds"]["start"]))
    for delivery, size, runs in rows:
        for number, r in enumerate(runs, 1):
            lines.append(start_row(delivery, size, number, r))
    lines += ["", "### Revocation: API answer → every worker of two gateways denies", "",
              "Two gateways, 4 workers each, every worker probed by its own thread (two source ports, 10 ms "
              "apart). Per revocation, the slowest of the 8 workers; *resolution* is the widest gap, over the "
              "revocations, between a worker's last allowed answer and its first denial; a 429 (the key still authenticates, its "
              "limit spent by the probes) counts as allowed; *relapses* counts a worker that allowed the key "
              "again after denying it, *other answers* anything but 200, 429 and 401 `key_revoked`.", "",
              "| delivery | keys | revocations | p50 | p90 | max | resolution | relapses | other answers | "
              "every revocation (ms) | gateways enforced the table after |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    rows = [("`key_source` (API revoke)", size, results["revocation"][str(size)]) for size in results["sizes"]]
    if results.get("ecds", {}).get("revocation"):
        rows.append(("ECDS (a new table renamed in)", results["ecds"]["size"], results["ecds"]["revocation"]))
    for delivery, size, events in rows:
        if isinstance(events, dict):
            lines.append(f"| {delivery} | {size:,} | not measured: {events['failed']} | | | | | | | | |")
            continue
        s = revocation_summary(events)
        others = ", ".join(f"{k}: {v}" for k, v in s["others"].items()) or "none"
        each = ", ".join(f"{e['every_worker_s'] * 1000:.0f}" for e in events)
        loads = results.get("revocation_loads", {}).get(str(size)) if delivery.startswith("`key_source`") else None
        loaded = ", ".join(f"{g['loaded_s']:.0f} s ({g['handovers']} lease handovers)" for g in loads) if loads else "–"
        lines.append(f"| {delivery} | {size:,} | {s['count']} | {_ms(s['p50'])} | {_ms(s['p90'])} | {_ms(s['max'])} | "
                     f"≤ {_ms(s['resolution'])} | {s['relapses']} | {others} | {each} | {loaded} |")
    lookups = results.get("lookups")
    if lookups:
        lines += ["", "### Look-up throughput", "",
                  f"bench.py's method: one gateway per table at `--concurrency 1` (core {bench.ENVOY_CORE}), wrk on "
                  f"core {bench.WRK_CORE} ({lookups['connections']} connections), {lookups['rounds']} interleaved "
                  f"rounds × {lookups['seconds']} s; *capacity* is 1 / Envoy CPU per request. The ratio against the "
                  "10-key table is the median of per-round ratios: of measured req/s when Envoy was saturated in "
                  "both, of capacity otherwise (wrk's one core is then the limit).", "",
                  "| set-up | keys in the table | distinct keys requested | measured req/s | Envoy busy | "
                  "CPU / request | capacity | vs 10 keys | non-2xx | per round (µs / request) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for s in lookups["setups"]:
            judged = lookups["judged"].get(s["name"])
            rounds = ", ".join(f"{r['cpu_us_per_request']:.1f}" for r in lookups["runs"][s["name"]])
            lines.append(f"| {s['name']} | {s['size']:,} | {s['spread']:,} | {s['rps']:,.0f} | {s['busy']:.0%} | "
                         f"{s['cpu_us_per_request']:.1f} µs | {1e6 / s['cpu_us_per_request']:,.0f} | "
                         + (f"{judged['ratio']:.3f}×" if judged else "–") + f" | {s['non_2xx']} | {rounds} |")
        lines.append("")
        for name, judged in lookups["judged"].items():
            lines.append(f"- {name} against {judged['against']}: {judged['ratio']:.3f}×, {judged['how']}.")
        between = lookups.get("between_sizes")
        if between:
            spread = min(s["spread"] for s in lookups["setups"] if s["name"] in (between["name"], between["against"]))
            lines.append(f"- {between['name']} against {between['against']} ("
                         + ("both miss the per-worker cache on every request, so " if spread > CACHE_ENTRIES else "")
                         + f"only the table's size differs): {between['ratio']:.3f}×, {between['how']}.")
    lines += ["", "### Setup: the import, and the feed's own share", "",
              "The import is setup, not a target. *Snapshot read* is how long a plain client (Python, bodies read "
              "and dropped) takes to read the feed's whole snapshot in the filter's pages of 10,000 keys: the "
              "service's share of a gateway's first fetch.", "",
              "| keys | NDJSON | `POST /v1/keys/import` | snapshot read |", "|---:|---:|---:|---:|"]
    for size in results["sizes"]:
        entry = results["import"][str(size)]
        read = _s(entry["snapshot_read_s"]) if "snapshot_read_s" in entry else "–"
        lines.append(f"| {entry['keys']:,} | {entry['bytes'] / 1e6:.0f} MB | {_s(entry['seconds'])} | {read} |")
    if results.get("unlimited"):
        entry = results["unlimited"]["import"]
        lines.append(f"| {entry['keys']:,} (plans without limits) | {entry['bytes'] / 1e6:.0f} MB | "
                     f"{_s(entry['seconds'])} | – |")
    notes = results.get("notes")
    if notes:
        lines += ["", notes.strip()]
    lines.append(f"<!-- {SECTION}:end -->")
    return "\n".join(lines)


def write_section(results: dict) -> None:
    bench.write_kept_section(SECTION, render_section(results))


NOTES = REPO / "bench" / "key_source_notes.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 keys only, shorter look-up rounds")
    parser.add_argument("--sizes", help="table sizes, comma-separated (default 100000,1000000; --quick 100000)")
    parser.add_argument("--runs", type=int, default=3, help="start-ups per size and edge (median)")
    parser.add_argument("--edges", default="wasm,native",
                        help="the edges whose start is measured, comma-separated: wasm, native (default both); "
                             "revocation, look-ups and ECDS are the Wasm filter's")
    parser.add_argument("--revocations", type=int, default=20, help="revocations per size")
    parser.add_argument("--ecds-size", type=int, default=100_000, help="the size also measured through ECDS")
    parser.add_argument("--rounds", type=int, help="look-up rounds (default 5; --quick 3)")
    parser.add_argument("--seconds", type=int, help="wrk seconds per look-up run (default 6; --quick 3)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, default=128)
    parser.add_argument("--start-timeout", type=float, default=90,
                        help="seconds a gateway gets to enforce its table (a start beyond it is recorded as missed)")
    parser.add_argument("--load-timeout", type=float, default=600,
                        help="seconds the revocation and look-up gateways get to enforce their table")
    parser.add_argument("--unlimited-size", type=int,
                        help="also time starts at this size with plans without limits (default: the largest size; "
                             "--quick: none; 0: none)")
    parser.add_argument("--revoke-timeout", type=float, default=15)
    parser.add_argument("--ecds-revoke-timeout", type=float, default=120)
    parser.add_argument("--quiet-load", type=float, default=0.8)
    parser.add_argument("--quiet-wait", type=float, help="seconds to wait for that (default 600; --quick 0)")
    parser.add_argument("--render-only", action="store_true", help=f"the section again from {JSON_OUT.name}")
    args = parser.parse_args()
    if args.render_only:
        results = json.loads(JSON_OUT.read_text())
        if NOTES.exists():
            results["notes"] = NOTES.read_text(encoding="utf-8")
        write_section(results)
        return 0
    default_sizes = "100000" if args.quick else "100000,1000000"
    args.sizes = sorted(int(s) for s in (args.sizes or default_sizes).split(","))
    if min(args.sizes) < 1000:
        parser.error("--sizes: at least 1,000 keys")
    requested = {edge.strip() for edge in args.edges.split(",") if edge.strip()}
    if not requested or requested - set(EDGE_KINDS):
        parser.error(f"--edges: some of {', '.join(EDGE_KINDS)}, not {args.edges!r}")
    args.edges = [edge for edge in EDGE_KINDS if edge in requested]
    if args.unlimited_size is None:
        args.unlimited_size = 0 if args.quick else max(args.sizes)
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.seconds = args.seconds or (3 if args.quick else 6)
    if args.quiet_wait is None:
        args.quiet_wait = 0 if args.quick else 600
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        results = run(args)
    except BaseException:
        cleanup()
        raise
    JSON_OUT.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    if NOTES.exists():
        results["notes"] = NOTES.read_text(encoding="utf-8")
    write_section(results)
    print(f"wrote the {SECTION} section of {DOC.relative_to(REPO)} and {JSON_OUT.relative_to(REPO)}")
    for target, measured, verdict in target_rows(results):
        print(f"{verdict.strip('*').upper():7} {target}: {measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
