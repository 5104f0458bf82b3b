"""``repo publish`` streams: files scanned in manifest order, pieces written before the
lock, and under the lock every object that differs from the last release checked."""

from __future__ import annotations

import hashlib
import tempfile
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caravane.packs import hub_repository
from caravane.packs.chunker import DEFAULT_AVG
from caravane.packs.errors import StoreError
from caravane.packs.hub_repository import HubRepository
from caravane.packs.ingest import ingest_files, iter_source, scan_source, scan_totals
from caravane.packs.manifests import WrittenTree
from caravane.protocol.errors import FormatError, PathError

from .conftest import read_tree, write_tree

# names chosen to sort differently as names and as paths: "-" and "." come before "/"
NAMES = ["a", "a-b", "a.b", "ab", "b", "Z", "0", "e\u0301t\u00e9", "\u00e9a", "a~"]


@st.composite
def trees(draw: st.DrawFn) -> list[str]:
    paths = draw(
        st.lists(
            st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join),
            min_size=1,
            max_size=30,
            unique=True,
        )
    )
    return _files_only(paths)


def _files_only(paths: list[str]) -> list[str]:
    """A name is a file or a folder on disk, not both: the first one drawn wins."""
    files: list[str] = []
    for p in paths:
        if any(q.startswith(p + "/") or p.startswith(q + "/") for q in files):
            continue
        files.append(p)
    return files


@settings(max_examples=40, deadline=None)
@given(trees())
def test_the_scan_yields_files_in_manifest_path_order(paths: list[str]) -> None:
    """The order a whole sort of the NFC paths' UTF-8 would give, without that sort."""
    with tempfile.TemporaryDirectory() as tmp:
        src = write_tree(Path(tmp), {p: p for p in paths})
        got = [f.rel for f in iter_source(src)]
    expected = sorted((unicodedata.normalize("NFC", p) for p in paths), key=str.encode)
    assert got == expected


CASE_NAMES = ["a", "A", "b", "B", "b.txt", "B.TXT", "\u00e9", "\u00c9", "e\u0301", "c d"]


@st.composite
def case_trees(draw: st.DrawFn) -> list[str]:
    """Paths that a case-sensitive disk holds and a FAT32 drive may not: names that
    differ only by case, a file beside a folder of another case, two spellings of é."""
    paths = draw(
        st.lists(
            st.lists(st.sampled_from(CASE_NAMES), min_size=1, max_size=3).map("/".join),
            min_size=1,
            max_size=20,
            unique=True,
        )
    )
    return _files_only(paths)


@settings(max_examples=150, deadline=None)
@given(case_trees())
def test_the_scan_refuses_exactly_what_check_paths_refuses(paths: list[str]) -> None:
    """The scan checks a listing at a time; the whole list checked at once is the rule."""
    from caravane.protocol.paths import check_paths

    with tempfile.TemporaryDirectory() as tmp:
        try:
            src = write_tree(Path(tmp), {p: p for p in paths})
        except OSError:
            return  # a file system that folds names itself
        expected = sorted((unicodedata.normalize("NFC", p) for p in paths), key=str.encode)
        # a name spelled two ways in one folder (é and e + U+0301) is two entries on disk
        # for one manifest path: the scan refuses it, where a list of paths cannot tell
        spelled: dict[str, set[str]] = {}
        for p in paths:
            parts = p.split("/")
            for i in range(1, len(parts) + 1):
                raw = "/".join(parts[:i])
                spelled.setdefault(unicodedata.normalize("NFC", raw), set()).add(raw)
        twice = any(len(s) > 1 for s in spelled.values())
        try:
            check_paths(expected)
            whole: PathError | None = PathError("twice") if twice else None
        except PathError as e:
            whole = e
        try:
            got = [f.rel for f in iter_source(src)]
            scan: PathError | None = None
        except PathError as e:
            scan = e
    assert (whole is None) == (scan is None), (paths, whole, scan)
    if scan is None:
        assert got == expected


def test_a_book_is_scanned_where_its_stream_path_sorts(tmp_path: Path) -> None:
    """A ZIM book is carried as ``name.zim.crv``, which sorts after ``name.zim-x``."""
    src = write_tree(tmp_path / "src", {"x.zim": "", "x.zim-a.txt": "a", "x.zim0": "0"})
    assert [f.rel for f in iter_source(src)] == ["x.zim-a.txt", "x.zim", "x.zim0"]


def test_a_bad_name_is_refused_by_the_first_pass_before_any_file_is_read(
    tmp_path: Path,
) -> None:
    src = write_tree(tmp_path / "src", {"a/Notes.txt": "1", "a/notes.txt": "2"})
    with pytest.raises(PathError):
        scan_totals(src)
    (src / "a" / "notes.txt").unlink()
    (src / "b").symlink_to(src / "a")
    with pytest.raises(PathError, match="symbolic links"):
        scan_totals(src)


def test_the_summary_counts_every_change_and_names_the_first_hundred(tmp_path: Path) -> None:
    repo = HubRepository.init(tmp_path / "repo")
    src = write_tree(tmp_path / "src", {f"p{i:03d}.txt": f"page {i}" for i in range(130)})
    res = repo.publish("lib", src)
    assert (res.files_added, res.files_changed, res.files_removed) == (130, 0, 0)
    assert res.new_files == [f"p{i:03d}.txt" for i in range(100)]
    (src / "p005.txt").write_text("rewritten")
    (src / "p006.txt").unlink()
    (src / "p999.txt").write_text("new")
    res = repo.publish("lib", src)
    assert (res.files, res.files_added, res.files_changed, res.files_removed) == (130, 1, 1, 1)
    assert (res.new_files, res.changed_files, res.removed_files) == (
        ["p999.txt"],
        ["p005.txt"],
        ["p006.txt"],
    )
    out = tmp_path / "out"
    repo.checkout("lib", out, 2)
    assert read_tree(out) == read_tree(src)


def _collect_at_lock(
    monkeypatch: pytest.MonkeyPatch, repo: HubRepository, pick: Any
) -> dict[str, WrittenTree]:
    """Remove what ``pick(tree)`` names as the publish takes the lock (a collection that
    ran between the pieces being written and the commit)."""
    seen: dict[str, WrittenTree] = {}
    write = hub_repository.write_tree

    def recording(*args: Any, **kwargs: Any) -> WrittenTree:
        seen["tree"] = write(*args, **kwargs)
        return seen["tree"]

    lock = repo.lock

    @contextmanager
    def collecting() -> Iterator[None]:
        with lock():
            for sha in pick(seen["tree"]):
                repo.store.remove(sha)
            yield

    monkeypatch.setattr(hub_repository, "write_tree", recording)
    monkeypatch.setattr(repo, "lock", collecting)
    return seen


def test_a_piece_collected_before_the_commit_is_refused_and_nothing_is_signed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = HubRepository.init(tmp_path / "repo")
    src = write_tree(tmp_path / "src", {f"f{i}.txt": f"file {i}" for i in range(20)})
    with monkeypatch.context() as m:
        _collect_at_lock(m, repo, lambda tree: list(tree.objects)[:1])
        with pytest.raises(StoreError, match="publish again"):
            repo.publish("lib", src)
    assert repo.snapshot().channel_or_none("lib") is None
    assert repo.publish("lib", src).version == 1  # the next publish writes the piece again
    assert repo.verify().ok


def test_a_changed_files_chunk_collected_before_the_commit_keeps_the_last_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = HubRepository.init(tmp_path / "repo")
    src = write_tree(tmp_path / "src", {f"f{i}.txt": f"file {i}" for i in range(20)})
    repo.publish("lib", src)
    (src / "f3.txt").write_text("a new text for file three")
    sha = hashlib.sha256(b"a new text for file three").hexdigest()
    with monkeypatch.context() as m:
        _collect_at_lock(m, repo, lambda tree: [sha])
        with pytest.raises(StoreError, match="1 objects are not in the store"):
            repo.publish("lib", src)
    assert repo.snapshot().channel("lib").version == 1
    assert repo.verify().ok
    assert repo.publish("lib", src).changed_files == ["f3.txt"]


def test_commit_release_takes_entries_already_in_order_as_a_stream(tmp_path: Path) -> None:
    """The hub's commit path, fed a generator (never a list) of ingested entries."""
    repo = HubRepository.init(tmp_path / "repo")
    src = write_tree(tmp_path / "src", {"b/x.txt": "x", "a.txt": "a", "b-c.txt": "bc"})
    entries, *_ = ingest_files(repo.store, scan_source(src), DEFAULT_AVG)
    res = repo.commit_release("lib", (e for e in entries), ordered=True)
    assert (res.version, res.files_added) == (1, 3)
    assert res.new_files == ["a.txt", "b-c.txt", "b/x.txt"]
    out = tmp_path / "out"
    repo.checkout("lib", out, 1)
    assert read_tree(out) == read_tree(src)
    with pytest.raises(FormatError, match="out of order"):
        repo.commit_release("lib", reversed(entries), ordered=True)
    assert repo.snapshot().channel("lib").version == 1
