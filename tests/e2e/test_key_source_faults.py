"""Faults between a gateway and the key service it follows (contract §8.3,
issue 21's fault list), with a real `apikey serve` and a real Envoy at
`--concurrency 4`; every outcome is checked on every worker (worker_probes
pins a connection to each).

- The service killed: the last table stays enforced (allowed keys allowed,
  revoked ones denied), the failure is logged and counted, and changes made
  on its database meanwhile (`apikey --db`) apply once it is back.
- The service killed right after acknowledged writes and restarted on the
  same database: no key lost, for the gateway that followed it and for a
  new one that takes its whole table from the restarted service.
- A gateway started while the service is down: 503 `not_configured` on
  every worker, then served once the service is up.
- A feed answer cut short or corrupted on purpose (feed_saboteur.py between
  Envoy's `apikey_control` cluster and the service): never served, the
  last good table kept, the refusal logged and counted, and the gateway
  recovers once the answers are honest again.

A wrong feed token is test_key_source.py's. Recoveries are bounded by
generous timeouts (the filter's retry backoff reaches 5 s,
docs/configuration.md §10.6), not by a contract figure; the times measured
are printed (`-s`).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from feed_saboteur import FeedSaboteur
from harness import Gateway, free_port
from key_service import KeyService, apikey_binary, clean_env, sha256_hex
from test_key_source import FixedPortService, control_cluster
from worker_probes import ALLOWED, Check, Watch, WorkerProbe, with_worker_stats

WORKERS = 4
INVALID = (401, "invalid_key")
REVOKED = (401, "key_revoked")
NO_SCOPE = (403, "insufficient_scope")
NOT_FOUND = (404, "not_found")
NOT_CONFIGURED = (503, "not_configured")
FAILURES = "apikey.key_source.failures"
TABLES = "apikey.key_source.tables"
FAILED_LINE = 'key_source: feed from cluster "apikey_control" failed'
FIRST_TABLE_S = 30  # start-up on a shared machine, not a contract bound
RECOVERY_S = 20  # the backoff's 5 s ceiling, plus room for a loaded machine


def counter(gw: Gateway, name: str) -> int:
    return gw.metrics(name).get(name, 0)


def following_gateway(module, token: str, port: int) -> Gateway:
    """A gateway at --concurrency 4 following the service (or the
    saboteur) on `port`, with per-worker listener stats."""
    config = {"key_source": {"cluster": "apikey_control", "token": token, "authority": "apikey-control"}}
    return Gateway(module, config=config, concurrency=WORKERS, customize=with_worker_stats(control_cluster(port)))


def cli(service, *args: str) -> str:
    """`apikey --db <the service's database> ARGS`: stdout."""
    done = subprocess.run([str(apikey_binary()), "--db", str(service.db), *args], capture_output=True, text=True,
                          env=clean_env())
    assert done.returncode == 0, f"apikey {' '.join(args)} failed: {done.stderr}"
    return done.stdout


def hold_while_failing(watch: Watch, gw: Gateway, what: str, holds: dict, since: int, retries: int = 2) -> int:
    """Rounds of `holds` on every worker until the gateway has counted a
    failure after `since` (the failure counter's value before the fault),
    then `retries` more (retries after its backoff, however many VMs
    fetch); returns the rounds made."""
    rounds = watch.hold(what, holds, lambda: counter(gw, FAILURES) > since, 30)
    first = counter(gw, FAILURES)
    return rounds + watch.hold(what, holds, lambda: counter(gw, FAILURES) >= first + retries, 30)


def assert_failure_logged(gw: Gateway, since_offset: int, token: str, what: str) -> None:
    log = gw.log_text()
    assert FAILED_LINE in log[since_offset:], f"{what}: no '{FAILED_LINE}' line in Envoy's log"
    assert token not in log, f"{what}: the feed token was logged"


def test_a_killed_service_leaves_the_last_table_enforced_and_changes_made_meanwhile_apply_on_return(
        module, tmp_path):
    port = free_port()
    with FixedPortService(tmp_path / "service", port) as service:
        service.put_settings({"rules": [{"path_prefix": "/api", "scope": "leads:read"}]})
        kept = Check("allowed", service.create(scopes=["leads:read"])["key"])
        revoked_record = service.create(scopes=["leads:read"])
        service.ok("POST", f"/v1/keys/{revoked_record['id']}/revoke")
        revoked = Check("revoked", revoked_record["key"])
        later_record = service.create(scopes=["leads:read"])
        later = Check("revoked during the outage", later_record["key"])
        with following_gateway(module, service.feed_token, port) as gw:
            watch = Watch([WorkerProbe(gw, "gateway", WORKERS)])
            watch.await_switch("the first table", time.monotonic(),
                               {kept: (NOT_CONFIGURED, ALLOWED), revoked: (NOT_CONFIGURED, REVOKED),
                                later: (NOT_CONFIGURED, ALLOWED)}, timeout=FIRST_TABLE_S)
            table = {kept: ALLOWED, revoked: REVOKED, later: ALLOWED}

            failures, offset = counter(gw, FAILURES), len(gw.log_text())
            service.stop(signal.SIGKILL)
            rounds = hold_while_failing(watch, gw, "the service killed", table, failures)
            print(f"\noutage: {counter(gw, FAILURES) - failures} failures counted, the last table held "
                  f"over {rounds} rounds on every worker")
            assert_failure_logged(gw, offset, service.feed_token, "the service killed")

            # Changes on the database while the service is down: the gateway
            # cannot know them yet.
            made = json.loads(cli(service, "create", "--json", "--tenant", "acme", "--name", "while down",
                                  "--scopes", "leads:read"))
            cli(service, "revoke", later_record["id"])
            created = Check("created during the outage", made["key"])
            hold_while_failing(watch, gw, "the service still down", {**table, created: INVALID},
                               counter(gw, FAILURES), retries=0)

            service.start()
            back = time.monotonic()
            switch = watch.await_switch("the changes made while down", back,
                                        {later: (ALLOWED, REVOKED), created: (INVALID, ALLOWED)},
                                        {kept: ALLOWED, revoked: REVOKED}, timeout=RECOVERY_S)
            print(switch.report(since="the service listened again"))


def test_a_service_killed_after_acknowledged_writes_and_restarted_on_its_database_loses_no_key(
        module, tmp_path):
    port = free_port()
    with FixedPortService(tmp_path / "service", port) as service:
        service.put_settings({"rules": [{"path_prefix": "/api", "scope": "leads:read"}]})
        first = service.create(scopes=["leads:read"])
        with following_gateway(module, service.feed_token, port) as gw:
            watch = Watch([WorkerProbe(gw, "gateway", WORKERS)])
            watch.await_switch("the first table", time.monotonic(),
                               {Check("first", first["key"]): (NOT_CONFIGURED, ALLOWED)}, timeout=FIRST_TABLE_S)

            # A burst of writes, each acknowledged, then kill -9 at once.
            records = [service.create(scopes=["leads:read"], name=f"burst {i}") for i in range(24)]
            for record in records[::3]:
                service.ok("POST", f"/v1/keys/{record['id']}/revoke")
            successor = service.ok("POST", f"/v1/keys/{records[1]['id']}/rotate", {"grace_seconds": 3600},
                                   status=201)
            service.stop(signal.SIGKILL)
            service.start()

            expected = {Check("first", first["key"]): ALLOWED, Check("successor", successor["key"]): ALLOWED}
            for index, record in enumerate(records):
                expected[Check(f"burst {index}", record["key"])] = REVOKED if index % 3 == 0 else ALLOWED
            ids = {record["id"] for record in service.all_keys()}
            missing = {record["id"] for record in records + [first, successor]} - ids
            assert not missing, f"keys lost by the restart (API): {sorted(missing)}"

            # Once a change made after the restart is served, the gateway's
            # table is the restarted service's: every key as it was.
            marker = service.create(scopes=["leads:read"])
            watch.await_switch("a change after the restart", time.monotonic(),
                               {Check("marker", marker["key"]): (INVALID, ALLOWED)}, timeout=RECOVERY_S)
            watch.expect("the following gateway after the restart", expected)

        # A new gateway takes its whole table from the restarted service.
        with following_gateway(module, service.feed_token, port) as fresh:
            watch = Watch([WorkerProbe(fresh, "new gateway", WORKERS)])
            watch.await_switch("the new gateway's first table", time.monotonic(),
                               {Check("marker", marker["key"]): (NOT_CONFIGURED, ALLOWED)}, timeout=FIRST_TABLE_S)
            watch.expect("a new gateway after the restart", expected)


def test_a_gateway_started_while_the_service_is_down_answers_503_then_serves_once_it_is_up(module, tmp_path):
    port = free_port()
    with FixedPortService(tmp_path / "service", port) as service:
        service.put_settings({"rules": [{"path_prefix": "/api", "scope": "leads:read"}]})
        kept = Check("allowed", service.create(scopes=["leads:read"])["key"])
        revoked_record = service.create(scopes=["leads:read"])
        service.ok("POST", f"/v1/keys/{revoked_record['id']}/revoke")
        revoked = Check("revoked", revoked_record["key"])
        unknown = Check("unknown", "sk_live_" + "u" * 24)
        service.stop()
        with following_gateway(module, service.feed_token, port) as gw:
            watch = Watch([WorkerProbe(gw, "gateway", WORKERS)])
            hold_while_failing(watch, gw, "no table while the service is down",
                               {kept: NOT_CONFIGURED, revoked: NOT_CONFIGURED, unknown: NOT_CONFIGURED}, 0)
            assert_failure_logged(gw, 0, service.feed_token, "the service down at start")
            assert counter(gw, TABLES) == 0, "a table was taken while the service was down"

            service.start()
            up = time.monotonic()
            switch = watch.await_switch("the first table once the service is up", up,
                                        {kept: (NOT_CONFIGURED, ALLOWED), revoked: (NOT_CONFIGURED, REVOKED),
                                         unknown: (NOT_CONFIGURED, INVALID)}, timeout=RECOVERY_S)
            print("\n" + switch.report(since="the service listened"))


# --- damaged feed answers ---------------------------------------------------

SABOTAGE = ["truncate", "cut", "drop_trailer", "alter_digest", "flip_tenant", "escalate", "revive"]
# /t/{tenant}/... tells a key's tenant (404 for another tenant's, §7.3);
# /admin needs a scope no key here holds.
RULES = [{"path_prefix": "/t/{tenant}/leads", "scope": "leads:read"},
         {"path_prefix": "/admin", "scope": "admin:write"},
         {"path_prefix": "/api", "scope": "leads:read"}]


def retried(saboteur: FeedSaboteur) -> bool:
    """Whether the gateway has come back for more after the damaged change
    (the answers to requests made after the mode was switched: new
    snapshots whose damaged pages carry the keys it already serves, per
    docs/configuration.md §10.6, or retried changes), three times: about
    1.4 s of backoff for one fetcher."""
    return saboteur.counts()["damaged_since_switch"] >= 3


@pytest.mark.parametrize("mode", SABOTAGE)
def test_a_damaged_feed_answer_is_never_served_and_the_last_good_table_stays(module, tmp_path, mode):
    with KeyService(tmp_path / "service", "--quiet") as service, \
            FeedSaboteur(service.port, tmp_path / "saboteur.log") as saboteur:
        service.put_settings({"rules": RULES})
        live = service.create(scopes=["leads:read"])["key"]
        revoked_record = service.create(scopes=["leads:read"])
        service.ok("POST", f"/v1/keys/{revoked_record['id']}/revoke")
        last_good = {
            Check("live key", live): ALLOWED,
            Check("live key, another scope", live, "/admin/users"): NO_SCOPE,
            Check("live key, its tenant", live, "/t/acme/leads"): ALLOWED,
            Check("live key, another tenant", live, "/t/acmf/leads"): NOT_FOUND,
            Check("revoked key", revoked_record["key"]): REVOKED,
        }
        with following_gateway(module, service.feed_token, saboteur.port) as gw:
            watch = Watch([WorkerProbe(gw, "gateway", WORKERS)])
            watch.await_switch("the first table", time.monotonic(),
                               {check: (NOT_CONFIGURED, outcome) for check, outcome in last_good.items()},
                               timeout=FIRST_TABLE_S)

            failures, tables, offset = counter(gw, FAILURES), counter(gw, TABLES), len(gw.log_text())
            saboteur.set_mode(mode)
            # One change (an import is one transaction, so one feed answer
            # holds both lines) whose damaged lines would let a key through
            # somewhere: a new key made another tenant's or given
            # admin:write, a revoked one made live.
            created, imported = "sk_live_" + "n" * 24, "sk_live_" + "i" * 24
            answer = service.import_lines([
                {"id": "key_imported_live", "sha256": sha256_hex(created), "tenant": "acme",
                 "scopes": ["leads:read"]},
                {"id": "key_imported_revoked", "sha256": sha256_hex(imported), "tenant": "acme",
                 "scopes": ["leads:read"], "revoked": True}])
            assert answer.status == 200, answer.text
            unseen = {
                Check("created", created): INVALID,
                Check("created, another scope", created, "/admin/users"): INVALID,
                Check("created, another tenant", created, "/t/acmf/leads"): INVALID,
                Check("imported revoked", imported): INVALID,
            }
            rounds = watch.hold(f"{mode}: damaged feed answers", {**last_good, **unseen},
                                lambda: counter(gw, FAILURES) >= failures + 3 and retried(saboteur), 30)
            counts = saboteur.counts()
            print(f"\n{mode}: {counts['sabotaged']} answers damaged ({counts['damaged_since_switch']} to requests "
                  f"made after the switch), {counter(gw, FAILURES) - failures} refusals "
                  f"counted, the last good table held over {rounds} rounds on every worker")
            assert counter(gw, TABLES) == tables, f"{mode}: a table was taken from damaged answers"
            assert_failure_logged(gw, offset, service.feed_token, mode)

            saboteur.set_mode("honest")
            honest = time.monotonic()
            switch = watch.await_switch(
                f"{mode}: recovery once the answers are honest", honest,
                {Check("created", created): (INVALID, ALLOWED),
                 Check("created, another scope", created, "/admin/users"): (INVALID, NO_SCOPE),
                 Check("created, another tenant", created, "/t/acmf/leads"): (INVALID, NOT_FOUND),
                 Check("imported revoked", imported): (INVALID, REVOKED)},
                last_good, timeout=RECOVERY_S)
            print(switch.report(since="the saboteur turned honest"))
            assert counter(gw, TABLES) > tables, f"{mode}: no table counted on recovery"
