#!/usr/bin/env python3
"""A/B of two builds of the apikey filter in the same run: how long each
takes to enforce a large table, and what an allowed request costs in
Envoy's CPU. For changes that must not make either worse (a refactor's
"configure 100,000 keys at most 1.3x as long", "the allowed request's CPU
does not grow"): the machine is shared and noisy, so both modules are
measured round by round in alternating order and only the ratio of their
medians is reported.

    .venv/bin/python bench/compare_modules.py OLD.wasm NEW.wasm [--keys 100000] [--rounds 5]

Each round, for each module (A B, then B A, ...): a fresh Envoy
(`--concurrency 1`, pinned like scripts/bench.sh's) is started with the
module and no configuration, the `keys`-key table is renamed in as ECDS
and timed to enforcement (a key that only it holds answered 200), then wrk
drives allowed requests for `--seconds` and Envoy's utime+stime per
request is read. Both modules must be finished ones (scripts/lib.sh
build_module; copy the old one aside before rebuilding). bench/bench.py
holds the method's details; this reuses its Envoy, ECDS and wrk code.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the benchmark's own machinery)


def measure(module: Path, label: str, keys: int, seconds: float, connections: int, index: int) -> dict:
    """One round of one module: enforcement of the table, then throughput."""
    # bench.Envoy works in WORK/<name>-c<concurrency>; the bootstrap names its ECDS file there.
    bootstrap = bench.render_bootstrap("wasm", bench.WORK / f"ab-{label}-{index}-c1", module)
    envoy = bench.Envoy(f"ab-{label}-{index}", bootstrap, initial={"resources": []})
    envoy.start()
    try:
        fresh = bench.new_key(keys)
        enforced = envoy.time_to_enforcement(bench.plugin_config(keys, extra_key=fresh), fresh, timeout=300)
        if envoy.request(bench.BENCH_KEY) != 200:
            raise bench.BenchError(f"{label}: the bench key is not allowed")
        bench.run_wrk(envoy, bench.BENCH_KEY, min(seconds, 3), connections)  # warm-up
        load = bench.run_wrk(envoy, bench.BENCH_KEY, seconds, connections)
        if load["non_2xx"] or load["socket_errors"]:
            raise bench.BenchError(f"{label}: {load['non_2xx']} non-2xx, {load['socket_errors']} socket errors")
        return {"enforced_s": enforced["enforced_s"], "cpu_us_per_request": load["cpu_us_per_request"],
                "rps": load["rps"]}
    finally:
        envoy.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10, help="wrk seconds per run (whole: wrk takes no fraction)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = parser.parse_args()
    # Copies, so a build in the same checkout cannot swap a module mid-run.
    bench.WORK.mkdir(parents=True, exist_ok=True)
    modules = {}
    for label, source in (("old", args.old), ("new", args.new)):
        modules[label] = bench.WORK / f"ab-{label}.wasm"
        shutil.copyfile(source, modules[label])
    results: dict[str, list[dict]] = {"old": [], "new": []}
    try:
        for index in range(args.rounds):
            order = ("old", "new") if index % 2 == 0 else ("new", "old")
            for label in order:
                result = measure(modules[label], label, args.keys, args.seconds, args.connections, index)
                results[label].append(result)
                print(f"round {index + 1} {label}: enforced {result['enforced_s']:.2f} s, "
                      f"{result['cpu_us_per_request']:.1f} us CPU/request, {result['rps']:.0f} rps", flush=True)
    finally:
        bench.cleanup()
    summary = {"keys": args.keys, "rounds": args.rounds,
               "module_bytes": {label: path.stat().st_size for label, path in modules.items()}}
    for metric in ("enforced_s", "cpu_us_per_request", "rps"):
        medians = {label: statistics.median(r[metric] for r in results[label]) for label in results}
        summary[metric] = {**medians, "new_over_old": medians["new"] / medians["old"]}
    summary["rounds_detail"] = results
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds_detail"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
