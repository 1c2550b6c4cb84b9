#!/usr/bin/env python3
"""Where one request's time goes (issue 22's profile), in three parts,
written between `<!-- request-profile:begin -->` and `<!-- request-profile:end -->`
in docs/performance.md (bench/bench.py keeps the section):

1. The filter's own work in the VM, step by step: `bench/core-profile`
   (apikey-core's steps on the benchmark's request and configuration,
   compiled to wasm32-wasip1 like the filter) run under Node's V8 by
   `bench/core_profile.mjs`. V8 is the engine Envoy runs the filter in; the
   figures are per step, each timed over many calls after a warm-up.
2. What each host call costs Envoy: `bench/hostcall-probe` (a module that
   makes only the host calls its configuration lists), one Envoy per list,
   interleaved rounds, Envoy CPU per request over the probe that makes no
   call; then the requests' call lists as counted by `bench/hostcalls.mjs`
   (warm), replayed, for this build and, with `--before OLD.wasm`, an older
   one.
3. Whether the header edits cost a second route match: the probe with and
   without the allowed request's header edits, behind one route and behind
   400 regular-expression routes that do not match. Envoy clears the route
   cache when a filter changes request headers, so the router matches again;
   the difference between the two tables' added costs is that second match.

    scripts/bench.sh --profile [--before OLD.wasm] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the benchmark's own machinery)

REPO = bench.REPO
SECTION = "request-profile"
BEGIN, END = f"<!-- {SECTION}:begin -->", f"<!-- {SECTION}:end -->"
CORE_PROFILE_WASM = REPO / "target" / "core-profile" / "wasm32-wasip1" / "release" / "core-profile.wasm"
ROUTES_IN_FRONT = 400

# Host calls one at a time, and the two ways of making the allowed
# request's header edits.
SINGLE_CALLS = [
    ("no host call (the probe's floor)", ""),
    ("get_header_map_pairs (the request's headers, ~330 B)", "pairs"),
    ("get_shared_data (160 B)", "get_shared"),
    ("set_shared_data (40 B)", "set_shared"),
    ("set_property (the audit record, 120 B)", "set_property"),
    ("increment_metric ×4", "metric,metric,metric,metric"),
    ("clock_time_get ×4 (monotonic)", "monotonic,monotonic,monotonic,monotonic"),
    ("the headers read, then remove ×1 + add ×5 (the allowed request's edits)", "pairs,remove,add,add,add,add,add"),
    ("the headers read, then the whole map written back in one call", "set_pairs"),
]
PROBE_NAMES = {"proxy_get_header_map_pairs": "pairs", "proxy_get_shared_data": "get_shared",
               "proxy_set_shared_data": "set_shared", "proxy_remove_header_map_value": "remove",
               "proxy_add_header_map_value": "add", "proxy_set_property": "set_property",
               "proxy_increment_metric": "metric", "clock_time_get": "monotonic",
               "proxy_get_current_time_nanoseconds": "wall_clock",
               "proxy_replace_header_map_value": "replace"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def core_profile(iterations: int) -> list[list]:
    spec = {"configuration": bench.plugin_config(10), "headers": bench.envoy_like_headers(bench.BENCH_KEY),
            "invalid_key": bench.INVALID_KEY, "iterations": iterations}
    runs = []
    for _ in range(5):
        out = subprocess.run(["node", "--no-warnings", str(REPO / "bench" / "core_profile.mjs"),
                              str(CORE_PROFILE_WASM)], input=json.dumps(spec), capture_output=True,
                             text=True, timeout=600)
        if out.returncode != 0:
            raise bench.BenchError(f"core_profile.mjs failed: {out.stderr[-2000:]}")
        runs.append(json.loads(out.stdout))
    # Medians over the runs, step by step, in the tool's order.
    return [[name, statistics.median(run[i][1] for run in runs)] for i, (name, _) in enumerate(runs[0])]


def warm_calls(module: Path) -> dict[str, dict[str, int]]:
    """The host calls of each kind of request once warm (caches filled,
    leases taken), counted by bench/hostcalls.mjs."""
    headers = bench.envoy_like_headers
    requests = [{"name": name, "module": "filter", "headers": headers(key), "before": 300}
                for name, key in (("allowed", bench.BENCH_KEY), ("invalid key → 401", bench.INVALID_KEY),
                                  ("burst-1 key → 429", bench.SLOW_KEY))]
    spec = bench.WORK / "profile-hostcalls.json"
    spec.write_text(json.dumps({"modules": {"filter": str(module)}, "configuration": bench.plugin_config(10),
                                "requests": requests}))
    out = subprocess.run(["node", str(REPO / "bench" / "hostcalls.mjs"), str(spec)], capture_output=True,
                         text=True, timeout=300)
    if out.returncode != 0:
        raise bench.BenchError(f"hostcalls.mjs failed: {out.stderr[-2000:]}")
    return {row["name"]: {k: v for k, v in row["calls"].items() if v} for row in json.loads(out.stdout)["rows"]}


def replay_list(calls: dict[str, int]) -> str:
    """The probe's list for a request's counted calls (those the probe can
    make; sending the local reply is left out, as it is the same before and
    after)."""
    names = []
    for call, count in sorted(calls.items()):
        if call in PROBE_NAMES:
            names += [PROBE_NAMES[call]] * count
    return ",".join(names)


def probe(sets: list[tuple[str, str]], rounds: int, seconds: int, routes: int = 0) -> list[dict]:
    """Envoy CPU per request of the probe with each call list (one Envoy
    each, interleaved rounds), with `routes` non-matching regex routes in
    front of the one that answers."""
    original = bench.render_bootstrap

    def with_routes(kind, workdir, module=None, **kwargs):
        bootstrap = original(kind, workdir, module, **kwargs)
        virtual_host = bench._manager(bootstrap)["route_config"]["virtual_hosts"][0]
        virtual_host["routes"] = [{"match": {"safe_regex": {"regex": f"^/nomatch{i}/[a-z]+/[0-9]+$"}},
                                   "direct_response": {"status": 404}} for i in range(routes)] + virtual_host["routes"]
        return bootstrap

    bench.PROBE_SETS = sets
    bench.render_bootstrap = with_routes
    try:
        result = bench.run_probe(types.SimpleNamespace(probe_rounds=rounds, probe_seconds=seconds, connections=16),
                                 None, log)
    finally:
        bench.render_bootstrap = original
    if not result:
        raise bench.BenchError("the host-call probe is not built (scripts/bench.sh --profile builds it)")
    return result["rows"]


def render(results: dict) -> str:
    lines = [BEGIN, "## Where one request's time goes", "",
             f"Generated by `scripts/bench.sh --profile` (bench/request_profile.py) — do not edit by hand. "
             f"Run {results['date']} at `{results['commit']}`; {results['machine']}. Envoy on one core "
             f"(`--concurrency 1`), wrk on the other; the machine is shared, so every figure is a median "
             f"of interleaved rounds.", ""]
    lines += ["### The filter's own work in the VM (V8, no host calls)", "",
              "`bench/core-profile` times apikey-core's steps on the benchmark's request (`GET /api/v1/leads`, "
              "`x-api-key`, the 10-key table) compiled to wasm32-wasip1 as the filter is, under Node's V8; "
              "median of 5 runs. The decision includes the steps above it; what it adds besides them is the "
              "key cache look-up, the plan and scope checks, the leased token and the identity headers.", "",
              "| step | ns per request |", "|---|---:|"]
    lines += [f"| {name} | {ns:,.0f} |" for name, ns in results["core"]]
    lines += ["", "### What each host call costs Envoy", "",
              f"`bench/hostcall-probe`, {results['rounds']} interleaved rounds × {results['seconds']} s, "
              "Envoy CPU per request over the probe that makes no call. A single call sits near the noise "
              "(±0.5 µs); lists of calls are steadier.", "",
              "| host calls per request | Envoy CPU / request | over no call | per round |", "|---|---:|---:|---|"]
    for row in results["calls"]:
        lines.append(f"| {row['label']} | {row['cpu_us_per_request']:.2f} µs | {row['over_floor_us']:+.2f} µs | "
                     f"{', '.join(f'{v:.1f}' for v in row['rounds'])} |")
    lines += ["", "### Whether the header edits cost a second route match", "",
              f"The probe reading the headers, with and without the allowed request's edits (remove ×1, "
              f"add ×5), behind the one route and behind {ROUTES_IN_FRONT} regular-expression routes that do "
              f"not match.", "", "| route table | headers read | read + edited | the edits add |",
              "|---|---:|---:|---:|"]
    for label, rows in results["routes"].items():
        read, edited = rows[1]["cpu_us_per_request"], rows[2]["cpu_us_per_request"]
        lines.append(f"| {label} | {read:.2f} µs | {edited:.2f} µs | {edited - read:+.2f} µs |")
    one, many = (results["routes"][k] for k in results["routes"])
    floor_growth = many[0]["cpu_us_per_request"] - one[0]["cpu_us_per_request"]
    edit_growth = ((many[2]["cpu_us_per_request"] - many[1]["cpu_us_per_request"])
                   - (one[2]["cpu_us_per_request"] - one[1]["cpu_us_per_request"]))
    lines += ["", f"The {ROUTES_IN_FRONT} routes cost every request {floor_growth:.1f} µs (the route match Envoy "
              f"makes anyway); with the edits they cost {edit_growth:+.1f} µs more: the edits make Envoy match "
              f"the route a second time. Once per request, not per edit: the route cache is cleared, and "
              f"matched again only when the router asks. Nothing the filter can do over proxy-wasm avoids it "
              f"while it must remove the credential and add the identity headers (writing the whole map in "
              f"one call, row above, costs more than the six edits); a short route table keeps the second "
              f"match cheap, as the first."]
    lines += ["", "### The requests' host calls (warm), replayed", ""]
    lines += ["| request | build | host calls (counted by bench/hostcalls.mjs) | Envoy CPU / request | over no call |",
              "|---|---|---|---:|---:|"]
    for row in results["replays"]:
        lines.append(f"| {row['request']} | {row['build']} | {row['calls']} | {row['cpu_us_per_request']:.2f} µs | "
                     f"{row['over_floor_us']:+.2f} µs |")
    lines += ["", "### What this bounds", ""]
    floor = results["calls"][0]["cpu_us_per_request"]
    core = dict(results["core"])
    vm = {"allowed": core.get("decision, allowed (all of the above, cached record, leased token)", 0)
                     + core.get("header map parse", 0) + core.get("audit record", 0),
          "invalid key → 401": core.get("decision, invalid key (remembered absent)", 0)
                               + core.get("header map parse", 0) + core.get("audit record", 0)
                               + core.get("401 body and headers", 0)}
    for row in results["replays"]:
        if row["build"] != "this build" or row["request"] not in vm:
            continue
        host = row["over_floor_us"]
        own = vm[row["request"]] / 1000
        lines.append(f"- **{row['request']}**: its host calls cost Envoy {host:.1f} µs over a module that makes "
                     f"none, and its own work in V8 about {own:.1f} µs, so against the empty Wasm filter finished "
                     f"like it (the probe's floor, {floor:.1f} µs here) it can reach at most about "
                     f"{floor / (floor + host + own):.2f}×; the calls alone cap it at {floor / (floor + host):.2f}×.")
    lines += ["", "Every allowed request must read the headers, remove the credential, add the identity "
              "headers, leave the audit record and count itself; those calls, not the filter's own work, "
              "are most of what it adds, and proxy-wasm offers no cheaper way to make them. The native edge "
              "(Envoy dynamic module) makes the same edits without a VM boundary."]
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="an older finished apikey_filter.wasm whose calls to replay too")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=20_000, help="calls per step in the V8 profile")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    args = parser.parse_args()
    bench.WORK.mkdir(parents=True, exist_ok=True)
    facts = bench.machine()
    results = {"date": subprocess.run(["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"], capture_output=True,
                                      text=True).stdout.strip(),
               "commit": bench.git_head(), "machine": f"{facts['model']}, {facts['cpus']} cores",
               "rounds": args.rounds, "seconds": args.seconds}
    log("the filter's steps under V8")
    results["core"] = core_profile(args.iterations)
    builds = [("this build", bench.FILTER_WASM)] + ([("before", args.before)] if args.before else [])
    replays = []
    for build, module in builds:
        for request, calls in warm_calls(module).items():
            replays.append({"request": request, "build": build, "list": replay_list(calls),
                            "calls": ", ".join(f"{name.replace('proxy_', '')} ×{n}"
                                               for name, n in sorted(calls.items()) if "callback" not in name)})
    sets = SINGLE_CALLS + [(f"{r['request']}, {r['build']}", r["list"]) for r in replays]
    try:
        log("host calls in Envoy")
        rows = probe(sets, args.rounds, args.seconds)
        results["calls"] = rows[:len(SINGLE_CALLS)]
        for replay, row in zip(replays, rows[len(SINGLE_CALLS):]):
            replay.update(cpu_us_per_request=row["cpu_us_per_request"], over_floor_us=row["over_floor_us"])
        results["replays"] = replays
        route_sets = [SINGLE_CALLS[0], SINGLE_CALLS[1], SINGLE_CALLS[7]]
        results["routes"] = {}
        for label, routes in (("the one route", 0), (f"{ROUTES_IN_FRONT} regex routes in front", ROUTES_IN_FRONT)):
            log(f"route match: {label}")
            results["routes"][label] = probe(route_sets, args.rounds, args.seconds, routes)
    finally:
        bench.cleanup()
    (bench.WORK / "request-profile.json").write_text(json.dumps(results, indent=1))
    text = render(results)
    print(text)
    if not args.no_write:
        bench.write_kept_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
