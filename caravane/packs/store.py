"""The content-addressed object store: one zstd frame per chunk, named by its SHA-256.

Objects are written to a temporary name and renamed, so a crash leaves either no object or a
whole one; readers still verify every object they use, because a store on a drive or behind a
peer is not trusted.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import zstandard as zstd

from caravane.protocol.errors import VerificationError

from .errors import DiskFullError, StoreError
from .layout import object_relpath

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


def compress(data: bytes | memoryview, level: int = DEFAULT_LEVEL) -> bytes:
    return _compressor(level).compress(data)


def decode_frame(frame: bytes, size: int, what: str) -> bytes:
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


class ObjectStore:
    def __init__(self, root: Path, durable: bool = False, level: int = DEFAULT_LEVEL) -> None:
        self.root = Path(root)
        self.durable = durable
        self.level = level

    def path_for(self, sha: str) -> Path:
        return self.root / object_relpath(sha)

    def has(self, sha: str) -> bool:
        return self.path_for(sha).is_file()

    def put_raw(self, data: bytes | memoryview, sha: str | None = None) -> tuple[str, int]:
        """Store a raw chunk unless present; returns (sha, bytes written, 0 if it existed)."""
        sha = sha or hashlib.sha256(data).hexdigest()
        path = self.path_for(sha)
        if self.freshen(sha):
            return sha, 0
        frame = compress(data, self.level)
        write_atomic(path, frame, self.durable)
        return sha, len(frame)

    def put_compressed(self, sha: str, frame: bytes, size: int) -> bool:
        """Store a frame received from elsewhere, after checking it is chunk ``sha``."""
        what = f"object {sha[:16]}"
        data = decode_frame(frame, size, what)
        if hashlib.sha256(data).hexdigest() != sha:
            raise VerificationError(f"{what}: content does not match its SHA-256 (tampered)")
        if self.freshen(sha):
            return False
        write_atomic(self.path_for(sha), frame, self.durable)
        return True

    def freshen(self, sha: str) -> bool:
        """True if the object is present, after marking it as just used (git does the same).

        Collection spares objects younger than its grace period, so an object that a
        publish found already here, or was told the hub has, survives until the release
        that uses it is committed, even when no retained release referenced it before.
        """
        try:
            os.utime(self.path_for(sha))
        except FileNotFoundError:
            return False
        return True

    def remove_unless_fresh(self, sha: str, cutoff: float) -> int:
        """Remove an object last written or freshened before ``cutoff``; returns bytes freed."""
        path = self.path_for(sha)
        try:
            st = path.stat()
            if st.st_mtime >= cutoff:
                return 0
            path.unlink()
            return st.st_size
        except FileNotFoundError:
            return 0

    def read_frame(self, sha: str) -> bytes:
        try:
            return self.path_for(sha).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"object {sha[:16]} is missing from {self.root}") from None

    def read(self, sha: str, size: int, verify: bool = True) -> bytes:
        data = decode_frame(self.read_frame(sha), size, f"object {sha[:16]} in {self.root}")
        if verify and hashlib.sha256(data).hexdigest() != sha:
            raise VerificationError(
                f"object {sha[:16]} in {self.root}: content does not match its SHA-256"
            )
        return data

    def remove(self, sha: str) -> int:
        path = self.path_for(sha)
        try:
            n = path.stat().st_size
            path.unlink()
            return n
        except FileNotFoundError:
            return 0

    def iter_ids(self) -> Iterator[str]:
        base = self.root / "objects"
        if not base.is_dir():
            return
        for sub in sorted(base.iterdir()):
            if sub.is_dir() and len(sub.name) == 2:
                for p in sorted(sub.iterdir()):
                    if len(p.name) == 64 and not p.name.startswith("."):
                        yield p.name
