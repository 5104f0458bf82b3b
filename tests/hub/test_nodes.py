"""Centres: registration, one-time enrolment, signed reports, forgery and replay."""

from __future__ import annotations

import json
from pathlib import Path

from caravane.protocol.keys import PrivateKey

from .conftest import RunningHub
from .util import cli, http, noise, publish_cli, register_and_enrol, signed_report, write_tree


def _report(rh: RunningHub, node_id: str, data: bytes):
    return http(
        "POST",
        f"{rh.url}/api/v1/nodes/{node_id}/reports",
        data,
        headers={"Content-Type": "application/json"},
    )


def _fleet(rh: RunningHub, **q) -> list[dict]:
    qs = "&".join(f"{k}={v}" for k, v in q.items())
    ans = http("GET", f"{rh.url}/api/v1/nodes?{qs}", token=rh.admin)
    assert ans.status == 200
    return ans.json()["nodes"]


def test_register_gives_enrolment_document(running_hub: RunningHub):
    ans = http(
        "POST",
        f"{running_hub.url}/api/v1/nodes",
        {"name": "Centre Sud", "region": "sud", "channels": "maths,lecture"},
        running_hub.admin,
    )
    assert ans.status == 201
    doc = ans.json()
    assert doc["format"] == "caravane-enrolment"
    assert doc["name"] == "Centre Sud" and doc["channels"] == ["maths", "lecture"]
    assert len(doc["code"]) >= 12 and doc["node_id"]
    root = (running_hub.hub.repo.path / "metadata/root.json").read_text(encoding="utf-8")
    assert doc["root"] == root
    (node,) = _fleet(running_hub)
    assert node["id"] == doc["node_id"] and node["enrolled"] is False
    assert node["region"] == "sud" and node["last_contact"] is None


def test_register_needs_a_name_and_valid_channels(running_hub: RunningHub):
    base, adm = running_hub.url, running_hub.admin
    assert http("POST", f"{base}/api/v1/nodes", {"name": "  "}, adm).status == 422
    bad = http("POST", f"{base}/api/v1/nodes", {"name": "C", "channels": ["../x"]}, adm)
    assert bad.status in (400, 422) and bad.json()["error"]
    assert _fleet(running_hub) == []


def test_enrol_then_signed_report_visible_in_fleet(running_hub: RunningHub, tmp_path: Path):
    src = write_tree(tmp_path / "src", {"a.bin": noise(1000, "a")})
    publish_cli(running_hub, "maths", src, tmp_path / "c")
    publish_cli(running_hub, "maths", write_tree(tmp_path / "src", {"b": "b"}), tmp_path / "c")
    doc, key = register_and_enrol(
        running_hub.url, running_hub.admin, "Centre Est", region="est", channels=["maths"]
    )
    (node,) = _fleet(running_hub)
    assert node["enrolled"] is True and node["last_contact"] is None

    data = signed_report(
        doc["node_id"],
        key,
        1,
        installed={"maths": 1},
        free_disk=123456,
        errors=["disk slow"],
        route="peer",
    )
    ans = _report(running_hub, doc["node_id"], data)
    assert ans.status == 200, ans.body
    assert ans.json() == {
        "accepted": True,
        "seq": 1,
        "node_id": doc["node_id"],
        "installed": {"maths": 1},
    }
    (node,) = _fleet(running_hub)
    assert node["installed"] == {"maths": 1}
    assert node["behind"] == {"maths": 1}
    assert node["last_route"] == "peer"
    assert node["free_disk"] == 123456 and node["last_error"] == "disk slow"
    assert node["last_contact"] is not None
    assert [n["id"] for n in _fleet(running_hub, behind="1")] == [doc["node_id"]]
    assert _fleet(running_hub, region="ouest") == []

    # Up to date now: no longer in the "behind" view; the route follows the report.
    ans = _report(
        running_hub, doc["node_id"], signed_report(doc["node_id"], key, 2, installed={"maths": 2})
    )
    assert ans.status == 200
    (node,) = _fleet(running_hub)
    assert node["behind"] == {} and node["last_route"] == "network"
    assert _fleet(running_hub, behind="1") == []
    assert http("GET", f"{running_hub.url}/api/v1/health").json()["reports"] == 2


def test_forged_report_is_refused(running_hub: RunningHub):
    doc, key = register_and_enrol(running_hub.url, running_hub.admin, "A")
    other, other_key = register_and_enrol(running_hub.url, running_hub.admin, "B")
    nid = doc["node_id"]
    # Signed by a key the hub never saw.
    forged = signed_report(nid, PrivateKey.generate(), 1, installed={"maths": 99})
    ans = _report(running_hub, nid, forged)
    assert ans.status == 403 and ans.json()["error"]
    # Signed by another (enrolled) centre's key, claiming to be A.
    ans = _report(running_hub, nid, signed_report(nid, other_key, 1))
    assert ans.status == 403
    # A's genuine report posted under B's address.
    ans = _report(running_hub, other["node_id"], signed_report(nid, key, 1))
    assert ans.status == 403
    # Tampered after signing.
    env = json.loads(signed_report(nid, key, 1, installed={"maths": 1}))
    env["signed"]["installed"] = {"maths": 7}
    ans = _report(running_hub, nid, json.dumps(env).encode())
    assert ans.status == 403
    node = next(n for n in _fleet(running_hub) if n["id"] == nid)
    assert node["installed"] == {} and node["last_contact"] is None
    # A centre registered but not enrolled cannot report either.
    reg = http("POST", f"{running_hub.url}/api/v1/nodes", {"name": "C"}, running_hub.admin)
    cid = reg.json()["node_id"]
    assert _report(running_hub, cid, signed_report(cid, key, 1)).status == 403


def test_replayed_report_is_409_and_an_older_missing_one_is_stored(running_hub: RunningHub):
    """Issue 13: reports come by several routes in any order; each (centre, seq) is stored
    once, an older one that was missing is kept, and the current state stays the newest."""
    doc, key = register_and_enrol(running_hub.url, running_hub.admin)
    nid = doc["node_id"]
    first = signed_report(nid, key, 5, installed={"maths": 1})
    assert _report(running_hub, nid, first).status == 200
    again = _report(running_hub, nid, first)
    assert again.status == 409 and "replayed" in again.json()["error"]
    older_body = signed_report(nid, key, 4, installed={"maths": 0}, errors=["old"])
    older = _report(running_hub, nid, older_body)
    assert older.status == 200
    assert _report(running_hub, nid, older_body).status == 409
    (node,) = _fleet(running_hub)
    assert node["installed"] == {"maths": 1} and node["last_error"] is None
    seqs = [r["seq"] for r in running_hub.hub.centre_detail(nid)["reports"]]
    assert sorted(seqs) == [4, 5]


def test_malformed_report_is_422_not_500(running_hub: RunningHub):
    doc, key = register_and_enrol(running_hub.url, running_hub.admin)
    for data in (b"not json", b"{}", b'{"signed": {}, "signatures": []}'):
        ans = _report(running_hub, doc["node_id"], data)
        assert ans.status in (400, 422), (data, ans.status, ans.body)
        assert ans.json()["error"]


def test_enrolment_code_is_one_time(running_hub: RunningHub):
    base = running_hub.url
    reg = http("POST", f"{base}/api/v1/nodes", {"name": "C"}, running_hub.admin).json()
    k1, k2 = PrivateKey.generate(), PrivateKey.generate()
    wrong = http(
        "POST",
        f"{base}/api/v1/enrol",
        {"node_id": reg["node_id"], "code": "guess", "public_key": k1.public.raw.hex()},
    )
    assert wrong.status == 403
    bad_key = http(
        "POST",
        f"{base}/api/v1/enrol",
        {"node_id": reg["node_id"], "code": reg["code"], "public_key": "zz"},
    )
    assert bad_key.status == 422
    ok = http(
        "POST",
        f"{base}/api/v1/enrol",
        {"node_id": reg["node_id"], "code": reg["code"], "public_key": k1.public.raw.hex()},
    )
    assert ok.status == 200 and ok.json()["node_id"] == reg["node_id"]
    reuse = http(
        "POST",
        f"{base}/api/v1/enrol",
        {"node_id": reg["node_id"], "code": reg["code"], "public_key": k2.public.raw.hex()},
    )
    assert reuse.status == 403 and "already used" in reuse.json()["error"]
    # The first key stays the centre's key: a report by the would-be hijacker is refused.
    nid = reg["node_id"]
    assert _report(running_hub, nid, signed_report(nid, k2, 1)).status == 403
    assert _report(running_hub, nid, signed_report(nid, k1, 1)).status == 200
    unknown = http(
        "POST",
        f"{base}/api/v1/enrol",
        {"node_id": "nope", "code": "x", "public_key": k1.public.raw.hex()},
    )
    assert unknown.status == 403


def test_cli_centre_add_writes_private_enrolment_file(tmp_path: Path):
    data = tmp_path / "hubdata"
    r = cli("hub", "init", "--data", str(data), "--json")
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)["config"]
    out = tmp_path / "centre.json"
    r = cli(
        "hub",
        "centre",
        "add",
        "Centre Ouest",
        "--region",
        "ouest",
        "--channels",
        "maths",
        "--out",
        str(out),
        "--config",
        cfg,
        "--json",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["node_id"] == json.loads(r.stdout)["node_id"] and doc["code"]
    assert out.stat().st_mode & 0o077 == 0
    r = cli("hub", "status", "--config", cfg, "--json")
    (node,) = json.loads(r.stdout)["nodes"]
    assert node["name"] == "Centre Ouest" and node["enrolled"] is False


def test_cli_hub_node_is_a_hidden_deprecated_alias(tmp_path: Path):
    r = cli("hub", "init", "--data", str(tmp_path / "hubdata"), "--json")
    cfg = json.loads(r.stdout)["config"]
    help_text = cli("hub", "--help").stdout
    assert "centre" in help_text and " node " not in help_text
    out = tmp_path / "old.json"
    r = cli("hub", "node", "add", "Centre Est", "--out", str(out), "--config", cfg, "--json")
    assert r.returncode == 0, r.stderr
    assert "deprecated" in r.stderr.lower() or "deprecated" in r.stdout.lower()
    assert json.loads(out.read_text())["name"] == "Centre Est"
