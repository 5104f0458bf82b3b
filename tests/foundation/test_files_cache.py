"""Republishing reads only the files that changed (the files cache), and stays exact."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravane.packs.files_cache import RACY_SECONDS
from caravane.packs.hub_repository import HubRepository

from .conftest import read_tree


def _age(path: Path) -> None:
    """Give a file (or every file of a folder) an mtime past the racy window, as files
    edited days ago have. (Setting it changes ctime: only files just written are aged.)"""
    past = time.time() - 10 * RACY_SECONDS
    for p in [path] if path.is_file() else path.rglob("*"):
        if p.is_file():
            os.utime(p, (past, past))


def _publish(repo: HubRepository, src: Path) -> tuple[int, int]:
    read: list[int] = []
    res = repo.publish("lib", src, progress=read.append)
    return res.version, sum(read)


def _folder(tmp_path: Path, n: int = 40) -> Path:
    src = tmp_path / "src"
    for i in range(n):
        (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 4}" / f"page-{i}.html").write_text(f"page {i} " * (50 + i))
    _age(src)
    return src


def test_a_one_file_change_reads_only_that_file(tmp_path: Path) -> None:
    repo = HubRepository.init(tmp_path / "repo")
    src = _folder(tmp_path)
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert _publish(repo, src) == (1, total)
    changed = src / "d1" / "page-5.html"
    changed.write_text("une page réécrite cette semaine\n")
    _age(changed)
    version, read = _publish(repo, src)
    assert (version, read) == (2, changed.stat().st_size)  # the progress bar counts one file
    out = tmp_path / "out"
    repo.checkout("lib", out, 2)
    assert read_tree(out) == read_tree(src)
    # nothing changed: nothing read, and the release is the same files
    assert _publish(repo, src)[1] == 0


def test_same_size_same_mtime_other_content_is_read_again(tmp_path: Path) -> None:
    """A file rewritten and given its old mtime back still changes ctime: it is read."""
    repo = HubRepository.init(tmp_path / "repo")
    src = _folder(tmp_path, 8)
    _publish(repo, src)
    f = src / "d0" / "page-0.html"
    st = f.stat()
    f.write_bytes(b"X" * st.st_size)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    _, read = _publish(repo, src)
    assert read == st.st_size
    out = tmp_path / "out"
    repo.checkout("lib", out, 2)
    assert (out / "d0" / "page-0.html").read_bytes() == b"X" * st.st_size


def test_objects_collected_since_are_read_again(tmp_path: Path) -> None:
    """The cache is trusted only while every chunk it names is still in the store."""
    repo = HubRepository.init(tmp_path / "repo")
    src = _folder(tmp_path, 6)
    _publish(repo, src)
    for sha in repo.manifest(repo.channels()[0]).chunk_sizes():
        repo.store.remove(sha)  # the chunks, not the pieces of the release's file list
    _, read = _publish(repo, src)
    assert read == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert repo.verify().ok


def test_a_file_edited_just_now_is_not_trusted_from_the_cache(tmp_path: Path) -> None:
    """Racily clean: a file modified within the racy window is never recorded."""
    repo = HubRepository.init(tmp_path / "repo")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("one")
    _publish(repo, src)
    _, read = _publish(repo, src)
    assert read == 3  # just written: read again, not taken from the cache


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=st.lists(st.tuples(st.integers(0, 9), st.binary(max_size=3000)), min_size=1, max_size=6)
)
def test_publish_with_the_cache_then_checkout_is_byte_exact(
    tmp_path_factory: object, edits: list[tuple[int, bytes]]
) -> None:
    tmp = tmp_path_factory.mktemp("cache")  # type: ignore[attr-defined]
    repo = HubRepository.init(tmp / "repo")
    src = tmp / "src"
    src.mkdir()
    for i in range(10):
        (src / f"f{i}").write_bytes(bytes([i]) * (100 * i))
    _age(src)
    _publish(repo, src)
    for version, (i, data) in enumerate(edits, start=2):
        (src / f"f{i}").write_bytes(data)
        _age(src / f"f{i}")
        repo.publish("lib", src)
        out = tmp / f"out{version}"
        repo.checkout("lib", out, version)
        assert read_tree(out) == read_tree(src)


def test_a_republish_named_from_another_folder_still_reads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The curator runs the first publish with an absolute path and the next one from
    inside the parent folder with a relative one: unchanged files are not read again."""
    repo = HubRepository.init(tmp_path / "repo")
    src = _folder(tmp_path)
    _publish(repo, src)
    monkeypatch.chdir(tmp_path)
    version, read = _publish(repo, Path("src"))
    assert (version, read) == (2, 0)


def test_lookups_in_bulk_answer_as_one_by_one(tmp_path: Path) -> None:
    """A batch of files is read from the cache as one range of paths; files of other
    folders in that range, or a range far wider than the batch, change no answer."""
    from caravane.packs.files_cache import FilesCache
    from caravane.protocol.metadata import FileEntry

    files = []
    for i in range(300):
        p = tmp_path / "src" / f"f{i:03d}"
        p.parent.mkdir(exist_ok=True)
        p.write_text(str(i))
        files.append(p)
    _age(tmp_path / "src")
    cache = FilesCache(tmp_path / "cache.sqlite")
    for i, p in enumerate(files):
        if i % 3:  # a third never recorded: they answer None
            sha = f"{i:064x}"
            cache.record(p, p.stat(), 4096, FileEntry("", p.stat().st_size, 0o644, sha, [(sha, 1)]))
    cache.commit()
    one_by_one = [cache.lookup(p, p.stat(), 4096) for p in files]
    assert sum(e is not None for e in one_by_one) == 200
    assert cache.lookup_many([(p, p.stat(), 4096) for p in files]) == one_by_one
    ends = [files[0], files[1], files[-1]]  # a range of 300 rows for 3 paths
    assert cache.lookup_many([(p, p.stat(), 4096) for p in ends]) == [
        one_by_one[0],
        one_by_one[1],
        one_by_one[-1],
    ]
    assert cache.lookup_many([(p, p.stat(), 8192) for p in files]) == [None] * 300
