"""Key usage (contract §8.4, issue 21): a real Envoy (4 workers) following a
real `apikey serve` reports each key's requests and last use; the API
shows them (`last_used_at`, `GET /v1/keys/{id}/usage`) and so does the CLI
through `--server`.

Workers report on their own, each at most every 10 s, so the count a key
shows is the sum over every worker that served one of its requests. The
bound asserted from the last request to the count shown in full is
REPORT_BOUND_S (10 s of cadence, a tick, the delivery, and room for a
loaded 2-core machine); the time measured is printed (`-s`).

A second scenario stops the service after a first report and keeps
sending requests: a report fails (logged without the token, counted), and
the counts made while it was down arrive once it is back.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timezone

from harness import NATIVE, Gateway, edge_of, free_port
from key_service import apikey_binary, clean_env
from test_key_source import FixedPortService, answer, control_cluster, wait_for

REPORT_INTERVAL_S = 10  # a reporter sends at most this often (usage.rs)
REPORT_BOUND_S = 12.0
SETTINGS = {"rules": [{"path_prefix": "/api", "scope": "leads:read"}]}
WORKERS = 4


class Probe:
    """Requests with one key, counting the answers that reached the
    upstream: each is a use a worker must report."""

    def __init__(self, gw: Gateway, raw: str):
        self.gw, self.raw, self.allowed = gw, raw, 0

    def ok(self) -> bool:
        got = answer(self.gw, self.raw)
        if got == (200, None):
            self.allowed += 1
            return True
        return False


def usage_of(service, key_id: str) -> tuple[int, str | None]:
    """The requests the service holds for a key (all days) and its last use."""
    days = service.ok("GET", f"/v1/keys/{key_id}/usage")["days"]
    record = service.ok("GET", f"/v1/keys/{key_id}")
    return sum(day["count"] for day in days), record["last_used_at"]


def rfc3339(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def following_gateway(module, service, port: int) -> Gateway:
    config = {"key_source": {"cluster": "apikey_control", "token": service.feed_token,
                             "authority": "apikey-control"}}
    return Gateway(module, config=config, concurrency=WORKERS, customize=control_cluster(port))


def served_everywhere(probe: Probe) -> None:
    """Waits until a run of requests (new connections, spread over the
    workers) is allowed: every worker holds the table."""
    wait_for("the table on every worker", lambda: all(probe.ok() for _ in range(24)), 30)


def cli(service, *args: str) -> str:
    env = clean_env() | {"APIKEY_ADMIN_TOKEN": service.admin_token}
    done = subprocess.run([str(apikey_binary()), "--server", service.url, *args],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, f"apikey {args}: {done.stderr}"
    return done.stdout


def test_every_workers_uses_reach_the_service_within_a_report(module, tmp_path):
    port = free_port()
    with FixedPortService(tmp_path / "service", port) as service:
        service.put_settings(SETTINGS)
        used = service.create(scopes=["leads:read"], name="used")
        probe_key = service.create(scopes=["leads:read"], name="probe")
        idle = service.create(scopes=["leads:read"], name="idle")
        started = time.monotonic()
        with following_gateway(module, service, port) as gw:
            probe = Probe(gw, probe_key["key"])
            served_everywhere(probe)

            measured = Probe(gw, used["key"])
            requests = 60
            for _ in range(requests):
                assert measured.ok(), "a request with a valid key was refused"
            last_sent_wall, last_sent = time.time(), time.monotonic()

            seen = wait_for(f"{requests} requests of {used['id']} counted by the service",
                            lambda: usage_of(service, used["id"])[0] == requests, 30)
            delay = seen - last_sent
            print(f"\nusage of {requests} requests over {WORKERS} workers shown {delay:.1f} s after the last")
            count, last_used_at = usage_of(service, used["id"])
            assert count == requests, f"the service counts {count} requests, {requests} were made"
            assert delay <= REPORT_BOUND_S, f"usage shown {delay:.1f} s after the last request"
            assert last_used_at is not None, "no last_used_at after reported use"
            # Stamped with the worker's tick clock, in whole seconds.
            assert last_sent_wall - 3 <= rfc3339(last_used_at) <= last_sent_wall + 1, \
                f"last_used_at {last_used_at} is not the last request's time ({last_sent_wall:.1f})"
            days = service.ok("GET", f"/v1/keys/{used['id']}/usage")["days"]
            assert days[-1]["day"] == last_used_at[:10], f"the last use is not on the last day: {days}"

            # The probe's allowed requests were all counted too; the idle key none.
            wait_for("the probe's requests counted",
                     lambda: usage_of(service, probe_key["id"])[0] == probe.allowed, 30)
            assert usage_of(service, idle["id"]) == (0, None), "an unused key has usage"

            stats = gw.metrics("apikey.usage")
            # Each Wasm VM (worker) reports its own uses, so several workers
            # make several reports; the native edge gathers every worker's
            # uses into one report per period.
            reports = stats.get("apikey.usage.reports", 0)
            if edge_of(module) is NATIVE:
                # One reporter per process: at most one report per period
                # since Envoy started (one per worker could send four).
                elapsed = time.monotonic() - started
                assert 1 <= reports <= elapsed / REPORT_INTERVAL_S + 1, \
                    f"{reports} reports in {elapsed:.1f} s: {stats}"
            else:
                assert reports >= 2, stats
            assert stats.get("apikey.usage.failures", 0) == 0, stats
            assert stats.get("apikey.usage.dropped", 0) == 0, stats
            metrics = service.request("GET", "/metrics", token=None).text
            assert 'apikey_service_usage_lines_total{outcome="unknown"} 0' in metrics, metrics

            # The CLI through the service: list's LAST USED, usage ID's days.
            table = cli(service, "list")
            rows = {line.split()[0]: line for line in table.splitlines()[1:]}
            assert rows[used["id"]].endswith(last_used_at), table
            assert rows[idle["id"]].endswith("never"), table
            shown = json.loads(cli(service, "--json", "usage", used["id"]))
            assert shown == {"id": used["id"], "days": days}, shown
            human = cli(service, "usage", used["id"])
            assert f"last used {last_used_at}" in human and str(requests) in human, human


def test_uses_made_while_the_service_is_down_are_reported_when_it_returns(module, tmp_path):
    port = free_port()
    with FixedPortService(tmp_path / "service", port) as service:
        service.put_settings(SETTINGS)
        used = service.create(scopes=["leads:read"])
        probe_key = service.create(scopes=["leads:read"])
        with following_gateway(module, service, port) as gw:
            served_everywhere(Probe(gw, probe_key["key"]))
            measured = Probe(gw, used["key"])
            for _ in range(20):
                assert measured.ok()
            wait_for("the first uses counted", lambda: usage_of(service, used["id"])[0] == 20, 30)

            service.stop()
            failures = gw.metrics("apikey.usage").get("apikey.usage.failures", 0)
            for _ in range(30):
                assert measured.ok(), "the last table was dropped while the service is down"
            wait_for("a usage report failing while the service is down",
                     lambda: gw.metrics("apikey.usage").get("apikey.usage.failures", 0)
                     > failures, 30)
            log = gw.log_text()
            assert 'usage: report to cluster "apikey_control" failed' in log, "no log line for the failed report"
            assert service.feed_token not in log, "the feed token was logged"

            service.start()
            back = time.monotonic()
            seen = wait_for("the uses made while down counted",
                            lambda: usage_of(service, used["id"])[0] == 50, 30)
            print(f"\nuses made while the service was down counted {seen - back:.1f} s after it returned")
            assert seen - back <= REPORT_BOUND_S, f"counted {seen - back:.1f} s after the service returned"
            # A retried report counted twice would have passed 50 and never matched.
            assert usage_of(service, used["id"])[0] == 50, "a retried report was counted twice"
            assert gw.metrics("apikey.usage").get("apikey.usage.dropped", 0) == 0
