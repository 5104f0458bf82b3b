"""What release B holds that A lacks: one definition, and every role that needs it agrees with it.

Each test draws two manifests (or two trees) and checks one user of
``packs.changes.missing_chunks`` against the plain definition: the chunks of B whose hash
is not among A's, each once, with B's sizes.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravane.packs import delta
from caravane.packs.bundle import Target, plan_packs
from caravane.packs.changes import missing_chunks, new_bytes
from caravane.packs.hub_repository import HubRepository
from caravane.protocol.metadata import FileEntry, Manifest

from .conftest import write_tree

POOL = 12  # few distinct chunks, so two manifests share many


def _sha(i: int) -> str:
    return hashlib.sha256(f"chunk {i}".encode()).hexdigest()


def _size(i: int) -> int:
    return 100 + 37 * i  # one size per chunk, as content addressing implies


def _chunk_bytes(sha: str, size: int) -> bytes:
    """Deterministic content for a chunk id (only its length matters to the planner)."""
    seed = hashlib.sha256(sha.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


@st.composite
def manifests(draw: st.DrawFn, version: int = 1) -> Manifest:
    files = []
    for n in range(draw(st.integers(0, 5))):
        ids = draw(st.lists(st.integers(0, POOL - 1), max_size=6))
        chunks = [(_sha(i), _size(i)) for i in ids]
        size = sum(s for _, s in chunks)
        files.append(FileEntry(f"f{n}.bin", size, 0o644, _sha(1000 + n), chunks))
    return Manifest("c", version, "2026-01-01T00:00:00Z", files)


def expected(a: Manifest | None, b: Manifest) -> dict[str, int]:
    """The definition, written the slow and obvious way."""
    have = {h for f in a.files for h, _ in f.chunks} if a else set()
    out: dict[str, int] = {}
    for f in b.files:
        for h, n in f.chunks:
            if h not in have and h not in out:
                out[h] = n
    return out


@given(st.one_of(st.none(), manifests()), manifests(2))
def test_missing_chunks_are_exactly_the_chunks_of_b_not_in_a(
    a: Manifest | None, b: Manifest
) -> None:
    got = missing_chunks(a, b)
    assert list(got.items()) == list(expected(a, b).items())  # same chunks, B's order
    a_ids = {h for f in a.files for h, _ in f.chunks} if a else set()
    b_ids = {h for f in b.files for h, _ in f.chunks}
    assert set(got) == b_ids - a_ids
    assert new_bytes(a, b) == sum(expected(a, b).values())
    assert missing_chunks(b, b) == {} and new_bytes(None, b) == sum(b.chunk_sizes().values())


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.none(), manifests()), manifests(2))
def test_the_pack_builder_sends_exactly_the_missing_chunks_once(
    a: Manifest | None, b: Manifest
) -> None:
    sent = [t for g in delta.plan_groups(a, b, _chunk_bytes) for t in g.targets]
    assert sent == list(expected(a, b).items())


# --------------------------------------------------------------------------- real repositories

TREE = st.dictionaries(
    st.sampled_from([f"f{i}.bin" for i in range(6)]),
    st.lists(st.integers(0, 7), min_size=1, max_size=4),
    min_size=1,
    max_size=6,
)
REPO_SETTINGS = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _content(blocks: list[int]) -> bytes:
    """Files made of whole 4 KiB blocks from a small set, so releases share chunks."""
    return b"".join(hashlib.sha256(f"block {i}".encode()).digest() * 128 for i in blocks)


def _hub_with(t: Path, a: dict[str, list[int]], b: dict[str, list[int]]) -> HubRepository:
    hub = HubRepository.init(t / "hub")
    for n, tree in enumerate((a, b)):
        src = write_tree(t / f"src{n}", {p: _content(v) for p, v in tree.items()})
        hub.publish("c", src, avg_chunk=1024)
    return hub


def pieces(old: Manifest | None, new: Manifest) -> int:
    """Bytes of the pieces of ``new``'s file list (format 2) that ``old`` lacks."""
    have = old.tree_objects if old is not None else {}
    return sum(n for sha, n in new.tree_objects.items() if sha not in have)


@REPO_SETTINGS
@given(TREE, TREE)
def test_the_hubs_pack_size_estimate_is_the_missing_bytes(
    a: dict[str, list[int]], b: dict[str, list[int]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        hub = _hub_with(Path(tmp), a, b)
        m1, m2 = hub.manifest("c", 1), hub.manifest("c", 2)
        assert hub.new_bytes("c", 1, 2) == sum(expected(m1, m2).values()) + pieces(m1, m2)
        assert hub.new_bytes("c", 0, 2) == sum(expected(None, m2).values()) + pieces(None, m2)
        info = hub.build_pack("c", 1, 2, Path(tmp) / "p.pack")
        assert (info.new_chunks, info.new_bytes) == (
            len(expected(m1, m2)),
            sum(expected(m1, m2).values()),
        )


@REPO_SETTINGS
@given(TREE, TREE)
def test_drive_planning_estimates_packs_by_the_missing_bytes(
    a: dict[str, list[int]], b: dict[str, list[int]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        hub = _hub_with(Path(tmp), a, b)
        m1, m2 = hub.manifest("c", 1), hub.manifest("c", 2)
        plans = plan_packs(hub, [Target("x", {"c": 1}), Target("y", {})], ["c"])
        sizes = {(p.from_version, p.to_version): p.size for p in plans}
        overhead = 64 * 1024  # the estimate's allowance for the pack's metadata
        assert sizes == {
            (1, 2): sum(expected(m1, m2).values()) + pieces(m1, m2) + overhead,
            (0, 2): sum(expected(None, m2).values()) + pieces(None, m2) + overhead,
        }


def test_a_first_pack_carries_each_chunk_once_and_gives_the_release(tmp_path: Path) -> None:
    """From nothing, a pack records what it has carried instead of holding every chunk of
    the channel (``delta.FirstCarry``): content repeated across files still goes once."""
    from caravane.packs.centre_store import CentreStore

    src = tmp_path / "src"
    for i in range(300):
        f = src / f"d{i % 7}" / f"f{i:03}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"page %d\n" % (i % 11) * (50 + i % 11))
    hub = HubRepository.init(tmp_path / "hub")
    hub.publish("c", src, avg_chunk=4096)
    info = hub.build_pack("c", 0, 1, tmp_path / "01.pack")
    distinct = {h for f in hub.manifest("c", 1).files for h, _ in f.chunks}
    assert info.new_chunks == len(distinct) == 11
    node = CentreStore.init(tmp_path / "node", trust_root=hub.path / "metadata/root.json")
    node.apply_pack(tmp_path / "01.pack")
    node.checkout("c", tmp_path / "out")
    for i in range(300):
        rel = f"d{i % 7}/f{i:03}.txt"
        assert (tmp_path / "out" / rel).read_bytes() == (src / rel).read_bytes()


def test_first_carry_answers_wanted_until_carried() -> None:
    carry = delta.FirstCarry()
    sha = hashlib.sha256(b"x").hexdigest()
    assert sha in carry
    assert carry.pop(sha) == 1
    assert sha not in carry and carry.pop(sha) is None
    carry.close()


def _tree_release(version: int, files: list[FileEntry], pieces: dict[str, bytes]) -> object:
    """A format 2 release of ``files``, its pieces added to ``pieces`` (one store)."""
    from caravane.protocol import tree
    from caravane.protocol.release import Release

    m = Manifest("lecons", version, "2026-12-01T00:00:00Z", files, "")
    enc = tree.encode_manifest(m)
    pieces.update({ref.sha256: data for ref, data in enc.pieces})
    doc = tree.parse_doc(enc.doc)
    return Release(
        "lecons",
        version,
        m.created,
        "",
        len(files),
        m.total_size,
        tree.TREE_SPEC_VERSION,
        doc=doc,
        read=lambda refs: [pieces[r.sha256] for r in refs],
    )


_files = st.dictionaries(
    st.sampled_from([f"d{i % 3}/p{i:02d}" for i in range(40)]),
    st.tuples(st.integers(0, 5), st.sampled_from([0o644, 0o755])),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(_files, _files, st.integers(1, 4))
def test_a_summary_of_the_tree_diff_is_the_comparison_of_the_two_lists(
    old: dict[str, tuple[int, int]], new: dict[str, tuple[int, int]], limit: int
) -> None:
    """What the review and the release page show (counts whole, first paths of each kind)
    from the diff of two trees is what comparing the two whole lists gives."""
    from caravane.packs.changes import file_changes, summarise_changes

    def entries(d: dict[str, tuple[int, int]]) -> list[FileEntry]:
        return [
            FileEntry(p, _size(c), mode, _sha(c), [(_sha(c), _size(c))])
            for p, (c, mode) in sorted(d.items())
        ]

    a, b = entries(old), entries(new)
    whole = file_changes(a if old else None, b)
    store: dict[str, bytes] = {}
    ra = _tree_release(1, a, store) if old else None
    rb = _tree_release(2, b, store)
    got = summarise_changes(rb.changes_from(ra), len(b), limit)  # type: ignore[attr-defined]
    assert (got.n_added, got.n_changed, got.n_removed, got.unchanged) == (
        len(whole.added),
        len(whole.changed),
        len(whole.removed),
        whole.unchanged,
    )
    assert (got.added, got.changed, got.removed) == (
        whole.added[:limit],
        whole.changed[:limit],
        whole.removed[:limit],
    )
    assert (got.added_bytes, got.removed_bytes) == (whole.added_bytes, whole.removed_bytes)
    assert got.identical == whole.identical
