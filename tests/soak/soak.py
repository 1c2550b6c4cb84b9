"""The soak (issue 8, item 5): real Envoy with 4 workers under steady load
from several client processes, a new configuration every second and an
invalid one every 10 s, for a number of minutes.

    .venv/bin/python tests/soak/soak.py --minutes 10      (scripts/soak.sh runs this)

Every valid update (a *round*) changes the answer of known keys:

- rotating keys R0..R19: round r removes R[r mod 20] and brings back the
  one round r-5 removed (a key disappears, a "new" key appears);
- revocable keys V0..V19: round r revokes V[r mod 20] and un-revokes the
  one round r-5 revoked;
- key X holds scope leads:read for 5 rounds, then not for 5 (200 / 403 on
  /leads);
- the plan of keys L0..L3 changes its limit every round (1, 2 or 3 per
  2 s; 200 / 429);
- S0..S3 never change; unknown and missing keys are asked too.

Every round also carries its number (a key's `name`), so no two
configurations are the same, yet the set of key hashes stays the same:
the shared data the filter writes must stop growing after warm-up. Each
change holds for 5 rounds, so there are seconds after the 1-s grace in
which a stale answer would show.

Clients send each request on a new connection and log when it was sent,
when it was answered, what it asked and what came back; the driver logs
when each round's write started and when it finished. Afterwards each
answer is judged against the rounds (tests/soak/judge.py, unit-tested in
tests/soak/test_judge.py): with u the newest round whose write finished
more than 1 s before the request was sent and w the newest whose write
started before its answer arrived, the answer must be what some round in
u..w says. An answer that only an older round explains is a *stale
decision*; one no round explains is *wrong*. Both must be 0, like 5xx and
failed connections. Half the requests ask keys that a round 1-2 rounds old
changed; a request whose key changed in one of the 5 rounds up to u, and
whose pre-change answer no round in u..w gives, counts as a *check*: it
would have caught a stale decision.

Memory is sampled after warm-up (once the first invalid configuration was
refused), in the middle and at the end: Envoy's RSS must not grow by more
than 10% from the middle to the end, nor its heap (tcmalloc's allocated
bytes) by more than 10% plus Envoy's own cost of an update, and the number
of Wasm VMs must not change. Envoy's own cost: every ECDS update of a Wasm
filter grows its heap by about 1.5 KB at four workers, with the SDK's empty
filter too (tests/e2e/test_update_memory.py holds the filter to that). The shared-data
entries themselves cannot be counted from outside (no ABI or stat lists
them); the table below gives the count the design bounds them to.

Exit status 0 when every must-hold held, 1 otherwise; the table says which.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import pickle
import random
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
import harness  # noqa: E402  (the e2e harness: Gateway, ECDS writing)
from judge import Round, judge  # noqa: E402  (this directory, first on sys.path when run as a script)

ROTATING = 20
HOLD = 5  # rounds a change holds before it is undone
STABLE = 4
LIMITED = 4
WARMUP_TICKS = 11  # the first invalid configuration goes out at tick 10
GROWTH_ALLOWED = 1.10
# Heap bytes Envoy itself keeps per ECDS update at 4 workers (~1.5 KB with
# the empty filter, docs/reliability.md), with a margin.
ENVOY_BYTES_PER_UPDATE = 2048


def raw(name: str) -> str:
    return f"sk_live_Soak{name:0>22}"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def key(short: str, **fields) -> dict:
    return {"id": f"key_{short}", "sha256": sha(raw(short)), "tenant": "soak", **fields}


def changed(round_: int, index: int) -> bool:
    """Whether R[index] is removed and V[index] revoked in round `round_`."""
    return (round_ - index) % ROTATING < HOLD


def config(round_: int) -> dict:
    """The configuration of round `round_` (see the module docs)."""
    keys = [key(f"S{i}", name=f"round {round_}") for i in range(STABLE)]
    keys += [key(f"R{i}") for i in range(ROTATING) if not changed(round_, i)]
    keys += [key(f"V{i}", revoked=changed(round_, i)) for i in range(ROTATING)]
    keys.append(key("X", scopes=["leads:read"] if (round_ // HOLD) % 2 == 0 else ["leads:write"]))
    keys += [key(f"L{i}", plan="metered") for i in range(LIMITED)]
    # Each L key is asked about twice a second: these limits deny some.
    tokens = 1 + round_ % 3
    return {
        "keys": keys,
        "plans": {"metered": {"rate_limits": {"*": {"requests": tokens, "period_seconds": 2, "burst": tokens}}}},
        "rules": [{"path_prefix": "/leads", "scope": "leads:read"}],
    }


def invalid_config(round_: int, tick: int) -> dict:
    """Round `round_`'s configuration with a key naming a plan that does not
    exist: the filter must refuse it and keep serving round `round_`."""
    broken = config(round_)
    broken["keys"].append(key("Broken", plan=f"gold{tick}"))
    return broken


def expected(target: str, round_: int) -> set[str]:
    """The answers round `round_` allows for `target`."""
    kind, index = target[0], target[1:]
    if kind == "R":
        return {"invalid_key" if changed(round_, int(index)) else "200"}
    if kind == "V":
        return {"key_revoked" if changed(round_, int(index)) else "200"}
    if kind == "X":
        return {"200" if (round_ // HOLD) % 2 == 0 else "insufficient_scope"}
    if kind == "L":
        return {"200", "rate_limited"}
    if kind == "S":
        return {"200"}
    if target == "unknown":
        return {"invalid_key"}
    if target == "none":
        return {"missing_credentials"}
    raise ValueError(target)


PROBES = ([f"S{i}" for i in range(STABLE)] + [f"R{i}" for i in range(ROTATING)]
          + [f"V{i}" for i in range(ROTATING)] + ["X"] + [f"L{i}" for i in range(LIMITED)]
          + ["unknown", "none"])


def answers(round_: int) -> dict[str, frozenset[str]]:
    """What round `round_` allows for every probe, as the judge takes it."""
    return {probe: frozenset(expected(probe, round_)) for probe in PROBES}


def choose_probe(chooser: random.Random, round_: int) -> str:
    """What a client asks while round `round_` is the newest: half the time
    a key the rounds 1 and 2 before it changed (past the 1-s grace, so a
    stale answer would count), otherwise any probe."""
    if chooser.random() < 0.5:
        back = chooser.choice([1, 2, HOLD + 1, HOLD + 2])  # removed / restored 1-2 rounds ago
        return chooser.choice([f"R{(round_ - back) % ROTATING}", f"V{(round_ - back) % ROTATING}", "X"])
    return chooser.choice(PROBES)


def request_bytes(target: str) -> bytes:
    path = b"/leads" if target == "X" else b"/soak"
    lines = [b"GET " + path + b" HTTP/1.1", b"host: localhost", b"connection: close"]
    if target == "unknown":
        lines.append(b"x-api-key: " + raw("Unknown").encode())
    elif target != "none":
        lines.append(b"x-api-key: " + raw(target).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def ask(port: int, target: str) -> str:
    """One request on a new connection: "200", the error code of a JSON
    denial, or "<status>" for any other answer. Reads to the end of the
    body, not to the close (Envoy delays closing after a local reply)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_bytes(target))
        data = b""
        while True:
            head, separator, body = data.partition(b"\r\n\r\n")
            if separator:
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(body) >= length:
                    break
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(data)} bytes")
            data += chunk
    status = int(head.split(b" ", 2)[1])
    if status == 200:
        return "200"
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return str(status)


def client(port: int, round_value, stop, rate: float, seed: int, out: str) -> None:
    """Sends about `rate` requests a second until `stop`, each to a probe
    choose_probe() picks. Writes [(sent, answered, target, answer)] to
    `out`."""
    chooser = random.Random(seed)
    log = []
    next_send = time.monotonic()
    while not stop.is_set():
        target = choose_probe(chooser, round_value.value)
        # One clock for every process (CLOCK_MONOTONIC): sent before the
        # connection opens, answered after the response was read, so both
        # errors widen the window the judge allows.
        sent = time.monotonic()
        try:
            answer = ask(port, target)
        except OSError as error:
            answer = f"error: {error!r}"
        log.append((sent, time.monotonic(), target, answer))
        next_send += 1 / rate
        pause = next_send - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            next_send = time.monotonic()  # behind: do not burst to catch up
    with open(out, "wb") as file:
        pickle.dump(log, file)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def sample(gw: harness.Gateway, when: str, tick: int) -> dict:
    stats = gw.stats()
    vms = {name: value for name, value in stats.items() if name.startswith("wasm.") and name.endswith(".active")}
    return {
        "when": when, "tick": tick,
        # The harness keeps Envoy's process private; its pid is all we need.
        "rss_kib": rss_kib(gw._envoy.pid),  # noqa: SLF001
        "heap_allocated": int(json.loads(gw._admin_text("/memory"))["allocated"]),  # noqa: SLF001 (live, not the 5-s stat)
        "wasm_vms": sum(vms.values()),
        "keys_loaded": stats.get("wasmcustom.apikey.keys_loaded", 0),
    }


def design_entries() -> int:
    """The shared-data entries the design allows for this key pool
    (README, "Shared-data storage and its bounds"): the head, the last
    refused digest, two bank records per key hash, two bank settings, one
    bucket entry per limited key id and the list of known bucket ids."""
    hashes = STABLE + ROTATING + ROTATING + 1 + LIMITED + 0  # the broken key is never published
    return 1 + 1 + 2 * hashes + 2 + LIMITED + 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--workers", type=int, default=4, help="Envoy --concurrency")
    parser.add_argument("--clients", type=int, default=3, help="client processes")
    parser.add_argument("--rate", type=float, default=60, help="requests per second per client")
    args = parser.parse_args()
    ticks = max(int(args.minutes * 60), 3 * WARMUP_TICKS)
    middle_tick = WARMUP_TICKS + (ticks - WARMUP_TICKS) // 2

    module = harness.build_module()
    workroot = Path(os.environ.get("SOAK_DIR") or harness.tempfile.mkdtemp(prefix="soak-"))
    workroot.mkdir(parents=True, exist_ok=True)
    harness.set_work_root(workroot)
    failures: list[str] = []
    samples: list[dict] = []
    # Round 0 is the configuration Envoy starts with: in place before any request.
    rounds: list[Round] = [Round(float("-inf"), float("-inf"), answers(0))]
    apply_seconds: list[float] = []
    write_seconds: list[float] = []
    refused = accepted = 0
    started = time.monotonic()
    with harness.Gateway(module, config=config(0), concurrency=args.workers) as gw:
        bootstrap = json.loads((gw.workdir / "bootstrap.json").read_text())
        ecds_file = gw.ecds_dir / harness.ECDS_FILE
        before = gw.stats("wasmcustom.apikey.")
        round_value = multiprocessing.Value("l", 0)
        stop = multiprocessing.Event()
        outs = [str(gw.workdir / f"client{i}.pickle") for i in range(args.clients)]
        clients = [multiprocessing.Process(target=client, args=(gw.port, round_value, stop, args.rate, i, out))
                   for i, out in enumerate(outs)]
        for process in clients:
            process.start()

        def push(configuration: dict) -> tuple[bool, float, float]:
            """Writes `configuration`; whether Envoy applied it, and when the
            write started and finished. Envoy may apply it, and answer with
            it, before this process runs again to note the finish: the judge
            counts a round from its start (issue 16)."""
            counters = gw.ecds_counters()
            write_started = time.monotonic()
            harness.write_ecds(ecds_file, harness.ecds_document(bootstrap, configuration))
            write_finished = time.monotonic()
            return gw.await_update(counters), write_started, write_finished

        try:
            round_ = 0
            next_tick = time.monotonic() + 1
            for tick in range(1, ticks + 1):
                time.sleep(max(next_tick - time.monotonic(), 0))
                next_tick += 1
                round_ += 1
                ok, write_started, write_finished = push(config(round_))
                rounds.append(Round(write_started, write_finished, answers(round_)))
                round_value.value = round_
                apply_seconds.append(time.monotonic() - write_finished)
                write_seconds.append(write_finished - write_started)
                if ok:
                    accepted += 1
                else:
                    failures.append(f"round {round_} refused")
                if tick % 10 == 0:
                    if push(invalid_config(round_, tick))[0]:
                        failures.append(f"the invalid configuration of tick {tick} was accepted")
                    else:
                        refused += 1
                if tick in (WARMUP_TICKS, middle_tick, ticks):
                    when = {WARMUP_TICKS: "after warm-up", middle_tick: "middle", ticks: "end"}[tick]
                    samples.append(sample(gw, when, tick))
                    print(f"[{time.monotonic() - started:6.0f} s] {when}: {samples[-1]}", flush=True)
        finally:
            stop.set()
            for process in clients:
                process.join(timeout=30)
        after = gw.stats("wasmcustom.apikey.")
        ecds = gw.ecds_counters()
        still_running = gw.running()
        log_path = gw.log_path
        rounds_path = gw.workdir / "rounds.pickle"

    log = []
    for out in outs:
        with open(out, "rb") as file:
            log += pickle.load(file)
    # Next to the clients' logs, so a stale or wrong decision can be judged
    # again, or looked at, after the run (judge.judge(rounds, log)).
    with open(rounds_path, "wb") as file:
        pickle.dump(rounds, file)
    judged = judge(rounds, log)
    verdicts = judged.counts
    elapsed = time.monotonic() - started

    def grew(name: str) -> int:
        return after.get("wasmcustom.apikey." + name, 0) - before.get("wasmcustom.apikey." + name, 0)

    # --- must-holds ---
    if not still_running:
        failures.append("Envoy or the upstream exited")
    for name in ("5xx", "errors", "stale", "wrong"):
        if verdicts[name]:
            failures.append(f"{verdicts[name]} {name}")
    for kind in ("errors", "stale", "wrong"):
        for example in judged.examples.get(kind, []):
            failures.append(f"{kind}: {example}")
    if verdicts["checks"] < 10 * ticks:
        failures.append(f"only {verdicts['checks']} requests could have shown a stale decision")
    if not verdicts["answer rate_limited"]:
        failures.append("no request was rate limited: the changing limits were not exercised")
    if ecds["update_rejected"] != refused or grew("config.refused") != refused:
        failures.append(f"refusals not counted: {refused} refused, ECDS {ecds}, config.refused +{grew('config.refused')}")
    if grew("config.accepted") != accepted:
        failures.append(f"config.accepted +{grew('config.accepted')} for {accepted} accepted rounds")
    expected_keys = len(config(round_)["keys"])
    if samples and samples[-1]["keys_loaded"] != expected_keys:
        failures.append(f"keys_loaded {samples[-1]['keys_loaded']} at the end, the table holds {expected_keys}")
    if len(samples) == 3:
        _, middle, end = samples
        if end["rss_kib"] > middle["rss_kib"] * GROWTH_ALLOWED:
            failures.append(f"RSS grew from {middle['rss_kib']} KiB (middle) to {end['rss_kib']} KiB (end)")
        updates_between = (end["tick"] - middle["tick"]) * 1.1  # an invalid one every 10 s
        if end["heap_allocated"] > middle["heap_allocated"] * GROWTH_ALLOWED + ENVOY_BYTES_PER_UPDATE * updates_between:
            failures.append(f"heap grew from {middle['heap_allocated']} (middle) to {end['heap_allocated']} (end), "
                            f"more than Envoy's own {ENVOY_BYTES_PER_UPDATE} bytes per update")
        if len({s["wasm_vms"] for s in samples}) != 1:
            failures.append(f"Wasm VM count changed: {[s['wasm_vms'] for s in samples]}")

    # --- the table ---
    by_answer = sorted((k[len("answer "):], v) for k, v in verdicts.items() if k.startswith("answer "))
    apply_seconds.sort()
    write_seconds.sort()
    rows = [
        ("duration", f"{elapsed:.0f} s ({ticks} ticks), Envoy --concurrency {args.workers}, "
                     f"{args.clients} client processes at {args.rate:g} req/s each, {os.cpu_count()} cores"),
        ("requests", f"{verdicts['requests']} ({verdicts['requests'] / elapsed:.0f}/s)"),
        ("answers", ", ".join(f"{answer} {count}" for answer, count in by_answer)),
        ("5xx", verdicts["5xx"]),
        ("connection errors", verdicts["errors"]),
        ("updates", f"{accepted} accepted, {refused} invalid refused; ECDS {ecds}"),
        ("write start -> end (the rename done)", f"median {write_seconds[len(write_seconds) // 2]:.3f} s, "
                                                 f"max {write_seconds[-1]:.3f} s"),
        ("write end -> every worker applied", f"median {apply_seconds[len(apply_seconds) // 2]:.3f} s, "
                                              f"max {apply_seconds[-1]:.3f} s"),
        ("checks (requests 1-5 s after an update that changed their key)", verdicts["checks"]),
        ("ok decisions (a round in u..w gives them)", verdicts["ok"]),
        ("stale decisions (only rounds superseded >1 s before the send give them)", verdicts["stale"]),
        ("wrong decisions (no round up to w gives them)", verdicts["wrong"]),
    ]
    if len(samples) == 3:
        _, middle, end = samples
        per_update = (end["heap_allocated"] - middle["heap_allocated"]) / ((end["tick"] - middle["tick"]) * 1.1)
        rows.append(("heap growth middle -> end", f"{per_update:.0f} bytes per update"))
    for entry in samples:
        rows.append((f"Envoy at tick {entry['tick']} ({entry['when']})",
                     f"RSS {entry['rss_kib'] / 1024:.1f} MiB, heap {entry['heap_allocated'] / 2**20:.1f} MiB, "
                     f"Wasm VMs {entry['wasm_vms']}, keys_loaded {entry['keys_loaded']}"))
    rows.append(("shared-data entries (design bound, not observable)", design_entries()))
    width = max(len(name) for name, _ in rows)
    print("\n" + "\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    print(f"\nEnvoy log: {log_path}\nrounds and request logs: {rounds_path.parent}/{{rounds,client*}}.pickle")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print("\nall must-holds held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
