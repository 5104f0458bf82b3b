"""Activation by recycling: a new release is built out of the folder of the one before the
active release, touching only the files that differ (node/activate.py).

What a centre's operator would notice: the served release never changes while the next one
is built, the release kept for rollback is intact, the new release is exactly the signed one
(files changed, added, removed, a file become a folder and back, modes), and a build cut
short leaves the active release served and is done again at the next pass.
"""

from __future__ import annotations

import os

import pytest

from caravane.node.activate import Releases
from caravane.packs.repository import RepositoryBase
from tests.support.simulator import Centre, RepositorySimulator, read_tree

BASE = {f"pages/{i:03d}.html": f"<p>page {i}</p>".encode() for i in range(200)}


def _release(edits: dict[str, bytes | None]) -> dict[str, bytes]:
    files = dict(BASE)
    for path, data in edits.items():
        if data is None:
            files.pop(path, None)
        else:
            files[path] = data
    return files


V1 = _release({"notes.txt": b"a file", "old/gone.txt": b"soon removed"})
V2 = _release({"notes.txt": b"a file", "pages/007.html": b"<p>seven, edited</p>"})
# notes.txt becomes a folder, old/ is gone, one page removed, one added
V3 = _release(
    {
        "notes.txt/inside.txt": b"now a folder",
        "pages/007.html": b"<p>seven, edited</p>",
        "pages/050.html": None,
        "pages/new.html": b"<p>new</p>",
    }
)


def _no_ordinary_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if the release is built the ordinary way (a link per file) instead of recycled."""

    def refuse(*args: object, **kw: object) -> set[str]:
        raise AssertionError("built afresh, not recycled")

    monkeypatch.setattr(Releases, "_link_unchanged", refuse)


def _sync(centre: Centre, sim: RepositorySimulator) -> None:
    r = centre.sync([sim.upstream(f"up-{len(sim.upstreams)}")])
    assert r.complete, r.to_dict()


def _served(centre: Centre, sim: RepositorySimulator, *releases: dict[str, bytes]) -> None:
    """Publish each release and let the centre switch to it, in turn."""
    for files in releases:
        sim.publish(files)
        _sync(centre, sim)


def test_the_third_release_is_made_of_the_first_ones_folder(
    sim: RepositorySimulator, centre: Centre, monkeypatch: pytest.MonkeyPatch
) -> None:
    _served(centre, sim, V1, V2)
    v1_folder = centre.releases.folder("lecons", 1)
    kept_inode = (v1_folder / "pages/100.html").stat().st_ino
    v2_before = read_tree(centre.releases.folder("lecons", 2))
    sim.publish(V3)
    _no_ordinary_build(monkeypatch)
    _sync(centre, sim)
    assert centre.live() == V3
    assert not v1_folder.exists()  # recycled into release 3
    third = centre.releases.folder("lecons", 3)
    assert (third / "pages/100.html").stat().st_ino == kept_inode  # not rewritten
    assert read_tree(centre.releases.folder("lecons", 2)) == v2_before  # rollback intact
    assert not (third / "old").exists()
    assert centre.releases.installed("lecons") == [2, 3]
    # collection after the switch kept every piece of the kept releases' file lists, and
    # nothing else
    report = centre.repo.verify()
    assert report.ok and report.unreferenced_objects == 0, report.to_dict()
    assert {f.path for f in centre.repo.manifest("lecons", 2).files} == set(V2)


def test_a_file_back_from_a_folder(
    sim: RepositorySimulator, centre: Centre, monkeypatch: pytest.MonkeyPatch
) -> None:
    _served(centre, sim, V1, V3, V2)  # notes.txt: a file, a folder, a file
    sim.publish(V1)  # built out of release 2's folder, where notes.txt is a folder
    _no_ordinary_build(monkeypatch)
    _sync(centre, sim)
    assert centre.live() == V1
    assert centre.releases.installed("lecons") == [3, 4]
    assert read_tree(centre.releases.folder("lecons", 3)) == V2


def test_a_build_cut_short_keeps_the_active_release_and_is_done_again(
    sim: RepositorySimulator, centre: Centre, monkeypatch: pytest.MonkeyPatch
) -> None:
    _served(centre, sim, V1, V2)
    sim.publish(V3)
    real = RepositoryBase.materialise

    def cut(self: RepositoryBase, *args: object, **kw: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RepositoryBase, "materialise", cut)
    r = centre.sync([sim.upstream("cut")])
    assert not r.complete
    assert centre.live() == V2  # served throughout
    assert read_tree(centre.releases.folder("lecons", 2)) == V2
    monkeypatch.setattr(RepositoryBase, "materialise", real)
    _sync(centre, sim)
    assert centre.live() == V3
    leftovers = [p.name for p in (centre.path / "releases/lecons").iterdir()]
    assert sorted(leftovers) == ["2", "3"]
    # the release rebuilt the ordinary way shares the unchanged files with release 2
    assert os.path.samefile(
        centre.releases.folder("lecons", 3) / "pages/100.html",
        centre.releases.folder("lecons", 2) / "pages/100.html",
    )
