"""Append-only segment files and the SQLite index that says where each object lies.

One file per object cost a directory entry, an inode, a temporary name and a rename for every
chunk: at 100,000 small files that was 403 MiB on disk for 77 MB of objects and about 1 ms per
object. Objects now go, one zstd frame after the other, into segment files of up to
``SEGMENT_LIMIT`` bytes (as git packs, borg segments and restic packs do), and a row in
``segments/index.sqlite`` (sha -> segment, offset, length, mtime) makes each one visible.

Why it is crash-safe:

- a writer appends the frame, then commits its index row, so an object is visible only
  once its bytes are in the file (``durable``: after an fsync of the segment);
- only the holder of a segment's ``flock`` appends to it, and whoever takes a segment over
  first truncates it to the end the index knows: a torn tail left by a killed writer is
  ignored by readers (no row points at it) and then cut;
- compaction copies the live objects of a sparse segment elsewhere, moves their rows in one
  transaction, and only then unlinks the old file; a reader that raced it looks again.

SQLite (WAL, one connection per thread) gives the index transactions across the hub's
threads and processes for free; a hand-written index file would need its own journal.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import sql_in
from .errors import DiskFullError, StoreError
from .sql_in import marks

SEGMENT_DIR = "segments"
INDEX_NAME = "index.sqlite"
SEGMENT_LIMIT = 64 * 1024 * 1024
#: a segment whose live objects fill less than this share of it is rewritten by compaction
SPARSE = 0.5
PAGE = 2000
#: objects per statement that names them (SQLite allows 32,766 parameters since 3.32)
QUERY_KEYS = 512  # keys per IN (...) list, padded (sql_in.py)
SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    sha BLOB PRIMARY KEY,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    mtime INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    end_offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
#: one more each time an object leaves the store (a files cache trusts its records while
#: the count stands: nothing it names can have gone)
_BUMP = (
    "INSERT INTO counters VALUES ('removals', 1) ON CONFLICT (name) DO UPDATE SET value = value + 1"
)
#: a new index starts its count at a random value, so that the count names this store too:
#: a files cache kept beside a repository outlives the repository, and one deleted and made
#: again at the same path counted from 0 again, so the cache trusted records whose chunks
#: were never in the new store ("N objects are not in the store" at every publish). An
#: index from before has no row until its first removal and counts from 0, as it did.
_START = "INSERT OR IGNORE INTO counters VALUES ('removals', ?)"


_FORKS = [0]


def _child_forked() -> None:
    _FORKS[0] += 1


os.register_at_fork(after_in_child=_child_forked)


def _forks() -> int:
    """Changes in a forked child: connections and segment locks are not inherited (a
    counter, not ``os.getpid()``, which is a system call on every object)."""
    return _FORKS[0]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Location:
    segment: int
    offset: int
    length: int


def _disk_error(exc: OSError, where: Path) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"the disk holding {where} is full; free some space and run again "
            "(nothing was lost, the transfer resumes)"
        )
    return StoreError(f"cannot write {where}: {exc.strerror}")


class _Appender:
    """The one segment this store appends to, held with an exclusive ``flock``."""

    def __init__(self, fh: object, fd: int, segment: int, end: int) -> None:
        self.fh = fh  # keeps the descriptor (and so the lock) alive
        self.fd = fd
        self.segment = segment
        self.end = end
        self.pid = _forks()


class SegmentIndex:
    """Segments of one store folder: appends, lookups, removals, compaction."""

    def __init__(self, root: Path, durable: bool = False) -> None:
        self.dir = Path(root) / SEGMENT_DIR
        self.durable = durable
        self._tls = threading.local()
        self._lock = threading.Lock()
        self._setup = threading.Lock()
        self._appender: _Appender | None = None

    # ------------------------------------------------------------------ index

    def exists(self) -> bool:
        return (self.dir / INDEX_NAME).is_file()

    def _db(self, create: bool = True) -> sqlite3.Connection | None:
        conn: sqlite3.Connection | None = getattr(self._tls, "conn", None)
        if conn is not None and getattr(self._tls, "pid", None) == _forks():
            return conn
        if not create and not self.exists():
            return None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with self._setup:  # threads of one store do not race to create the index
                conn = self._connect()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.dir / INDEX_NAME}: the object index cannot be opened ({exc}); "
                "run `caravane repo verify` on this folder"
            ) from None
        except OSError as exc:
            raise _disk_error(exc, self.dir) from None
        self._tls.conn = conn
        self._tls.pid = _forks()
        return conn

    def _connect(self) -> sqlite3.Connection:
        """Open the index, creating it; retried while another process sets it up (switching
        to WAL answers "locked" at once instead of waiting for the busy timeout)."""
        deadline = time.monotonic() + 60
        new = not (self.dir / INDEX_NAME).exists()
        while True:
            conn = sqlite3.connect(
                self.dir / INDEX_NAME, timeout=60, isolation_level=None, check_same_thread=False
            )
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
                conn.execute("PRAGMA journal_size_limit=1048576")  # a live WAL stays small
                conn.executescript(SCHEMA)
                if new:  # another process may have made it meanwhile: its start stands
                    conn.execute(_START, (secrets.randbits(62),))
                return conn
            except sqlite3.OperationalError as exc:
                conn.close()
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def locate(self, sha: str) -> Location | None:
        db = self._db(create=False)
        if db is None:
            return None
        row = db.execute(
            "SELECT segment, offset, length FROM objects WHERE sha = ?", (bytes.fromhex(sha),)
        ).fetchone()
        return Location(*row) if row else None

    def locate_many(self, shas: Iterable[str]) -> dict[str, Location]:
        """:meth:`locate` for many objects, one query per ``QUERY_KEYS`` of them."""
        keys = list(dict.fromkeys(bytes.fromhex(sha) for sha in shas))
        db = self._db(create=False)
        if db is None or not keys:
            return {}
        out: dict[str, Location] = {}
        for part in _parts(keys):
            for key, segment, offset, length in db.execute(
                f"SELECT sha, segment, offset, length FROM objects WHERE sha IN ({marks(part)})",
                part,
            ):
                out[bytes(key).hex()] = Location(segment, offset, length)
        return out

    def present(self, shas: Iterable[str]) -> set[str]:
        """Those of ``shas`` the index holds, one query per ``QUERY_KEYS`` of them."""
        keys = list(dict.fromkeys(bytes.fromhex(sha) for sha in shas))
        db = self._db(create=False)
        if db is None or not keys:
            return set()
        found: set[str] = set()
        for part in _parts(keys):
            found.update(
                bytes(k).hex()
                for (k,) in db.execute(
                    f"SELECT sha FROM objects WHERE sha IN ({marks(part)})", part
                )
            )
        return found

    def touch(
        self, shas: Iterable[str], at_ms: int | None = None, expected: bool = False
    ) -> set[str]:
        """Mark objects as just used; returns those present in the index.

        One statement per ``QUERY_KEYS`` objects (one per object cost about 20 us each, two
        seconds of a one-file republish at 100,000 files). Unless ``expected`` (objects a
        files cache names, nearly always here), the objects are looked for first, so a new
        object (the common case while publishing) costs no write.
        """
        keys = list(dict.fromkeys(bytes.fromhex(sha) for sha in shas))
        db = self._db(create=False)
        if db is None or not keys:
            return set()
        at = now_ms() if at_ms is None else at_ms
        present: list[bytes] = keys if expected else []
        for part in () if expected else _parts(keys):
            present += [
                bytes(k)
                for (k,) in db.execute(
                    f"SELECT sha FROM objects WHERE sha IN ({marks(part)})", part
                )
            ]
        if not present:
            return set()
        found: set[str] = set()
        with _write(db):
            for part in _parts(present):
                # RETURNING: an object collected between the two statements is not found
                found.update(
                    bytes(k).hex()
                    for (k,) in db.execute(
                        f"UPDATE objects SET mtime = ? WHERE sha IN ({marks(part)}) RETURNING sha",
                        (at, *part),
                    ).fetchall()
                )
        return found

    def mtime_ms(self, sha: str) -> int | None:
        db = self._db(create=False)
        if db is None:
            return None
        row = db.execute(
            "SELECT mtime FROM objects WHERE sha = ?", (bytes.fromhex(sha),)
        ).fetchone()
        return int(row[0]) if row else None

    def delete(self, sha: str, cutoff_ms: int | None = None) -> int:
        """Forget an object (only if older than ``cutoff_ms``); returns its frame's length."""
        db = self._db(create=False)
        if db is None:
            return 0
        key = bytes.fromhex(sha)
        if cutoff_ms is None:
            row = db.execute(
                "DELETE FROM objects WHERE sha = ? RETURNING length", (key,)
            ).fetchone()
        else:
            row = db.execute(
                "DELETE FROM objects WHERE sha = ? AND mtime < ? RETURNING length",
                (key, cutoff_ms),
            ).fetchone()
        if row:
            db.execute(_BUMP)
        return int(row[0]) if row else 0

    def note_removal(self) -> None:
        """Count a removal made outside the index (a loose object of an older store)."""
        db = self._db()
        assert db is not None
        db.execute(_BUMP)

    def removals(self) -> int:
        """A count one higher each time an object leaves this store, from a start of this
        store's own (:data:`_BUMP`, :data:`_START`)."""
        db = self._db()  # made now: its count must not change at the first write
        assert db is not None
        row = db.execute("SELECT value FROM counters WHERE name = 'removals'").fetchone()
        return int(row[0]) if row else 0

    def iter_ids(self) -> Iterator[str]:
        """Every indexed object, in pages, so removals during the walk are safe."""
        db = self._db(create=False)
        if db is None:
            return
        last = b""
        while True:
            rows = db.execute(
                "SELECT sha FROM objects WHERE sha > ? ORDER BY sha LIMIT ?", (last, PAGE)
            ).fetchall()
            if not rows:
                return
            for (key,) in rows:
                yield bytes(key).hex()
            last = rows[-1][0]

    def count(self) -> tuple[int, int]:
        db = self._db(create=False)
        if db is None:
            return 0, 0
        n, total = db.execute("SELECT count(*), coalesce(sum(length), 0) FROM objects").fetchone()
        return int(n), int(total)

    # ------------------------------------------------------------------ segments

    def segment_path(self, segment: int) -> Path:
        return self.dir / f"{segment:08d}.seg"

    def segment_ids(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(p.stem) for p in self.dir.glob("*.seg") if p.stem.isdigit())

    def read(self, loc: Location) -> bytes:
        """The bytes at ``loc``; FileNotFoundError if compaction removed the segment."""
        with open(self.segment_path(loc.segment), "rb", buffering=0) as fh:
            data = os.pread(fh.fileno(), loc.length, loc.offset)
        if len(data) != loc.length:
            raise StoreError(
                f"segment {self.segment_path(loc.segment)} ends before an object it indexes "
                "(truncated store); run `caravane repo verify` on this folder"
            )
        return data

    def read_many(self, locs: Iterable[tuple[str, Location]]) -> dict[str, bytes]:
        """The bytes of many objects, each segment opened once (not once per object).

        An object whose segment compaction removed meanwhile is left out: the caller looks
        it up again, as after :meth:`read`.
        """
        out: dict[str, bytes] = {}
        by_segment: dict[int, list[tuple[str, Location]]] = {}
        for sha, loc in locs:
            by_segment.setdefault(loc.segment, []).append((sha, loc))
        for segment, group in by_segment.items():
            try:
                fd = os.open(self.segment_path(segment), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                for sha, loc in group:
                    data = os.pread(fd, loc.length, loc.offset)
                    if len(data) != loc.length:
                        raise StoreError(
                            f"segment {self.segment_path(segment)} ends before an object it "
                            "indexes (truncated store); run `caravane repo verify` on this folder"
                        )
                    out[sha] = data
            finally:
                os.close(fd)
        return out

    def _claim(self, segment: int, db: sqlite3.Connection) -> _Appender | None:
        """Take ``segment`` for appending if nobody holds it; cut any torn tail."""
        path = self.segment_path(segment)
        try:
            fh = open(path, "r+b", buffering=0)
        except FileNotFoundError:
            return None
        fd = fh.fileno()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return None
        try:
            st = os.fstat(fd)
            if st.st_nlink == 0 or os.stat(path).st_ino != st.st_ino:
                fh.close()  # compaction removed it between our open and our lock
                return None
        except FileNotFoundError:
            fh.close()
            return None
        row = db.execute("SELECT end_offset FROM segments WHERE id = ?", (segment,)).fetchone()
        end = int(row[0]) if row else 0
        if end >= SEGMENT_LIMIT:
            fh.close()
            return None
        if st.st_size != end:
            os.ftruncate(fd, end)  # a writer died between its append and its commit
        return _Appender(fh, fd, segment, end)

    def _appender_for(self, need: int, db: sqlite3.Connection) -> _Appender:
        a = self._appender
        if a is not None and a.pid == _forks() and (a.end == 0 or a.end + need <= SEGMENT_LIMIT):
            return a
        self._release()
        ids = self.segment_ids()
        for segment in reversed(ids[-8:]):  # the newest ones are the ones with room
            claimed = self._claim(segment, db)
            if claimed is not None and (claimed.end == 0 or claimed.end + need <= SEGMENT_LIMIT):
                self._appender = claimed
                return claimed
            if claimed is not None:
                claimed.fh.close()  # type: ignore[attr-defined]
        segment = (ids[-1] if ids else 0) + 1
        while True:
            path = self.segment_path(segment)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                segment += 1
                continue
            except OSError as exc:
                raise _disk_error(exc, self.dir) from None
            os.close(fd)
            claimed = self._claim(segment, db)
            if claimed is not None:
                self._appender = claimed
                return claimed
            segment += 1

    def _cut_and_release(self, a: _Appender) -> None:
        """Drop what was appended after the indexed end, then let the segment go."""
        with contextlib.suppress(OSError):  # else the next writer to take the segment cuts it
            os.ftruncate(a.fd, a.end)
        self._release()

    def _release(self) -> None:
        a, self._appender = self._appender, None
        if a is not None and a.pid == _forks():
            a.fh.close()  # type: ignore[attr-defined]

    def append(
        self, items: Sequence[tuple[str, bytes | memoryview]], mtime_ms: int | None = None
    ) -> int:
        """Append frames and index them in one transaction; returns bytes appended.

        An object already indexed (a concurrent writer won) keeps its row; its new copy is
        dead bytes for compaction to reclaim.
        """
        if not items:
            return 0
        db = self._db()
        assert db is not None
        at = now_ms() if mtime_ms is None else mtime_ms
        written = 0
        with self._lock:
            start = 0
            while start < len(items):
                # fill the current segment, then roll over to the next one
                a = self._appender_for(len(items[start][1]), db)
                batch: list[tuple[str, bytes | memoryview]] = []
                room = SEGMENT_LIMIT - a.end
                for sha, frame in items[start:]:
                    if batch and len(frame) > room:
                        break
                    batch.append((sha, frame))
                    room -= len(frame)
                start += len(batch)
                try:
                    total = sum(len(f) for _, f in batch)
                    done = 0
                    while done < total:
                        done += os.pwritev(a.fd, _views([f for _, f in batch], done), a.end + done)
                    if self.durable:
                        os.fdatasync(a.fd)
                except OSError as exc:
                    self._cut_and_release(a)  # a full disk gets its space back at once
                    raise _disk_error(exc, self.segment_path(a.segment)) from None
                rows = []
                offset = a.end
                for sha, frame in batch:
                    rows.append((bytes.fromhex(sha), a.segment, offset, len(frame), at))
                    offset += len(frame)
                rows.sort()  # the index's B-tree pages in key order: fewer of them touched
                try:
                    with _write(db):
                        db.executemany(
                            "INSERT OR IGNORE INTO objects (sha, segment, offset, length, mtime) "
                            "VALUES (?, ?, ?, ?, ?)",
                            rows,
                        )
                        db.execute(
                            "INSERT INTO segments (id, end_offset) VALUES (?, ?) "
                            "ON CONFLICT(id) DO UPDATE SET end_offset = excluded.end_offset",
                            (a.segment, offset),
                        )
                except sqlite3.OperationalError as exc:
                    self._cut_and_release(a)  # the frames just written are not indexed
                    if "full" in str(exc):
                        raise _disk_error(OSError(errno.ENOSPC, "disk full"), self.dir) from None
                    raise StoreError(
                        f"{self.dir / INDEX_NAME}: cannot record objects ({exc}); "
                        "run `caravane repo verify` on this folder"
                    ) from None
                a.end = offset
                written += total
        return written

    def compact(self, sparse: float = SPARSE) -> tuple[int, int]:
        """Rewrite segments whose live objects fill less than ``sparse`` of them.

        Returns (segments removed, bytes reclaimed). A segment some writer holds is skipped
        (it is being filled); objects keep their mtime, so the grace period still holds.
        """
        db = self._db(create=False)
        if db is None:
            return 0, 0
        live = dict(
            db.execute("SELECT segment, sum(length) FROM objects GROUP BY segment").fetchall()
        )
        removed = reclaimed = 0
        with self._lock:
            self._release()  # our own segment may be the sparse one
        for segment in self.segment_ids():
            path = self.segment_path(segment)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            used = int(live.get(segment, 0))
            if used and used >= sparse * size:
                continue  # dense enough; empty or sparse segments are dropped or rewritten
            held = self._claim(segment, db)
            if held is None:
                continue
            try:
                rows = db.execute(
                    "SELECT sha, offset, length, mtime FROM objects WHERE segment = ?",
                    (segment,),
                ).fetchall()
                for key, offset, length, mtime in rows:
                    frame = os.pread(held.fd, length, offset)
                    self._move(db, bytes(key), segment, offset, frame, int(mtime))
                with _write(db):
                    left = db.execute(
                        "SELECT count(*) FROM objects WHERE segment = ?", (segment,)
                    ).fetchone()[0]
                    if left:
                        continue
                    db.execute("DELETE FROM segments WHERE id = ?", (segment,))
                path.unlink(missing_ok=True)
                removed += 1
                reclaimed += size - used
            finally:
                held.fh.close()  # type: ignore[attr-defined]
        return removed, reclaimed

    def _move(
        self,
        db: sqlite3.Connection,
        key: bytes,
        segment: int,
        offset: int,
        frame: bytes,
        mtime: int,
    ) -> None:
        with self._lock:
            a = self._appender_for(len(frame), db)
            try:
                n = 0
                while n < len(frame):
                    n += os.pwrite(a.fd, memoryview(frame)[n:], a.end + n)
                if self.durable:
                    os.fdatasync(a.fd)
            except OSError as exc:
                self._cut_and_release(a)
                raise _disk_error(exc, self.segment_path(a.segment)) from None
            with _write(db):
                db.execute(
                    "UPDATE objects SET segment = ?, offset = ? "
                    "WHERE sha = ? AND segment = ? AND offset = ?",
                    (a.segment, a.end, key, segment, offset),
                )
                db.execute(
                    "INSERT INTO segments (id, end_offset) VALUES (?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET end_offset = excluded.end_offset",
                    (a.segment, a.end + len(frame)),
                )
            a.end += len(frame)

    def close(self) -> None:
        with self._lock:
            self._release()
        conn = getattr(self._tls, "conn", None)
        if conn is not None:
            conn.close()
            self._tls.conn = None


class _write:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if kind is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")


def _parts(keys: list[bytes]) -> Iterator[list[bytes]]:
    return sql_in.parts(keys, QUERY_KEYS)


def _views(frames: list[bytes | memoryview], skip: int) -> list[memoryview]:
    """The frames as buffers for ``pwritev``, without the first ``skip`` bytes."""
    out: list[memoryview] = []
    for f in frames:
        if skip >= len(f):
            skip -= len(f)
            continue
        out.append(memoryview(f)[skip:])
        skip = 0
    return out[:1000]  # IOV_MAX is 1024 on Linux
