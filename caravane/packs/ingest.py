"""Turning a folder into chunks in an object store: the first half of publishing.

The hub runs it before it signs a release, and a curator's client runs it on its own machine
to learn which objects the hub lacks before uploading; neither needs a repository or keys
for it, only an object store, which is why it lives apart from both repository roles.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from caravane.protocol.errors import NotFoundError, PathError
from caravane.protocol.metadata import FileEntry
from caravane.protocol.paths import check_paths

from . import zim
from .chunker import iter_chunks
from .errors import StoreError
from .files_cache import FilesCache

Progress = Callable[[int], None] | None
PREFETCH = 32
LOOKAHEAD = 2000  # files whose cache entries are looked up (and freshened) together


class ChunkSink(Protocol):
    """Where :func:`ingest_files` puts chunks: an :class:`ObjectStore`, or a curator's
    client that compresses each chunk once and sends it to the hub without keeping it."""

    def put_raw(self, data: bytes | memoryview, sha: str | None = None) -> tuple[str, int]: ...

    def freshen_many(self, shas: Iterable[str], at: float | None = None) -> set[str]: ...


def _mode_of(st: os.stat_result) -> int:
    return 0o755 if st.st_mode & 0o111 else 0o644


def scan_source(source: Path) -> list[tuple[str, Path]]:
    """Files under ``source`` as (manifest path, real path), sorted, symlinks refused."""
    source = Path(source)
    if not source.is_dir():
        raise NotFoundError(f"{source}: no such folder to publish")
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            real = Path(dirpath, name)
            rel = real.relative_to(source).as_posix()
            if real.is_symlink():
                raise PathError(f"{real}: symbolic links cannot be published; copy the file in")
            if not real.is_file():
                raise PathError(f"{real}: not a regular file")
            out.append((unicodedata.normalize("NFC", rel), real))
    out.sort(key=lambda item: item[0].encode())
    check_paths(p for p, _ in out)
    return out


def ingest_files(
    store: ChunkSink,
    files: list[tuple[str, Path]],
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
    """
    new_objects = new_bytes = stored = 0
    # one pipeline across files: small files do not each wait for their last chunk
    per_file: list[tuple[str, os.stat_result, str, list[tuple[str, int]]]] = []
    from_cache: set[int] = set()  # indexes in ``files`` taken from the cache, not read
    books: set[int] = set()  # ZIM files, carried as their canonical entries (packs/zim.py)

    def put(data: bytes) -> tuple[str, int, int]:
        sha, written = store.put_raw(data)
        return sha, len(data), written

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        pending: deque[tuple[list[tuple[str, int]], Future[tuple[str, int, int]]]] = deque()

        def drain(keep: int) -> None:
            nonlocal new_objects, new_bytes, stored
            while len(pending) > keep:
                chunks, future = pending.popleft()
                sha, n, w = future.result()
                chunks.append((sha, n))
                if on_chunk:
                    on_chunk(sha, n)
                if w:
                    new_objects += 1
                    new_bytes += n
                    stored += w

        stats: dict[int, os.stat_result] = {}
        hits: dict[int, FileEntry] = {}
        present: set[str] = set()
        for i, (rel, real) in enumerate(files):
            if i % LOOKAHEAD == 0:
                # the next files' cache entries, and one index transaction that freshens
                # all their chunks (one per file was a write per file at 100k files)
                stats.clear()
                hits.clear()
                for j in range(i, min(i + LOOKAHEAD, len(files))):
                    stats[j] = files[j][1].stat()
                    # a book's entry is its stream's: never one recorded for the raw file
                    key = -avg_chunk if zim.is_book(files[j][0]) else avg_chunk
                    found = cache.lookup(files[j][1], stats[j], key) if cache else None
                    if found is not None:
                        hits[j] = found
                wanted = {h: n for f in hits.values() for h, n in f.chunks}
                present = held(wanted) if held else store.freshen_many(wanted)
            st = stats[i]
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
            fhash = hashlib.sha256()
            chunks: list[tuple[str, int]] = []
            with zim.open_stream(real) if i in books else open(real, "rb") as fh:
                for piece in iter_chunks(fh, avg_chunk):
                    fhash.update(piece)
                    data = bytes(piece)
                    pending.append((chunks, pool.submit(put, data)))
                    drain(PREFETCH)
                    if progress:
                        progress(len(data))
            per_file.append((rel, st, fhash.hexdigest(), chunks))
        drain(0)
    entries: list[FileEntry] = []
    for i, ((rel, st, digest, chunks), (_, real)) in enumerate(zip(per_file, files, strict=True)):
        size = sum(n for _, n in chunks)
        if size != st.st_size if i not in books else real.stat().st_mtime_ns != st.st_mtime_ns:
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


__all__ = ["ChunkSink", "ingest_files", "scan_source"]
