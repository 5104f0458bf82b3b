"""The segment store: what a user notices of it (disk, crashes, damage, old stores, collection)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard as zstd

from caravane.packs.hub_repository import HubRepository
from caravane.packs.layout import object_relpath
from caravane.packs.store import ObjectStore
from caravane.protocol.errors import VerificationError

from .conftest import RepoSim, read_tree

EXE = [sys.executable, "-m", "caravane"]


def noise(n: int, seed: str) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def small_tree(n: int) -> dict[str, bytes | str]:
    return {f"d{i % 7}/page-{i}.html": f"<p>leçon {i} " + "texte " * (i % 40) for i in range(n)}


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def segments(root: Path) -> list[Path]:
    return sorted((root / "segments").glob("*.seg"))


def check_store(root: Path) -> int:
    """Every indexed object reads back and matches its id; returns how many."""
    store = ObjectStore(root)
    n = 0
    for sha in store.iter_ids():
        data = zstd.ZstdDecompressor().decompress(store.read_frame(sha))
        assert hashlib.sha256(data).hexdigest() == sha
        n += 1
    return n


def test_many_small_files_take_a_few_files_on_disk(sim: RepoSim, tmp_path: Path) -> None:
    tree = small_tree(600)
    sim.publish(tree)
    store = sim.hub.store
    ids = list(store.iter_ids())
    assert len(ids) >= 600
    assert not files_under(sim.hub.path / "objects")  # no file per object any more
    payload = sum(store.frame_size(s) for s in ids)
    on_disk = sum(p.stat().st_size for p in segments(sim.hub.path))
    assert on_disk == payload  # frames back to back, nothing else in a segment
    sim.hub.checkout("maths", tmp_path / "out")
    assert read_tree(tmp_path / "out") == {k: v.encode() for k, v in tree.items()}  # type: ignore[union-attr]


def test_flipped_bit_in_a_segment_is_caught_and_names_verify(sim: RepoSim, tmp_path: Path) -> None:
    sim.publish({"a.bin": noise(40_000, "a"), "b.txt": "bonjour\n" * 200})
    sha = sim.hub.manifest("maths", 1).files[0].chunks[0][0]
    loc = sim.hub.store.index.locate(sha)
    assert loc is not None
    seg = sim.hub.store.index.segment_path(loc.segment)
    data = bytearray(seg.read_bytes())
    data[loc.offset + loc.length - 2] ^= 0x04
    seg.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="caravane repo verify"):
        sim.hub.checkout("maths", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    report = sim.hub.verify()
    assert not report.ok and any(sha[:16] in p for p in report.problems)


def test_torn_tail_is_ignored_then_cut(sim: RepoSim) -> None:
    sim.publish({"a.txt": "un\n" * 100})
    seg = segments(sim.hub.path)[-1]
    good = seg.stat().st_size
    with open(seg, "ab") as fh:  # a writer killed between its append and its index commit
        fh.write(b"\x28\xb5\x2f\xfd half a frame")
    assert sim.hub.verify().ok
    sim.hub.store.close()  # the writer is gone: its lock on the segment with it
    fresh = HubRepository(sim.hub.path)  # another writer taking the segment over
    sha, written = fresh.store.put_raw(b"deux\n" * 100)
    assert written
    loc = fresh.store.index.locate(sha)
    assert loc is not None and loc.offset == good  # the tail was cut before appending
    assert check_store(sim.hub.path) >= 2 and sim.hub.verify().ok


WRITER = """
import hashlib, sys
from caravane.packs.store import ObjectStore
store = ObjectStore(sys.argv[1], durable=sys.argv[3] == "1")
for i in range(100000):
    data = hashlib.sha256(f"{sys.argv[2]}:{i}".encode()).digest() * (1 + i % 300)
    sha, _ = store.put_raw(data)
    print(sha, flush=True)
"""


def _writers(root: Path, n: int, durable: bool = False) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), f"w{i}", "1" if durable else "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("durable", [False, True])
def test_kill_9_at_any_instant_leaves_a_store_that_verifies(tmp_path: Path, durable: bool) -> None:
    root = tmp_path / "store"
    root.mkdir()
    reported: set[str] = set()
    for delay in (0.02, 0.1, 0.25):
        procs = _writers(root, 2, durable)
        for p in procs:  # both are writing by now
            assert p.stdout is not None
            reported.add(p.stdout.readline().strip())
        time.sleep(delay)
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            out, _ = p.communicate()
            reported.update(line for line in out.split("\n") if len(line) == 64)
        # every object reported stored is there and whole, whatever was cut
        store = ObjectStore(root)
        assert all(store.has(s) for s in reported)
        assert check_store(root) >= len(reported)
    assert reported


def test_processes_and_threads_write_one_store_at_once(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    procs = _writers(root, 3)
    for p in procs:
        assert p.stdout is not None and len(p.stdout.readline().strip()) == 64
    store = ObjectStore(root)
    import threading

    def put(seed: str) -> None:
        for i in range(150):
            store.put_raw(noise(500 + i, f"{seed}-{i}"))

    threads = [threading.Thread(target=put, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    for t in threads:
        t.join()
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
        p.communicate()
    assert check_store(root) >= 450
    assert len(segments(root)) >= 2  # each process appended to its own segment


def _as_old_store(root: Path) -> int:
    """Turn a store into the layout of before segments: one file per object."""
    store = ObjectStore(root)
    ids = list(store.iter_ids())
    for sha in ids:
        path = root / object_relpath(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(store.read_frame(sha))
    store.close()
    shutil.rmtree(root / "segments")
    return len(ids)


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EXE, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_an_old_store_is_read_then_moved_into_segments(sim: RepoSim, tmp_path: Path) -> None:
    tree = small_tree(80)
    sim.publish(tree)
    n = _as_old_store(sim.hub.path)
    old = HubRepository(sim.hub.path)
    old.checkout("maths", tmp_path / "before")  # read as they are
    assert old.verify().ok
    r = _cli("repo", "compact", sim.hub.path, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["migrated_objects"] == n
    assert not files_under(sim.hub.path / "objects")
    r = _cli("repo", "verify", sim.hub.path, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["objects_checked"] >= 80, r.stdout
    HubRepository(sim.hub.path).checkout("maths", tmp_path / "after")
    assert read_tree(tmp_path / "after") == read_tree(tmp_path / "before")
    # a second run has nothing to do
    again = json.loads(_cli("repo", "compact", sim.hub.path, "--json").stdout)
    assert again["migrated_objects"] == 0


def test_a_centre_store_of_before_segments_syncs_on(sim: RepoSim, tmp_path: Path) -> None:
    sim.publish({"a.txt": "un\n" * 50, "b.bin": noise(30_000, "b")})
    store = sim.store()
    store.apply_pack(sim.pack(0, 1))
    _as_old_store(store.path)
    sim.publish({"a.txt": "un\n" * 50, "b.bin": noise(30_000, "b"), "c.txt": "trois"})
    again = type(store)(store.path)
    again.apply_pack(sim.pack(1, 2))  # old loose objects are the delta's base
    again.checkout("maths", tmp_path / "out")
    assert (tmp_path / "out/c.txt").read_text() == "trois"
    assert again.verify().ok


def test_collection_gives_the_space_of_dead_objects_back(sim: RepoSim) -> None:
    sim.publish({"keep.txt": "gardé\n" * 100})
    store = sim.hub.store
    for i in range(300):  # unreferenced objects from an abandoned upload, a week old
        sha, _ = store.put_raw(noise(2000, f"old-{i}"))
        store.freshen(sha, at=time.time() - 7 * 86400)
    young, _ = store.put_raw(noise(2000, "young"))  # written just now: spared
    before = sum(p.stat().st_size for p in segments(sim.hub.path))
    count, freed = sim.hub.collect_garbage(grace_seconds=3600)
    assert count == 300 and freed > 0
    after = sum(p.stat().st_size for p in segments(sim.hub.path))
    assert after < before - 500_000
    assert store.has(young) and sim.hub.verify().ok


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 1 MiB file system (tmpfs), for a store that fills it."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_is_named_and_loses_no_stored_object(small_disk: Path) -> None:
    from caravane.packs.errors import DiskFullError

    store = ObjectStore(small_disk / "store")
    stored: list[str] = []
    with pytest.raises(DiskFullError, match="full"):
        for i in range(1000):
            stored.append(store.put_raw(noise(20_000, f"big-{i}"))[0])
    assert len(stored) > 10
    store.close()
    again = ObjectStore(small_disk / "store")
    assert all(again.has(s) for s in stored) and check_store(small_disk / "store") >= len(stored)
