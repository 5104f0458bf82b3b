"""A file list uploaded as manifest pieces (``PUT .../tree``): the hub walks and checks it
whole before it signs, and a lying, hostile or incomplete tree publishes nothing.

Each attack is one short test: :func:`pieces_of` builds an honest tree from files, and a
test edits a leaf's entries (or the counts) before :func:`upload` sends it as a curator
would, straight over HTTP.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from caravane.hub.client import HubClient
from caravane.packs.layout import channel_relpath
from caravane.packs.store import compress
from caravane.protocol.canonical import canonical_bytes
from caravane.protocol.metadata import FileEntry
from caravane.protocol.tree import LEAF_TYPE, TreeWriter

from .util import fetch_release, http, node_store, noise, read_tree, write_tree


def entry(path: str, data: bytes) -> FileEntry:
    sha = hashlib.sha256(data).hexdigest()
    return FileEntry(path, len(data), 0o644, sha, [(sha, len(data))])


def pieces_of(entries: list[FileEntry]) -> tuple[dict[str, Any], list[bytes]]:
    """An honest tree of ``entries``: the ``PUT .../tree`` body and the pieces' bytes."""
    pieces: list[bytes] = []
    writer = TreeWriter(lambda ref, data: pieces.append(data))
    for e in entries:
        writer.add(e)
    root = writer.finish()
    assert root is not None
    ref = {"sha256": root.sha256, "length": root.length, "level": root.level}
    return {"tree": ref, "files": writer.files, "size": writer.size}, pieces


def one_leaf(files: list[dict[str, Any]]) -> tuple[dict[str, Any], list[bytes]]:
    """A tree of one leaf holding exactly ``files`` (entry dicts, as a hostile client
    writes them: nothing here checks them)."""
    leaf = canonical_bytes({"_type": LEAF_TYPE, "files": files})
    ref = {"sha256": hashlib.sha256(leaf).hexdigest(), "length": len(leaf), "level": 0}
    return {"tree": ref, "files": len(files), "size": sum(f["size"] for f in files)}, [leaf]


def upload(
    rh: Any,
    body: dict[str, Any],
    objects: list[bytes],
    *,
    skip: frozenset[str] = frozenset(),
    channel: str = "maths",
) -> tuple[str, Any]:
    """Open a receiving upload, declare and send ``objects`` (but those in ``skip``), then
    send ``body`` with ``"commit": true``; (upload id, the answer)."""
    base, tok = rh.url, rh.admin
    if http("GET", f"{base}/api/v1/channels/{channel}", token=tok).status == 404:
        assert http("POST", f"{base}/api/v1/channels", {"id": channel}, tok).status == 201
    start = {"channel": channel, "stream": True, "tree": True}
    opened = http("POST", f"{base}/api/v1/uploads", start, tok).json()
    assert opened["tree"] is True  # this hub takes the list as pieces
    uid = opened["upload"]
    by_sha = {hashlib.sha256(o).hexdigest(): o for o in objects}
    declared = [[h, len(o)] for h, o in by_sha.items()]
    assert (
        http("POST", f"{base}/api/v1/uploads/{uid}/chunks", {"chunks": declared}, tok).status == 200
    )
    for sha, data in by_sha.items():
        if sha not in skip:
            assert put_object(rh, uid, data).status in (200, 201)
    return uid, http("PUT", f"{base}/api/v1/uploads/{uid}/tree", {**body, "commit": True}, tok)


def put_object(rh: Any, uid: str, data: bytes) -> Any:
    sha = hashlib.sha256(data).hexdigest()
    return http(
        "PUT",
        f"{rh.url}/api/v1/uploads/{uid}/objects/{sha}",
        compress(data),
        rh.admin,
        headers={"Content-Type": "application/octet-stream"},
    )


def published(rh: Any, channel: str = "maths") -> int | None:
    meta = http("GET", f"{rh.url}/repo/{channel_relpath(channel)}")
    return None if meta.status == 404 else int(json.loads(meta.body)["signed"]["version"])


DATA = {f"lecons/l{i:02d}.txt": noise(3000, f"t{i}") for i in range(40)}


def honest() -> tuple[list[FileEntry], list[bytes]]:
    entries = [entry(p, d) for p, d in sorted(DATA.items())]
    return entries, list(DATA.values())


def test_tree_upload_signs_what_a_centre_checks_out_byte_for_byte(running_hub, tmp_path: Path):
    entries, chunks = honest()
    body, pieces = pieces_of(entries)
    uid, answer = upload(running_hub, body, chunks + pieces)
    assert answer.status == 200, answer.body
    done = answer.json()
    assert done["missing"] == [] and done["committed"]["version"] == 1
    assert done["committed"]["files"] == len(DATA)
    status = http("GET", f"{running_hub.url}/api/v1/uploads/{uid}", token=running_hub.admin)
    assert status.json()["state"] == "committed"
    root = (running_hub.hub.repo.path / "metadata/root.json").read_bytes()
    store = node_store(tmp_path / "store", root)
    assert fetch_release(f"{running_hub.url}/repo", store, "maths") == 1
    store.checkout("maths", tmp_path / "out")
    assert read_tree(tmp_path / "out") == DATA
    assert store.verify().ok


def test_counts_that_lie_publish_nothing(running_hub):
    entries, chunks = honest()
    body, pieces = pieces_of(entries)
    _, answer = upload(running_hub, {**body, "files": body["files"] + 1}, chunks + pieces)
    assert answer.status == 422 and "refused" in answer.json()["error"]
    assert published(running_hub) is None


def test_a_path_out_of_the_folder_is_refused_and_the_previous_release_still_served(
    running_hub,
):
    entries, chunks = honest()
    body, pieces = pieces_of(entries)
    assert upload(running_hub, body, chunks + pieces)[1].json()["committed"]["version"] == 1
    evil = entry("../../etc/passwd", b"root:x:0:0\n").to_dict()
    evil_body, evil_pieces = one_leaf([evil])
    _, answer = upload(running_hub, evil_body, [b"root:x:0:0\n", *evil_pieces])
    assert answer.status == 422 and "etc/passwd" in answer.json()["error"]
    assert published(running_hub) == 1


def test_entries_out_of_order_or_twice_are_refused(sqlite_hub):
    a, b = entry("b.txt", b"bee\n").to_dict(), entry("a.txt", b"ay\n").to_dict()
    for files in ([a, b], [b, b]):
        body, pieces = one_leaf(files)
        _, answer = upload(sqlite_hub, body, [b"bee\n", b"ay\n", *pieces])
        assert answer.status == 422, answer.body
    assert published(sqlite_hub) is None


def test_an_entry_whose_size_is_not_its_chunks_is_refused(sqlite_hub):
    bad = entry("a.txt", b"hello\n").to_dict() | {"size": 999}
    body, pieces = one_leaf([bad])
    _, answer = upload(sqlite_hub, body, [b"hello\n", *pieces])
    assert answer.status == 422, answer.body
    assert published(sqlite_hub) is None


def test_a_piece_not_uploaded_is_named_then_the_commit_follows(sqlite_hub):
    entries, chunks = honest()
    body, pieces = pieces_of(entries)
    root_sha = body["tree"]["sha256"]
    uid, answer = upload(sqlite_hub, body, chunks + pieces, skip=frozenset({root_sha}))
    assert answer.status == 200 and root_sha in answer.json()["missing"]
    assert "committed" not in answer.json() and published(sqlite_hub) is None
    base, tok = sqlite_hub.url, sqlite_hub.admin
    refused = http("POST", f"{base}/api/v1/uploads/{uid}/commit", None, tok)
    assert refused.status == 409 and "missing" in refused.json()["error"]
    (root_bytes,) = [p for p in pieces if hashlib.sha256(p).hexdigest() == root_sha]
    assert put_object(sqlite_hub, uid, root_bytes).status == 201
    assert http("POST", f"{base}/api/v1/uploads/{uid}/commit", None, tok).json()["version"] == 1


def test_a_chunk_not_uploaded_is_named_and_nothing_is_signed(sqlite_hub):
    entries, chunks = honest()
    body, pieces = pieces_of(entries)
    lost = entries[7].chunks[0][0]
    _, answer = upload(sqlite_hub, body, chunks + pieces, skip=frozenset({lost}))
    assert answer.status == 200 and answer.json()["missing"] == [lost]
    assert published(sqlite_hub) is None


def test_a_chunk_collected_between_the_check_and_the_lock_is_found_by_the_commit(
    sqlite_hub, monkeypatch
):
    """The commit checks the tree before it takes the lock, and does not walk it again
    under the lock while nothing has left the store since. A chunk removed in between
    (a collection) makes it walk again, name the chunk, and sign nothing."""
    entries, chunks = honest()
    body, pieces = pieces_of(entries)
    repo = sqlite_hub.hub.repo
    lost = entries[11].chunks[0][0]
    committing, real_commit, real_lock = [False], repo.commit_uploaded_tree, repo.lock

    def commit(*args: Any, **kw: Any) -> Any:
        committing[0] = True
        return real_commit(*args, **kw)

    def lock(*args: Any, **kw: Any) -> Any:
        if committing[0]:
            repo.store.remove(lost)  # collected after the walk, before the lock
        return real_lock(*args, **kw)

    monkeypatch.setattr(repo, "commit_uploaded_tree", commit)
    monkeypatch.setattr(repo, "lock", lock)
    _, answer = upload(sqlite_hub, body, chunks + pieces)
    assert answer.status == 200 and answer.json()["missing"] == [lost]
    assert published(sqlite_hub) is None


def test_the_summary_of_a_commit_checked_before_the_lock_is_the_whole_diff(sqlite_hub):
    """Counted by the walk before the lock: a first tree's files all added, an update's
    added, changed and removed paths, as a local publish reports them."""
    entries, chunks = honest()
    body, pieces = pieces_of(entries)
    _, answer = upload(sqlite_hub, body, chunks + pieces)
    first = answer.json()["committed"]
    assert (first["files_added"], first["files_changed"], first["files_removed"]) == (40, 0, 0)
    assert first["new_files"] == [e.path for e in entries]
    changed = entry(entries[3].path, b"une autre lecon\n")
    added = entry("lecons/nouvelle.txt", b"nouvelle\n")
    after = sorted([*entries[:3], changed, *entries[5:], added], key=lambda e: e.path)
    body, pieces = pieces_of(after)
    _, answer = upload(sqlite_hub, body, [b"une autre lecon\n", b"nouvelle\n", *pieces])
    second = answer.json()["committed"]
    assert second["version"] == 2
    assert (second["files_added"], second["files_changed"], second["files_removed"]) == (1, 1, 1)
    assert second["new_files"] == [added.path] and second["changed_files"] == [changed.path]
    assert second["removed_files"] == [entries[4].path]


def test_a_chunk_never_declared_is_found_missing_by_the_commit(sqlite_hub):
    """The declarations are the client's word: a leaf may name a chunk it never declared
    nor sent. The commit's own walk finds it absent."""
    entries, chunks = honest()
    ghost = entry("lecons/zz-ghost.txt", b"never sent\n")
    body, pieces = pieces_of([*entries, ghost])
    _, answer = upload(sqlite_hub, body, chunks + pieces)
    assert answer.status == 200 and answer.json()["missing"] == [ghost.sha256]
    assert published(sqlite_hub) is None


def test_malformed_tree_bodies_get_a_clear_422(sqlite_hub):
    base, tok = sqlite_hub.url, sqlite_hub.admin
    assert http("POST", f"{base}/api/v1/channels", {"id": "maths"}, tok).status == 201
    good = {"sha256": "ab" * 32, "length": 100, "level": 0}
    for body in (
        {"tree": good, "files": -1, "size": 0},
        {"tree": good, "files": True, "size": 0},
        {"tree": {**good, "level": 99}, "files": 1, "size": 1},
        {"tree": {**good, "sha256": "zz" * 32}, "files": 1, "size": 1},
        {"tree": {**good, "length": 0}, "files": 1, "size": 1},
        {"tree": None, "files": 3, "size": 0},
        {"tree": "root", "files": 1, "size": 1},
        {"tree": good, "files": 10**12, "size": 1},
    ):
        start = {"channel": "maths", "stream": True, "tree": True}
        uid = http("POST", f"{base}/api/v1/uploads", start, tok).json()["upload"]
        answer = http("PUT", f"{base}/api/v1/uploads/{uid}/tree", body, tok)
        assert answer.status == 422, (body, answer.body)
        assert answer.json()["error"]
    assert published(sqlite_hub) is None


def test_an_empty_release_by_tree(sqlite_hub):
    _, answer = upload(sqlite_hub, {"tree": None, "files": 0, "size": 0}, [])
    assert answer.status == 200 and answer.json()["committed"]["files"] == 0


async def test_client_sends_pieces_not_the_list_and_a_republish_reuses_them(
    sqlite_hub, tmp_path: Path
):
    """``caravane publish --hub`` against this hub: the file list goes as pieces, and the
    release is the one ``repo publish`` of the same folder signs (the same root)."""
    files = {f"site/p{i:03d}.html": noise(900, f"p{i}") for i in range(300)}
    src = write_tree(tmp_path / "src", files)
    old = time.time() - 3600  # the files cache trusts only files not modified just now
    for path in src.rglob("*.html"):
        os.utime(path, (old, old))
    client = HubClient(sqlite_hub.url, sqlite_hub.admin)
    first = await client.publish("maths", src, cache=tmp_path / "cache")
    assert first["complete"] and first["version"] == 1
    with sqlite_hub.hub.db.session() as s:
        from caravane.hub.models import Upload

        row = s.get(Upload, first["upload"])
        assert row is not None and row.files == [] and row.tree is not None
        assert row.tree["files"] == 300
    from caravane.packs.repository import Repository

    local = Repository.init(tmp_path / "local")
    local.publish("maths", src)
    hub_doc = sqlite_hub.hub.repo.manifest_bytes("maths", 1)
    local_doc = local.manifest_bytes("maths", 1)
    assert json.loads(hub_doc)["tree"] == json.loads(local_doc)["tree"]

    (src / "site/p150.html").write_bytes(noise(950, "changed"))
    second = await client.publish("maths", src, cache=tmp_path / "cache")
    assert second["complete"] and second["version"] == 2
    # the changed file's chunk, its leaf and the nodes above it: not the list's every piece
    assert 2 <= second["sent_objects"] <= 4, second
    # and the 299 unchanged files' chunks are not declared one by one: the hub checks them
    # itself when it commits (a one-file change costs the link what the change is)
    with sqlite_hub.hub.db.session() as s:
        from sqlalchemy import func, select

        from caravane.hub.models import UploadObject

        declared = s.scalar(select(func.count()).where(UploadObject.upload_id == second["upload"]))
    assert declared == second["sent_objects"], declared


async def test_a_piece_the_client_skips_but_the_hub_lost_is_made_and_sent_again(
    sqlite_hub, tmp_path: Path
):
    """The client does not send again the pieces of the tree it last published; if the hub
    lost one meanwhile (another release replaced that tree and collection took it), the
    commit names it, and the client makes it again from the folder and sends it."""
    files = {f"site/p{i:03d}.html": noise(900, f"q{i}") for i in range(300)}
    src = write_tree(tmp_path / "src", files)
    client = HubClient(sqlite_hub.url, sqlite_hub.admin)
    assert (await client.publish("maths", src, cache=tmp_path / "cache"))["version"] == 1
    repo = sqlite_hub.hub.repo
    release = repo.snapshot().release("maths", 1)
    first_leaf = next(r for r in release.piece_refs() if r.level == 0)
    assert first_leaf.first == "site/p000.html"
    assert repo.store.remove(first_leaf.sha256)
    (src / "site/p299.html").write_bytes(noise(950, "changed"))
    files["site/p299.html"] = noise(950, "changed")
    done = await client.publish("maths", src, cache=tmp_path / "cache")
    assert done["complete"] and done["version"] == 2
    assert repo.store.has(first_leaf.sha256)
    root = (repo.path / "metadata/root.json").read_bytes()
    store = node_store(tmp_path / "store", root)
    assert fetch_release(f"{sqlite_hub.url}/repo", store, "maths") == 2
    store.checkout("maths", tmp_path / "out")
    assert read_tree(tmp_path / "out") == files


def test_a_tree_whose_chunks_were_never_sent_is_refused_naming_a_bounded_few(
    sqlite_hub, monkeypatch
):
    """A client that sends the pieces and none of the chunks: the hub stops once it has
    enough to name (20,000; 5 here) instead of holding every missing id."""
    from caravane.packs import hub_repository

    monkeypatch.setattr(hub_repository, "MISSING_NAMED", 5)
    monkeypatch.setattr(hub_repository, "CHECK_BATCH", 8)
    entries, _ = honest()
    body, pieces = pieces_of(entries)
    _, answer = upload(sqlite_hub, body, pieces)
    assert answer.status == 200
    missing = answer.json()["missing"]
    assert len(missing) == 5 and set(missing) <= {e.sha256 for e in entries}
    assert published(sqlite_hub) is None
