"""Real ZIM books for tests, written with python-libzim: pages that link each other, images.

Every book carries the metadata zimcheck asks for (Name, Title, Language, Creator,
Publisher, Date, Description, a 48x48 illustration) and only internal links that resolve,
so a book made here and one rebuilt from it both pass ``zimcheck``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import libzim.writer as zw


def png(seed: int, size: int = 48) -> bytes:
    """A valid RGB PNG, different per seed (image bytes, as media in a book are)."""
    row = bytes((seed * 7 + x * 3) % 256 for x in range(size * 3))
    raw = b"".join(b"\0" + row for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    head = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", head)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


class _Item(zw.Item):
    def __init__(self, path: str, title: str, mime: str, data: bytes, front: bool) -> None:
        super().__init__()
        self.p, self.t, self.m, self.d, self.f = path, title, mime, data, front

    def get_path(self) -> str:
        return self.p

    def get_title(self) -> str:
        return self.t

    def get_mimetype(self) -> str:
        return self.m

    def get_contentprovider(self) -> zw.ContentProvider:
        return zw.StringProvider(self.d)

    def get_hints(self) -> dict[zw.Hint, int]:
        return {zw.Hint.FRONT_ARTICLE: self.f}


def page(i: int, text: str, n: int) -> str:
    nxt = (i + 1) % n
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Leçon {i}</title></head>"
        f"<body><h1>Leçon {i}</h1><p>{text}</p><img src='../images/{i % 10}.png' alt='figure'>"
        f"<p><a href='{nxt}.html'>Leçon {nxt}</a></p></body></html>"
    )


def pages(n: int, changed: dict[int, str] | None = None) -> dict[int, str]:
    """Article texts; ``changed`` replaces some of them (an update of the book)."""
    out = {i: " ".join(f"mot{(i * 31 + k) % 997} savoir{i}" for k in range(120)) for i in range(n)}
    out.update(changed or {})
    return out


def make_book(path: Path, texts: dict[int, str], title: str = "Leçons de sciences") -> Path:
    """Write a ZIM book of the given article texts (plus a home page and ten images)."""
    n = len(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zw.Creator(str(path)).config_indexing(True, "fra") as c:
        c.set_mainpath("index.html")
        links = "".join(f"<li><a href='a/{i}.html'>Leçon {i}</a></li>" for i in range(n))
        home = f"<!doctype html><html><head><title>{title}</title></head><body><ul>{links}</ul>"
        c.add_item(
            _Item("index.html", title, "text/html", (home + "</body></html>").encode(), True)
        )
        for i, text in texts.items():
            c.add_item(
                _Item(f"a/{i}.html", f"Leçon {i}", "text/html", page(i, text, n).encode(), True)
            )
        for k in range(10):
            c.add_item(_Item(f"images/{k}.png", f"figure {k}", "image/png", png(k), False))
        c.add_redirection("debut", "Début", "index.html", {zw.Hint.FRONT_ARTICLE: True})
        for key, value in {
            "Name": "lecons_fr_all",
            "Title": title,
            "Language": "fra",
            "Creator": "Caravane tests",
            "Publisher": "Caravane tests",
            "Date": "2026-12-01",
            "Description": "Un livre de test",
        }.items():
            c.add_metadata(key, value)
        c.add_illustration(48, png(99))
    return path


def hostile_files(folder: Path, good: Path) -> dict[str, Path]:
    """ZIM-named files a curator might drop by mistake or an attacker on purpose."""
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    out = {
        "random": folder / "random.zim",
        "truncated": folder / "truncated.zim",
        "flipped": folder / "flipped.zim",
    }
    out["random"].write_bytes(b"ZIM\x04" + bytes(range(256)) * 40)
    out["truncated"].write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    mid = len(flipped) // 2
    flipped[mid : mid + 64] = bytes(64)
    out["flipped"].write_bytes(bytes(flipped))
    return out


__all__ = ["hostile_files", "make_book", "pages", "png"]
