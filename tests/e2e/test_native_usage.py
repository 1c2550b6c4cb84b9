"""Key usage (contract §8.4) on the native edge (§9): test_key_usage's
scenarios with a real Envoy (4 workers) loading libapikey_dynamic.so and
following a real `apikey serve`.

Envoy's workers have no HTTP callout outside a stream, so on this edge the
workers count and the main thread reports: one reporter per process,
which collects every worker's counts on its tick (also a worker's that
serves nothing after its last request) and sends them at most every 10 s,
with the core's retry and merge-back. So, beyond what test_key_usage
asserts, the number of reports is bounded by the time elapsed, whatever
the number of workers. REPORT_BOUND_S and the helpers are test_key_usage's.
"""

from __future__ import annotations

import time

import harness
from harness import Gateway
from test_key_source import FixedPortService, control_cluster, wait_for
from test_key_usage import (REPORT_BOUND_S, SETTINGS, WORKERS, Probe, cli, rfc3339,
                            served_everywhere, usage_of)
from test_native_edge import NATIVE_STATS, native_env, native_module  # noqa: F401  (fixtures)

USAGE_STATS = NATIVE_STATS + "apikey.usage"
REPORT_INTERVAL_S = 10


def usage_stat(gw: Gateway, name: str) -> int:
    return gw.stats(USAGE_STATS).get(f"{USAGE_STATS}.{name}", 0)


def native_following_gateway(module, service, port: int) -> Gateway:
    config = {"key_source": {"cluster": "apikey_control", "token": service.feed_token,
                             "authority": "apikey-control"}}

    def customize(bootstrap: dict) -> None:
        harness.render_native(bootstrap)
        control_cluster(port)(bootstrap)

    return Gateway(module, config=config, concurrency=WORKERS, customize=customize)


def test_every_workers_uses_reach_the_service_through_one_reporter(native_env, tmp_path):
    port = harness.free_port()
    with FixedPortService(tmp_path / "service", port) as service:
        service.put_settings(SETTINGS)
        used = service.create(scopes=["leads:read"], name="used")
        probe_key = service.create(scopes=["leads:read"], name="probe")
        idle = service.create(scopes=["leads:read"], name="idle")
        started = time.monotonic()
        with native_following_gateway(native_env, service, port) as gw:
            probe = Probe(gw, probe_key["key"])
            served_everywhere(probe)

            measured = Probe(gw, used["key"])
            requests = 60
            for _ in range(requests):
                assert measured.ok(), "a request with a valid key was refused"
            last_sent_wall, last_sent = time.time(), time.monotonic()

            # No request reaches Envoy from here on: the last uses are
            # collected from idle workers by the main thread.
            seen = wait_for(f"{requests} requests of {used['id']} counted by the service",
                            lambda: usage_of(service, used["id"])[0] == requests, 30)
            delay = seen - last_sent
            print(f"\nnative: usage of {requests} requests over {WORKERS} workers shown "
                  f"{delay:.1f} s after the last")
            count, last_used_at = usage_of(service, used["id"])
            assert count == requests, f"the service counts {count} requests, {requests} were made"
            assert delay <= REPORT_BOUND_S, f"usage shown {delay:.1f} s after the last request"
            assert last_used_at is not None, "no last_used_at after reported use"
            # Stamped with the main thread's collection clock, in whole seconds.
            assert last_sent_wall - 3 <= rfc3339(last_used_at) <= last_sent_wall + 1, \
                f"last_used_at {last_used_at} is not the last request's time ({last_sent_wall:.1f})"
            days = service.ok("GET", f"/v1/keys/{used['id']}/usage")["days"]
            assert days[-1]["day"] == last_used_at[:10], f"the last use is not on the last day: {days}"

            wait_for("the probe's requests counted",
                     lambda: usage_of(service, probe_key["id"])[0] == probe.allowed, 30)
            assert usage_of(service, idle["id"]) == (0, None), "an unused key has usage"

            # One reporter per process: at most one report per 10 s since
            # Envoy started (four reporters, one per worker, could send four).
            elapsed = time.monotonic() - started
            stats = gw.stats(USAGE_STATS)
            reports = stats.get(f"{USAGE_STATS}.reports", 0)
            assert 1 <= reports <= elapsed / REPORT_INTERVAL_S + 1, \
                f"{reports} reports in {elapsed:.1f} s: {stats}"
            assert stats.get(f"{USAGE_STATS}.failures", 0) == 0, stats
            assert stats.get(f"{USAGE_STATS}.dropped", 0) == 0, stats
            metrics = service.request("GET", "/metrics", token=None).text
            assert 'apikey_service_usage_lines_total{outcome="unknown"} 0' in metrics, metrics

            table = cli(service, "list")
            rows = {line.split()[0]: line for line in table.splitlines()[1:]}
            assert rows[used["id"]].endswith(last_used_at), table
            assert rows[idle["id"]].endswith("never"), table


def test_uses_made_while_the_service_is_down_are_reported_once_when_it_returns(native_env, tmp_path):
    port = harness.free_port()
    with FixedPortService(tmp_path / "service", port) as service:
        service.put_settings(SETTINGS)
        used = service.create(scopes=["leads:read"])
        probe_key = service.create(scopes=["leads:read"])
        with native_following_gateway(native_env, service, port) as gw:
            served_everywhere(Probe(gw, probe_key["key"]))
            measured = Probe(gw, used["key"])
            for _ in range(20):
                assert measured.ok()
            wait_for("the first uses counted", lambda: usage_of(service, used["id"])[0] == 20, 30)

            service.stop()
            failures = usage_stat(gw, "failures")
            for _ in range(30):
                assert measured.ok(), "the last table was dropped while the service is down"
            wait_for("a usage report failing while the service is down",
                     lambda: usage_stat(gw, "failures") > failures, 30)
            log = gw.log_text()
            assert 'usage: report to cluster "apikey_control" failed' in log, "no log line for the failed report"
            assert service.feed_token not in log, "the feed token was logged"

            service.start()
            back = time.monotonic()
            seen = wait_for("the uses made while down counted",
                            lambda: usage_of(service, used["id"])[0] == 50, 30)
            print(f"\nnative: uses made while the service was down counted {seen - back:.1f} s after it returned")
            assert seen - back <= REPORT_BOUND_S, f"counted {seen - back:.1f} s after the service returned"
            # A retried report counted twice would have passed 50 and never matched.
            assert usage_of(service, used["id"])[0] == 50, "a retried report was counted twice"
            assert usage_stat(gw, "dropped") == 0, "uses were dropped while the service was down"


def test_uses_on_both_sides_of_an_ecds_update_are_each_reported_once(native_env, tmp_path):
    """An update of the `key_source` configuration replaces the main
    thread's reporter: what the workers counted for the replaced one, and
    what it held, goes with the new one's reports, neither lost nor
    doubled."""
    port = harness.free_port()
    with FixedPortService(tmp_path / "service", port) as service:
        service.put_settings(SETTINGS)
        used = service.create(scopes=["leads:read"])
        probe_key = service.create(scopes=["leads:read"])
        with native_following_gateway(native_env, service, port) as gw:
            served_everywhere(Probe(gw, probe_key["key"]))
            measured = Probe(gw, used["key"])
            for _ in range(25):
                assert measured.ok(), "a request with a valid key was refused before the update"
            # The same source in other bytes (its fields in another order):
            # a new configuration to Envoy.
            updated = {"key_source": {"authority": "apikey-control", "token": service.feed_token,
                                      "cluster": "apikey_control"}}
            assert gw.push(updated), f"the update was refused\n{gw.log_text()[-2000:]}"
            for _ in range(25):
                assert measured.ok(), "a request with a valid key was refused after the update"
            wait_for("every use on both sides of the update counted",
                     lambda: usage_of(service, used["id"])[0] == 50, 40)
            time.sleep(REPORT_INTERVAL_S + 2)  # one more report: a doubled count would show
            assert usage_of(service, used["id"])[0] == 50, "uses around the update were counted twice"
            assert usage_stat(gw, "dropped") == 0, "uses were dropped across the update"
