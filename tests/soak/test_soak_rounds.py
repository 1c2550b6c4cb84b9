"""The soak's own rounds and probes, judged on a simulated minute: a filter
that follows every update is never blamed, even when the driver notes the
end of its writes late (issue 16), while one that lags more than the 1-s
grace shows stale decisions. This keeps the soak able to catch staleness
whatever its probe mix or rounds become.

    .venv/bin/python -m pytest -q tests/soak      (scripts/soak.sh runs this first)

Simulated, on a clock of plain seconds: round r's write starts at r and
renames the file 1 ms later; the driver notes its end 2 ms later on even
rounds and 400 ms later on odd ones (descheduled). Envoy applies a round
`lag` seconds after the rename. Requests go out every 1/180 s (the soak's
rate), are decided 2 ms after the send and answered 4 ms after it, with
the table applied at the decision.
"""

from __future__ import annotations

import bisect
import math
import random

import pytest

import soak
from judge import Round, judge

TICKS = 60
RATE = 180
RENAME = 0.001


def finish_delay(round_: int) -> float:
    return 0.4 if round_ % 2 else 0.002


def simulate(lag: float):
    """The rounds as the driver records them, and the request log of a
    filter that applies each round `lag` seconds after its rename."""
    rounds = [Round(-math.inf, -math.inf, soak.answers(0))]
    applied = [-math.inf]
    for r in range(1, TICKS + 1):
        rounds.append(Round(float(r), r + finish_delay(r), soak.answers(r)))
        applied.append(r + RENAME + lag)
    finished = [round_.write_finished for round_ in rounds]
    chooser = random.Random(16)
    log = []
    for n in range(int(0.5 * RATE), (TICKS + 2) * RATE):
        sent = n / RATE
        newest_noted = bisect.bisect_right(finished, sent) - 1  # what round_value holds
        probe = soak.choose_probe(chooser, newest_noted)
        table = bisect.bisect_right(applied, sent + 0.002) - 1
        answer = chooser.choice(sorted(soak.expected(probe, table)))
        log.append((sent, sent + 0.004, probe, answer))
    return rounds, log


@pytest.mark.parametrize("lag", [0.005, 0.9])
def test_a_filter_within_the_grace_is_never_blamed_even_when_writes_are_noted_late(lag):
    verdicts = judge(*simulate(lag))
    counts = verdicts.counts
    assert counts["stale"] == 0 and counts["wrong"] == 0, \
        f"a filter {lag} s behind each rename is within the grace: {counts}, examples {verdicts.examples}"
    assert counts["checks"] >= 10 * TICKS, \
        f"the soak's probe mix must give at least 10 checks a second, as soak.py requires: {counts['checks']}"


@pytest.mark.parametrize(("lag", "at_least"), [
    (1.1, 10),      # only the ~0.1 s after the grace of each promptly noted round shows it
    (1.5, TICKS),   # one a second at least
    (3.0, TICKS),
])
def test_a_filter_lagging_past_the_grace_shows_stale_decisions(lag, at_least):
    verdicts = judge(*simulate(lag))
    counts = verdicts.counts
    assert counts["stale"] >= at_least, \
        f"a filter {lag} s behind must show at least {at_least} stale decisions in {TICKS} s: {counts}"
    assert counts["wrong"] == 0, f"an old round's answer is stale, not wrong: {verdicts.examples.get('wrong')}"
