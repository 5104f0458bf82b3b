"""The content-addressed object store: one zstd frame per chunk, named by its SHA-256.

Frames live in append-only segment files with an SQLite index (:mod:`.segments`); objects
of stores written before segments (one file each, ``objects/<aa>/<sha>``) are still read,
and :meth:`ObjectStore.compact` moves them into segments. Readers verify every object they
use, because a store on a drive or behind a peer is not trusted. The URL path
``objects/<aa>/<sha>`` that hubs, mirrors and peers serve is unchanged: it is answered from
here (:meth:`ObjectStore.read_frame`), or written out as loose files for a static mirror.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard as zstd

from caravane.protocol.errors import VerificationError

from .errors import DiskFullError, StoreError
from .layout import object_relpath
from .segments import SegmentIndex

DEFAULT_LEVEL = 3
_local = threading.local()


def _compressor(level: int) -> zstd.ZstdCompressor:
    cache = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    if level not in cache:
        cache[level] = zstd.ZstdCompressor(level=level, write_content_size=True)
    compressor: zstd.ZstdCompressor = cache[level]
    return compressor


def _decompressor() -> zstd.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstd.ZstdDecompressor()
    return d


def compress(data: bytes | bytearray | memoryview, level: int = DEFAULT_LEVEL) -> bytes:
    return _compressor(level).compress(data)


def compress_many(
    items: list[bytes | bytearray | memoryview], level: int = DEFAULT_LEVEL
) -> list[bytes]:
    """:func:`compress` of each, the same frames, in one call that lets go of the
    interpreter once: a publish's worker threads compressing small objects one call each
    handed the interpreter lock back and forth with the thread reading files (about five
    handovers a file, each a futex wait: most of a small file's cost)."""
    if len(items) < 2:
        return [compress(d, level) for d in items]
    out = _compressor(level).multi_compress_to_buffer(items, threads=1)
    return [out[i].tobytes() for i in range(len(out))]


def decode_frame(frame: bytes | memoryview, size: int, what: str) -> bytes:
    """Decompress one object frame, refusing anything but exactly ``size`` bytes.

    The declared size is read from the frame header before any output is allocated, so a
    frame that claims (or would produce) more than the manifest says is refused up front.
    """
    try:
        params = zstd.get_frame_parameters(frame)
    except zstd.ZstdError:
        raise VerificationError(f"{what}: not a zstd frame (corrupt object)") from None
    if params.content_size != size:
        raise VerificationError(
            f"{what}: declares {params.content_size} bytes, the manifest says {size} "
            "(corrupt object or decompression bomb)"
        )
    try:
        data = _decompressor().decompress(frame, max_output_size=size)
    except zstd.ZstdError as exc:
        raise VerificationError(f"{what}: cannot be decompressed ({exc})") from None
    if len(data) != size:
        raise VerificationError(f"{what}: decompressed to {len(data)} bytes, expected {size}")
    return data


def write_atomic(path: Path, data: bytes | memoryview, durable: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"the disk holding {path.parent} is full; free some space and run again "
                "(nothing was lost, the transfer resumes)"
            ) from None
        raise StoreError(f"cannot write {path}: {exc.strerror}") from None


VERIFY_HINT = "run `caravane repo verify` on this folder to list every damaged object"
MIGRATE_BATCH = 8 * 1024 * 1024


@dataclass(frozen=True)
class CompactReport:
    """What :meth:`ObjectStore.compact` did."""

    migrated: int  # loose objects moved into segments
    segments_removed: int
    bytes_reclaimed: int


class ObjectStore:
    """Chunks by SHA-256: ``has``, ``put_*``, ``read*``, ``freshen``, removal, ``iter_ids``.

    Safe to share between threads; several processes may write one store at once (each
    appends to a segment it holds a lock on).
    """

    def __init__(self, root: Path, durable: bool = False, level: int = DEFAULT_LEVEL) -> None:
        self.root = Path(root)
        self.durable = durable
        self.level = level
        self.index = SegmentIndex(self.root, durable)
        self._loose_seen: bool | None = None

    def _may_hold_loose(self) -> bool:
        """False once ``objects/`` was seen empty: a store never writes loose objects, so a
        new object's freshen skips a failing ``utime`` (old stores and mirrors say True)."""
        if self._loose_seen is None or self._loose_seen:
            try:
                with os.scandir(self.root / "objects") as it:
                    self._loose_seen = any(True for _ in it)
            except FileNotFoundError:
                self._loose_seen = False
        return self._loose_seen

    def _loose(self, sha: str) -> Path:
        """Where a store from before segments kept the object (still read, never written)."""
        return self.root / object_relpath(sha)

    def has(self, sha: str) -> bool:
        return self.index.locate(sha) is not None or self._loose(sha).is_file()

    def present(self, shas: Iterable[str]) -> set[str]:
        """Which of these objects are here (many at once; none is freshened)."""
        shas = list(shas)
        found = self.index.present(shas)
        if self._may_hold_loose():
            found.update(sha for sha in shas if sha not in found and self._loose(sha).is_file())
        return found

    def missing(self, shas: Iterable[str]) -> set[str]:
        """Those of ``shas`` not in the store (:meth:`has` for many, in a few queries)."""
        wanted = set(shas)
        lacking = wanted - self.index.present(wanted)
        if lacking and self._may_hold_loose():
            lacking = {sha for sha in lacking if not self._loose(sha).is_file()}
        return lacking

    def put_raw(self, data: bytes | memoryview, sha: str | None = None) -> tuple[str, int]:
        """Store a raw chunk unless present; returns (sha, bytes written, 0 if it existed)."""
        sha = sha or hashlib.sha256(data).hexdigest()
        if self.freshen(sha):
            return sha, 0
        frame = compress(data, self.level)
        self.index.append([(sha, frame)])
        return sha, len(frame)

    def put_raw_many(self, items: list[tuple[str | None, bytes]]) -> list[tuple[str, int]]:
        """:meth:`put_raw` for many chunks: one presence query and one append (one index
        transaction) for all; returns (sha, bytes written, 0 if it existed) for each.

        A transaction per object was most of a small file's cost when publishing.
        """
        shas = [sha or hashlib.sha256(data).hexdigest() for sha, data in items]
        present = self.freshen_many(shas)
        todo: dict[str, bytes] = {}
        for sha, (_, data) in zip(shas, items, strict=True):
            if sha not in present:
                todo.setdefault(sha, data)
        appended = list(zip(todo, compress_many(list(todo.values()), self.level), strict=True))
        new = dict(appended)
        out: list[tuple[str, int]] = []
        for sha in shas:
            # a repeat in the batch counts as present, as before
            frame = new.pop(sha, None)
            out.append((sha, 0 if frame is None else len(frame)))
        self.index.append(appended)
        return out

    def put_compressed(self, sha: str, frame: bytes, size: int) -> bool:
        """Store a frame received from elsewhere, after checking it is chunk ``sha``."""
        return self.put_compressed_many([(sha, frame, size)]) == 1

    def put_compressed_many(self, items: Iterable[tuple[str, bytes | memoryview, int]]) -> int:
        """Store frames received from elsewhere, each checked; returns how many were new.

        One append and one index commit (one fsync when durable) for the whole batch. A frame
        that fails its check raises after the good ones before it are stored.
        """
        good: list[tuple[str, bytes | memoryview]] = []
        failure: Exception | None = None
        for sha, frame, size in items:
            what = f"object {sha[:16]}"
            try:
                data = decode_frame(frame, size, what)
                if hashlib.sha256(data).hexdigest() != sha:
                    raise VerificationError(
                        f"{what}: content does not match its SHA-256 (tampered)"
                    )
            except VerificationError as exc:
                failure = exc
                break
            good.append((sha, frame))
        present = self.freshen_many([sha for sha, _ in good])
        new: dict[str, bytes | memoryview] = {}
        for sha, frame in good:
            if sha not in present:
                new.setdefault(sha, frame)
        self.index.append(list(new.items()))
        if failure is not None:
            raise failure
        return len(new)

    def freshen(self, sha: str, at: float | None = None) -> bool:
        """True if the object is present, after marking it as just used (git does the same).

        Collection spares objects younger than its grace period, so an object that a
        publish found already here, or was told the hub has, survives until the release
        that uses it is committed, even when no retained release referenced it before.
        ``at`` sets another time (an operator's tool, or a test ageing an object).
        """
        return bool(self.freshen_many([sha], at))

    def freshen_many(
        self, shas: Iterable[str], at: float | None = None, expected: bool = False
    ) -> set[str]:
        """:meth:`freshen` for many objects in one index transaction; returns those present.

        ``expected``: the objects are nearly all here (a files cache names them), so they
        are updated straight away instead of looked for first.
        """
        shas = list(shas)
        found = self.index.touch(shas, None if at is None else int(at * 1000), expected)
        if not self._may_hold_loose():
            return found
        for sha in shas:
            if sha in found:
                continue
            try:
                os.utime(self._loose(sha), None if at is None else (at, at))
            except FileNotFoundError:
                continue
            found.add(sha)
        return found

    def mtime(self, sha: str) -> float | None:
        """When the object was last written or freshened (seconds), None if absent."""
        ms = self.index.mtime_ms(sha)
        if ms is not None:
            return ms / 1000
        try:
            return self._loose(sha).stat().st_mtime
        except FileNotFoundError:
            return None

    def remove_unless_fresh(self, sha: str, cutoff: float) -> int:
        """Remove an object last written or freshened before ``cutoff``; returns bytes freed.

        A segment's space comes back at the next :meth:`compact`.
        """
        n = self.index.delete(sha, int(cutoff * 1000))
        path = self._loose(sha)
        try:
            st = path.stat()
            if st.st_mtime < cutoff:
                path.unlink()
                self.index.note_removal()
                n += st.st_size
        except FileNotFoundError:
            pass
        return n

    def read_frame(self, sha: str) -> bytes:
        """The object's zstd frame (with its content size): the form peers and mirrors serve."""
        for _ in range(3):
            loc = self.index.locate(sha)
            if loc is None:
                break
            try:
                return self.index.read(loc)
            except FileNotFoundError:
                continue  # compaction moved it: look again
        try:
            return self._loose(sha).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"object {sha[:16]} is missing from {self.root}") from None

    def read_frames(self, shas: Iterable[str]) -> dict[str, bytes]:
        """:meth:`read_frame` for many objects: one index query per few hundred, one open
        per segment (a small file cost a query, an open and a close of its own)."""
        wanted = list(dict.fromkeys(shas))
        out = self.index.read_many(self.index.locate_many(wanted).items())
        for sha in wanted:
            if sha not in out:
                out[sha] = self.read_frame(sha)  # loose, moved by compaction, or missing
        return out

    def frame_size(self, sha: str) -> int:
        """Bytes of the stored frame (what a transfer of this object costs)."""
        loc = self.index.locate(sha)
        if loc is not None:
            return loc.length
        try:
            return self._loose(sha).stat().st_size
        except FileNotFoundError:
            raise StoreError(f"object {sha[:16]} is missing from {self.root}") from None

    def read(self, sha: str, size: int, verify: bool = True) -> bytes:
        what = f"object {sha[:16]} in {self.root}"
        try:
            data = decode_frame(self.read_frame(sha), size, what)
        except VerificationError as exc:
            raise VerificationError(f"{exc}; {VERIFY_HINT}") from None
        if verify and hashlib.sha256(data).hexdigest() != sha:
            raise VerificationError(f"{what}: content does not match its SHA-256; {VERIFY_HINT}")
        return data

    def remove(self, sha: str) -> int:
        n = self.index.delete(sha)
        path = self._loose(sha)
        try:
            n += path.stat().st_size
            path.unlink()
            self.index.note_removal()
        except FileNotFoundError:
            pass
        return n

    def removals(self) -> int:
        """Objects removed from this store so far (a files cache's check that what it
        names is still here: see packs/files_cache.py)."""
        return self.index.removals()

    def iter_ids(self) -> Iterator[str]:
        """Every object id, segments first, then loose objects not yet moved."""
        yield from self.index.iter_ids()
        for sha, _ in self._loose_objects():
            if self.index.locate(sha) is None:
                yield sha

    def _loose_objects(self) -> Iterator[tuple[str, Path]]:
        base = self.root / "objects"
        if not base.is_dir():
            return
        for sub in sorted(base.iterdir()):
            if sub.is_dir() and len(sub.name) == 2:
                for p in sorted(sub.iterdir()):
                    if len(p.name) == 64 and not p.name.startswith("."):
                        yield p.name, p

    def compact(self) -> CompactReport:
        """Move loose objects into segments, then rewrite segments mostly dead.

        A migrated object counts as just written (its file's mtime may be racing a
        freshen), which can only delay its collection by one grace period.
        """
        migrated = 0
        batch: list[tuple[str, bytes]] = []
        paths: list[Path] = []
        size = 0

        def flush() -> None:
            nonlocal size
            self.index.append(batch)
            for p in paths:
                p.unlink(missing_ok=True)
            batch.clear()
            paths.clear()
            size = 0

        for sha, path in self._loose_objects():
            if self.index.locate(sha) is not None:
                path.unlink(missing_ok=True)  # moved before a crash, not yet unlinked
                continue
            try:
                frame = path.read_bytes()
            except FileNotFoundError:
                continue
            batch.append((sha, frame))
            paths.append(path)
            size += len(frame)
            migrated += 1
            if size >= MIGRATE_BATCH:
                flush()
        flush()
        base = self.root / "objects"
        if base.is_dir():
            for sub in base.iterdir():
                if sub.is_dir():
                    with contextlib.suppress(OSError):  # not empty: an old writer's temp file
                        sub.rmdir()
        removed, reclaimed = self.index.compact()
        return CompactReport(migrated, removed, reclaimed)

    def close(self) -> None:
        self.index.close()
