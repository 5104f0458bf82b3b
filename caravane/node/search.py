"""The portal's full-text index: titles and text of the pages and PDFs a centre serves.

One SQLite file beside the releases (``DATA/search.db``) with an FTS5 table whose tokenizer
folds diacritics (``unicode61 remove_diacritics 2``), so "hygiene" finds "Hygiène" and the
other way round; SQLite is already on every centre and FTS5 is built into Python's sqlite3,
where Xapian would be one more native package to carry.

Costs follow the change, as everywhere in Caravane. Each row is one file of one channel with
the range of release versions it belongs to (``since``..``until``; ``until`` empty while it
is in the newest indexed release). Activating version N after H rewrites only the files
whose hash changed between the two releases (and removes those that went), found by the
tree diff, which reads only the pieces that differ; unchanged files keep their rows. A
search looks at the rows whose range holds the version ``live/<channel>`` serves at that
moment, so the index is written completely, in one transaction, before the
switch, and a visitor never sees a half-built index: before the switch the new rows are out
of range, after it they are in. A rollback needs no work at all.

This file is a cache, derived from the releases: it is not in the node's alembic-managed
database, carries its own format number (``PRAGMA user_version``) and is rebuilt from the
release folders whenever it is missing, of another format, or fails SQLite's checks.
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from caravane.protocol.metadata import FileEntry
from caravane.protocol.release import Release

from .extract import extract, kind_of

log = logging.getLogger("caravane.node.search")

FORMAT = 1
FILE_NAME = "search.db"
MAX_TERMS = 8
MARK_OPEN, MARK_CLOSE = "\x02", "\x03"
#: title counts most, then the path, then the text (bm25 column weights)
WEIGHTS = (10.0, 1.0, 3.0)

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    since INTEGER NOT NULL,
    until INTEGER
);
CREATE INDEX IF NOT EXISTS docs_head ON docs(channel, path) WHERE until IS NULL;
CREATE INDEX IF NOT EXISTS docs_until ON docs(channel, until);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
    title, body, path, tokenize = "unicode61 remove_diacritics 2"
);
CREATE TABLE IF NOT EXISTS covered (
    channel TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (channel, version)
);
CREATE TABLE IF NOT EXISTS heads (
    channel TEXT PRIMARY KEY, version INTEGER NOT NULL, description TEXT NOT NULL DEFAULT ''
);
"""


_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


class SearchIndexError(Exception):
    """The index file cannot be used (damaged, unreadable); the portal rebuilds it."""


@dataclass
class UpdateStats:
    """What one update wrote: the incremental tests (and the logs) count these."""

    channel: str
    version: int
    written: int = 0
    removed: int = 0
    kept: int = 0
    rebuilt: bool = False


@dataclass
class Hit:
    channel: str
    path: str
    kind: str
    size: int
    title: str
    snippet: str  # HTML: escaped text with <mark> around the matched words


def index_path(data_dir: Path) -> Path:
    return Path(data_dir) / FILE_NAME


def fold(text: str) -> str:
    """Lower case without accents, as the FTS tokenizer compares words."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def terms(query: str) -> list[str]:
    """The words of what a visitor typed ("l'enfant" is "l" and "enfant", as indexed)."""
    return re.findall(r"\w+", query)[:MAX_TERMS]


def match_expression(query: str, prefix_last: bool = True) -> str | None:
    """An FTS5 query made only of quoted words: nothing a visitor types is FTS syntax."""
    words = terms(query)
    if not words:
        return None
    quoted = [f'"{w}"' for w in words]
    if prefix_last:
        quoted[-1] += "*"
    return " ".join(quoted)


def marked_html(snippet: str) -> str:
    return html.escape(snippet).replace(MARK_OPEN, "<mark>").replace(MARK_CLOSE, "</mark>")


class SearchIndex:
    """The index file. Every method opens its own connection: threads and processes (the
    agent's sync and the portal) share the file through SQLite's WAL."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # one writer per file in this process (the agent's activation and the portal's
        # catch-up); other processes are caught by the checks inside each transaction
        with _LOCKS_GUARD:
            self._lock = _LOCKS.setdefault(str(self.path.resolve()), threading.RLock())

    # ------------------------------------------------------------------ connections

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise SearchIndexError(f"{self.path}: cannot open the search index ({exc})") from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                conn.executescript(SCHEMA)
                conn.execute(f"PRAGMA user_version = {FORMAT}")
            elif version != FORMAT:
                raise SearchIndexError(f"{self.path}: search index of format {version}")
            yield conn
        except sqlite3.DatabaseError as exc:
            raise SearchIndexError(f"{self.path}: the search index is damaged ({exc})") from exc
        finally:
            conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def check(self) -> bool:
        """True when the file is there, of this format, and passes SQLite's and FTS5's checks."""
        if not self.path.is_file():
            return False
        try:
            with self._connect() as conn:
                ok = conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
                if ok:
                    conn.execute("INSERT INTO fts(fts, rank) VALUES('integrity-check', 1)")
                return bool(ok)
        except SearchIndexError:
            return False

    def discard(self) -> None:
        """Remove the file (and its WAL), to be built again from the releases."""
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(self.path) + suffix)

    # ------------------------------------------------------------------ what is covered

    def covers(self, channel: str, version: int) -> bool:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT 1 FROM covered WHERE channel = ? AND version = ?", (channel, version)
            ).fetchone()
            return row is not None

    def head(self, channel: str) -> int | None:
        with self._connect() as conn:
            row = conn.execute("SELECT version FROM heads WHERE channel = ?", (channel,)).fetchone()
            return int(row[0]) if row else None

    def descriptions(self) -> dict[str, str]:
        with self._connect() as conn:
            return {ch: d for ch, d in conn.execute("SELECT channel, description FROM heads")}

    def rows(self, channel: str | None = None) -> int:
        with self._connect() as conn:
            if channel is None:
                return int(conn.execute("SELECT count(*) FROM docs").fetchone()[0])
            q = "SELECT count(*) FROM docs WHERE channel = ?"
            return int(conn.execute(q, (channel,)).fetchone()[0])

    # ------------------------------------------------------------------ writing

    def update(
        self,
        release: Release,
        folder: Path,
        load_release: Callable[[int], Release | None],
    ) -> UpdateStats:
        """Index ``release`` (its files in ``folder``) after the indexed head.

        Only the files whose hash differs from the head's release are read and written,
        found by the tree diff of the two releases (which reads only the pieces that
        differ); without the head's release (collected, or no head yet) the channel is
        indexed from scratch, its files walked from the pieces. One transaction: the
        release becomes searchable all at once.
        """
        for _ in range(3):
            try:
                return self._update(release, folder, load_release)
            except _Moved:
                continue
        raise SearchIndexError(f"{self.path}: the index keeps changing under this update")

    def _update(
        self,
        release: Release,
        folder: Path,
        load_release: Callable[[int], Release | None],
    ) -> UpdateStats:
        channel, version = release.channel, release.version
        with self._lock:
            if self.covers(channel, version):
                return UpdateStats(channel, version, kept=release.files)
            head = self.head(channel)
            base = load_release(head) if head is not None and head < version else None
            if base is None:
                return self._rebuild_channel(release, folder)
            stats = UpdateStats(channel, version)
            changed: list[FileEntry] = []
            # paths whose row stops at the head (changed, gone, or new: a row an interrupted
            # index left), and whether the head's release had them
            retired: list[tuple[str, bool]] = []
            for a, b in release.changes_from(base):
                if a is not None and b is not None and a.sha256 == b.sha256:
                    continue  # only its mode changed: the same text
                if b is not None:
                    changed.append(b)
                    retired.append((b.path, a is not None))
                elif a is not None:
                    retired.append((a.path, True))
            stats.kept = release.files - len(changed)
            prepared = [(f.path, f.size, extract(folder / f.path, f.path)) for f in changed]
            with self._write() as conn:
                if _state(conn, channel, version) != (False, head):
                    raise _Moved  # another process indexed meanwhile: look again
                for path, was in retired:
                    cur = conn.execute(
                        "UPDATE docs SET until = ? WHERE channel = ? AND path = ? "
                        "AND until IS NULL",
                        (head, channel, path),
                    )
                    stats.removed += cur.rowcount if was else 0
                for path, size, got in prepared:
                    self._insert(conn, channel, version, path, size, got.title, got.text)
                    stats.written += 1
                self._set_head(conn, release, folder, version)
            return stats

    def _rebuild_channel(self, release: Release, folder: Path) -> UpdateStats:
        channel, version = release.channel, release.version
        stats = UpdateStats(channel, version, rebuilt=True)
        with self._write() as conn:
            if _state(conn, channel, version)[0]:
                return UpdateStats(channel, version, kept=release.files)
            ids = [r[0] for r in conn.execute("SELECT id FROM docs WHERE channel = ?", (channel,))]
            stats.removed = len(ids)
            conn.executemany("DELETE FROM fts WHERE rowid = ?", [(i,) for i in ids])
            del ids
            conn.execute("DELETE FROM docs WHERE channel = ?", (channel,))
            conn.execute("DELETE FROM covered WHERE channel = ?", (channel,))
            for f in release.iter_files():
                got = extract(folder / f.path, f.path)
                self._insert(conn, channel, version, f.path, f.size, got.title, got.text)
                stats.written += 1
            self._set_head(conn, release, folder, version)
        return stats

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        channel: str,
        version: int,
        path: str,
        size: int,
        title: str,
        body: str,
    ) -> None:
        cur = conn.execute(
            "INSERT INTO docs (channel, path, kind, size, since) VALUES (?, ?, ?, ?, ?)",
            (channel, path, kind_of(path), size, version),
        )
        conn.execute(
            "INSERT INTO fts (rowid, title, body, path) VALUES (?, ?, ?, ?)",
            (cur.lastrowid, title, body, path),
        )

    @staticmethod
    def _set_head(conn: sqlite3.Connection, release: Release, folder: Path, version: int) -> None:
        description = release.notes.strip()[:300]
        if (folder / "index.html").is_file():
            got = extract(folder / "index.html", "index.html")
            description = got.description or description
        conn.execute(
            "INSERT INTO heads (channel, version, description) VALUES (?, ?, ?) "
            "ON CONFLICT(channel) DO UPDATE SET version = excluded.version, "
            "description = excluded.description",
            (release.channel, version, description),
        )
        conn.execute(
            "INSERT OR IGNORE INTO covered (channel, version) VALUES (?, ?)",
            (release.channel, version),
        )

    def forget(self, channel: str, keep: set[int]) -> int:
        """Drop what only releases no longer on disk needed; returns the rows removed."""
        if not keep:
            return 0
        oldest = min(keep)
        with self._lock, self._write() as conn:
            conn.execute("DELETE FROM covered WHERE channel = ? AND version < ?", (channel, oldest))
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM docs WHERE channel = ? AND until < ?", (channel, oldest)
                )
            ]
            conn.executemany("DELETE FROM fts WHERE rowid = ?", [(i,) for i in ids])
            conn.executemany("DELETE FROM docs WHERE id = ?", [(i,) for i in ids])
            return len(ids)

    # ------------------------------------------------------------------ reading

    def search(self, query: str, served: dict[str, int], limit: int = 50) -> list[Hit]:
        """Best matches first among the files of the releases ``served`` ({channel: version})."""
        expr = match_expression(query)
        if expr is None or not served:
            return []
        where, args = _served_clause(served)
        sql = (
            "SELECT d.channel, d.path, d.kind, d.size, fts.title, "
            f"snippet(fts, 1, '{MARK_OPEN}', '{MARK_CLOSE}', '…', 14) "
            "FROM fts JOIN docs d ON d.id = fts.rowid "
            f"WHERE fts MATCH ? AND ({where}) "
            f"ORDER BY bm25(fts, {WEIGHTS[0]}, {WEIGHTS[1]}, {WEIGHTS[2]}) LIMIT ?"
        )
        with self._connect() as conn:
            rows = conn.execute(sql, [expr, *args, limit]).fetchall()
        return [
            Hit(ch, path, kind, size, title, marked_html(snip))
            for ch, path, kind, size, title, snip in rows
        ]

    def suggest(self, query: str, served: dict[str, int], limit: int = 8) -> list[Hit]:
        """Titles that match what is typed so far (the last word as a prefix)."""
        expr = match_expression(query)
        if expr is None or not served:
            return []
        where, args = _served_clause(served)
        sql = (
            "SELECT d.channel, d.path, d.kind, d.size, fts.title FROM fts "
            "JOIN docs d ON d.id = fts.rowid "
            f"WHERE fts MATCH ? AND ({where}) ORDER BY bm25(fts, 20.0, 0.5, 0.1) LIMIT ?"
        )
        with self._connect() as conn:
            rows = conn.execute(sql, [f"{{title path}} : ({expr})", *args, limit]).fetchall()
        return [Hit(ch, path, kind, size, title, "") for ch, path, kind, size, title in rows]


class _Moved(Exception):
    """The index changed between reading its head and writing: the update starts again."""


def _state(conn: sqlite3.Connection, channel: str, version: int) -> tuple[bool, int | None]:
    """(is ``version`` indexed, the head version), read inside a write transaction."""
    covered = conn.execute(
        "SELECT 1 FROM covered WHERE channel = ? AND version = ?", (channel, version)
    ).fetchone()
    head = conn.execute("SELECT version FROM heads WHERE channel = ?", (channel,)).fetchone()
    return covered is not None, (int(head[0]) if head else None)


def _served_clause(served: dict[str, int]) -> tuple[str, list[object]]:
    parts, args = [], []
    for channel, version in sorted(served.items()):
        parts.append("(d.channel = ? AND d.since <= ? AND (d.until IS NULL OR d.until >= ?))")
        args += [channel, version, version]
    return " OR ".join(parts), args


# --------------------------------------------------------------------------- the node's index


def for_releases(releases_dir: Path) -> SearchIndex:
    """The index of a node, beside its ``releases/`` folder."""
    return SearchIndex(index_path(Path(releases_dir).parent))


def index_release(
    index: SearchIndex,
    release: Release,
    folder: Path,
    load_release: Callable[[int], Release | None],
) -> UpdateStats | None:
    """Index a release being activated; a failure never stops the activation.

    A damaged file is discarded and the release indexed from scratch; anything else (a full
    disk) is logged, and the portal catches up later (``ensure``), searching file names in
    the meantime.
    """
    try:
        if index.path.exists() and not _usable(index):
            index.discard()
        stats = index.update(release, folder, load_release)
        log.info(
            "%s v%d: search index %s (%d written, %d removed, %d kept)",
            release.channel,
            release.version,
            "rebuilt" if stats.rebuilt else "updated",
            stats.written,
            stats.removed,
            stats.kept,
        )
        return stats
    except (SearchIndexError, sqlite3.Error, OSError) as exc:
        log.warning(
            "%s: the search index was not updated (%s); rebuilt later", release.channel, exc
        )
        return None


def _usable(index: SearchIndex) -> bool:
    try:
        with index._connect() as conn:
            conn.execute("SELECT count(*) FROM covered").fetchone()
        return True
    except SearchIndexError:
        return False


def ensure(
    index: SearchIndex,
    served: dict[str, int],
    folder_of: Callable[[str, int], Path],
    load_release: Callable[[str, int], Release | None],
    full_check: bool = False,
) -> list[UpdateStats]:
    """Make the index cover every release served: rebuilt from scratch when missing or
    damaged (``full_check`` runs SQLite's checks, for start-up), caught up where an
    activation could not index. Returns what was written."""
    if not index.path.exists() or (full_check and not index.check()) or not _usable(index):
        if index.path.exists():
            log.warning("%s is damaged: rebuilt from the releases", index.path)
        index.discard()
    done = []
    for channel, version in sorted(served.items()):
        if index.covers(channel, version):
            continue
        release = load_release(channel, version)
        if release is None:
            continue

        def base(v: int, c: str = channel) -> Release | None:
            return load_release(c, v)

        done.append(index.update(release, folder_of(channel, version), base))
    return done
