"""A compact set of object ids, for the walks that must remember every id of a release.

Collection and verification need "is this object referenced?" over every release kept,
which a Python ``set`` of hex ids answers at about 120 B an id (250 MB at two million). This
keeps the first 8 bytes of each SHA-256 in 256 sorted ``array('Q')`` buckets, 8 B an id:
16 MB at two million. Two ids sharing their first 64 bits are taken as one, so a lookup
can answer yes for an id that was never added (about n/2^64 per lookup): callers use it
only where a wrong yes is harmless (collection keeps an object it could have freed,
verification counts an unreferenced object as referenced). It never answers no for an id
that was added.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable
from itertools import chain

_BUCKETS = 256
#: ids held in a plain set until they are merged into the sorted buckets (about 3 MB; at
#: 2^17 a set held 12 MB, and a curator's client, with two of them, peaked 9 MiB higher at
#: 100,000 pages; a million adds take some 40 % longer, about 0.7 s)
_PENDING = 1 << 15


class IdSet:
    """Add ids (hex SHA-256) in any order; ``in`` after or between adds. An id added twice
    is held once."""

    def __init__(self) -> None:
        self._sorted = [array("Q") for _ in range(_BUCKETS)]
        self._pending: set[int] = set()
        self._count = 0

    def _in_sorted(self, v: int) -> bool:
        bucket = self._sorted[v >> 56]
        i = bisect_left(bucket, v)
        return i < len(bucket) and bucket[i] == v

    def add(self, sha: str) -> None:
        v = int(sha[:16], 16)
        if v in self._pending or self._in_sorted(v):
            return
        self._pending.add(v)
        self._count += 1
        if len(self._pending) >= _PENDING:
            self._merge()

    def update(self, shas: Iterable[str]) -> None:
        for sha in shas:
            self.add(sha)

    def _merge(self) -> None:
        more: list[list[int]] = [[] for _ in range(_BUCKETS)]
        for v in self._pending:
            more[v >> 56].append(v)
        self._pending = set()
        for b, new in enumerate(more):
            if new:
                new.sort()
                # two sorted runs: the sort merges them in one pass; the temporary list is
                # one bucket's, 1/256 of the set
                self._sorted[b] = array("Q", sorted(chain(self._sorted[b], new)))

    def __contains__(self, sha: object) -> bool:
        if not isinstance(sha, str):
            return False
        v = int(sha[:16], 16)
        return v in self._pending or self._in_sorted(v)

    def has_prefix(self, v: int) -> bool:
        """``in`` for an id given as its first 64 bits (as ``int(sha[:16], 16)``)."""
        return v in self._pending or self._in_sorted(v)

    def __len__(self) -> int:
        return self._count


__all__ = ["IdSet"]
