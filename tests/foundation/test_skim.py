"""A pack build skims release A by its leaves' summaries (packs/skim.py).

What a user would notice: the pack is the same bytes as the one a full walk of A gives (so
a rebuilt pack still matches the one a centre is resuming), and a one-file change reads a
few leaves of A, not all of them. Summaries are a cache: a damaged row or a failing
database gives the same pack.
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravane.packs import delta, skim
from caravane.packs.centre_store import CentreStore
from caravane.packs.hub_repository import HubRepository
from caravane.packs.similarity import INDEX_RELPATH

from .conftest import read_tree, write_tree

WORDS = [
    *("le", "la", "les", "un", "une", "des", "et", "est", "dans", "pour"),
    *("the", "a", "of", "and", "to", "in", "is", "that", "for", "on"),
]
#: a site's shared head: every page starts with these same 20 KB (pieces every file owns)
HEADER = "<html><head>" + " ".join(random.Random(99).choice(WORDS) for _ in range(5000))


def _page(rnd: random.Random, i: int, header: str = "") -> str:
    body = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(40, 200)))
    return f"{header}<title>page {i}</title><p>{body}</p>\n"


def _library(n: int, seed: int = 1, header: str = "") -> dict[str, bytes | str]:
    rnd = random.Random(seed)
    return {f"d{i // 100:02d}/page-{i:05d}.html": _page(rnd, i, header) for i in range(n)}


def _build(hub: HubRepository, out: Path, a: int = 1, b: int = 2) -> bytes:
    hub.build_pack("c", a, b, out)
    return out.read_bytes()


def _no_summaries(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: Any, shas: list[str]) -> Any:
        raise sqlite3.OperationalError("summaries disabled by the test")

    monkeypatch.setattr(skim.LeafSummaries, "get_many", fail)


def _hub(tmp: Path, a: dict[str, bytes | str], b: dict[str, bytes | str]) -> HubRepository:
    hub = HubRepository.init(tmp / "hub")
    hub.publish("c", write_tree(tmp / "a", a), avg_chunk=1024)
    hub.publish("c", write_tree(tmp / "b", b), avg_chunk=1024)
    return hub


def _edits(base: dict[str, bytes | str], ops: list[tuple[str, int, int]]) -> dict[str, Any]:
    """B from A: appended, renamed, copied (content elsewhere in A), new, deleted files."""
    out = dict(base)
    names = sorted(base)
    for op, i, j in ops:
        src = names[i % len(names)]
        if src not in out:
            continue
        if op == "append":
            out[src] = str(out[src]) + f"<p>ajout {j}</p>\n"
        elif op == "rename":
            out[f"moved/page-{j:05d}.html"] = out.pop(src)
        elif op == "copy":
            out[f"copies/x{j}-{src.rsplit('/', 1)[-1]}"] = out[src]
        elif op == "new":
            out[f"d{j % 5:02d}/page-{90000 + j}.html"] = _page(random.Random(j), j)
        elif op == "delete" and len(out) > 1:
            del out[src]
    return out


OPS = st.lists(
    st.tuples(
        st.sampled_from(["append", "rename", "copy", "new", "delete"]),
        st.integers(0, 10_000),
        st.integers(0, 99),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.booleans())
def test_a_skimmed_build_is_the_bytes_of_a_full_walk(
    ops: list[tuple[str, int, int]], boilerplate: bool
) -> None:
    a = _library(400, header=HEADER if boilerplate else "")
    b = _edits(a, ops)
    with tempfile.TemporaryDirectory() as t, pytest.MonkeyPatch.context() as mp:
        tmp = Path(t)
        hub = _hub(tmp, a, b)
        cold = _build(hub, tmp / "cold.pack")  # summarises A's leaves
        warm = _build(hub, tmp / "warm.pack")  # reads them
        _no_summaries(mp)
        walked = _build(hub, tmp / "walk.pack")
        assert cold == warm == walked


def test_a_one_file_change_reads_a_few_leaves_of_a(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _library(3000)
    b = dict(a)
    b["d15/page-01500.html"] = str(a["d15/page-01500.html"]) + "<p>une phrase de plus</p>"
    hub = _hub(tmp_path, a, b)
    first = _build(hub, tmp_path / "first.pack")
    read: list[int] = []
    real = skim.leaf_entries

    def counted(release: Any, refs: list[Any]) -> Any:
        read.append(len(refs))
        return real(release, refs)

    monkeypatch.setattr(skim, "leaf_entries", counted)
    again = _build(hub, tmp_path / "again.pack")
    leaves = [r for r in hub.snapshot().release("c", 1).piece_refs() if r.level == 0]
    assert again == first
    assert len(leaves) > 20
    # the changed file's old leaf, and where the best files by name sit
    assert sum(read) <= 4, f"read {sum(read)} of {len(leaves)} leaves"

    store = CentreStore.init(tmp_path / "node", trust_root=hub.path / "metadata/root.json")
    store.apply_pack(_pack_to(hub, tmp_path, 0, 1))
    store.apply_pack(tmp_path / "again.pack")
    store.checkout("c", tmp_path / "out")
    assert read_tree(tmp_path / "out") == {k: str(v).encode() for k, v in b.items()}


def _pack_to(hub: HubRepository, tmp: Path, a: int, b: int) -> Path:
    out = tmp / f"{a}-{b}.pack"
    hub.build_pack("c", a, b, out)
    return out


@pytest.mark.parametrize("heavy", [False, True])
def test_a_header_every_page_shares_does_not_keep_all_of_a(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, heavy: bool
) -> None:
    """A piece of boilerplate is owned by every file of A: only the first few owners are
    listed (past SKETCH_COMMON the piece scores nothing), not the whole release."""
    if heavy:  # owners past this are looked up as an IdSet
        monkeypatch.setattr(delta, "HEAVY_PIECE", 50)
    a = _library(1200, header=HEADER)
    b = dict(a)
    b["d05/page-00500.html"] = str(a["d05/page-00500.html"]) + "<p>une phrase de plus</p>"
    hub = _hub(tmp_path, a, b)
    made: list[delta.StreamedSimilarity] = []
    init = delta.StreamedSimilarity.__init__

    def spy(self: delta.StreamedSimilarity, *args: Any, **kw: Any) -> None:
        init(self, *args, **kw)
        made.append(self)

    monkeypatch.setattr(delta.StreamedSimilarity, "__init__", spy)
    warm = [_build(hub, tmp_path / f"{n}.pack") for n in range(2)]
    _no_summaries(monkeypatch)
    walked = _build(hub, tmp_path / "walk.pack")
    assert warm[0] == warm[1] == walked
    for index in made:
        assert len(index.kept) <= 2 * (delta.SKETCH_COMMON + 1) + delta.CANDIDATES


def test_a_damaged_summary_is_computed_again(tmp_path: Path) -> None:
    a = _library(600)
    b = dict(a)
    b["d03/page-00300.html"] = "nouveau"
    hub = _hub(tmp_path, a, b)
    first = _build(hub, tmp_path / "first.pack")
    db = sqlite3.connect(hub.path / INDEX_RELPATH)
    with db:
        assert db.execute("UPDATE leaves SET data = x'00ff'").rowcount > 0
    db.close()
    assert _build(hub, tmp_path / "again.pack") == first


def test_a_summary_round_trips() -> None:
    from caravane.protocol.metadata import FileEntry

    entries = [
        FileEntry(f"d/page-{i}.html", 10 * i, 0o644, f"{i:064x}", [(f"{i + 1:064x}", 10 * i)])
        for i in range(1, 6)
    ]
    s = skim.summarize(entries, 2)
    back = skim.LeafSummary.decode(s.encode())
    assert back == s
    assert s.names == {"page-#.html": [(50, "d/page-5.html", 4), (40, "d/page-4.html", 3)]}
    assert s.hits({skim.path_key("d/page-3.html")})
    assert not s.hits({skim.path_key("d/page-9.html")})
    assert skim.LeafSummary.decode(b"not zlib") is None


def test_a_new_release_is_known_sketched_from_the_diff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first build from each new release used to walk all of it to check that the
    similarity index holds its sketches; now the release before it vouches, with the diff."""
    from caravane.packs.similarity import SketchIndex

    a = _library(800)
    hub = HubRepository.init(tmp_path / "hub")
    versions = [a]
    for n in range(3):
        b = dict(versions[-1])
        b[f"d0{n}/page-00{n}07.html"] = f"version {n + 2}"
        versions.append(b)
    for n, files in enumerate(versions):
        hub.publish("c", write_tree(tmp_path / f"src{n}", files), avg_chunk=1024)
    _build(hub, tmp_path / "12.pack", 1, 2)  # walks v1 once: nothing vouches for it

    walks: list[bool] = []
    real = SketchIndex.ensure_stream

    def spy(self: SketchIndex, files: Any, read: Any, key: bytes) -> int:
        walks.append(not self.is_complete(key))
        return real(self, files, read, key)

    monkeypatch.setattr(SketchIndex, "ensure_stream", spy)
    warm = [_build(hub, tmp_path / f"{n}-{n + 1}.pack", n, n + 1) for n in (2, 3)]
    assert walks == [False, False]

    (hub.path / INDEX_RELPATH).unlink()  # a cold index: the first build walks, same bytes
    cold = [_build(hub, tmp_path / f"cold-{n}.pack", n, n + 1) for n in (2, 3)]
    assert walks[2:] == [True, False]  # v2 walked once, then it vouches for v3
    assert cold == warm


def test_collection_prunes_the_index_to_what_retained_releases_hold(tmp_path: Path) -> None:
    """Sketches and leaf summaries of releases no longer kept go with their objects, so the
    index stops growing with every release ever published; builds from what is kept are
    the same bytes as with a fresh index."""
    a = _library(600, seed=1)
    b = _library(600, seed=2)  # every page rewritten: v1's contents and leaves all go
    c = dict(b)
    c["d02/page-00200.html"] = "troisieme version"
    hub = HubRepository.init(tmp_path / "hub")
    for n, files in enumerate((a, b, c)):
        hub.publish("c", write_tree(tmp_path / f"src{n}", files), avg_chunk=1024)
    _build(hub, tmp_path / "12.pack", 1, 2)
    _build(hub, tmp_path / "23.pack", 2, 3)

    def rows() -> tuple[int, int]:
        db = sqlite3.connect(hub.path / INDEX_RELPATH)
        try:
            got = [
                db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("files", "leaves")
            ]
        finally:
            db.close()
        return got[0], got[1]

    assert hub.retain("c", 2) == [1]
    warm = _build(hub, tmp_path / "23-kept.pack", 2, 3)  # the channel's metadata changed
    files_before, leaves_before = rows()
    hub.collect_garbage()
    files_after, leaves_after = rows()
    assert files_before - files_after >= 590  # v1's pages (a few may match by chance)
    assert 0 < leaves_after < leaves_before
    assert _build(hub, tmp_path / "23-again.pack", 2, 3) == warm
    (hub.path / INDEX_RELPATH).unlink()
    assert _build(hub, tmp_path / "23-cold.pack", 2, 3) == warm
