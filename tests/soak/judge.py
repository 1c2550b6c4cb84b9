"""How the soak judges its answers (issue 16): a pure function of the rounds
written and the requests logged, so it can be tested on synthetic logs.

A *round* is one valid configuration; the driver records when its write
started (before the file was written) and when it finished (after the
rename returned), both with time.monotonic(), which on Linux is one clock
for every process of the machine. A request is logged with when it was
sent (before connecting) and when it was answered (after the response was
read), with the same clock.

The rule, for a request sent at s and answered at a:

- u is the newest round whose write *finished* more than `grace` seconds
  before s (finished < s - grace): Envoy must have been following it, or
  a newer one, when the request arrived;
- w is the newest round whose write *started* before a (started < a): no
  later round could have reached Envoy before the answer did. Using the
  start, not the end, matters: the driver can be descheduled right after
  the rename while Envoy applies the round and answers with it;
- the answer is *ok* when some round in u..w gives it, *stale* when only
  rounds older than u give it (a decision more than `grace` after the
  update that changed it, still following the old table), *wrong* when no
  round up to w gives it (nor, then, any older one).

Every timing error of the measurement widens u..w: s is taken before the
request really leaves and a after it really came back; started is taken
before the rename and finished after it. So the rule never blames the
filter for the driver's or the clients' scheduling, yet a filter still
answering from a round superseded more than `grace` earlier is caught.

A request is also a *check* when its probe's answer changed in one of the
`recent` rounds up to u and no round in u..w gives the answer from before
that change: such a request would have shown a stale table.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

GRACE_SECONDS = 1.0
RECENT_ROUNDS = 5
EXAMPLES_KEPT = 5


@dataclass(frozen=True)
class Round:
    """One configuration: when its write started and finished, and for
    each probe the set of answers it allows (a rate-limited key allows
    both 200 and rate_limited)."""

    write_started: float
    write_finished: float
    answers: Mapping[str, frozenset[str]]


class Request(NamedTuple):
    """One logged request; the clients log exactly these tuples."""

    sent: float
    answered: float
    probe: str
    answer: str


@dataclass
class Verdicts:
    """The judge's result: counts (requests, ok, stale, wrong, checks,
    errors, 5xx, and "answer <answer>" for every answer seen) and up to
    EXAMPLES_KEPT described examples of each of stale, wrong and errors."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, example: Callable[[], str]) -> None:
        """Counts one `kind`; describes it (lazily: a broken filter can
        make every answer wrong) while fewer than EXAMPLES_KEPT are kept."""
        self.counts[kind] += 1
        kept = self.examples.setdefault(kind, [])
        if len(kept) < EXAMPLES_KEPT:
            kept.append(example())


def is_error(answer: str) -> bool:
    """A request that got no complete answer (the client logs "error: ...")."""
    return answer.startswith("error")


def judge(rounds: list[Round], log: Iterable[tuple[float, float, str, str]],
          grace: float = GRACE_SECONDS, recent: int = RECENT_ROUNDS) -> Verdicts:
    """Sorts every request of `log` into ok / stale / wrong (or errors, for
    no answer), by the rule in the module docs. `rounds[0]` is the
    configuration Envoy started with (its times may be -inf); the rounds
    must be in the order they were written, each started after the
    previous one finished. Raises ValueError when they are not, or when a
    request asks a probe the rounds do not answer."""
    check_rounds(rounds)
    started = [r.write_started for r in rounds]
    finished = [r.write_finished for r in rounds]
    first_giving = first_rounds_giving(rounds)
    verdicts = Verdicts()
    for request in map(Request._make, log):
        verdicts.counts["requests"] += 1
        if is_error(request.answer):
            verdicts.counts["answer error"] += 1
            verdicts.note("errors", lambda: f"{request.probe}: {request.answer} (sent {request.sent:.3f})")
            continue
        verdicts.counts["answer " + request.answer] += 1
        if request.answer.isdigit() and int(request.answer) >= 500:
            verdicts.counts["5xx"] += 1
        if request.probe not in rounds[0].answers:
            raise ValueError(f"no round says what probe {request.probe!r} must answer")
        # u may lie before round 0 only if round 0 itself was written in the
        # last `grace` seconds: Envoy started with round 0 regardless.
        u = max(bisect.bisect_left(finished, request.sent - grace) - 1, 0)
        w = max(bisect.bisect_left(started, request.answered) - 1, u)
        allowed = frozenset().union(*(rounds[r].answers[request.probe] for r in range(u, w + 1)))
        if is_check(rounds, request.probe, u, allowed, recent):
            verdicts.counts["checks"] += 1
        if request.answer in allowed:
            verdicts.counts["ok"] += 1
        elif first_giving[request.probe].get(request.answer, math.inf) < u:
            verdicts.note("stale", lambda: describe(rounds, request, u, w))
        else:
            verdicts.note("wrong", lambda: describe(rounds, request, u, w))
    return verdicts


def check_rounds(rounds: list[Round]) -> None:
    if not rounds:
        raise ValueError("no rounds: round 0 is the configuration Envoy started with")
    for number, round_ in enumerate(rounds):
        if round_.write_started > round_.write_finished:
            raise ValueError(f"round {number} finished before it started")
        if number and round_.write_started < rounds[number - 1].write_finished:
            raise ValueError(f"round {number} started before round {number - 1} finished")
        if round_.answers.keys() != rounds[0].answers.keys():
            raise ValueError(f"round {number} answers other probes than round 0")


def first_rounds_giving(rounds: list[Round]) -> dict[str, dict[str, int]]:
    """For each probe and answer, the oldest round that gives it: an answer
    outside u..w is stale exactly when that round is older than u."""
    first: dict[str, dict[str, int]] = {probe: {} for probe in rounds[0].answers}
    for number, round_ in enumerate(rounds):
        for probe, answers in round_.answers.items():
            for answer in answers:
                first[probe].setdefault(answer, number)
    return first


def is_check(rounds: list[Round], probe: str, u: int, allowed: frozenset[str], recent: int) -> bool:
    for changed in range(u, max(u - recent, 0), -1):
        before = rounds[changed - 1].answers[probe]
        if rounds[changed].answers[probe] != before:
            return not before & allowed
    return False


def describe(rounds: list[Round], request: Request, u: int, w: int) -> str:
    """One line with everything needed to tell a filter bug from a judge
    bug: the request's times, the window u..w with the write times that
    bound it, and the nearest rounds that do give the answer."""
    def times(number: int) -> str:
        r = rounds[number]
        return f"round {number} written {r.write_started:.3f}..{r.write_finished:.3f}"

    giving = [n for n, r in enumerate(rounds) if request.answer in r.answers[request.probe]]
    older = [n for n in giving if n < u]
    newer = [n for n in giving if n > w]
    nearest = []
    if older:
        nearest.append(f"newest older: {times(older[-1])}")
    if newer:
        nearest.append(f"oldest newer: {times(newer[0])}")
    window = f"u={u} ({times(u)}), w={w} ({times(w)})"
    if u + 1 < len(rounds):
        window += f", round {u + 1} finished {rounds[u + 1].write_finished:.3f}"
    return (f"{request.probe} answered {request.answer!r}, sent {request.sent:.3f} answered "
            f"{request.answered:.3f}; {window}; allowed "
            f"{sorted(frozenset().union(*(rounds[r].answers[request.probe] for r in range(u, w + 1))))}; "
            f"{'; '.join(nearest) or 'no round gives it'}")
