"""Publishing to a running hub: CLI, read-back over HTTP, deduplication, resume, bad uploads."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
import zstandard as zstd

from caravane.hub.client import HubClient, Outbox, UploadCancelled
from caravane.packs.layout import channel_relpath, object_relpath
from caravane.packs.repository import Repository
from caravane.packs.similarity import INDEX_RELPATH, SketchIndex

from .util import (
    fetch_release,
    http,
    node_store,
    noise,
    publish_cli,
    read_tree,
    served_manifest,
    write_tree,
)

FILES_V1 = {
    "lecons/intro.txt": "Bonjour la classe\n" * 50,
    "lecons/video.bin": noise(300_000, "video"),
    "README.md": "# Maths\n",
}


def test_cli_publish_then_read_back_and_checkout_bit_identical(running_hub, tmp_path: Path):
    src = write_tree(tmp_path / "src", FILES_V1)
    out = publish_cli(running_hub, "maths", src, tmp_path / "cache")
    assert out["ok"] and out["version"] == 1 and out["complete"]
    assert out["sent_objects"] > 0

    repo = f"{running_hub.url}/repo"
    root = http("GET", f"{repo}/metadata/root.json")
    assert root.status == 200
    meta = http("GET", f"{repo}/{channel_relpath('maths')}")
    assert meta.status == 200
    assert json.loads(meta.body)["signed"]["version"] == 1
    manifest = served_manifest(repo, "maths", 1)
    assert {f.path for f in manifest.files} == set(FILES_V1)
    sha = manifest.files[0].chunks[0][0]
    assert http("GET", f"{repo}/{object_relpath(sha)}").status == 200

    # The API tells the same story.
    ch = http("GET", f"{running_hub.url}/api/v1/channels/maths", token=running_hub.admin)
    assert ch.status == 200 and ch.json()["latest"] == 1

    # A centre pinned to the hub's root fetches and checks out exactly what was published.
    store = node_store(tmp_path / "store", root.body)
    assert fetch_release(repo, store, "maths") == 1
    store.checkout("maths", tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(src)
    assert store.verify().ok


def test_second_publish_uploads_only_new_objects(running_hub, tmp_path: Path):
    src = write_tree(tmp_path / "src", FILES_V1)
    first = publish_cli(running_hub, "maths", src, tmp_path / "cache")
    # A different cache: the hub, not the local cache, decides what is missing.
    second_src = write_tree(tmp_path / "src", {**FILES_V1, "lecons/new.txt": noise(5000, "n")})
    second = publish_cli(running_hub, "maths", second_src, tmp_path / "cache2")
    assert second["version"] == 2
    # the new file's chunk, and the one piece of the file list that names it (4 files: one
    # leaf, which is the tree's root)
    assert second["sent_objects"] == 2, (first, second)
    # Publishing the same content again sends nothing and still makes a release.
    third = publish_cli(running_hub, "maths", second_src, tmp_path / "cache2")
    assert third["sent_objects"] == 0 and third["version"] == 3

    store = node_store(
        tmp_path / "store", (running_hub.hub.repo.path / "metadata/root.json").read_bytes()
    )
    fetch_release(f"{running_hub.url}/repo", store, "maths")
    store.checkout("maths", tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(second_src)


async def test_cut_upload_resumes_and_is_invisible_until_commit(running_hub, tmp_path: Path):
    files = {f"f{i}.bin": noise(20_000, f"cut{i}") for i in range(8)}
    src = write_tree(tmp_path / "src", files)
    client = HubClient(running_hub.url, running_hub.admin)
    cut = await client.publish("maths", src, cache=tmp_path / "cache", max_objects=3)
    assert cut["complete"] is False and cut["sent_objects"] == 3

    # Nothing is visible yet: no channel metadata, no release in the API.
    meta = http("GET", f"{running_hub.url}/repo/{channel_relpath('maths')}")
    assert meta.status == 404
    ch = http("GET", f"{running_hub.url}/api/v1/channels/maths", token=running_hub.admin)
    assert ch.json()["latest"] is None and ch.json()["releases"] == []
    status = http(
        "GET", f"{running_hub.url}/api/v1/uploads/{cut['upload']}", token=running_hub.admin
    ).json()
    assert status["state"] == "open" and len(status["missing"]) == 5
    # Committing the cut upload is refused with a clear JSON error.
    c = http(
        "POST", f"{running_hub.url}/api/v1/uploads/{cut['upload']}/commit", token=running_hub.admin
    )
    assert c.status == 409 and "missing" in c.json()["error"]

    done = await client.publish("maths", src, cache=tmp_path / "cache")
    # the 5 chunks left, and the file list's one piece (the cut upload sent the list whole)
    assert done["complete"] and done["sent_objects"] == 6 and done["version"] == 1
    store = node_store(
        tmp_path / "store", (running_hub.hub.repo.path / "metadata/root.json").read_bytes()
    )
    fetch_release(f"{running_hub.url}/repo", store, "maths")
    store.checkout("maths", tmp_path / "out")
    assert read_tree(tmp_path / "out") == files


def test_object_with_wrong_hash_rejected_nothing_published(running_hub, tmp_path: Path):
    # Build objects locally the way the client does.
    local = Repository.init(tmp_path / "local")
    src = write_tree(tmp_path / "src", {"a.txt": noise(4000, "a"), "b.txt": noise(4000, "b")})
    local.publish("tmp", src)
    entries = local.manifest("tmp", 1).files
    base, tok = running_hub.url, running_hub.admin
    assert http("POST", f"{base}/api/v1/channels", {"id": "maths"}, tok).status == 201
    up = http(
        "POST",
        f"{base}/api/v1/uploads",
        {"channel": "maths", "files": [e.to_dict() for e in entries]},
        tok,
    )
    assert up.status == 201
    uid, missing = up.json()["upload"], up.json()["missing"]
    assert len(missing) == 2
    a, b = missing
    # b's bytes sent under a's name: the hub decodes, hashes, refuses.
    bad = http(
        "PUT",
        f"{base}/api/v1/uploads/{uid}/objects/{a}",
        local.store.read_frame(b),
        tok,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert bad.status == 422
    body = bad.json()
    assert body["status"] == 422 and body["error"]
    assert not running_hub.hub.repo.store.has(a)
    # Garbage bytes too.
    junk = http("PUT", f"{base}/api/v1/uploads/{uid}/objects/{a}", b"not zstd", tok)
    assert junk.status == 422 and "error" in junk.json()
    # An object not part of this upload.
    other = "0" * 64
    assert http("PUT", f"{base}/api/v1/uploads/{uid}/objects/{other}", b"x", tok).status == 422
    commit = http("POST", f"{base}/api/v1/uploads/{uid}/commit", None, tok)
    assert commit.status == 409
    assert http("GET", f"{base}/repo/{channel_relpath('maths')}").status == 404
    assert http("GET", f"{base}/api/v1/channels/maths", token=tok).json()["releases"] == []


def _aged_tree(folder: Path, files: dict[str, str | bytes]) -> Path:
    """Files written an hour ago: the files cache records them (a file modified within the
    last seconds is always read again, as git does with racy files)."""
    write_tree(folder, files)
    old = time.time() - 3600
    for p in folder.rglob("*"):
        if p.is_file():
            os.utime(p, (old, old))
    return folder


async def test_streaming_publish_keeps_no_object_copy_in_the_local_cache(
    running_hub, tmp_path: Path
):
    """Objects go from memory to the hub: the curator's cache stays small, whatever the size
    of the folder, and a second publish with the same cache sends nothing."""
    files = {f"media/v{i}.bin": noise(400_000, f"big{i}") for i in range(4)}
    src = _aged_tree(tmp_path / "src", files)
    client = HubClient(running_hub.url, running_hub.admin)
    first = await client.publish("maths", src, cache=tmp_path / "cache")
    assert first["complete"] and first["sent_bytes"] >= 1_600_000
    cached = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert cached < 400_000, cached  # the files cache only, not 1.6 MB of objects
    again = await client.publish("maths", src, cache=tmp_path / "cache")
    assert again["complete"] and again["sent_objects"] == 0 and again["version"] == 2


async def test_unchanged_file_whose_object_the_hub_collected_is_read_and_sent_again(
    running_hub, tmp_path: Path
):
    """The files cache says a file is unchanged, but the hub no longer holds its object: the
    release that had it was replaced by another curator's and collected. The commit names
    the object; the client reads that file again and sends it."""
    files = {"a.bin": noise(200_000, "a"), "b.bin": noise(200_000, "b")}
    src = _aged_tree(tmp_path / "src", files)
    client = HubClient(running_hub.url, running_hub.admin)
    await client.publish("maths", src, cache=tmp_path / "cache")
    repo = running_hub.hub.repo
    lost = next(f for f in repo.snapshot().manifest("maths", 1).files if f.path == "b.bin")
    # another curator publishes a release without b.bin; the first one is retired, and
    # collection takes b.bin's object (no grace period)
    other = write_tree(tmp_path / "other", {"a.bin": files["a.bin"]})
    await client.publish("maths", other, cache=tmp_path / "cache2")
    assert repo.retain("maths", 1) == [1]
    repo.collect_garbage(grace_seconds=0)
    assert not repo.store.has(lost.chunks[0][0])
    done = await client.publish("maths", src, cache=tmp_path / "cache")
    assert done["complete"] and done["version"] == 3
    assert repo.store.has(lost.chunks[0][0])
    store = node_store(tmp_path / "store", (repo.path / "metadata/root.json").read_bytes())
    fetch_release(f"{running_hub.url}/repo", store, "maths")
    store.checkout("maths", tmp_path / "out")
    assert read_tree(tmp_path / "out") == files


async def test_object_collected_during_the_upload_is_sent_again(sqlite_hub, tmp_path: Path):
    """The hub said it held an object (an earlier release's), then lost it before the file
    list came: the client reads the folder again for that object and the release is whole."""
    base = {"keep.bin": noise(150_000, "keep")}
    await HubClient(sqlite_hub.url, sqlite_hub.admin).publish(
        "maths", write_tree(tmp_path / "v1", base), cache=tmp_path / "c1"
    )
    kept = sqlite_hub.hub.repo.snapshot().manifest("maths", 1).files[0].chunks[0][0]
    # the latest release no longer holds it (the hub keeps every object of its latest)
    await HubClient(sqlite_hub.url, sqlite_hub.admin).publish(
        "maths",
        write_tree(tmp_path / "v1b", {"other.bin": noise(1000, "o")}),
        cache=tmp_path / "c1",
    )
    files = {**base, **{f"new{i}.bin": noise(300_000, f"new{i}") for i in range(6)}}
    src = write_tree(tmp_path / "v2", files)
    removed: list[int] = []

    def lose_it(_sent: int) -> None:  # after the first batch: the hub has answered for keep
        if not removed:
            removed.append(sqlite_hub.hub.repo.store.remove(kept))

    client = HubClient(sqlite_hub.url, sqlite_hub.admin)
    done = await client.publish("maths", src, cache=tmp_path / "c2", progress=lose_it)
    assert removed and removed[0] > 0
    assert done["complete"] and done["version"] == 3
    assert sqlite_hub.hub.repo.store.has(kept)
    store = node_store(
        tmp_path / "store", (sqlite_hub.hub.repo.path / "metadata/root.json").read_bytes()
    )
    fetch_release(f"{sqlite_hub.url}/repo", store, "maths")
    store.checkout("maths", tmp_path / "out")
    assert read_tree(tmp_path / "out") == files


async def test_publish_with_a_tiny_outbox_waits_for_the_hub_and_completes(
    sqlite_hub, tmp_path: Path
):
    """Reading the folder waits while the compressed bytes not yet sent pass the outbox's
    bound (memory stays flat on a slow link); the publish still completes, whole."""
    files = {f"f{i}.bin": noise(120_000, f"tiny{i}") for i in range(12)}
    src = write_tree(tmp_path / "src", files)
    client = HubClient(sqlite_hub.url, sqlite_hub.admin, outbox_bytes=1)
    done = await client.publish("maths", src, cache=tmp_path / "cache")
    assert done["complete"] and done["version"] == 1
    store = node_store(
        tmp_path / "store", (sqlite_hub.hub.repo.path / "metadata/root.json").read_bytes()
    )
    fetch_release(f"{sqlite_hub.url}/repo", store, "maths")
    store.checkout("maths", tmp_path / "out")
    assert read_tree(tmp_path / "out") == files


def test_reading_waits_while_too_many_chunks_await_the_hubs_answer() -> None:
    """Small files compress faster than a hub declares them: past ``chunks`` handed over
    and not yet answered, the folder's reading waits (the backlog held some 4 KB a chunk,
    223 MiB at 300,000 pages), and goes on once the hub has answered for half of them
    (going on at the first answer filled it again at the next chunk: a declaration a
    chunk)."""
    box = Outbox(limit=10**9, chunks=4)
    shas = [box.put_raw(noise(200, f"c{i}"))[0] for i in range(5)]
    assert [box.announce(h) for h in shas] == [False] * 4 + [True]
    free = threading.Event()
    reader = threading.Thread(target=lambda: (box.wait_room(), free.set()), daemon=True)
    reader.start()
    assert not free.wait(0.3)
    box.drop(shas[:1])  # the hub holds it already: no longer full, not yet half empty
    assert not free.wait(0.3)
    box.take(shas[1:3])  # being sent
    assert free.wait(5)
    reader.join(5)


def test_frames_being_sent_count_until_the_hub_has_answered() -> None:
    """A frame taken for a request is still in memory (in the request's body) until the hub
    answers: the folder's reading waits for the answers too, not only for the handing over
    (the bodies in flight once held up to 16 MiB beside a full outbox)."""
    data = [noise(4000, f"s{i}") for i in range(4)]
    box = Outbox(limit=1, chunks=10**6)
    shas = [box.put_raw(d)[0] for d in data]
    assert box.announce(shas[0])  # one frame is past the bound
    taken = box.take(shas[:1])
    assert [h for h, _ in taken] == shas[:1] and box.frames.keys() == set(shas[1:])
    free = threading.Event()
    reader = threading.Thread(target=lambda: (box.wait_room(), free.set()), daemon=True)
    reader.start()
    assert not free.wait(0.3)  # taken, not answered: still held
    box.landed(len(taken[0][1]))
    assert free.wait(5)
    reader.join(5)
    assert box.announce(shas[1])  # the bound holds again for the next one


def test_a_batch_of_chunks_is_held_once_each() -> None:
    """The reading threads hand the outbox batches, compressed in one call: each new chunk
    is held once (a repeat in the batch, or one held before, is answered 0), in order, and
    nothing is held once the upload stopped."""
    box = Outbox(limit=10**9)
    data = [noise(300 + i, f"b{i}") for i in range(6)]
    shas = [hashlib.sha256(d).hexdigest() for d in data]
    assert box.put_raw(data[0])[0] == shas[0]
    answers = box.put_raw_many([(None, d) for d in [*data, data[2], data[0]]])
    assert [sha for sha, _ in answers] == [*shas, shas[2], shas[0]]
    new = [n for _, n in answers]
    assert new[0] == 0 and all(n > 0 for n in new[1:6]) and new[6:] == [0, 0]
    assert list(box.frames) == shas
    assert [zstd.ZstdDecompressor().decompress(box.frames[h]) for h in shas] == data
    assert [len(box.frames[h]) for h in shas[1:]] == new[1:6]
    box.close()
    with pytest.raises(UploadCancelled):
        box.put_raw_many([(None, noise(100, "late"))])


async def test_publish_of_many_small_files_with_a_short_backlog_completes(
    sqlite_hub, tmp_path: Path
):
    files = {f"d{i % 3}/p{i}.html": noise(300 + i, f"page{i}") for i in range(400)}
    src = write_tree(tmp_path / "src", files)
    client = HubClient(sqlite_hub.url, sqlite_hub.admin, outbox_chunks=3)
    done = await client.publish("maths", src, cache=tmp_path / "cache")
    assert done["complete"] and done["version"] == 1 and done["sent_objects"] >= 400
    store = node_store(
        tmp_path / "store", (sqlite_hub.hub.repo.path / "metadata/root.json").read_bytes()
    )
    fetch_release(f"{sqlite_hub.url}/repo", store, "maths")
    store.checkout("maths", tmp_path / "out")
    assert read_tree(tmp_path / "out") == files


def test_file_list_with_commit_signs_the_release_in_the_same_request(running_hub, tmp_path: Path):
    """``PUT .../files`` with ``"commit": true`` and nothing missing answers the release."""
    local = Repository.init(tmp_path / "local")
    src = write_tree(tmp_path / "src", {"a.txt": noise(4000, "a")})
    local.publish("tmp", src)
    entries = local.manifest("tmp", 1).files
    base, tok = running_hub.url, running_hub.admin
    assert http("POST", f"{base}/api/v1/channels", {"id": "maths"}, tok).status == 201
    uid = http("POST", f"{base}/api/v1/uploads", {"channel": "maths", "stream": True}, tok).json()[
        "upload"
    ]
    chunks = [[h, n] for e in entries for h, n in e.chunks]
    missing = http("POST", f"{base}/api/v1/uploads/{uid}/chunks", {"chunks": chunks}, tok)
    files = {"files": [e.to_dict() for e in entries], "commit": True}
    # an object still missing: the list is taken, nothing is signed
    listed = http("PUT", f"{base}/api/v1/uploads/{uid}/files", files, tok).json()
    assert listed["missing"] == missing.json()["missing"] and "committed" not in listed
    assert http("GET", f"{base}/repo/{channel_relpath('maths')}").status == 404
    # the usual commit follows once the object is there
    (sha,) = listed["missing"]
    frame = local.store.read_frame(sha)
    put = http(
        "PUT",
        f"{base}/api/v1/uploads/{uid}/objects/{sha}",
        frame,
        tok,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert put.status == 201
    assert http("POST", f"{base}/api/v1/uploads/{uid}/commit", None, tok).json()["version"] == 1

    # a second upload of the same content: the file list commits it at once
    uid2 = http("POST", f"{base}/api/v1/uploads", {"channel": "maths", "stream": True}, tok).json()[
        "upload"
    ]
    assert (
        http("POST", f"{base}/api/v1/uploads/{uid2}/chunks", {"chunks": chunks}, tok).json()[
            "missing"
        ]
        == []
    )
    done = http("PUT", f"{base}/api/v1/uploads/{uid2}/files", files, tok).json()
    assert done["missing"] == [] and done["committed"]["version"] == 2
    meta = json.loads(http("GET", f"{base}/repo/{channel_relpath('maths')}").body)
    assert meta["signed"]["version"] == 2
    status = http("GET", f"{base}/api/v1/uploads/{uid2}", token=tok).json()
    assert status["state"] == "committed" and status["version"] == 2


async def test_release_signed_through_the_api_is_sketched_after_the_answer(
    sqlite_hub, tmp_path: Path
):
    """The similarity index (which spares a later pack build reading this release again)
    is filled by the hub's background worker once the curator has the answer, and only
    the first time: a second call for the same release has nothing left to sketch."""
    files = {f"t{i}.txt": noise(20_000, f"sk{i}") for i in range(5)}
    src = write_tree(tmp_path / "src", files)
    done = await HubClient(sqlite_hub.url, sqlite_hub.admin).publish(
        "maths", src, cache=tmp_path / "cache"
    )
    assert done["complete"] and done["version"] == 1
    shas = {f.sha256 for f in sqlite_hub.hub.repo.snapshot().manifest("maths", 1).files}
    deadline = time.monotonic() + 30
    while True:
        with SketchIndex(sqlite_hub.hub.repo.path / INDEX_RELPATH) as index:
            known = index.known(shas)
        if known == shas or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert known == shas
    assert sqlite_hub.hub.sketch_pending("maths") == 0
