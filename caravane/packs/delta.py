"""Delta groups: new chunks of release B compressed as one stream against old content.

Measurements on real release pairs (docs/PERFORMANCE.md, and the design brief) show that one
compressed stream with a base the receiver already holds ("patch-from") beats per-chunk
compression by 1.6-2.3x and chunk dedup alone by far more, and that the base must be chosen by
content similarity, not by path: content moves between files, and bundlers rename files.

So a pack carries the chunks B has and A lacks, in B's order, in groups of bounded size; each
group is compressed at a strong zstd level with, as a raw-content dictionary, old chunks of
the files most similar to the ones the new chunks come from. Similarity is measured by shared
chunks and by a sampled sketch of small content-defined pieces, so a renamed or reshuffled
file still finds its ancestor. Bounds keep both builder and receiver memory flat: a group holds
at most GROUP_TARGET bytes of new content and GROUP_BASE bytes of base.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import re
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zstandard as zstd

from caravane.protocol.errors import VerificationError
from caravane.protocol.metadata import FileEntry, Manifest

from .changes import missing_chunks
from .sketches import SKETCH_AVG, SKETCH_MAX_FILE, SKETCH_SAMPLE, sketch
from .zstd_prefix import compress_with_prefix

if TYPE_CHECKING:
    from caravane.protocol.tree import PieceRef

    from .similarity import SketchIndex
    from .skim import Leaf, LeafSummary

    #: A's leaves in order, decoded where the predicate says so of their summary
    Skimmer = Callable[[Callable[[LeafSummary], bool]], Iterator[Leaf]]

log = logging.getLogger(__name__)

GROUP_TARGET = 8 * 1024 * 1024
GROUP_BASE = 32 * 1024 * 1024
WHOLE_BASE_FILE = 4 * 1024 * 1024
NEIGHBOURHOOD = 1024 * 1024
SKETCH_BUDGET = 256 * 1024 * 1024  # ... and fewer when A is large: about 1M pieces at most
SKETCH_COMMON = 16  # ignore pieces found in more old files than this (boilerplate)
CANDIDATES = 2
LEVEL = 19
MAX_WINDOW_LOG = 27
#: groups that do not compress (PNG, video, archives) are kept at this level: level 19 runs
#: at 0.5 MB/s over them for 0.5 % gain
FAST_LEVEL = 3
PROBE_SAMPLES = 4
PROBE_SAMPLE = 64 * 1024
#: a sample that level 1 shrinks below this share is compressible: go strong at once
PROBE_COMPRESSIBLE = 0.9
#: a group that the fast level (with its base) shrinks less than this is stored fast
INCOMPRESSIBLE = 0.97
#: the strong level's table of earlier positions for a group without a base (a first pack,
#: new content): 32 MiB instead of level 19's 64 (and 8 MiB of hash heads instead of 16),
#: for 0.1-0.3 % more bytes on text and JavaScript, 40 MB less at peak. A group
#: with a base keeps the level's: it finds matches across the base (11 % smaller deltas on
#: a synthetic pair; on typescript 5.5.4 -> 5.6.2, 32 MiB made the pack 3.6 % larger)
NO_BASE_CHAIN_LOG = 23

ReadChunk = Callable[[str, int], bytes]


Run = list[int]  # [file index in a manifest, first chunk index, chunk count]


def _extend(runs: list[Run], file_idx: int, chunk_idx: int) -> None:
    last = runs[-1] if runs else None
    if last and last[0] == file_idx and last[1] + last[2] == chunk_idx:
        last[2] += 1
    else:
        runs.append([file_idx, chunk_idx, 1])


@dataclass
class Group:
    """New chunks (``targets``, found in manifest B) and old chunks (``base``, in manifest A).

    On the wire both are runs of chunk indices into the manifests, which the receiver holds
    verified, so a group's header is a few bytes however many chunks it names.
    """

    targets: list[tuple[str, int]] = field(default_factory=list)
    target_runs: list[Run] = field(default_factory=list)
    base: list[tuple[str, int]] = field(default_factory=list)
    base_runs: list[Run] = field(default_factory=list)
    target_bytes: int = 0
    base_bytes: int = 0
    _base_ids: set[str] = field(default_factory=set)

    def add_target(self, file_idx: int, chunk_idx: int, sha: str, size: int) -> None:
        self.targets.append((sha, size))
        _extend(self.target_runs, file_idx, chunk_idx)
        self.target_bytes += size

    def add_base(self, file_idx: int, chunk_idx: int, sha: str, size: int) -> None:
        if sha not in self._base_ids:
            self._base_ids.add(sha)
            self.base.append((sha, size))
            _extend(self.base_runs, file_idx, chunk_idx)
            self.base_bytes += size


def resolve_runs(runs: object, manifest: Manifest | None, what: str) -> list[tuple[str, int]]:
    """Turn runs from a pack header into (sha, size) pairs, refusing any out of range."""
    out: list[tuple[str, int]] = []
    if not isinstance(runs, list):
        raise VerificationError(f"{what}: malformed chunk runs")
    for run in runs:
        if (
            not isinstance(run, list)
            or len(run) != 3
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in run)
        ):
            raise VerificationError(f"{what}: malformed chunk run")
        f, c, n = run
        if manifest is None or not 0 <= f < len(manifest.files):
            raise VerificationError(f"{what}: refers to a file its manifest does not have")
        chunks = manifest.files[f].chunks
        if n < 1 or c < 0 or c + n > len(chunks):
            raise VerificationError(f"{what}: refers to chunks its manifest does not have")
        out.extend(chunks[c : c + n])
    return out


_VARIABLE = re.compile(r"[0-9a-f]{6,}|\d+", re.IGNORECASE)


def name_key(path: str) -> str:
    """A file name with versions and content hashes blanked: ``app.3f9a1c.js`` -> ``app.#.js``."""
    return _VARIABLE.sub("#", path.rsplit("/", 1)[-1].lower())


def _file_bytes(entry: FileEntry, read_chunk: ReadChunk) -> bytes:
    return b"".join(read_chunk(h, n) for h, n in entry.chunks)


def sketch_sample(sketched: int) -> int:
    """The sample rate for an old release of ``sketched`` bytes of sketchable files.

    At least one piece in :data:`SKETCH_SAMPLE`, fewer when A is large (the budget keeps
    about 1M pieces). Always a multiple of :data:`SKETCH_SAMPLE`, so the sketches persisted
    at that rate (:mod:`.similarity`) hold every piece any rate keeps: ``h % rate == 0``
    implies ``h % SKETCH_SAMPLE == 0``. (Up to 512 MiB this is the rate used before the
    index; above it, a rate of 6, 10, ... became 8, 12, ...: slightly fewer pieces.)
    """
    return max(SKETCH_SAMPLE, -(-sketched // (2 * SKETCH_BUDGET)) * SKETCH_SAMPLE)


def _sketchable(f: FileEntry) -> bool:
    return 0 < f.size <= SKETCH_MAX_FILE


def name_rank(size: int, path: str) -> tuple[float, str]:
    """How files of A that share a target's name key and nothing else rank, best first."""
    return (-(1 + 0.01 * size), path)


class SimilarityIndex:
    """Finds, for a file of B, the files of A it most likely evolved from.

    With ``sketches`` (the repository's persisted index, :mod:`.similarity`), A's sketches
    are looked up there, and only the files of A that it lacks are read (once, ever); the
    new files' sketches too. Without it, or if it fails with an SQLite error, every file of
    A is read and sketched here, as before the index. Both ways give the same candidates:
    the index's answers are kept to the files of A and counted per file of A, exactly as the
    in-memory table counts them, so the pack's bytes do not depend on the index's history.

    ``targets``: the files of B that will ask for candidates; only their chunks, paths and
    names are indexed (by_chunk, by_path, by_name), so memory follows the change, not A.
    None: all of A's.
    """

    def __init__(
        self,
        old: Manifest | None,
        read_chunk: ReadChunk,
        sketches: SketchIndex | None = None,
        targets: list[FileEntry] | None = None,
    ) -> None:
        self.files: list[FileEntry] = list(old.files) if old else []
        self.by_chunk: dict[str, list[int]] = defaultdict(list)
        self.by_path: dict[str, int] = {}
        self.by_name: dict[str, list[int]] = defaultdict(list)
        self.by_sha: dict[str, list[int]] = defaultdict(list)
        self.read_chunk = read_chunk
        self.sample = sketch_sample(sum(f.size for f in self.files if _sketchable(f)))
        interest = {h for f in targets for h, _ in f.chunks} if targets is not None else None
        paths = {f.path for f in targets} if targets is not None else None
        names = {name_key(f.path) for f in targets} if targets is not None else None
        for i, f in enumerate(self.files):
            if paths is None or f.path in paths:
                self.by_path[f.path] = i
            key = name_key(f.path)
            if names is None or key in names:
                self.by_name[key].append(i)
            if _sketchable(f):
                self.by_sha[f.sha256].append(i)
            for h, _ in f.chunks:
                if interest is not None and h not in interest:
                    continue
                lst = self.by_chunk[h]
                if not lst or lst[-1] != i:
                    lst.append(i)
        self._by_piece: dict[int, list[int]] | None = None
        self.sketches = sketches
        if sketches is not None and self.files:
            try:
                sketches.ensure(self.files, read_chunk, remember=True)
                if targets:
                    sketches.ensure(targets, read_chunk)
            except sqlite3.Error as exc:
                self._bypass(exc)

    def _bypass(self, exc: sqlite3.Error) -> None:
        from .similarity import is_damage

        log.warning("similarity index failed (%s); sketching the old release instead", exc)
        if self.sketches is not None and is_damage(exc):
            self.sketches.remove_files()  # rebuilt by the next build or publish
        self.sketches = None

    def _in_memory(self) -> dict[int, list[int]]:
        """Every file of A read and sketched: the way without (or past) the index."""
        if self._by_piece is None:
            self._by_piece = defaultdict(list)
            for i, f in enumerate(self.files):
                if _sketchable(f):
                    for piece in sketch(_file_bytes(f, self.read_chunk), self.sample):
                        lst = self._by_piece[piece]
                        if len(lst) <= SKETCH_COMMON:
                            lst.append(i)
        return self._by_piece

    def _sketch_of(self, new: FileEntry) -> set[int]:
        if self.sketches is not None:
            try:
                values = self.sketches.get(new.sha256)
                if values is None:
                    values = sketch(_file_bytes(new, self.read_chunk), SKETCH_SAMPLE)
                    self.sketches.put(new.sha256, values)
                return {h for h in values if h % self.sample == 0}
            except sqlite3.Error as exc:
                self._bypass(exc)
        return sketch(_file_bytes(new, self.read_chunk), self.sample)

    def _owners(self, piece: int) -> list[int]:
        """Files of A whose sketch holds ``piece``, in A's order; more than SKETCH_COMMON of
        them (boilerplate) are cut at SKETCH_COMMON + 1 and then ignored by the caller."""
        if self.sketches is not None:
            try:
                out: list[int] = []
                for sha in self.sketches.owners(piece):
                    out.extend(self.by_sha.get(sha, ()))
                    if len(out) > SKETCH_COMMON:
                        break
                return sorted(out)
            except sqlite3.Error as exc:
                self._bypass(exc)
        return self._in_memory().get(piece, [])

    def candidates(self, new: FileEntry) -> list[int]:
        if not self.files:
            return []
        score: dict[int, float] = defaultdict(float)
        for h, n in new.chunks:
            sharing = self.by_chunk.get(h, ())
            if len(sharing) <= SKETCH_COMMON:  # more: boilerplate (a header every page has)
                for i in sharing:
                    score[i] += n
        if _sketchable(new):
            for piece in self._sketch_of(new):
                owners = self._owners(piece)
                if owners and len(owners) <= SKETCH_COMMON:
                    for i in owners:
                        score[i] += SKETCH_AVG * self.sample
        same = self.by_path.get(new.path)
        if same is not None:
            score[same] += 1 + 0.05 * self.files[same].size
        for i in self.by_name.get(name_key(new.path), ()):
            score[i] += 1 + 0.01 * self.files[i].size
        # the best CANDIDATES by score, ties by path (what sorting them all and cutting gave:
        # a name like page-#.html can match every file of A)
        return heapq.nsmallest(CANDIDATES, score, key=lambda i: (-score[i], self.files[i].path))


#: owners of one piece past which the index's answer is held as an :class:`IdSet`
HEAVY_PIECE = 4096


class StreamedSimilarity(SimilarityIndex):
    """:class:`SimilarityIndex` over an old release walked from its pieces, holding only
    the files of A that can score for a target, not A.

    The candidates are the same: a file of A scores for a target only by sharing a chunk
    with it, a sketch piece, its path or its name key, and all but the name are known
    from the file itself as A streams past (the targets' chunks, paths and pieces, and the
    index's owners of those pieces, are looked up before the walk), so those files are
    kept whole. A name key can match every file of A (``page-#.html``); of the files that
    share a name and nothing else, only the best :data:`CANDIDATES` by (size, path) can
    win, so those are kept per name and the rest dropped. ``self.files`` maps an index
    in A to its entry, for the files kept.

    ``old_files`` walks A again if the index fails part way (the in-memory sketches then
    come from a walk that reads A's content, as :class:`SimilarityIndex` does); files
    that become candidates only then may rank against a name group cut too short (a
    degraded build: the pack still applies to exactly B).
    """

    def __init__(
        self,
        old_files: Callable[[], Iterator[FileEntry]],
        release_key: bytes,
        read_chunk: ReadChunk,
        sketches: SketchIndex | None,
        targets: list[FileEntry],
        skim: Skimmer | None = None,
        leaves: Callable[[list[PieceRef]], list[list[FileEntry]]] | None = None,
    ) -> None:
        self.read_chunk = read_chunk
        self.sketches = sketches
        self._walk = old_files
        self.by_chunk = defaultdict(list)
        self.by_path = {}
        self.by_name = defaultdict(list)
        self.by_sha = defaultdict(list)
        self._by_piece = None
        self.kept: dict[int, FileEntry] = {}
        self._targets = targets
        self._piece_owners: dict[int, list[int]] = {}
        self._count = 0
        #: A's leaves by their summaries (:mod:`.skim`), with the index only
        self.skim = skim if sketches is not None and leaves is not None else None
        self._leaves = leaves or (lambda refs: [])
        sketchy = [t for t in targets if _sketchable(t)]
        light: dict[str, list[int]] = defaultdict(list)
        heavy: list[tuple[int, Any]] = []
        if sketches is not None and sketchy:
            try:
                sketches.ensure_stream(old_files(), read_chunk, release_key)
                sketches.ensure(targets, read_chunk)
                light, heavy = self._owner_shas(sketchy)
            except sqlite3.Error as exc:
                self._bypass(exc)
        pieces: set[int] = set()
        if self.sketches is None and sketchy:
            pieces = self._target_pieces()
        try:
            self._scan(old_files(), light, heavy, pieces)
        except sqlite3.Error as exc:
            if self.skim is None:
                raise
            log.warning("leaf summaries failed (%s); walking the old release instead", exc)
            self.skim = None
            self.by_chunk.clear()
            self.by_path.clear()
            self.by_name.clear()
            self.kept.clear()
            for lst in self._piece_owners.values():
                lst.clear()
            self._scan(old_files(), light, heavy, pieces)

    # mypy: the parent's ``files`` is a list; here it is the kept entries by index in A
    @property  # type: ignore[override]
    def files(self) -> dict[int, FileEntry]:
        return self.kept

    @files.setter
    def files(self, value: Any) -> None:
        self.kept = dict(enumerate(value)) if isinstance(value, list) else value

    def _owner_shas(self, sketchy: list[FileEntry]) -> tuple[dict[str, list[int]], Any]:
        from .idset import IdSet

        assert self.sketches is not None
        light: dict[str, list[int]] = defaultdict(list)
        heavy: list[tuple[int, IdSet]] = []
        seen: set[int] = set()
        for t in sketchy:
            for piece in sorted(self.sketches.get(t.sha256) or ()):
                if piece in seen:
                    continue
                seen.add(piece)
                self._piece_owners[piece] = []
                owners: list[str] = []
                ids: IdSet | None = None
                for sha in self.sketches.owners(piece):
                    if ids is not None:
                        ids.add(sha)
                        continue
                    owners.append(sha)
                    if len(owners) > HEAVY_PIECE:
                        ids = IdSet()
                        ids.update(owners)
                        owners = []
                if ids is not None:
                    heavy.append((piece, ids))
                for sha in owners:
                    light[sha].append(piece)
        return light, heavy

    def _target_pieces(self) -> set[int]:
        out: set[int] = set()
        for t in self._targets:
            if _sketchable(t):
                out |= sketch(_file_bytes(t, self.read_chunk), SKETCH_SAMPLE)
        return out

    def _scan(
        self,
        files: Iterator[FileEntry],
        light: dict[str, list[int]],
        heavy: list[tuple[int, Any]],
        pieces: set[int],
    ) -> None:
        """The walk of A: what scores for a target, the best name-only files, the counts.

        With :attr:`skim` (and no in-memory ``pieces``), A's leaves are skimmed by their
        summaries and only those that can hold a file scoring for a target are decoded;
        the others add their counts and their best files by name. The same answer: a file
        of a leaf the probe misses shares no chunk, path or scoring piece with a target.

        A file is kept for a chunk or a piece only while it has room for it (at most
        :data:`SKETCH_COMMON` + 1 files are listed, past which it scores nothing, as
        :meth:`SimilarityIndex.candidates` says): a file of A sharing only boilerplate with
        a target competes on its name like any other, so a header every page starts with
        does not keep all of A in memory (it kept 1,200 files of 1,200; now 20).
        """
        interest = {h for f in self._targets for h, _ in f.chunks}
        paths = {f.path for f in self._targets}
        names = {name_key(f.path) for f in self._targets}
        #: name key -> best name-only files: (rank, index in A, entry or None, leaf, offset)
        best: dict[str, list[tuple[tuple[float, str], int, FileEntry | None, Any, int]]]
        best = defaultdict(list)
        sketched = 0
        count = 0
        owners = self._piece_owners

        def visit(i: int, f: FileEntry) -> None:
            sk = _sketchable(f)
            special = False
            if f.path in paths:
                self.by_path[f.path] = i
                special = True
            for h, _ in f.chunks:
                if h in interest:
                    lst = self.by_chunk[h]
                    if lst and lst[-1] == i:
                        continue  # the chunk twice in one file
                    if len(lst) <= SKETCH_COMMON:
                        lst.append(i)
                        special = True
            if sk and (light or heavy):
                owned = list(light.get(f.sha256, ()))
                owned += [p for p, ids in heavy if f.sha256 in ids]
                for p in owned:
                    lst = owners[p]
                    if len(lst) <= SKETCH_COMMON:
                        lst.append(i)
                        special = True
            if sk and pieces:
                by_piece = self._by_piece if self._by_piece is not None else defaultdict(list)
                self._by_piece = by_piece
                for p in sketch(_file_bytes(f, self.read_chunk), SKETCH_SAMPLE) & pieces:
                    lst = by_piece[p]
                    if len(lst) <= SKETCH_COMMON:
                        lst.append(i)
                        special = True
            key = name_key(f.path)
            if key in names:
                if special:
                    self.by_name[key].append(i)
                else:
                    rank(key, (name_rank(f.size, f.path), i, f, None, 0))
            if special:
                self.kept[i] = f

        def rank(key: str, item: tuple[tuple[float, str], int, Any, Any, int]) -> None:
            top = best[key]
            top.append(item)
            if len(top) > CANDIDATES:
                top.sort(key=lambda x: x[0])
                del top[CANDIDATES:]

        if self.skim is not None and not pieces:
            from .skim import id_key, path_key

            by_path = {path_key(p) for p in paths}

            def full() -> int:
                """How many chunks and pieces have all the owners they can list."""
                n = sum(len(lst) > SKETCH_COMMON for lst in self.by_chunk.values())
                return n + sum(len(lst) > SKETCH_COMMON for lst in owners.values())

            def current() -> set[int]:
                """What a leaf must hold to be decoded: a target's path, a chunk or the
                content of an owner of a piece that can still list files."""
                chunks = {h for h in interest if len(self.by_chunk.get(h, ())) <= SKETCH_COMMON}
                still = {p for p, lst in owners.items() if len(lst) <= SKETCH_COMMON}
                shas = {sha for sha, ps in light.items() if still.intersection(ps)}
                return by_path | {id_key(h) for h in chunks} | {id_key(sha) for sha in shas}

            probes = current()
            active = [(p, ids) for p, ids in heavy if len(owners[p]) <= SKETCH_COMMON]
            n_full = full()

            def wanted(s: Any) -> bool:
                if s.hits(probes):
                    return True
                return any(ids.has_prefix(k) for _, ids in active for k in s.keys)

            for leaf in self.skim(wanted):
                count += leaf.summary.files
                sketched += leaf.summary.sketched
                if leaf.entries is not None:
                    for offset, f in enumerate(leaf.entries):
                        visit(leaf.first + offset, f)
                    if full() != n_full:  # a chunk or piece filled up: probe less
                        n_full = full()
                        probes = current()
                        active = [(p, ids) for p, ids in active if len(owners[p]) <= SKETCH_COMMON]
                    continue
                for key, tops in leaf.summary.names.items():
                    if key in names:
                        for size, path, at in tops:
                            rank(key, (name_rank(size, path), leaf.first + at, None, leaf.ref, at))
        else:
            for i, f in enumerate(files):
                count += 1
                if _sketchable(f):
                    sketched += f.size
                visit(i, f)
        late = {r.sha256: r for top in best.values() for _, _, e, r, _ in top if e is None}
        entries = dict(zip(late, self._leaves(list(late.values())), strict=True)) if late else {}
        for key, top in best.items():
            for _, i, got, ref, offset in top:
                self.by_name[key].append(i)
                self.kept[i] = got if got is not None else entries[ref.sha256][offset]
            self.by_name[key].sort()
        self._count = count
        self.sample = sketch_sample(sketched)
        if self._by_piece is None and pieces:
            self._by_piece = defaultdict(list)

    def _in_memory(self) -> dict[int, list[int]]:
        if self._by_piece is None:
            pieces = self._target_pieces()
            self._by_piece = defaultdict(list)
            for i, f in enumerate(self._walk()):
                if _sketchable(f):
                    for p in sketch(_file_bytes(f, self.read_chunk), SKETCH_SAMPLE) & pieces:
                        lst = self._by_piece[p]
                        if len(lst) <= SKETCH_COMMON:
                            lst.append(i)
                            self.kept.setdefault(i, f)
        return self._by_piece

    def _owners(self, piece: int) -> list[int]:
        if self.sketches is not None:
            return self._piece_owners.get(piece, [])
        return self._in_memory().get(piece, [])

    def candidates(self, new: FileEntry) -> list[int]:
        if not self._count:
            return []
        return super().candidates(new)


def _base_window(
    old: FileEntry, start: int, length: int, new_size: int
) -> Iterator[tuple[int, str, int]]:
    """Chunks of ``old`` (index, sha, size) around the position of ``start`` in the new file."""
    if old.size <= WHOLE_BASE_FILE:
        for i, (h, n) in enumerate(old.chunks):
            yield i, h, n
        return
    centre = start * old.size // max(1, new_size)
    lo, hi = centre - NEIGHBOURHOOD, centre + length + NEIGHBOURHOOD
    pos = 0
    for i, (h, n) in enumerate(old.chunks):
        if pos + n > lo and pos < hi:
            yield i, h, n
        pos += n


def plan_groups(
    old: Manifest | None,
    new: Manifest,
    read_chunk: ReadChunk,
    sketches: SketchIndex | None = None,
) -> Iterator[Group]:
    """Group the chunks of ``new`` that ``old`` lacks, each with a base of old chunks.

    The chunks sent are exactly :func:`packs.changes.missing_chunks` of the two manifests,
    each once, in the order ``new`` first uses them. ``sketches``: the repository's
    similarity index, which spares reading A to choose bases (same choices either way).
    """
    wanted_chunks = missing_chunks(old, new)
    targets = [
        (fi, f) for fi, f in enumerate(new.files) if any(h in wanted_chunks for h, _ in f.chunks)
    ]
    index = SimilarityIndex(old, read_chunk, sketches, [f for _, f in targets])
    return plan_target_groups(index, targets, wanted_chunks)


class FirstCarry:
    """The chunks a pack from nothing has not carried yet: all of B's, until each is sent.

    A first pack wants every chunk of B, so a dict of them (what an update pack holds, a
    few changed files' worth) would hold the whole channel: 1,000,000 files took a first
    pack past 800 MiB. This records the other side, what has been carried, in a private
    temporary SQLite table on disk, whose page cache is all it keeps in memory. Speaks the
    two operations :func:`plan_target_groups` uses on ``wanted_chunks``."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("")  # "": a private temporary database, spilled to disk
        self._db.execute("CREATE TABLE carried (sha BLOB PRIMARY KEY) WITHOUT ROWID")

    def __contains__(self, sha: object) -> bool:
        assert isinstance(sha, str)
        row = self._db.execute("SELECT 1 FROM carried WHERE sha = ?", (bytes.fromhex(sha),))
        return row.fetchone() is None

    def pop(self, sha: str, default: int | None = None) -> int | None:
        """Mark ``sha`` carried: 1 the first time (it is wanted), then ``default``."""
        cur = self._db.execute("INSERT OR IGNORE INTO carried VALUES (?)", (bytes.fromhex(sha),))
        return 1 if cur.rowcount == 1 else default

    def close(self) -> None:
        self._db.close()


def plan_target_groups(
    index: SimilarityIndex,
    targets: Iterable[tuple[int, FileEntry]],
    wanted_chunks: dict[str, int] | FirstCarry,
) -> Iterator[Group]:
    """:func:`plan_groups` given what it derives from B: the files of B that hold a chunk
    A lacks, with their index in B, in B's order, and those chunks (``wanted_chunks``, as
    :func:`packs.changes.missing_chunks` gives them; emptied as they are grouped). What
    a caller holding only the change between A and B passes (``build_pack``), with a
    :class:`StreamedSimilarity` over A. From nothing, every file of B as it streams and a
    :class:`FirstCarry`."""
    group = Group()
    for fi, f in targets:
        if not any(h in wanted_chunks for h, _ in f.chunks):
            continue  # an earlier file of B carries them all
        cands = [(i, index.files[i]) for i in index.candidates(f)]
        pos = 0
        for ci, (h, n) in enumerate(f.chunks):
            start, pos = pos, pos + n
            if wanted_chunks.pop(h, None) is None:
                continue  # A has it, or an earlier group already carries it
            wanted = [
                (ai, bi, bh, bn)
                for ai, cand in cands
                for bi, bh, bn in _base_window(cand, start, n, f.size)
                if bh not in group._base_ids
            ]
            extra = sum(bn for *_, bn in wanted)
            if group.targets and (
                group.base_bytes + extra > GROUP_BASE or group.target_bytes >= GROUP_TARGET
            ):
                yield group
                group = Group()
            for ai, bi, bh, bn in wanted:
                if group.base_bytes + bn > GROUP_BASE:
                    break
                group.add_base(ai, bi, bh, bn)
            group.add_target(fi, ci, h, n)
    if group.targets:
        yield group


def _looks_compressible(target: bytes | bytearray) -> bool:
    """A level-1 probe of a few samples of ``target``, without the base (cheap)."""
    if len(target) <= PROBE_SAMPLES * PROBE_SAMPLE:
        sample = target
    else:
        step = (len(target) - PROBE_SAMPLE) // (PROBE_SAMPLES - 1)
        sample = b"".join(target[i * step : i * step + PROBE_SAMPLE] for i in range(PROBE_SAMPLES))
    probe = zstd.ZstdCompressor(level=1).compress(sample)
    return len(probe) < PROBE_COMPRESSIBLE * len(sample)


def compress_group(base: bytes | bytearray, target: bytes | bytearray, level: int = LEVEL) -> bytes:
    """``target`` as one zstd frame with ``base`` as its prefix, at ``level`` unless the
    data does not compress.

    Data that a sampled level-1 probe cannot shrink gets a whole fast pass with its base
    (a changed video still matches its old version there); if that saves under 3 %, the
    fast frame is the payload. Both passes are deterministic, so pack bytes stay a function
    of the content.
    """
    window_log = min(MAX_WINDOW_LOG, max(20, math.ceil(math.log2(len(base) + len(target) + 1))))
    if level > FAST_LEVEL and target and not _looks_compressible(target):
        fast = compress_with_prefix(base, target, FAST_LEVEL, window_log)
        if len(fast) >= INCOMPRESSIBLE * len(target):
            return fast
    # past 256 KiB zstd's strong levels take their largest tables (below, their own
    # smaller ones, which an explicit value would override)
    large = len(target) > 256 * 1024
    chain_log = NO_BASE_CHAIN_LOG if not base and large and level > FAST_LEVEL else 0
    return compress_with_prefix(base, target, level, window_log, chain_log)


def decompress_group(base: bytes, payload: bytes, target_len: int, what: str) -> bytes:
    try:
        params = zstd.get_frame_parameters(payload)
    except zstd.ZstdError:
        raise VerificationError(f"{what}: not a zstd frame") from None
    if params.content_size != target_len:
        raise VerificationError(f"{what}: declares {params.content_size} bytes, not {target_len}")
    kwargs: dict[str, Any] = {"max_window_size": 1 << MAX_WINDOW_LOG}
    if base:
        kwargs["dict_data"] = zstd.ZstdCompressionDict(base, dict_type=zstd.DICT_TYPE_RAWCONTENT)
    try:
        out = zstd.ZstdDecompressor(**kwargs).decompress(payload, max_output_size=target_len)
    except zstd.ZstdError as exc:
        raise VerificationError(f"{what}: cannot be decompressed ({exc})") from None
    if len(out) != target_len:
        raise VerificationError(f"{what}: {len(out)} bytes instead of {target_len}")
    return out


def split_targets(
    data: bytes, targets: list[tuple[str, int]], what: str
) -> Iterator[tuple[str, memoryview]]:
    """Cut a decompressed group into its chunks, checking each one's SHA-256."""
    view = memoryview(data)
    pos = 0
    for sha, n in targets:
        piece = view[pos : pos + n]
        pos += n
        if hashlib.sha256(piece).hexdigest() != sha:
            raise VerificationError(f"{what}: chunk {sha[:16]} does not match its SHA-256")
        yield sha, piece


def manifest_delta(old: bytes | None, new: bytes, level: int = LEVEL) -> bytes:
    return compress_group(old or b"", new, level)
