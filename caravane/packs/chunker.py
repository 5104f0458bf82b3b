"""Content-defined chunking of a file as a stream, with flat memory.

The FastCDC chunker (:mod:`.cdc`) chunks a buffer (its path mode maps the whole file, which makes a
2 GiB file count as 2 GiB of resident memory). We feed it a sliding buffer instead: a cut
point depends only on the bytes from the chunk start up to ``max_size`` further, so as long as
``max_size`` bytes remain in the buffer the cut is the one a whole-file pass would make.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from .cdc import spans

DEFAULT_AVG = 64 * 1024
READ_SIZE = 8 * 1024 * 1024


def chunk_limits(avg_size: int) -> tuple[int, int, int]:
    return max(64, avg_size // 4), avg_size, avg_size * 4


def iter_chunks(
    fh: BinaryIO, avg_size: int = DEFAULT_AVG, size: int | None = None
) -> Iterator[memoryview]:
    """Yield the content-defined chunks of ``fh`` as memoryviews, valid until the next one
    (they point into one buffer that the next read overwrites).

    ``size``, the file's expected length, sizes that buffer: a read of 8 MiB for each file
    allocated 8 MiB whatever the file (29 GB of allocations for a 133 MB folder, which kept
    glibc's heap at its largest), and each read was joined to the previous one's tail in a
    new copy. A file longer than announced is still chunked whole (the buffer grows); the
    caller compares the length it got.
    """
    min_size, avg, max_size = chunk_limits(avg_size)
    cap = READ_SIZE + max_size if size is None or size >= READ_SIZE else size + 1
    buf = bytearray(cap)
    have = 0  # bytes at the start of buf not yet cut into chunks
    eof = False
    while not eof:
        if have == len(buf):  # longer than announced: room for a full read again
            grown = bytearray(READ_SIZE + max_size + have)
            grown[:have] = buf[:have]
            buf = grown
        with memoryview(buf) as whole:
            n = fh.readinto(whole[have:])  # type: ignore[attr-defined]
        if not n:
            eof = True
        have += n or 0
        if not have:
            break
        pos = 0
        with memoryview(buf)[:have] as view:
            for offset, length in spans(view, min_size, avg, max_size):
                if not eof and have - offset < max_size:
                    break
                with view[offset : offset + length] as piece:
                    yield piece
                pos = offset + length
        if pos:
            buf[: have - pos] = buf[pos:have]  # the tail, at most max_size, to the front
            have -= pos


def chunk_bytes(data: bytes, avg_size: int = DEFAULT_AVG) -> list[bytes]:
    """Chunks of an in-memory buffer (small inputs, tests)."""
    import io

    return [bytes(c) for c in iter_chunks(io.BytesIO(data), avg_size)]
