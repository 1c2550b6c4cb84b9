"""Token buckets shared by every Envoy worker (contract §1 rate_limits, §3
429, §4): exact under concurrency, refilled on time, kept across updates.
"""

import concurrent.futures
import hashlib
import time

import pytest

from harness import Gateway

KEY_A = "sk_live_LimitA00000000000000000"
KEY_B = "sk_live_LimitB00000000000000000"


def sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def config(extra_keys=(), **limits) -> dict:
    burst_limit = limits.get("limit", {"requests": 1, "period_seconds": 3600, "burst": 5})
    return {
        "keys": [
            {"id": "key_a", "sha256": sha(KEY_A), "tenant": "t", "plan": "metered", "scopes": ["leads:read"]},
            {"id": "key_b", "sha256": sha(KEY_B), "tenant": "t", "plan": "metered", "scopes": ["leads:read"]},
            *extra_keys,
        ],
        "plans": {"metered": {"rate_limits": {"*": burst_limit,
                                              "leads:read": {"requests": 1, "period_seconds": 3, "burst": 2}}}},
        "rules": [{"path_prefix": "/leads", "scope": "leads:read"}],
    }


def header(response, name):
    return next((v for n, v in response.headers if n == name), None)


def test_twenty_concurrent_requests_against_a_burst_of_five_admit_exactly_five(module):
    with Gateway(module, config=config(), concurrency=4) as gw:
        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
            responses = list(pool.map(lambda _: gw.request("GET", "/x", [("X-API-Key", KEY_A)]), range(20)))
        statuses = sorted(r.status for r in responses)
        assert statuses.count(200) == 5, f"admitted {statuses.count(200)} of 20 against a burst of 5: {statuses}"
        assert statuses.count(429) == 15, statuses
        for denied in (r for r in responses if r.status == 429):
            error = denied.json["error"]
            assert (error["code"], error["scope"]) == ("rate_limited", "*")
            assert error["retry_after"] >= 1
            assert header(denied, "retry-after") == str(error["retry_after"])
            assert header(denied, "ratelimit-policy") == '"*";q=1;w=3600'
            assert header(denied, "ratelimit") == f'"*";r=0;t={error["retry_after"]}'
            assert header(denied, "content-type") == "application/json"


def test_after_one_refill_interval_exactly_the_refilled_tokens_pass(module):
    # leads:read: burst 2, one token every 3 s. The second request after the
    # wait comes well within 3 s of the first, so exactly one token is there.
    with Gateway(module, config=config(), concurrency=2) as gw:
        def leads():
            return gw.request("GET", "/leads", [("X-API-Key", KEY_A)]).status
        assert [leads() for _ in range(3)] == [200, 200, 429]
        time.sleep(3.2)
        assert [leads() for _ in range(2)] == [200, 429], "one refill interval must add exactly one token"


def test_keys_and_patterns_never_share_a_bucket(module):
    with Gateway(module, config=config(), concurrency=2) as gw:
        statuses = [gw.request("GET", "/x", [("X-API-Key", KEY_A)]).status for _ in range(6)]
        assert statuses == [200] * 5 + [429]
        assert gw.request("GET", "/x", [("X-API-Key", KEY_B)]).status == 200, "key_b shared key_a's bucket"
        assert gw.request("GET", "/leads", [("X-API-Key", KEY_A)]).status == 200, "leads:read shared the * bucket"


def test_a_bucket_keeps_its_state_across_an_unrelated_update(module):
    with Gateway(module, config=config(), concurrency=2) as gw:
        statuses = [gw.request("GET", "/x", [("X-API-Key", KEY_A)]).status for _ in range(6)]
        assert statuses[-1] == 429
        unrelated = config(extra_keys=[{"id": "key_c", "sha256": sha("sk_live_c"), "tenant": "t"}])
        assert gw.push(unrelated) is True
        response = gw.request("GET", "/x", [("X-API-Key", KEY_A)])
        assert response.status == 429, "an unrelated update handed out a fresh burst"


def test_a_changed_limit_caps_the_tokens_instead_of_refilling_them(module):
    with Gateway(module, config=config(), concurrency=2) as gw:
        assert gw.request("GET", "/x", [("X-API-Key", KEY_A)]).status == 200  # 4 left
        smaller = config(limit={"requests": 1, "period_seconds": 3600, "burst": 2})
        assert gw.push(smaller) is True
        statuses = [gw.request("GET", "/x", [("X-API-Key", KEY_A)]).status for _ in range(4)]
        assert statuses == [200, 200, 429, 429], f"tokens not capped at the new burst of 2: {statuses}"


def test_ratelimit_headers_on_allowed_responses_when_always(module):
    always = config()
    always["rate_limit_headers"] = "always"
    with Gateway(module, config=always, concurrency=2) as gw:
        response = gw.request("GET", "/x", [("X-API-Key", KEY_A)])
        assert response.status == 200
        assert header(response, "ratelimit-policy") == '"*";q=1;w=3600'
        assert header(response, "ratelimit") == '"*";r=4;t=3600'
