"""Token buckets under contention in real Envoy (issue 8, item 4): eight
workers, a few hundred requests in flight at once, each on its own
connection, against buckets that refill while the test runs.

Every bucket is kept saturated (its key is asked far more often than it
refills), so the number it admits is known to within one token:

    burst + floor(rate × (T_last − T_first))

where T_first is the instant Envoy took the bucket's first token and T_last
the instant it handled the bucket's last request. The client cannot see
those instants, but it can bracket them:

- upper bound: T_first is after the first request was sent and T_last
  before the last answer came back, so
  admitted ≤ burst + rate × (last answer − first send);
- lower bound: T_first is before the first answer came back and T_last
  after the last request was sent, so
  admitted ≥ burst + rate × (last send − first answer) − 1.

Neither bound depends on how fast this machine is; slowness only widens the
gap between them. A bucket that went unasked long enough to fill up again
(burst / rate seconds) would lose tokens legitimately, so the test checks
that no key ever waited that long between answers before it holds the lower
bound against the filter.

The CAS retries and contention denials the workers' races cause are
counted by the filter; the stats must carry them and agree with what the
clients saw.
"""

import asyncio
import hashlib
import time
from dataclasses import dataclass, field

from harness import Gateway

WORKERS = 8
IN_FLIGHT = 256  # requests open at once, each on its own connection
DURATION = 5.0  # seconds of load
STATS = "apikey."  # the filter's metrics (Gateway.metrics)


@dataclass(frozen=True)
class Bucket:
    raw_key: str
    burst: int
    per_second: int

    @property
    def key_id(self) -> str:
        return "key_" + self.raw_key[-6:]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw_key.encode()).hexdigest()


# Different shapes, so a bucket that borrowed another's rate or burst shows.
# Each takes at least 2 s to refill from empty, so only a stall of 2 s (not
# a busy machine's usual hiccups) could let one fill up and lose tokens.
BUCKETS = [
    Bucket("sk_live_Contention00000000000ka", burst=20, per_second=10),
    Bucket("sk_live_Contention00000000000kb", burst=30, per_second=15),
    Bucket("sk_live_Contention00000000000kc", burst=40, per_second=20),
    Bucket("sk_live_Contention00000000000kd", burst=40, per_second=5),
]


def config() -> dict:
    return {"keys": [{
        "id": bucket.key_id, "sha256": bucket.sha256, "tenant": "t",
        "rate_limits": {"*": {"requests": bucket.per_second, "period_seconds": 1, "burst": bucket.burst}},
    } for bucket in BUCKETS]}


@dataclass
class Seen:
    """What the clients saw of one bucket."""
    first_send: float = float("inf")
    last_send: float = 0.0
    first_answer: float = float("inf")
    last_answer: float = 0.0
    answers: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)
    odd: list[str] = field(default_factory=list)  # bodies of answers other than 200 and 429

    @property
    def admitted(self) -> int:
        return self.statuses.get(200, 0)

    def longest_silence(self) -> float:
        times = sorted(self.answers)
        return max((b - a for a, b in zip(times, times[1:])), default=float("inf"))


async def one_request(port: int, raw_key: str) -> tuple[int, bytes]:
    """One GET on a new connection; returns the status and the body. Reads
    to the end of the body (Content-Length), not to the close: after a local
    reply Envoy delays closing by a second."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /contention HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n"
                     b"x-api-key: " + raw_key.encode() + b"\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length) if length else b""
        return status, body
    finally:
        writer.close()


async def load(port: int, duration: float) -> tuple[dict[str, Seen], list[str]]:
    """IN_FLIGHT clients, each sending to the buckets in turn until the
    deadline; every request is timed around its send and its answer."""
    seen = {bucket.raw_key: Seen() for bucket in BUCKETS}
    failures: list[str] = []
    deadline = time.monotonic() + duration

    async def client(index: int) -> None:
        turn = index
        while time.monotonic() < deadline:
            bucket = BUCKETS[turn % len(BUCKETS)]
            turn += 1
            record = seen[bucket.raw_key]
            sent = time.monotonic()
            try:
                status, body = await asyncio.wait_for(one_request(port, bucket.raw_key), 20)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
                failures.append(f"{bucket.key_id}: {error!r}")
                continue
            answered = time.monotonic()
            record.first_send = min(record.first_send, sent)
            record.last_send = max(record.last_send, sent)
            record.first_answer = min(record.first_answer, answered)
            record.last_answer = max(record.last_answer, answered)
            record.answers.append(answered)
            record.statuses[status] = record.statuses.get(status, 0) + 1
            if status == 429:
                code = body.split(b'"code":"', 1)[-1].split(b'"', 1)[0].decode(errors="replace")
                record.codes[code] = record.codes.get(code, 0) + 1
            elif status != 200:
                record.odd.append(f"{status} {body[:200]!r}")

    await asyncio.gather(*(client(i) for i in range(IN_FLIGHT)))
    return seen, failures


def test_eight_workers_under_contention_admit_burst_plus_refill_within_one_token(module):
    with Gateway(module, config=config(), concurrency=WORKERS) as gw:
        before = gw.metrics(STATS)
        seen, failures = asyncio.run(load(gw.port, DURATION))
        after = gw.metrics(STATS)

    assert not failures, f"{len(failures)} requests failed: {failures[:5]}"
    report = []
    for bucket in BUCKETS:
        record = seen[bucket.raw_key]
        requests = sum(record.statuses.values())
        outer = record.last_answer - record.first_send
        inner = record.last_send - record.first_answer
        most = bucket.burst + bucket.per_second * outer
        least = bucket.burst + bucket.per_second * inner - 1
        report.append(f"{bucket.key_id}: {requests} requests, admitted {record.admitted} "
                      f"in [{least:.1f}, {most:.1f}] (windows {inner:.3f}..{outer:.3f} s), "
                      f"statuses {record.statuses}, 429 codes {record.codes}")
        assert set(record.statuses) <= {200, 429}, f"{bucket.key_id}: unexpected answers {record.odd[:3]}"
        assert record.admitted <= most, f"over-admitted: {report[-1]}"
        # The lower bound holds only while the bucket stays saturated: demand
        # at least twice the refill, and never silent long enough to refill.
        assert requests >= 2 * most, f"not saturated (too few requests for the bound): {report[-1]}"
        silence = record.longest_silence()
        assert silence < bucket.burst / bucket.per_second, \
            f"{bucket.key_id} went {silence:.2f} s without an answer, long enough to refill: {report[-1]}"
        assert record.admitted >= least, f"under-admitted (tokens lost): {report[-1]}"
    print("\n" + "\n".join(report))

    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    conflicts = delta.get(STATS + "rate_limit.cas_conflicts")
    contention = delta.get(STATS + "rate_limit.contention_denials")
    print(f"CAS conflicts retried: {conflicts}, contention denials: {contention}")
    assert conflicts is not None and contention is not None, \
        f"the contention stats are missing: {sorted(after)}"
    assert conflicts >= 0 and contention >= 0
    # A contention denial answers 429 rate_limited too; every one of them
    # gave up after the retries, so each carries MAX_CAS_RETRIES + 1 conflicts.
    assert conflicts >= 9 * contention, f"{conflicts} conflicts for {contention} contention denials"
    admitted = sum(record.admitted for record in seen.values())
    limited = sum(record.statuses.get(429, 0) for record in seen.values())
    assert delta.get(STATS + "requests.allowed") == admitted, \
        f"allowed counter {delta.get(STATS + 'requests.allowed')} != {admitted} admitted answers"
    assert delta.get(STATS + "requests.denied.rate_limited") == limited, \
        f"rate_limited counter {delta.get(STATS + 'requests.denied.rate_limited')} != {limited} 429 answers"
