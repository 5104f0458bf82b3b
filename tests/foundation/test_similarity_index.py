"""The persisted similarity index chooses the same delta bases as sketching A on the spot.

A pack's bytes must be a function of releases A and B alone (a centre resumes a pack by
byte range from a rebuilt copy or a mirror's), so whatever the index holds -- nothing,
other channels' files, files of releases long gone, a damaged file -- the groups planned
are the ones the in-memory search plans. And the point of the index: a warm one spares
reading A; only B's new files and the chosen bases are read.
"""

from __future__ import annotations

import hashlib
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravane.packs import delta
from caravane.packs.cdc import spans
from caravane.packs.changes import missing_chunks
from caravane.packs.similarity import INDEX_RELPATH, SketchIndex
from caravane.protocol.metadata import FileEntry, Manifest

from .conftest import RepoSim

WORDS = ["eau", "sante", "ecole", "lecon", "savoir", "riz", "mil", "karite", "centre", "livre"]


class Store:
    """Chunks by sha in memory, counting what a build reads."""

    def __init__(self) -> None:
        self.chunks: dict[str, bytes] = {}
        self.reads: list[str] = []

    def entry(self, path: str, data: bytes) -> FileEntry:
        chunks = []
        for off, n in spans(data, 256, 1024, 4096):
            piece = data[off : off + n]
            sha = hashlib.sha256(piece).hexdigest()
            self.chunks[sha] = piece
            chunks.append((sha, n))
        return FileEntry(path, len(data), 0o644, hashlib.sha256(data).hexdigest(), chunks)

    def read(self, sha: str, size: int) -> bytes:
        self.reads.append(sha)
        return self.chunks[sha]


def _text(rnd: random.Random, words: int) -> bytes:
    return " ".join(rnd.choice(WORDS) + str(rnd.randint(0, 99)) for _ in range(words)).encode()


def _edit(rnd: random.Random, data: bytes) -> bytes:
    """Cut, insert or move a piece: what a new version of a page does."""
    i, j = sorted(rnd.randrange(len(data) + 1) for _ in range(2))
    kind = rnd.randrange(3)
    if kind == 0:
        return data[:i] + data[j:]
    if kind == 1:
        return data[:i] + _text(rnd, rnd.randint(1, 200)) + data[i:]
    return data[j:] + data[:i] + data[i:j]


def _manifest(store: Store, files: dict[str, bytes], version: int) -> Manifest:
    entries = [store.entry(p, d) for p, d in sorted(files.items())]
    return Manifest("c", version, "2026-01-01T00:00:00Z", entries)


def _plan(
    a: Manifest, b: Manifest, store: Store, index: SketchIndex | None
) -> list[tuple[object, object]]:
    return [(g.base_runs, g.target_runs) for g in delta.plan_groups(a, b, store.read, index)]


@st.composite
def releases(draw: st.DrawFn) -> tuple[dict[str, bytes], dict[str, bytes], dict[str, bytes]]:
    """A (up to 24 variants of a few pages, so pieces are shared by more files than
    SKETCH_COMMON), B (edits, renames, new pages) and other files the index also holds."""
    rnd = random.Random(draw(st.integers(0, 2**32)))
    roots = [_text(rnd, rnd.randint(20, 900)) for _ in range(draw(st.integers(1, 3)))]
    a: dict[str, bytes] = {}
    for i in range(draw(st.integers(1, 24))):
        data = rnd.choice(roots)
        for _ in range(rnd.randint(0, 2)):
            data = _edit(rnd, data)
        a[f"d{i % 3}/page-{i}.{rnd.choice(['html', 'txt'])}"] = data
    b = dict(a)
    for path in rnd.sample(sorted(a), rnd.randint(1, len(a))):
        data = _edit(rnd, b.pop(path))
        renamed = rnd.random() < 0.3
        b[f"moved/{rnd.randint(0, 9)}-{path.rsplit('/', 1)[-1]}" if renamed else path] = data
    if draw(st.booleans()):
        b["new.html"] = _edit(rnd, rnd.choice(roots))
    history = {f"h{i}": _edit(rnd, rnd.choice(roots)) for i in range(draw(st.integers(0, 20)))}
    return a, b, history


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(releases(), st.sampled_from(["empty", "holds A", "holds A, B and history"]))
def test_the_index_chooses_the_bases_sketching_a_would(case, warm: str) -> None:
    files_a, files_b, history = case
    store = Store()
    a, b = _manifest(store, files_a, 1), _manifest(store, files_b, 2)
    others = _manifest(store, history, 9)
    without = _plan(a, b, store, None)
    with tempfile.TemporaryDirectory() as tmp, SketchIndex(Path(tmp) / "x.sqlite") as index:
        if warm != "empty":
            index.ensure(a.files, store.read)
        if warm == "holds A, B and history":
            index.ensure([*b.files, *others.files], store.read)
        assert _plan(a, b, store, index) == without
        # and once the build above filled it in
        assert _plan(a, b, store, index) == without


def test_a_warm_index_reads_only_the_new_file_and_its_bases(tmp_path: Path) -> None:
    rnd = random.Random(5)
    files_a = {f"d/page-{i}.html": _text(rnd, 300) for i in range(300)}
    files_b = dict(files_a)
    files_b["d/page-150.html"] += b" une phrase ajoutee cette semaine"
    store = Store()
    a, b = _manifest(store, files_a, 1), _manifest(store, files_b, 2)
    with SketchIndex(tmp_path / "similarity.sqlite") as index:
        index.ensure(a.files, store.read)
        store.reads.clear()
        groups = list(delta.plan_groups(a, b, store.read, index))
    chosen = {h for g in groups for h, _ in g.base}
    changed = {h for f in b.files if f.path == "d/page-150.html" for h, _ in f.chunks}
    assert set(store.reads) <= changed
    assert chosen, "the old version of the page is the base"
    cold = Store()
    cold.chunks = store.chunks
    list(delta.plan_groups(a, b, cold.read))
    assert len(cold.reads) > 10 * len(store.reads)  # without the index, all of A was read


def _pages(seed: int) -> dict[str, str]:
    rnd = random.Random(seed)
    return {f"p{i}.html": _text(rnd, 400).decode() for i in range(40)}


def test_a_damaged_or_missing_index_is_rebuilt_and_the_pack_is_the_same(sim: RepoSim) -> None:
    pages = _pages(1)
    sim.publish(pages)
    pages["p7.html"] += " changed this week"
    pages["p7-copy.html"] = pages.pop("p3.html") + " moved"
    sim.publish(pages)
    index_file = sim.hub.path / INDEX_RELPATH
    assert index_file.is_file(), "publishing sketches the new release's files"
    warm = sim.tmp / "warm.pack"
    sim.hub.build_pack(sim.channel, 1, 2, warm)

    index_file.write_bytes(b"not a database, a bad sector or a half-copied backup" * 100)
    damaged = sim.tmp / "damaged.pack"
    sim.hub.build_pack(sim.channel, 1, 2, damaged)
    assert damaged.read_bytes() == warm.read_bytes()

    for suffix in ("", "-wal", "-shm"):
        Path(f"{index_file}{suffix}").unlink(missing_ok=True)
    missing = sim.tmp / "missing.pack"
    sim.hub.build_pack(sim.channel, 1, 2, missing)
    assert missing.read_bytes() == warm.read_bytes()

    # rebuilt by that build: A's files all have their sketch again
    snap = sim.hub.snapshot()
    with SketchIndex(index_file) as index:
        shas = {f.sha256 for f in snap.manifest(sim.channel, 1).files}
        assert index.known(shas) == shas


def test_the_sample_rate_keeps_the_persisted_pieces() -> None:
    # every rate is a multiple of the persisted one, so filtering the stored sketch gives
    # exactly the sketch at that rate
    data = b"".join(hashlib.sha256(b"%d" % i).digest() * (1 + i % 7) for i in range(4000))
    stored = delta.sketch(data, delta.SKETCH_SAMPLE)
    for sketched in (0, 600 << 20, 5 << 30, 100 << 30):
        rate = delta.sketch_sample(sketched)
        assert rate % delta.SKETCH_SAMPLE == 0
        assert {h for h in stored if h % rate == 0} == delta.sketch(data, rate)
    assert delta.sketch_sample(512 << 20) == delta.SKETCH_SAMPLE  # as before up to 512 MiB


def test_an_index_that_fails_is_bypassed_with_the_same_bases() -> None:
    rnd = random.Random(9)
    files_a = {f"page-{i}.html": _text(rnd, 200) for i in range(30)}
    files_b = {p: _edit(rnd, d) for p, d in files_a.items()}
    store = Store()
    a, b = _manifest(store, files_a, 1), _manifest(store, files_b, 2)
    without = _plan(a, b, store, None)
    with tempfile.TemporaryDirectory() as tmp:
        index = SketchIndex(Path(tmp) / "x.sqlite")
        index.ensure(a.files, store.read)
        index.close()  # every query now fails with an sqlite3 error
        assert _plan(a, b, store, index) == without


def _streamed(
    a: Manifest, b: Manifest, store: Store, index: SketchIndex | None
) -> list[tuple[object, object]]:
    """What ``build_pack`` plans: A walked as a stream, only the files of B that change."""
    wanted = missing_chunks(a, b)
    targets = [(i, f) for i, f in enumerate(b.files) if any(h in wanted for h, _ in f.chunks)]
    sim = delta.StreamedSimilarity(
        lambda: iter(a.files), b"release a", store.read, index, [f for _, f in targets]
    )
    return [(g.base_runs, g.target_runs) for g in delta.plan_target_groups(sim, targets, wanted)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    releases(),
    st.sampled_from(["none", "empty", "holds A", "holds A, B and history"]),
    st.booleans(),
)
def test_walking_a_as_a_stream_chooses_the_same_bases(case, warm: str, heavy: bool) -> None:
    """The streamed search keeps only the files of A that can score, and plans the very
    groups the whole-manifest search plans (so the pack's bytes do not change), with the
    index or without it, whatever it holds, and when a piece's owners are many."""
    files_a, files_b, history = case
    store = Store()
    a, b = _manifest(store, files_a, 1), _manifest(store, files_b, 2)
    others = _manifest(store, history, 9)
    expected = _plan(a, b, store, None)
    if warm == "none":
        assert _streamed(a, b, store, None) == expected
        return
    saved = delta.HEAVY_PIECE
    delta.HEAVY_PIECE = 1 if heavy else saved  # owners held as an IdSet past one
    try:
        with tempfile.TemporaryDirectory() as tmp, SketchIndex(Path(tmp) / "x.sqlite") as index:
            if warm != "empty":
                index.ensure(a.files, store.read)
            if warm == "holds A, B and history":
                index.ensure([*b.files, *others.files], store.read)
            assert _streamed(a, b, store, index) == expected
            assert _streamed(a, b, store, index) == expected  # the walk of A was noted
    finally:
        delta.HEAVY_PIECE = saved


def test_a_name_every_file_shares_keeps_the_best_two_only(tmp_path: Path) -> None:
    """``page-#.html`` matches every file of A: the streamed search keeps the two such
    files a name-only match can pick (biggest, then first by path) and the ones that share
    content, not A, and still picks what the whole search picks."""
    rnd = random.Random(11)
    files_a = {f"d/page-{i:04d}.html": _text(rnd, rnd.randint(5, 60)) for i in range(400)}
    files_b = dict(files_a)
    files_b["d/page-0200.html"] += b" une phrase ajoutee"
    files_b["e/page-9999.html"] = _text(rnd, 40)  # new: only its name matches A
    store = Store()
    a, b = _manifest(store, files_a, 1), _manifest(store, files_b, 2)
    expected = _plan(a, b, store, None)
    wanted = missing_chunks(a, b)
    targets = [f for f in b.files if any(h in wanted for h, _ in f.chunks)]
    with SketchIndex(tmp_path / "similarity.sqlite") as index:
        sim = delta.StreamedSimilarity(lambda: iter(a.files), b"a", store.read, index, targets)
        assert len(sim.files) < 20 < len(a.files)
        assert _streamed(a, b, store, index) == expected


def test_a_publish_sketches_what_it_reads_and_reads_nothing_back(
    sim: RepoSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish sketches each file while its bytes are in hand: once the release is signed,
    the index holds every new file's sketch, the very one the commit's pass would have made,
    and nothing was read back from the store for it. Past the commit's hold (here 3 files)
    only what the index lacks is kept, so no second walk of the diff either."""
    from caravane.packs import hub_repository
    from caravane.packs.store import ObjectStore

    monkeypatch.setattr(hub_repository, "SKETCH_HOLD", 3)
    rnd = random.Random(3)
    pages: dict[str, bytes | str] = {f"p{i}.html": _text(rnd, 40 * (1 + i % 7)) for i in range(30)}
    pages["big.bin"] = _text(rnd, 20_000)  # past the chunker's minimum: chunked, then sketched
    pages["empty.txt"] = b""
    reads: list[str] = []
    real_read = ObjectStore.read

    def counting(self: ObjectStore, sha: str, size: int, verify: bool = True) -> bytes:
        if verify:  # the file list's own pieces are read unverified, checked by the tree
            reads.append(sha)
        return real_read(self, sha, size, verify=verify)

    walks: list[object] = []
    monkeypatch.setattr(ObjectStore, "read", counting)
    monkeypatch.setattr(
        hub_repository, "new_contents", lambda changes: walks.append(changes) or iter(())
    )
    sim.publish(pages)
    assert reads == [], "nothing is read back from the store to sketch it"
    assert walks == [], "the diff is not walked a second time"
    monkeypatch.setattr(ObjectStore, "read", real_read)
    files = sim.hub.snapshot().manifest(sim.channel, 1).files
    with SketchIndex(sim.hub.path / INDEX_RELPATH) as index:
        for f in files:
            if f.size:
                data = b"".join(sim.hub.store.read(h, n) for h, n in f.chunks)
                assert index.get(f.sha256) == delta.sketch(data), f.path
        assert index.known([f.sha256 for f in files if not f.size]) == set()


def _sketches_of(sim: RepoSim) -> dict[str, set[int] | None]:
    files = (
        sim.hub.snapshot()
        .manifest(sim.channel, sim.hub.snapshot().known_version(sim.channel) or 1)
        .files
    )
    with SketchIndex(sim.hub.path / INDEX_RELPATH) as index:
        return {f.sha256: index.get(f.sha256) for f in files if f.size}


def test_a_big_publish_sketches_in_a_helper_process(
    sim: RepoSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past one batch, a helper process sketches and writes (the publishing process keeps
    reading); the index ends the same as sketching in the publishing process."""
    from caravane.packs import similarity, sketch_helper

    started: list[object] = []
    real_init = sketch_helper.SketchHelper.__init__

    def init(self: sketch_helper.SketchHelper, index: Path) -> None:
        real_init(self, index)
        started.append(self)

    monkeypatch.setattr(sketch_helper.SketchHelper, "__init__", init)
    monkeypatch.setattr(similarity, "SEND_BATCH", 4)
    rnd = random.Random(4)
    pages: dict[str, bytes | str] = {f"p{i:02d}.html": _text(rnd, 50 + i) for i in range(23)}
    sim.publish(pages)
    assert len(started) == 1, "one helper for the publish"
    got = _sketches_of(sim)
    for data in pages.values():
        raw = data if isinstance(data, bytes) else data.encode()
        assert got[hashlib.sha256(raw).hexdigest()] == delta.sketch(raw)


def test_a_helper_killed_part_way_leaves_a_good_release(
    sim: RepoSim, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The helper killed with SIGKILL after its first batch: the publish signs its release
    all the same, says so in its log, and the sketches missing are made by the commit's
    own pass (the index is a cache)."""
    import os
    import signal

    from caravane.packs import similarity, sketch_helper

    monkeypatch.setattr(similarity, "SEND_BATCH", 3)
    real_submit = sketch_helper.SketchHelper.submit
    sent: list[int] = []

    def submit(self: sketch_helper.SketchHelper, rows: list[tuple[str, bytes]] | None) -> None:
        if sent:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        sent.append(1)
        real_submit(self, rows)

    monkeypatch.setattr(sketch_helper.SketchHelper, "submit", submit)
    rnd = random.Random(6)
    pages: dict[str, bytes | str] = {f"p{i:02d}.html": _text(rnd, 60 + i) for i in range(12)}
    with caplog.at_level("WARNING"):
        assert sim.publish(pages) == 1
    assert "sketching helper failed" in caplog.text
    got = _sketches_of(sim)
    for data in pages.values():
        raw = data if isinstance(data, bytes) else data.encode()
        assert got[hashlib.sha256(raw).hexdigest()] == delta.sketch(raw)
    store = sim.store()
    store.apply_pack(sim.pack(0, 1))
