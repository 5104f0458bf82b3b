"""Turning a folder into chunks in an object store: the first half of publishing.

The hub runs it before it signs a release, and a curator's client runs it on its own machine
to learn which objects the hub lacks before uploading; neither needs a repository or keys
for it, only an object store, which is why it lives apart from both repository roles.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import unicodedata
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, Protocol, cast

from caravane.protocol.errors import NotFoundError, PathError
from caravane.protocol.metadata import FileEntry
from caravane.protocol.paths import ListingChecker, check_paths
from caravane.protocol.tree import EncodedEntry, PieceRef, TreeWriter, encode_entry

from . import zim
from .chunker import DEFAULT_AVG, chunk_limits, iter_chunks
from .errors import StoreError
from .files_cache import FilesCache, Folder, unchanged

Progress = Callable[[int], None] | None
PREFETCH = 32
LOOKAHEAD = 10_000  # files ingested as one window (their cache entries looked up at once)
BATCH_OBJECTS = 256  # chunks handed to a worker at once (one index transaction)
BATCH_BYTES = 2 * 1024 * 1024
#: files up to this size are handed whole to ``on_content`` (their chunks are in memory
#: until their batch is stored anyway); larger ones are read back later by who needs them
WHOLE_CONTENT = 4 * 1024 * 1024


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


class CachedRun(NamedTuple):
    """Files of one folder, next to each other in the scan, that the files cache knows
    unchanged: their entries, already encoded, go on without a :class:`SourceFile` each."""

    folder: str  # the folder's real path
    prefix: str  # its manifest path ("" at the top)
    names: list[str]  # the files' names on disk
    entries: list[EncodedEntry]


#: files of a folder in one :class:`CachedRun` at most
RUN_FILES = 1000


def _encoded(fields: tuple[str, int, int, bytes, bool]) -> EncodedEntry:
    """An EncodedEntry from its fields without the keyword-taking constructor (a million
    of them per republish)."""
    return tuple.__new__(EncodedEntry, fields)


def iter_source(source: Path) -> Iterator[SourceFile]:
    """Files under ``source`` as (manifest path, real path, stat), in manifest path order.

    A generator: a million-file folder is never held as a list. One ``scandir`` per folder,
    its entries sorted by their NFC name (a folder's as ``name + "/"``, a ZIM book's as the
    name of its stream): that is the ascending order of the whole paths, so no global sort
    is needed, and only the listings of the folders on the current path are held. Names are
    checked a listing at a time (:class:`ListingChecker`), before any file of the folder is
    given; symlinks and anything but regular files are refused. One ``lstat`` per file,
    which ingest then uses.
    """
    return cast(Iterator[SourceFile], _walk(Path(source), None, 0))


def iter_source_cached(
    source: Path, cache: FilesCache, avg_chunk: int
) -> Iterator[SourceFile | CachedRun]:
    """:func:`iter_source`, where runs of files the cache knows unchanged (same size,
    mtime, ctime and inode, chunked with ``avg_chunk``) come as :class:`CachedRun`: a
    republish of a million files then costs a ``stat`` and a comparison per unchanged file.
    Only for a cache whose chunks are known to be in the store (see files_cache.py)."""
    return _walk(Path(source), cache, avg_chunk)


def _walk(
    source: Path, cache: FilesCache | None, avg_chunk: int
) -> Iterator[SourceFile | CachedRun]:
    if not source.is_dir():
        raise NotFoundError(f"{source}: no such folder to publish")
    checker = ListingChecker()
    # absolute: the files cache knows a file by this path, whatever folder the CLI ran in
    top = os.path.abspath(source)
    listing, twins = _listing(top, "", False, checker)
    no_recs = Folder({}, b"")
    # per open folder: its real and manifest paths, whether it lies under folders merged
    # by case, its subfolders merged with a sibling, its records, its entries still to walk
    stack = [(top, "", False, twins, cache.folder(top, "") if cache else no_recs, iter(listing))]
    names: list[str] = []
    entries: list[EncodedEntry] = []
    while stack:
        real, prefix, merged, twins, recs, it = stack[-1]
        item = next(it, None)
        if item is None or entries and (item[0].endswith("/") or len(entries) >= RUN_FILES):
            if entries:
                yield CachedRun(real, prefix[:-1], names, entries)
                names, entries = [], []
            if item is None:
                stack.pop()
                continue
        key, name, entry = item
        if key.endswith("/"):
            inner, sub = prefix + key, merged or name in twins
            listing, inner_twins = _listing(entry.path, inner, sub, checker)
            inner_recs = cache.folder(entry.path, inner[:-1]) if cache else no_recs
            stack.append((entry.path, inner, sub, inner_twins, inner_recs, iter(listing)))
            continue
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise PathError(f"{entry.path}: not a regular file")
        rec = recs.recs.get(entry.name)
        if rec is not None and key == name and unchanged(rec, st, avg_chunk):
            names.append(entry.name)
            data = recs.blob[rec[7] : rec[8]]
            entries.append(_encoded((prefix + name, rec[0], rec[5], data, rec[6])))
            continue
        if entries:
            yield CachedRun(real, prefix[:-1], names, entries)
            names, entries = [], []
        yield SourceFile(prefix + name, entry.path, st)


def _listing(
    folder: str, prefix: str, merged: bool, checker: ListingChecker
) -> tuple[list[tuple[str, str, os.DirEntry[str]]], set[str]]:
    """A folder's entries as (sort key, NFC name, entry), sorted by key (see iter_source),
    its names checked (``prefix``: the folder's manifest path with a trailing "/"), and
    its subfolders that differ from a sibling only by case.

    Code point order of ``str`` is the byte order of their UTF-8, the manifest's order."""
    out: list[tuple[str, str, os.DirEntry[str]]] = []
    # what is checked: a book by its stream's name, a folder by its own
    names: list[str] = []
    folders: list[bool] = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.is_symlink():
                raise PathError(
                    f"{entry.path}: symbolic links cannot be published; copy the file in"
                )
            name = entry.name
            if not name.isascii():
                name = unicodedata.normalize("NFC", name)
            if entry.is_dir(follow_symlinks=False):
                out.append((name + "/", name, entry))
                names.append(name)
                folders.append(True)
                continue
            key = name
            if name[-4:].lower() == ".zim" or name[-8:].lower() == ".zim.crv":
                key = zim.stream_path(name) if zim.is_book(name) else name
            out.append((key, name, entry))
            names.append(key)
            folders.append(False)
    out.sort(key=lambda item: item[0])
    return out, checker.listing(prefix, names, folders, merged)


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
    hit: EncodedEntry | None  # found unchanged in the files cache: nothing was read


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
    ``store``, asked only if the store removed objects since the cache's last pass; a client
    that keeps no objects asks the hub), so such a file is read again only when one is gone.
    Whoever signs a release from these entries checks again, under the lock collection
    takes, that the objects it names are there.

    ``trust_cache``: a file the cache knows unchanged is taken as it stands, its chunks
    neither asked for (``held``) nor announced (``on_chunk``): for a curator's client whose
    hub checks every chunk of the release at the commit and names those it lacks, so that
    a one-file republish of a million files does not declare a million chunks.

    ``on_content(sha, data)`` hears of each file read whose bytes are held whole anyway (up
    to ``WHOLE_CONTENT`` bytes; not ZIM books): the similarity index sketches them there,
    instead of reading them back from the store once the release is signed.

    ``encoded``: yield :class:`~caravane.protocol.tree.EncodedEntry` (what a tree writer
    takes), and the entries of a :class:`CachedRun` as one list, so that an unchanged
    file's entry comes from the cache as bytes and is never decoded; otherwise
    :class:`FileEntry` each.

    Chunks travel to the workers in batches (``BATCH_OBJECTS`` or ``BATCH_BYTES``): each
    batch is one presence query and one index transaction, where one per chunk cost most
    of a small file's time. A file no bigger than the chunker's minimum is one chunk
    whatever its bytes, so it is read in one call and hashed once (its hash is its chunk's).
    """

    def __init__(
        self,
        store: ChunkSink,
        files: Iterable[SourceFile | tuple[str, Path] | CachedRun],
        avg_chunk: int,
        progress: Progress = None,
        cache: FilesCache | None = None,
        on_chunk: Callable[[str, int], object] | None = None,
        held: Callable[[dict[str, int]], set[str]] | None = None,
        encoded: bool = False,
        on_content: Callable[[str, bytes], object] | None = None,
        trust_cache: bool = False,
    ) -> None:
        self.store, self.files, self.avg_chunk = store, files, avg_chunk
        self.trust_cache = trust_cache
        self.on_content = on_content
        self.progress, self.cache, self.on_chunk, self.held = progress, cache, on_chunk, held
        self.encoded = encoded
        self.new_objects = self.new_bytes = self.stored = 0
        self.books = 0  # ZIM files, carried as their canonical entries (packs/zim.py)
        self.hits = 0  # files taken from the cache unread
        removals = getattr(store, "removals", None)
        #: the store's removal count now (None: a store that does not count them)
        self._removals: int | None = removals() if held is None and removals else None
        #: whether the cache's records may be taken without asking for their chunks
        self._trusted = cache is not None and (
            trust_cache or (self._removals is not None and cache.removals_seen() == self._removals)
        )

    def _hits(self, window: list[SourceFile], books: list[bool]) -> list[EncodedEntry | None]:
        """The cache's entries for a window of files, kept only if every chunk is here."""
        cache = self.cache
        if cache is None:
            return [None] * len(window)
        avg = self.avg_chunk
        found = [
            # a book's entry is its stream's: never one recorded for the raw file
            cache.lookup(f.real, zim.stream_path(f.rel) if b else f.rel, f.stat, -avg if b else avg)
            for f, b in zip(window, books, strict=True)
        ]
        if self._trusted and (self.on_chunk is None or self.trust_cache):
            return found
        chunks = [_chunks(e) if e is not None else [] for e in found]
        wanted = {h: n for c in chunks for h, n in c}
        if not wanted or self._trusted:
            have: Collection[str] = wanted
        else:
            # read only: freshening each window's chunks rewrote most pages of the store's
            # index each time; the commit checks under the lock what the release names
            have = self.held(wanted) if self.held else _present(self.store, wanted)
        out: list[EncodedEntry | None] = []
        for e, c in zip(found, chunks, strict=True):
            if e is not None and all(h in have for h, _ in c):
                if self.on_chunk:
                    for h, n in c:
                        self.on_chunk(h, n)
                out.append(e)
            else:
                out.append(None)
        return out

    def __iter__(self) -> Iterator[FileEntry | EncodedEntry | list[EncodedEntry]]:
        min_size = chunk_limits(self.avg_chunk)[0]
        workers = max(2, os.cpu_count() or 2)
        store, on_chunk, progress = self.store, self.on_chunk, self.progress
        on_content = self.on_content
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

            def done(
                window: list[_Read | CachedRun], mark: int
            ) -> Iterator[FileEntry | EncodedEntry | list[EncodedEntry]]:
                """The entries of a window, once the batches holding its chunks are in."""
                if mark > submitted:
                    flush()
                drain(submitted - mark)
                yield from self._entries(window)

            # windows read, each with the number of batches that completes its chunks
            ready: deque[tuple[list[_Read | CachedRun], int]] = deque()
            while True:
                # LOOKAHEAD files, counting those of cached runs, in scan order
                scanned: list[SourceFile | CachedRun] = []
                count = 0
                for item in source:
                    if type(item) is CachedRun:
                        scanned.append(item)
                        count += len(item.entries)
                    else:
                        scanned.append(_with_stat(cast(SourceFile | tuple[str, Path], item)))
                        count += 1
                    if count >= LOOKAHEAD:
                        break
                if not scanned:
                    break
                window = [f for f in scanned if type(f) is SourceFile]
                books = [_is_book(f.rel) for f in window]
                looked = iter(zip(self._hits(window, books), books, strict=True))
                reads: list[_Read | CachedRun] = []
                for f in scanned:
                    if type(f) is CachedRun:
                        reads.append(f)
                        continue
                    assert isinstance(f, SourceFile)
                    hit, book = next(looked)
                    rel = zim.stream_path(f.rel) if book else f.rel
                    self.books += book
                    if hit is not None:
                        reads.append(_Read(f, rel, book, "", [], hit))
                        continue
                    chunks: list[tuple[str, int]] = []
                    size = f.stat.st_size
                    if 0 < size <= min_size and not book:
                        data = _read_small(f.real, size)
                        digest = hashlib.sha256(data).hexdigest()
                        add(digest, data, chunks)
                        reads.append(_Read(f, rel, book, digest, chunks, None))
                        if on_content:
                            on_content(digest, data)
                        continue
                    fhash = hashlib.sha256()
                    whole: list[bytes] | None = (
                        [] if on_content and not book and size <= WHOLE_CONTENT else None
                    )
                    with zim.open_stream(Path(f.real)) if book else open(f.real, "rb") as fh:
                        for piece in iter_chunks(fh, self.avg_chunk, None if book else size):
                            fhash.update(piece)
                            data = bytes(piece)
                            add(None, data, chunks)
                            if whole is not None:
                                whole.append(data)
                    digest = fhash.hexdigest()
                    reads.append(_Read(f, rel, book, digest, chunks, None))
                    if on_content and whole is not None:
                        on_content(digest, b"".join(whole))
                ready.append((reads, submitted + (1 if items else 0)))
                # the window before this one: its chunks were compressed while this was read
                while len(ready) > 1:
                    yield from done(*ready.popleft())
            while ready:
                yield from done(*ready.popleft())
        if self.cache is not None:
            self.cache.commit()
            if self._removals is not None:
                # every record taken was checked, or trusted at this count; those written
                # now name chunks just stored
                self.cache.saw_removals(self._removals)

    def _entries(
        self, window: list[_Read | CachedRun]
    ) -> Iterator[FileEntry | EncodedEntry | list[EncodedEntry]]:
        avg, cache, encoded = self.avg_chunk, self.cache, self.encoded
        for r in window:
            if type(r) is CachedRun:
                self.hits += len(r.entries)
                if cache is not None:
                    cache.record_run(r.folder, r.prefix, r.names)
                if encoded:
                    yield r.entries  # the run at once: TreeWriter.add_run
                else:
                    yield from (FileEntry.from_dict(json.loads(e.data)) for e in r.entries)
                continue
            assert isinstance(r, _Read)
            st, real = r.file.stat, r.file.real
            chunking = -avg if r.book else avg
            hit = r.hit
            if hit is not None:
                self.hits += 1
                if cache is not None:
                    cache.record(real, st, chunking, hit, hit=True)
                yield hit if encoded else FileEntry.from_dict(json.loads(hit.data))
                continue
            size = sum(n for _, n in r.chunks)
            if size != st.st_size if not r.book else os.stat(real).st_mtime_ns != st.st_mtime_ns:
                raise StoreError(f"{real}: changed while it was being published; try again")
            entry = FileEntry(r.rel, size, _mode_of(st), r.digest, r.chunks)
            if cache is None and not encoded:
                yield entry
                continue
            coded = encode_entry(entry)
            if cache is not None:
                cache.record(real, st, chunking, coded)
            yield coded if encoded else entry


def _is_book(rel: str) -> bool:
    """:func:`zim.is_book`, whose checks run only for names that may concern them."""
    tail = rel[-4:].lower()
    return (tail == ".zim" or tail == ".crv") and zim.is_book(rel)


def _chunks(entry: EncodedEntry) -> list[tuple[str, int]]:
    """The chunks an entry from the cache names (decoded only when they must be asked for)."""
    return [(str(h), int(n)) for h, n in json.loads(entry.data)["chunks"]]


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
    bytes, their stored bytes). For callers that hold the list anyway (a client sending
    to a hub from before file lists as pieces); a publish streams :class:`Ingest`, or
    :func:`ingest_tree`, instead."""
    run = Ingest(store, files, avg_chunk, progress, cache, on_chunk, held)
    entries = cast(list[FileEntry], list(run))  # not ``encoded``: FileEntry each
    if run.books:
        entries.sort(key=lambda e: e.path.encode())
        check_paths(e.path for e in entries)
    return entries, run.new_objects, run.new_bytes, run.stored


def ingest_tree(
    sink: ChunkSink,
    files: Iterable[SourceFile | CachedRun],
    cache: FilesCache | None = None,
    on_object: Callable[[str, int], object] | None = None,
    progress: Progress = None,
    keep_piece: Callable[[str], bool] | None = None,
) -> tuple[PieceRef | None, int, int]:
    """Read ``files`` (:func:`iter_source`, or :func:`iter_source_cached` with ``cache``)
    into ``sink`` with the file list as manifest pieces: the entries go into a
    :class:`TreeWriter` as they come, and each piece it closes goes to ``sink`` and
    ``on_object`` like a chunk (unless ``keep_piece`` says the receiver holds it already).
    Returns the root and the counts. What a curator's client sends a hub and what the hub's
    publish page stores: nothing held grows with the folder (one open run per level of
    the tree), so a million files cost what a thousand do. Runs of unchanged files come
    whole from the cache, trusted (the hub checks every chunk the tree names at its commit).
    """

    def put_piece(ref: PieceRef, data: bytes) -> None:
        if keep_piece is not None and not keep_piece(ref.sha256):
            return
        sink.put_raw_many([(ref.sha256, data)])
        if on_object is not None:
            on_object(ref.sha256, ref.length)

    run = Ingest(
        sink, files, DEFAULT_AVG, progress, cache, on_object, encoded=True, trust_cache=True
    )
    writer = TreeWriter(put_piece, check=False)  # iter_source checked every name
    for entry in run:
        if isinstance(entry, list):
            writer.add_run(entry)
        else:
            writer.add(entry)
    return writer.finish(), writer.files, writer.size


def _with_stat(item: SourceFile | tuple[str, Path]) -> SourceFile:
    """A scanned file with its stat (callers that built their own list give none)."""
    if isinstance(item, SourceFile):
        return item
    rel, real = item
    return SourceFile(rel, os.fspath(real), os.stat(real))


__all__ = [
    "ChunkSink",
    "CachedRun",
    "Ingest",
    "SourceFile",
    "ingest_files",
    "iter_source",
    "iter_source_cached",
    "scan_source",
    "scan_totals",
]
