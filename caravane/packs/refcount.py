"""What a centre's manifests still name, kept as counts, so that collection costs the change.

A centre collects after every activation. Marking what its manifests name read every piece
of every kept release, then walked every object id of the store: at a million files, tens
of seconds for a one-file update, a cost that grew with the channel. The counts here are
kept instead, in ``live.sqlite`` beside the store, the way a copy-on-write filesystem counts
the blocks its snapshots share:

- a piece's count is how many counted manifests and live nodes name it; an object's, how
  many times live leaves name it;
- counting a manifest in adds one to its root; only a piece whose count goes from 0 to 1 is
  read, and it adds one to each piece or object it names. Counting one out is the mirror
  image, and the objects whose count reaches zero are exactly what collection removes. A
  release sharing all but four pieces with the one before costs four piece reads each way.

Object ids are counted by their 64-bit prefix (a million rows in about 15 MB, where full ids
would take 50): two objects sharing a prefix share a count, which can only keep an object
that could have gone. Pieces, whose count decides what is read, are counted by full id.

What is counted is the set of manifest files on disk, each known by its bytes' hash and kept
here with its bytes, so that one which has left the disk can still be counted out. Counts
and the list of counted manifests change in one transaction; objects leave the store only
after it commits, from a list of ids that reached zero, each looked up again first (a later
manifest may name it again). A crash at any point leaves counts that are right, and at
worst objects that stay until the next collection.

Objects no manifest names (a pack refused half way, pieces fetched for a manifest that then
failed its checks) are found by a sweep of the store's ids, which runs only while a token
is left in ``unsettled/`` (:class:`Intake`), and once after the counts are built.

The file is an index, not a record: missing, damaged or of another version, it is rebuilt
from the manifests on disk (the old cost, once).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from caravane.protocol import tree
from caravane.protocol.errors import CaravaneError

from . import sql_in
from .errors import StoreError
from .manifests import store_reader
from .store import ObjectStore

LIVE_NAME = "live.sqlite"
UNSETTLED = "unsettled"
#: bumped when what is counted changes: another version is rebuilt, never migrated
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS manifests (
    name TEXT PRIMARY KEY,
    digest BLOB NOT NULL,
    doc BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS pieces (
    sha BLOB PRIMARY KEY,
    n INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    id INTEGER PRIMARY KEY,
    n INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead (
    sha BLOB PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
#: bytes removed before the segments are compacted: compaction reads the whole object
#: index, so it runs once per this much freed (the cost of a one-file update stays the
#: change's), and after a sweep
COMPACT_AFTER = 32 * 1024 * 1024
#: every object id a leaf names, without building its entries: file hashes come along too,
#: which only means counting ids that are not objects
HEX64_QUOTED = re.compile(rb'"([0-9a-f]{64})"')
#: ids per statement that names them
QUERY_KEYS = 512  # keys per IN (...) list, padded (sql_in.py)


class CountsError(StoreError):
    """The counts disagree with the pieces (a damaged store or index): they are rebuilt."""


def object_key(sha: str | bytes) -> int:
    """An object's row: its id's first 64 bits, as SQLite's signed integer."""
    v = int(sha[:16], 16)
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass
class CollectReport:
    """What one collection did, for the log and the benchmark."""

    counted_in: int = 0  # manifests
    counted_out: int = 0
    pieces_read: int = 0
    removed: int = 0  # objects
    freed: int = 0  # bytes of their frames
    swept: bool = False
    compacted: bool = False
    rebuilt: bool = False
    skipped: str = ""  # why nothing was collected, if so
    notes: list[str] = field(default_factory=list)


class Intake:
    """A token kept in ``unsettled/`` while objects enter the store that no manifest on disk
    may name if the intake fails: a pack (its objects come before its manifest) or a
    manifest's pieces (fetched before it is checked and kept).

    :meth:`open` before the first object is written; :meth:`settle` once a manifest on disk
    names everything written (leaving the ``with`` block normally does it).
    A token left behind, by a refused pack or a killed process, makes the next collection
    sweep the store for what no manifest names.
    """

    def __init__(self, root: Path, durable: bool = False) -> None:
        self.dir = Path(root) / UNSETTLED
        self.durable = durable
        self.path: Path | None = None

    def __enter__(self) -> Intake:
        return self

    def open(self) -> Intake:
        """Leave the token (once), before the first object is written."""
        if self.path is not None:
            return self
        self.dir.mkdir(exist_ok=True)
        self.path = self.dir / f"{os.getpid()}-{uuid.uuid4().hex}"
        self.path.touch()
        if self.durable:  # on disk before the first object is
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return self

    def settle(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.settle()


def _parts(items: list[bytes]) -> Iterator[list[bytes]]:
    return sql_in.parts(items, QUERY_KEYS)


class LiveCounts:
    """The counts of one centre store (see the module's docstring)."""

    def __init__(self, root: Path, store: ObjectStore, durable: bool = False) -> None:
        self.root = Path(root)
        self.path = self.root / LIVE_NAME
        self.store = store
        self.durable = durable
        # a piece missing for a manifest on disk is a damaged store: collect nothing
        self.read = store_reader(store)

    # ------------------------------------------------------------------ the file

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
        return db

    def _open(self, report: CollectReport) -> sqlite3.Connection:
        """The counts, or a new empty file (and a sweep owed) if they cannot be trusted."""
        if self.path.exists():
            try:
                db = self._connect()
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version == SCHEMA_VERSION:
                    db.executescript(SCHEMA)  # a table lost to damage is an empty one
                    db.execute("SELECT count(*) FROM manifests").fetchone()
                    return db
                db.close()
                report.notes.append(f"counts of version {version}: rebuilt")
            except sqlite3.DatabaseError as exc:
                report.notes.append(f"{self.path} could not be read ({exc}): rebuilt")
        return self._create(report)

    def _create(self, report: CollectReport) -> sqlite3.Connection:
        # the sweep is owed before the first count: a crash during the build leaves it owed
        Intake(self.root, self.durable).open()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        db = self._connect()
        db.executescript(SCHEMA)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        report.rebuilt = True
        return db

    # ------------------------------------------------------------------ collection

    def collect(self, manifests: Mapping[str, bytes]) -> CollectReport:
        """Count ``manifests`` (every manifest file on disk, by name) in and whatever was
        counted before and is not among them out, then remove what nothing names.

        The caller holds the store's lock. A piece that cannot be read for a manifest on
        disk collects nothing this time (the store is damaged: verification says what to
        do); counts that disagree with the pieces are rebuilt from ``manifests``.
        """
        report = CollectReport()
        db = self._open(report)
        try:
            try:
                self._recount(db, manifests, report)
            except CountsError as exc:
                db.close()
                report.notes.append(f"{exc}: the counts were rebuilt")
                db = self._create(report)
                self._recount(db, manifests, report)
        except (CaravaneError, OSError, sqlite3.DatabaseError) as exc:
            db.close()
            report.skipped = str(exc)
            return report
        try:
            self._remove_dead(db, report)
            self._sweep(db, report)
            self._compact(db, report)
        except (CaravaneError, OSError, sqlite3.DatabaseError) as exc:
            # the counts are right; what is left to remove is removed next time
            report.skipped = f"removal stopped part way: {exc}"
        finally:
            db.close()
        return report

    def _compact(self, db: sqlite3.Connection, report: CollectReport) -> None:
        db.execute(
            "INSERT INTO counters VALUES ('freed', ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (report.freed,),
        )
        (freed,) = db.execute("SELECT value FROM counters WHERE name = 'freed'").fetchone()
        if freed >= COMPACT_AFTER or (report.swept and report.removed):
            self.store.compact()  # give the dead objects' space back
            db.execute("UPDATE counters SET value = 0 WHERE name = 'freed'")
            report.compacted = True

    def _recount(
        self, db: sqlite3.Connection, manifests: Mapping[str, bytes], report: CollectReport
    ) -> None:
        wanted = {name: hashlib.sha256(data).digest() for name, data in manifests.items()}
        db.execute("BEGIN IMMEDIATE")
        try:
            counted = {
                str(name): bytes(digest)
                for name, digest in db.execute("SELECT name, digest FROM manifests")
            }
            # what leaves, read before a manifest that replaces it under its name is written
            leaving = [
                (name, self._doc(db, name))
                for name, digest in sorted(counted.items())
                if wanted.get(name) != digest
            ]
            # in first: pieces a kept release shares with a dropped one go 1 -> 2 -> 1,
            # never through zero, and are not read
            for name, digest in sorted(wanted.items()):
                if counted.get(name) == digest:
                    continue
                data = manifests[name]
                self._count(db, data, +1, report, name)
                db.execute(
                    "INSERT OR REPLACE INTO manifests VALUES (?, ?, ?)", (name, digest, data)
                )
                report.counted_in += 1
            for name, doc in leaving:
                if name not in wanted:
                    db.execute("DELETE FROM manifests WHERE name = ?", (name,))
                try:
                    self._count(db, doc, -1, report, name)
                except CaravaneError as exc:
                    raise CountsError(f"{name} could not be counted out ({exc})") from None
                report.counted_out += 1
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _doc(db: sqlite3.Connection, name: str) -> bytes:
        (doc,) = db.execute("SELECT doc FROM manifests WHERE name = ?", (name,)).fetchone()
        return bytes(doc)

    def _count(
        self, db: sqlite3.Connection, doc: bytes, step: int, report: CollectReport, what: str
    ) -> None:
        """Add ``step`` to what ``doc`` names, reading only pieces that go to or from zero."""
        if tree.spec_version_of(doc, what) != tree.TREE_SPEC_VERSION:
            self._count_objects(db, doc, step)  # a flat manifest names its objects itself
            return
        root = tree.parse_doc(doc, what).root
        refs = [root] if root is not None else []
        while refs:
            turned: list[tree.PieceRef] = []
            for ref in refs:
                if self._step_piece(db, bytes.fromhex(ref.sha256), step):
                    turned.append(ref)
            refs = []
            for start in range(0, len(turned), tree.READ_BATCH):
                batch = turned[start : start + tree.READ_BATCH]
                for ref, data in zip(batch, self.read(batch), strict=True):
                    report.pieces_read += 1
                    label = f"{what} piece {ref.sha256[:12]}"
                    if ref.level > 0:
                        refs.extend(tree.children_of(ref, data, label))
                    else:
                        if (
                            len(data) != ref.length
                            or hashlib.sha256(data).hexdigest() != ref.sha256
                        ):
                            raise StoreError(
                                f"{label} is damaged in {self.store.root}; run "
                                f"`caravane repo verify {self.store.root}`"
                            )
                        self._count_objects(db, data, step)

    @staticmethod
    def _step_piece(db: sqlite3.Connection, key: bytes, step: int) -> bool:
        """Add ``step`` to a piece's count; True if it went from 0 to 1 or 1 to 0."""
        if step > 0:
            (n,) = db.execute(
                "INSERT INTO pieces VALUES (?, 1) ON CONFLICT (sha) DO UPDATE "
                "SET n = n + 1 RETURNING n",
                (key,),
            ).fetchone()
            return bool(n == 1)
        row = db.execute("UPDATE pieces SET n = n - 1 WHERE sha = ? RETURNING n", (key,)).fetchone()
        if row is None or row[0] < 0:
            raise CountsError(f"piece {key.hex()[:16]} was not counted")
        if row[0] > 0:
            return False
        db.execute("DELETE FROM pieces WHERE sha = ?", (key,))
        db.execute("INSERT OR IGNORE INTO dead VALUES (?)", (key,))
        return True

    def _count_objects(self, db: sqlite3.Connection, data: bytes, step: int) -> None:
        named = Counter(HEX64_QUOTED.findall(data))
        if step > 0:
            db.executemany(
                "INSERT INTO objects VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET n = n + excluded.n",
                ((object_key(sha), times) for sha, times in named.items()),
            )
            return
        by_key: dict[int, int] = Counter()
        for sha, times in named.items():
            by_key[object_key(sha)] += times
        gone: list[int] = []
        for key, times in by_key.items():
            row = db.execute(
                "UPDATE objects SET n = n - ? WHERE id = ? RETURNING n", (times, key)
            ).fetchone()
            if row is None or row[0] < 0:
                raise CountsError(f"an object of prefix {key & (1 << 64) - 1:016x} was not counted")
            if row[0] == 0:
                gone.append(key)
        if gone:
            for keys in sql_in.parts(gone, QUERY_KEYS):
                db.execute(f"DELETE FROM objects WHERE id IN ({sql_in.marks(keys)})", keys)
            dead = set(gone)
            db.executemany(
                "INSERT OR IGNORE INTO dead VALUES (?)",
                ((bytes.fromhex(sha.decode()),) for sha in named if object_key(sha) in dead),
            )

    # ------------------------------------------------------------------ removal

    def _live(self, db: sqlite3.Connection, keys: list[bytes]) -> set[bytes]:
        """Which of these ids a counted manifest names (as an object or as a piece)."""
        live: set[bytes] = set()
        for part in _parts(keys):
            live.update(
                bytes(k)
                for (k,) in db.execute(
                    f"SELECT sha FROM pieces WHERE sha IN ({sql_in.marks(part)})", part
                )
            )
            ids: dict[int, list[bytes]] = {}
            for k in part:
                ids.setdefault(object_key(k.hex()), []).append(k)
            id_list = sql_in.padded(list(ids))
            for (i,) in db.execute(
                f"SELECT id FROM objects WHERE id IN ({sql_in.marks(id_list)})", id_list
            ):
                live.update(ids[int(i)])
        return live

    def _remove(self, keys: Iterable[bytes], report: CollectReport) -> None:
        for key in keys:
            freed = self.store.remove(key.hex())
            if freed:
                report.removed += 1
                report.freed += freed

    def _remove_dead(self, db: sqlite3.Connection, report: CollectReport) -> None:
        while True:
            keys = [bytes(k) for (k,) in db.execute("SELECT sha FROM dead LIMIT 5000")]
            if not keys:
                return
            live = self._live(db, keys)
            self._remove([k for k in keys if k not in live], report)
            for part in _parts(keys):
                db.execute(f"DELETE FROM dead WHERE sha IN ({sql_in.marks(part)})", part)

    def _sweep(self, db: sqlite3.Connection, report: CollectReport) -> None:
        """Remove every object no counted manifest names, if an intake left a token."""
        folder = self.root / UNSETTLED
        tokens = sorted(folder.iterdir()) if folder.is_dir() else []
        if not tokens:
            return
        page: list[bytes] = []
        for sha in self.store.iter_ids():
            page.append(bytes.fromhex(sha))
            if len(page) >= 5000:
                live = self._live(db, page)
                self._remove([k for k in page if k not in live], report)
                page = []
        live = self._live(db, page)
        self._remove([k for k in page if k not in live], report)
        for token in tokens:
            with contextlib.suppress(OSError):
                token.unlink()
        report.swept = True


__all__ = ["CollectReport", "CountsError", "Intake", "LiveCounts", "object_key"]
