"""The portal's ZIM books: read, searched and downloaded as Kiwix does, with libzim.

Routes (added to the portal by :func:`add_routes`)::

    /books/                                     the books of the live releases
    /books/<channel>/<book.zim>/                its main page
    /books/<channel>/<book.zim>/content/<path>  an entry (redirects followed by HTTP 302)
    /books/<channel>/<book.zim>/search?q=       full-text search (titles when not indexed)
    /books/<channel>/<book.zim>/suggest?q=      title suggestions as JSON
    /c/<channel>/<book.zim>                     the file itself, for the Kiwix app

Entries keep their own relative links, so a book's pages, images and media work under
``content/`` as they do in kiwix-serve. libzim reads block, so every call runs in a thread;
archives stay open (a few at most) keyed by their real path, which changes with each release.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from caravane.i18n import Translator, size_text

from . import books

if TYPE_CHECKING:
    from .serve import Portal

BOOK = r"{book:[^?#]+?\.zim}"
MAX_RESULTS = 50
OPEN_ARCHIVES = 8


class _Archives:
    """A few open libzim archives; a new release is a new path, so nothing goes stale."""

    def __init__(self) -> None:
        self._open: OrderedDict[Path, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, real: Path) -> Any:
        import libzim.reader

        with self._lock:
            if real in self._open:
                self._open.move_to_end(real)
                return self._open[real]
            archive = libzim.reader.Archive(str(real))
            self._open[real] = archive
            while len(self._open) > OPEN_ARCHIVES:
                self._open.popitem(last=False)
            return archive


class BookPages:
    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self.archives = _Archives()

    def _book(self, request: web.Request) -> tuple[str, str, Path]:
        channel, rel = request.match_info["channel"], request.match_info["book"]
        real = self.portal.resolve(channel, rel)
        if rel not in books.books_of(self.portal.resolve(channel, "")) or not real.is_file():
            raise web.HTTPNotFound()
        return channel, rel, real

    def _base(self, channel: str, rel: str) -> str:
        return f"/books/{urllib.parse.quote(channel)}/{urllib.parse.quote(rel)}/"

    async def index(self, request: web.Request) -> web.Response:
        lang = self.portal.lang(request)
        live = self.portal.node.releases.live_dir
        found = await asyncio.to_thread(self._list, live, lang)
        return self.portal.render(request, "books.html", books=found)

    def _list(self, live: Path, lang: str) -> list[dict[str, Any]]:
        out = []
        for channel, rel, real in books.live_books(live):
            try:
                a = self.archives.get(real)
                meta = set(a.metadata_keys)

                def m(key: str, a: Any = a, meta: set[str] = meta) -> str:
                    return (
                        bytes(a.get_metadata(key)).decode("utf-8", "replace") if key in meta else ""
                    )

                title, description, articles = m("Title"), m("Description"), a.article_count
            except Exception:
                continue
            out.append(
                {
                    "title": title or Path(rel).stem,
                    "description": description,
                    "articles": articles,
                    "channel": channel,
                    "read": self._base(channel, rel),
                    "download": f"/c/{urllib.parse.quote(channel)}/{urllib.parse.quote(rel)}",
                    "size": size_text(real.stat().st_size, lang),
                }
            )
        return out

    async def main_page(self, request: web.Request) -> web.Response:
        channel, rel, real = await asyncio.to_thread(self._book, request)
        a = await asyncio.to_thread(self.archives.get, real)
        if not a.has_main_entry:
            raise web.HTTPFound(self._base(channel, rel) + "search")
        entry = a.main_entry
        path = entry.get_redirect_entry().path if entry.is_redirect else entry.path
        raise web.HTTPFound(self._base(channel, rel) + "content/" + urllib.parse.quote(path))

    async def content(self, request: web.Request) -> web.Response:
        channel, rel, real = await asyncio.to_thread(self._book, request)
        path = request.match_info["path"]

        def read() -> tuple[str, bytes | str]:
            a = self.archives.get(real)
            try:
                entry = a.get_entry_by_path(path)
            except KeyError:
                raise web.HTTPNotFound() from None
            if entry.is_redirect:
                return "redirect", entry.get_redirect_entry().path
            item = entry.get_item()
            return item.mimetype, bytes(item.content)

        kind, body = await asyncio.to_thread(read)
        if kind == "redirect":
            assert isinstance(body, str)
            raise web.HTTPFound(self._base(channel, rel) + "content/" + urllib.parse.quote(body))
        assert isinstance(body, bytes)
        self.portal.usage[(channel, f"{rel}/{path}")] += 1
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = kind
        resp.headers["Cache-Control"] = "public, max-age=3600"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp

    async def search(self, request: web.Request) -> web.Response:
        channel, rel, real = await asyncio.to_thread(self._book, request)
        q = request.query.get("q", "").strip()[:200]
        results = await asyncio.to_thread(self._search, real, q) if q else []
        base = self._base(channel, rel)
        for r in results:
            r["href"] = base + "content/" + urllib.parse.quote(r["path"])
        t = Translator(self.portal.lang(request))
        return self.portal.render(
            request,
            "book_search.html",
            q=q,
            results=results,
            heading=t("books.search_in", book=Path(rel).stem),
            action=base + "search",
        )

    def _search(self, real: Path, q: str) -> list[dict[str, Any]]:
        from libzim.search import Query, Searcher
        from libzim.suggestion import SuggestionSearcher

        a = self.archives.get(real)
        if a.has_fulltext_index:
            found = Searcher(a).search(Query().set_query(q))
        else:
            found = SuggestionSearcher(a).suggest(q)
        paths = list(found.getResults(0, MAX_RESULTS))
        out = []
        for p in paths:
            try:
                title = a.get_entry_by_path(p).title
            except KeyError:
                continue
            out.append({"path": p, "title": title or p})
        return out

    async def suggest(self, request: web.Request) -> web.Response:
        _channel, _rel, real = await asyncio.to_thread(self._book, request)
        q = request.query.get("q", "").strip()[:200]

        def run() -> list[dict[str, str]]:
            from libzim.suggestion import SuggestionSearcher

            a = self.archives.get(real)
            paths = list(SuggestionSearcher(a).suggest(q).getResults(0, MAX_RESULTS)) if q else []
            return [{"path": p, "title": a.get_entry_by_path(p).title} for p in paths]

        return web.json_response({"q": q, "suggestions": await asyncio.to_thread(run)})


def add_routes(app: web.Application, portal: Portal) -> None:
    pages = BookPages(portal)
    r = app.router
    r.add_get("/books/", pages.index)
    r.add_get("/books/{channel}/" + BOOK + "/", pages.main_page)
    r.add_get("/books/{channel}/" + BOOK + "/content/{path:.+}", pages.content)
    r.add_get("/books/{channel}/" + BOOK + "/search", pages.search)
    r.add_get("/books/{channel}/" + BOOK + "/suggest", pages.suggest)


__all__ = ["add_routes"]
