"""What a folder's files were made of last time, so that a republish reads only what changed.

A weekly update of a library of a million files changes a handful of them; reading, chunking
and hashing every file again would make a one-file change cost as much as the first publish.
Like git's index and borg's files cache, an entry is trusted while the file's size, mtime,
ctime and inode are the ones recorded, and only if every chunk it names is still in the
object store (collection may have removed them). ctime cannot be set back by a program, so a
file rewritten and given its old mtime is still read again.

A file modified less than ``RACY_SECONDS`` before the scan started is not recorded: its
timestamp may not yet tell a later change in the same tick apart (git's "racily clean").

The cache is a small SQLite file kept beside the repository or the curator's object cache,
never inside a folder that is served: it names local paths.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from caravane.protocol.metadata import FileEntry

RACY_SECONDS = 2.0
#: paths per lookup query (SQLite allows 32,766 parameters since 3.32; old ones 999)
QUERY_KEYS = 500
#: files recorded per transaction: a publish of a million files holds no more than these
COMMIT_ROWS = 20_000

_SCHEMA = """
create table if not exists files (
    path text primary key,
    size integer not null,
    mtime_ns integer not null,
    ctime_ns integer not null,
    ino integer not null,
    avg_chunk integer not null,
    sha256 text not null,
    chunks text not null
)
"""


_COLUMNS = "size, mtime_ns, ctime_ns, ino, avg_chunk, sha256, chunks"


def _key(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _chunks_text(chunks: list[tuple[str, int]]) -> str:
    """The chunk list as JSON; a one-chunk list (every small file) without ``json``."""
    if len(chunks) == 1:
        return f'[["{chunks[0][0]}",{int(chunks[0][1])}]]'
    return json.dumps(chunks, separators=(",", ":"))


def _chunks_of(text: str) -> list[tuple[str, int]]:
    """The chunk list as recorded; a one-chunk list (every small file) without ``json``."""
    if text.startswith('[["') and text.count('"') == 2 and text.endswith("]]"):
        sha, _, size = text[3:-2].partition('",')
        if len(sha) == 64 and size.isdigit():
            return [(sha, int(size))]
    return [(str(h), int(n)) for h, n in json.loads(text)]


class FilesCache:
    """path -> (stat key, chunking, file hash, chunks) for files published before."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("pragma journal_mode=wal")
        self._db.execute("pragma synchronous=normal")
        self._db.execute(_SCHEMA)
        self._started_ns = time.time_ns()
        self._pending: list[tuple[str, int, int, int, int, int, str, str]] = []

    def lookup(self, real: str | Path, st: os.stat_result, avg_chunk: int) -> FileEntry | None:
        """The entry recorded for ``real`` if the file is unchanged since (mode not included)."""
        return self.lookup_many([(real, st, avg_chunk)])[0]

    def lookup_many(
        self, items: Sequence[tuple[str | Path, os.stat_result, int]]
    ) -> list[FileEntry | None]:
        """:meth:`lookup` for many files: one range scan over their paths (the files of a
        folder, in order), or one query per ``QUERY_KEYS`` of them if that range holds far
        more rows than asked for. One query per file was a third of a one-file republish
        at 100,000 files.
        """
        keys = [str(real) for real, _, _ in items]
        rows = self._rows_between(keys) if len(keys) > 1 else None
        if rows is None:
            rows = {}
            for start in range(0, len(keys), QUERY_KEYS):
                part = keys[start : start + QUERY_KEYS]
                marks = ",".join("?" * len(part))
                for path, *row in self._db.execute(
                    f"select path, {_COLUMNS} from files where path in ({marks})", part
                ):
                    rows[path] = tuple(row)
        out: list[FileEntry | None] = []
        for key, (_, st, avg_chunk) in zip(keys, items, strict=True):
            found = rows.get(key)
            if found is None or found[:4] != _key(st) or found[4] != avg_chunk:
                out.append(None)
                continue
            chunks = _chunks_of(found[6])
            out.append(FileEntry("", int(found[0]), 0o644, str(found[5]), chunks))
        return out

    def _rows_between(self, keys: list[str]) -> dict[str, tuple[Any, ...]] | None:
        """Every row from the smallest to the largest of ``keys`` in one range scan, or
        None if that range holds many more rows than keys (they are then looked up in
        batches). The files of one folder, in order, are one short range: reading it is
        several times faster than as many lookups."""
        limit = 2 * len(keys) + 100
        got = self._db.execute(
            f"select path, {_COLUMNS} from files where path between ? and ? limit ?",
            (min(keys), max(keys), limit),
        ).fetchall()
        if len(got) >= limit:
            return None
        return {path: tuple(row) for path, *row in got}

    def record(
        self, real: str | Path, st: os.stat_result, avg_chunk: int, entry: FileEntry
    ) -> None:
        """Remember a file just read (written by :meth:`commit`)."""
        if st.st_mtime_ns >= self._started_ns - int(RACY_SECONDS * 1e9):
            return  # racily clean: a change later in the same tick would look unchanged
        self._pending.append(
            (
                str(real),
                *_key(st),
                avg_chunk,
                entry.sha256,
                _chunks_text(entry.chunks),
            )
        )
        if len(self._pending) >= COMMIT_ROWS:
            self.commit()

    def commit(self) -> None:
        """Write what :meth:`record` noted (it also does every ``COMMIT_ROWS`` files)."""
        if not self._pending:
            return
        with self._db:
            self._db.executemany(
                "insert or replace into files values (?, ?, ?, ?, ?, ?, ?, ?)", self._pending
            )
        self._pending.clear()

    def close(self) -> None:
        self._db.close()


__all__ = ["RACY_SECONDS", "FilesCache"]
