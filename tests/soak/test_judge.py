"""The soak's judge (tests/soak/judge.py) on synthetic logs: it must not
blame the filter for the driver's scheduling (issue 16: answers "from the
future" and old-looking answers of a round not yet recorded), and it must
still catch a genuinely stale or wrong answer.

    .venv/bin/python -m pytest -q tests/soak      (scripts/soak.sh runs this first)

Times are plain seconds on the monotonic clock; round 0 is the
configuration Envoy started with. Probe "K" is a key revoked in some
rounds; "L" a rate-limited key (200 or rate_limited in every round).
"""

from __future__ import annotations

import math

import pytest

from judge import Round, judge

INF = math.inf


def rounds_of(*writes: tuple[float, float, str]) -> list[Round]:
    """Round 0 answers K with 200; then one round per (write started,
    write finished, K's answer)."""
    rounds = [Round(-INF, -INF, {"K": frozenset({"200"}), "L": frozenset({"200", "rate_limited"})})]
    for started, finished, answer in writes:
        rounds.append(Round(started, finished, {"K": frozenset({answer}), "L": frozenset({"200", "rate_limited"})}))
    return rounds


def one(rounds: list[Round], sent: float, answered: float, answer: str, probe: str = "K") -> str:
    """The verdict (ok, stale, wrong or errors) on a single request."""
    counts = judge(rounds, [(sent, answered, probe, answer)]).counts
    verdicts = [kind for kind in ("ok", "stale", "wrong", "errors") if counts[kind]]
    assert len(verdicts) == 1 and counts["requests"] == 1, f"one request, one verdict: {counts}"
    return verdicts[0]


# --- the driver's scheduling is not the filter's fault (issue 16) --------

def test_an_answer_from_a_round_whose_write_finished_after_the_send_is_ok():
    # The driver renamed round 1 into place at ~10.0 but was descheduled
    # before it could note the end (10.3); Envoy applied it meanwhile and
    # answered with it at 10.2. Judged by the end of the write, this was
    # an answer "from the future" (the 1 wrong of issue 16).
    rounds = rounds_of((10.0, 10.3, "key_revoked"))
    assert one(rounds, sent=10.1, answered=10.2, answer="key_revoked") == "ok", \
        "an answer from a round that started before the answer must be ok"
    assert one(rounds, sent=10.1, answered=10.2, answer="200") == "ok", \
        "round 0's answer is still allowed: round 1 had not finished 1 s before the send"


def test_a_restored_keys_200_before_the_restoring_write_is_noted_is_ok():
    # Round 1 revoked K, round 2 restores it; round 2's write ended at 20.3
    # but Envoy answered 200 from it at 20.2. Judged by the end of the
    # write, round 1 (key_revoked) was the newest and 200 only an older
    # round's answer: the 111 stale of issue 16.
    rounds = rounds_of((10.0, 10.01, "key_revoked"), (20.0, 20.3, "200"))
    assert one(rounds, sent=20.1, answered=20.2, answer="200") == "ok", \
        "a 200 from the round being written must not count as stale"
    assert one(rounds, sent=20.1, answered=20.2, answer="key_revoked") == "ok", \
        "round 1's answer is allowed until round 2 has been finished for 1 s"


# --- what the soak exists to catch ---------------------------------------

def test_an_answer_only_a_round_superseded_more_than_a_second_before_gives_is_stale():
    rounds = rounds_of((10.0, 10.01, "key_revoked"))
    verdicts = judge(rounds, [(11.5, 11.51, "K", "200")])
    assert verdicts.counts["stale"] == 1, f"a revoked key let in 1.49 s after the revocation: {verdicts.counts}"
    [example] = verdicts.examples["stale"]
    assert "K answered '200'" in example and "u=1" in example and "newest older: round 0" in example, \
        f"the example must name the probe, the window and the round that gave the answer: {example}"


def test_a_stale_answer_is_caught_whichever_older_round_gave_it():
    rounds = rounds_of((10.0, 10.01, "key_revoked"), (11.0, 11.01, "invalid_key"), (12.0, 12.01, "insufficient_scope"))
    for answer, older in (("200", 0), ("key_revoked", 1), ("invalid_key", 2)):
        assert one(rounds, sent=13.5, answered=13.6, answer=answer) == "stale", \
            f"round {older}'s answer 1.49 s after round 3 finished"
    assert one(rounds, sent=13.5, answered=13.6, answer="insufficient_scope") == "ok", "round 3's own answer"


def test_an_answer_no_round_gives_is_wrong():
    rounds = rounds_of((10.0, 10.01, "key_revoked"))
    verdicts = judge(rounds, [(11.5, 11.51, "K", "insufficient_scope")])
    assert verdicts.counts["wrong"] == 1, f"an answer no round gives: {verdicts.counts}"
    assert "no round gives it" in verdicts.examples["wrong"][0], verdicts.examples["wrong"][0]


def test_an_answer_from_a_round_started_after_the_answer_is_wrong():
    rounds = rounds_of((10.0, 10.01, "key_revoked"), (20.0, 20.01, "invalid_key"))
    verdicts = judge(rounds, [(19.5, 19.9, "K", "invalid_key")])
    assert verdicts.counts["wrong"] == 1, f"Envoy cannot know round 2 before it is written: {verdicts.counts}"
    assert "oldest newer: round 2" in verdicts.examples["wrong"][0], verdicts.examples["wrong"][0]


def test_a_5xx_is_counted_and_judged_wrong():
    counts = judge(rounds_of(), [(1.0, 1.1, "K", "503")]).counts
    assert counts["5xx"] == 1 and counts["wrong"] == 1, f"no round answers 503: {counts}"


def test_a_request_without_an_answer_is_an_error_and_not_judged():
    verdicts = judge(rounds_of(), [(1.0, 1.1, "K", "error: ConnectionResetError()")])
    assert verdicts.counts["errors"] == 1 and not verdicts.counts["ok"] + verdicts.counts["wrong"], verdicts.counts
    assert verdicts.examples["errors"] == ["K: error: ConnectionResetError() (sent 1.000)"], verdicts.examples


def test_either_answer_of_a_rate_limited_key_is_ok():
    rounds = rounds_of((10.0, 10.01, "key_revoked"))
    assert one(rounds, 15.0, 15.1, "200", probe="L") == "ok"
    assert one(rounds, 15.0, 15.1, "rate_limited", probe="L") == "ok"


# --- boundaries ----------------------------------------------------------

@pytest.mark.parametrize(("sent", "verdict"), [
    (10.5, "ok"),      # round 1 finished 0.5 s before: round 0 still allowed
    (11.0, "ok"),      # exactly 1 s: not *more* than the grace
    (11.001, "stale"),  # 1.001 s: round 0 is superseded
])
def test_the_grace_is_more_than_one_second_after_the_write_finished(sent, verdict):
    rounds = rounds_of((9.0, 10.0, "key_revoked"))
    assert one(rounds, sent=sent, answered=sent + 0.01, answer="200") == verdict, \
        f"round 0's answer sent {sent - 10.0:.3f} s after round 1's write finished"


def test_the_grace_counts_from_the_end_of_the_write_not_its_start():
    rounds = rounds_of((9.0, 10.0, "key_revoked"))
    assert one(rounds, sent=10.5, answered=10.6, answer="200") == "ok", \
        "1.5 s after the write started but 0.5 s after it finished: round 0 still allowed"


@pytest.mark.parametrize(("answered", "verdict"), [
    (20.0, "wrong"),  # the write starts the instant the answer arrives: too late to have caused it
    (20.001, "ok"),   # the write had started
])
def test_a_round_counts_once_its_write_started_before_the_answer(answered, verdict):
    rounds = rounds_of((10.0, 10.01, "key_revoked"), (20.0, 20.5, "invalid_key"))
    assert one(rounds, sent=19.9, answered=answered, answer="invalid_key") == verdict, \
        f"round 2's answer received at {answered} for a write started at 20.0"


def test_every_request_gets_exactly_one_verdict():
    rounds = rounds_of((10.0, 10.01, "key_revoked"), (11.0, 11.01, "200"))
    log = [(11.5, 11.6, "K", "200"), (11.5, 11.6, "K", "key_revoked"), (12.5, 12.6, "K", "key_revoked"),
           (12.5, 12.6, "K", "nonsense"), (12.5, 12.6, "L", "rate_limited"), (12.5, 12.6, "K", "error: timeout")]
    counts = judge(rounds, log).counts
    assert (counts["ok"], counts["stale"], counts["wrong"], counts["errors"]) == (3, 1, 1, 1), counts
    assert counts["requests"] == len(log), counts


# --- checks: requests that could have shown a stale table ----------------

def test_a_request_after_the_grace_of_a_change_is_a_check():
    rounds = rounds_of((10.0, 10.01, "key_revoked"))
    counts = judge(rounds, [(11.5, 11.6, "K", "key_revoked"), (10.5, 10.6, "K", "key_revoked"),
                            (11.5, 11.6, "L", "200")]).counts
    assert counts["checks"] == 1, \
        f"only K after the grace could have shown a stale answer (not K within it, nor L): {counts}"


def test_a_change_older_than_the_recent_rounds_makes_no_check():
    writes = [(10.0, 10.01, "key_revoked")] + [(10.0 + n, 10.01 + n, "key_revoked") for n in range(1, 6)]
    counts = judge(rounds_of(*writes), [(16.5, 16.6, "K", "key_revoked")], recent=5).counts
    assert counts["checks"] == 0 and counts["ok"] == 1, f"K last changed 6 rounds before u: {counts}"


# --- the rounds themselves -----------------------------------------------

def test_rounds_whose_writes_overlap_are_refused():
    with pytest.raises(ValueError, match="round 2 started before round 1 finished"):
        judge(rounds_of((10.0, 10.5, "key_revoked"), (10.4, 10.6, "200")), [])


def test_a_probe_no_round_answers_is_refused():
    with pytest.raises(ValueError, match="probe 'Q'"):
        judge(rounds_of(), [(1.0, 1.1, "Q", "200")])
