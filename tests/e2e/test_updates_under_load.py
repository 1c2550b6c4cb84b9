"""Live updates under a steady stream of requests (contract §4, issue 4):
20 configuration updates in a row fail or reset no request, and every
decision made more than 1 s after an update follows that update.
"""

import hashlib
import threading
import time

from harness import Gateway

STABLE = "sk_live_Stable000000000000000000"
FLIP = "sk_live_Flip00000000000000000000"
UPDATES = 20


def sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def config(round_: int) -> dict:
    """Round n: FLIP is revoked in odd rounds; key n (and only up to n) exists."""
    keys = [
        {"id": "key_stable", "sha256": sha(STABLE), "tenant": "t"},
        {"id": "key_flip", "sha256": sha(FLIP), "tenant": "t", "revoked": round_ % 2 == 1},
    ]
    keys += [{"id": f"key_new{i}", "sha256": sha(f"sk_live_New{i:04d}"), "tenant": "t"} for i in range(round_ + 1)]
    return {"keys": keys}


def code(response) -> str:
    return "200" if response.status == 200 else response.json["error"]["code"]


def test_twenty_updates_under_load_fail_no_request_and_serve_no_stale_decision(module):
    with Gateway(module, config=config(0), concurrency=2) as gw:
        stop = threading.Event()
        stream: list[str] = []

        def steady_stream():
            while not stop.is_set():
                try:
                    stream.append(code(gw.request("GET", "/stable", [("X-API-Key", STABLE)], timeout=5)))
                except Exception as error:  # a reset or refused connection is a failure too
                    stream.append(f"error: {error}")

        clients = [threading.Thread(target=steady_stream) for _ in range(3)]
        for client in clients:
            client.start()
        try:
            stale = []
            for round_ in range(1, UPDATES + 1):
                written = time.monotonic()
                assert gw.push(config(round_)) is True, f"update {round_} refused"
                # Every request from here on must follow this update; allow up
                # to 1 s from the file landing for the first matching answer.
                expected_flip = "key_revoked" if round_ % 2 == 1 else "200"
                while True:
                    flip = code(gw.request("GET", "/x", [("X-API-Key", FLIP)]))
                    newest = code(gw.request("GET", "/x", [("X-API-Key", f"sk_live_New{round_:04d}")]))
                    if (flip, newest) == (expected_flip, "200"):
                        break
                    if time.monotonic() - written > 1.0:
                        stale.append((round_, flip, newest))
                        break
                # And it stays so: a burst of checks right after must all agree.
                for _ in range(5):
                    assert code(gw.request("GET", "/x", [("X-API-Key", FLIP)])) == expected_flip, f"round {round_}"
            assert not stale, f"decisions still stale more than 1 s after an update: {stale}"
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=10)
        failures = [answer for answer in stream if answer != "200"]
        assert len(stream) > 50, f"the steady stream only sent {len(stream)} requests"
        assert not failures, f"{len(failures)} of {len(stream)} steady requests failed: {failures[:5]}"
