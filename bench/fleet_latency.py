"""The latency fleet mode (contract §6) adds on loopback, beside local-only
in the same run. scripts/bench-fleet.sh runs it.

Two gateways (envoy/envoy.yaml through the e2e harness, --concurrency 2
each, the echo upstream behind each) take the same key and limit; one has
no `fleet`, the other asks apikey-ratelimit (Redis on loopback) for every
admitted request. One client on one keep-alive connection per gateway
sends requests one at a time, alternating blocks between the gateways so
drift on the shared machine hits both alike. The difference of the two
distributions is what the ShouldRateLimit round trip costs.

Prints a markdown section and writes it into docs/performance.md between
<!-- fleet:begin --> and <!-- fleet:end --> (creating the file with just
that section when it does not exist; scripts/bench.sh keeps the section
when it regenerates the rest).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import http.client
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "e2e"))

import harness  # noqa: E402
from fleet_services import RateLimitServer, Redis, build_ratelimit  # noqa: E402

DOC = REPO_ROOT / "docs" / "performance.md"
BEGIN = "<!-- fleet:begin -->"
END = "<!-- fleet:end -->"
RAW_KEY = "sk_live_benchFleet000000000000"
FLEET_STATS = "wasmcustom.apikey.fleet."


def plugin_config(fleet: bool) -> dict:
    # A limit that never denies within a run: every request is admitted
    # locally and (in fleet mode) asked of the service.
    limit = {"requests": 1_000_000_000, "period_seconds": 3600, "burst": 1_000_000_000}
    config = {"keys": [{"id": "key_bench_fleet", "sha256": hashlib.sha256(RAW_KEY.encode()).hexdigest(),
                        "tenant": "bench", "rate_limits": {"*": limit}}]}
    if fleet:
        config["fleet"] = {"cluster": "ratelimit", "domain": "apikey", "timeout_ms": 1000, "on_failure": "deny"}
    return config


class Client:
    """One keep-alive HTTP/1.1 connection to a gateway."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self) -> float:
        """One request; seconds from sending to the body's end."""
        started = time.perf_counter()
        self.connection.request("GET", "/bench", headers={"X-API-Key": RAW_KEY})
        response = self.connection.getresponse()
        response.read()
        took = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"status {response.status}: the benchmark must only see admitted requests")
        return took

    def close(self) -> None:
        self.connection.close()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def measure(requests: int, block: int, warmup: int, workdir: Path) -> dict:
    harness.set_work_root(workdir)
    module = harness.build_module()
    binary = build_ratelimit()
    with Redis(workdir / "redis") as redis, \
         RateLimitServer(binary, redis.url, workdir / "ratelimit", password_file=redis.password_file) as server, \
         harness.Gateway(module, plugin_config(False), concurrency=2, ratelimit_port=server.port) as local_gw, \
         harness.Gateway(module, plugin_config(True), concurrency=2, ratelimit_port=server.port) as fleet_gw:
        clients = {"local": Client(local_gw.port), "fleet": Client(fleet_gw.port)}
        try:
            for client in clients.values():
                for _ in range(warmup):
                    client.get()
            samples: dict[str, list[float]] = {"local": [], "fleet": []}
            order = ["local", "fleet"]
            while len(samples["fleet"]) < requests:
                for mode in order:
                    n = min(block, requests - len(samples[mode]))
                    samples[mode] += [clients[mode].get() for _ in range(n)]
                order.reverse()
        finally:
            for client in clients.values():
                client.close()
        stats = fleet_gw.stats(FLEET_STATS)
        calls = stats.get(FLEET_STATS + "calls", 0)
        failures = stats.get(FLEET_STATS + "failures", 0) + stats.get(FLEET_STATS + "timeouts", 0)
        if calls != requests + warmup or failures:
            raise RuntimeError(f"fleet gateway: {calls} calls, {failures} failures for {requests + warmup} requests")
        if local_gw.stats(FLEET_STATS).get(FLEET_STATS + "calls", 0):
            raise RuntimeError("the local-only gateway asked the service")
        server_requests = server.metrics()["requests"]
        redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    return {"samples": samples, "server_requests": server_requests, "redis": redis_version.removeprefix("v=")}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def section(result: dict, requests: int, block: int, warmup: int, started: str) -> str:
    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.2f} ms"

    rows = []
    stats = {}
    for mode, label in (("local", "local only (no `fleet`)"), ("fleet", "fleet (`ShouldRateLimit` per request)")):
        samples = result["samples"][mode]
        stats[mode] = {q: percentile(samples, q) for q in (50, 90, 99)}
        rows.append(f"| {label} | {len(samples):,} | {ms(stats[mode][50])} | {ms(stats[mode][90])} | {ms(stats[mode][99])} |")
    added = {q: stats["fleet"][q] - stats["local"][q] for q in (50, 90, 99)}
    rows.append(f"| **added by fleet** | | **+{ms(added[50])}** | +{ms(added[90])} | **+{ms(added[99])}** |")
    commit = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=REPO_ROOT,
                            capture_output=True, text=True).stdout.strip()[:100]
    return "\n".join([
        BEGIN,
        "## Fleet-wide limits: the latency a `ShouldRateLimit` call adds (loopback)",
        "",
        f"Generated by `scripts/bench-fleet.sh` — do not edit by hand. Run {started} at `{commit}`, "
        f"on {cpu_model()} ({os.cpu_count()} cores, shared).",
        "",
        "Two gateways run side by side (`envoy/envoy.yaml`, `--concurrency 2`, the e2e echo upstream "
        "behind each) with the same key and a limit that never denies; one has no `fleet`, the other "
        f"asks `apikey-ratelimit` (Redis {result['redis']}, all on 127.0.0.1) for every request. One "
        "client, one keep-alive connection per gateway, one request at a time, alternating blocks of "
        f"{block} between the gateways after {warmup} warm-up requests each; times are from sending "
        "the request to the end of the response, so they include the Python client and upstream, alike "
        "in both rows.",
        "",
        "| gateway | requests | p50 | p90 | p99 |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        f"The service answered {result['server_requests']:,} calls, one per fleet request, none failed. "
        "Rows are percentiles of each distribution; the added row is their difference (not a "
        "per-request measure). A fleet whose service sits across a network adds that network's round "
        "trip on top; `fleet.timeout_ms` bounds the whole call.",
        END,
    ])


def write_section(text: str) -> None:
    if not DOC.exists():
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text + "\n", encoding="utf-8")
        return
    current = DOC.read_text(encoding="utf-8")
    begin = current.find(BEGIN)
    end = current.find(END, begin + 1) if begin >= 0 else -1
    if begin >= 0 and end >= 0:
        updated = current[:begin] + text + current[end + len(END):]
    else:
        updated = current.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(updated, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="measured requests per gateway")
    parser.add_argument("--block", type=int, default=250, help="requests per block before switching gateway")
    parser.add_argument("--warmup", type=int, default=300, help="unmeasured requests per gateway first")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as workdir:
        result = measure(args.requests, args.block, args.warmup, Path(workdir))
    text = section(result, args.requests, args.block, args.warmup, started)
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"\nwritten into {DOC.relative_to(REPO_ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
