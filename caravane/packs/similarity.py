"""The persisted sketches that let a pack build find delta bases without reading release A.

Choosing a delta base (:mod:`.delta`) compares a new file's sketch (a sample of hashes of
small content-defined pieces) with the sketches of every file of the old release. Computed
on the spot, that meant reading, decompressing and hashing all of A for every pack: a
one-file change in a channel of 100,000 files cost as much as the whole channel. A file's
sketch is a function of its content alone, so it is computed once, when the release that
brings the content is committed (or when a build first needs it), and kept here:

- ``files``: file sha256 -> its sketch at the base sample (:data:`delta.SKETCH_SAMPLE`);
- ``pieces``: sketch value -> the files holding it, so a build looks up the candidates of
  a new file's pieces instead of holding A's sketches in memory;
- ``complete``: digests of whole sets of contents (releases) known to be all here.

The index spans the repository's whole history; :class:`delta.SimilarityIndex` keeps only
the files of A in what it finds, and counts them as it always did, so the bases chosen (and
the pack's bytes) are the same whether the index is warm, cold, rebuilt or bypassed. It is
a cache: a damaged file is removed and rebuilt, and any SQLite error during a build makes
that build sketch A itself, as before.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from . import sql_in
from .sketch_helper import HelperError, SketchHelper
from .sketches import SKETCH_MAX_FILE, SKETCH_SAMPLE, sketch

if TYPE_CHECKING:
    from caravane.protocol.metadata import FileEntry

    from .idset import IdSet
    from .skim import LeafSummaries

log = logging.getLogger(__name__)

INDEX_RELPATH = "index/similarity.sqlite"
#: what the stored values depend on; a different value (new parameters) empties the index
PARAMS = "blake2b8/fastcdc-128-512-4096/sample-4"
BATCH = 500  # shas per IN (...) query, files per transaction
WRITE_BATCH = 5000  # files per transaction of a publish's sketches (InlineSketches)
#: contents sent to the sketching helper at once (files, bytes: whichever comes first)
SEND_BATCH, SEND_BYTES = 1000, 2 * 1024 * 1024
PRUNE_PAGE = 5000  # rows looked at per transaction when pruning
_SIGN = 1 << 63
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    sha BLOB NOT NULL UNIQUE,
    pieces BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS pieces (
    piece INTEGER NOT NULL,
    file INTEGER NOT NULL,
    PRIMARY KEY (piece, file)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS complete (digest BLOB PRIMARY KEY) WITHOUT ROWID;
"""

ReadChunk = Callable[[str, int], bytes]


def _prefix(sha: bytes) -> int:
    """A binary SHA-256's first 64 bits, as :class:`.idset.IdSet` keeps ids."""
    return int.from_bytes(sha[:8], "big")


def _signed(h: int) -> int:
    """A 64-bit unsigned sketch value as SQLite's signed INTEGER (order kept)."""
    return h - _SIGN


def _pack(values: set[int]) -> bytes:
    return struct.pack(f"<{len(values)}Q", *sorted(values))


def _unpack(blob: bytes) -> set[int]:
    return set(struct.unpack(f"<{len(blob) // 8}Q", blob))


def sketchable(f: FileEntry) -> bool:
    """Files the similarity search sketches (empty and huge ones are left out)."""
    return 0 < f.size <= SKETCH_MAX_FILE


def is_damage(exc: sqlite3.Error) -> bool:
    """A file SQLite cannot read as a database (not a lock, not a full disk)."""
    return type(exc) is sqlite3.DatabaseError


class SketchIndex:
    """One connection to ``<repo>/index/similarity.sqlite`` (open, use, close)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._connect()
        except sqlite3.Error as exc:
            if not is_damage(exc):
                raise
            log.warning("%s: damaged (%s); rebuilding it", self.path, exc)
            self.remove_files()
            self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=wal")
            db.execute("PRAGMA synchronous=normal")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'params'").fetchone()
            if row is None or row[0] != PARAMS:
                with db:
                    db.execute("DELETE FROM complete")
                    db.execute("DELETE FROM pieces")
                    db.execute("DELETE FROM files")
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('params', ?)", (PARAMS,))
        except BaseException:
            db.close()
            raise
        return db

    def leaf_summaries(self) -> LeafSummaries:
        """The summaries of file-list leaves kept beside the sketches (:mod:`.skim`)."""
        from .skim import LeafSummaries

        return LeafSummaries(self._db)

    def remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SketchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def known(self, shas: Iterable[str]) -> set[str]:
        """Which of ``shas`` have a sketch here."""
        out: set[str] = set()
        for batch in sql_in.parts([bytes.fromhex(s) for s in shas], BATCH):
            marks = sql_in.marks(batch)
            for (sha,) in self._db.execute(f"SELECT sha FROM files WHERE sha IN ({marks})", batch):
                out.add(sha.hex())
        return out

    def ensure(
        self, files: Iterable[FileEntry], read_chunk: ReadChunk, remember: bool = False
    ) -> int:
        """Sketch the files whose content has no sketch here yet; returns how many were.

        ``remember``: note that this whole set of contents is here (a release's files), so
        the next call with the same set (the build of a pack from that release) skips even
        looking them up: 100,000 lookups were most of what a warm build still cost.
        Sketches are never removed, so the note stays true.
        """
        wanted: dict[str, FileEntry] = {}
        for f in files:
            if sketchable(f):
                wanted.setdefault(f.sha256, f)
        digest = hashlib.sha256("".join(sorted(wanted)).encode()).digest()
        if remember:
            row = self._db.execute("SELECT 1 FROM complete WHERE digest = ?", (digest,))
            if row.fetchone() is not None:
                return 0
        have = self.known(wanted)
        missing = [s for s in wanted if s not in have]
        for i in range(0, len(missing), BATCH):
            rows = []
            for sha in missing[i : i + BATCH]:
                f = wanted[sha]
                data = b"".join(read_chunk(h, n) for h, n in f.chunks)
                rows.append((sha, sketch(data, SKETCH_SAMPLE)))
            with self._db:
                for sha, values in rows:
                    self._insert(sha, values)
        if remember:
            with self._db:
                self._db.execute("INSERT OR IGNORE INTO complete VALUES (?)", (digest,))
        return len(missing)

    def prune(self, contents: IdSet, pieces: IdSet) -> tuple[int, int]:
        """Remove the sketches of contents not in ``contents`` and the leaf summaries of
        pieces not in ``pieces`` (collection's sets of what retained releases hold);
        returns how many of each. A page of rows at a time, so neither the rows nor the
        dead are held whole; what is kept is exactly what some retained release can ask
        for, so every ``complete`` note about a retained release stays true."""
        files = leaves = 0
        last = -1
        while True:
            rows = self._db.execute(
                "SELECT id, sha, pieces FROM files WHERE id > ? ORDER BY id LIMIT ?",
                (last, PRUNE_PAGE),
            ).fetchall()
            if not rows:
                break
            last = rows[-1][0]
            dead = [(i, blob) for i, sha, blob in rows if not contents.has_prefix(_prefix(sha))]
            with self._db:
                for i, blob in dead:
                    self._db.executemany(
                        "DELETE FROM pieces WHERE piece = ? AND file = ?",
                        ((_signed(h), i) for h in _unpack(blob)),
                    )
                    self._db.execute("DELETE FROM files WHERE id = ?", (i,))
            files += len(dead)
        from .skim import LeafSummaries

        LeafSummaries(self._db)  # the table, for an index no build has used yet
        after = b""
        while True:
            shas = [
                sha
                for (sha,) in self._db.execute(
                    "SELECT sha FROM leaves WHERE sha > ? ORDER BY sha LIMIT ?",
                    (after, PRUNE_PAGE),
                )
            ]
            if not shas:
                break
            after = shas[-1]
            dead_leaves = [(sha,) for sha in shas if not pieces.has_prefix(_prefix(sha))]
            with self._db:
                self._db.executemany("DELETE FROM leaves WHERE sha = ?", dead_leaves)
            leaves += len(dead_leaves)
        return files, leaves

    def note_complete(self, key: bytes) -> None:
        """Note that every sketchable file of the release ``key`` names is here (a caller
        that sketched what it changed from a release already complete)."""
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO complete VALUES (?)", (key,))

    def is_complete(self, key: bytes) -> bool:
        """Whether :meth:`ensure_stream` finished for the release ``key`` names."""
        row = self._db.execute("SELECT 1 FROM complete WHERE digest = ?", (key,))
        return row.fetchone() is not None

    def ensure_stream(self, files: Iterable[FileEntry], read_chunk: ReadChunk, key: bytes) -> int:
        """:meth:`ensure` for a release walked from its pieces, a batch at a time (nothing
        per file held); ``key`` names the release (its manifest's hash) in the ``complete``
        notes, where :meth:`ensure` names a set of contents by the hash of all its ids,
        which needs them all at once. Returns how many files were sketched."""
        if self.is_complete(key):
            return 0
        done = 0
        batch: dict[str, FileEntry] = {}

        def flush() -> int:
            have = self.known(batch)
            rows = []
            for sha, f in batch.items():
                if sha not in have:
                    data = b"".join(read_chunk(h, n) for h, n in f.chunks)
                    rows.append((sha, sketch(data, SKETCH_SAMPLE)))
            with self._db:
                for sha, values in rows:
                    self._insert(sha, values)
            batch.clear()
            return len(rows)

        for f in files:
            if sketchable(f):
                batch.setdefault(f.sha256, f)
                if len(batch) >= BATCH:
                    done += flush()
        if batch:
            done += flush()
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO complete VALUES (?)", (key,))
        return done

    def put(self, sha: str, values: set[int]) -> None:
        self.put_many([(sha, values)])

    def put_many(self, rows: Iterable[tuple[str, set[int]]]) -> None:
        """:meth:`put` for each row, in one transaction."""
        with self._db:
            for sha, values in rows:
                self._insert(sha, values)

    def _insert(self, sha: str, values: set[int]) -> None:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO files (sha, pieces) VALUES (?, ?)",
            (bytes.fromhex(sha), _pack(values)),
        )
        if cur.rowcount == 1:  # another writer may have got there first: then its rows stand
            file_id = cur.lastrowid
            self._db.executemany(
                "INSERT OR IGNORE INTO pieces VALUES (?, ?)",
                ((_signed(h), file_id) for h in values),
            )

    def get(self, sha: str) -> set[int] | None:
        row = self._db.execute(
            "SELECT pieces FROM files WHERE sha = ?", (bytes.fromhex(sha),)
        ).fetchone()
        return None if row is None else _unpack(row[0])

    def owners(self, piece: int) -> Iterator[str]:
        """The sha256 of every file, in any release, whose sketch holds ``piece``."""
        for (sha,) in self._db.execute(
            "SELECT f.sha FROM pieces p JOIN files f ON f.id = p.file WHERE p.piece = ?",
            (_signed(piece),),
        ):
            yield sha.hex()


class InlineSketches:
    """Sketches of the contents a publish reads anyway, made while their bytes are in hand.

    The index used to be fed after the release was signed, by reading every new content
    back from the store, decompressing and sketching it: more than half of a first publish
    of small files (12 of 22 s at 100,000 files). A publish hands each file it reads here
    instead (:class:`~caravane.packs.ingest.Ingest` ``on_content``), and the commit asks
    the index only about what is still missing. A cache, so an SQLite error stops the
    feeding with a warning, and the commit's own pass fills the gap.

    Contents go ``SEND_BATCH`` files (or ``SEND_BYTES``) at a time. The first full batch
    starts a helper process (:mod:`.sketch_helper`) that sketches and writes each batch
    while the publish reads on, one batch in flight: sketching in the publishing process
    cost 35 us a file there (14 us alone), since every line of Python of a publish shares
    one interpreter lock with the reading and compressing threads. A publish smaller than
    one batch, or one whose helper cannot start or fails, sketches in its own process.
    Rows go in sorted: SQLite's B-tree work on random keys is a third less in sorted
    batches of 5,000.
    """

    def __init__(self, index: SketchIndex) -> None:
        self._index = index
        self._rows: list[tuple[str, bytes]] = []
        self._bytes = 0
        self._may_start = True
        self._helper: SketchHelper | None = None
        self.failed = False
        self.sketched = 0

    def add(self, sha: str, data: bytes) -> None:
        """A content read in full: ``sha`` is its SHA-256 (hex)."""
        if self.failed or not 0 < len(data) <= SKETCH_MAX_FILE:
            return
        self._rows.append((sha, data))
        self._bytes += len(data)
        if len(self._rows) >= SEND_BATCH or self._bytes >= SEND_BYTES:
            self._send()

    def _send(self) -> None:
        rows, self._rows, self._bytes = self._rows, [], 0
        self._wait()
        if not rows or self.failed:
            return
        helper = self._start()
        if helper is not None:
            try:
                helper.submit(rows)
                return
            except HelperError as exc:
                self._lost(exc)
        self._write(rows)

    def _start(self) -> SketchHelper | None:
        if self._helper is None and self._may_start:
            self._may_start = False  # one try per publish
            try:
                self._helper = SketchHelper(self._index.path)
            except HelperError as exc:
                log.warning("sketching helper not started (%s); sketching here", exc)
        return self._helper

    def _wait(self) -> None:
        if self._helper is None:
            return
        try:
            self.sketched += self._helper.result()
        except HelperError as exc:  # killed, out of memory, an SQLite error: a cache
            # the batch in flight is lost; the commit asks the index what it lacks
            self._lost(exc)

    def _lost(self, exc: HelperError) -> None:
        log.warning("%s: sketching helper failed (%s)", self._index.path, exc)
        self._stop()

    def _write(self, rows: list[tuple[str, bytes]]) -> None:
        try:
            self._index.put_many(sketched_rows(rows))
            self.sketched += len(rows)
        except sqlite3.Error as exc:
            log.warning("%s: sketches not written while publishing (%s)", self._index.path, exc)
            self.failed = True

    def _stop(self) -> None:
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.close()

    def flush(self) -> None:
        """Write what is held and wait for the helper (before the index is read)."""
        if self._helper is not None:
            self._send()
            if self._helper is not None:
                self._wait()
                try:
                    self._helper.submit(None)
                except HelperError as exc:
                    self._lost(exc)
                self._wait()
        rows, self._rows, self._bytes = self._rows, [], 0
        if rows and not self.failed:
            self._write(rows)

    def close(self) -> None:
        """:meth:`flush`, then stop the helper."""
        try:
            self.flush()
        finally:
            self._stop()


def sketched_rows(rows: list[tuple[str, bytes]]) -> list[tuple[str, set[int]]]:
    """(sha, sketch) for each (sha, content), sorted: what :meth:`SketchIndex.put_many` takes."""
    return sorted((sha, sketch(data, SKETCH_SAMPLE)) for sha, data in rows)


def open_index(repo: Path) -> SketchIndex | None:
    """The repository's sketch index, or None (with a warning) where it cannot be opened."""
    try:
        return SketchIndex(Path(repo) / INDEX_RELPATH)
    except (sqlite3.Error, OSError) as exc:
        log.warning("%s: similarity index unavailable (%s); sketching A instead", repo, exc)
        return None


__all__ = [
    "INDEX_RELPATH",
    "InlineSketches",
    "SketchIndex",
    "is_damage",
    "open_index",
    "sketchable",
]
