"""The `apikey` CLI on the key service (issue 20): the same commands on
the database (`--db`) and through a running service (`--server`), with
the same output and the same error codes; `import-state` moving an old
state file into a database; `render` and `--ecds-dir` from a database,
enforced by a real Envoy; and the mistakes in choosing where the keys live.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from harness import ECDS_FILE, Gateway, cli_filter_args
from key_service import KeyService, apikey_binary, clean_env, imported_key, sha256_hex
from test_control_plane import ENFORCED_WITHIN, call, code, wait_for_code

PLANS = {"pro": {"scopes": ["leads:*"]}, "free": {"scopes": ["leads:read"]}}
RULES = [{"path_prefix": "/api/v1/leads", "methods": ["GET", "HEAD"], "scope": "leads:read"}]
RAW_KEY = re.compile(r"^sk_live_[0-9A-Za-z]{24}$")


class Cli:
    """The CLI pointed at the service's database or at the service."""

    def __init__(self, service: KeyService, way: str):
        self.service, self.way = service, way
        self.target = ["--db", str(service.db)] if way == "db" else ["--server", service.url]

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        env = {**clean_env(), "APIKEY_ADMIN_TOKEN": self.service.admin_token}
        return subprocess.run([str(apikey_binary()), *self.target, *args], input=stdin, capture_output=True,
                              text=True, env=env, timeout=60)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        done = self.run(*args, stdin=stdin)
        assert done.returncode == 0, f"apikey {self.way} {args}: {done.stderr}"
        return done.stdout

    def refused(self, *args: str) -> dict:
        done = self.run("--json", *args)
        assert done.returncode == 1, f"apikey {self.way} {args} was not refused: {done.stdout} {done.stderr}"
        return json.loads(done.stderr)["error"]


@pytest.fixture(params=["db", "server"])
def cli(request, tmp_path):
    with KeyService(tmp_path / "service", "--quiet") as service:
        yield Cli(service, request.param)


def test_keys_are_managed_the_same_way_on_the_database_and_through_the_service(cli, tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"plans": PLANS, "max_keys_per_tenant": 3}))
    assert cli.ok("settings", "put", str(settings)).strip() == "settings stored"
    assert json.loads(cli.ok("settings", "get")) == {"plans": PLANS, "max_keys_per_tenant": 3}

    key = cli.ok("create", "--tenant", "acme", "--name", "CRM", "--scopes", "leads:read", "--plan", "pro").strip()
    assert RAW_KEY.match(key), f"create printed {key!r}, not the key alone"
    listed = json.loads(cli.ok("--json", "list"))
    assert len(listed) == 1 and "sha256" not in listed[0]
    key_id = listed[0]["id"]
    table = cli.ok("list")
    assert key_id in table and listed[0]["hint"] in table and key not in table
    shown = json.loads(cli.ok("--json", "show", key_id))
    assert (shown["tenant"], shown["plan"], shown["last_used_at"]) == ("acme", "pro", None)
    assert key not in cli.ok("show", key_id)

    rotated = json.loads(cli.ok("--json", "rotate", key_id, "--grace", "1h"))
    assert rotated["replaces"] == key_id and rotated["sha256"] == sha256_hex(rotated["key"])
    assert cli.refused("rotate", key_id)["code"] == "conflict"
    assert json.loads(cli.ok("--json", "revoke", rotated["id"]))["revoked"] is True

    cli.ok("create", "--tenant", "acme", "--name", "second", "--scopes", "")
    cli.ok("create", "--tenant", "acme", "--name", "third", "--scopes", "")
    assert cli.refused("create", "--tenant", "acme", "--name", "fourth", "--scopes", "")["code"] == \
        "key_limit_reached"
    assert cli.refused("create", "--tenant", "acme", "--name", "x", "--scopes", "", "--plan", "gold")["code"] == \
        "invalid_request"
    assert cli.refused("show", "key_nobody")["code"] == "not_found"

    lines = tmp_path / "keys.ndjson"
    lines.write_text("".join(json.dumps(imported_key(i, tenant=f"b{i}")) + "\n" for i in range(5)))
    assert cli.ok("import", str(lines)).strip() == "imported 5 keys"
    assert cli.refused("import", str(lines))["code"] == "conflict"
    assert json.loads(cli.ok("--json", "import", stdin=json.dumps(imported_key(9)) + "\n")) == {"imported": 1}

    page = json.loads(cli.ok("--json", "list", "--limit", "3"))
    assert len(page["keys"]) == 3 and page["next_cursor"]
    rest = json.loads(cli.ok("--json", "list", "--limit", "100", "--cursor", page["next_cursor"]))
    every = json.loads(cli.ok("--json", "list"))
    assert [r["id"] for r in page["keys"] + rest["keys"]] == [r["id"] for r in every]
    assert len(every) == 10 and every[0]["id"] == "imp_bulk_9", "not newest first"
    assert json.loads(cli.ok("--json", "list", "--tenant", "acme"))[0]["tenant"] == "acme"


def test_the_raw_key_goes_to_stdout_once_and_nowhere_else(cli):
    done = cli.run("create", "--tenant", "acme", "--name", "x", "--scopes", "")
    key = done.stdout.strip()
    assert RAW_KEY.match(key) and key not in done.stderr
    assert "shown once" in done.stderr


def old_state_file() -> dict:
    """A state file as the old `apikey --state` commands wrote it (the
    filter's §1 configuration plus the CLI's created_at and replaced_by):
    three keys made, the first rotated into a fourth, the second revoked."""
    def key(n: int, **extra) -> dict:
        raw = f"sk_live_oldState{n:016d}"
        return {"id": f"key_old{n}", "sha256": sha256_hex(raw), "tenant": "acme", "scopes": ["leads:read"],
                "plan": "pro", "env": "live", "name": f"k{n}", "hint": f"{raw[:11]}…{raw[-4:]}",
                "created_at": f"2026-01-0{n + 1}T00:00:00Z", **extra}
    return {
        "keys": [key(0, expires_at="2099-01-01T00:00:00Z", replaced_by="key_old3"), key(1, revoked=True), key(2),
                 key(3, name="k0 (rotated)")],
        "plans": PLANS,
        "key_prefixes": ["sk_live_", "sk_test_"],
    }


def test_import_state_moves_a_state_file_into_a_database(tmp_path):
    state = tmp_path / "state.json"
    env = clean_env()
    before = old_state_file()
    state.write_text(json.dumps(before, indent=2, ensure_ascii=False))
    keys = before["keys"]
    rotated = keys[3]

    db = tmp_path / "keys.db"
    done = subprocess.run([str(apikey_binary()), "--db", str(db), "--json", "import-state", str(state)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"imported": 4, "max_keys_per_tenant": 25}
    again = subprocess.run([str(apikey_binary()), "--db", str(db), "--json", "import-state", str(state)],
                           capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 1 and json.loads(again.stderr)["error"]["code"] == "already_exists"

    rendered = subprocess.run([str(apikey_binary()), "--db", str(db), "render", "config"], capture_output=True,
                              text=True, env=env, timeout=60)
    config = json.loads(rendered.stdout)
    assert {k: v for k, v in config.items() if k != "keys"} == {k: v for k, v in before.items() if k != "keys"}
    assert [(k["id"], k["sha256"], k.get("revoked", False), k.get("expires_at"), k.get("replaced_by"))
            for k in config["keys"]] == \
        [(k["id"], k["sha256"], k.get("revoked", False), k.get("expires_at"), k.get("replaced_by"))
         for k in before["keys"]]

    with KeyService(tmp_path / "served", "--quiet", db=db) as service:
        records = {r["id"]: r for r in service.all_keys()}
        assert records[rotated["id"]]["replaces"] == keys[0]["id"]
        assert records[keys[1]["id"]]["state"] == "revoked"
        assert service.ok("GET", "/v1/settings")["max_keys_per_tenant"] == 25


def test_a_database_renders_what_envoy_enforces(module, tmp_path):
    """--db with --ecds-dir: each change rewrites the ECDS file from the
    database, as a state file's commands do, and Envoy enforces it."""
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"plans": PLANS, "rules": RULES}))
    db = tmp_path / "keys.db"
    with Gateway(module, config=None) as gw:
        base = [str(apikey_binary()), "--db", str(db), "--ecds-dir", str(gw.ecds_dir),
                *cli_filter_args(module)]

        def change(*args: str) -> str:
            before = gw.ecds_counters()
            done = subprocess.run([*base, *args], capture_output=True, text=True, env=clean_env(), timeout=60)
            assert done.returncode == 0, done.stderr
            assert gw.await_update(before), f"Envoy refused the ECDS file of apikey {args}"
            return done.stdout

        change("settings", "put", str(settings))
        created = json.loads(change("--json", "create", "--tenant", "acme", "--name", "x", "--scopes",
                                    "leads:read", "--plan", "pro"))
        assert code(call(gw, created["key"])) == "200"
        rendered = tmp_path / "rendered.yaml"
        subprocess.run([*base, "render", "ecds", "--out", str(rendered)], check=True, env=clean_env())
        assert rendered.read_text() == (gw.ecds_dir / ECDS_FILE).read_text()
        istio = subprocess.run([*base, "render", "istio", "--url", "oci://example/apikey:1"], capture_output=True,
                               text=True, env=clean_env(), check=True)
        assert created["sha256"] in istio.stdout and "kind: WasmPlugin" in istio.stdout
        change("revoke", created["id"])
        assert wait_for_code(gw, created["key"], "key_revoked", within=ENFORCED_WITHIN) <= ENFORCED_WITHIN


@pytest.mark.parametrize("args,says", [
    (["--db", "a.db", "--state", "s.json", "list"], "--state"),
    (["--db", "a.db", "--server", "http://x", "list"], "give one"),
    (["--server", "http://127.0.0.1:1", "list"], "APIKEY_ADMIN_TOKEN"),
    (["--db", "a.db", "update", "key_x", "--name", "n"], "'update'"),
    (["--db", "a.db", "delete", "key_x"], "'delete'"),
    (["--server", "http://x", "init"], "--db"),
    (["--server", "http://x", "import-state", "s.json"], "--db"),
    (["--server", "http://x", "render", "ecds"], "--db"),
    (["--server", "http://x", "--ecds-dir", "d", "list"], "--ecds-dir"),
    (["--db", "a.db", "--max-keys-per-tenant", "3", "list"], "max_keys_per_tenant"),
    (["--db", "a.db", "rotate", "key_x", "--prefix", "p_"], "'--prefix'"),
    (["--server", "http://x", "serve", "--listen", "127.0.0.1:0", "--feed-token-file", "f"], "--db"),
])
def test_mistakes_in_where_the_keys_live_are_usage_errors(tmp_path, args, says):
    done = subprocess.run([str(apikey_binary()), *args], capture_output=True, text=True, env=clean_env(),
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 2, (args, done.returncode, done.stderr)
    assert says in done.stderr, (args, done.stderr)
    assert not (tmp_path / "a.db").exists(), "a refused command created the database"


@pytest.mark.parametrize("args", [["list"], ["show", "key_x"], ["revoke", "key_x"], ["render", "config"]])
def test_a_command_on_a_missing_database_is_refused_and_makes_none(tmp_path, args):
    """Without --db the CLI works on ./apikey.db; a command that reads or
    changes keys refuses a database that is not there rather than making
    an empty one in whatever directory it was run from."""
    done = subprocess.run([str(apikey_binary()), "--json", *args], capture_output=True, text=True,
                          env=clean_env(), cwd=tmp_path, timeout=60)
    assert done.returncode == 1, (args, done.stderr)
    error = json.loads(done.stderr)["error"]
    assert error["code"] == "no_database" and "apikey.db" in error["message"], error
    assert list(tmp_path.iterdir()) == [], "a refused command left a file"


def test_import_state_explains_a_missing_or_invalid_file(tmp_path):
    def refused(path: Path) -> dict:
        done = subprocess.run([str(apikey_binary()), "--db", str(tmp_path / "k.db"), "--json", "import-state",
                               str(path)], capture_output=True, text=True, env=clean_env(), timeout=60)
        assert done.returncode == 1, done.stderr
        return json.loads(done.stderr)["error"]

    missing = refused(tmp_path / "apikey-state.json")
    assert missing["code"] == "no_state" and "apikey-state.json" in missing["message"], missing
    broken = tmp_path / "broken.json"
    broken.write_text('{"keys": [{"id": "k"}]}')
    invalid = refused(broken)
    assert invalid["code"] == "invalid_state" and "keys[0]" in invalid["message"], invalid


def test_serve_refuses_weak_or_shared_tokens(tmp_path):
    token = tmp_path / "t"
    token.write_text("same-token-0123456789\n")
    short = tmp_path / "s"
    short.write_text("short\n")
    for admin, feed, says in [(token, token, "the same"), (short, token, "shorter")]:
        done = subprocess.run([str(apikey_binary()), "--db", str(tmp_path / "k.db"), "serve", "--listen",
                               "127.0.0.1:0", "--admin-token-file", str(admin), "--feed-token-file", str(feed)],
                              capture_output=True, text=True, env=clean_env(), timeout=60)
        assert done.returncode == 1 and says in done.stderr, done.stderr
        assert "same-token-0123456789" not in done.stderr and "short\n" not in done.stderr
