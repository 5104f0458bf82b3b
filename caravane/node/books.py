"""ZIM books at a centre: rebuilt at activation, listed for kiwix-serve, read by the portal.

A release carries each book as its canonical stream of entries (``books/x.zim.crv``,
:mod:`caravane.packs.zim`), which the store has verified chunk by chunk against the signed
manifest. While the release is still a staging folder, each stream that changed becomes a
ZIM file beside it (``books/x.zim``), rebuilt by libzim in a child process, read back and
checked against the stream, and only then does the folder get its final name; an unchanged
book is a hard link to the previous release's file. The stream itself is then removed from
the release folder (the store still holds its chunks), so a book costs its ZIM file on disk.

Each release folder keeps the list of its books in ``.books.json``. On every switch the node
rewrites ``kiwix/library.xml`` (with kiwix-manage, beside and renamed in) over the live
releases; kiwix-serve started with ``--monitorLibrary`` picks the new books up without a
restart, and since each book lives in its own release folder, the file it was reading is
never changed under it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from caravane.packs import zim
from caravane.protocol.metadata import FileEntry

from .errors import NodeError

log = logging.getLogger("caravane.node.books")

INDEX = ".books.json"
LIBRARY = Path("kiwix") / "library.xml"


class BookError(NodeError):
    """A book that could not be rebuilt or served; the previous release stays served."""


def books_of(folder: Path) -> list[str]:
    """Paths (in the release) of the ZIM books a release folder holds."""
    try:
        data = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return (
        [p for p in data.get("books", []) if isinstance(p, str)] if isinstance(data, dict) else []
    )


# ---------------------------------------------------------------------- activation


def link_unchanged(old_folder: Path, staging: Path, entry: FileEntry) -> bool:
    """Hard-link the previous release's book for an unchanged stream; False to rebuild."""
    src = old_folder / zim.book_path(entry.path)
    dest = staging / zim.book_path(entry.path)
    if not src.is_file():
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        return False
    return True


def rebuild(staging: Path, channel: str, streams: Iterable[FileEntry]) -> list[str]:
    """Turn every stream materialised in ``staging`` into its ZIM book; index the books.

    ``streams`` are the release's book streams (its files for which ``zim.is_stream``), which
    the build collects as it walks the release once.
    """
    books = []
    for f in streams:
        if not zim.is_stream(f.path):
            continue
        out = staging / zim.book_path(f.path)
        stream = staging / f.path
        if stream.exists():
            _build(stream, out)
            stream.unlink()
        if not out.is_file():
            raise BookError(f"{channel}: book {zim.book_path(f.path)} is missing")
        books.append(zim.book_path(f.path))
    if books:
        (staging / INDEX).write_text(json.dumps({"books": books}), encoding="utf-8")
    return books


def _build(stream: Path, out: Path) -> None:
    """Rebuild in a child: libzim prints on stdout and runs native code over the stream."""
    proc = subprocess.run(
        [sys.executable, "-m", "caravane.packs.zim", "build", str(stream), str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise BookError(f"{out.name}: the book could not be rebuilt: {why}")


def verify_book(folder: Path, entry: FileEntry) -> bool:
    """Whether the rebuilt book in ``folder`` still reads back as the signed stream."""
    try:
        digest, size = zim.stream_digest(folder / zim.book_path(entry.path))
    except (zim.ZimError, OSError):
        return False
    return digest == entry.sha256 and size == entry.size


# ---------------------------------------------------------------------- kiwix-serve


def library_path(data_dir: Path) -> Path:
    return data_dir / LIBRARY


def live_books(live_dir: Path) -> list[tuple[str, str, Path]]:
    """(channel, book path, real file) of every book the live releases hold."""
    out: list[tuple[str, str, Path]] = []
    if not live_dir.is_dir():
        return out
    for link in sorted(live_dir.iterdir()):
        if not link.is_symlink():
            continue
        folder = link.resolve()
        for rel in books_of(folder):
            real = folder / rel
            if real.is_file():
                out.append((link.name, rel, real))
    return out


def refresh_library(live_dir: Path) -> Path | None:
    """Rewrite kiwix-serve's library over the live books, atomically.

    Real release paths (not the ``live`` link) go in, so a switch changes the library and
    kiwix-serve reopens the new file while the old one, still on disk, is left alone.
    Without kiwix-manage (kiwix-tools not installed) there is nothing to keep current.
    """
    manage = shutil.which("kiwix-manage")
    if manage is None:
        return None
    lib = library_path(live_dir.parent)
    books = [str(real) for _, _, real in live_books(live_dir)]
    if not books and not lib.exists():
        return None  # a centre without books keeps no library
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_name(lib.name + ".new")
    tmp.unlink(missing_ok=True)
    if books:
        proc = subprocess.run(
            [manage, str(tmp), "add", *books],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if proc.returncode != 0 or not tmp.is_file():
            log.warning("kiwix-manage could not list the books: %s", proc.stderr.strip())
            tmp.unlink(missing_ok=True)
            return None
    else:
        tmp.write_text(
            '<?xml version="1.0" encoding="UTF-8" ?>\n<library version="20110515">\n</library>\n',
            encoding="utf-8",
        )
    os.replace(tmp, lib)
    return lib


def kiwix_command(data_dir: Path, host: str, port: int) -> list[str]:
    exe = shutil.which("kiwix-serve")
    if exe is None:
        raise BookError(
            "kiwix-serve is not installed: apt-get install kiwix-tools (or set kiwix_port = 0)"
        )
    lib = library_path(data_dir)
    if not lib.is_file():
        refresh_library(data_dir / "live")
    if not lib.is_file():
        raise BookError(
            "no kiwix library yet: kiwix-manage is missing (apt-get install kiwix-tools)"
        )
    return [exe, "--library", "--monitorLibrary", "--address", host, "--port", str(port), str(lib)]


@contextmanager
def kiwix_running(data_dir: Path, host: str, port: int) -> Iterator[Any]:
    """kiwix-serve as a child for as long as the portal runs (``kiwix_port`` in node.toml)."""
    if not port:
        yield None
        return
    proc = subprocess.Popen(kiwix_command(data_dir, host, port))
    log.info("kiwix-serve on %s:%d (pid %d)", host, port, proc.pid)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


__all__ = [
    "BookError",
    "books_of",
    "kiwix_command",
    "kiwix_running",
    "library_path",
    "link_unchanged",
    "live_books",
    "rebuild",
    "refresh_library",
    "verify_book",
]
