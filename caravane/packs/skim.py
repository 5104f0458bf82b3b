"""Skimming an old release by its leaves' summaries: the walks of A a pack build makes,
at the cost of the leaves that hold something the build looks for.

A pack from A to B looks through A twice: for the chunks of B's changed files that A may
hold elsewhere (:func:`.changes.missing_in_changes`), and for the files of A that could be
delta bases (:class:`.delta.StreamedSimilarity`). Each walk decoded every entry of A: at a
million files, 77 s of a one-file pack's build, the cost of the channel, not the change.

A leaf of the file list is content-addressed and never changes, and B shares all of A's
leaves but those along the changed paths. So each leaf gets a summary, computed once from
its bytes and kept by its hash (:class:`LeafSummaries`, in the similarity index):

- the 64-bit prefixes of its chunk ids, of its sketchable files' content hashes and of
  hashes of its paths, sorted (a probe: any hit and the leaf is decoded; a prefix shared
  by chance only costs a decode);
- its file count and the bytes of its sketchable files (the sample rate's input);
- for each file name key, the best :data:`.delta.CANDIDATES` files by size, then path (a
  name like ``page-#.html`` matches every file of A, and only those can win on the name).

A walk reads the tree's nodes, asks for the summaries of a batch of leaves, and decodes
only the leaves whose summary the probe hits (or that have none yet: summarised then).
The answer is the same as the full walk's by construction, since a summary is a function
of the leaf's bytes: pack bytes do not depend on what was cached.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from caravane.protocol import tree
from caravane.protocol.errors import VerificationError
from caravane.protocol.metadata import FileEntry
from caravane.protocol.release import Release

from . import sql_in

#: what a stored summary's layout and meaning depend on; another value is not read
MAGIC = b"SKM1"
_HEAD = struct.Struct("<4sIQI")
#: leaves whose summaries are asked for at once
BATCH = 256


def id_key(sha: str) -> int:
    """The first 64 bits of a hex SHA-256 (as :class:`.idset.IdSet` keeps them)."""
    return int(sha[:16], 16)


def path_key(path: str) -> int:
    return int.from_bytes(hashlib.blake2b(path.encode(), digest_size=8).digest())


@dataclass
class LeafSummary:
    files: int
    sketched: int
    keys: array  # type: ignore[type-arg]
    #: name key -> [(size, path, offset in the leaf)], best first
    names: dict[str, list[tuple[int, str, int]]] = field(default_factory=dict)

    def hits(self, probes: Iterable[int]) -> bool:
        keys = self.keys
        n = len(keys)
        for v in probes:
            i = bisect_left(keys, v)
            if i < n and keys[i] == v:
                return True
        return False

    def encode(self) -> bytes:
        names = json.dumps(
            {k: [list(t) for t in v] for k, v in sorted(self.names.items())},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        head = _HEAD.pack(MAGIC, self.files, self.sketched, len(self.keys))
        return zlib.compress(head + self.keys.tobytes() + names, 1)

    @classmethod
    def decode(cls, blob: bytes) -> LeafSummary | None:
        """None for what this code did not write (another layout, damage): summarise again."""
        try:
            data = zlib.decompress(blob)
            magic, files, sketched, n = _HEAD.unpack_from(data)
            if magic != MAGIC:
                return None
            end = _HEAD.size + 8 * n
            keys = array("Q")
            keys.frombytes(data[_HEAD.size : end])
            raw = json.loads(data[end:])
            names = {k: [(int(s), str(p), int(o)) for s, p, o in v] for k, v in raw.items()}
        except (zlib.error, struct.error, ValueError, TypeError):
            return None
        if len(keys) != n:
            return None
        return cls(files, sketched, keys, names)


def summarize(entries: list[FileEntry], candidates: int) -> LeafSummary:
    from .delta import name_key, name_rank
    from .similarity import sketchable

    keys: set[int] = set()
    names: dict[str, list[tuple[tuple[float, str], int, str, int]]] = {}
    sketched = 0
    for offset, f in enumerate(entries):
        keys.add(path_key(f.path))
        keys.update(id_key(h) for h, _ in f.chunks)
        if sketchable(f):
            sketched += f.size
            keys.add(id_key(f.sha256))
        top = names.setdefault(name_key(f.path), [])
        top.append((name_rank(f.size, f.path), f.size, f.path, offset))
        if len(top) > candidates:
            top.sort()
            del top[candidates:]
    return LeafSummary(
        len(entries),
        sketched,
        array("Q", sorted(keys)),
        {k: [(s, p, o) for _, s, p, o in sorted(v)] for k, v in names.items()},
    )


def probes_hit(probes: set[int]) -> Callable[[LeafSummary], bool]:
    """Whether a summary holds any of ``probes`` (a set the caller may change as it goes)."""
    return lambda s: s.hits(probes)


class LeafSummaries:
    """Summaries by leaf hash, in a table of the similarity index's database (a cache: a
    missing or unreadable row is computed again)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.execute(
            "CREATE TABLE IF NOT EXISTS leaves (sha BLOB PRIMARY KEY, data BLOB NOT NULL)"
            " WITHOUT ROWID"
        )

    def get_many(self, shas: list[str]) -> dict[str, LeafSummary]:
        out: dict[str, LeafSummary] = {}
        for batch in sql_in.parts([bytes.fromhex(s) for s in shas], 512):
            marks = sql_in.marks(batch)
            for sha, data in self._db.execute(
                f"SELECT sha, data FROM leaves WHERE sha IN ({marks})", batch
            ):
                s = LeafSummary.decode(data)
                if s is not None:
                    out[sha.hex()] = s
        return out

    def put_many(self, rows: list[tuple[str, LeafSummary]]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO leaves VALUES (?, ?)",
                ((bytes.fromhex(sha), s.encode()) for sha, s in rows),
            )


@dataclass
class Leaf:
    """One leaf of A as a skim passes it: where its files start in A, its summary, and its
    entries when it was decoded."""

    first: int
    ref: tree.PieceRef
    summary: LeafSummary
    entries: list[FileEntry] | None


def leaf_entries(release: Release, refs: list[tree.PieceRef]) -> list[list[FileEntry]]:
    """Leaves of ``release`` read and verified against their refs."""
    assert release.read is not None
    datas = release.read(refs)
    if len(datas) != len(refs):
        raise VerificationError(f"{release.what}: pieces missing")
    return [
        tree.leaf_entries(ref, data, f"{release.what} piece {ref.sha256[:12]}")
        for ref, data in zip(refs, datas, strict=True)
    ]


def skim(
    release: Release,
    summaries: LeafSummaries,
    wanted: Callable[[LeafSummary], bool],
    candidates: int,
) -> Iterator[Leaf]:
    """Every leaf of a format 2 ``release`` in path order, decoded where ``wanted`` says
    so of its summary, or where it had none (then summarised and stored)."""
    first = 0
    batch: list[tree.PieceRef] = []

    def flush() -> Iterator[Leaf]:
        nonlocal first
        have = summaries.get_many([r.sha256 for r in batch])
        todo = [r for r in batch if r.sha256 not in have or wanted(have[r.sha256])]
        decoded = dict(zip((r.sha256 for r in todo), leaf_entries(release, todo), strict=True))
        new = [
            (sha, summarize(entries, candidates))
            for sha, entries in decoded.items()
            if sha not in have
        ]
        if new:
            summaries.put_many(new)
            have.update(new)
        for ref in batch:
            yield Leaf(first, ref, have[ref.sha256], decoded.get(ref.sha256))
            first += ref.files
        batch.clear()

    for ref in release.piece_refs():
        if ref.level == 0:
            batch.append(ref)
            if len(batch) >= BATCH:
                yield from flush()
    if batch:
        yield from flush()


__all__ = [
    "Leaf",
    "LeafSummaries",
    "LeafSummary",
    "id_key",
    "path_key",
    "probes_hit",
    "skim",
    "summarize",
]
