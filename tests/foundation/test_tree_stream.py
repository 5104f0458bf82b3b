"""Format 2 without holding the file list: the streaming writer, reader and tree diff.

A million-file release must be published, read and compared a piece at a time. These tests
hold the streaming forms to what the whole-list forms do: the same pieces, the same files,
the same refusals, and a diff that equals comparing the two lists while reading only the
pieces on the changed paths.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caravane.protocol import tree
from caravane.protocol.errors import FormatError, PathError, VerificationError
from caravane.protocol.metadata import FileEntry, Manifest
from caravane.protocol.paths import SortedPathChecker, check_paths
from caravane.protocol.release import Release

from .conftest import RepoSim


def _entry(path: str, seed: int = 0, chunks: int = 1) -> FileEntry:
    sha = hashlib.sha256(f"{path}:{seed}".encode()).hexdigest()
    parts = [(hashlib.sha256(f"{sha}{i}".encode()).hexdigest(), 10) for i in range(chunks)]
    if chunks == 1:
        parts = [(sha, 10)]
    return FileEntry(path, 10 * chunks, 0o644, sha, parts)


def _encode(files: list[FileEntry]) -> tuple[tree.TreeDoc, dict[str, bytes]]:
    m = Manifest("lecons", 1, "2026-12-01T00:00:00Z", files, "")
    enc = tree.encode_manifest(m)
    return tree.parse_doc(enc.doc), {ref.sha256: data for ref, data in enc.pieces}


def _reader(pieces: dict[str, bytes], log: list[str] | None = None) -> tree.PieceReader:
    def read(refs: list[tree.PieceRef]) -> list[bytes]:
        if log is not None:
            log.extend(r.sha256 for r in refs)
        return [pieces[r.sha256] for r in refs]

    return read


def _naive(old: list[FileEntry], new: list[FileEntry]) -> list[tree.Change]:
    a, b = {f.path: f for f in old}, {f.path: f for f in new}
    out: list[tree.Change] = []
    for path in sorted(set(a) | set(b)):
        x, y = a.get(path), b.get(path)
        if x != y:
            out.append((x, y))
    return out


def test_the_writer_streams_the_same_pieces_as_the_whole_list() -> None:
    files = [
        _entry(f"d{i // 700:03d}/p{i:06d}", chunks=1 + (i % 97 == 0) * 300) for i in range(30_000)
    ]
    root, pieces = tree.build_tree(files)
    seen: list[tuple[tree.PieceRef, bytes]] = []
    w = tree.TreeWriter(lambda ref, data: seen.append((ref, data)))
    for f in files:  # one at a time, as a scan produces them
        w.add(f)
    assert w.finish() == root
    assert sorted(seen, key=lambda p: p[0].sha256) == sorted(pieces, key=lambda p: p[0].sha256)
    assert w.objects == {r.sha256: r.length for r, _ in pieces}
    assert (w.files, w.size) == (len(files), sum(f.size for f in files))


def test_runs_of_encoded_entries_give_the_same_pieces_as_one_at_a_time() -> None:
    """A republish hands unchanged files to the writer a folder's run at a time
    (``add_run``); the leaves and the root must be those of the same entries added one
    by one, including leaves closed by their size (a file of many chunks)."""
    files = [
        _entry(f"d{i // 700:03d}/p{i:06d}", chunks=1 + (i % 97 == 0) * 900) for i in range(12_000)
    ]
    root, pieces = tree.build_tree(files)
    seen: list[tuple[tree.PieceRef, bytes]] = []
    w = tree.TreeWriter(lambda ref, data: seen.append((ref, data)), check=False)
    coded = [tree.encode_entry(f) for f in files]
    i, step = 0, 1
    while i < len(coded):  # runs of 1, 2, 3, ... entries, with single adds between them
        w.add_run(coded[i : i + step])
        i += step
        if i < len(coded):
            w.add(files[i])
            i += 1
        step = step % 1500 + 7
    assert w.finish() == root
    assert sorted(seen, key=lambda p: p[0].sha256) == sorted(pieces, key=lambda p: p[0].sha256)
    assert (w.files, w.size) == (len(files), sum(f.size for f in files))
    w = tree.TreeWriter(lambda ref, data: None, check=False)
    w.add_run(coded[5:9])
    with pytest.raises(FormatError, match="out of order"):
        w.add_run(coded[:3])


def test_the_writer_refuses_paths_out_of_order_or_colliding() -> None:
    w = tree.TreeWriter(lambda ref, data: None)
    w.add(_entry("b"))
    with pytest.raises(PathError, match="out of order"):
        w.add(_entry("a"))
    w = tree.TreeWriter(lambda ref, data: None)
    w.add(_entry("Lecons/A.TXT"))
    with pytest.raises(PathError, match="differ only by case"):
        w.add(_entry("Lecons/a.txt"))
    # folders that differ only by case merge on a FAT32 drive: their files must not collide
    w = tree.TreeWriter(lambda ref, data: None)
    w.add(_entry("Lecons/a.txt"))
    w.add(_entry("Lecons/b.txt"))
    w.add(_entry("lecons/b.txt"))
    with pytest.raises(PathError, match="differ only by case"):
        w.finish()


def test_iter_files_gives_back_every_file_a_leaf_at_a_time() -> None:
    files = [_entry(f"d{i // 1000:03d}/page-{i:06d}.html") for i in range(20_000)]
    doc, pieces = _encode(files)
    asked: list[int] = []

    def read(refs: list[tree.PieceRef]) -> list[bytes]:
        asked.append(len(refs))
        return [pieces[r.sha256] for r in refs]

    assert list(tree.iter_files(doc, read)) == files
    assert max(asked) <= tree.LEAF_BATCH  # never a whole level at once


def test_the_quick_walks_give_the_files_of_the_full_walk_and_refuse_a_damaged_piece() -> None:
    """iter_paths (a checkout's folders) and iter_own_files (a publish's commit) skip the
    entry checks, never the pieces' hashes."""
    files = [_entry(f"d{i // 300:02d}/p-{i:05d}", chunks=1 + i % 3) for i in range(3_000)]
    doc, pieces = _encode(files)
    assert list(tree.iter_paths(doc, _reader(pieces))) == [f.path for f in files]
    assert list(tree.iter_own_files(doc, _reader(pieces))) == files
    leaf = next(s for s, d in pieces.items() if b"manifest-leaf" in d)
    bad = dict(pieces)
    bad[leaf] = pieces[leaf].replace(b"p-0", b"p-9", 1)
    for walk in (tree.iter_paths, tree.iter_own_files):
        with pytest.raises(VerificationError, match="SHA-256"):
            list(walk(doc, _reader(bad)))


def test_iter_files_refuses_a_damaged_piece_and_a_count_that_does_not_add_up() -> None:
    files = [_entry(f"p{i:05d}") for i in range(2_000)]
    doc, pieces = _encode(files)
    leaf = next(s for s, d in pieces.items() if b"manifest-leaf" in d)
    bad = dict(pieces)
    bad[leaf] = pieces[leaf].replace(b"p0", b"q0", 1)
    with pytest.raises(VerificationError, match="SHA-256"):
        list(tree.iter_files(doc, _reader(bad)))
    lying = tree.TreeDoc(doc.channel, 1, doc.created, "", doc.files, doc.size + 1, doc.root)
    with pytest.raises(VerificationError):
        list(tree.iter_files(lying, _reader(pieces)))


_names = st.sampled_from(["a", "A", "b", "b.txt", "B.TXT", "c-d", "c", "é", "É", "x y"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_names, min_size=1, max_size=4).map("/".join), max_size=25))
def test_the_sorted_checker_refuses_exactly_what_check_paths_refuses(paths: list[str]) -> None:
    paths = sorted(set(paths))
    try:
        check_paths(paths)
        whole = None
    except PathError as e:
        whole = e
    for held in (SortedPathChecker.HELD, 2):  # 2: the hashes go through the temporary file
        checker = SortedPathChecker()
        checker.HELD = held
        try:
            for p in paths:
                checker.add(p)
            checker.finish()
            streamed = None
        except PathError as e:
            streamed = e
        assert (whole is None) == (streamed is None), (paths, held, whole, streamed)


_edit = st.tuples(st.sampled_from(["add", "remove", "change"]), st.integers(0, 5_000))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 3_000), st.lists(_edit, max_size=30))
def test_the_tree_diff_equals_comparing_the_two_lists(n: int, edits: list[tuple[str, int]]) -> None:
    old = {f"d{i % 7}/f{i:05d}": _entry(f"d{i % 7}/f{i:05d}") for i in range(0, 2 * n, 2)}
    new = dict(old)
    for op, i in edits:
        path = f"d{i % 7}/f{i:05d}"
        if op == "add":
            new[path] = _entry(path, 3)
        elif op == "remove":
            new.pop(path, None)
        elif path in new:
            new[path] = _entry(path, new[path].size + 1)
    a = [old[p] for p in sorted(old)]
    b = [new[p] for p in sorted(new)]
    doc_a, pieces_a = _encode(a)
    doc_b, pieces_b = _encode(b)
    read = _reader({**pieces_a, **pieces_b})
    assert list(tree.diff(doc_a if a else None, doc_b, read)) == _naive(a, b)
    assert list(tree.diff(doc_b, doc_a, read)) == _naive(b, a)


def test_a_one_file_diff_reads_only_the_pieces_on_its_path_at_a_hundred_thousand_files() -> None:
    paths = [f"d{i // 1000:03d}/page-{i:06d}.html" for i in range(100_000)]
    a = [_entry(p) for p in paths]
    b = list(a)
    b[54_321] = _entry(paths[54_321], 1)
    doc_a, pieces_a = _encode(a)
    doc_b, pieces_b = _encode(b)
    log: list[str] = []
    d = tree.TreeDiff(doc_a, doc_b, _reader({**pieces_a, **pieces_b}, log))
    assert list(d) == [(a[54_321], b[54_321])]
    assert doc_b.root is not None
    # the root, one node per level and the leaf, in each tree (a neighbour leaf at worst)
    assert d.pieces_read <= 2 * (doc_b.root.level + 2), d.pieces_read
    assert sum(len(pieces_a.get(s) or pieces_b[s]) for s in log) < 256 * 1024


def test_a_release_is_walked_and_compared_from_the_store_in_either_format(sim: RepoSim) -> None:
    files: dict[str, bytes | str] = {f"pages/{i:04d}.html": f"<p>page {i}</p>" for i in range(900)}
    v1 = sim.publish(files)
    files["pages/0450.html"] = "<p>corrigée</p>"
    files["pages/new.html"] = "<p>nouvelle</p>"
    del files["pages/0003.html"]
    v2 = sim.publish(files)
    snap = sim.hub.snapshot()
    r1, r2 = snap.release("maths", v1), snap.release("maths", v2)
    m1, m2 = sim.hub.manifest("maths", v1), sim.hub.manifest("maths", v2)
    assert (r2.files, r2.size) == (len(m2.files), m2.total_size)
    assert list(r2.iter_files()) == m2.files
    expected = _naive(m1.files, m2.files)
    assert [(a and a.path, b and b.path) for a, b in expected] == [
        ("pages/0003.html", None),
        ("pages/0450.html", "pages/0450.html"),
        (None, "pages/new.html"),
    ]
    assert list(r2.changes_from(r1)) == expected
    # a format 1 release on one side: the two lists are merged instead
    assert list(r2.changes_from(Release.of_manifest(replace(m1, spec_version=1)))) == expected
    assert set(m2.tree_objects) == {ref.sha256 for ref in r2.piece_refs()}


def test_a_release_whose_document_lies_about_its_counts_is_refused(sim: RepoSim) -> None:
    v1 = sim.publish({"a.txt": "a", "b.txt": "b"})
    snap = sim.hub.snapshot()
    ref = snap.ref("maths", v1)
    data = sim.hub.manifest_bytes("maths", v1)
    with pytest.raises(VerificationError):
        Release.open(data, replace(ref, files=3), "maths", sim.hub.pieces())
