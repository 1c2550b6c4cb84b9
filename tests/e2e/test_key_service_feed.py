"""The feed gateways follow (issue 21, contract §8.3), against the real
`apikey serve` binary: feed-token auth, snapshot pages, changes since a
generation, 410, long polling and the digest, recomputed here from the
lines as received (docs/configuration.md §10.5 says how).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest

from key_service import KeyService, imported_key

SETTINGS = {"plans": {"pro": {"scopes": ["leads:*"]}},
            "rules": [{"path_prefix": "/api/v1/leads", "scope": "leads:read"}],
            "max_keys_per_tenant": 1000}
FEED_FIELDS = {"id", "sha256", "tenant", "scopes", "revoked", "plan", "env", "expires_at", "rate_limits"}


@pytest.fixture
def service(tmp_path):
    with KeyService(tmp_path / "service", "--quiet") as running:
        running.put_settings(SETTINGS)
        yield running


def parse(text: str) -> dict:
    """Splits a feed answer into header, settings line, key lines and
    trailer, checking the counts the header announces."""
    assert text.endswith("\n"), "a feed answer does not end with a newline"
    lines = text[:-1].split("\n")
    header, trailer = json.loads(lines[0]), json.loads(lines[-1])
    body = lines[1:-1]
    assert header["feed"] == 1, header
    assert trailer["end"] is True and trailer["generation"] == header["generation"], (header, trailer)
    settings = body.pop(0) if header["settings"] else None
    assert len(body) == header["keys"], f"the header announces {header['keys']} keys, {len(body)} came"
    return {"header": header, "settings": settings, "keys": body, "trailer": trailer}


def feed(service, path: str, **kwargs):
    answer = service.request("GET", path, token="feed", **kwargs)
    assert answer.status == 200, f"GET {path}: {answer.status} {answer.text}"
    assert answer.headers.get("content-type") == "application/x-ndjson", answer.headers
    return parse(answer.text)


def digest(settings_line: str, key_lines) -> str:
    """The digest as docs/configuration.md defines it."""
    total = sum(int.from_bytes(hashlib.sha256(line.encode()).digest(), "big") for line in key_lines) % 2**256
    return hashlib.sha256(b"apikey-feed-v1\n" + hashlib.sha256(settings_line.encode()).digest()
                          + total.to_bytes(32, "big")).hexdigest()


def snapshot(service, limit: int = 1000):
    """Every page: the settings line, the key lines by id, the generations."""
    pages, cursor = [], None
    while True:
        path = f"/v1/feed/snapshot?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        page = feed(service, path)
        pages.append(page)
        cursor = page["header"]["next_cursor"]
        if cursor is None:
            break
    table = {}
    for page in pages:
        for line in page["keys"]:
            record = json.loads(line)
            assert record["id"] not in table, f"{record['id']} came on two pages"
            table[record["id"]] = line
    return pages, pages[0]["settings"], table


def apply(table: dict, settings_line: str, answer: dict) -> str:
    for line in answer["keys"]:
        table[json.loads(line)["id"]] = line
    return answer["settings"] or settings_line


def changes(service, since: int, **kwargs):
    return feed(service, f"/v1/feed/changes?since={since}", **kwargs)


# --- auth ----------------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "admin", "Bearer wrong-token-0123456789", "Basic x"],
                         ids=["missing", "admin-token", "wrong", "basic"])
def test_the_feed_refuses_anything_but_the_feed_token(service, token):
    for path in ["/v1/feed/snapshot", "/v1/feed/changes?since=0", "/v1/feed/nothing"]:
        answer = service.request("GET", path, token=token)
        assert answer.status == 401, f"GET {path} with {token!r}: {answer.status} {answer.text}"
        assert answer.json["error"]["code"] == "unauthorized", answer.text
        assert answer.headers.get("www-authenticate") == 'Bearer realm="apikey-feed"', answer.headers


def long_poll(service, since: int, change):
    """Holds `changes?since=…&wait=30` open in a thread, makes `change` half
    a second later, and returns the answer, when it came and when the
    change was made (monotonic seconds)."""
    result = {}

    def poll():
        result["answer"] = service.request("GET", f"/v1/feed/changes?since={since}&wait=30", token="feed",
                                           timeout=60)
        result["answered"] = time.monotonic()

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.5)
    changed_at = time.monotonic()
    change()
    poller.join(timeout=60)
    return result["answer"], result["answered"], changed_at


def test_the_feed_token_still_manages_nothing(service):
    for method, path in [("GET", "/v1/keys"), ("GET", "/v1/settings"), ("POST", "/v1/keys")]:
        answer = service.request(method, path, {"tenant": "a"} if method == "POST" else None, token="feed")
        assert answer.status == 401, f"{method} {path} with the feed token: {answer.status}"
    assert service.all_keys() == [], "a feed-token request made a key"


def test_a_bad_query_is_refused_naming_the_parameter(service):
    for path, field in [("/v1/feed/changes", "since"), ("/v1/feed/changes?since=x", "since"),
                        ("/v1/feed/changes?since=0&wait=61", "wait"), ("/v1/feed/snapshot?cursor=c1", "cursor"),
                        ("/v1/feed/snapshot?limit=0", "limit"), ("/v1/feed/snapshot?page=2", "page")]:
        answer = service.request("GET", path, token="feed")
        assert answer.status == 400 and answer.json["error"]["field"] == field, f"{path}: {answer.text}"


# --- snapshot --------------------------------------------------------------------

def test_a_snapshot_in_pages_holds_every_key_once_with_only_what_the_filter_needs(service):
    created = [service.create(tenant=f"t{i % 3}", scopes=["leads:read"], plan="pro", env="live",
                              name=f"secret name {i}", expires_at="2099-01-01T00:00:00Z",
                              rate_limits={"*": {"requests": 10, "period_seconds": 60}})
               for i in range(7)]
    assert service.import_lines([imported_key(i) for i in range(5)]).status == 200
    pages, settings_line, table = snapshot(service, limit=3)
    assert len(pages) == 4, f"12 keys in pages of 3 came in {len(pages)} pages"
    assert all(page["settings"] is None for page in pages[1:]), "settings on a later page"
    assert json.loads(settings_line) == {"settings": {k: v for k, v in SETTINGS.items()
                                                      if k != "max_keys_per_tenant"}}, settings_line
    expected = {key["id"]: key for key in created} | {f"imp_bulk_{i}": None for i in range(5)}
    assert set(table) == set(expected), "the snapshot's keys differ from the keys made"
    order = [json.loads(line)["id"] for page in pages for line in page["keys"]]
    assert order == [key["id"] for key in created] + [f"imp_bulk_{i}" for i in range(5)], "not in a stable order"
    for key in created:
        record = json.loads(table[key["id"]])
        assert set(record) == FEED_FIELDS, f"a feed record carries {sorted(record)}"
        assert record["sha256"] == key["sha256"] and record["tenant"] == key["tenant"], record
        assert record["rate_limits"] == key["rate_limits"] and record["revoked"] is False, record
        assert table[key["id"]] == json.dumps(record, sort_keys=True, separators=(",", ":")), \
            "a key line is not in the canonical form"
    text = "".join(line for line in table.values())
    assert all(key["key"] not in text for key in created), "a raw key travelled on the feed"
    assert "secret name" not in text and "hint" not in text, "names or hints travelled on the feed"
    generations = {page["header"]["generation"] for page in pages}
    assert len(generations) == 1, f"pages read without writes name several generations: {generations}"
    last = pages[-1]["trailer"]
    assert last["keys_total"] == 12, last
    assert last["digest"] == digest(settings_line, table.values()), "the digest differs from its recomputation"


def test_a_snapshot_taken_across_writes_is_completed_by_the_changes_since_its_first_page(service):
    for i in range(6):
        service.create(tenant="acme")
    first = feed(service, "/v1/feed/snapshot?limit=2")
    made_between = service.create(tenant="acme")
    revoked = json.loads(first["keys"][0])["id"]
    service.ok("POST", f"/v1/keys/{revoked}/revoke")
    pages, settings_line, table = [first], first["settings"], {}
    cursor = first["header"]["next_cursor"]
    while cursor:
        page = feed(service, f"/v1/feed/snapshot?limit=2&cursor={cursor}")
        pages.append(page)
        cursor = page["header"]["next_cursor"]
    for page in pages:
        apply(table, settings_line, page)
    later = {page["header"]["generation"] for page in pages[1:]}
    assert later and min(later) > first["header"]["generation"], "later pages do not name a later generation"
    assert json.loads(table[revoked])["revoked"] is False, "the first page should predate the revocation"
    catch_up = changes(service, first["header"]["generation"])
    settings_line = apply(table, settings_line, catch_up)
    assert json.loads(table[revoked])["revoked"] is True, "the changes did not carry the revocation"
    assert made_between["id"] in table
    assert catch_up["trailer"]["digest"] == digest(settings_line, table.values()), \
        "the completed snapshot does not match the digest"
    assert catch_up["trailer"]["keys_total"] == len(table) == 7


# --- changes ---------------------------------------------------------------------

def test_changes_since_a_generation_carry_creates_revocations_rotations_and_settings(service):
    kept = service.create(tenant="acme", scopes=["leads:read"])
    rotated = service.create(tenant="acme", scopes=["leads:read"])
    _, settings_line, table = snapshot(service)
    start = changes(service, 0)["header"]["generation"]
    assert changes(service, start)["keys"] == [], "changes since the head are not empty"

    made = service.create(tenant="beta")
    step = changes(service, start)
    assert [json.loads(line)["id"] for line in step["keys"]] == [made["id"]], step
    assert step["settings"] is None and step["header"]["since"] == start

    service.ok("POST", f"/v1/keys/{kept['id']}/revoke")
    successor = service.ok("POST", f"/v1/keys/{rotated['id']}/rotate", {"grace_seconds": 60}, status=201)
    new_settings = dict(SETTINGS, realm="feed-test")
    service.put_settings(new_settings)
    answer = changes(service, step["header"]["generation"])
    by_id = {json.loads(line)["id"]: json.loads(line) for line in answer["keys"]}
    assert set(by_id) == {kept["id"], rotated["id"], successor["id"]}, sorted(by_id)
    assert by_id[kept["id"]]["revoked"] is True, "the revocation is not in the changes"
    assert by_id[rotated["id"]]["expires_at"] == successor["old_expires_at"], "the rotated key's expiry is not in the changes"
    assert by_id[successor["id"]]["sha256"] == successor["sha256"]
    assert json.loads(answer["settings"])["settings"]["realm"] == "feed-test", answer["settings"]
    assert answer["header"]["generation"] > step["header"]["generation"]

    settings_line = apply(table, settings_line, changes(service, start))
    assert changes(service, start)["trailer"]["digest"] == digest(settings_line, table.values()), \
        "a table brought forward by changes does not match the digest"
    _, fresh_settings, fresh = snapshot(service)
    assert fresh == table and fresh_settings == settings_line, "changes and a new snapshot disagree"


def test_a_generation_the_feed_cannot_reach_is_410(service, tmp_path):
    service.create(tenant="acme")
    head = changes(service, 0)["header"]
    for query in [f"since={head['generation'] + 5}", f"since=0&epoch=0123{head['epoch'][4:]}"]:
        answer = service.request("GET", f"/v1/feed/changes?{query}", token="feed")
        assert answer.status == 410, f"{query}: {answer.status} {answer.text}"
        assert answer.json["error"]["code"] == "snapshot_required", answer.text
        assert answer.json["error"]["generation"] == head["generation"]
    with KeyService(tmp_path / "other", "--quiet") as other:
        assert changes(other, 0)["header"]["epoch"] != head["epoch"], "two databases share an epoch"


def test_more_changes_than_one_answer_holds_is_410(service):
    service.put_settings({})
    lines = [imported_key(i, tenant="many") for i in range(10_001)]
    assert service.import_lines(lines).status == 200
    answer = service.request("GET", "/v1/feed/changes?since=0", token="feed")
    assert answer.status == 410 and answer.json["error"]["code"] == "snapshot_required", answer.text[:300]


def test_generations_survive_a_restart_and_count_writes_made_beside_the_service(service):
    service.create(tenant="acme")
    before = changes(service, 0)["header"]
    service.restart()
    after = changes(service, 0)["header"]
    assert (after["epoch"], after["generation"]) == (before["epoch"], before["generation"]), (before, after)
    service.sql("UPDATE keys SET revoked = 1")
    assert changes(service, before["generation"])["header"]["keys"] == 1, "a write from another process was not logged"


def test_each_key_is_served_from_its_stored_line_which_another_process_cannot_leave_stale(service):
    kept = service.create(tenant="acme", scopes=["leads:read"])
    rotated = service.create(tenant="acme")
    assert service.import_lines([imported_key(i, tenant="bulk") for i in range(5)]).status == 200
    service.ok("POST", f"/v1/keys/{kept['id']}/revoke")
    service.ok("POST", f"/v1/keys/{rotated['id']}/rotate", {"grace_seconds": 60}, status=201)
    _, _, table = snapshot(service, limit=3)
    stored = dict(service.sql("SELECT id, feed_line FROM keys"))
    assert stored == table, "the lines the service stored are not the lines it serves"

    generation = changes(service, 0)["header"]["generation"]
    service.sql("UPDATE keys SET tenant = 'moved' WHERE id = ?", kept["id"])
    served = json.loads(snapshot(service)[2][kept["id"]])
    assert served["tenant"] == "moved", f"another process's write is not served: {served}"
    deadline = time.monotonic() + 15
    while service.sql("SELECT feed_line FROM keys WHERE id = ?", kept["id"]) == [(None,)]:
        assert time.monotonic() < deadline, "the service did not store the line another process emptied"
        time.sleep(0.05)
    _, _, table = snapshot(service)
    assert dict(service.sql("SELECT id, feed_line FROM keys")) == table, "the filled line is not the served one"
    assert changes(service, 0)["header"]["generation"] == generation + 1, "storing a line made a generation"


# --- long polling ----------------------------------------------------------------

def test_a_long_poll_answers_promptly_on_a_change_and_after_the_wait_when_idle(service):
    head = changes(service, 0)["header"]["generation"]
    started = time.monotonic()
    answer = service.request("GET", f"/v1/feed/changes?since={head}&wait=2", token="feed", timeout=30)
    idle_seconds = time.monotonic() - started
    assert answer.status == 200 and parse(answer.text)["keys"] == [], answer.text
    assert 1.9 <= idle_seconds < 15, f"an idle long poll of 2 s answered after {idle_seconds:.2f} s"
    etag = answer.headers["etag"]
    unchanged = service.request("GET", f"/v1/feed/changes?since={head}", token="feed",
                                headers={"If-None-Match": etag})
    assert unchanged.status == 304 and unchanged.text == "", f"{unchanged.status} {unchanged.text}"

    made = {}
    answer, answered, changed_at = long_poll(service, head, lambda: made.update(service.create(tenant="acme")))
    assert answer.status == 200, answer.text
    received = parse(answer.text)
    assert [json.loads(line)["id"] for line in received["keys"]] == [made["id"]], received
    waited = answered - changed_at
    assert answered >= changed_at, "the poll answered before the change"
    assert waited < 10, f"the long poll answered {waited:.2f} s after the change, with 30 s to wait"


def test_a_long_poll_sees_a_write_made_by_another_process(service):
    made = service.create(tenant="acme")
    head = changes(service, 0)["header"]["generation"]
    answer, answered, changed_at = long_poll(
        service, head, lambda: service.sql("UPDATE keys SET revoked = 1 WHERE id = ?", made["id"]))
    received = parse(answer.text)
    assert json.loads(received["keys"][0])["revoked"] is True, received
    assert answered - changed_at < 10, "the poll missed a write made beside the service"


def test_the_digest_is_stable_while_nothing_changes(service):
    for i in range(4):
        service.create(tenant="acme")
    first = changes(service, 0)["trailer"]
    service.restart()
    again = changes(service, 0)["trailer"]
    page = feed(service, "/v1/feed/snapshot")["trailer"]
    assert first == again == page, f"the digest moved without a change: {first} {again} {page}"
