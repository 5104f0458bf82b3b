"""Who may do what: tokens, roles, hashed storage, and the audit trail."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from .conftest import RunningHub
from .util import cli, http, register_and_enrol, write_tree

API_WITH_TOKEN = [
    ("GET", "/api/v1/channels", None),
    ("POST", "/api/v1/channels", {"id": "maths"}),
    ("GET", "/api/v1/channels/maths", None),
    ("POST", "/api/v1/uploads", {"channel": "maths", "files": []}),
    ("GET", "/api/v1/uploads/abc", None),
    ("POST", "/api/v1/uploads/abc/commit", None),
    ("POST", "/api/v1/nodes", {"name": "x"}),
    ("GET", "/api/v1/nodes", None),
    ("POST", "/api/v1/tokens", {"name": "x", "role": "admin"}),
    ("GET", "/api/v1/audit", None),
]


@pytest.mark.parametrize("header", [None, "Bearer crv_not-a-real-token", "Basic YTpi", "crv_x"])
def test_missing_or_bad_token_is_401(running_hub: RunningHub, header: str | None):
    for method, path, body in API_WITH_TOKEN:
        hdrs = {"Authorization": header} if header else {}
        ans = http(method, running_hub.url + path, body, headers=hdrs)
        assert ans.status == 401, (method, path, ans.body)
        assert ans.json()["status"] == 401 and ans.json()["error"]
    # The object upload route too (before any body is looked at).
    ans = http("PUT", f"{running_hub.url}/api/v1/uploads/abc/objects/{'a' * 64}", b"x")
    assert ans.status == 401


def test_health_and_repository_are_public(running_hub: RunningHub):
    assert http("GET", f"{running_hub.url}/api/v1/health").status == 200
    assert http("GET", f"{running_hub.url}/repo/metadata/root.json").status == 200


def test_field_agent_reads_but_cannot_publish(running_hub: RunningHub, tmp_path: Path):
    base, agent = running_hub.url, running_hub.token("field_agent")
    assert http("POST", f"{base}/api/v1/channels", {"id": "maths"}, running_hub.admin).status == 201
    assert http("GET", f"{base}/api/v1/channels", token=agent).status == 200
    assert http("GET", f"{base}/api/v1/nodes", token=agent).status == 200
    for method, path, body in [
        ("POST", "/api/v1/channels", {"id": "other"}),
        ("POST", "/api/v1/uploads", {"channel": "maths", "files": []}),
        ("POST", "/api/v1/nodes", {"name": "x"}),
        ("POST", "/api/v1/tokens", {"name": "x", "role": "curator"}),
        ("GET", "/api/v1/audit", None),
    ]:
        ans = http(method, base + path, body, agent)
        assert ans.status == 403, (path, ans.body)
        assert "field_agent" in ans.json()["error"]
    # Through the command line: a clear error and a non-zero exit, nothing published.
    src = write_tree(tmp_path / "src", {"a.txt": "x"})
    r = cli(
        "publish",
        "maths",
        str(src),
        "--hub",
        base,
        "--token",
        agent,
        "--cache",
        str(tmp_path / "cache"),
    )
    assert r.returncode != 0
    assert "403" in r.stderr or "role" in r.stderr
    assert http("GET", f"{base}/api/v1/channels/maths", token=agent).json()["latest"] is None


def test_curator_publishes_but_cannot_register_nodes_or_make_tokens(running_hub: RunningHub):
    base, cur = running_hub.url, running_hub.token("curator")
    assert http("POST", f"{base}/api/v1/channels", {"id": "maths"}, cur).status == 201
    assert (
        http("POST", f"{base}/api/v1/uploads", {"channel": "maths", "files": []}, cur).status == 201
    )
    for method, path, body in [
        ("POST", "/api/v1/nodes", {"name": "Centre"}),
        ("POST", "/api/v1/tokens", {"name": "x", "role": "field_agent"}),
        ("POST", "/api/v1/tokens", {"name": "x", "role": "admin"}),
        ("GET", "/api/v1/audit", None),
    ]:
        ans = http(method, base + path, body, cur)
        assert ans.status == 403, (path, ans.body)
        assert ans.json()["status"] == 403


def test_admin_can_do_everything_and_new_tokens_work(running_hub: RunningHub):
    base, adm = running_hub.url, running_hub.admin
    made = http("POST", f"{base}/api/v1/tokens", {"name": "alice", "role": "curator"}, adm)
    assert made.status == 201
    alice = made.json()["token"]
    assert http("POST", f"{base}/api/v1/channels", {"id": "maths"}, alice).status == 201
    assert http("POST", f"{base}/api/v1/nodes", {"name": "Centre"}, adm).status == 201
    assert http("GET", f"{base}/api/v1/audit", token=adm).status == 200
    bad = http("POST", f"{base}/api/v1/tokens", {"name": "x", "role": "emperor"}, adm)
    assert bad.status == 400 and "role" in bad.json()["error"]


def _all_db_text(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            out = []
            for table in inspect(c).get_table_names():
                for row in c.execute(text(f'SELECT * FROM "{table}"')):
                    out.append(repr(tuple(row)))
            return "\n".join(out)
    finally:
        engine.dispose()


def test_tokens_are_stored_hashed(running_hub: RunningHub):
    made = http(
        "POST",
        f"{running_hub.url}/api/v1/tokens",
        {"name": "bob", "role": "curator"},
        running_hub.admin,
    ).json()["token"]
    dump = _all_db_text(running_hub.hub.config.url)
    for raw in (running_hub.admin, made):
        assert raw not in dump
        assert raw[4:] not in dump  # not even without its prefix
        assert hashlib.sha256(raw.encode()).hexdigest() in dump
    # Nor anywhere on disk in the data folder (SQLite file, WAL, config, repository).
    for p in running_hub.data.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert made.encode() not in data and running_hub.admin.encode() not in data, p


def test_enrolment_code_is_stored_hashed(running_hub: RunningHub):
    reg = http("POST", f"{running_hub.url}/api/v1/nodes", {"name": "C"}, running_hub.admin).json()
    dump = _all_db_text(running_hub.hub.config.url)
    assert reg["code"] not in dump
    assert hashlib.sha256(reg["code"].encode()).hexdigest() in dump


def test_audit_log_records_publishes_enrolments_and_tokens(running_hub: RunningHub, tmp_path):
    from .util import publish_cli

    base, adm = running_hub.url, running_hub.admin
    http("POST", f"{base}/api/v1/tokens", {"name": "carol", "role": "curator"}, adm)
    src = write_tree(tmp_path / "src", {"a.txt": "hello"})
    publish_cli(running_hub, "maths", src, tmp_path / "cache")
    doc, _ = register_and_enrol(base, adm, "Centre Nord")
    log = http("GET", f"{base}/api/v1/audit", token=adm).json()["audit"]
    by_action = {}
    for e in log:
        by_action.setdefault(e["action"], []).append(e)
    tok = [e for e in by_action["token.create"] if e["detail"]["name"] == "carol"]
    assert tok and tok[0]["actor"] == "admin" and tok[0]["detail"]["role"] == "curator"
    pub = by_action["release.publish"]
    assert pub[0]["detail"] == {"channel": "maths", "version": 1}
    assert pub[0]["actor"] == "admin"
    assert by_action["channel.create"][0]["detail"]["channel"] == "maths"
    reg = by_action["node.register"][0]
    assert reg["detail"]["node"] == doc["node_id"] and reg["detail"]["name"] == "Centre Nord"
    enr = by_action["node.enrol"][0]
    assert enr["actor"] == f"node:{doc['node_id']}"
    # Secrets never end up in the audit trail.
    text_log = repr(log)
    assert doc["code"] not in text_log and adm not in text_log
