"""The pack container: a stream of self-delimiting, individually checksummed entries.

A reader verifies each entry as it arrives, so a pack cut short by a pulled drive or a dropped
link still yields every complete entry before the cut, and a resumed download only needs the
bytes after the last good entry. Volumes are cut between entries, so each volume of a pack
split for a FAT32 drive (4 GiB file limit) holds whole entries.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from caravane.protocol.canonical import canonical_bytes, load_json

from .errors import FormatError, PackError, TruncatedPackError

MAGIC = b"CRVPACK1"
ENTRY_MAGIC = b"CE"
MAX_HEADER = 16 * 1024 * 1024
MAX_PAYLOAD = 1024 * 1024 * 1024
FAT32_LIMIT = 4 * 1024**3 - 1
DEFAULT_VOLUME_SIZE = FAT32_LIMIT + 1 - 64 * 1024 * 1024
KINDS = ("metadata", "manifest", "tree", "delta", "end")


@dataclass
class Entry:
    kind: str
    header: dict[str, Any]
    payload: bytes
    offset: int  # offset of the entry in the logical stream (all volumes)
    volume: int

    @property
    def length(self) -> int:
        return entry_size(self.header, len(self.payload))


def entry_size(header: dict[str, Any], payload_len: int) -> int:
    return 2 + 4 + len(canonical_bytes(header)) + payload_len + 32


def encode_entry(kind: str, header: dict[str, Any], payload: bytes) -> bytes:
    header = dict(header, kind=kind, length=len(payload))
    hb = canonical_bytes(header)
    h = hashlib.sha256(hb)
    h.update(payload)
    digest = h.digest()
    return b"".join([ENTRY_MAGIC, struct.pack(">I", len(hb)), hb, payload, digest])


def volume_paths(first: Path) -> list[Path]:
    """The volumes of a pack: ``first``, then ``first.1``, ``first.2`` ... while they exist."""
    out = [first]
    i = 1
    while True:
        nxt = first.with_name(f"{first.name}.{i}")
        if not nxt.exists():
            return out
        out.append(nxt)
        i += 1


class PackWriter:
    """Writes entries, starting a new volume whenever the next entry would not fit."""

    def __init__(self, out: Path, volume_size: int = DEFAULT_VOLUME_SIZE) -> None:
        if volume_size < 1024:
            raise ValueError("volume size too small")
        self.out = Path(out)
        self.volume_size = volume_size
        self.volumes: list[Path] = []
        self.index: list[list[int]] = []  # [offset, length] of each entry
        self._fh: BinaryIO | None = None
        self._vol_written = 0
        self._offset = 0
        for stale in volume_paths(self.out)[1:]:
            stale.unlink(missing_ok=True)
        self._open_volume()

    def _tmp(self, path: Path) -> Path:
        # unique per writer: the hub's job and an on-demand request may build one pack at once
        return path.with_name(f".{path.name}.{os.getpid()}-{id(self):x}.part")

    def _open_volume(self) -> None:
        if self._fh is not None:
            self._fh.close()
        n = len(self.volumes)
        path = self.out if n == 0 else self.out.with_name(f"{self.out.name}.{n}")
        self.volumes.append(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self._tmp(path), "wb")
        self._fh.write(MAGIC)
        self._vol_written = len(MAGIC)

    def add(self, kind: str, header: dict[str, Any], payload: bytes) -> None:
        assert kind in KINDS
        data = encode_entry(kind, header, payload)
        if self._vol_written + len(data) > self.volume_size and self._vol_written > len(MAGIC):
            self._open_volume()
        if len(MAGIC) + len(data) > self.volume_size:
            raise PackError(f"one pack entry ({len(data)} bytes) exceeds the volume size")
        assert self._fh is not None
        self._fh.write(data)
        self.index.append([self._offset, len(data)])
        self._vol_written += len(data)
        self._offset += len(data)

    def finish(self, summary: dict[str, Any]) -> list[Path]:
        self.add("end", {"index": self.index, "summary": summary}, b"")
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        for path in self.volumes:
            os.replace(self._tmp(path), path)
        return self.volumes

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
        for path in self.volumes:
            self._tmp(path).unlink(missing_ok=True)


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    """Read ``n`` bytes, or fewer at the end of the file.

    Memory grows with the bytes that actually arrive (blocks of at most 1 MiB), never with
    what a header declares: a forged entry declaring 1 GiB costs nothing before it is read.
    """
    if n <= _BLOCK:
        data = fh.read(n)
        while len(data) < n:
            more = fh.read(n - len(data))
            if not more:
                break
            data += more
        return data
    buf = bytearray()
    while len(buf) < n:
        more = fh.read(min(_BLOCK, n - len(buf)))
        if not more:
            break
        buf += more
    return bytes(buf)


_BLOCK = 1024 * 1024

Opener = Callable[[Path], BinaryIO]
PayloadLimit = Callable[[dict[str, Any]], int]


def open_regular(path: Path) -> BinaryIO:
    """Open a pack volume without following a final symlink or blocking on a FIFO.

    Raises FileNotFoundError when it is absent, PackError when it is a link, a device, a FIFO
    or a socket (a link to /dev/zero would otherwise be an endless pack).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise PackError(
            f"{path}: cannot be read ({exc.strerror}); it must be a plain file"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PackError(f"{path}: not a regular file (a device, FIFO or socket); refused")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_entries(
    first: Path, opener: Opener | None = None, limit: PayloadLimit | None = None
) -> Iterator[Entry]:
    """Yield verified entries of a pack; raise TruncatedPackError/PackError at the first bad one.

    The ``end`` entry is yielded too; a pack with no ``end`` entry is truncated. ``opener``
    opens a volume (default: a regular file, no symlink, no FIFO); ``limit`` gives, from an
    entry's header, the largest payload the caller accepts for it (the signed manifest's
    sizes), checked before a byte of the payload is read. A payload longer than what is left
    in its volume is a cut pack, found without reading it.
    """
    first = Path(first)
    open_volume = opener or open_regular
    offset = 0
    vi = 0
    while True:
        vol = first if vi == 0 else first.with_name(f"{first.name}.{vi}")
        try:
            fh = open_volume(vol)
        except FileNotFoundError:
            if vi == 0:
                raise PackError(f"{vol}: cannot be read (no such file)") from None
            break
        except OSError as exc:
            raise PackError(f"{vol}: cannot be read ({exc.strerror})") from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if _read_exact(fh, len(MAGIC)) != MAGIC:
                raise PackError(f"{vol}: not a Caravane pack (bad magic)")
            pos = len(MAGIC)
            while True:
                start = _read_exact(fh, 6)
                if not start:
                    break
                if len(start) < 6:
                    raise TruncatedPackError(f"{vol}: pack cut short at byte {offset}")
                if start[:2] != ENTRY_MAGIC:
                    raise PackError(f"{vol}: corrupt pack entry at byte {offset}")
                (hlen,) = struct.unpack(">I", start[2:])
                if hlen > MAX_HEADER:
                    raise PackError(f"{vol}: pack entry header too large at byte {offset}")
                if pos + 6 + hlen > size:
                    raise TruncatedPackError(f"{vol}: pack cut short at byte {offset}")
                hb = _read_exact(fh, hlen)
                if len(hb) < hlen:
                    raise TruncatedPackError(f"{vol}: pack cut short at byte {offset}")
                try:
                    header = load_json(hb, f"{vol} entry header at byte {offset}")
                except FormatError:
                    raise PackError(
                        f"{vol}: corrupt entry header at byte {offset} (damaged or tampered)"
                    ) from None
                if not isinstance(header, dict) or header.get("kind") not in KINDS:
                    raise PackError(f"{vol}: unknown pack entry kind at byte {offset}")
                plen = header.get("length")
                if not isinstance(plen, int) or not 0 <= plen <= MAX_PAYLOAD:
                    raise PackError(f"{vol}: bad entry length at byte {offset}")
                allowed = limit(header) if limit is not None else MAX_PAYLOAD
                if plen > allowed:
                    raise PackError(
                        f"{vol}: entry at byte {offset} declares {plen} bytes, more than the "
                        f"{allowed} its signed sizes allow (tampered pack); get it again"
                    )
                if pos + 6 + hlen + plen + 32 > size:
                    raise TruncatedPackError(
                        f"{vol}: pack cut short inside the entry at byte {offset}; the entries "
                        "before it are usable, copy or download the pack again for the rest"
                    )
                payload = _read_exact(fh, plen)
                digest = _read_exact(fh, 32)
                if len(payload) < plen or len(digest) < 32:
                    raise TruncatedPackError(
                        f"{vol}: pack cut short inside the entry at byte {offset}; the entries "
                        "before it are usable, copy or download the pack again for the rest"
                    )
                h = hashlib.sha256(hb)
                h.update(payload)
                if h.digest() != digest:
                    raise PackError(
                        f"{vol}: entry at byte {offset} fails its checksum (corrupt or tampered)"
                    )
                entry = Entry(header["kind"], header, payload, offset, vi)
                offset += 6 + hlen + plen + 32
                pos += 6 + hlen + plen + 32
                yield entry
                if entry.kind == "end":
                    return
        vi += 1
    raise TruncatedPackError(
        f"{first}: pack has no end entry (cut short or a volume is missing); the entries "
        "before the cut are usable"
    )
