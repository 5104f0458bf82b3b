"""The centre's web server: the visitors' portal, the operator page, and the store for peers.

One aiohttp application serves, on the LAN:

- ``/`` a catalogue of the channels, ``/c/<channel>/...`` browsing and files (with Range, so
  videos seek; HTML sites are served as they are, with a thin bar back to the portal when
  opened as a page), ``/search`` over titles and text, ``/api/suggest`` (``node/library.py``);
- ``/operator`` the sync state in plain words, ``/api/status`` the same as JSON;
- ``/repo/...`` the node's verified store, read-only, so a neighbouring centre can sync from
  this one (it verifies everything itself against its own pinned root).

Pages come in French and English (caravane/locales), chosen from the browser's language with
a switch that a cookie remembers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.parse
from collections import defaultdict
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from caravane.i18n import FALLBACKS, Translator, negotiate, size_text, switcher
from caravane.protocol.errors import PathError
from caravane.protocol.paths import check_path
from caravane.served_objects import object_id, object_response

from . import books_web
from .agent import NodeAgent
from .config import REPO_PREFIX
from .extract import kind_of
from .freeze import freeze_warning, freshness
from .library import Library
from .metrics import add_metrics
from .operator import OperatorPage
from .passlog import last_pass, last_syncs

log = logging.getLogger("caravane.node.serve")

NODE_KEY = web.AppKey("node", NodeAgent)
PORTAL_KEY: web.AppKey[Portal] = web.AppKey("portal")
PEER_ROOTS = ("metadata/", "manifests/", "objects/")
IMMUTABLE = "public, max-age=31536000, immutable"
MUTABLE = "public, max-age=60"
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
USAGE_FLUSH_SECONDS = 30


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"]),
    )
    return env


class Portal:
    def __init__(self, node: NodeAgent) -> None:
        self.node = node
        self.env = _env()
        self.usage: dict[tuple[str, str], int] = defaultdict(int)
        self.drive_notice: dict[str, str] = {}
        self.library = Library(self)
        self.operator = OperatorPage(self)

    # ------------------------------------------------------------------ helpers

    def lang(self, request: web.Request) -> str:
        return negotiate(
            request.query.get("lang"),
            request.cookies.get("lang"),
            request.headers.get("Accept-Language"),
        )

    def render(
        self, request: web.Request, name: str, status: int = 200, **ctx: Any
    ) -> web.Response:
        lang = self.lang(request)
        t = Translator(lang)
        html = self.env.get_template(name).render(lang=lang, t=t, languages=switcher(lang), **ctx)
        resp = web.Response(text=html, content_type="text/html", status=status)
        resp.headers["Content-Language"] = lang
        resp.headers["X-Content-Type-Options"] = "nosniff"
        if request.query.get("lang") == lang:
            resp.set_cookie("lang", lang, max_age=365 * 86400, samesite="Lax")
        return resp

    def channel_titles(self) -> dict[str, str]:
        """Each served channel's title from its signed metadata (its id when it has none)."""
        titles = {}
        for ch in self.node.releases.channels():
            try:
                titles[ch] = self.node.repo.channel_meta(ch).title or ch
            except Exception:
                titles[ch] = ch
        return titles

    def channel_root(self, channel: str) -> Path | None:
        if channel not in self.node.releases.channels():
            return None
        return self.node.releases.live_link(channel)

    def resolve(self, channel: str, rel: str) -> Path:
        """A path inside a channel's live release; anything else is refused."""
        root = self.channel_root(channel)
        if root is None:
            raise web.HTTPNotFound()
        rel = rel.strip("/")
        if rel:
            try:
                check_path(rel)
            except PathError:
                raise web.HTTPBadRequest(text="bad path") from None
        real_root = Path(os.path.realpath(root))
        target = Path(os.path.realpath(real_root / rel)) if rel else real_root
        if target != real_root and real_root not in target.parents:
            raise web.HTTPNotFound()
        return target

    # ------------------------------------------------------------------ visitors

    async def catalogue(self, request: web.Request) -> web.Response:
        lang = self.lang(request)
        channels = []
        try:
            descriptions = await asyncio.to_thread(self.library.index.descriptions)
        except Exception:
            descriptions = {}
        for ch in self.node.releases.channels():
            version = self.node.releases.active(ch)
            title, files, size, site = ch, 0, 0, None
            try:
                meta = self.node.repo.channel_meta(ch)
                title = meta.title or ch
                ref = meta.releases.get(version) if version else None
                if ref is not None:
                    files, size = ref.files, ref.size
            except Exception:
                pass
            if (self.node.releases.live_link(ch) / "index.html").is_file():
                site = "index.html"
            channels.append(
                {
                    "id": ch,
                    "title": title,
                    "files": files,
                    "size": size_text(size, lang),
                    "version": version,
                    "site": site,
                    "description": descriptions.get(ch, ""),
                }
            )
        return self.render(
            request, "catalogue.html", channels=channels, freeze=self.freeze_notice(lang)
        )

    def freeze_notice(self, lang: str) -> str | None:
        """The portal says content may be old when no fresh word came for too long (TRUST.md)."""
        days = self.node.config.freeze_warning_days
        chans = [
            {"channel": ch, "freshness": freshness(self.node.state, ch, days)}
            for ch in self.node.channels()
        ]
        warning = freeze_warning(chans, days)
        if not warning:
            return None
        return next(warning[c] for c in (lang, *FALLBACKS) if c in warning)  # en, fr written

    async def browse(self, request: web.Request) -> web.StreamResponse:
        channel = request.match_info["channel"]
        rel = request.match_info.get("path", "")
        target = await asyncio.to_thread(self.resolve, channel, rel)
        if target.is_dir():
            if rel and not rel.endswith("/"):
                raise web.HTTPFound(f"/c/{urllib.parse.quote(channel)}/{urllib.parse.quote(rel)}/")
            return await self._listing(request, channel, rel.strip("/"), target)
        if not target.is_file():
            raise web.HTTPNotFound()
        page = await self.library.content(request, channel, rel.strip("/"), target)
        if page is not None:
            if kind_of(rel) == "html":
                self.usage[(channel, rel.strip("/"))] += 1
            return page
        rng = request.headers.get("Range", "")
        if not rng or rng.replace(" ", "").startswith("bytes=0-"):
            self.usage[(channel, rel.strip("/"))] += 1  # an opening, not a seek
        return web.FileResponse(
            target, headers={"Cache-Control": "public, max-age=3600", "Vary": "Sec-Fetch-Dest"}
        )

    async def _listing(
        self, request: web.Request, channel: str, rel: str, folder: Path
    ) -> web.Response:
        lang = self.lang(request)
        entries = []
        for p in sorted(folder.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower())):
            if p.name.startswith("."):
                continue
            href = urllib.parse.quote(p.name) + ("/" if p.is_dir() else "")
            entries.append(
                {
                    "name": p.name,
                    "href": href,
                    "dir": p.is_dir(),
                    "kind": "folder" if p.is_dir() else kind_of(p.name),
                    "size": "" if p.is_dir() else size_text(p.stat().st_size, lang),
                }
            )
        site = "index.html" if (folder / "index.html").is_file() else None
        title = self.channel_titles().get(channel, channel)
        heading = f"{title} / {rel}" if rel else title
        return self.render(
            request,
            "browse.html",
            heading=heading,
            entries=entries,
            up_href="../" if rel else "/",
            site=site,
        )

    # ------------------------------------------------------------------ operator

    async def api_status(self, request: web.Request) -> web.Response:
        st = await asyncio.to_thread(self.node.status)
        st["drives"] = dict(self.drive_notice)
        st["last_pass"] = last_pass(self.node.state)
        st["last_sync"] = last_syncs(self.node.state)
        return web.json_response(st)

    # ------------------------------------------------------------------ peers

    async def repo_file(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        if tail != "metadata/root.json" and (
            not tail.startswith(PEER_ROOTS)
            or any(part in ("", ".", "..") or part.startswith(".") for part in tail.split("/"))
        ):
            raise web.HTTPNotFound()
        sha = object_id(tail)
        if sha is not None:  # objects live in segments; the URL layout is unchanged
            return await object_response(request, self.node.repo.store, sha)
        path = self.node.repo.path / tail
        if not path.is_file():
            raise web.HTTPNotFound()
        cache = MUTABLE if tail.startswith("metadata/") else IMMUTABLE
        return web.FileResponse(path, headers={"Cache-Control": cache})

    async def flush_usage(self) -> None:
        counts, self.usage = dict(self.usage), defaultdict(int)
        if counts:
            await asyncio.to_thread(self.node.state.add_usage, counts)


async def relay_report(request: web.Request) -> web.Response:
    """A peer centre that syncs from this one hands over a signed report to carry upstream.

    Kept in this centre's relay queue and forwarded to the hub on its own routes (network
    or drive); the hub checks the peer's signature. 200 means "kept here" (the peer marks it
    delivered), 413/422 a report that is too big or malformed, 503 when the queue is full.
    """
    from caravane.protocol.errors import CaravaneError
    from caravane.protocol.report import MAX_REPORT_BYTES

    from .errors import NodeError

    node: NodeAgent = request.app[NODE_KEY]
    body = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        body += chunk
        if len(body) > MAX_REPORT_BYTES:
            return web.json_response({"error": "report larger than 4 MB"}, status=413)
    try:
        out = await asyncio.to_thread(node.relay_report, bytes(body))
    except NodeError as exc:
        return web.json_response({"error": str(exc)}, status=503)
    except CaravaneError as exc:
        return web.json_response({"error": str(exc)}, status=422)
    return web.json_response(out)


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status in (404, 400) and not request.path.startswith((REPO_PREFIX + "/", "/api/")):
            portal: Portal = request.app[PORTAL_KEY]
            t = Translator(portal.lang(request))
            text = t("err.not_found") if exc.status == 404 else t("err.bad_path")
            return web.Response(text=text, status=exc.status, content_type="text/plain")
        raise


def make_app(node: NodeAgent, agent: bool = False) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=64 * 1024)
    portal = Portal(node)
    app[NODE_KEY] = node
    app[PORTAL_KEY] = portal
    r = app.router
    r.add_get("/", portal.catalogue)
    r.add_get("/search", portal.library.search_page)
    r.add_get("/api/suggest", portal.library.suggest)
    r.add_get("/operator", portal.operator.view)
    r.add_post("/operator/{action}", portal.operator.act)
    r.add_get("/api/operator/job", portal.operator.job_api)
    r.add_get("/api/status", portal.api_status)
    r.add_get("/c/{channel}", _redirect_slash)
    r.add_get("/c/{channel}/", portal.browse)
    r.add_get("/c/{channel}/{path:.*}", portal.browse)
    r.add_get(REPO_PREFIX + "/{tail:.+}", portal.repo_file)
    r.add_post("/api/v1/relay/reports", relay_report)
    r.add_static("/static/", STATIC)
    add_metrics(app, node)
    books_web.add_routes(app, portal)  # ZIM books (node/books_web.py)

    async def usage_loop(app: web.Application) -> Any:
        async def loop() -> None:
            while True:
                await asyncio.sleep(USAGE_FLUSH_SECONDS)
                await portal.flush_usage()

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        await portal.flush_usage()

    app.cleanup_ctx.append(usage_loop)

    async def index_at_start(app: web.Application) -> Any:
        # a missing or damaged index is rebuilt from the releases while the portal serves
        # (searches fall back to file names until it is done)
        task = asyncio.create_task(asyncio.to_thread(portal.library.catch_up, True))
        yield
        await task

    app.cleanup_ctx.append(index_at_start)
    if agent:
        from .service import AgentService

        async def run_agent(app: web.Application) -> Any:
            service = AgentService(node, portal)
            service.start()
            yield
            await asyncio.to_thread(service.stop)

        app.cleanup_ctx.append(run_agent)
    return app


async def _redirect_slash(request: web.Request) -> web.Response:
    raise web.HTTPFound(f"/c/{urllib.parse.quote(request.match_info['channel'])}/")


def serve(node: NodeAgent, host: str, port: int, agent: bool = False) -> None:
    """Serve the portal; aiohttp's keep-alive timer, which runs from the moment a connection
    opens and closes one still waiting for a whole request head, is the header deadline
    (node.toml ``header_timeout_seconds``): 300 slow clients cannot hold the portal. The
    portal answers GETs, and reads small bodies only for the operator's two buttons and a
    peer's relayed reports."""
    log.info("portal on http://%s:%d/", host, port)
    web.run_app(
        make_app(node, agent),
        host=host,
        port=port,
        print=None,
        keepalive_timeout=float(node.config.header_timeout_seconds),
    )
