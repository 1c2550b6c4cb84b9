"""The key service under concurrent writers and a hard kill (issue 20):
creates and revokes from many processes at once, through the API and
straight into the database with `apikey --db` beside the running service,
lose no update and never pass the tenant cap; a service killed with
SIGKILL in the middle of an import comes back with the import all there
or not at all.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

from key_service import KeyService, apikey_binary, clean_env, imported_key

WRITERS = 24


def cli(service: KeyService, way: str, *args: str) -> subprocess.Popen:
    """Starts one CLI process writing through the API or into the database."""
    target = ["--server", service.url] if way == "server" else ["--db", str(service.db)]
    env = {**clean_env(), "APIKEY_ADMIN_TOKEN": service.admin_token}
    return subprocess.Popen([str(apikey_binary()), *target, "--json", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def finish(processes: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    return [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in processes]


def test_parallel_creates_and_revokes_from_many_processes_lose_nothing(tmp_path):
    with KeyService(tmp_path / "service", "--quiet") as service:
        ways = ["server" if i % 3 else "db" for i in range(WRITERS)]
        created = finish([cli(service, way, "create", "--tenant", f"t{i % 4}", "--name", f"k{i}", "--scopes", "")
                          for i, way in enumerate(ways)])
        ids = []
        for code, out, err in created:
            assert code == 0, err
            ids.append(json.loads(out)["id"])
        assert len(set(ids)) == WRITERS
        doomed = ids[::2]
        revoked = finish([cli(service, ways[i], "revoke", key_id) for i, key_id in enumerate(doomed)])
        assert all(code == 0 for code, _, _ in revoked), revoked
        records = {record["id"]: record for record in service.all_keys()}
        assert set(records) == set(ids), f"lost keys: {set(ids) - set(records)}"
        assert {key_id for key_id, record in records.items() if record["revoked"]} == set(doomed)
        assert service.sql("SELECT count(*) FROM keys") == [(WRITERS,)]


def test_concurrent_creates_never_pass_the_tenant_cap(tmp_path):
    cap = 5
    with KeyService(tmp_path / "service", "--quiet") as service:
        service.put_settings({"max_keys_per_tenant": cap})
        results = finish([cli(service, "server" if i % 2 else "db", "create", "--tenant", "race",
                              "--name", f"k{i}", "--scopes", "") for i in range(WRITERS)])
        made = [out for code, out, _ in results if code == 0]
        refused = [json.loads(err)["error"]["code"] for code, _, err in results if code != 0]
        assert len(made) == cap, f"{len(made)} keys made past a cap of {cap}"
        assert refused == ["key_limit_reached"] * (WRITERS - cap), refused
        assert service.sql("SELECT count(*) FROM keys WHERE tenant = 'race'") == [(cap,)]


def test_a_service_killed_mid_import_keeps_all_of_it_or_none(tmp_path):
    count = 300_000
    with KeyService(tmp_path / "service", "--quiet") as service:
        service.put_settings({})
        body = "".join(json.dumps(imported_key(i, tenant=f"t{i % 500}")) + "\n" for i in range(count))
        answers = []

        def post():
            try:
                answers.append(service.request("POST", "/v1/keys/import", body, timeout=300))
            except OSError as error:  # the connection dies with the process
                answers.append(error)

        sender = threading.Thread(target=post)
        sender.start()
        wal = service.db.with_name(service.db.name + "-wal")
        deadline = time.monotonic() + 120
        # The import is in its transaction once its pages spill into the WAL.
        while time.monotonic() < deadline and not answers:
            if wal.exists() and wal.stat().st_size > 8 * 1024 * 1024:
                break
            time.sleep(0.005)
        assert not answers, f"the import finished before the kill: {answers}"
        service.stop(signal.SIGKILL)
        sender.join(timeout=60)
        assert isinstance(answers[0], OSError) or answers[0].status != 200, answers

        service.start()
        assert service.sql("PRAGMA integrity_check") == [("ok",)]
        stored = service.sql("SELECT count(*) FROM keys")[0][0]
        assert stored in (0, count), f"{stored} of {count} keys survived the kill"
        if stored == 0:
            again = service.request("POST", "/v1/keys/import", body, timeout=300)
            assert again.json == {"imported": count}, again.text
        assert service.sql("SELECT count(*) FROM keys") == [(count,)]
