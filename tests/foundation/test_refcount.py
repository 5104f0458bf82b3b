"""A centre's collection by counts (packs/refcount.py): what a user would notice.

After any run of updates, drops and collections, ``repo verify`` finds every kept release
whole and nothing unreferenced, exactly as the old mark-everything collection left it; a
one-file update reads a few pieces, not the channel; a kill -9 at any point, a damaged
counts file or a pack refused half way loses nothing a kept release needs and leaves
nothing behind for long.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravane.packs import refcount
from caravane.packs.centre_store import CentreStore
from caravane.packs.errors import PackError
from caravane.packs.layout import manifest_relpath

from .conftest import RepoSim, read_tree

WORDS = ["le", "la", "les", "un", "une", "et", "the", "of", "and", "to", "in", "is"]


def _page(rnd: random.Random, i: int) -> str:
    return f"<p>{i} " + " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(30, 300))) + "</p>"


def _library(n: int, seed: int = 1) -> dict[str, bytes | str]:
    rnd = random.Random(seed)
    return {f"d{i // 50:02d}/page-{i:04d}.html": _page(rnd, i) for i in range(n)}


def _drop(store: CentreStore, channel: str, keep: set[int]) -> None:
    """What the node does before it collects: remove the manifests it no longer keeps."""
    for path in (store.path / "manifests" / channel).glob("*.json"):
        if int(path.stem) not in keep:
            path.unlink()


def _clean(store: CentreStore) -> None:
    """Every kept release whole, nothing unreferenced: ``repo verify`` says so."""
    report = store.verify()
    assert report.problems == []
    assert report.unreferenced_objects == 0


def _update(sim: RepoSim, store: CentreStore, files: dict[str, bytes | str], have: int) -> int:
    v = sim.publish(files, avg_chunk=1024)
    store.apply_pack(sim.pack(have, v))
    return v


def _first(sim: RepoSim, n: int) -> tuple[CentreStore, dict[str, bytes | str], int]:
    """A centre's store holding a library of ``n`` pages as version 1, collected once."""
    store = sim.store()
    files = _library(n)
    have = _update(sim, store, files, 0)
    store.collect()
    return store, files, have


EDITS = st.lists(
    st.tuples(
        st.sampled_from(["change", "add", "delete", "rename", "copy", "revert"]),
        st.integers(0, 10_000),
    ),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(st.tuples(EDITS, st.sampled_from([1, 2])), min_size=2, max_size=4))
def test_any_run_of_updates_leaves_exactly_what_kept_releases_name(
    tmp_path_factory: pytest.TempPathFactory,
    steps: list[tuple[list[tuple[str, int]], int]],
) -> None:
    tmp = tmp_path_factory.mktemp("rc")
    from caravane.packs.hub_repository import HubRepository

    sim = RepoSim(tmp, HubRepository.init(tmp / "hub"))
    store = sim.store()
    files = _library(120)
    history = [dict(files)]
    have = _update(sim, store, files, 0)
    store.collect()
    for edits, retain in steps:
        rnd = random.Random(len(history))
        for kind, n in edits:
            names = sorted(files)
            name = names[n % len(names)]
            if kind == "change":
                files[name] = _page(rnd, n)
            elif kind == "add":
                files[f"new/{n}.html"] = _page(rnd, n)
            elif kind == "delete" and len(files) > 1:
                del files[name]
            elif kind == "rename":
                files[f"moved/{n}.html"] = files.pop(name)
            elif kind == "copy":  # the same content twice: one object, named twice
                files[f"copy/{n}.html"] = files[name]
            elif kind == "revert":  # content an older release had (and may have dropped)
                old = history[n % len(history)]
                files.update(dict(list(old.items())[:3]))
        history.append(dict(files))
        have = _update(sim, store, files, have)
        _drop(store, sim.channel, set(range(have - retain + 1, have + 1)))
        report = store.collect()
        assert not report.skipped
        _clean(store)
        out = tmp / f"out-{have}"
        store.checkout(sim.channel, out, have)
        assert read_tree(out) == {
            k: v.encode() if isinstance(v, str) else v for k, v in files.items()
        }
    # the counts equal the ones built from nothing
    (store.path / refcount.LIVE_NAME).unlink()
    again = store.collect()
    assert again.rebuilt and again.removed == 0


def test_coarse_ids_share_counts_and_only_keep_more(
    sim: RepoSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Object rows are 64-bit prefixes: ids sharing one share a count. With a prefix of 4
    bits (every row shared by a sixteenth of the objects) nothing kept goes missing."""
    monkeypatch.setattr(refcount, "object_key", lambda sha: int(sha[:1], 16))
    store = sim.store()
    files = _library(200)
    have = _update(sim, store, files, 0)
    for i in range(3):
        files[f"d0{i}/page-000{i}.html"] = f"changed {i}"
        have = _update(sim, store, files, have)
        _drop(store, sim.channel, {have})
        store.collect()
        assert store.verify().problems == []


def test_a_one_file_update_reads_a_few_pieces(sim: RepoSim) -> None:
    store = sim.store()
    files = _library(5000)
    have = _update(sim, store, files, 0)
    first = store.collect()
    assert first.rebuilt and first.swept  # an old store: counted once, the whole channel
    before = first.pieces_read
    for i in range(2):
        files[f"d{10 + i:02d}/page-{(10 + i) * 50:04d}.html"] = f"one file changed {i}"
        have = _update(sim, store, files, have)
        _drop(store, sim.channel, {have, have - 1})
        report = store.collect()
        # the new release's changed leaf and nodes in, the dropped one's out
        assert report.pieces_read <= 12, report
        assert not report.swept
    assert before > 60
    assert report.removed >= 2  # the dropped release's old page and its pieces
    _clean(store)


def test_a_pack_refused_half_way_leaves_nothing_for_long(sim: RepoSim) -> None:
    store, files, have = _first(sim, 300)
    for i in range(0, 300, 7):
        files[f"d{i // 50:02d}/page-{i:04d}.html"] = f"rewritten {i} " * 50
    v2 = sim.publish(files, avg_chunk=1024)
    pack = sim.pack(have, v2)
    sim.flip(pack, pack.stat().st_size - 200)  # the last group is damaged
    with pytest.raises(PackError):
        store.apply_pack(pack)
    assert store.verify().unreferenced_objects > 0  # what verified before the damage
    report = store.collect()
    assert report.swept and report.removed > 0
    _clean(store)
    assert not any((store.path / refcount.UNSETTLED).iterdir())


def test_damaged_counts_are_rebuilt(sim: RepoSim) -> None:
    store, files, have = _first(sim, 300)
    files["d00/page-0000.html"] = "new"
    have = _update(sim, store, files, have)
    (store.path / refcount.LIVE_NAME).write_bytes(b"not a database" * 100)
    _drop(store, sim.channel, {have})
    report = store.collect()
    assert report.rebuilt
    _clean(store)


def test_counts_that_disagree_with_the_pieces_are_rebuilt(sim: RepoSim) -> None:
    import sqlite3

    store, files, have = _first(sim, 300)
    files["d00/page-0000.html"] = "new"
    have = _update(sim, store, files, have)
    store.collect()
    db = sqlite3.connect(store.path / refcount.LIVE_NAME)
    db.execute("DELETE FROM pieces")  # nothing left to count the old release out
    db.commit()
    db.close()
    _drop(store, sim.channel, {have})
    report = store.collect()
    assert report.rebuilt and any("counted out" in n for n in report.notes)
    _clean(store)


def test_a_missing_piece_of_a_kept_release_collects_nothing(sim: RepoSim) -> None:
    store = sim.store()
    files = _library(300)
    have = _update(sim, store, files, 0)
    files["d00/page-0000.html"] = "new"
    have = _update(sim, store, files, have)
    leaf = sim.piece_of(have, "d00/page-0000.html")
    store.store.remove(leaf)
    before = sum(1 for _ in store.store.iter_ids())
    report = store.collect()
    assert report.skipped and "piece" in report.skipped
    assert sum(1 for _ in store.store.iter_ids()) == before


@pytest.mark.parametrize(
    ("where", "at"),
    [
        ("refcount.LiveCounts._count_objects", 2),  # inside the count transaction
        ("refcount.LiveCounts._remove_dead", 1),  # just after it commits
        ("store.ObjectStore.remove", 3),  # part way through the removals
    ],
)
def test_kill_9_during_collection_loses_nothing(sim: RepoSim, where: str, at: int) -> None:
    """The collecting process is killed (SIGKILL) inside the count transaction, after it
    commits, or part way through the removals; the next collection finishes the job."""
    store, files, have = _first(sim, 400)
    for i in range(0, 400, 3):
        files[f"d{i // 50:02d}/page-{i:04d}.html"] = f"rewritten {i} " * 40
    have = _update(sim, store, files, have)
    _drop(store, sim.channel, {have})
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from caravane.packs import refcount, store
        from caravane.packs.centre_store import CentreStore
        owner, name = {where!r}.rsplit(".", 1)
        cls = eval(owner)
        real = getattr(cls, name)
        calls = [0]
        def dying(self, *args, **kw):
            calls[0] += 1
            if calls[0] == {at}:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, *args, **kw)
        setattr(cls, name, dying)
        CentreStore(Path(sys.argv[1])).collect()
        """
    )
    proc = subprocess.run([sys.executable, "-c", child, str(store.path)], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert store.verify().problems == []  # nothing the kept release needs went
    report = store.collect()
    assert not report.skipped
    _clean(store)
    assert (store.path / manifest_relpath(sim.channel, have)).exists()
    assert os.listdir(store.path / refcount.UNSETTLED) == []


def test_objects_left_to_remove_by_a_killed_collection_are_spared_if_named_again(
    sim: RepoSim,
) -> None:
    """Killed after its counts commit, a collection leaves a list of objects to remove. The
    next update brings the old content back (a reverted page): those objects are named
    again, and the collection that follows keeps them."""
    store = sim.store()
    original = _library(200)
    files = dict(original)
    have = _update(sim, store, files, 0)
    store.collect()
    for i in range(0, 200, 2):
        files[f"d{i // 50:02d}/page-{i:04d}.html"] = f"rewritten {i} " * 40
    have = _update(sim, store, files, have)
    _drop(store, sim.channel, {have})
    child = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        from caravane.packs import refcount
        from caravane.packs.centre_store import CentreStore
        def dying(self, *args, **kw):
            os.kill(os.getpid(), signal.SIGKILL)
        refcount.LiveCounts._remove_dead = dying
        CentreStore(Path(sys.argv[1])).collect()
        """
    )
    proc = subprocess.run([sys.executable, "-c", child, str(store.path)], check=False)
    assert proc.returncode == -signal.SIGKILL
    have = _update(sim, store, dict(original), have)  # version 1's pages again
    _drop(store, sim.channel, {have})
    store.collect()
    _clean(store)
    out = store.path.parent / "out"
    store.checkout(sim.channel, out, have)
    assert read_tree(out) == {k: str(v).encode() for k, v in original.items()}


def test_a_manifest_replaced_under_its_name_keeps_what_the_new_bytes_name(sim: RepoSim) -> None:
    """Counts follow a manifest's bytes, not its file name: if the file under a name changes
    (a store restored from an older backup, say), the new bytes are counted in before the
    old ones are counted out."""
    store = sim.store()
    files = _library(200)
    v1 = _update(sim, store, files, 0)
    files.update({f"d00/page-{i:04d}.html": f"second {i}" for i in range(20)})
    v2 = _update(sim, store, files, v1)
    one = (store.path / manifest_relpath(sim.channel, v1)).read_bytes()
    two = (store.path / manifest_relpath(sim.channel, v2)).read_bytes()
    counts = refcount.LiveCounts(store.path, store.store)
    counts.collect({"a": one, "b": two})
    report = counts.collect({"a": two})  # "a" now holds version 2; version 1 has gone
    assert report.counted_in == 1 and report.counted_out == 2 and report.removed > 0
    _drop(store, sim.channel, {v2})
    _clean(store)
