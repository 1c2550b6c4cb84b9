"""Metrics and the audit trail against real Envoy traffic (issue 9): after
a scripted mix of requests, the `wasmcustom.apikey.*` counters equal the
counts sent, and `apikey usage` reads the same numbers back from the
access log the shipped configuration writes.
"""

import hashlib
import json
import subprocess
import time
from pathlib import Path

from harness import REPO_ROOT, Gateway

GOOD = "sk_live_Observed000000000000000"
REVOKED = "sk_live_ObservedRevoked00000000"


def sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


CONFIG = {
    "keys": [
        {"id": "key_good", "sha256": sha(GOOD), "tenant": "acme", "scopes": ["leads:read"], "plan": "p"},
        {"id": "key_revoked", "sha256": sha(REVOKED), "tenant": "globex", "revoked": True},
    ],
    "plans": {"p": {"rate_limits": {"leads:read": {"requests": 1, "period_seconds": 3600, "burst": 3}}}},
    "rules": [{"path_prefix": "/leads", "scope": "leads:read"}, {"path": "/admin", "scope": "admin"}],
}

# (path, headers, how many times)
MIX = [
    ("/leads", [("X-API-Key", GOOD)], 5),        # 3 allowed, then 2 rate_limited
    ("/admin", [("X-API-Key", GOOD)], 2),        # insufficient_scope
    ("/leads", [("X-API-Key", REVOKED)], 1),     # key_revoked
    ("/leads", [("X-API-Key", "sk_live_x")], 2),  # invalid_key
    ("/leads", [], 1),                            # missing_credentials
]


def cli():
    return REPO_ROOT / "target" / "debug" / "apikey"


def test_counters_and_usage_report_what_was_sent(wasm_module):
    subprocess.run(["cargo", "build", "-q", "-p", "apikey-cli"], cwd=REPO_ROOT, check=True)
    with Gateway(wasm_module, config=CONFIG, concurrency=2) as gw:
        statuses = []
        for path, headers, times in MIX:
            statuses += [gw.request("GET", path, headers, http2=True).status for _ in range(times)]
        assert statuses == [200, 200, 200, 429, 429, 403, 403, 401, 401, 401, 401], statuses

        stats = gw.stats("wasmcustom.apikey.")
        expected = {
            "requests.allowed": 3,
            "requests.denied.rate_limited": 2,
            "requests.denied.insufficient_scope": 2,
            "requests.denied.key_revoked": 1,
            "requests.denied.invalid_key": 2,
            "requests.denied.missing_credentials": 1,
            "requests.denied.not_configured": 0,
            "config.accepted": 1,
            "config.refused": 0,
            "keys_loaded": 2,
        }
        for name, value in expected.items():
            assert stats.get(f"wasmcustom.apikey.{name}") == value, f"{name}: {stats.get('wasmcustom.apikey.' + name)}"

        report = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the access log is flushed on a timer
            run = subprocess.run([str(cli()), "--json", "usage", "--log", str(gw.log_path)],
                                 capture_output=True, text=True, check=True)
            report = json.loads(run.stdout)
            requests = sum(k["requests"] for k in report["keys"]) + sum(report["unattributed"].values())
            if requests >= len(statuses):
                break
            time.sleep(0.2)
        keys = {k["key_id"]: k for k in report["keys"]}
        good = keys["key_good"]
        assert (good["requests"], good["allowed"], good["tenant"]) == (7, 3, "acme"), good
        assert good["denied"] == {"rate_limited": 2, "insufficient_scope": 2}, good
        assert good["last_used"], "no Last Used for a key that was used"
        assert keys["key_revoked"]["denied"] == {"key_revoked": 1}
        assert report["unattributed"] == {"invalid_key": 2, "missing_credentials": 1}
        log = Path(gw.log_path).read_text(errors="replace")
        assert GOOD not in log and REVOKED not in log, "a raw key reached Envoy's log"
