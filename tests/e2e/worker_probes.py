"""Requests that reach every worker of a gateway, and when a change took
effect on each: the evidence the key_source tests (contract §8.3) judge
"enforced on every worker of every gateway" by.

Each Envoy worker runs its own Wasm VM (on the native edge, its own copy
of the module's per-thread state), and a connection is served by the
worker that accepted it, so a run of requests on fresh connections may
miss a worker by chance. Envoy counts each worker's accepted connections
(`listener.<stat_prefix>.worker_<i>.downstream_cx_total`): open a
connection, get an answer on it, read those counters, and the one that rose
names the worker. A WorkerProbe keeps one keep-alive connection pinned to
every worker that way (a client on keep-alive is also the case where a
revoked key must stop working without a new connection); fresh_sweep()
opens fresh connections until each worker has answered on one.

A Watch asks a set of checks on every pinned connection of several
gateways, round after round, with the time each request was sent and
answered. For a change it finds, per gateway, worker and check, when the
answers switched from the old outcome to the new one for good, so the
figure printed and asserted (the API's answer to the last worker's switch)
is read off recorded timestamps, not slept for. Any answer that is neither
the old nor the new outcome, or a broken invariant (`holds`), fails at
once, naming the worker.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from dataclasses import dataclass, field
from typing import Callable

from harness import Gateway, _named

# The plain listener's stats are rooted here instead of at its address: the
# harness binds both listeners to 127.0.0.1:0, which would share one name.
LISTENER_STATS = "ingress_probe"
PIN_ATTEMPTS = 400  # connections tried before giving up on reaching a worker

Outcome = tuple[int, "str | None"]  # status and error code (None on 200)
ALLOWED: Outcome = (200, None)


def name_listener_stats(bootstrap: dict) -> None:
    """Gives the plain listener its own stat prefix (pass it in a
    Gateway's `customize`)."""
    _named(bootstrap["static_resources"]["listeners"], "ingress", "listener")["stat_prefix"] = LISTENER_STATS


def with_worker_stats(customize: Callable[[dict], None]) -> Callable[[dict], None]:
    """`customize`, then name_listener_stats."""
    def both(bootstrap: dict) -> None:
        customize(bootstrap)
        name_listener_stats(bootstrap)
    return both


@dataclass(frozen=True)
class Check:
    """One request: a key (or none) on a path."""

    name: str
    key: str | None
    path: str = "/api/leads"


def _outcome(response: http.client.HTTPResponse, body: bytes) -> Outcome:
    if response.status == 200:
        return ALLOWED
    try:
        return response.status, json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return response.status, f"unparsed body {body[:80]!r}"


class WorkerProbe:
    """Keep-alive connections to one gateway, one pinned to each worker."""

    def __init__(self, gw: Gateway, label: str, workers: int):
        self.gw = gw
        self.label = label
        self.workers = workers
        self.connections: dict[int, http.client.HTTPConnection] = {}
        self._counter = re.compile(rf"^listener\.{LISTENER_STATS}\.worker_(\d+)\.downstream_cx_total$")

    def accepted(self) -> dict[int, int]:
        """Connections each worker has accepted so far."""
        counts = {}
        for name, value in self.gw.stats(f"listener.{LISTENER_STATS}.worker_").items():
            found = self._counter.match(name)
            if found:
                counts[int(found.group(1))] = value
        assert len(counts) == self.workers, f"{self.label}: per-worker listener stats {sorted(counts)}, " \
                                            f"expected {self.workers} workers"
        return counts

    def _connect(self) -> tuple[int | None, http.client.HTTPConnection, Outcome]:
        """A fresh connection, answered once (no key), and the worker that
        accepted it (None when the counters do not name exactly one)."""
        before = self.accepted()
        connection = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=10)
        outcome = self._ask_on(connection, Check("attribution", None))
        after = self.accepted()
        risen = [worker for worker in after if after[worker] != before.get(worker)]
        if len(risen) == 1 and after[risen[0]] == before[risen[0]] + 1:
            return risen[0], connection, outcome
        return None, connection, outcome

    @staticmethod
    def _ask_on(connection: http.client.HTTPConnection, check: Check) -> Outcome:
        headers = {"x-api-key": check.key} if check.key is not None else {}
        connection.request("GET", check.path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        return _outcome(response, body)

    def pin(self) -> None:
        """Opens fresh connections until every worker holds one."""
        for _ in range(PIN_ATTEMPTS):
            if len(self.connections) == self.workers:
                return
            worker, connection, _ = self._connect()
            if worker is None or worker in self.connections:
                connection.close()
            else:
                self.connections[worker] = connection
        raise AssertionError(f"{self.label}: {PIN_ATTEMPTS} connections reached only workers "
                             f"{sorted(self.connections)} of {self.workers}: {self.accepted()}")

    def ask(self, worker: int, check: Check) -> Outcome:
        """Asks on the connection pinned to `worker` (pinned again if Envoy
        closed it)."""
        for attempt in range(2):
            if worker not in self.connections:
                self.pin()
            try:
                return self._ask_on(self.connections[worker], check)
            except (http.client.HTTPException, OSError):
                self.connections.pop(worker).close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def fresh_sweep(self, checks: list[Check]) -> dict[int, dict[str, Outcome]]:
        """Every check on fresh connections until each worker has answered
        them all on one: {worker: {check name: outcome}} (the last
        connection's answers per worker)."""
        seen: dict[int, dict[str, Outcome]] = {}
        for _ in range(PIN_ATTEMPTS):
            if len(seen) == self.workers:
                return seen
            worker, connection, _ = self._connect()
            try:
                if worker is not None:
                    seen[worker] = {check.name: self._ask_on(connection, check) for check in checks}
            finally:
                connection.close()
        raise AssertionError(f"{self.label}: {PIN_ATTEMPTS} fresh connections reached only workers "
                             f"{sorted(seen)} of {self.workers}")

    def close(self) -> None:
        for connection in self.connections.values():
            connection.close()
        self.connections.clear()


@dataclass
class Answer:
    gateway: str
    worker: int
    check: str
    sent: float
    received: float
    outcome: Outcome


@dataclass
class Switch:
    """When every worker of every gateway switched, relative to `since`."""

    what: str
    latest_old_sent: float  # seconds: the last old answer's request went out
    first_new_received: float  # seconds: the last worker's final run of new answers began by then
    per_cell: dict[tuple[str, int, str], float] = field(default_factory=dict)
    flaps: list[str] = field(default_factory=list)
    rounds: int = 0

    def report(self, since: str = "the API's answer") -> str:
        gateways = sorted({cell[0] for cell in self.per_cell})
        slowest = {gw: max(t for cell, t in self.per_cell.items() if cell[0] == gw) for gw in gateways}
        text = (f"{self.what}: every worker answered the new way {self.first_new_received * 1000:.0f} ms after "
                f"{since} (last old answer sent at {self.latest_old_sent * 1000:.0f} ms; "
                + ", ".join(f"{gw} {t * 1000:.0f} ms" for gw, t in slowest.items())
                + f"; {self.rounds} rounds)")
        if self.flaps:
            text += f"; went back to the old answer before settling: {'; '.join(self.flaps)}"
        return text


class Watch:
    """Rounds of checks on every pinned worker of several gateways."""

    def __init__(self, probes: list[WorkerProbe]):
        self.probes = probes
        for probe in probes:
            probe.pin()

    def round(self, checks: list[Check]) -> list[Answer]:
        answers = []
        for probe in self.probes:
            for worker in range(probe.workers):
                for check in checks:
                    sent = time.monotonic()
                    outcome = probe.ask(worker, check)
                    answers.append(Answer(probe.label, worker, check.name, sent, time.monotonic(), outcome))
        return answers

    @staticmethod
    def _assert_holds(answers: list[Answer], holds: dict[Check, Outcome], since: float, what: str) -> None:
        expected = {check.name: outcome for check, outcome in holds.items()}
        for answer in answers:
            if answer.check in expected and answer.outcome != expected[answer.check]:
                raise AssertionError(
                    f"{what}: {answer.gateway} worker {answer.worker} answered {answer.check!r} with "
                    f"{answer.outcome}, expected {expected[answer.check]} at all times "
                    f"({(answer.sent - since) * 1000:.0f} ms after the change)")

    def expect(self, what: str, expected: dict[Check, Outcome]) -> None:
        """One round: every worker answers each check as `expected`."""
        self._assert_holds(self.round(list(expected)), expected, time.monotonic(), what)

    def hold(self, what: str, holds: dict[Check, Outcome], until: Callable[[], bool], timeout: float) -> int:
        """Rounds of `holds` on every worker until `until()` (checked
        between rounds), then one more round; every answer must be the
        expected one. Returns the rounds made."""
        start = time.monotonic()
        deadline = start + timeout
        checks = list(holds)
        rounds = 0
        while True:
            self._assert_holds(self.round(checks), holds, start, what)
            rounds += 1
            if until():
                self._assert_holds(self.round(checks), holds, start, what)
                return rounds + 1
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: the condition did not come within {timeout} s ({rounds} rounds)")

    def await_switch(self, what: str, since: float, changes: dict[Check, tuple[Outcome | frozenset, Outcome]],
                     holds: dict[Check, Outcome] | None = None, timeout: float = 10.0,
                     settle_rounds: int = 10) -> Switch:
        """Rounds until every (gateway, worker, change) has answered the new
        outcome in each of its last `settle_rounds` rounds; `since` is the
        monotonic time of the API's answer. The old outcome may be a
        frozenset of outcomes (a key created then revoked by a burst of
        changes may be seen as either). Answers other than the old or new
        outcomes, and broken `holds`, fail at once."""
        holds = holds or {}
        checks = list(changes) + list(holds)
        outcomes = {check.name: pair for check, pair in changes.items()}
        # Per cell: the answers of its current run of new outcomes, and the
        # last old answer.
        run: dict[tuple[str, int, str], list[Answer]] = {}
        last_old: dict[tuple[str, int, str], Answer] = {}
        flaps: list[str] = []
        deadline = since + timeout
        rounds = 0
        while True:
            answers = self.round(checks)
            rounds += 1
            self._assert_holds(answers, holds, since, what)
            for answer in answers:
                if answer.check not in outcomes:
                    continue
                old, new = outcomes[answer.check]
                cell = (answer.gateway, answer.worker, answer.check)
                if answer.outcome == new:
                    run.setdefault(cell, []).append(answer)
                elif answer.outcome in (old if isinstance(old, frozenset) else {old}):
                    if run.get(cell):
                        flaps.append(f"{answer.gateway} worker {answer.worker} {answer.check!r} at "
                                     f"{(answer.sent - since) * 1000:.0f} ms")
                    run[cell] = []
                    last_old[cell] = answer
                else:
                    raise AssertionError(
                        f"{what}: {answer.gateway} worker {answer.worker} answered {answer.check!r} with "
                        f"{answer.outcome}, neither the old {old} nor the new {new} "
                        f"({(answer.sent - since) * 1000:.0f} ms after the API's answer)")
            cells = {(probe.label, worker, check.name) for probe in self.probes
                     for worker in range(probe.workers) for check in changes}
            if all(len(run.get(cell, [])) >= settle_rounds for cell in cells):
                per_cell = {cell: run[cell][0].received - since for cell in cells}
                latest_old = max((answer.sent - since for answer in last_old.values()), default=0.0)
                return Switch(what, max(latest_old, 0.0), max(per_cell.values()), per_cell, flaps, rounds)
            if time.monotonic() > deadline:
                pending = sorted(cell for cell in cells if len(run.get(cell, [])) < settle_rounds)
                latest = {(a.gateway, a.worker, a.check): a.outcome for a in answers}
                raise AssertionError(f"{what}: not on every worker within {timeout} s; still switching: "
                                     + ", ".join(f"{gw} worker {w} {c!r} answering {latest.get((gw, w, c))}"
                                                 for gw, w, c in pending))
