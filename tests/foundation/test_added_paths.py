"""A centre's check of an update's new paths against the names already there.

A case-insensitive drive (FAT32, exFAT, NTFS) holds one of ``index.html`` and ``Index.html``;
a release naming both would serve one file under two names. A first release is checked whole;
an update is checked by ``paths.check_added`` from the listings of the folders its new paths
are in (``tree.PathCursor.listing``), which must refuse exactly what checking the whole
release would.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caravane.protocol import tree
from caravane.protocol.errors import PathError
from caravane.protocol.metadata import FileEntry
from caravane.protocol.paths import check_added, check_paths

NAMES = ["a", "A", "b", "B", "\u00e9", "\u00c9", "x.txt", "X.TXT"]
PATHS = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)


def _passes(paths: list[str]) -> bool:
    try:
        check_paths(paths)
    except PathError:
        return False
    return True


def _listing_of(paths: list[str]):  # type: ignore[no-untyped-def]
    def listing(prefix: str) -> list[tuple[str, bool]]:
        """The folder's entries in path order; a file and a folder of one name are two."""
        out: list[tuple[str, bool]] = []
        for p in sorted(paths):
            if p.startswith(prefix):
                name, slash, _ = p[len(prefix) :].partition("/")
                if not out or out[-1] != (name, bool(slash)):
                    out.append((name, bool(slash)))
        return out

    return listing


@st.composite
def updates(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """A release that passes the check, and paths added to it (maybe colliding)."""
    old: list[str] = []
    for p in draw(st.lists(PATHS, max_size=8)):
        if p not in old and _passes([*old, p]):
            old.append(p)
    added = [
        p for p in dict.fromkeys(draw(st.lists(PATHS, min_size=1, max_size=4))) if p not in old
    ]
    return old, added


@settings(max_examples=400, deadline=None)
@given(updates())
def test_the_update_check_refuses_exactly_what_the_whole_check_refuses(
    case: tuple[list[str], list[str]],
) -> None:
    old, added = case
    new = sorted(old + added)
    whole = _passes(new)
    try:
        check_added(sorted(added), _listing_of(new))
        by_listing = True
    except PathError:
        by_listing = False
    assert by_listing == whole, (old, added)


def _tree_of(paths: list[str]) -> tuple[tree.TreeDoc, tree.PieceReader]:
    pieces: dict[str, bytes] = {}
    writer = tree.TreeWriter(lambda ref, data: pieces.__setitem__(ref.sha256, data), check=False)
    for p in sorted(paths):
        data = p.encode()
        sha = hashlib.sha256(data).hexdigest()
        writer.add(FileEntry(p, len(data), 0o644, sha, [(sha, len(data))]))
    root = writer.finish()
    assert root is not None
    doc = tree.parse_doc(
        tree.encode_doc("c", 1, "2026-01-01T00:00:00Z", "", root.files, root.size, root), "doc"
    )
    return doc, lambda refs: [pieces[r.sha256] for r in refs]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["d", "D", "e", "z"]), min_size=1, max_size=3), st.integers(1, 400))
def test_a_folder_listing_from_the_tree_is_the_folder(parts: list[str], n: int) -> None:
    paths = sorted(
        {f"{'/'.join(parts[: 1 + i % len(parts)])}/f{i:04}.txt" for i in range(n)}
        | {f"top{i}.txt" for i in range(n % 7)}
    )
    doc, read = _tree_of(paths)
    cursor = tree.PathCursor(doc, read, "test")
    expect = _listing_of(paths)
    prefixes = {""} | {p.rsplit("/", 1)[0] + "/" for p in paths if "/" in p}
    for prefix in prefixes:
        assert cursor.listing(prefix) == expect(prefix), prefix
    assert [e.path for e in cursor.entries_from("")] == paths


def test_a_centre_refuses_an_update_adding_a_name_that_differs_only_by_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub with a bug (here: its checks switched off) signs ``Index.html`` beside
    ``index.html``; the centre refuses the update and keeps serving what it had."""
    from caravane.packs.centre_store import CentreStore
    from caravane.packs.hub_repository import HubRepository
    from caravane.protocol import paths

    from .conftest import write_tree

    hub = HubRepository.init(tmp_path / "hub")
    v1 = {f"site/page{i:03}.html": f"page {i}" for i in range(300)}
    v1["site/index.html"] = "accueil"
    hub.publish("c", write_tree(tmp_path / "v1", v1))
    hub.build_pack("c", 0, 1, tmp_path / "01.pack")
    node = CentreStore.init(tmp_path / "node", trust_root=hub.path / "metadata/root.json")
    node.apply_pack(tmp_path / "01.pack")

    # the hub's bug: its scan and its tree writer no longer compare names by case
    monkeypatch.setattr(paths.ListingChecker, "listing", lambda self, *a: set())
    monkeypatch.setattr(paths.SortedPathChecker, "_name", staticmethod(lambda *a: None))
    monkeypatch.setattr(paths.SortedPathChecker, "finish", lambda self: None)
    src = tmp_path / "v2"
    write_tree(src, v1)
    (src / "site" / "Index.html").write_text("piege")
    try:
        hub.publish("c", src)
    except PathError:
        pytest.skip("this filesystem merges names by case")
    hub.build_pack("c", 1, 2, tmp_path / "12.pack")
    monkeypatch.undo()

    with pytest.raises(PathError, match="differ only by case"):
        node.apply_pack(tmp_path / "12.pack")
    node.checkout("c", tmp_path / "out")
    assert (tmp_path / "out" / "site" / "index.html").read_text() == "accueil"
    assert not (tmp_path / "out" / "site" / "Index.html").exists()
