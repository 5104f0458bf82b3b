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


def iter_chunks(fh: BinaryIO, avg_size: int = DEFAULT_AVG) -> Iterator[memoryview]:
    """Yield the content-defined chunks of ``fh`` as memoryviews (valid until the next one)."""
    min_size, avg, max_size = chunk_limits(avg_size)
    buf = b""
    eof = False
    while not eof:
        block = fh.read(READ_SIZE)
        if not block:
            eof = True
        buf = buf + block if buf else block
        view = memoryview(buf)
        pos = 0
        if len(view):
            for offset, length in spans(view, min_size, avg, max_size):
                if not eof and len(view) - offset < max_size:
                    break
                yield view[offset : offset + length]
                pos = offset + length
        buf = bytes(view[pos:]) if pos < len(view) else b""
        view.release()


def chunk_bytes(data: bytes, avg_size: int = DEFAULT_AVG) -> list[bytes]:
    """Chunks of an in-memory buffer (small inputs, tests)."""
    import io

    return [bytes(c) for c in iter_chunks(io.BytesIO(data), avg_size)]
