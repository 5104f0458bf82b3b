"""Titles and text out of the files a release carries, for the portal's search.

HTML goes through the standard library's ``html.parser`` (tolerant of the broken markup old
sites carry, no dependency); PDFs through pypdf, the well-kept pure-Python reader (no
poppler binary to install on a centre's small machine). Everything is bounded: a file is
read up to ``MAX_READ`` bytes, a PDF up to ``MAX_PDF_PAGES`` pages, and at most ``MAX_TEXT``
characters of text are kept, so one huge or hostile file costs a centre little time and no
memory. A file that cannot be read is still found by its name.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

MAX_READ = 4 * 1024 * 1024
MAX_TEXT = 100_000
MAX_PDF_PAGES = 60
SKIP_TAGS = {"script", "style", "noscript", "template", "svg"}
BLOCK_TAGS = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section"}

#: what kind of file a path is, for icons and for how the portal opens it
KINDS = {
    "html": ("html", "htm", "xhtml"),
    "pdf": ("pdf",),
    "text": ("txt", "md", "csv"),
    "image": ("png", "jpg", "jpeg", "gif", "webp", "svg"),
    "video": ("mp4", "webm", "ogv", "mkv", "mov"),
    "audio": ("mp3", "ogg", "oga", "wav", "m4a", "opus"),
    "archive": ("zip", "zim", "gz", "tgz", "7z"),
    "software": ("exe", "msi", "deb", "apk", "appimage"),
}
_BY_EXT = {ext: kind for kind, exts in KINDS.items() for ext in exts}

log = logging.getLogger("caravane.node.extract")


def kind_of(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return _BY_EXT.get(ext, "file")


def title_from_name(path: str) -> str:
    """``guides/nutrition_de-l-enfant.pdf`` -> ``nutrition de l enfant``."""
    name = path.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name.strip(".") else name
    return re.sub(r"[_\-.]+", " ", stem).strip() or name


@dataclass
class Extracted:
    title: str
    text: str
    description: str = ""


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: list[str] = []
        self.text: list[str] = []
        self.description = ""
        self._skip = 0
        self._in_title = False
        self._size = 0
        self._para: list[str] | None = None
        self.first_para = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in SKIP_TAGS:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "meta":
            a = dict(attrs)
            if (a.get("name") or "").lower() == "description" and a.get("content"):
                self.description = str(a["content"])[:500]
        elif tag in BLOCK_TAGS:
            self.text.append("\n")
            if tag == "p" and not self.first_para and self._para is None:
                self._para = []

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIP_TAGS and self._skip:
            self._skip -= 1
        elif tag == "title":
            self._in_title = False
        elif tag == "p" and self._para is not None:
            self.first_para, self._para = " ".join(self._para), None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._skip and self._size < MAX_TEXT:
            self.text.append(data)
            self._size += len(data)
            if self._para is not None:
                self._para.append(data)


def _squash(text: str, limit: int = MAX_TEXT) -> str:
    return re.sub(r"\s+", " ", text).strip()[:limit]


def _read(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(MAX_READ)


def html_text(data: bytes) -> Extracted:
    parser = _HtmlText()
    try:
        parser.feed(data.decode("utf-8", errors="replace"))
        parser.close()
    except Exception:  # html.parser is lenient; anything it still chokes on keeps what it read
        log.debug("html parser stopped early", exc_info=True)
    text = _squash("".join(parser.text))
    description = parser.description or parser.first_para or text[:300]
    return Extracted(_squash(" ".join(parser.title), 300), text, _squash(description, 300))


def pdf_text(path: Path) -> Extracted:
    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # malformed PDFs log a lot, we cope
    reader = PdfReader(str(path))
    title = ""
    try:
        meta = reader.metadata
        title = str(meta.title) if meta is not None and meta.title else ""
    except Exception:
        title = ""
    parts: list[str] = []
    size = 0
    for i, page in enumerate(reader.pages):
        if i >= MAX_PDF_PAGES or size >= MAX_TEXT:
            break
        chunk = page.extract_text() or ""
        parts.append(chunk)
        size += len(chunk)
    return Extracted(_squash(title, 300), _squash("\n".join(parts)))


def extract(path: Path, rel: str) -> Extracted:
    """Title and text of one file of a release; never raises for bad content."""
    kind = kind_of(rel)
    fallback = title_from_name(rel)
    try:
        if kind == "html":
            got = html_text(_read(path))
        elif kind == "pdf":
            got = pdf_text(path)
        elif kind == "text":
            got = Extracted("", _squash(_read(path).decode("utf-8", errors="replace")))
        else:
            return Extracted(fallback, "")
    except Exception as exc:  # a damaged or hostile file is still found by its name
        log.info("%s: text not extracted (%s: %s)", rel, type(exc).__name__, exc)
        return Extracted(fallback, "")
    got.title = got.title or fallback
    return got
