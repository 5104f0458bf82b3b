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

_BUCKETS = 256
#: ids added before a bucket is sorted again (sorting a bucket costs its size)
_PENDING = 1 << 16


class IdSet:
    """Add ids (hex SHA-256) in any order; ``in`` after or between adds."""

    def __init__(self) -> None:
        self._sorted = [array("Q") for _ in range(_BUCKETS)]
        self._pending = [array("Q") for _ in range(_BUCKETS)]
        self._n_pending = 0

    @staticmethod
    def _key(sha: str) -> tuple[int, int]:
        v = int(sha[:16], 16)
        return v >> 56, v

    def add(self, sha: str) -> None:
        b, v = self._key(sha)
        self._pending[b].append(v)
        self._n_pending += 1
        if self._n_pending >= _PENDING * 16:
            self._merge()

    def update(self, shas: Iterable[str]) -> None:
        for sha in shas:
            self.add(sha)

    def _merge(self) -> None:
        for b in range(_BUCKETS):
            more = self._pending[b]
            if more:
                # one bucket at a time: the temporary list is 1/256 of the set
                merged = sorted(set(self._sorted[b]).union(more))
                self._sorted[b] = array("Q", merged)
                self._pending[b] = array("Q")
        self._n_pending = 0

    def __contains__(self, sha: object) -> bool:
        if not isinstance(sha, str):
            return False
        if self._n_pending:
            self._merge()
        b, v = self._key(sha)
        bucket = self._sorted[b]
        i = bisect_left(bucket, v)
        return i < len(bucket) and bucket[i] == v

    def __len__(self) -> int:
        if self._n_pending:
            self._merge()
        return sum(len(b) for b in self._sorted)


__all__ = ["IdSet"]
