"""The key service's management API (issue 20, contract §8.1-§8.2), against
the real `apikey serve` binary: every endpoint's success and refusals, the
tokens, body limits, the shape of every error, cursors, the tenant cap,
all-or-nothing imports, rotation, and where a raw key may (and may not)
appear.
"""

from __future__ import annotations

import json
import re
import signal
import time
from datetime import datetime, timezone

import pytest

from key_service import KeyService, imported_key, sha256_hex

PLANS = {"pro": {"scopes": ["leads:*"], "rate_limits": {"*": {"requests": 300, "period_seconds": 60}}},
         "free": {"scopes": ["leads:read"]}}
SETTINGS = {"plans": PLANS, "rules": [{"path_prefix": "/api/v1/leads", "scope": "leads:read"}]}
KEY = re.compile(r"^(?P<prefix>.+_)(?P<random>[0-9A-Za-z]{24})$")
# Every management route, with a body that would be valid for it.
ROUTES = [("GET", "/v1/settings", None), ("PUT", "/v1/settings", {}), ("POST", "/v1/keys", {"tenant": "a"}),
          ("POST", "/v1/keys/import", ""), ("GET", "/v1/keys", None), ("GET", "/v1/keys/key_x", None),
          ("POST", "/v1/keys/key_x/revoke", None), ("POST", "/v1/keys/key_x/rotate", None),
          ("GET", "/v1/nothing", None)]


@pytest.fixture
def service(tmp_path):
    with KeyService(tmp_path / "service", "--max-body-bytes", "4096", "--max-import-bytes", "200000") as running:
        running.put_settings(SETTINGS)
        yield running


def at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def assert_error(answer, status: int, code: str, field: str | None = None):
    assert answer.status == status, f"expected {status} {code}, got {answer.status} {answer.text}"
    assert answer.headers.get("content-type") == "application/json", answer.headers
    body = answer.json
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    if field is not None:
        assert body["error"].get("field") == field, f"expected field {field!r}: {body}"
    return body["error"]


# --- tokens -------------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "Bearer wrong-token-0123456789", "feed", "Basic x", "Bearer", ""],
                         ids=["missing", "wrong", "feed-token", "basic", "bearer-alone", "empty"])
def test_every_management_route_refuses_anything_but_the_admin_token(service, token):
    for method, path, body in ROUTES:
        answer = service.request(method, path, body, token=token)
        assert_error(answer, 401, "unauthorized")
        assert answer.headers.get("www-authenticate", "").startswith("Bearer"), (method, path, answer.headers)
    assert len(service.all_keys()) == 0, "a refused request changed something"


def test_the_admin_token_itself_is_never_logged(service):
    service.request("GET", "/v1/keys", token="Bearer " + service.admin_token + "x")
    service.ok("GET", "/v1/keys")
    service.request("GET", "/v1/keys", token="feed")
    log = service.log()
    assert service.admin_token not in log and service.feed_token not in log, "a token reached the log"


def test_health_and_metrics_need_no_token_and_count_routes_by_template(service):
    assert service.request("GET", "/healthz", token=None).json == {"status": "ok"}
    created = service.create(scopes=["leads:read"])
    service.request("GET", f"/v1/keys/{created['id']}")
    service.request("GET", "/v1/keys/key_nobody")
    metrics = service.request("GET", "/metrics", token=None)
    assert metrics.status == 200
    text = metrics.text
    assert 'apikey_service_requests_total{route="/v1/keys",method="POST",status="201"} 1' in text, text
    assert 'apikey_service_requests_total{route="/v1/keys/{id}",method="GET",status="404"} 1' in text, text
    assert 'apikey_service_request_duration_seconds_bucket{le=' in text or \
        'apikey_service_request_duration_seconds_bucket{route=' in text, text
    assert created["id"] not in text, "a key id reached the metrics labels"


def test_unknown_routes_are_404_and_wrong_methods_405_in_the_error_shape(service):
    assert_error(service.request("GET", "/v1/keys/a/b/c"), 404, "not_found")
    assert_error(service.request("GET", "/nothing", token=None), 404, "not_found")
    assert_error(service.request("DELETE", "/v1/keys"), 405, "method_not_allowed")
    assert_error(service.request("GET", "/v1/keys/import"), 405, "method_not_allowed")


# --- settings -----------------------------------------------------------------

def test_settings_round_trip_with_the_cap(service):
    settings = {**SETTINGS, "key_prefixes": ["sk_live_", "sk_test_"], "max_keys_per_tenant": 5}
    assert service.put_settings(settings) == settings
    assert service.ok("GET", "/v1/settings") == settings


@pytest.mark.parametrize("body,field", [
    ({"plans": {"pro": {"scopes": "leads:*"}}}, "plans.pro.scopes"),
    ({"schemes": ["bearer", "cookie"]}, "schemes[1]"),
    ({"colour": "red"}, "colour"),
    ({"keys": []}, "keys"),
    ({"max_keys_per_tenant": 0}, "max_keys_per_tenant"),
    ({"max_keys_per_tenant": "5"}, "max_keys_per_tenant"),
    ('{"plans": {"a": {}, "a": {}}}', "plans.a"),
    ('{"realm": "x", "realm": "x"}', "realm"),
], ids=["plan-scopes", "scheme", "unknown-field", "keys", "cap-zero", "cap-string", "twice-nested", "twice"])
def test_invalid_settings_are_refused_naming_the_field(service, body, field):
    error = assert_error(service.request("PUT", "/v1/settings", body), 400, "invalid_request")
    assert error["field"].startswith(field), error
    assert service.ok("GET", "/v1/settings") == SETTINGS, "refused settings were stored"


@pytest.mark.parametrize("body", ["{", "[]", "null", '{"plans": {}} trailing', "\xff"],
                         ids=["truncated", "array", "null", "trailing", "not-utf8"])
def test_malformed_settings_bodies_are_400(service, body):
    assert_error(service.request("PUT", "/v1/settings", body), 400, "invalid_request")


def test_settings_that_would_break_a_stored_key_are_409(service):
    key = service.create(plan="pro", scopes=["leads:read"])
    error = assert_error(service.request("PUT", "/v1/settings", {"plans": {"free": {}}}), 409, "conflict")
    assert error["id"] == key["id"] and error["field"] == "plan", error
    assert service.ok("GET", "/v1/settings") == SETTINGS


def test_a_settings_body_over_the_limit_is_413(service):
    big = {"plans": {f"plan{i}": {} for i in range(400)}}
    assert len(json.dumps(big)) > 4096
    assert_error(service.request("PUT", "/v1/settings", big), 413, "payload_too_large")


# --- create -------------------------------------------------------------------

def test_create_answers_the_record_and_the_key_once(service):
    before = time.time()
    created = service.create(tenant="acme", scopes=["leads:read"], plan="pro", env="live", name="n8n Production",
                             expires_at="2099-01-31T00:00:00Z",
                             rate_limits={"leads:write": {"requests": 10, "period_seconds": 60}})
    match = KEY.match(created["key"])
    assert match and match["prefix"] == "sk_live_", created["key"]
    assert created["sha256"] == sha256_hex(created["key"])
    assert created["hint"] == f"sk_live_{match['random'][:3]}…{match['random'][-4:]}"
    assert re.fullmatch(r"key_[0-9A-Za-z]{8}", created["id"]), created["id"]
    assert (created["tenant"], created["scopes"], created["plan"], created["env"], created["name"]) == \
        ("acme", ["leads:read"], "pro", "live", "n8n Production")
    assert created["expires_at"] == "2099-01-31T00:00:00Z" and created["revoked"] is False
    assert created["rate_limits"] == {"leads:write": {"requests": 10, "period_seconds": 60}}
    assert before - 1 <= at(created["created_at"]) <= time.time() + 1, created["created_at"]

    shown = service.ok("GET", f"/v1/keys/{created['id']}")
    assert shown["last_used_at"] is None
    for answer in (shown, service.ok("GET", "/v1/keys")):
        text = json.dumps(answer, ensure_ascii=False)
        assert created["key"] not in text and created["sha256"] not in text, answer
        assert created["hint"] in text


def test_the_prefix_follows_env_or_is_given(service):
    assert service.create(env="test")["key"].startswith("sk_test_")
    assert service.create()["key"].startswith("sk_live_")
    assert service.create(prefix="crm_")["key"].startswith("crm_")
    service.put_settings({**SETTINGS, "key_prefixes": ["sk_live_"]})
    assert_error(service.request("POST", "/v1/keys", {"tenant": "a", "prefix": "crm_"}), 400,
                 "invalid_request", "prefix")


@pytest.mark.parametrize("body,field", [
    ({"tenant": "a", "colour": "red"}, "colour"),
    ({"tenant": "a", "id": "mine"}, "id"),
    ({"tenant": "a", "sha256": "0" * 64}, "sha256"),
    ({"scopes": ["x"]}, "tenant"),
    ({"tenant": 5}, "tenant"),
    ({"tenant": "a", "plan": "gold"}, "plan"),
    ({"tenant": "a", "scopes": ["leads:*:x*"]}, "scopes[0]"),
    ({"tenant": "a", "scopes": "leads:read"}, "scopes"),
    ({"tenant": "a", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ({"tenant": "a", "expires_at": "tomorrow"}, "expires_at"),
    ({"tenant": "a", "rate_limits": {"*": {"requests": 0, "period_seconds": 1}}}, "rate_limits"),
    ({"tenant": "a", "prefix": "has space"}, "prefix"),
    ({"tenant": "a\u0001"}, "tenant"),
    ('{"tenant": "a", "tenant": "a"}', "tenant"),
    ('{"tenant": "a", "rate_limits": {"*": {"requests": 1, "requests": 1, "period_seconds": 1}}}',
     "rate_limits.*.requests"),
], ids=["unknown", "id", "sha256", "no-tenant", "tenant-type", "plan", "scope-pattern", "scopes-type",
        "past-expiry", "bad-date", "zero-limit", "bad-prefix", "control-char", "twice", "twice-nested"])
def test_create_refusals_name_the_field_and_store_nothing(service, body, field):
    error = assert_error(service.request("POST", "/v1/keys", body), 400, "invalid_request")
    assert error["field"].startswith(field), error
    assert service.all_keys() == []


@pytest.mark.parametrize("body", ["", "{", "[]", '"x"', '{"tenant": "a"} {}'],
                         ids=["empty", "truncated", "array", "string", "two-documents"])
def test_malformed_create_bodies_are_400(service, body):
    assert_error(service.request("POST", "/v1/keys", body), 400, "invalid_request")
    assert service.all_keys() == []


def test_a_create_body_over_the_limit_is_413(service):
    answer = service.request("POST", "/v1/keys", {"tenant": "a", "name": "x" * 5000})
    assert_error(answer, 413, "payload_too_large")
    assert service.all_keys() == []


# --- list ---------------------------------------------------------------------

def test_pages_run_newest_first_and_cursors_cover_every_key_once(service):
    made = [service.create(tenant="acme" if i % 2 else "beta", name=f"k{i}")["id"] for i in range(7)]
    seen, cursor, pages = [], None, 0
    while True:
        page = service.ok("GET", "/v1/keys?limit=3" + (f"&cursor={cursor}" if cursor else ""))
        pages += 1
        assert len(page["keys"]) <= 3
        seen += [record["id"] for record in page["keys"]]
        for record in page["keys"]:
            assert "sha256" not in record and "key" not in record, record
            assert record["hint"].startswith("sk_live_"), record
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == list(reversed(made)), (pages, seen, made)
    acme = [record["id"] for record in service.ok("GET", "/v1/keys?tenant=acme&limit=2")["keys"]]
    assert acme == [made[5], made[3]], acme
    assert service.all_keys(tenant="acme") == [r for r in service.all_keys() if r["tenant"] == "acme"]
    # A key made after a page was read shows up on no later page.
    first = service.ok("GET", "/v1/keys?limit=3")
    service.create(name="late")
    rest = service.ok("GET", f"/v1/keys?limit=100&cursor={first['next_cursor']}")
    assert [r["id"] for r in rest["keys"]] == list(reversed(made))[3:]


@pytest.mark.parametrize("query,field", [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=x", "limit"), ("cursor=abc", "cursor"),
    ("cursor=c0", "cursor"), ("colour=red", "colour"), ("limit=2&limit=3", "limit"), ("tenant=a&tenant=b", "tenant"),
])
def test_list_refuses_bad_parameters_naming_them(service, query, field):
    assert_error(service.request("GET", f"/v1/keys?{query}"), 400, "invalid_request", field)


# --- get and revoke -----------------------------------------------------------

def test_an_unknown_id_is_404_everywhere(service):
    for method, path in [("GET", "/v1/keys/key_nobody"), ("POST", "/v1/keys/key_nobody/revoke"),
                         ("POST", "/v1/keys/key_nobody/rotate")]:
        error = assert_error(service.request(method, path), 404, "not_found")
        assert error["id"] == "key_nobody", error


def test_revoke_is_soft_and_kept_for_audit(service):
    key = service.create(scopes=["leads:read"])
    before = time.time()
    revoked = service.ok("POST", f"/v1/keys/{key['id']}/revoke")
    assert revoked["revoked"] is True and revoked["state"] == "revoked", revoked
    assert before - 1 <= at(revoked["revoked_at"]) <= time.time() + 1
    assert service.ok("GET", f"/v1/keys/{key['id']}")["revoked"] is True
    assert [r["id"] for r in service.all_keys()] == [key["id"]], "a revoked key left the list"
    again = service.ok("POST", f"/v1/keys/{key['id']}/revoke", {})
    assert again["revoked_at"] == revoked["revoked_at"], "revoking twice moved revoked_at"
    assert_error(service.request("POST", f"/v1/keys/{key['id']}/revoke", {"reason": "x"}), 400,
                 "invalid_request", "reason")
    assert_error(service.request("POST", f"/v1/keys/{key['id']}/revoke", "{"), 400, "invalid_request")


# --- rotate -------------------------------------------------------------------

def test_rotate_makes_a_like_key_shown_once_and_the_old_one_expires_after_the_grace(service):
    old = service.create(tenant="acme", scopes=["leads:read"], plan="pro", env="test", name="CRM",
                         rate_limits={"*": {"requests": 5, "period_seconds": 1}})
    before = time.time()
    new = service.ok("POST", f"/v1/keys/{old['id']}/rotate", {"grace_seconds": 60}, status=201)
    assert new["replaces"] == old["id"] and new["id"] != old["id"]
    assert KEY.match(new["key"])["prefix"] == "sk_test_" and new["sha256"] == sha256_hex(new["key"])
    for field in ("tenant", "scopes", "plan", "env", "rate_limits"):
        assert new[field] == old[field], field
    assert new["name"] == "CRM (rotated)"
    shown_old = service.ok("GET", f"/v1/keys/{old['id']}")
    assert shown_old["replaced_by"] == new["id"] and shown_old["state"] == "active"
    assert before + 59 <= at(shown_old["expires_at"]) <= time.time() + 61, shown_old["expires_at"]
    assert shown_old["expires_at"] == new["old_expires_at"]
    assert new["key"] not in json.dumps(service.all_keys())

    error = assert_error(service.request("POST", f"/v1/keys/{old['id']}/rotate"), 409, "conflict")
    assert error["replaced_by"] == new["id"], error
    default = service.ok("POST", f"/v1/keys/{new['id']}/rotate", None, status=201)
    expiry = at(service.ok("GET", f"/v1/keys/{new['id']}")["expires_at"])
    assert time.time() + 86_400 - 5 <= expiry <= time.time() + 86_400 + 1, "the default grace is not 24 h"
    assert default["replaces"] == new["id"]


def test_rotate_refuses_revoked_keys_and_bad_graces(service):
    key = service.create()
    for grace in (-1, "60", 1.5, 10 * 366 * 86_400):
        assert_error(service.request("POST", f"/v1/keys/{key['id']}/rotate", {"grace_seconds": grace}), 400,
                     "invalid_request", "grace_seconds")
    assert_error(service.request("POST", f"/v1/keys/{key['id']}/rotate", {"grace": 1}), 400,
                 "invalid_request", "grace")
    service.ok("POST", f"/v1/keys/{key['id']}/revoke")
    error = assert_error(service.request("POST", f"/v1/keys/{key['id']}/rotate"), 409, "conflict")
    assert error["state"] == "revoked"
    assert len(service.all_keys()) == 1, "a refused rotation made a key"


def test_rotation_never_extends_a_key_and_keeps_its_lifetime(service):
    key = service.create(expires_at=datetime.fromtimestamp(time.time() + 30, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    new = service.ok("POST", f"/v1/keys/{key['id']}/rotate", {"grace_seconds": 3600}, status=201)
    assert service.ok("GET", f"/v1/keys/{key['id']}")["expires_at"] == key["expires_at"], "rotation extended the key"
    lifetime = at(key["expires_at"]) - at(key["created_at"])
    assert abs((at(new["expires_at"]) - at(new["created_at"])) - lifetime) <= 1, (key, new)


# --- the tenant cap -----------------------------------------------------------

def test_the_cap_counts_active_keys_only(service):
    service.put_settings({**SETTINGS, "max_keys_per_tenant": 2})
    first = service.create(tenant="capped")
    service.create(tenant="capped")
    error = assert_error(service.request("POST", "/v1/keys", {"tenant": "capped"}), 422, "key_limit_reached")
    assert (error["tenant"], error["limit"]) == ("capped", 2), error
    service.create(tenant="other")
    service.ok("POST", f"/v1/keys/{first['id']}/revoke")
    service.create(tenant="capped")
    # An expired key does not count either.
    expired = imported_key(1, tenant="later", expires_at="2001-01-01T00:00:00Z")
    assert service.import_lines([expired]).json == {"imported": 1}
    service.create(tenant="later")
    service.create(tenant="later")
    assert_error(service.request("POST", "/v1/keys", {"tenant": "later"}), 422, "key_limit_reached")


def test_an_import_past_the_cap_is_422_and_stores_nothing(service):
    service.put_settings({**SETTINGS, "max_keys_per_tenant": 3})
    service.create(tenant="t")
    answer = service.import_lines([imported_key(i, tenant="t") for i in range(3)])
    error = assert_error(answer, 422, "key_limit_reached")
    assert error["tenant"] == "t", error
    assert len(service.all_keys()) == 1


# --- import -------------------------------------------------------------------

def test_import_stores_every_line_with_its_fields(service):
    lines = [imported_key(i, plan="pro", scopes=["leads:read"], name=f"n{i}", hint="sk_live_Abc…wxyz")
             for i in range(5)]
    lines[1]["revoked"] = True
    lines[2]["sha256"] = lines[2]["sha256"].upper()
    assert service.import_lines(lines).json == {"imported": 5}
    stored = {record["id"]: record for record in service.all_keys()}
    assert set(stored) == {line["id"] for line in lines}
    assert stored[lines[1]["id"]]["revoked"] is True and stored[lines[1]["id"]]["state"] == "revoked"
    assert stored[lines[0]["id"]]["plan"] == "pro"
    digests = {row[0].hex() for row in service.sql("SELECT sha256 FROM keys")}
    assert lines[2]["sha256"].lower() in digests, "an upper-case sha256 was not folded"
    # Newest first: the last line is the newest.
    assert service.all_keys()[0]["id"] == lines[-1]["id"]


@pytest.mark.parametrize("case", ["bad-plan", "unknown-field", "raw-key", "duplicate-id-in-body",
                                  "duplicate-sha-in-body", "duplicate-id-stored", "malformed-line",
                                  "array-line", "field-twice", "empty"])
def test_import_is_all_or_nothing_and_names_the_line(service, case):
    stored = service.create(tenant="acme")
    lines = [imported_key(i) for i in range(4)]
    status, code, line, field = 400, "invalid_request", 3, None
    if case == "bad-plan":
        lines[2]["plan"] = "gold"
        field = "plan"
    elif case == "unknown-field":
        lines[2]["colour"] = "red"
        field = "colour"
    elif case == "raw-key":
        lines[2]["key"] = "sk_live_" + "A" * 24
        field = "key"
    elif case == "duplicate-id-in-body":
        lines[2]["id"] = lines[0]["id"]
        status, code, field = 409, "conflict", "id"
    elif case == "duplicate-sha-in-body":
        lines[2]["sha256"] = lines[0]["sha256"].upper()
        status, code, field = 409, "conflict", "sha256"
    elif case == "duplicate-id-stored":
        lines[2]["id"] = stored["id"]
        status, code, field = 409, "conflict", "id"
    elif case == "malformed-line":
        lines[2] = '{"id": "x", "sha256": '
    elif case == "array-line":
        lines[2] = "[1, 2]"
    elif case == "field-twice":
        lines[2] = json.dumps(lines[2])[:-1] + ', "tenant": "again"}'
        field = "tenant"
    elif case == "empty":
        lines, line = [], None
    error = assert_error(service.import_lines(lines), status, code, field)
    if line is not None:
        assert error["line"] == line, error
    assert [r["id"] for r in service.all_keys()] == [stored["id"]], "a refused import stored keys"


def test_an_import_over_the_limit_is_413_and_stores_nothing(service):
    lines = [imported_key(i, name="x" * 100) for i in range(2000)]
    assert_error(service.import_lines(lines), 413, "payload_too_large")
    assert service.all_keys() == []


def test_import_duplicates_across_batches_are_caught(service):
    # 10,000 keys are validated per batch: a repeat 10,001 lines apart is
    # the database's UNIQUE constraint's to catch.
    lines = [imported_key(i, tenant="t") for i in range(10_001)]
    lines.append(dict(lines[0], id="another"))
    # The fixture's import limit is too small for them: a second service.
    with KeyService(service.workdir.parent / "big") as roomy:
        error = assert_error(roomy.import_lines(lines), 409, "conflict", "sha256")
        assert error["line"] == 10_002, error
        assert roomy.sql("SELECT count(*) FROM keys") == [(0,)]


# --- the raw key --------------------------------------------------------------

def test_raw_keys_appear_in_no_list_get_log_or_database_file(service):
    raw = []
    for index in range(3):
        created = service.create(tenant="acme", name=f"k{index}")
        raw.append(created["key"])
        rotated = service.ok("POST", f"/v1/keys/{created['id']}/rotate", {"grace_seconds": 0}, status=201)
        raw.append(rotated["key"])
    answers = json.dumps(service.all_keys()) + json.dumps([service.ok("GET", f"/v1/keys/{r['id']}")
                                                            for r in service.all_keys()])
    service.stop()
    files = [path for path in service.workdir.iterdir() if path.name.startswith("keys.db")]
    assert files, "no database file"
    for key in raw:
        assert key not in answers, "a raw key in a list or get answer"
        assert key not in service.log(), "a raw key in the service's log"
        random_part = KEY.match(key)["random"]
        for path in files:
            content = path.read_bytes()
            assert key.encode() not in content and random_part.encode() not in content, \
                f"a raw key in {path.name}"


# --- the process --------------------------------------------------------------

def test_sigterm_stops_gracefully_and_a_restart_keeps_every_key(service):
    made = [service.create(name=f"k{i}")["id"] for i in range(3)]
    service.ok("POST", f"/v1/keys/{made[0]}/revoke")
    assert service.stop(signal.SIGTERM) == 0
    assert "stopped" in service.log()
    service.start()
    records = {r["id"]: r for r in service.all_keys()}
    assert set(records) == set(made) and records[made[0]]["revoked"] is True
    assert service.ok("GET", "/v1/settings") == SETTINGS


def test_the_database_is_versioned_in_wal_mode(service):
    assert service.sql("PRAGMA user_version") == [(4,)], "schema 4 stores each key's feed line (3 key usage, 2 the feed's change log)"
    assert service.sql("PRAGMA journal_mode") == [("wal",)]
    mode = service.db.stat().st_mode & 0o777
    assert mode == 0o600, f"the database is mode {oct(mode)}"
