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
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import NamedTuple, Protocol

from caravane.protocol.errors import NotFoundError, PathError
from caravane.protocol.metadata import FileEntry
from caravane.protocol.paths import SortedPathChecker, check_paths

from . import zim
from .chunker import chunk_limits, iter_chunks
from .errors import StoreError
from .files_cache import FilesCache

Progress = Callable[[int], None] | None
PREFETCH = 32
LOOKAHEAD = 10_000  # files ingested as one window (their cache entries looked up at once)
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


def iter_source(source: Path) -> Iterator[SourceFile]:
    """Files under ``source`` as (manifest path, real path, stat), in manifest path order.

    A generator: a million-file folder is never held as a list. One ``scandir`` per folder,
    its entries sorted by their NFC name (a folder's as ``name + "/"``, a ZIM book's as the
    name of its stream): that is the ascending order of the whole paths, so no global sort
    is needed, and only the listings of the folders on the current path are held. Paths are
    checked as they go by (:class:`SortedPathChecker`); symlinks and anything but regular
    files are refused. One ``lstat`` per file, which ingest then uses.
    """
    source = Path(source)
    if not source.is_dir():
        raise NotFoundError(f"{source}: no such folder to publish")
    checker = SortedPathChecker()
    # absolute: the files cache knows a file by this path, whatever folder the CLI ran in
    stack: list[tuple[str, Iterator[tuple[str, str, os.DirEntry[str]]]]] = [
        ("", iter(_listing(os.path.abspath(source))))
    ]
    while stack:
        prefix, it = stack[-1]
        item = next(it, None)
        if item is None:
            stack.pop()
            continue
        key, name, entry = item
        if key.endswith("/"):
            stack.append((prefix + key, iter(_listing(entry.path))))
            continue
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise PathError(f"{entry.path}: not a regular file")
        checker.add(prefix + key)
        yield SourceFile(prefix + name, entry.path, st)
    checker.finish()


def _listing(folder: str) -> list[tuple[str, str, os.DirEntry[str]]]:
    """A folder's entries as (sort key, NFC name, entry), sorted by key (see iter_source).

    Code point order of ``str`` is the byte order of their UTF-8, the manifest's order."""
    out: list[tuple[str, str, os.DirEntry[str]]] = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.is_symlink():
                raise PathError(
                    f"{entry.path}: symbolic links cannot be published; copy the file in"
                )
            name = unicodedata.normalize("NFC", entry.name)
            if entry.is_dir(follow_symlinks=False):
                out.append((name + "/", name, entry))
            else:
                out.append((zim.stream_path(name) if zim.is_book(name) else name, name, entry))
    out.sort(key=lambda item: item[0])
    return out


def scan_source(source: Path) -> list[SourceFile]:
    """:func:`iter_source` as a list (callers that need the list, or its length, first)."""
    return list(iter_source(source))


def scan_totals(source: Path) -> tuple[int, int]:
    """(files, bytes) under ``source``, every path checked, nothing held: what the CLI
    needs to size its progress bar, and a bad name found before any file is read."""
    files = size = 0
    for f in iter_source(source):
        files += 1
        size += f.stat.st_size
    return files, size


def _read_small(real: str, size: int) -> bytes:
    """A small file's bytes in one open, read and close (no buffered file object)."""
    fd = os.open(real, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        data = os.read(fd, size + 1)  # one more: a file that grew is caught at the end
    finally:
        os.close(fd)
    return data


class _Read(NamedTuple):
    """A file of the window being ingested: its entry's parts, chunks filled by workers."""

    file: SourceFile
    rel: str  # its manifest path (a book's stream path)
    book: bool
    digest: str
    chunks: list[tuple[str, int]]
    cached: bool


class Ingest:
    """Chunk, hash and store files, compressing in worker threads; iterate for the entries.

    Iterating yields each file's entry in the order the files came (a publish feeds them to
    a :class:`~caravane.protocol.tree.TreeWriter`), a window of ``LOOKAHEAD`` files at a time:
    nothing here grows with the number of files. Counters (``new_objects``, ``new_bytes``,
    ``stored``) are complete once the iteration ends. With a ``cache``, a file unchanged since
    it was last read (and whose chunks are all still in ``store``) is not read again.
    ``on_chunk(sha, size)`` hears of each chunk once it is in ``store`` (a client uploads
    while the folder is still read). ``held(chunks)`` answers which chunks ({sha: size}) of
    files unchanged since the cache saw them are still to be had (default: those in
    ``store``; a client that keeps no objects asks the hub), so such a file is read again
    only when one is gone. Whoever signs a release from these entries checks again, under
    the lock collection takes, that the objects it names are there.

    Chunks travel to the workers in batches (``BATCH_OBJECTS`` or ``BATCH_BYTES``): each
    batch is one presence query and one index transaction, where one per chunk cost most
    of a small file's time. A file no bigger than the chunker's minimum is one chunk
    whatever its bytes, so it is read in one call and hashed once (its hash is its chunk's).
    """

    def __init__(
        self,
        store: ChunkSink,
        files: Iterable[SourceFile | tuple[str, Path]],
        avg_chunk: int,
        progress: Progress = None,
        cache: FilesCache | None = None,
        on_chunk: Callable[[str, int], object] | None = None,
        held: Callable[[dict[str, int]], set[str]] | None = None,
    ) -> None:
        self.store, self.files, self.avg_chunk = store, files, avg_chunk
        self.progress, self.cache, self.on_chunk, self.held = progress, cache, on_chunk, held
        self.new_objects = self.new_bytes = self.stored = 0
        self.books = 0  # ZIM files, carried as their canonical entries (packs/zim.py)

    def _hits(self, window: list[SourceFile], books: list[bool]) -> list[FileEntry | None]:
        """The cache's entries for a window of files, kept only if every chunk is here."""
        if self.cache is None:
            return [None] * len(window)
        avg = self.avg_chunk
        found = self.cache.lookup_many(
            # a book's entry is its stream's: never one recorded for the raw file
            [(f.real, f.stat, -avg if b else avg) for f, b in zip(window, books, strict=True)]
        )
        wanted = {h: n for e in found if e is not None for h, n in e.chunks}
        if not wanted:
            return found
        # read only: freshening each window's chunks rewrote most pages of the store's
        # index each time; the commit checks under the lock what the release names
        have = self.held(wanted) if self.held else _present(self.store, wanted)
        return [e if e is not None and all(h in have for h, _ in e.chunks) else None for e in found]

    def __iter__(self) -> Iterator[FileEntry]:
        min_size = chunk_limits(self.avg_chunk)[0]
        workers = max(2, os.cpu_count() or 2)
        store, on_chunk, progress = self.store, self.on_chunk, self.progress
        source = iter(self.files)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # each batch: the chunk lists to extend (with each chunk's size) and its future
            pending: deque[
                tuple[list[tuple[list[tuple[str, int]], int]], Future[list[tuple[str, int]]]]
            ] = deque()
            items: list[tuple[str | None, bytes]] = []
            targets: list[tuple[list[tuple[str, int]], int]] = []
            batch_bytes = submitted = 0

            def drain(keep: int) -> None:
                while len(pending) > keep:
                    where, future = pending.popleft()
                    for (chunks, n), (sha, w) in zip(where, future.result(), strict=True):
                        chunks.append((sha, n))
                        if on_chunk:
                            on_chunk(sha, n)
                        if w:
                            self.new_objects += 1
                            self.new_bytes += n
                            self.stored += w

            def flush() -> None:
                nonlocal items, targets, batch_bytes, submitted
                if not items:
                    return
                pending.append((targets, pool.submit(store.put_raw_many, items)))
                submitted += 1
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

            def done(window: list[_Read], mark: int) -> Iterator[FileEntry]:
                """The entries of a window, once the batches holding its chunks are in."""
                if mark > submitted:
                    flush()
                drain(submitted - mark)
                yield from self._entries(window)

            # windows read, each with the number of batches that completes its chunks
            ready: deque[tuple[list[_Read], int]] = deque()
            while True:
                window = [_with_stat(f) for f in islice(source, LOOKAHEAD)]
                if not window:
                    break
                reads: list[_Read] = []
                books = [zim.is_book(f.rel) for f in window]
                hits = self._hits(window, books)
                for f, hit, book in zip(window, hits, books, strict=True):
                    rel = zim.stream_path(f.rel) if book else f.rel
                    self.books += book
                    if hit is not None:
                        if on_chunk:
                            for h, n in hit.chunks:
                                on_chunk(h, n)
                        reads.append(_Read(f, rel, book, hit.sha256, hit.chunks, True))
                        continue
                    chunks: list[tuple[str, int]] = []
                    size = f.stat.st_size
                    if 0 < size <= min_size and not book:
                        data = _read_small(f.real, size)
                        digest = hashlib.sha256(data).hexdigest()
                        add(digest, data, chunks)
                        reads.append(_Read(f, rel, book, digest, chunks, False))
                        continue
                    fhash = hashlib.sha256()
                    with zim.open_stream(Path(f.real)) if book else open(f.real, "rb") as fh:
                        for piece in iter_chunks(fh, self.avg_chunk):
                            fhash.update(piece)
                            add(None, bytes(piece), chunks)
                    reads.append(_Read(f, rel, book, fhash.hexdigest(), chunks, False))
                ready.append((reads, submitted + (1 if items else 0)))
                # the window before this one: its chunks were compressed while this was read
                while len(ready) > 1:
                    yield from done(*ready.popleft())
            while ready:
                yield from done(*ready.popleft())
        if self.cache is not None:
            self.cache.commit()

    def _entries(self, window: list[_Read]) -> Iterator[FileEntry]:
        avg, cache = self.avg_chunk, self.cache
        for r in window:
            st, real = r.file.stat, r.file.real
            size = sum(n for _, n in r.chunks)
            if size != st.st_size if not r.book else os.stat(real).st_mtime_ns != st.st_mtime_ns:
                raise StoreError(f"{real}: changed while it was being published; try again")
            entry = FileEntry(r.rel, size, _mode_of(st), r.digest, r.chunks)
            if cache is not None and not r.cached:
                cache.record(real, st, -avg if r.book else avg, entry)
            yield entry


def _present(store: ChunkSink, wanted: dict[str, int]) -> set[str]:
    present = getattr(store, "present", None)
    if present is not None:
        return set(present(wanted))
    return store.freshen_many(wanted, expected=True)


def ingest_files(
    store: ChunkSink,
    files: Sequence[SourceFile | tuple[str, Path]],
    avg_chunk: int,
    progress: Progress = None,
    cache: FilesCache | None = None,
    on_chunk: Callable[[str, int], object] | None = None,
    held: Callable[[dict[str, int]], set[str]] | None = None,
) -> tuple[list[FileEntry], int, int, int]:
    """:class:`Ingest` as a list: (file entries sorted by path, new objects, their raw
    bytes, their stored bytes). For callers that hold the list anyway (a curator's client,
    the hub's web upload); a publish streams :class:`Ingest` instead."""
    run = Ingest(store, files, avg_chunk, progress, cache, on_chunk, held)
    entries = list(run)
    if run.books:
        entries.sort(key=lambda e: e.path.encode())
        check_paths(e.path for e in entries)
    return entries, run.new_objects, run.new_bytes, run.stored


def _with_stat(item: SourceFile | tuple[str, Path]) -> SourceFile:
    """A scanned file with its stat (callers that built their own list give none)."""
    if isinstance(item, SourceFile):
        return item
    rel, real = item
    return SourceFile(rel, os.fspath(real), os.stat(real))


__all__ = [
    "ChunkSink",
    "Ingest",
    "SourceFile",
    "ingest_files",
    "iter_source",
    "scan_source",
    "scan_totals",
]
