"""Turning a folder into chunks in an object store: the first half of publishing.

The hub runs it before it signs a release, and a curator's client runs it on its own machine
to learn which objects the hub lacks before uploading; neither needs a repository or keys
for it, only an object store, which is why it lives apart from both repository roles.
"""

from __future__ import annotations

import hashlib
import os
import stat
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, Protocol

from caravane.protocol.errors import NotFoundError, PathError
from caravane.protocol.metadata import FileEntry
from caravane.protocol.paths import check_paths

from . import zim
from .chunker import chunk_limits, iter_chunks
from .errors import StoreError
from .files_cache import FilesCache

Progress = Callable[[int], None] | None
PREFETCH = 32
LOOKAHEAD = 2000  # files whose cache entries are looked up at a time
BATCH_OBJECTS = 256  # chunks handed to a worker at once (one index transaction)
BATCH_BYTES = 2 * 1024 * 1024


class ChunkSink(Protocol):
    """Where :func:`ingest_files` puts chunks: an :class:`ObjectStore`, or a curator's
    client that compresses each chunk once and sends it to the hub without keeping it."""

    def put_raw_many(self, items: list[tuple[str | None, bytes]]) -> list[tuple[str, int]]: ...

    def freshen_many(
        self, shas: Iterable[str], at: float | None = None, expected: bool = False
    ) -> set[str]: ...


def _mode_of(st: os.stat_result) -> int:
    return 0o755 if st.st_mode & 0o111 else 0o644


class SourceFile(NamedTuple):
    """One file to publish: its manifest path, where it is, and its stat from the scan."""

    rel: str
    real: str  # a str, not a Path: building 100,000 Paths took a second of a republish
    stat: os.stat_result


def scan_source(source: Path) -> list[SourceFile]:
    """Files under ``source`` as (manifest path, real path, stat), sorted, symlinks refused.

    One ``scandir`` per folder and one ``lstat`` per file (which ingest then uses): the
    ``os.walk`` and ``pathlib`` version took four system calls and about 50 us per file.
    """
    source = Path(source)
    if not source.is_dir():
        raise NotFoundError(f"{source}: no such folder to publish")
    out: list[SourceFile] = []
    # absolute: the files cache knows a file by this path, whatever folder the CLI ran in
    folders: list[tuple[str, str]] = [(os.path.abspath(source), "")]
    while folders:
        folder, prefix = folders.pop()
        with os.scandir(folder) as it:
            for entry in it:
                rel = prefix + entry.name
                if entry.is_symlink():
                    raise PathError(
                        f"{entry.path}: symbolic links cannot be published; copy the file in"
                    )
                if entry.is_dir(follow_symlinks=False):
                    folders.append((entry.path, rel + "/"))
                    continue
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise PathError(f"{entry.path}: not a regular file")
                out.append(SourceFile(unicodedata.normalize("NFC", rel), entry.path, st))
    out.sort(key=lambda item: item.rel.encode())
    check_paths(p.rel for p in out)
    return out


def _read_small(real: str, size: int) -> bytes:
    """A small file's bytes in one open, read and close (no buffered file object)."""
    fd = os.open(real, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        data = os.read(fd, size + 1)  # one more: a file that grew is caught at the end
    finally:
        os.close(fd)
    return data


def ingest_files(
    store: ChunkSink,
    files: Sequence[SourceFile | tuple[str, Path]],
    avg_chunk: int,
    progress: Progress = None,
    cache: FilesCache | None = None,
    on_chunk: Callable[[str, int], object] | None = None,
    held: Callable[[dict[str, int]], set[str]] | None = None,
) -> tuple[list[FileEntry], int, int, int]:
    """Chunk, hash and store every file, compressing in worker threads.

    Returns (file entries, new objects, their raw bytes, their stored bytes). Used by the
    hub's own publish and by a curator's client, which builds locally and uploads only what
    the hub lacks. With a ``cache``, a file unchanged since it was last read (and whose
    chunks are all still in ``store``) is not read again. ``on_chunk(sha, size)`` hears of
    each chunk once it is in ``store`` (a client uploads while the folder is still read).
    ``held(chunks)`` answers which chunks ({sha: size}) of files unchanged since the cache
    saw them are still to be had (default: those in ``store``; a client that keeps no
    objects asks the hub), so such a file is read again only when one is gone.

    Chunks travel to the workers in batches (``BATCH_OBJECTS`` or ``BATCH_BYTES``): each
    batch is one presence query and one index transaction, where one per chunk cost most
    of a small file's time. A file no bigger than the chunker's minimum is one chunk
    whatever its bytes, so it is read in one call and hashed once (its hash is its chunk's).
    """
    new_objects = new_bytes = stored = 0
    min_size = chunk_limits(avg_chunk)[0]
    # one pipeline across files: small files do not each wait for their last chunk
    per_file: list[tuple[str, os.stat_result, str, list[tuple[str, int]]]] = []
    from_cache: set[int] = set()  # indexes in ``files`` taken from the cache, not read
    books: set[int] = set()  # ZIM files, carried as their canonical entries (packs/zim.py)
    workers = max(2, os.cpu_count() or 2)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        # each batch: the chunk lists to extend (with each chunk's size) and its future
        pending: deque[
            tuple[list[tuple[list[tuple[str, int]], int]], Future[list[tuple[str, int]]]]
        ] = deque()
        items: list[tuple[str | None, bytes]] = []
        targets: list[tuple[list[tuple[str, int]], int]] = []
        batch_bytes = 0

        def drain(keep: int) -> None:
            nonlocal new_objects, new_bytes, stored
            while len(pending) > keep:
                where, future = pending.popleft()
                for (chunks, n), (sha, w) in zip(where, future.result(), strict=True):
                    chunks.append((sha, n))
                    if on_chunk:
                        on_chunk(sha, n)
                    if w:
                        new_objects += 1
                        new_bytes += n
                        stored += w

        def flush() -> None:
            nonlocal items, targets, batch_bytes
            if not items:
                return
            pending.append((targets, pool.submit(store.put_raw_many, items)))
            if progress:
                progress(batch_bytes)
            items, targets, batch_bytes = [], [], 0
            drain(2 * workers)

        def add(sha: str | None, data: bytes, chunks: list[tuple[str, int]]) -> None:
            nonlocal batch_bytes
            items.append((sha, data))
            targets.append((chunks, len(data)))
            batch_bytes += len(data)
            if len(items) >= BATCH_OBJECTS or batch_bytes >= BATCH_BYTES:
                flush()

        hits: dict[int, FileEntry] = {}
        present: set[str] = set()
        if cache is not None:
            for start in range(0, len(files), LOOKAHEAD):
                ahead = [_with_stat(f) for f in files[start : start + LOOKAHEAD]]
                found = cache.lookup_many(
                    # a book's entry is its stream's: never one recorded for the raw file
                    [
                        (f.real, f.stat, -avg_chunk if zim.is_book(f.rel) else avg_chunk)
                        for f in ahead
                    ]
                )
                hits.update((start + j, e) for j, e in enumerate(found) if e is not None)
            # one index transaction freshens every chunk the cache offers, before any is
            # reused: each index page is written once, where a transaction per 2,000 files
            # rewrote most pages of the index each time (seconds at 100,000 files)
            wanted = {h: n for f in hits.values() for h, n in f.chunks}
            present = held(wanted) if held else store.freshen_many(wanted, expected=True)
        for i, item in enumerate(files):
            rel, real, st = _with_stat(item)
            if zim.is_book(rel):
                rel = zim.stream_path(rel)
                books.add(i)
            hit = hits.get(i)
            if hit is not None and all(h in present for h, _ in hit.chunks):
                if on_chunk:
                    for h, n in hit.chunks:
                        on_chunk(h, n)
                from_cache.add(i)
                per_file.append((rel, st, hit.sha256, hit.chunks))
                continue
            chunks: list[tuple[str, int]] = []
            if 0 < st.st_size <= min_size and i not in books:
                data = _read_small(real, st.st_size)
                digest = hashlib.sha256(data).hexdigest()
                add(digest, data, chunks)
                per_file.append((rel, st, digest, chunks))
                continue
            fhash = hashlib.sha256()
            with zim.open_stream(Path(real)) if i in books else open(real, "rb") as fh:
                for piece in iter_chunks(fh, avg_chunk):
                    fhash.update(piece)
                    add(None, bytes(piece), chunks)
            per_file.append((rel, st, fhash.hexdigest(), chunks))
        flush()
        drain(0)
    entries: list[FileEntry] = []
    for i, ((rel, st, digest, chunks), item) in enumerate(zip(per_file, files, strict=True)):
        real = os.fspath(item[1])
        size = sum(n for _, n in chunks)
        if size != st.st_size if i not in books else os.stat(real).st_mtime_ns != st.st_mtime_ns:
            raise StoreError(f"{real}: changed while it was being published; try again")
        entry = FileEntry(rel, size, _mode_of(st), digest, chunks)
        entries.append(entry)
        if cache is not None and i not in from_cache:
            cache.record(real, st, -avg_chunk if i in books else avg_chunk, entry)
    if cache is not None:
        cache.commit()
    if books:
        entries.sort(key=lambda e: e.path.encode())
        check_paths(e.path for e in entries)
    return entries, new_objects, new_bytes, stored


def _with_stat(item: SourceFile | tuple[str, Path]) -> SourceFile:
    """A scanned file with its stat (callers that built their own list give none)."""
    if isinstance(item, SourceFile):
        return item
    rel, real = item
    return SourceFile(rel, os.fspath(real), os.stat(real))


__all__ = ["ChunkSink", "SourceFile", "ingest_files", "scan_source"]
