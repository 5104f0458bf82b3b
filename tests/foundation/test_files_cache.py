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


def test_a_folder_read_around_its_subfolders_keeps_every_record(tmp_path: Path) -> None:
    """A folder's files come before and after its subfolders' in path order ("a.txt",
    "m/...", "z.txt"); its row must hold all of them, or the files after a subfolder
    would be read again at every publish."""
    repo = HubRepository.init(tmp_path / "repo")
    src = tmp_path / "src"
    for rel in ["a.txt", "m/b.txt", "m/n/c.txt", "m/o.txt", "p/d.txt", "z.txt", "m0.txt"]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(f"{rel} " * 40)
    _age(src)
    _publish(repo, src)
    assert _publish(repo, src) == (2, 0)
    (src / "m" / "o.txt").write_text("changed")
    _age(src / "m" / "o.txt")
    assert _publish(repo, src) == (3, len("changed"))
    assert _publish(repo, src) == (4, 0)
    repo.checkout("lib", tmp_path / "out", 4)
    assert read_tree(tmp_path / "out") == read_tree(src)


def test_files_deleted_and_added_in_a_folder_are_seen(tmp_path: Path) -> None:
    repo = HubRepository.init(tmp_path / "repo")
    src = _folder(tmp_path, 12)
    _publish(repo, src)
    (src / "d0" / "page-0.html").unlink()
    (src / "d0" / "page-new.html").write_text("nouvelle page")
    _age(src / "d0")
    res = repo.publish("lib", src)
    assert (res.files_added, res.files_removed, res.files_changed) == (1, 1, 0)
    assert _publish(repo, src)[1] == 0
    repo.checkout("lib", tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(src)


def test_collection_makes_the_next_publish_ask_for_the_objects(tmp_path: Path) -> None:
    """While the store has removed nothing since the cache's last pass, unchanged files are
    taken without asking the store; after a collection they are asked for once."""
    from caravane.packs.files_cache import FilesCache
    from caravane.packs.store import ObjectStore

    repo = HubRepository.init(tmp_path / "repo")
    src = _folder(tmp_path, 8)
    _publish(repo, src)
    asked: list[int] = []
    present = ObjectStore.present

    def counting(self: ObjectStore, shas: object) -> object:
        wanted = list(shas)  # type: ignore[call-overload]
        asked.append(len(wanted))
        return present(self, wanted)

    ObjectStore.present = counting  # type: ignore[method-assign]
    try:
        assert _publish(repo, src)[1] == 0
        assert asked == []  # nothing removed since: trusted
        repo.store.put_raw_many([(None, b"an object no release names")])
        before = repo.store.removals()
        time.sleep(0.05)  # older than the collection's cutoff, to the millisecond
        assert repo.collect_garbage(grace_seconds=0)[0] == 1
        assert repo.store.removals() == before + 1
        asked.clear()
        assert _publish(repo, src)[1] == 0
        assert asked and sum(asked) > 0  # asked once after the removal ...
        asked.clear()
        assert _publish(repo, src)[1] == 0
        assert asked == []  # ... then trusted again
    finally:
        ObjectStore.present = present  # type: ignore[method-assign]
    cache = FilesCache(repo.files_cache_path)
    assert cache.removals_seen() == repo.store.removals() > 0
    cache.close()


def test_a_repository_made_again_at_the_same_path_is_not_trusted_from_the_cache(
    tmp_path: Path,
) -> None:
    """The files cache lives beside the keys, outside the repository: a curator who deletes
    a repository and makes it again at the same path (starting over) keeps the old cache.
    Its records name chunks the new store never held; the publish reads the files again
    (it once failed, at every try, with "objects are not in the store")."""
    import shutil

    src = _folder(tmp_path)
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    first = HubRepository.init(tmp_path / "repo")
    _publish(first, src)
    cache_file = first.files_cache_path
    shutil.rmtree(tmp_path / "repo")
    shutil.rmtree(first.keys_dir)
    again = HubRepository.init(tmp_path / "repo")
    assert again.files_cache_path == cache_file and cache_file.is_file()
    assert _publish(again, src) == (1, total)  # every file read again
    out = tmp_path / "out"
    again.checkout("lib", out, 1)
    assert read_tree(out) == read_tree(src)
    assert _publish(again, src)[1] == 0  # then trusted, as usual


def test_a_cache_of_the_earlier_layout_is_used_then_replaced(tmp_path: Path) -> None:
    """A hub upgraded from a cache with one row per file does not read its library again."""
    import json
    import sqlite3

    repo = HubRepository.init(tmp_path / "repo")
    src = _folder(tmp_path, 10)
    _publish(repo, src)
    # rewrite the cache as the earlier layout held it: path, stat key, chunking, sha, chunks
    entries = {f.path: f for f in repo.manifest("lib").files}
    db = sqlite3.connect(repo.files_cache_path)
    db.execute("drop table dirs")
    db.execute(
        "create table files (path text primary key, size integer, mtime_ns integer, "
        "ctime_ns integer, ino integer, avg_chunk integer, sha256 text, chunks text)"
    )
    for p in src.rglob("*"):
        if p.is_file():
            st, e = p.stat(), entries[p.relative_to(src).as_posix()]
            db.execute(
                "insert into files values (?, ?, ?, ?, ?, ?, ?, ?)",
                (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                 repository_avg(), e.sha256, json.dumps(e.chunks)),
            )
    db.commit()
    db.close()
    assert _publish(repo, src) == (2, 0)
    assert repo.manifest("lib", 2).files == repo.manifest("lib", 1).files
    db = sqlite3.connect(repo.files_cache_path)
    tables = {r[0] for r in db.execute("select name from sqlite_master where type = 'table'")}
    db.close()
    assert "files" not in tables and "dirs" in tables
    assert _publish(repo, src) == (3, 0)


def repository_avg() -> int:
    from caravane.packs.chunker import DEFAULT_AVG

    return DEFAULT_AVG


def test_a_folder_published_under_another_name_is_read_again(tmp_path: Path) -> None:
    """Entries name their manifest path: the same folder published inside another one
    (its paths now start with the new prefix) cannot take its old entries."""
    repo = HubRepository.init(tmp_path / "repo")
    outer = tmp_path / "outer"
    src = _folder(outer, 6)
    _publish(repo, src)
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    version, read = _publish(repo, outer)
    assert (version, read) == (2, total)
    assert all(f.path.startswith("src/") for f in repo.manifest("lib", 2).files)


def test_a_damaged_folder_row_means_its_files_are_read_again(tmp_path: Path) -> None:
    """The cache is local state, and a disk can damage it: a row that does not decode is
    as good as none (those files are read again), never an error or a wrong release."""
    import sqlite3

    repo = HubRepository.init(tmp_path / "repo")
    src = _folder(tmp_path, 12)
    _publish(repo, src)
    db = sqlite3.connect(repo.files_cache_path)
    (folder, data), *_ = db.execute("select dir, data from dirs order by dir").fetchall()
    db.execute("update dirs set data = ? where dir = ?", (data[:-7] + b"garbage", folder))
    db.commit()
    db.close()
    size = sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
    assert _publish(repo, src) == (2, size)
    assert _publish(repo, src) == (3, 0)  # the row was written again
    repo.checkout("lib", tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(src)


def test_folder_rows_are_written_once_they_pass_the_byte_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan holds at most COMMIT_BYTES of finished folder rows (a row of 1,000 pages is
    some 76 KB, and 200 of them were held before each write); rows written a few at a
    time are all kept, and the republish reads nothing."""
    from caravane.packs import files_cache

    monkeypatch.setattr(files_cache, "COMMIT_BYTES", 1)
    held: list[int] = []
    write = files_cache.FilesCache._write

    def spy(self: files_cache.FilesCache) -> None:
        held.append(len(self._rows))
        write(self)

    monkeypatch.setattr(files_cache.FilesCache, "_write", spy)
    repo = HubRepository.init(tmp_path / "repo")
    src = _folder(tmp_path)
    _publish(repo, src)
    # each folder's row went in its own transaction: none waited for the others
    assert sum(held) >= 4 and set(held) - {0} == {1}
    assert _publish(repo, src)[1] == 0
