"""Uploading objects cheaply: batches, and per-object work that does not grow with the release.

Issue 10: every object PUT reloaded the upload's whole file list, so publishing through the
API cost objects x files. Now an upload's objects are rows of ``upload_objects``; a PUT or a
batch reads only the rows it needs, on every engine and across hub processes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text

from caravane.hub.auth import Principal
from caravane.hub.db import upgrade
from caravane.hub.errors import Unprocessable
from caravane.packs.repository import Repository

from .conftest import RunningHub
from .util import http, noise, write_tree

RECORD = struct.Struct(">32sI")


def _local_release(tmp_path: Path, n: int = 6) -> Repository:
    local = Repository.init(tmp_path / "local")
    src = write_tree(tmp_path / "src", {f"f{i}.bin": noise(3000, f"b{i}") for i in range(n)})
    local.publish("tmp", src)
    return local


def _start(rh: RunningHub, local: Repository) -> tuple[str, list[str]]:
    files = [e.to_dict() for e in local.manifest("tmp", 1).files]
    assert http("POST", f"{rh.url}/api/v1/channels", {"id": "maths"}, rh.admin).status == 201
    up = http("POST", f"{rh.url}/api/v1/uploads", {"channel": "maths", "files": files}, rh.admin)
    assert up.status == 201
    return up.json()["upload"], up.json()["missing"]


def _batch(local: Repository, shas: list[str], frames: dict[str, bytes] | None = None) -> bytes:
    out = bytearray()
    for sha in shas:
        frame = (frames or {}).get(sha) or local.store.read_frame(sha)
        out += RECORD.pack(bytes.fromhex(sha), len(frame)) + frame
    return bytes(out)


def test_batch_stores_verifies_and_refuses(running_hub: RunningHub, tmp_path: Path) -> None:
    rh = running_hub
    local = _local_release(tmp_path)
    uid, missing = _start(rh, local)
    url = f"{rh.url}/api/v1/uploads/{uid}/objects"
    # an object of another upload: refused before anything is stored
    stray = _batch(local, missing[:1]) + RECORD.pack(b"\0" * 32, 1) + b"x"
    ans = http("POST", url, stray, rh.admin)
    assert ans.status == 422 and "not part of upload" in ans.json()["error"]
    assert not rh.hub.repo.store.has(missing[0])
    # a tampered object: the ones before it are kept (verified), it and the rest are not
    bad = _batch(local, missing[:3], {missing[1]: local.store.read_frame(missing[2])})
    ans = http("POST", url, bad, rh.admin)
    assert ans.status == 422
    assert rh.hub.repo.store.has(missing[0]) and not rh.hub.repo.store.has(missing[1])
    # a body cut inside a record
    assert http("POST", url, _batch(local, missing[1:2])[:-5], rh.admin).status == 400
    # the rest in one batch; the hub says what was new
    ans = http("POST", url, _batch(local, missing), rh.admin)
    assert ans.status == 200 and ans.json() == {"stored": len(missing), "new": len(missing) - 1}
    status = http("GET", f"{rh.url}/api/v1/uploads/{uid}", token=rh.admin).json()
    assert status["missing"] == []
    assert http("POST", f"{url[: -len('/objects')]}/commit", None, rh.admin).status == 200
    # a committed upload takes no more objects; a field agent may not send any
    assert http("POST", url, _batch(local, missing[:1]), rh.admin).status == 409
    assert http("POST", url, b"", rh.token("field_agent")).status == 403


def test_put_reads_only_the_rows_it_needs(sqlite_hub: RunningHub, tmp_path: Path) -> None:
    """No object upload reads the upload's file list (the cost that grew with the release)."""
    rh = sqlite_hub
    local = _local_release(tmp_path)
    uid, missing = _start(rh, local)
    seen: list[str] = []

    def record(conn, cursor, statement, params, context, executemany) -> None:  # noqa: ANN001
        seen.append(statement)

    event.listen(rh.hub.db.engine, "before_cursor_execute", record)
    try:
        p = Principal("t", "curator")
        assert rh.hub.put_object(p, uid, missing[0], local.store.read_frame(missing[0]))
        rest = [(sha, local.store.read_frame(sha)) for sha in missing[1:]]
        assert rh.hub.put_objects(p, uid, rest) == len(rest)
        with pytest.raises(Unprocessable):
            rh.hub.put_object(p, uid, "0" * 64, b"x")
    finally:
        event.remove(rh.hub.db.engine, "before_cursor_execute", record)
    assert seen and len(seen) <= 6, seen
    assert not [s for s in seen if "files" in s], [s for s in seen if "files" in s]


def test_migration_fills_in_open_uploads(tmp_path: Path) -> None:
    """A publish cut before the upgrade resumes after it: its objects are known."""
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    upgrade(url, "0001")
    engine = create_engine(url)
    files = json.dumps([{"path": "a", "chunks": [["a" * 64, 10], ["b" * 64, 20]]}])
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO channels (id, title, language, description, keep_last, created_at)"
                " VALUES ('c', 'c', 'fr', '', 5, '2026-01-01')"
            )
        )
        for uid, state in (("open1", "open"), ("done1", "committed")):
            c.execute(
                text(
                    "INSERT INTO uploads (id, channel_id, created_by, created_at, notes, files,"
                    " state) VALUES (:id, 'c', 'x', '2026-01-01', '', :files, :state)"
                ),
                {"id": uid, "files": files, "state": state},
            )
    upgrade(url)
    with engine.connect() as c:
        rows = set(c.execute(text("SELECT upload_id, sha, size FROM upload_objects")))
    engine.dispose()
    assert rows == {("open1", "a" * 64, 10), ("open1", "b" * 64, 20)}


def test_streaming_upload_declares_then_lists_then_commits(
    running_hub: RunningHub, tmp_path: Path
) -> None:
    """A curator's client uploads while it still reads the folder: chunks first, files last."""
    rh = running_hub
    local = _local_release(tmp_path)
    entries = local.manifest("tmp", 1).files
    chunks = [[h, n] for e in entries for h, n in e.chunks]
    assert http("POST", f"{rh.url}/api/v1/channels", {"id": "maths"}, rh.admin).status == 201
    up = http("POST", f"{rh.url}/api/v1/uploads", {"channel": "maths", "stream": True}, rh.admin)
    assert up.status == 201 and up.json()["missing"] == []
    uid = up.json()["upload"]
    base = f"{rh.url}/api/v1/uploads/{uid}"
    # nothing to commit before the file list; objects must be declared before they are sent
    assert http("POST", f"{base}/commit", None, rh.admin).status == 409
    ans = http("POST", f"{base}/objects", _batch(local, [chunks[0][0]]), rh.admin)
    assert ans.status == 422 and "not part of upload" in ans.json()["error"]
    bad = http("POST", f"{base}/chunks", {"chunks": [["../etc", 1]]}, rh.admin)
    assert bad.status == 422
    first = http("POST", f"{base}/chunks", {"chunks": chunks[:3]}, rh.admin)
    assert first.status == 200 and sorted(first.json()["missing"]) == sorted(
        c[0] for c in chunks[:3]
    )
    assert (
        http("POST", f"{base}/objects", _batch(local, first.json()["missing"]), rh.admin).status
        == 200
    )
    # declared again with one more (a resumed client): the stored ones are not missing
    again = http("POST", f"{base}/chunks", {"chunks": chunks[:4]}, rh.admin)
    assert again.status == 200 and again.json()["missing"] == [chunks[3][0]]
    # declared objects of a receiving upload are kept by collection, grace period or not
    kept = rh.hub.open_upload_objects()
    assert all(sha in kept for sha in first.json()["missing"])
    # a file list naming a chunk never declared is refused, and the upload stays receiving
    files = [e.to_dict() for e in entries]
    ans = http("PUT", f"{base}/files", {"files": files}, rh.admin)
    assert ans.status == 422 and "not declared" in ans.json()["error"]
    rest = http("POST", f"{base}/chunks", {"chunks": chunks[3:]}, rh.admin).json()["missing"]
    assert http("POST", f"{base}/objects", _batch(local, rest), rh.admin).status == 200
    listed = http("PUT", f"{base}/files", {"files": files}, rh.admin)
    assert listed.status == 200 and listed.json()["missing"] == []
    assert http("PUT", f"{base}/files", {"files": files}, rh.admin).status == 409  # once
    done = http("POST", f"{base}/commit", None, rh.admin)
    assert done.status == 200 and done.json()["version"] == 1
    assert http("POST", f"{base}/chunks", {"chunks": chunks[:1]}, rh.admin).status == 409
