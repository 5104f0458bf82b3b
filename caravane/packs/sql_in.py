"""Keys for SQL ``IN (?, ?, ...)`` lists, in a few sizes only.

Python's sqlite3 keeps the last 128 statements it prepared on each connection, and a
statement of a thousand placeholders is some 300 KB prepared. Batches of any length made
a new statement each: a hub taking a million-file upload held 59 MiB of them across its
connections (memray), growing with the upload, and one connection running lookups of
1,000 to 2,000 keys grew by 42 MB. Padded to a power of two (by repeating a key, which
``IN`` ignores), a batch of up to ``n`` keys makes at most log2(n) + 1 statements, each
prepared once and reused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def padded(items: Sequence[T]) -> list[T]:
    """``items`` repeated at the end up to the next power of two (none if empty)."""
    out = list(items)
    if out:
        size = 1 << (len(out) - 1).bit_length()
        out += [out[0]] * (size - len(out))
    return out


def parts(items: Sequence[T], size: int, pad: bool = True) -> Iterator[list[T]]:
    """``items`` in padded batches of at most ``size`` keys (a power of two, at most
    SQLite's 32,766 variables less the statement's others).

    ``pad=False`` for PostgreSQL: psycopg prepares a statement on the server once it has
    run five times, and the generic plan PostgreSQL then chose for a padded lookup of an
    upload's objects made each declaration several times slower (a curator's publish of
    100,000 pages took 31 s instead of 10); unpadded, no two batches share a statement."""
    for start in range(0, len(items), size):
        part = list(items[start : start + size])
        yield padded(part) if pad else part


def marks(items: Sequence[object]) -> str:
    """The placeholders for ``items``."""
    return ",".join("?" * len(items))
