"""ZIM books as a canonical stream of their entries, and back.

A ZIM file compresses its entries together in clusters, and libzim never writes the same
bytes twice, so two releases of a book a few pages apart share almost no bytes and a byte
delta between them is most of the file (docs/ZIM.md). The entries themselves barely change.
So a ``.zim`` file is published as ``<name>.zim.crv``: every entry of the book, uncompressed,
in path order, in one deterministic layout. Content-defined chunking and the packs' deltas
then carry only the entries that changed, and the hub's signature covers this stream, which
stays the same however many times libzim rebuilds the file. A centre rebuilds a valid ZIM from
it (:func:`build_zim`) and checks that the rebuilt file reads back to the signed stream.

Layout (integers little-endian)::

    MAGIC
    "H" u32 n  JSON header {"format", "main", "fulltext", "language"}
    "M" u32 n  JSON {"name", "mimetype"}  u64 n  bytes      metadata, sorted by name
    "I" u32 n  JSON {"path", "title", "mimetype", "front"}  u64 n  bytes   item
    "R" u32 n  JSON {"path", "title", "target", "front"}              redirect
    "Z" u64 count-of-I-and-R-records

Items and redirects come in one run sorted by path (bytes), each path once. JSON is
canonical (sorted keys, no spaces, UTF-8), so the same book always gives the same bytes.
libzim's own reader and writer are used (python-libzim): the format has indexes, Xapian
databases and several compression schemes that are not worth writing again.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from .errors import PackError, StoreError

ZIM_SUFFIX = ".zim"
STREAM_SUFFIX = ".crv"
MAGIC = b"CARAVANE-ZIM-ENTRIES 1\n"
FORMAT = 1
#: metadata libzim's Creator writes by itself
GENERATED_METADATA = frozenset({"Counter"})
LISTING = "listing/titleOrdered/v1"
MAX_HEADER = 1 << 20
MAX_PATH = 4096
BLOCK = 1 << 20
ILLUSTRATION = re.compile(r"Illustration_(\d+)x\1@1")


class ZimError(StoreError):
    """A ZIM file that cannot be published or rebuilt; nothing was published or activated."""


class StreamError(PackError):
    """A canonical ZIM stream that does not parse (refused like any bad pack content)."""


def is_book(rel: str) -> bool:
    """Whether a published file is a ZIM book to be carried as its entries.

    A file already named like a stream is refused: a centre would try to rebuild it.
    """
    if is_stream(rel):
        raise ZimError(f"{rel}: names ending in .zim.crv are reserved for ZIM books; rename it")
    return rel.lower().endswith(ZIM_SUFFIX)


def stream_path(rel: str) -> str:
    """The manifest path of a book's canonical stream."""
    return rel + STREAM_SUFFIX


def is_stream(rel: str) -> bool:
    return rel.lower().endswith(ZIM_SUFFIX + STREAM_SUFFIX)


def book_path(rel: str) -> str:
    """The path of the ZIM file a centre rebuilds from a stream at ``rel``."""
    return rel[: -len(STREAM_SUFFIX)]


def _libzim_reader() -> Any:
    try:
        import libzim.reader
    except ImportError as exc:  # pragma: no cover - libzim is a dependency
        raise ZimError("python-libzim is not installed: pip install libzim") from exc
    return libzim.reader


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _record(kind: bytes, head: dict[str, Any], body: bytes | None = None) -> bytes:
    h = _json(head)
    out = kind + struct.pack("<I", len(h)) + h
    if body is not None:
        out += struct.pack("<Q", len(body)) + body
    return out


# ---------------------------------------------------------------------- ZIM -> stream


def open_archive(path: Path) -> Any:
    """Open a ZIM file with libzim, refusing what a centre could not rebuild."""
    reader = _libzim_reader()
    try:
        archive = reader.Archive(str(path))
    except Exception as exc:  # libzim raises RuntimeError for every kind of bad file
        raise ZimError(f"{path}: not a readable ZIM file ({exc}); nothing was published") from None
    if not archive.has_new_namespace_scheme:
        raise ZimError(
            f"{path}: this ZIM uses the namespace scheme of libzim before 7; re-create it "
            "with zimrecreate (zim-tools) or rename it so it is published as a plain file"
        )
    return archive


def check_archive(path: Path) -> None:
    """Refuse a ZIM whose checksum does not match (a truncated or altered download)."""
    archive = open_archive(path)
    try:
        ok = archive.check() if archive.has_checksum else True
    except Exception as exc:
        raise ZimError(f"{path}: the ZIM file is damaged ({exc}); nothing was published") from None
    if not ok:
        raise ZimError(f"{path}: the ZIM file's checksum does not match; download it again")


def _front_articles(archive: Any) -> set[int]:
    """Ids of the entries libzim lists as articles (its title-ordered listing)."""
    for i in range(archive.entry_count, archive.all_entry_count):
        entry = archive._get_entry_by_id(i)
        if entry.path == LISTING and not entry.is_redirect:
            data = bytes(entry.get_item().content)
            return set(struct.unpack(f"<{len(data) // 4}I", data[: len(data) // 4 * 4]))
    return set()


def iter_stream(path: Path) -> Iterator[bytes]:
    """The canonical stream of the ZIM at ``path``, piece by piece (memory: one entry)."""
    archive = open_archive(path)
    try:
        yield from _iter_stream(archive)
    except ZimError:
        raise
    except Exception as exc:
        raise ZimError(f"{path}: the ZIM file is damaged ({exc}); nothing was published") from None


def _iter_stream(archive: Any) -> Iterator[bytes]:
    main = None
    if archive.has_main_entry:
        entry = archive.main_entry
        main = entry.get_redirect_entry().path if entry.is_redirect else entry.path
    language = ""
    if "Language" in archive.metadata_keys:
        language = bytes(archive.get_metadata("Language")).decode("utf-8", "replace")
    yield MAGIC
    yield _record(
        b"H",
        {
            "format": FORMAT,
            "main": main,
            "fulltext": bool(archive.has_fulltext_index),
            "language": language.split(",")[0].strip(),
        },
    )
    for name in sorted(archive.metadata_keys, key=lambda s: s.encode()):
        if name in GENERATED_METADATA:
            continue
        item = archive.get_metadata_item(name)
        yield _record(b"M", {"name": name, "mimetype": item.mimetype}, bytes(item.content))
    front = _front_articles(archive)
    count = 0
    last = b""
    for i in range(archive.entry_count):  # libzim keeps them in path order
        entry = archive._get_entry_by_id(i)
        p = entry.path
        if p.encode() <= last and count:
            raise ZimError(f"entry {p!r} is out of path order or appears twice")
        last = p.encode()
        count += 1
        if entry.is_redirect:
            target = entry.get_redirect_entry().path
            yield _record(
                b"R", {"path": p, "title": entry.title, "target": target, "front": i in front}
            )
            continue
        item = entry.get_item()
        head = {"path": p, "title": entry.title, "mimetype": item.mimetype, "front": i in front}
        yield _record(b"I", head, bytes(item.content))
    yield b"Z" + struct.pack("<Q", count)


class StreamReader(io.RawIOBase):
    """A read-only file over :func:`iter_stream`, so ingest chunks a book like any file."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._pieces = iter_stream(path)
        self._buf = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = size if size is not None and size >= 0 else 1 << 62
        parts = [self._buf]
        have = len(self._buf)
        while have < want and not self._eof:
            try:
                piece = next(self._pieces)
            except StopIteration:
                self._eof = True
                break
            parts.append(piece)
            have += len(piece)
        data = b"".join(parts)
        self._buf = data[want:]
        return data[:want]

    def readinto(self, b: Any) -> int:
        """What :func:`~caravane.packs.chunker.iter_chunks` reads with."""
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def open_stream(path: Path) -> BinaryIO:
    """The canonical stream of a ZIM file as a binary file object (refuses a bad file)."""
    check_archive(path)
    return StreamReader(path)  # type: ignore[return-value]


def stream_digest(path: Path) -> tuple[str, int]:
    """(sha256, length) of the canonical stream of the ZIM at ``path``."""
    import hashlib

    h = hashlib.sha256()
    n = 0
    for piece in iter_stream(path):
        h.update(piece)
        n += len(piece)
    return h.hexdigest(), n


# ---------------------------------------------------------------------- stream -> ZIM


@dataclass
class Record:
    kind: str  # "H", "M", "I", "R"
    head: dict[str, Any]
    offset: int = 0  # of the body in the stream
    size: int = 0


def _read_exact(fh: IO[bytes], n: int, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise StreamError(f"book stream ends inside {what}")
    return data


def _str(head: dict[str, Any], key: str, what: str) -> str:
    v = head.get(key)
    if not isinstance(v, str):
        raise StreamError(f"book stream: {what} has no {key!r}")
    return v


def iter_records(fh: IO[bytes]) -> Iterator[Record]:
    """Parse a canonical stream, checking order and bounds; bodies are skipped (offsets)."""
    if _read_exact(fh, len(MAGIC), "its magic") != MAGIC:
        raise StreamError("not a Caravane book stream (bad magic)")
    last_meta = last_path = None
    entries = 0
    seen_header = False
    while True:
        kind = fh.read(1)
        if kind == b"Z":
            (count,) = struct.unpack("<Q", _read_exact(fh, 8, "its end"))
            if count != entries or fh.read(1):
                raise StreamError("book stream: entry count does not match or data after end")
            return
        if kind not in (b"H", b"M", b"I", b"R"):
            raise StreamError("book stream ends early or holds an unknown record")
        (n,) = struct.unpack("<I", _read_exact(fh, 4, "a record"))
        if n > MAX_HEADER:
            raise StreamError("book stream: record header too large")
        try:
            head = json.loads(_read_exact(fh, n, "a record"))
        except (ValueError, UnicodeDecodeError):
            raise StreamError("book stream: record header is not JSON") from None
        if not isinstance(head, dict):
            raise StreamError("book stream: record header is not an object")
        rec = Record(kind.decode(), head)
        if kind == b"H":
            if seen_header or head.get("format") != FORMAT:
                raise StreamError("book stream: missing, repeated or unknown-format header")
            seen_header = True
        elif not seen_header:
            raise StreamError("book stream: records before the header")
        if kind in (b"M", b"I"):
            (size,) = struct.unpack("<Q", _read_exact(fh, 8, "a record"))
            rec.offset, rec.size = fh.tell(), size
            fh.seek(size, os.SEEK_CUR)
        if kind == b"M":
            name = _str(head, "name", "metadata")
            _str(head, "mimetype", f"metadata {name!r}")
            if last_path is not None or (last_meta is not None and name.encode() <= last_meta):
                raise StreamError(f"book stream: metadata {name!r} out of order")
            last_meta = name.encode()
        elif kind in (b"I", b"R"):
            path = _str(head, "path", "an entry")
            _str(head, "title", f"entry {path!r}")
            _str(head, "target" if kind == b"R" else "mimetype", f"entry {path!r}")
            enc = path.encode()
            if not path or len(enc) > MAX_PATH or "\0" in path:
                raise StreamError(f"book stream: bad entry path {path[:80]!r}")
            if last_path is not None and enc <= last_path:
                raise StreamError(f"book stream: entry {path!r} out of order or repeated")
            last_path = enc
            entries += 1
        yield rec


def _writer() -> Any:
    try:
        import libzim.writer
    except ImportError as exc:  # pragma: no cover
        raise ZimError("python-libzim is not installed: pip install libzim") from exc
    return libzim.writer


def build_zim(stream: Path, out: Path, verify: bool = True) -> None:
    """Write the ZIM file ``out`` from the canonical stream at ``stream``.

    Built beside as ``out``'s ``.part`` and renamed in, so nobody ever reads a half-written
    book. With ``verify``, the rebuilt file is read back and must give the very stream it
    came from (what the hub signed), entry for entry.
    """
    w = _writer()
    part = out.with_name(out.name + ".part")
    part.unlink(missing_ok=True)
    try:
        with open(stream, "rb") as fh:
            records = list(_meta_and_header(fh))
        header = records[0].head
        with open(stream, "rb") as fh, _BodyReader(stream) as bodies:
            creator = w.Creator(str(part))
            # one compressing worker per core: each holds a zstd level-19 context (tens of MB)
            creator.config_nbworkers(max(1, min(4, os.cpu_count() or 1)))
            if header.get("fulltext"):
                creator.config_indexing(True, str(header.get("language") or "eng"))
            with creator:
                if isinstance(header.get("main"), str):
                    creator.set_mainpath(header["main"])
                for rec in iter_records(fh):
                    _add(w, creator, rec, bodies)
        if verify:
            _verify(stream, part)
        os.replace(part, out)
    except StreamError:
        part.unlink(missing_ok=True)
        raise
    except ZimError:
        part.unlink(missing_ok=True)
        raise
    except Exception as exc:
        part.unlink(missing_ok=True)
        raise ZimError(f"{out.name}: libzim could not rebuild the book ({exc})") from None


def _meta_and_header(fh: IO[bytes]) -> Iterator[Record]:
    for rec in iter_records(fh):
        if rec.kind in ("I", "R"):
            return
        yield rec


class _BodyReader:
    """Reads record bodies by offset from the stream file (one handle for the whole build)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh: IO[bytes] | None = None

    def __enter__(self) -> _BodyReader:
        self.fh = open(self.path, "rb")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fh:
            self.fh.close()

    def read(self, rec: Record) -> bytes:
        assert self.fh is not None
        self.fh.seek(rec.offset)
        return _read_exact(self.fh, rec.size, f"the body of {rec.head.get('path')!r}")


def _add(w: Any, creator: Any, rec: Record, bodies: _BodyReader) -> None:
    head = rec.head
    if rec.kind == "M":
        name = head["name"]
        data = bodies.read(rec)
        m = ILLUSTRATION.fullmatch(name)
        if m:
            creator.add_illustration(int(m.group(1)), data)
        else:
            creator.add_metadata(name, data, head["mimetype"])
    elif rec.kind == "I":
        creator.add_item(
            _Item(
                w,
                head["path"],
                head["title"],
                head["mimetype"],
                bodies.read(rec),
                bool(head.get("front")),
            )
        )
    elif rec.kind == "R":
        hints = {w.Hint.FRONT_ARTICLE: bool(head.get("front"))}
        creator.add_redirection(head["path"], head["title"], head["target"], hints)


def _make_item_class(w: Any) -> type:
    class Item(w.Item):  # type: ignore[misc]
        def __init__(self, path: str, title: str, mime: str, data: bytes, front: bool) -> None:
            super().__init__()
            self._p, self._t, self._m, self._d, self._f = path, title, mime, data, front

        def get_path(self) -> str:
            return self._p

        def get_title(self) -> str:
            return self._t

        def get_mimetype(self) -> str:
            return self._m

        def get_contentprovider(self) -> Any:
            return w.StringProvider(self._d)

        def get_hints(self) -> dict[Any, bool]:
            return {w.Hint.FRONT_ARTICLE: self._f}

    return Item


_ITEM: type | None = None


def _Item(w: Any, path: str, title: str, mime: str, data: bytes, front: bool) -> Any:  # noqa: N802
    global _ITEM
    if _ITEM is None:
        _ITEM = _make_item_class(w)
    return _ITEM(path, title, mime, data, front)


def _verify(stream: Path, zim: Path) -> None:
    import hashlib

    h = hashlib.sha256()
    with open(stream, "rb") as fh:
        while block := fh.read(BLOCK):
            h.update(block)
    got, _ = stream_digest(zim)
    if got != h.hexdigest():
        raise ZimError(
            f"{zim.name}: the rebuilt book does not read back as the signed entries "
            "(libzim changed something); the previous release stays served"
        )


__all__ = [
    "STREAM_SUFFIX",
    "StreamError",
    "ZimError",
    "book_path",
    "build_zim",
    "check_archive",
    "is_book",
    "is_stream",
    "iter_records",
    "iter_stream",
    "open_stream",
    "stream_digest",
    "stream_path",
]


def _main(argv: list[str]) -> int:
    """``python -m caravane.packs.zim build STREAM OUT``: a rebuild in its own process.

    libzim's writer prints its progress on standard output and runs C++ code over the
    stream; a centre runs it as a child so neither its output nor a crash reaches the agent.
    """
    import sys

    if len(argv) != 3 or argv[0] != "build":
        print("usage: python -m caravane.packs.zim build STREAM OUT", file=sys.stderr)
        return 2
    try:
        build_zim(Path(argv[1]), Path(argv[2]))
    except (ZimError, StreamError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_main(sys.argv[1:]))
