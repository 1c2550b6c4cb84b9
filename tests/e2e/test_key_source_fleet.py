"""Two gateways following one key service (contract §8.3, issue 21): a
create, a revocation, a rotation with a grace period (the old key still
allowed, the new one allowed), a rotation without one (the old key
denied) and a settings change, each made through the API, are enforced on
every worker of both gateways (Envoy `--concurrency 4` each) within 1 s
of the API's answer; and a key no change touches stays allowed on every
worker while a stream of changes goes by as fast as the API answers.

"Every worker" is known, not hoped for: worker_probes pins a keep-alive
connection to each worker by Envoy's per-worker connection counters and
asks on all of them, round after round, recording when each request went
out and came back. The figure asserted is the time from the API's answer
to the moment the last (gateway, worker) answered the new way for good
(an upper bound: the first answer of its final run of new answers had
come back by then); it is printed with `-s`. After each change, fresh
connections are opened until every worker has answered on one, and each
must answer the new way too.
"""

from __future__ import annotations

import threading
import time

from harness import Gateway
from key_service import KeyService
from test_key_source import control_cluster
from worker_probes import ALLOWED, Check, Switch, Watch, WorkerProbe, with_worker_stats

CONTRACT_BOUND_S = 1.0  # contract §8.3: on every worker of every gateway within 1 second
WORKERS = 4
INVALID = (401, "invalid_key")
REVOKED = (401, "key_revoked")
EXPIRED = (401, "key_expired")
NO_SCOPE = (403, "insufficient_scope")
NOT_CONFIGURED = (503, "not_configured")
FIRST_TABLE_S = 30  # start-up, not a contract bound: two Envoys and eight VMs on a shared 2-core machine


def assert_fresh_connections_agree(probes: list[WorkerProbe], expected: dict[Check, tuple], what: str) -> None:
    """Fresh connections to every worker of every gateway answer `expected`."""
    for probe in probes:
        for worker, outcomes in probe.fresh_sweep(list(expected)).items():
            for check, outcome in expected.items():
                assert outcomes[check.name] == outcome, \
                    f"{what}: {probe.label} worker {worker} answered {check.name!r} with " \
                    f"{outcomes[check.name]} on a fresh connection, expected {outcome}"


def test_changes_through_the_api_reach_every_worker_of_two_gateways_within_a_second(module, tmp_path):
    with KeyService(tmp_path / "service", "--quiet") as service:
        service.put_settings({"rules": [{"path_prefix": "/api", "scope": "leads:read"}]})
        # Untouched by every change below: allowed on every worker throughout.
        bystander = Check("bystander", service.create(scopes=["leads:read", "leads:write"])["key"])
        to_rotate = service.create(scopes=["leads:read"])
        rotated = Check("rotated (in grace)", to_rotate["key"])
        writer = Check("leads:write only", service.create(scopes=["leads:write"])["key"])
        config = {"key_source": {"cluster": "apikey_control", "token": service.feed_token,
                                 "authority": "apikey-control"}}
        customize = with_worker_stats(control_cluster(service.port))
        with Gateway(module, config=config, concurrency=WORKERS, customize=customize) as one, \
                Gateway(module, config=config, concurrency=WORKERS, customize=customize) as two:
            probes = [WorkerProbe(one, "gateway 1", WORKERS), WorkerProbe(two, "gateway 2", WORKERS)]
            watch = Watch(probes)
            switches: list[Switch] = []

            def changed(what: str, since: float, changes: dict, holds: dict) -> None:
                switch = watch.await_switch(what, since, changes, {bystander: ALLOWED, **holds})
                print("\n" + switch.report())
                switches.append(switch)
                expected = {check: new for check, (_, new) in changes.items()}
                assert_fresh_connections_agree(probes, {**expected, bystander: ALLOWED, **holds}, what)

            watch.await_switch("the first table", time.monotonic(), {bystander: (NOT_CONFIGURED, ALLOWED)},
                               timeout=FIRST_TABLE_S)

            created = service.create(scopes=["leads:read"])
            answered = time.monotonic()
            fresh = Check("created", created["key"])
            changed("create", answered, {fresh: (INVALID, ALLOWED)}, {rotated: ALLOWED})

            service.ok("POST", f"/v1/keys/{created['id']}/revoke")
            changed("revoke", time.monotonic(), {fresh: (ALLOWED, REVOKED)}, {rotated: ALLOWED})

            successor = service.ok("POST", f"/v1/keys/{to_rotate['id']}/rotate", {"grace_seconds": 3600},
                                   status=201)
            answered = time.monotonic()
            new = Check("rotated's successor", successor["key"])
            changed("rotate, 1 h grace", answered, {new: (INVALID, ALLOWED)}, {rotated: ALLOWED})

            # The successor rotated at once: it is denied, its own successor allowed.
            third = service.ok("POST", f"/v1/keys/{successor['id']}/rotate", {"grace_seconds": 0}, status=201)
            answered = time.monotonic()
            newest = Check("successor's successor", third["key"])
            changed("rotate, no grace", answered, {new: (ALLOWED, EXPIRED), newest: (INVALID, ALLOWED)},
                    {rotated: ALLOWED})

            # A rule's scope: leads:read keys lose /api, leads:write keys gain it.
            service.put_settings({"rules": [{"path_prefix": "/api", "scope": "leads:write"}]})
            changed("settings: the /api rule's scope", time.monotonic(),
                    {rotated: (ALLOWED, NO_SCOPE), newest: (ALLOWED, NO_SCOPE), writer: (NO_SCOPE, ALLOWED)}, {})

            for probe in probes:
                probe.close()
            slow = [s for s in switches if s.first_new_received > CONTRACT_BOUND_S]
            assert not slow, "not on every worker of both gateways within 1 s of the API's answer:\n" + \
                "\n".join(s.report() for s in slow)


STREAM_KEYS = 300  # keys created by the stream, every other one revoked at once (450 changes, a few seconds)


def test_a_key_untouched_by_a_stream_of_changes_stays_allowed_on_every_worker_of_two_gateways(
        module, tmp_path):
    # Changes as fast as the API answers them (one writer: create, and
    # revoke every other key at once), while every worker of both gateways
    # is asked about a key none of them touches: it must be allowed in every
    # answer. The stream's last state must then be on every worker within
    # 1 s of its last API answer, and every key of it as the API left it.
    with KeyService(tmp_path / "service", "--quiet") as service:
        service.put_settings({"rules": [{"path_prefix": "/api", "scope": "leads:read"}]})
        bystander = Check("bystander", service.create(scopes=["leads:read"])["key"])
        config = {"key_source": {"cluster": "apikey_control", "token": service.feed_token,
                                 "authority": "apikey-control"}}
        customize = with_worker_stats(control_cluster(service.port))
        with Gateway(module, config=config, concurrency=WORKERS, customize=customize) as one, \
                Gateway(module, config=config, concurrency=WORKERS, customize=customize) as two:
            probes = [WorkerProbe(one, "gateway 1", WORKERS), WorkerProbe(two, "gateway 2", WORKERS)]
            watch = Watch(probes)
            watch.await_switch("the first table", time.monotonic(), {bystander: (NOT_CONFIGURED, ALLOWED)},
                               timeout=FIRST_TABLE_S)

            made: list[tuple[dict, bool]] = []  # (record, revoked)
            last_answer: list[float] = []
            errors: list[BaseException] = []

            def stream() -> None:
                try:
                    for index in range(STREAM_KEYS):
                        record = service.create(scopes=["leads:read"], name=f"stream {index}")
                        revoke = index % 2 == 1
                        if revoke:
                            service.ok("POST", f"/v1/keys/{record['id']}/revoke")
                        made.append((record, revoke))
                        last_answer[:] = [time.monotonic()]
                except BaseException as error:  # noqa: BLE001 (re-raised in the test's thread)
                    errors.append(error)

            writer = threading.Thread(target=stream)
            started = time.monotonic()
            writer.start()
            wrong: list[str] = []
            probes_made = 0
            while writer.is_alive():
                for answer in watch.round([bystander]):
                    probes_made += 1
                    if answer.outcome != ALLOWED:
                        wrong.append(f"{answer.gateway} worker {answer.worker} {answer.outcome} at "
                                     f"{(answer.sent - started) * 1000:.0f} ms")
            writer.join()
            assert not errors, f"the stream of API changes failed: {errors[0]!r}"
            print(f"\nstream: {STREAM_KEYS} keys created, {STREAM_KEYS // 2} revoked, in "
                  f"{(last_answer[0] - started) * 1000:.0f} ms; the untouched key asked {probes_made} times, "
                  f"{len(wrong)} answers not 200")

            # The last two changes: the last live key and the last revoked one.
            last_live = next(Check("last live", r["key"]) for r, revoked in reversed(made) if not revoked)
            last_revoked = next(Check("last revoked", r["key"]) for r, revoked in reversed(made) if revoked)
            switch = watch.await_switch("the stream's last changes", last_answer[0],
                                        {last_live: (INVALID, ALLOWED),
                                         last_revoked: (frozenset({INVALID, ALLOWED}), REVOKED)},
                                        {bystander: ALLOWED})
            print(switch.report())
            watch.expect("every key of the stream", {Check(f"stream {index}", record["key"]): REVOKED if revoked
                                                     else ALLOWED for index, (record, revoked) in enumerate(made)})
            for probe in probes:
                probe.close()
            assert not wrong, f"a key no change touched was denied during the stream ({len(wrong)} of " \
                              f"{probes_made} answers): " + "; ".join(wrong[:10])
            assert switch.first_new_received <= CONTRACT_BOUND_S, \
                f"the stream's last changes not on every worker within 1 s: {switch.report()}"
