"""What a folder's files were made of last time, so that a republish reads only what changed.

A weekly update of a library of a million files changes a handful of them; reading, chunking
and hashing every file again would make a one-file change cost as much as the first publish.
Like git's index and borg's files cache, an entry is trusted while the file's size, mtime,
ctime and inode are the ones recorded. ctime cannot be set back by a program, so a file
rewritten and given its old mtime is still read again.

Kept **per folder**: one row holds the records of a folder's files, each with the file's
entry already in the canonical bytes a manifest leaf holds. A republish then costs, per
unchanged file, a ``stat`` and a comparison: no database query, no entry decoded or
encoded again (a row per file cost about 60 us a file, a minute at a million files). A
folder's row is written again only when one of its files changed, appeared or went.

Chunks named by a record must still be in the object store. Objects leave a store only by
removal (collection), and the store counts removals (:meth:`SegmentIndex.removals`): while
the count is the one the cache saw at its last complete pass, every chunk it names is
there; after a collection, the next publish checks the chunks of each file it takes from
the cache (and reads again a file whose chunks are gone), then trusts the new count.

A file modified less than ``RACY_SECONDS`` before the scan started is not recorded: its
timestamp may not yet tell a later change in the same tick apart (git's "racily clean").

The cache is a small SQLite file kept beside the repository or the curator's object cache,
never inside a folder that is served: it names local paths. A cache of the earlier layout
(one row per file) is read as it stands, a folder at a time, and dropped once a whole pass
has written the new rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from caravane.protocol.metadata import FileEntry
from caravane.protocol.tree import EncodedEntry, encode_entry

RACY_SECONDS = 2.0
#: folder rows written per transaction, or fewer once they hold this many bytes (a row of
#: 1,000 pages is some 76 KB: 200 of them held 15 MB before each write)
COMMIT_ROWS = 200
COMMIT_BYTES = 2 * 1024 * 1024
#: folders whose rows stay parsed: a folder's files come back after each subfolder's
LOADED = 64

_SCHEMA = """
create table if not exists dirs (
    dir text primary key,
    prefix text not null,
    data blob not null
);
create table if not exists meta (
    name text primary key,
    value integer not null
);
"""

#: a record: size, mtime_ns, ctime_ns, ino, avg_chunk, chunk count, whether a leaf may end
#: after it, then the entry: its bytes (8 fields: made this pass), its start and end in the
#: folder's blob (9: read from a row), or None, None and (sha, chunks) (10: a record of the
#: earlier layout, one row per file)
Record = Sequence[Any]


def _mode_of(st: os.stat_result) -> int:
    return 0o755 if st.st_mode & 0o111 else 0o644


class FilesCache:
    """folder -> {file name: (stat key, chunking, entry bytes)} for files published before.

    Lookups and records each come in the scan's order (ascending manifest paths): lookups
    parse a folder's row when its first file comes, records gather a folder's files and
    write its row once the scan has left the folder for good.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("pragma journal_mode=wal")
        self._db.execute("pragma synchronous=normal")
        self._db.executescript(_SCHEMA)
        self._legacy = (
            self._db.execute(
                "select 1 from sqlite_master where type = 'table' and name = 'files'"
            ).fetchone()
            is not None
        )
        self._started_ns = time.time_ns()
        self._loaded: OrderedDict[str, Folder] = OrderedDict()
        #: rows as read, until their folder is recorded: (records, whether to write it
        #: again whatever happens), so a folder whose files all hit is not written again
        self._read: dict[str, tuple[Folder, bool]] = {}
        #: folders being recorded, the deepest last: (dir, prefix, new records, names
        #: found unchanged, whether any file was read)
        self._open: list[tuple[str, str, dict[str, Record], list[str], list[bool]]] = []
        self._rows: list[tuple[str, str, bytes]] = []
        self._row_bytes = 0

    # ------------------------------------------------------------------ lookups

    def lookup(
        self, real: str | Path, entry_path: str, st: os.stat_result, avg_chunk: int
    ) -> EncodedEntry | None:
        """The entry recorded for ``real`` (whose manifest path is ``entry_path``), if the
        file is unchanged since and was chunked the same way."""
        folder, _, name = os.fspath(real).rpartition("/")
        rows = self._loaded.get(folder)
        if rows is None:
            rows = self._load(folder, entry_path.rpartition("/")[0])
        rec = rows.recs.get(name)
        if (
            rec is None
            or rec[0] != st.st_size
            or rec[1] != st.st_mtime_ns
            or rec[2] != st.st_ctime_ns
            or rec[3] != st.st_ino
            or rec[4] != avg_chunk
        ):
            return None
        if len(rec) == 10:  # a row of the earlier layout: its entry made now
            assert isinstance(rec, list)
            sha, chunks = rec[9]
            entry = encode_entry(FileEntry(entry_path, rec[0], _mode_of(st), sha, chunks))
            rec[5:] = [entry.chunks, entry.cut, entry.data]
            return entry
        # the entry's path is a function of the row's prefix (checked as it was read), the
        # name and whether it is a book (the sign of avg_chunk)
        return EncodedEntry(entry_path, rec[0], rec[5], _data(rec, rows.blob), rec[6])

    def folder(self, folder: str, prefix: str) -> Folder:
        """A folder's records by file name (``prefix``: the folder's manifest path with its
        trailing "/" left off): for a scan that compares them itself (:func:`unchanged`)."""
        rows = self._loaded.get(folder)
        return self._load(folder, prefix) if rows is None else rows

    def _load(self, folder: str, prefix: str) -> Folder:
        rows = Folder({}, b"")
        stale = True
        row = self._db.execute("select prefix, data from dirs where dir = ?", (folder,)).fetchone()
        if row is not None:
            if row[0] == prefix:
                # a damaged row: its files are read again
                with contextlib.suppress(zlib.error, ValueError, TypeError, struct.error):
                    rows, stale = _decode_row(row[1]), False
        elif self._legacy:
            rows = Folder(self._load_legacy(folder), b"")
        self._read[folder] = (rows, stale)
        self._loaded[folder] = rows
        if len(self._loaded) > LOADED:
            self._loaded.popitem(last=False)
        return rows

    def _load_legacy(self, folder: str) -> dict[str, Record]:
        """A folder's files from a cache of the earlier layout (a row per file)."""
        recs: dict[str, Record] = {}
        start = folder + "/"
        for path, size, mtime, ctime, ino, avg, sha, chunks in self._db.execute(
            "select path, size, mtime_ns, ctime_ns, ino, avg_chunk, sha256, chunks from files "
            "where path > ? and path < ?",
            (start, folder + "0"),
        ):
            name = str(path)[len(start) :]
            if "/" in name:
                continue
            try:
                parsed = [(str(h), int(n)) for h, n in json.loads(chunks)]
            except (ValueError, TypeError):
                continue
            recs[name] = [size, mtime, ctime, ino, avg, 0, False, None, None, (str(sha), parsed)]
        return recs

    # ------------------------------------------------------------------ records

    def record(
        self,
        real: str | Path,
        st: os.stat_result,
        avg_chunk: int,
        entry: EncodedEntry,
        hit: bool = False,
    ) -> None:
        """Note a file of this pass, in scan order: read just now, or found unchanged
        (``hit``: its record stands, only its name is kept). A folder's row is written
        once the scan has left it, and only if a file of it was read, came or went."""
        folder, _, name = os.fspath(real).rpartition("/")
        top = self._enter(folder, entry.path.rpartition("/")[0])
        if hit:
            top[3].append(name)
            return
        top[4][0] = True
        if st.st_mtime_ns >= self._started_ns - int(RACY_SECONDS * 1e9):
            return  # racily clean: a change later in the same tick would look unchanged
        top[2][name] = [
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
            avg_chunk,
            entry.chunks,
            entry.cut,
            entry.data,
        ]

    def record_run(self, folder: str, prefix: str, names: list[str]) -> None:
        """Note files of ``folder`` a scan found unchanged (:func:`unchanged`), in order."""
        self._enter(folder, prefix)[3].extend(names)

    def _enter(
        self, folder: str, prefix: str
    ) -> tuple[str, str, dict[str, Record], list[str], list[bool]]:
        """The open record of ``folder``, leaving (and writing) the folders it is not under:
        the scan never comes back to them."""
        stack = self._open
        if stack and stack[-1][0] == folder:
            return stack[-1]
        while stack and not folder.startswith(stack[-1][0] + "/"):
            if stack[-1][0] == folder:
                return stack[-1]
            self._close(*stack.pop())
        if stack and stack[-1][0] == folder:
            return stack[-1]
        stack.append((folder, prefix, {}, [], [False]))
        return stack[-1]

    def _close(
        self,
        folder: str,
        prefix: str,
        new: dict[str, Record],
        hits: list[str],
        changed: list[bool],
    ) -> None:
        held, stale = self._read.pop(folder, (Folder({}, b""), True))
        recs = held.recs
        if not changed[0] and not stale and len(hits) == len(recs):
            return  # every file found unchanged, none gone: the row stands
        rows: dict[str, Record] = {}
        for n in hits:
            rec = recs.get(n)
            if rec is not None:
                rows[n] = [*rec[:7], _data(rec, held.blob)]
        rows.update(new)
        data = _encode_row(rows)
        self._rows.append((folder, prefix, data))
        self._row_bytes += len(data)
        if len(self._rows) >= COMMIT_ROWS or self._row_bytes >= COMMIT_BYTES:
            self._write()

    def _write(self) -> None:
        if self._rows:
            with self._db:
                self._db.executemany("insert or replace into dirs values (?, ?, ?)", self._rows)
            self._rows.clear()
            self._row_bytes = 0

    def commit(self) -> None:
        """Write every folder noted so far: the end of a pass (a complete scan)."""
        while self._open:
            self._close(*self._open.pop())
        self._read.clear()
        self._write()
        if self._legacy:
            with self._db:
                self._db.execute("drop table if exists files")
            self._legacy = False

    # ------------------------------------------------------------------ removals

    def removals_seen(self) -> int | None:
        """The store's removal count when the last complete pass checked what it names."""
        row = self._db.execute("select value from meta where name = 'removals'").fetchone()
        return None if row is None else int(row[0])

    def saw_removals(self, count: int | None) -> None:
        """After a complete pass: every record's chunks were there at ``count`` removals
        (None: unknown, the next pass checks them)."""
        with self._db:
            if count is None:
                self._db.execute("delete from meta where name = 'removals'")
            else:
                self._db.execute(
                    "insert or replace into meta values ('removals', ?)", (int(count),)
                )

    def close(self) -> None:
        self._db.close()


class Folder(NamedTuple):
    """A folder's records as read: by file name, and the bytes their entries lie in."""

    recs: dict[str, Record]
    blob: bytes


def unchanged(rec: Record | None, st: os.stat_result, avg_chunk: int) -> bool:
    """Whether a file whose record is ``rec`` (as a row holds it: its entry in the folder's
    blob) is unchanged since it was recorded, and was chunked the same way."""
    return (
        rec is not None
        and rec[0] == st.st_size
        and rec[1] == st.st_mtime_ns
        and rec[2] == st.st_ctime_ns
        and rec[3] == st.st_ino
        and rec[4] == avg_chunk
        and len(rec) == 9
    )


def _data(rec: Record, blob: bytes) -> bytes:
    """A record's entry bytes: in the record (made or converted this pass), or in its
    folder's blob (read from a row)."""
    return blob[rec[7] : rec[8]] if len(rec) == 9 else bytes(rec[7])


#: a row: ROW_MAGIC, then zlib of a header (records, bytes of names), the names joined by
#: NUL (no file name holds one), a fixed record per name, then the entries' bytes
ROW_MAGIC = b"CRV2"
_HEAD = struct.Struct("<II")
#: size, mtime_ns, ctime_ns, inode, avg_chunk, chunk count, leaf may end after it, start, end
_REC = struct.Struct("<qqqQqI?II")


def _encode_row(recs: dict[str, Record]) -> bytes:
    """A folder's records, in a form read without a Python step per record (a JSON row of
    1,000 files took 5 ms to parse: 5 s of a republish at a million files)."""
    names = "\0".join(recs).encode("utf-8", "surrogateescape")
    parts = [_HEAD.pack(len(recs), len(names)), names]
    blob: list[bytes] = []
    pos = 0
    for r in recs.values():
        data = r[7]
        parts.append(_REC.pack(*r[:7], pos, pos + len(data)))
        blob.append(data)
        pos += len(data)
    return ROW_MAGIC + zlib.compress(b"".join(parts + blob), 1)


def _decode_row(data: bytes) -> Folder:
    if not data.startswith(ROW_MAGIC):
        raise ValueError("folder row of another layout")
    raw = zlib.decompress(data[len(ROW_MAGIC) :])
    n, names_len = _HEAD.unpack_from(raw)
    pos = _HEAD.size
    names = raw[pos : pos + names_len].decode("utf-8", "surrogateescape").split("\0") if n else []
    pos += names_len
    end = pos + n * _REC.size
    recs: dict[str, Record] = dict(zip(names, _REC.iter_unpack(raw[pos:end]), strict=True))
    blob = raw[end:]
    if recs and max(r[8] for r in recs.values()) != len(blob):
        raise ValueError("folder row of the files cache does not add up")
    return Folder(recs, blob)
