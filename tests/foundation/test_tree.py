"""Manifest format 2: a release's file list as a tree of pieces (protocol/tree.py).

Properties: encoding then decoding gives the same files back; the tree is a function of the
file list; one file changed replaces one leaf and one node per level, whatever the channel's
size. Attacks: a damaged, missing, forged or reordered piece is refused with a message that
names it, and a pack cannot make a centre keep a piece the signed release does not name.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caravane.packs import delta
from caravane.packs.errors import PackError
from caravane.packs.packfile import MAGIC, encode_entry, read_entries
from caravane.protocol import tree
from caravane.protocol.canonical import canonical_bytes
from caravane.protocol.errors import FormatError, VerificationError
from caravane.protocol.metadata import FileEntry, Manifest

from .conftest import RepoSim, read_tree

RESERVED_PATH = re.compile(r"(?:^|/)(?:con|prn|aux|nul|com[1-9]|lpt[1-9])(?:[./]|$)")


def _entry(path: str, seed: int = 0) -> FileEntry:
    sha = hashlib.sha256(f"{path}:{seed}".encode()).hexdigest()
    return FileEntry(path, 10 + seed, 0o644, sha, [(sha, 10 + seed)])


def _manifest(paths: list[str], version: int = 1, seed: dict[str, int] | None = None) -> Manifest:
    seed = seed or {}
    files = [_entry(p, seed.get(p, 0)) for p in sorted(set(paths))]
    return Manifest("lecons", version, "2026-12-01T00:00:00Z", files, "")


def _reader(pieces: dict[str, bytes]) -> tree.PieceReader:
    return lambda refs: [pieces[r.sha256] for r in refs]


def _encode(m: Manifest) -> tuple[bytes, dict[str, bytes]]:
    enc = tree.encode_manifest(m)
    return enc.doc, {ref.sha256: data for ref, data in enc.pieces}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.from_regex(r"[a-z]{1,6}(/[a-z0-9]{1,8}){0,2}\.txt", fullmatch=True), max_size=400)
)
def test_decode_gives_back_the_files_encoded(paths: list[str]) -> None:
    # a file and a folder of one name cannot both exist: keep the paths that are only files;
    # device names Windows reserves (con.txt, aux/...) are refused as paths
    paths = [p for p in paths if not RESERVED_PATH.search(p)]
    m = _manifest(paths)
    folders = {p.rsplit("/", 1)[0] for p in paths if "/" in p}
    m = Manifest(m.channel, m.version, m.created, [f for f in m.files if f.path not in folders])
    doc, pieces = _encode(m)
    back = tree.decode_manifest(doc, _reader(pieces))
    assert back.files == m.files
    assert set(back.tree_objects) == set(pieces)
    assert tree.encode_manifest(back).doc == doc  # one tree for one file list


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=300, unique=True),
    st.integers(1, 4),
)
def test_a_leaf_written_from_encoded_entries_is_the_canonical_leaf(
    names: list[str], chunks: int
) -> None:
    """Leaves are joined from each entry's bytes (what the files cache keeps): they must be
    byte for byte the canonical encoding of the leaf document, or a republish from the
    cache would sign a different tree than the same files read again."""
    entries = []
    for name in sorted(set(names), key=str.encode):
        sha = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
        entries.append(FileEntry(name, 7 * chunks, 0o755, sha, [(sha, 7)] * chunks))
    pieces: list[tuple[tree.PieceRef, bytes]] = []
    writer = tree.TreeWriter(lambda ref, data: pieces.append((ref, data)), check=False)
    for i, e in enumerate(entries):
        writer.add(tree.encode_entry(e) if i % 2 else e)
    writer.finish()
    leaves = [data for ref, data in pieces if ref.level == 0]
    assert b"".join(leaves).count(b'"path"') == len(entries)
    for data in leaves:
        doc = __import__("json").loads(data)
        assert canonical_bytes(doc) == data
        assert data == tree._leaf_bytes(doc["files"])


def test_a_one_file_change_replaces_one_piece_per_level_at_a_hundred_thousand_files() -> None:
    paths = [f"d{i // 1000:03d}/page-{i:06d}.html" for i in range(100_000)]
    doc1, pieces1 = _encode(_manifest(paths))
    doc2, pieces2 = _encode(_manifest(paths, version=2, seed={paths[54_321]: 1}))
    levels = tree.parse_doc(doc2).root
    assert levels is not None
    new = set(pieces2) - set(pieces1)
    assert len(new) == levels.level + 1, (len(new), levels.level)
    assert sum(len(pieces2[s]) for s in new) < 64 * 1024  # what a centre lacks, before delta
    assert len(doc2) < 400  # the signed document itself


def test_inserting_a_file_changes_only_its_neighbourhood() -> None:
    paths = [f"p/{i:05d}" for i in range(0, 20_000, 2)]
    _, before = _encode(_manifest(paths))
    _, after = _encode(_manifest([*paths, "p/10001"]))
    assert len(set(after) - set(before)) <= 2 * (1 + 2)  # a leaf or two, and their parents


def test_a_file_too_big_for_one_piece_is_refused_at_publish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tree, "MAX_PIECE_BYTES", 4096)  # instead of a 56 GB file
    sha = "ab" * 32
    huge = FileEntry("film.mkv", 100 * 1000, 0o644, sha, [(sha, 1000)] * 100)
    with pytest.raises(FormatError, match="split the file"):
        tree.encode_manifest(Manifest("lecons", 1, "2026-12-01T00:00:00Z", [huge]))


def test_no_ceiling_on_files_from_the_document() -> None:
    doc, pieces = _encode(_manifest([f"f{i:07d}" for i in range(50_000)]))
    assert max(len(p) for p in pieces.values()) < tree.LEAF_MAX_BYTES + 4096
    assert tree.parse_doc(doc).files == 50_000


# --------------------------------------------------------------------------- attacks


def _small() -> tuple[bytes, dict[str, bytes]]:
    return _encode(_manifest([f"a/{i:04d}.txt" for i in range(2_000)]))


def test_a_damaged_piece_is_refused() -> None:
    doc, pieces = _small()
    sha = sorted(pieces)[0]
    data = bytearray(pieces[sha])
    data[len(data) // 2] ^= 1
    pieces[sha] = bytes(data)
    with pytest.raises(VerificationError, match="does not match the one its parent names"):
        tree.decode_manifest(doc, _reader(pieces))


def test_a_piece_of_another_length_is_refused() -> None:
    doc, pieces = _small()
    sha = sorted(pieces)[0]
    pieces[sha] += b" "
    with pytest.raises(VerificationError, match="its parent says"):
        tree.decode_manifest(doc, _reader(pieces))


def test_a_document_that_names_more_files_than_its_tree_holds_is_refused() -> None:
    doc, pieces = _small()
    d = tree.parse_doc(doc)
    forged = doc.replace(b'"files":%d' % d.files, b'"files":%d' % (d.files + 1))
    with pytest.raises(VerificationError, match="add up"):
        tree.decode_manifest(forged, _reader(pieces))


def _doc(files: int, size: int, root: dict[str, object]) -> bytes:
    """A format 2 document naming ``root`` as its tree, as a forger would write it."""
    return canonical_bytes(
        {
            "_type": "manifest",
            "spec_version": 2,
            "channel": "lecons",
            "version": 1,
            "created": "2026-12-01T00:00:00Z",
            "notes": "",
            "files": files,
            "size": size,
            "tree": root,
        }
    )


def test_a_tree_deeper_than_allowed_is_refused() -> None:
    doc = _doc(1, 1, {"sha256": "0" * 64, "length": 10, "level": 99})
    with pytest.raises(FormatError, match="level 99"):
        tree.parse_doc(doc)


def test_leaves_out_of_order_are_refused() -> None:
    # two leaves whose files overlap: a forger reordering entries across pieces
    a = [_entry(f"b/{i:02d}") for i in range(10)]
    b = [_entry(f"a/{i:02d}") for i in range(10)]
    leaves = [tree._leaf_bytes([e.to_dict() for e in part]) for part in (a, b)]
    refs = [
        tree._ref(part[0].path, data, len(part), sum(e.size for e in part), 0)
        for part, data in zip((a, b), leaves, strict=True)
    ]
    node = tree._node_bytes(1, refs)
    pieces = {r.sha256: d for r, d in zip(refs, leaves, strict=True)}
    root = tree._ref("", node, 20, sum(r.size for r in refs), 1)
    pieces[root.sha256] = node
    doc = _doc(20, root.size, {"sha256": root.sha256, "length": root.length, "level": 1})
    with pytest.raises(FormatError, match="out of order"):
        tree.decode_manifest(doc, _reader(pieces))


def _two_leaves(a: list[FileEntry], b: list[FileEntry], claim_a: int | None = None):
    """A node over two leaves, the first one's file count claimed as ``claim_a``."""
    leaves = [tree._leaf_bytes([e.to_dict() for e in part]) for part in (a, b)]
    refs = [
        tree._ref(part[0].path, data, len(part), sum(e.size for e in part), 0)
        for part, data in zip((a, b), leaves, strict=True)
    ]
    if claim_a is not None:
        refs[0] = tree.PieceRef(
            refs[0].first, refs[0].sha256, refs[0].length, claim_a, refs[0].size, 0
        )
    node = tree._node_bytes(1, refs)
    pieces = {r.sha256: d for r, d in zip(refs, leaves, strict=True)}
    files = sum(r.files for r in refs)
    root = tree._ref("", node, files, sum(r.size for r in refs), 1)
    pieces[root.sha256] = node
    ref = {"sha256": root.sha256, "length": root.length, "level": 1}
    return tree.parse_doc(_doc(files, root.size, ref)), pieces


def test_a_shared_piece_named_with_other_counts_is_refused_by_the_diff() -> None:
    """The diff skips a piece both trees name, unread: a new tree whose parent claims other
    counts for it (the sum still adding up) must not pass on those counts."""
    a = [_entry(f"a/{i:02d}") for i in range(10)]
    b = [_entry(f"b/{i:02d}") for i in range(10)]
    b2 = [_entry(f"b/{i:02d}", seed=1) for i in range(10)]
    old, old_pieces = _two_leaves(a, b)
    honest, honest_pieces = _two_leaves(a, b2)
    forged, forged_pieces = _two_leaves(a, b2, claim_a=11)
    read = _reader({**old_pieces, **honest_pieces, **forged_pieces})
    assert len(list(tree.diff(old, honest, read))) == 10
    with pytest.raises(VerificationError, match="not its own"):
        list(tree.diff(old, forged, read))


V1 = {"index.html": "<h1>Bonjour</h1>", "cours/maths.txt": "1 + 1 = 2\n" * 50}


def test_a_release_whose_piece_was_lost_or_damaged_is_not_checked_out(
    sim: RepoSim, tmp_path: Path
) -> None:
    sim.publish(V1)
    sha = sim.piece_of(1, "index.html")
    length = len(sim.hub.store.read(sha, sim.hub.manifest("maths", 1).tree_objects[sha]))
    frame = sim.hub.store.read_frame(sha)
    sim.hub.store.remove(sha)
    sim.hub = type(sim.hub)(sim.hub.path)  # a new process: nothing verified in memory
    with pytest.raises(VerificationError, match="is not in"):
        sim.hub.checkout("maths", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # the piece back, then one byte of it damaged on disk
    sim.hub.store.put_compressed(sha, frame, length)
    loc = sim.hub.store.index.locate(sha)
    assert loc is not None
    segment = sim.hub.store.index.segment_path(loc.segment)
    data = bytearray(segment.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0x40
    segment.write_bytes(bytes(data))
    with pytest.raises(VerificationError):
        sim.hub.checkout("maths", tmp_path / "out")
    report = sim.hub.verify()
    assert not report.ok and any("piece" in p for p in report.problems), report.problems


def test_a_pack_carrying_a_piece_the_release_does_not_name_is_refused(sim: RepoSim) -> None:
    v1 = sim.publish(V1)
    pack = sim.pack(0, v1)
    entries = list(read_entries(pack))
    forged = sim.tmp / "forged.pack"
    stray = tree._leaf_bytes([_entry("intrus.txt").to_dict()])
    with open(forged, "wb") as fh:
        fh.write(MAGIC)
        for e in entries:
            hdr = {k: v for k, v in e.header.items() if k not in ("kind", "length")}
            if e.kind == "tree":
                data = delta.decompress_group(b"", e.payload, sum(hdr["sizes"]), "test")
                hdr = dict(hdr, sizes=[len(stray), *hdr["sizes"]])
                fh.write(encode_entry("tree", hdr, delta.compress_group(b"", stray + data)))
            elif e.kind != "end":
                fh.write(encode_entry(e.kind, hdr, e.payload))
    store = sim.store()
    with pytest.raises(VerificationError, match="does not name"):
        store.apply_pack(forged)
    assert not store.store.has(hashlib.sha256(stray).hexdigest())
    assert store.channels() == []


def test_a_pack_without_its_tree_entries_is_refused_with_what_to_do(sim: RepoSim) -> None:
    v1 = sim.publish(V1)
    pack = sim.pack(0, v1)
    forged = sim.tmp / "no-tree.pack"
    with open(forged, "wb") as fh:
        fh.write(MAGIC)
        for e in read_entries(pack):
            if e.kind not in ("tree", "end"):
                hdr = {k: v for k, v in e.header.items() if k not in ("kind", "length")}
                fh.write(encode_entry(e.kind, hdr, e.payload))
    store = sim.store()
    with pytest.raises((PackError, VerificationError), match="another release|incomplete"):
        store.apply_pack(forged)
    assert store.channels() == []


def test_a_one_file_update_pack_carries_about_a_kilobyte_of_metadata(sim: RepoSim) -> None:
    files = {f"pages/{i:05d}.html": f"<p>page {i}</p>" for i in range(5_000)}
    v1 = sim.publish(files)
    files["pages/02500.html"] = "<p>page 2500, corrigée</p>"
    v2 = sim.publish(files)
    store = sim.store()
    store.apply_pack(sim.pack(0, v1))
    pack = sim.pack(v1, v2)
    sizes = {"metadata": 0, "manifest": 0, "tree": 0, "delta": 0}
    for e in read_entries(pack):
        if e.kind in sizes:
            sizes[e.kind] += e.length
    assert sizes["manifest"] + sizes["tree"] < 1200, sizes
    store.apply_pack(pack)
    out = sim.tmp / "out"
    store.checkout("maths", out)
    assert read_tree(out)["pages/02500.html"] == "<p>page 2500, corrigée</p>".encode()


def _as_format_1(sim: RepoSim, version: int) -> None:
    """Rewrite release ``version`` as a repository made before format 2 held it."""
    m = sim.hub.manifest("maths", version)
    flat = Manifest(m.channel, m.version, m.created, m.files, m.notes).to_bytes()
    sim.hub_file(f"manifests/maths/{version}.json").write_bytes(flat)
    sim.resign(
        sim.hub_file("metadata/channels/maths.json"),
        sim.release_key,
        lambda s: s["releases"][str(version)].update(
            manifest={"sha256": hashlib.sha256(flat).hexdigest(), "length": len(flat)}
        ),
    )


def test_a_format_1_repository_and_centre_move_to_format_2_with_a_small_pack(
    sim: RepoSim,
) -> None:
    files = {f"pages/{i:04d}.html": f"<p>page {i}</p>" for i in range(3_000)}
    v1 = sim.publish(files)
    _as_format_1(sim, v1)
    sim.hub = type(sim.hub)(sim.hub.path)
    assert sim.hub.manifest("maths", v1).spec_version == 1  # still read as it is
    store = sim.store()
    store.apply_pack(sim.pack(0, v1))
    files["pages/1500.html"] = "<p>page 1500, corrigée</p>"
    v2 = sim.publish(files)  # the next publish is format 2, no conversion step
    assert sim.hub.manifest("maths", v2).spec_version == 2
    pack = sim.pack(v1, v2)
    tree_bytes = sum(e.length for e in read_entries(pack) if e.kind in ("manifest", "tree"))
    flat = len(sim.hub_file(f"manifests/maths/{v1}.json").read_bytes())
    print("format 1 -> 2 pack, file list bytes:", tree_bytes, "flat manifest:", flat)
    assert tree_bytes < flat // 50, (tree_bytes, flat)  # a delta against the old file list
    store.apply_pack(pack)
    out = sim.tmp / "out"
    store.checkout("maths", out)
    assert read_tree(out) == {k: v.encode() for k, v in files.items()}
    assert store.verify().ok and sim.hub.verify().ok


_counts = st.integers(min_value=0, max_value=2**63)


@given(
    path=st.text(min_size=1, max_size=40),
    size=_counts,
    mode=st.sampled_from([0o644, 0o755]),
    sha=st.text(max_size=70),
    chunks=st.lists(st.tuples(st.text(max_size=70), _counts), max_size=5),
)
@settings(max_examples=300, deadline=None)
def test_entry_bytes_are_the_canonical_bytes(
    path: str, size: int, mode: int, sha: str, chunks: list[tuple[str, int]]
) -> None:
    """The file-entry encoder written out for speed gives the canonical encoding's bytes, for
    any strings (quotes, backslashes, control characters, lone surrogates) and counts."""
    entry = FileEntry(path, size, mode, sha, chunks)
    try:
        want: bytes | type[Exception] = canonical_bytes(entry.to_dict())
    except UnicodeEncodeError:
        want = UnicodeEncodeError
    if want is UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            tree.entry_bytes(entry)
    else:
        assert tree.entry_bytes(entry) == want


def test_entry_bytes_of_other_types_take_the_general_encoder() -> None:
    """A count that is a bool or a float is not written as a number: the general encoder
    refuses the float, and writes the bool as JSON does."""
    sha = "ab" * 32
    assert tree.entry_bytes(FileEntry("a", True, 0o644, sha, [(sha, 1)])) == canonical_bytes(  # type: ignore[arg-type]
        FileEntry("a", True, 0o644, sha, [(sha, 1)]).to_dict()  # type: ignore[arg-type]
    )
    with pytest.raises(FormatError, match="floating-point"):
        tree.entry_bytes(FileEntry("a", 1.0, 0o644, sha, [(sha, 1)]))  # type: ignore[arg-type]
