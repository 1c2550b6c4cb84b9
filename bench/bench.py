#!/usr/bin/env python3
"""Issue 6's benchmark: what the apikey filter costs against no filter,
Envoy's native api_key_auth + local_ratelimit, and an empty proxy-wasm
filter, from 10 to 1,000,000 keys. `scripts/bench.sh` builds the modules and
runs this; it regenerates docs/performance.md and docs/performance.png.

Method (the numbers are only worth their method):
- Envoy 1.40 runs `--concurrency 1`, pinned with taskset to core 1; wrk runs
  one thread pinned to core 0. Every Envoy is started once and stays up; the
  load runs round by round, each round driving every set-up once in a
  rotated order, so drift (other work on the machine, thermal, the host)
  hits all set-ups alike. Medians over rounds are reported.
- Every bootstrap is envoy/envoy.yaml (edge settings, ECDS wiring, vm_id)
  with only this changed: ports, the route answers with a direct_response
  after the filters (no upstream is measured), no access log (a log line per
  request would be measured instead of the filter), and the HTTP filters of
  the set-up. The Wasm filters get their configuration through ECDS, the
  file rename the project ships.
- CPU per request is Envoy's utime+stime (/proc/PID/stat, all threads)
  over a run, divided by the requests wrk completed in it; memory is VmRSS.
- Configuration to enforcement: an ECDS file is renamed into the watched
  directory; the time runs until a request with a key that exists only in
  the new configuration is answered 200.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ENVOY = REPO / ".venv" / "bin" / "envoy"
RELEASE = REPO / "target" / "wasm32-wasip1" / "release"
FILTER_WASM = RELEASE / "apikey_filter.wasm"
EMPTY_WASM = RELEASE / "empty_filter.wasm"
DOC = REPO / "docs" / "performance.md"
CHART = REPO / "docs" / "performance.png"
WORK = REPO / ".work" / "bench"
RESULTS = WORK / "results.json"
# The empty filter finished like the apikey filter (scripts/finish_module.py:
# the same unused callbacks dropped from its exports, wasm-opt): the floor
# for a filter that enters the VM as often as ours.
FINISH_MODULE = REPO / "scripts" / "finish_module.py"
EMPTY_FINISHED_WASM = WORK / "empty_filter.finished.wasm"

ENVOY_CORE = "1"
WRK_CORE = "0"
FLEET_BEGIN = "<!-- fleet:begin -->"
FLEET_END = "<!-- fleet:end -->"
WASM_SIZE_TARGET = 300 * 1024

# The request every allowed set-up sends: a scoped route, a key from the header.
PATH = "/api/v1/leads"
BENCH_KEY = "sk_live_bench_allowed_000000000000"
SLOW_KEY = "sk_live_bench_burst1_slow_refill00"
INVALID_KEY = "sk_live_bench_not_in_the_table_000"
NEVER_DENY = {"requests": 1_000_000_000, "period_seconds": 1}

ECDS_FILE = "apikey.yaml"
ECDS_STATS = "extension_config_discovery.http_filter.apikey."
NOTHING_YET = {"resources": []}


def sha256_hex(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


# --- plugin configurations ---------------------------------------------------

def plugin_config(size: int, extra_key: str | None = None) -> str:
    """A contract §1 configuration of `size` keys: the bench key, the
    burst-1 key and fillers, on a plan with a limit that never denies. With
    `extra_key`, the last filler is replaced by that key (so it exists only
    in this configuration)."""
    keys = [
        {"id": "bench_allowed", "sha256": sha256_hex(BENCH_KEY), "tenant": "bench",
         "scopes": ["leads:read"], "plan": "pro", "env": "live"},
        {"id": "bench_burst1", "sha256": sha256_hex(SLOW_KEY), "tenant": "bench",
         "scopes": ["leads:read"], "plan": "pro", "env": "live",
         "rate_limits": {"*": {"requests": 1, "period_seconds": 86400, "burst": 1}}},
    ]
    fillers = size - len(keys)
    for i in range(fillers):
        raw = extra_key if (extra_key and i == fillers - 1) else f"sk_live_filler_{i:010d}"
        keys.append({"id": f"k{i:07d}", "sha256": sha256_hex(raw), "tenant": f"t{i % 1000}",
                     "scopes": ["leads:read"], "plan": "pro", "env": "live"})
    config = {
        "keys": keys,
        "plans": {"pro": {"scopes": ["leads:*"], "rate_limits": {"*": NEVER_DENY}}},
        "rules": [
            {"path_prefix": "/healthz", "public": True},
            {"path_prefix": "/api/v1/leads", "methods": ["GET", "HEAD"], "scope": "leads:read"},
            {"path_prefix": "/api/v1/leads", "methods": ["POST", "PUT", "PATCH"], "scope": "leads:write"},
        ],
        "schemes": ["bearer", "apikey", "x-api-key"],
        "key_prefixes": ["sk_live_"],
    }
    return json.dumps(config, separators=(",", ":"))


def new_key(size: int) -> str:
    return f"sk_live_bench_new_in_update_{size:010d}"


# --- bootstraps --------------------------------------------------------------

def _named(items, name):
    for item in items:
        if item.get("name") == name:
            return item
    raise KeyError(name)


def shipped_bootstrap() -> dict:
    with open(REPO / "envoy" / "envoy.yaml", encoding="utf-8") as file:
        return yaml.safe_load(file)


def _manager(bootstrap: dict) -> dict:
    listener = _named(bootstrap["static_resources"]["listeners"], "ingress")
    return _named(listener["filter_chains"][0]["filters"],
                  "envoy.filters.network.http_connection_manager")["typed_config"]


def render_bootstrap(kind: str, workdir: Path, module: Path | None = None,
                     native_keys: list[str] | None = None) -> dict:
    """envoy/envoy.yaml for one set-up: kind is direct, native or wasm."""
    bootstrap = shipped_bootstrap()
    bootstrap["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    listener = _named(bootstrap["static_resources"]["listeners"], "ingress")
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    bootstrap["static_resources"]["clusters"] = []
    manager = _manager(bootstrap)
    manager.pop("access_log", None)
    virtual_host = manager["route_config"]["virtual_hosts"][0]
    virtual_host["routes"] = [{"match": {"prefix": "/"},
                               "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}]
    filters = manager["http_filters"]
    router = _named(filters, "envoy.filters.http.router")
    wasm = _named(filters, "apikey")
    if kind == "direct":
        manager["http_filters"] = [router]
    elif kind == "native":
        manager["http_filters"] = [native_api_key_auth(native_keys or []), NATIVE_LOCAL_RATELIMIT, router]
    elif kind == "wasm":
        discovery = wasm["config_discovery"]
        discovery["config_source"]["path_config_source"] = {
            "path": str(workdir / "ecds" / ECDS_FILE),
            "watched_directory": {"path": str(workdir / "ecds")},
        }
        discovery["default_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(module)
        manager["http_filters"] = [wasm, router]
    else:
        raise ValueError(kind)
    return bootstrap


def native_api_key_auth(keys: list[str]) -> dict:
    return {
        "name": "envoy.filters.http.api_key_auth",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
            "credentials": [{"key": key, "client": f"client{i}"} for i, key in enumerate(keys)],
            "key_sources": [{"header": "x-api-key"}],
            # Like the apikey filter: name the client upstream, keep the key from it.
            "forwarding": {"header": "x-api-key-id", "hide_credentials": True},
        },
    }


NATIVE_LOCAL_RATELIMIT = {
    "name": "envoy.filters.http.local_ratelimit",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "bench_local_rate_limit",
        "token_bucket": {"max_tokens": 1_000_000_000, "tokens_per_fill": 1_000_000_000, "fill_interval": "1s"},
        "filter_enabled": {"runtime_key": "bench_rl_enabled",
                           "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "filter_enforced": {"runtime_key": "bench_rl_enforced",
                            "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
    },
}


def ecds_document(bootstrap: dict, configuration: str) -> dict:
    """The DiscoveryResponse the project ships (envoy/ecds/README.md): the
    bootstrap's default Wasm config with `configuration` as its value."""
    wasm = copy.deepcopy(_named(_manager(bootstrap)["http_filters"], "apikey")["config_discovery"]["default_config"])
    wasm["config"]["configuration"]["value"] = configuration
    return {"resources": [{"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                           "name": "apikey", "typed_config": wasm}]}


def write_ecds(path: Path, document: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document), encoding="utf-8")
    os.replace(temporary, path)


# --- Envoy -------------------------------------------------------------------

class BenchError(RuntimeError):
    pass


LIVE: list["Envoy"] = []


@dataclass
class Envoy:
    name: str
    bootstrap: dict
    concurrency: int = 1
    cores: str = ENVOY_CORE
    initial: dict | None = None  # the first ECDS document (Wasm set-ups)
    workdir: Path = field(init=False)
    process: subprocess.Popen | None = field(init=False, default=None)

    def __post_init__(self):
        self.workdir = WORK / f"{self.name}-c{self.concurrency}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 120) -> "Envoy":
        shutil.rmtree(self.workdir, ignore_errors=True)
        (self.workdir / "ecds").mkdir(parents=True)
        if self.initial is not None:
            write_ecds(self.workdir / "ecds" / ECDS_FILE, self.initial)
        path = self.workdir / "bootstrap.json"
        path.write_text(json.dumps(self.bootstrap, indent=1), encoding="utf-8")
        address_file = self.workdir / "admin-address"
        command = ["taskset", "-c", self.cores, str(ENVOY), "-c", str(path),
                   "--concurrency", str(self.concurrency), "-l", "warning",
                   "--admin-address-path", str(address_file), "--disable-hot-restart"]
        with open(self.workdir / "envoy.log", "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        LIVE.append(self)
        self.wait("the admin address", lambda: address_file.read_text().strip(), timeout)
        self.admin = address_file.read_text().strip()
        self.wait("/ready", lambda: self.admin_get("/ready") == "LIVE\n", timeout)
        listeners = json.loads(self.admin_get("/listeners?format=json"))["listener_statuses"]
        self.port = _named(listeners, "ingress")["local_address"]["socket_address"]["port_value"]
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        if self in LIVE:
            LIVE.remove(self)

    def admin_get(self, path: str, timeout: float = 5) -> str:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=timeout) as answer:
            return answer.read().decode()

    def ecds_counters(self, timeout: float = 5) -> dict[str, int]:
        stats = json.loads(self.admin_get(f"/stats?format=json&filter=^{re.escape(ECDS_STATS)}", timeout))["stats"]
        return {entry["name"][len(ECDS_STATS):]: entry["value"] for entry in stats if isinstance(entry.get("value"), int)}

    def log_tail(self, lines: int = 30) -> str:
        text = (self.workdir / "envoy.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait(self, what: str, condition, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise BenchError(f"{self.name}: Envoy exited while waiting for {what}\n{self.log_tail()}")
            try:
                if condition():
                    return time.monotonic()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: timed out waiting for {what}\n{self.log_tail()}")
            time.sleep(0.01)

    def request(self, key: str | None, path: str = PATH) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path, headers={"X-API-Key": key} if key else {})
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_kb(self) -> dict[str, int]:
        values = {}
        with open(f"/proc/{self.pid}/status") as file:
            for line in file:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    values[name] = int(rest.split()[0])
        return values

    def push(self, configuration: str) -> float:
        """Renames a new ECDS file in; returns the moment of the rename."""
        document = ecds_document(self.bootstrap, configuration)
        path = self.workdir / "ecds" / ECDS_FILE
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(document), encoding="utf-8")
        start = time.monotonic()
        os.replace(temporary, path)
        return start

    def time_to_apply(self, configuration: str, timeout: float) -> float:
        """Pushes `configuration` and waits until every worker switched to
        it (ECDS update_success and config_reload both counted up)."""
        before = self.ecds_counters()
        start = self.push(configuration)

        def applied():
            now = self.ecds_counters(timeout=timeout)
            if now.get("update_rejected", 0) > before.get("update_rejected", 0):
                raise BenchError(f"{self.name}: Envoy refused the configuration\n{self.log_tail()}")
            return (now.get("update_success", 0) > before.get("update_success", 0)
                    and now.get("config_reload", 0) > before.get("config_reload", 0))

        return self.wait("the configuration to be applied", applied, timeout) - start

    def time_to_enforcement(self, configuration: str, key: str, timeout: float) -> dict:
        """Pushes `configuration` and polls until `key` gets 200. Also notes
        when Envoy's main thread accepted the update (a separate poller:
        the admin answers only once the main thread is done parsing)."""
        before = self.ecds_counters()
        accepted: dict[str, float] = {}
        done = threading.Event()

        def watch():
            while not done.is_set():
                try:
                    now = self.ecds_counters(timeout=timeout)
                except OSError:
                    time.sleep(0.05)
                    continue
                if now.get("update_rejected", 0) > before.get("update_rejected", 0):
                    accepted["rejected"] = time.monotonic()
                    return
                if now.get("update_success", 0) > before.get("update_success", 0):
                    accepted["accepted"] = time.monotonic()
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        start = self.push(configuration)
        watcher.start()
        try:
            enforced = self.wait(f"{key} to be enforced", lambda: "rejected" in accepted or self.request(key) == 200,
                                 timeout)
        finally:
            done.set()
            watcher.join(timeout=timeout)
        if "rejected" in accepted:
            raise BenchError(f"{self.name}: Envoy refused the configuration\n{self.log_tail()}")
        return {"enforced_s": enforced - start,
                "accepted_s": accepted["accepted"] - start if "accepted" in accepted else None}


def cleanup() -> None:
    for envoy in list(LIVE):
        envoy.stop()


# --- wrk ---------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise BenchError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(envoy: Envoy, key: str | None, seconds: float, connections: int) -> dict:
    command = ["taskset", "-c", WRK_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if key:
        command += ["-H", f"X-API-Key: {key}"]
    command.append(f"http://127.0.0.1:{envoy.port}{PATH}")
    cpu_before = envoy.cpu_seconds()
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        text, errors = wrk.communicate(timeout=seconds + 60)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    cpu_after = envoy.cpu_seconds()
    if wrk.returncode != 0:
        raise BenchError(f"wrk failed: {errors}")
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    result = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "requests": requests,
        "p50_ms": _ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1)),
        "p99_ms": _ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1)),
        "non_2xx": int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", text)) else 0,
        "socket_errors": sum(map(int, m.groups())) if (
            m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)) else 0,
        "cpu_us_per_request": (cpu_after - cpu_before) * 1e6 / max(requests, 1),
        "rss_kb": envoy.memory_kb()["VmRSS"],
    }
    return result


# --- the run -----------------------------------------------------------------

@dataclass
class Setup:
    name: str
    label: str
    envoy: Envoy
    key: str | None
    expect: int  # the status every request must get


def table_label(size: int) -> str:
    if size >= 1_000_000 and size % 1_000_000 == 0:
        return f"{size // 1_000_000}M"
    if size >= 1000 and size % 1000 == 0:
        return f"{size // 1000}k"
    return str(size)


def measure_tables(sizes: list[int], log) -> tuple[dict, dict[int, Envoy]]:
    """Per table size: configuration → enforcement (first load and an
    update) and memory, at --concurrency 4 then 1; the concurrency-1 Envoys
    stay up to serve the throughput set-ups."""
    tables: dict[str, dict] = {}
    kept: dict[int, Envoy] = {}
    for size in sizes:
        log(f"generating the {table_label(size)}-key configurations")
        first = plugin_config(size)
        update = plugin_config(size, extra_key=new_key(size))
        entry = {"keys": size, "config_bytes": len(first)}
        timeout = 900
        for concurrency, cores in ((4, "0,1"), (1, ENVOY_CORE)):
            bootstrap = render_bootstrap("wasm", WORK / f"apikey-{table_label(size)}-c{concurrency}", FILTER_WASM)
            envoy = Envoy(f"apikey-{table_label(size)}", bootstrap, concurrency, cores, initial=NOTHING_YET).start()
            if envoy.request(BENCH_KEY) != 503:
                raise BenchError(f"{envoy.name}: an unconfigured filter should answer 503")
            log(f"  --concurrency {concurrency}: first load of {table_label(size)} keys")
            load = envoy.time_to_enforcement(first, BENCH_KEY, timeout)
            rss_loaded = envoy.memory_kb()
            log(f"    enforced after {load['enforced_s']:.2f} s; update with one new key")
            upd = envoy.time_to_enforcement(update, new_key(size), timeout)
            memory = envoy.memory_kb()
            log(f"    enforced after {upd['enforced_s']:.2f} s; RSS {memory['VmRSS'] / 1024:.0f} MB")
            entry[f"c{concurrency}"] = {"first_load": load, "update": upd, "rss_kb_after_load": rss_loaded["VmRSS"],
                                        "rss_kb": memory["VmRSS"], "hwm_kb": memory["VmHWM"]}
            if concurrency == 1:
                kept[size] = envoy
            else:
                envoy.stop()
        # Envoy's own floor: the same ECDS file for the empty filter, which
        # never reads its configuration (file read, parse, every worker switched).
        bootstrap = render_bootstrap("wasm", WORK / f"floor-{table_label(size)}-c1", EMPTY_WASM)
        floor = Envoy(f"floor-{table_label(size)}", bootstrap, 1, ENVOY_CORE, initial=NOTHING_YET).start()
        applied = floor.time_to_apply(first, timeout)
        entry["envoy_floor"] = {"applied_s": applied, "rss_kb": floor.memory_kb()["VmRSS"]}
        log(f"  empty filter (Envoy's floor): applied after {applied:.2f} s; "
            f"RSS {entry['envoy_floor']['rss_kb'] / 1024:.0f} MB")
        floor.stop()
        tables[str(size)] = entry
    return tables, kept


def run(args) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {message}", flush=True)

    for path in (FILTER_WASM, EMPTY_WASM):
        if not path.exists():
            raise BenchError(f"{path} missing: scripts/bench.sh builds it")
    sizes = [10, 1_000, 10_000] if args.quick else [10, 100_000, 1_000_000]
    tables, table_envoys = measure_tables(sizes, log)

    log("starting the comparison set-ups")
    native_keys = [BENCH_KEY] + [f"sk_live_filler_{i:010d}" for i in range(9)]
    direct = Envoy("direct", render_bootstrap("direct", WORK / "direct-c1")).start()
    native = Envoy("native", render_bootstrap("native", WORK / "native-c1", native_keys=native_keys)).start()
    empty_bootstrap = render_bootstrap("wasm", WORK / "empty-c1", EMPTY_WASM)
    empty = Envoy("empty", empty_bootstrap, initial=ecds_document(empty_bootstrap, "")).start()
    empty.wait("the empty filter's ECDS update", lambda: empty.ecds_counters().get("update_success", 0) >= 1, 60)
    finished = finish_empty_module()
    if finished:
        finished_bootstrap = render_bootstrap("wasm", WORK / "empty-finished-c1", finished)
        empty_finished = Envoy("empty-finished", finished_bootstrap,
                               initial=ecds_document(finished_bootstrap, "")).start()
        empty_finished.wait("the ECDS update", lambda: empty_finished.ecds_counters().get("update_success", 0) >= 1, 60)

    smallest = table_envoys[sizes[0]]
    setups = [
        Setup("direct", "no filter (direct_response)", direct, BENCH_KEY, 200),
        Setup("native", "native api_key_auth + local_ratelimit", native, BENCH_KEY, 200),
        Setup("empty", "empty Wasm filter (as the SDK builds it)", empty, BENCH_KEY, 200),
    ]
    if finished:
        setups.append(Setup("empty-finished", "empty Wasm filter, finished like apikey (same exports)",
                            empty_finished, BENCH_KEY, 200))
    for size in sizes:
        setups.append(Setup(f"apikey-{table_label(size)}", f"apikey, {table_label(size)} keys, allowed",
                            table_envoys[size], BENCH_KEY, 200))
    setups += [
        Setup("deny-401", f"apikey, invalid key → 401 ({table_label(sizes[0])} keys)", smallest, INVALID_KEY, 401),
        Setup("deny-429", f"apikey, burst-1 key → 429 ({table_label(sizes[0])} keys)", smallest, SLOW_KEY, 429),
    ]
    # The burst-1 key's one token goes on the first request.
    smallest.request(SLOW_KEY)
    for setup in setups:
        status = setup.envoy.request(setup.key)
        if status != setup.expect:
            raise BenchError(f"{setup.name}: expected {setup.expect}, got {status}\n{setup.envoy.log_tail()}")

    seconds, rounds = (args.seconds, args.rounds)
    log(f"warming up every set-up ({args.warmup} s each)")
    for setup in setups:
        run_wrk(setup.envoy, setup.key, args.warmup, args.connections)
    runs: dict[str, list[dict]] = {setup.name: [] for setup in setups}
    for round_index in range(rounds):
        order = setups[round_index % len(setups):] + setups[:round_index % len(setups)]
        for setup in order:
            result = run_wrk(setup.envoy, setup.key, seconds, args.connections)
            wrong = result["requests"] - result["non_2xx"] if setup.expect >= 300 else result["non_2xx"]
            result["wrong_status"] = wrong
            runs[setup.name].append(result)
            log(f"round {round_index + 1}/{rounds} {setup.name:12} {result['rps']:9.0f} req/s "
                f"p50 {result['p50_ms']:.3f} ms p99 {result['p99_ms']:.3f} ms "
                f"cpu {result['cpu_us_per_request']:.1f} us/req rss {result['rss_kb'] / 1024:.0f} MB"
                + (f" WRONG STATUS {wrong}" if wrong else ""))
    cleanup()
    finished = datetime.datetime.now(datetime.timezone.utc)

    summary = []
    for setup in setups:
        results = runs[setup.name]
        summary.append({
            "name": setup.name, "label": setup.label, "expect": setup.expect,
            "rps": statistics.median(r["rps"] for r in results),
            "rps_rounds": [round(r["rps"]) for r in results],
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p99_ms": statistics.median(r["p99_ms"] for r in results),
            "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in results),
            "rss_kb": statistics.median(r["rss_kb"] for r in results),
            "wrong_status": sum(r["wrong_status"] for r in results),
            "socket_errors": sum(r["socket_errors"] for r in results),
            "requests": sum(r["requests"] for r in results),
        })
    return {
        "quick": args.quick, "sizes": sizes, "rounds": rounds, "seconds": seconds,
        "connections": args.connections, "warmup": args.warmup,
        "started": started.isoformat(timespec="seconds"), "finished": finished.isoformat(timespec="seconds"),
        "wall_s": time.monotonic() - t0,
        "machine": machine(), "envoy_version": envoy_version(), "modules": module_sizes(),
        "git": git_head(), "setups": summary, "runs": runs, "tables": tables,
        "hostcalls": hostcall_counts(),
    }


def finish_empty_module() -> Path | None:
    """A copy of the empty filter run through scripts/finish_module.py, or
    None when the project has no such step."""
    if not FINISH_MODULE.exists():
        return None
    shutil.copyfile(EMPTY_WASM, EMPTY_FINISHED_WASM)
    done = subprocess.run([sys.executable, str(FINISH_MODULE), str(EMPTY_FINISHED_WASM)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"warning: {FINISH_MODULE.name} failed on the empty filter: {done.stderr[-500:]}", file=sys.stderr)
        return None
    return EMPTY_FINISHED_WASM


# --- facts about the machine and the build -----------------------------------

def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    facts = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    facts = {k.strip(): v.strip() for k, v in facts.items()}
    memory = next((line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")), "0")
    return {"model": facts.get("Model name", "?"), "cpus": facts.get("CPU(s)", "?"),
            "hypervisor": facts.get("Hypervisor vendor", ""), "kernel": platform.release(),
            "memory_gb": round(int(memory) / 1024 / 1024, 1),
            "wrk": " ".join(subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[:2])}


def envoy_version() -> str:
    """`1.40.0 (RELEASE, BoringSSL, build 9e55809)` from `envoy --version`."""
    out = subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"version: (\w+)/([\d.]+)/\w+/(\w+)/(\w+)", out)
    if not match:
        return " ".join(out.split())
    build, version, kind, ssl = match.groups()
    return f"{version} ({kind}, {ssl}, build {build[:7]})"


def module_sizes() -> dict:
    return {"apikey_filter.wasm": FILTER_WASM.stat().st_size, "empty_filter.wasm": EMPTY_WASM.stat().st_size}


def git_head() -> str:
    out = subprocess.run(["git", "log", "-1", "--format=%h %s"], capture_output=True, text=True, cwd=REPO)
    head = out.stdout.strip()
    return head if len(head) <= 80 else head[:79] + "…"


def envoy_like_headers(key: str) -> list[list[str]]:
    """The request map the filter sees for wrk's request through this
    bootstrap (Envoy adds the x-forwarded-*, x-envoy-internal and x-request-id)."""
    return [[":authority", "127.0.0.1:10000"], [":path", PATH], [":method", "GET"], [":scheme", "http"],
            ["x-api-key", key], ["x-forwarded-for", "127.0.0.1"], ["x-forwarded-proto", "http"],
            ["x-envoy-internal", "true"], ["x-request-id", "2b3f5a8e-6c1d-4f0a-9e7b-5d4c3b2a1f00"]]


def hostcall_counts() -> dict | None:
    """Host calls per request, counted by bench/hostcalls.mjs (the module
    under Node with a counting proxy-wasm host), when Node is there."""
    script = REPO / "bench" / "hostcalls.mjs"
    if not script.exists() or shutil.which("node") is None:
        return None
    modules = {"filter": str(FILTER_WASM), "empty": str(EMPTY_WASM)}
    if EMPTY_FINISHED_WASM.exists():
        modules["empty-finished"] = str(EMPTY_FINISHED_WASM)
    requests = [{"name": "empty Wasm filter (as the SDK builds it)", "module": "empty",
                 "headers": envoy_like_headers(BENCH_KEY)}]
    if "empty-finished" in modules:
        requests.append({"name": "empty Wasm filter, finished like apikey", "module": "empty-finished",
                         "headers": envoy_like_headers(BENCH_KEY)})
    requests += [
        {"name": "apikey: allowed", "module": "filter", "headers": envoy_like_headers(BENCH_KEY)},
        {"name": "apikey: invalid key → 401", "module": "filter", "headers": envoy_like_headers(INVALID_KEY)},
        {"name": "apikey: burst-1 key → 429", "module": "filter", "headers": envoy_like_headers(SLOW_KEY), "before": 1},
    ]
    spec = WORK / "hostcalls-spec.json"
    spec.write_text(json.dumps({"modules": modules, "configuration": plugin_config(10), "requests": requests}))
    out = subprocess.run(["node", str(script), str(spec)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        print(f"hostcalls.mjs failed: {out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout)


# --- the report --------------------------------------------------------------

def _fmt_ms(value: float) -> str:
    return f"{value * 1000:.0f} µs" if value < 1 else f"{value:.2f} ms"


def _fmt_s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def _mb(kb: float) -> str:
    return f"{kb / 1024:.0f} MB"


def verdicts(results: dict) -> list[tuple[str, str, str, bool]]:
    by_name = {s["name"]: s for s in results["setups"]}
    sizes = results["sizes"]
    small, large = table_label(sizes[0]), table_label(sizes[-1])
    full = by_name[f"apikey-{small}"]
    empty = by_name["empty"]
    largest = by_name[f"apikey-{large}"]
    table_large = results["tables"][str(sizes[-1])]
    wasm = results["modules"]["apikey_filter.wasm"]
    out = []
    ratio = full["rps"] / empty["rps"]
    out.append(("Full filter throughput ≥ 0.90 × empty Wasm filter",
                f"{full['rps']:.0f} / {empty['rps']:.0f} req/s", f"{ratio:.3f}×", ratio >= 0.90))
    ratio = largest["rps"] / full["rps"]
    out.append((f"{large}-key table ≥ 0.95 × {small}-key table",
                f"{largest['rps']:.0f} / {full['rps']:.0f} req/s", f"{ratio:.3f}×", ratio >= 0.95))
    ratio = table_large["c4"]["rss_kb"] / table_large["c1"]["rss_kb"]
    out.append((f"{large}-key memory at --concurrency 4 ≤ 1.2 × --concurrency 1",
                f"{_mb(table_large['c4']['rss_kb'])} / {_mb(table_large['c1']['rss_kb'])} RSS", f"{ratio:.2f}×",
                ratio <= 1.2))
    worst = max(table_large["c1"]["update"]["enforced_s"], table_large["c1"]["first_load"]["enforced_s"])
    out.append((f"{large} keys configured → enforced within 10 s (--concurrency 1)",
                f"first load {table_large['c1']['first_load']['enforced_s']:.1f} s, "
                f"update {table_large['c1']['update']['enforced_s']:.1f} s", f"{worst:.1f} s", worst <= 10))
    out.append(("Release .wasm under 300 KB", f"{wasm:,} bytes ({wasm / 1024:.0f} KiB)",
                f"{wasm / WASM_SIZE_TARGET:.2f}× the limit", wasm < WASM_SIZE_TARGET))
    return out


def render_markdown(results: dict, fleet_section: str | None) -> str:
    m = results["machine"]
    by_name = {s["name"]: s for s in results["setups"]}
    empty = by_name["empty"]
    direct = by_name["direct"]
    lines = [
        "# Performance: the apikey filter against no filter, Envoy's native filters and an empty Wasm filter",
        "",
        "Generated by `scripts/bench.sh`" + (" **--quick (a smoke run: small tables, short runs; not the"
                                              " numbers the targets are judged on)**" if results["quick"] else "")
        + f" — do not edit by hand. Run {results['started']} → {results['finished']} "
        f"({results['wall_s'] / 60:.1f} min), at `{results['git']}`.",
        "",
        "## Machine and method",
        "",
        f"- CPU: {m['model']}, {m['cpus']} cores" + (f" ({m['hypervisor']} guest)" if m["hypervisor"] else "")
        + f"; {m['memory_gb']} GB RAM; Linux {m['kernel']}.",
        f"- Envoy {results['envoy_version']}, `--concurrency 1`, pinned to core {ENVOY_CORE} (`taskset`); "
        f"{m['wrk']}, 1 thread, {results['connections']} connections, pinned to core {WRK_CORE}.",
        f"- {results['rounds']} rounds × {results['seconds']} s per set-up, interleaved (each round drives every "
        f"set-up once, in a rotated order) after a {results['warmup']} s warm-up each; medians over rounds. "
        "Ratios are within this run, so drift on the shared machine hits all set-ups alike.",
        "- Bootstrap: `envoy/envoy.yaml` (edge settings, the ECDS wiring and `vm_id`) with the route answering "
        "by `direct_response` after the filters (no upstream is measured) and no access log. The Wasm filters "
        "get their configuration by ECDS, as shipped.",
        "- Request: `GET /api/v1/leads` with `X-API-Key`; the rule needs the scope `leads:read`, the key holds "
        "it, and its plan's limit (10⁹ per second) never denies. The native set-up is `api_key_auth` (10 "
        "credentials, forwarding the client, hiding the key) + `local_ratelimit` (a bucket that never empties).",
        "- CPU per request: Envoy's utime+stime (`/proc/PID/stat`, all threads) over a run ÷ the requests in it. "
        "RSS: `VmRSS` after the run.",
        "",
        "## Module sizes",
        "",
        "| module | bytes | vs the 300 KB target |",
        "|---|---:|---:|",
    ]
    for name, size in results["modules"].items():
        lines.append(f"| `{name}` | {size:,} ({size / 1024:.0f} KiB) | {size / WASM_SIZE_TARGET:.2f}× |")
    lines += [
        "",
        "## Throughput, latency, CPU and memory by set-up",
        "",
        "| set-up | req/s (median) | vs empty Wasm | vs no filter | p50 | p99 | Envoy CPU / request | "
        "over empty Wasm | Envoy RSS | req/s per round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in results["setups"]:
        flag = f" ⚠ {s['wrong_status']} answers not {s['expect']}" if s["wrong_status"] else ""
        lines.append(
            f"| {s['label']}{flag} | {s['rps']:,.0f} | {s['rps'] / empty['rps']:.3f}× | "
            f"{s['rps'] / direct['rps']:.3f}× | {_fmt_ms(s['p50_ms'])} | {_fmt_ms(s['p99_ms'])} | "
            f"{s['cpu_us_per_request']:.1f} µs | {s['cpu_us_per_request'] - empty['cpu_us_per_request']:+.1f} µs | "
            f"{_mb(s['rss_kb'])} | {', '.join(f'{v:,}' for v in s['rps_rounds'])} |")
    lines += [
        "",
        "## Key tables: configuration to enforcement, and memory",
        "",
        "Each Envoy starts with no configuration (503 `not_configured`); *first load* pushes the table and "
        "polls until the bench key gets 200; *update* then pushes the same table with one key replaced and "
        "polls until that new key gets 200. *Accepted* is when Envoy's main thread counted the ECDS update "
        "(`update_success`), so *enforced − accepted* is the filter's own configure time on the workers. "
        "`--concurrency 4` runs on both cores (nothing else is driven meanwhile), `--concurrency 1` on core "
        f"{ENVOY_CORE}. RSS is read after the update (a Wasm VM's memory never shrinks, so it includes the "
        "first load).",
        "",
        "| keys | configuration | concurrency | first load: accepted / enforced | update: accepted / enforced | "
        "RSS after first load | RSS after update | peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in results["sizes"]:
        t = results["tables"][str(size)]
        for c in ("c1", "c4"):
            e = t[c]
            lines.append(
                f"| {size:,} | {t['config_bytes'] / 1e6:.1f} MB | {c[1:]} | "
                f"{_fmt_s(e['first_load']['accepted_s'])} / {_fmt_s(e['first_load']['enforced_s'])} | "
                f"{_fmt_s(e['update']['accepted_s'])} / {_fmt_s(e['update']['enforced_s'])} | "
                f"{_mb(e['rss_kb_after_load'])} | {_mb(e['rss_kb'])} | {_mb(e['hwm_kb'])} |")
    lines += ["", "| keys | RSS --concurrency 4 ÷ --concurrency 1 |", "|---:|---:|"]
    for size in results["sizes"]:
        t = results["tables"][str(size)]
        lines.append(f"| {size:,} | {t['c4']['rss_kb'] / t['c1']['rss_kb']:.2f}× |")
    lines += ["", "## Targets (issue 6)", "", "| target | measured | ratio | verdict |", "|---|---|---:|---|"]
    for target, measured, ratio, held in verdicts(results):
        lines.append(f"| {target} | {measured} | {ratio} | {'**held**' if held else '**missed**'} |")
    hostcalls = results.get("hostcalls")
    if hostcalls:
        columns = hostcalls["columns"]
        short = [c.replace("(callback) ", "↩ ").replace("proxy_", "") for c in columns]
        lines += ["", "## Host calls per request", "",
                  "Counted by `bench/hostcalls.mjs`: the release modules under Node with a proxy-wasm host that "
                  "counts every import a module calls, for the requests above (10 keys, the header map Envoy "
                  "hands the filter for wrk's request). *VM entries* are the callbacks the host makes into the "
                  "module per request (context create, request and response headers, done, log, delete — only "
                  "those the module exports); ↩ `on_memory_allocate` is the module's allocator called back by "
                  "the host for each buffer it copies in (header map, shared-data values).", "",
                  "| request | VM entries | host calls | bytes in / out | " + " | ".join(f"`{c}`" for c in short) + " |",
                  "|---|---:|---:|---:|" + "---:|" * len(columns)]
        for row in hostcalls["rows"]:
            total = sum(v for k, v in row["calls"].items() if not k.startswith("(callback)"))
            lines.append(f"| {row['name']} | {row['vm_entries']} | {total} | {row['bytes_in']} / {row['bytes_out']} | "
                         + " | ".join(str(row['calls'].get(c, 0)) for c in columns) + " |")
    lines += ["", "![throughput and memory by set-up](performance.png)", ""]
    notes = results.get("notes")
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    if fleet_section:
        lines += [fleet_section, ""]
    return "\n".join(lines)


def existing_fleet_section() -> str | None:
    if not DOC.exists():
        return None
    text = DOC.read_text(encoding="utf-8")
    begin = text.find(FLEET_BEGIN)
    end = text.find(FLEET_END, begin + 1) if begin >= 0 else -1
    if begin < 0 or end < 0:
        return None
    return text[begin:end + len(FLEET_END)]


def render_chart(results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    setups = results["setups"]
    names = [s["name"] for s in setups]
    colors = ["#888888", "#4c72b0", "#55a868"] + ["#c44e52"] * (len(setups) - 5) + ["#dd8452", "#dd8452"]
    figure, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    ax = axes[0][0]
    bars = ax.bar(names, [s["rps"] for s in setups], color=colors)
    ax.bar_label(bars, labels=[f"{s['rps']:,.0f}" for s in setups], fontsize=7)
    ax.set_title("Throughput, median req/s (one worker)")
    ax = axes[0][1]
    bars = ax.bar(names, [s["cpu_us_per_request"] for s in setups], color=colors)
    ax.bar_label(bars, labels=[f"{s['cpu_us_per_request']:.0f}" for s in setups], fontsize=7)
    ax.set_title("Envoy CPU per request, µs")
    ax = axes[1][0]
    bars = ax.bar(names, [s["rss_kb"] / 1024 for s in setups], color=colors)
    ax.bar_label(bars, labels=[f"{s['rss_kb'] / 1024:.0f}" for s in setups], fontsize=7)
    ax.set_title("Envoy RSS by set-up, MB (--concurrency 1; log scale)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax = axes[1][1]
    sizes = results["sizes"]
    x = range(len(sizes))
    c1 = [results["tables"][str(s)]["c1"]["rss_kb"] / 1024 for s in sizes]
    c4 = [results["tables"][str(s)]["c4"]["rss_kb"] / 1024 for s in sizes]
    b1 = ax.bar([i - 0.2 for i in x], c1, width=0.4, label="--concurrency 1", color="#c44e52")
    b4 = ax.bar([i + 0.2 for i in x], c4, width=0.4, label="--concurrency 4", color="#8172b3")
    ax.bar_label(b1, labels=[f"{v:.0f}" for v in c1], fontsize=7)
    ax.bar_label(b4, labels=[f"{v:.0f}" for v in c4], fontsize=7)
    ax.set_xticks(list(x), [f"{table_label(s)} keys" for s in sizes])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_title("Envoy RSS by key table, MB (log scale)")
    ax.legend(fontsize=8)
    for row in axes:
        for ax in row:
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
            ax.grid(axis="y", alpha=0.3)
    figure.suptitle(f"apikey filter benchmark — {results['machine']['model']}, Envoy {results['envoy_version'].split(' ')[0]}, {results['started'][:10]}"
                    + (" (--quick)" if results["quick"] else ""))
    figure.tight_layout()
    CHART.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(CHART, dpi=110)


def write_report(results: dict) -> None:
    notes_file = REPO / "bench" / "notes.md"
    if notes_file.exists():
        results = {**results, "notes": notes_file.read_text(encoding="utf-8")}
    fleet = existing_fleet_section()
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render_markdown(results, fleet), encoding="utf-8")
    render_chart(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~2-minute smoke: small tables, short runs")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--warmup", type=float)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--render-only", action="store_true",
                        help=f"regenerate the report from {RESULTS.relative_to(REPO)} without running")
    args = parser.parse_args()
    if args.render_only:
        write_report(json.loads(RESULTS.read_text()))
        return 0
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.seconds = args.seconds or (3 if args.quick else 10)
    args.warmup = args.warmup or (1 if args.quick else 3)
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C, so no Envoy outlives the run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        results = run(args)
    except BaseException:
        cleanup()
        raise
    RESULTS.write_text(json.dumps(results, indent=1))
    write_report(results)
    print(f"wrote {DOC.relative_to(REPO)} and {CHART.relative_to(REPO)}")
    for target, measured, ratio, held in verdicts(results):
        print(f"{'HELD  ' if held else 'MISSED'} {target}: {measured} ({ratio})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
