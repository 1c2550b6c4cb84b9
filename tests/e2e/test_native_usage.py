"""Key usage (contract §8.4) on the native edge (§9), where it is
gathered differently: Envoy's workers have no HTTP callout outside a
stream, so the workers count and the main thread reports, one reporter
per process that collects every worker's counts on its tick. test_key_usage
runs on this edge too (`--edge native`: every worker's uses reported, at
most one report per period; uses made while the service is down); this
file adds what only this relay can get wrong: an update of the `key_source`
configuration replaces the main thread's reporter, and what the workers
counted for the old one must be reported once.
"""

from __future__ import annotations

import time

import harness
from harness import Gateway
from test_key_source import FixedPortService, control_cluster, wait_for
from test_key_usage import REPORT_INTERVAL_S, SETTINGS, WORKERS, Probe, served_everywhere, usage_of
from test_native_edge import NATIVE_STATS, native_env, native_module  # noqa: F401  (fixtures)

USAGE_STATS = NATIVE_STATS + "apikey.usage"


def usage_stat(gw: Gateway, name: str) -> int:
    return gw.stats(USAGE_STATS).get(f"{USAGE_STATS}.{name}", 0)


def native_following_gateway(module, service, port: int) -> Gateway:
    config = {"key_source": {"cluster": "apikey_control", "token": service.feed_token,
                             "authority": "apikey-control"}}

    def customize(bootstrap: dict) -> None:
        harness.render_native(bootstrap)
        control_cluster(port)(bootstrap)

    return Gateway(module, config=config, concurrency=WORKERS, customize=customize)


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
