"""The visitor's side of the portal as a library: search, suggestions, and the thin bar.

- ``/search?q=`` ranks titles and text from the full-text index (``node/search.py``) of the
  releases being served; a channel whose release is not indexed yet (an index rebuilt after
  damage, an activation that could not write it) is searched by file name meanwhile, and
  the index catches up in the background.
- ``/api/suggest?q=`` a few titles for what is typed so far (the search box's datalist; the
  plain form works without JavaScript).
- Content pages keep a way back: an HTML page opened as a page gets a thin bar (home, search,
  back to its folder) inserted after ``<body>``, styled inline and reset so the site's own CSS
  and layout are untouched; a PDF, an image, a video, a sound or a text opened as a page
  gets a small wrapper page with the same bar around the file. What a page's own scripts,
  frames and players fetch (``Sec-Fetch-Dest`` other than ``document``), ``?raw=1``, and
  clients that do not say (download tools) get the file exactly as it is, with Range.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from caravane.i18n import Translator, size_text
from caravane.protocol.errors import CaravaneError
from caravane.protocol.metadata import FileEntry
from caravane.protocol.release import Release

from . import search
from .extract import kind_of

if TYPE_CHECKING:
    from .serve import Portal

log = logging.getLogger("caravane.node.library")

#: HTML bigger than this is served as it is (no bar): reading it whole would cost too much
MAX_INJECT = 8 * 1024 * 1024
WRAPPED_KINDS = ("pdf", "image", "video", "audio", "text")
BODY_TAG = re.compile(rb"<body\b[^>]*>", re.IGNORECASE)
HEAD_END = re.compile(rb"</head\s*>", re.IGNORECASE)
MAX_RESULTS = 50
FALLBACK_SCAN = 200


def file_href(channel: str, path: str) -> str:
    return f"/c/{urllib.parse.quote(channel)}/{urllib.parse.quote(path)}"


def folder_href(channel: str, path: str) -> str:
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    return f"/c/{urllib.parse.quote(channel)}/" + (
        urllib.parse.quote(parent) + "/" if parent else ""
    )


class Library:
    """The search index of the releases a portal serves, kept in step with them."""

    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self.node = portal.node
        self.index = search.for_releases(self.node.config.releases_dir)
        self._catching_up = threading.Lock()

    def served(self) -> dict[str, int]:
        releases = self.node.releases
        return {ch: v for ch in releases.channels() if (v := releases.active(ch)) is not None}

    def _release(self, channel: str, version: int) -> Release | None:
        try:
            return self.node.repo.release(channel, version)
        except Exception:
            return None

    def catch_up(self, full_check: bool = False) -> None:
        """Index what is served and not indexed (at start-up, and when a search meets it)."""
        if not self._catching_up.acquire(blocking=False):
            return  # already running
        try:
            search.ensure(
                self.index,
                self.served(),
                self.node.releases.folder,
                self._release,
                full_check=full_check,
            )
        except Exception:
            log.exception("the search index could not be brought up to date")
        finally:
            self._catching_up.release()

    def catch_up_later(self) -> None:
        threading.Thread(target=self.catch_up, name="search-index", daemon=True).start()

    def covered(self, served: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
        """The served releases split into (indexed, not yet indexed)."""
        indexed: dict[str, int] = {}
        missing: dict[str, int] = {}
        for ch, v in served.items():
            try:
                ok = self.index.covers(ch, v)
            except search.SearchIndexError:
                ok = False
            (indexed if ok else missing)[ch] = v
        return indexed, missing

    # ------------------------------------------------------------------ finding

    def find(self, q: str, lang: str) -> dict[str, Any]:
        served = self.served()
        titles = self.portal.channel_titles()
        folded = search.fold(q)
        channels = [
            {"id": ch, "title": titles.get(ch, ch)}
            for ch in served
            if folded
            and all(w in search.fold(f"{titles.get(ch, ch)} {ch}") for w in folded.split())
        ]
        indexed, missing = self.covered(served)
        results: list[dict[str, Any]] = []
        try:
            hits = self.index.search(q, indexed, MAX_RESULTS)
        except search.SearchIndexError:
            hits, missing = [], served
        for h in hits:
            results.append(
                self._result(h.channel, h.path, h.kind, h.size, h.title, h.snippet, lang)
            )
        if missing:
            self.catch_up_later()
            results += self._by_name(q, missing, lang, MAX_RESULTS - len(results))
        for r in results:
            r["channel_title"] = titles.get(r["channel"], r["channel"])
        return {"channels": channels, "results": results, "partial": bool(missing)}

    def _result(
        self, channel: str, path: str, kind: str, size: int, title: str, snippet: str, lang: str
    ) -> dict[str, Any]:
        return {
            "channel": channel,
            "path": path,
            "name": path.rsplit("/", 1)[-1],
            "title": title or path.rsplit("/", 1)[-1],
            "kind": kind,
            "href": file_href(channel, path),
            "folder": folder_href(channel, path),
            "size": size_text(size, lang),
            "snippet": snippet,
        }

    def _by_name(
        self, q: str, channels: dict[str, int], lang: str, limit: int
    ) -> list[dict[str, Any]]:
        """File names only, accents folded: what a release not yet indexed can offer."""
        words = search.fold(q).split()
        out: list[dict[str, Any]] = []
        if not words or limit <= 0:
            return out
        for ch, v in channels.items():
            release = self._release(ch, v)
            if release is None:
                continue
            try:
                for f in self._names(release, words):
                    title = f.path.rsplit("/", 1)[-1]
                    out.append(self._result(ch, f.path, kind_of(f.path), f.size, title, "", lang))
                    if len(out) >= limit:
                        return out
            except CaravaneError:
                continue  # a piece missing or damaged: the release is rebuilt at the next sync
        return out

    @staticmethod
    def _names(release: Release, words: list[str]) -> Iterator[FileEntry]:
        """The files whose folded path holds every word, walked from the pieces."""
        for f in release.iter_files():
            name = search.fold(f.path)
            if all(w in name for w in words):
                yield f

    # ------------------------------------------------------------------ handlers

    async def search_page(self, request: web.Request) -> web.Response:
        q = request.query.get("q", "").strip()[:200]
        lang = self.portal.lang(request)
        found: dict[str, Any] = {"channels": [], "results": [], "partial": False}
        if q:
            found = await asyncio.to_thread(self.find, q, lang)
        return self.portal.render(request, "search.html", q=q, **found)

    async def suggest(self, request: web.Request) -> web.Response:
        q = request.query.get("q", "").strip()[:100]
        out: list[dict[str, str]] = []
        if len(q) >= 2:
            out = await asyncio.to_thread(self._suggest, q)
        resp = web.json_response({"q": q, "suggestions": out})
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def _suggest(self, q: str) -> list[dict[str, str]]:
        indexed, _ = self.covered(self.served())
        try:
            hits = self.index.suggest(q, indexed, 8)
        except search.SearchIndexError:
            return []
        seen: set[str] = set()
        out = []
        for h in hits:
            if h.title in seen:
                continue
            seen.add(h.title)
            out.append({"title": h.title, "href": file_href(h.channel, h.path), "kind": h.kind})
        return out

    # ------------------------------------------------------------------ content pages

    def wants_page(self, request: web.Request) -> bool:
        """A person opening the file as a page (not a frame, a player, a script or a tool)."""
        if request.query.get("raw"):
            return False
        return request.headers.get("Sec-Fetch-Dest", "") == "document"

    async def content(
        self, request: web.Request, channel: str, rel: str, target: Path
    ) -> web.StreamResponse | None:
        """The page a person sees for a file, or None to send the file as it is."""
        if not self.wants_page(request):
            return None
        kind = kind_of(rel)
        if kind == "html":
            return await self._html_with_bar(request, channel, rel, target)
        if kind in WRAPPED_KINDS:
            return self._wrapper(request, channel, rel, target, kind)
        return None

    def bar_html(self, request: web.Request, channel: str, rel: str) -> bytes:
        t = Translator(self.portal.lang(request))
        title = self.portal.channel_titles().get(channel, channel)
        link = (
            "all:initial;color:#fff;font:15px/1.6 system-ui,sans-serif;text-decoration:underline;"
            "margin-right:1.2em;cursor:pointer"
        )
        items = [
            ("/", t("portal.home")),
            ("/search", t("portal.search")),
            (folder_href(channel, rel), t("bar.back", title=title)),
        ]
        links = "".join(
            f'<a style="{link}" href="{html.escape(h)}">{html.escape(label)}</a>'
            for h, label in items
        )
        bar = (
            '<div id="caravane-bar" role="navigation" aria-label="'
            + html.escape(t("bar.label"))
            + '" style="all:initial;display:block;box-sizing:border-box;width:100%;'
            "background:#0b5394;color:#fff;padding:4px 12px;font:15px/1.6 system-ui,sans-serif;"
            'position:relative;z-index:2147483647">' + links + "</div>"
        )
        return bar.encode("ascii", "xmlcharrefreplace")

    async def _html_with_bar(
        self, request: web.Request, channel: str, rel: str, target: Path
    ) -> web.StreamResponse | None:
        try:
            if target.stat().st_size > MAX_INJECT:
                return None
            data = await asyncio.to_thread(target.read_bytes)
        except OSError:
            return None
        bar = self.bar_html(request, channel, rel)
        m = BODY_TAG.search(data)
        if m is not None:
            out = data[: m.end()] + bar + data[m.end() :]
        elif (h := HEAD_END.search(data)) is not None:
            out = data[: h.end()] + bar + data[h.end() :]
        else:
            out = bar + data
        resp = web.Response(body=out, content_type="text/html")
        charset = _declared_charset(data)
        if charset:
            resp.charset = charset
        resp.headers["Cache-Control"] = "no-cache"
        resp.headers["Vary"] = "Sec-Fetch-Dest"
        return resp

    def _wrapper(
        self, request: web.Request, channel: str, rel: str, target: Path, kind: str
    ) -> web.Response:
        lang = self.portal.lang(request)
        name = rel.rsplit("/", 1)[-1]
        raw = urllib.parse.quote(name) + "?raw=1"
        resp = self.portal.render(
            request,
            "view.html",
            kind=kind,
            filename=name,
            raw=raw,
            size=size_text(target.stat().st_size, lang),
            folder=folder_href(channel, rel),
            channel_title=self.portal.channel_titles().get(channel, channel),
        )
        resp.headers["Vary"] = "Sec-Fetch-Dest"
        resp.headers["Cache-Control"] = "no-cache"
        return resp


def _declared_charset(data: bytes) -> str | None:
    """The charset a page declares in its first bytes, so the browser decodes it the same
    way once it comes from us (default: none said, the browser sniffs as before)."""
    m = re.search(rb"<meta[^>]+charset=[\"']?([A-Za-z0-9_\-]+)", data[:4096], re.IGNORECASE)
    if m is None:
        return None
    try:
        name = m.group(1).decode("ascii")
        "".encode(name)
    except (LookupError, UnicodeDecodeError):
        return None
    return name
