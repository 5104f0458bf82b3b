"""The hub's HTTP service (aiohttp): the JSON API and the static, signed repository.

The repository is served as immutable files (objects, manifests, packs: cached for a year)
and two small mutable kinds (root and channel metadata: cached for a minute), with Range and
ETag handled by aiohttp's FileResponse (sendfile). Every API error is a JSON body
``{"error": ..., "status": ...}`` and never stops the service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from protocol.errors import CaravaneError
from protocol.metadata import HEX64

from .config import HubConfig
from .errors import HubError, NotFound
from .service import Hub, Principal
from .usage_web import add_usage_routes
from .web import PACK_QUEUE, add_routes

log = logging.getLogger("caravane.hub")
HUB_KEY: web.AppKey[Hub] = web.AppKey("hub", Hub)
PACK_LOCKS: web.AppKey[dict] = web.AppKey("pack_locks", dict)
JOBS: web.AppKey[Any] = web.AppKey("jobs", object)
PACK_WORKER: web.AppKey[asyncio.Task] = web.AppKey("pack_worker", asyncio.Task)
PACK_RE = re.compile(r"^packs/([a-z0-9][a-z0-9._-]{0,63})/(\d+)-(\d+)\.pack$")
STATIC_ROOTS = ("metadata/", "manifests/", "objects/", "packs/")
IMMUTABLE = "public, max-age=31536000, immutable"
MUTABLE = "public, max-age=60, must-revalidate"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HubError as exc:
        return _json_error(exc.status, str(exc))
    except CaravaneError as exc:
        return _json_error(422, str(exc))
    except web.HTTPRequestEntityTooLarge:
        return _json_error(413, f"request body too large (limit {request.client_max_size} bytes)")
    except web.HTTPException as exc:
        if exc.status >= 400 and not request.path.startswith("/repo/"):
            return _json_error(exc.status, exc.reason)
        raise
    except Exception:  # the service keeps serving; the log says what broke
        log.exception("internal error on %s %s", request.method, request.path)
        return _json_error(500, "internal error; see the hub's log")


async def run(request: web.Request, fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking work (database, disk, signing) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args))


async def body_json(request: web.Request) -> dict[str, Any]:
    hub = request.app[HUB_KEY]
    if request.content_length and request.content_length > hub.config.max_json_bytes:
        raise HubError(f"JSON body larger than {hub.config.max_json_bytes} bytes", 413)
    try:
        doc = json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HubError("body is not valid JSON", 400) from None
    if not isinstance(doc, dict):
        raise HubError("body must be a JSON object", 400)
    return doc


async def principal(request: web.Request) -> Principal:
    return await run(
        request, request.app[HUB_KEY].authenticate, request.headers.get("Authorization")
    )


# --------------------------------------------------------------------------- API


async def health(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    counts = await run(request, hub.counts)
    return web.json_response({"ok": True, **counts})


async def create_token(request: web.Request) -> web.Response:
    p = await principal(request)
    p.require()
    doc = await body_json(request)
    token = await run(
        request,
        request.app[HUB_KEY].create_token,
        str(doc.get("name", "")),
        str(doc.get("role", "")),
        p.name,
    )
    return web.json_response({"token": token}, status=201)


async def list_channels(request: web.Request) -> web.Response:
    await principal(request)
    return web.json_response({"channels": await run(request, request.app[HUB_KEY].channels)})


async def create_channel(request: web.Request) -> web.Response:
    p = await principal(request)
    doc = await body_json(request)
    out = await run(request, request.app[HUB_KEY].create_channel, p, doc)
    return web.json_response(out, status=201)


async def get_channel(request: web.Request) -> web.Response:
    await principal(request)
    return web.json_response(
        await run(request, request.app[HUB_KEY].channel, request.match_info["cid"])
    )


async def start_upload(request: web.Request) -> web.Response:
    p = await principal(request)
    doc = await body_json(request)
    return web.json_response(
        await run(request, request.app[HUB_KEY].start_upload, p, doc), status=201
    )


async def upload_status(request: web.Request) -> web.Response:
    p = await principal(request)
    return web.json_response(
        await run(request, request.app[HUB_KEY].upload_status, p, request.match_info["uid"])
    )


async def put_object(request: web.Request) -> web.Response:
    p = await principal(request)
    hub = request.app[HUB_KEY]
    sha = request.match_info["sha"]
    if not HEX64.match(sha):
        raise HubError("object id must be a SHA-256 hex digest", 400)
    if request.content_length is None or request.content_length > hub.config.max_object_bytes:
        raise HubError(f"object body missing or larger than {hub.config.max_object_bytes}", 413)
    frame = await request.read()
    new = await run(request, hub.put_object, p, request.match_info["uid"], sha, frame)
    return web.json_response({"stored": sha, "new": new}, status=201 if new else 200)


async def commit_upload(request: web.Request) -> web.Response:
    p = await principal(request)
    hub = request.app[HUB_KEY]
    out = await run(request, hub.commit_upload, p, request.match_info["uid"])
    if not out.get("already"):
        request.app[PACK_QUEUE].put_nowait(out["channel"])
    return web.json_response(out)


async def register_node(request: web.Request) -> web.Response:
    p = await principal(request)
    doc = await body_json(request)
    return web.json_response(
        await run(request, request.app[HUB_KEY].register_node, p, doc), status=201
    )


async def enrol(request: web.Request) -> web.Response:
    doc = await body_json(request)
    return web.json_response(await run(request, request.app[HUB_KEY].enrol, doc))


async def node_report(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    if request.content_length and request.content_length > hub.config.max_json_bytes:
        raise HubError("report too large", 413)
    data = await request.read()
    out = await run(request, hub.accept_report, data, "network", request.match_info["nid"])
    return web.json_response(out)


async def fleet(request: web.Request) -> web.Response:
    await principal(request)
    region = request.query.get("region") or None
    behind = request.query.get("behind") in ("1", "true", "yes")
    return web.json_response(
        {"nodes": await run(request, request.app[HUB_KEY].fleet, region, behind)}
    )


async def audit(request: web.Request) -> web.Response:
    p = await principal(request)
    p.require()
    return web.json_response({"audit": await run(request, request.app[HUB_KEY].audit_log)})


# --------------------------------------------------------------------------- repository


def _safe_repo_path(repo: Path, tail: str) -> Path:
    if not tail.startswith(STATIC_ROOTS) or any(
        part in ("", ".", "..") or part.startswith(".") for part in tail.split("/")
    ):
        raise NotFound("not a repository path")
    return repo / tail


async def repo_file(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    tail = request.match_info["tail"]
    try:
        path = _safe_repo_path(hub.repo.path, tail)
    except NotFound:
        raise web.HTTPNotFound() from None
    if not path.is_file():
        m = PACK_RE.match(tail)
        if not m:
            raise web.HTTPNotFound()
        await _build_pack_on_demand(request, m.group(1), int(m.group(2)), int(m.group(3)))
        if not path.is_file():
            raise web.HTTPNotFound()
    cache = MUTABLE if tail.startswith("metadata/") else IMMUTABLE
    small = _small_file(request, path, cache)
    if small is not None:
        return small
    return web.FileResponse(path, headers={"Cache-Control": cache})


SMALL_FILE = 1024 * 1024


def _small_file(request: web.Request, path: Path, cache: str) -> web.Response | None:
    """Objects and metadata (tens of KiB) straight from the page cache.

    A whole-file GET of a small file skips FileResponse's sendfile machinery, which costs
    more than the copy at this size; ETag, If-None-Match and Last-Modified are the same as
    FileResponse gives, and anything with a Range goes to FileResponse.
    """
    if "Range" in request.headers or "If-Range" in request.headers:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    if st.st_size > SMALL_FILE:
        return None
    etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
    headers = {
        "Cache-Control": cache,
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Last-Modified": formatdate(st.st_mtime, usegmt=True),
    }
    inm = request.headers.get("If-None-Match")
    if inm is not None and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
        return web.Response(status=304, headers=headers)
    with open(path, "rb") as fh:
        body = fh.read()
    return web.Response(
        body=body,
        headers=headers,
        content_type="application/octet-stream"
        if not path.name.endswith(".json")
        else "application/json",
    )


async def _build_pack_on_demand(request: web.Request, channel: str, a: int, b: int) -> None:
    hub = request.app[HUB_KEY]
    locks: dict[tuple, asyncio.Lock] = request.app[PACK_LOCKS]
    lock = locks.setdefault((channel, a, b), asyncio.Lock())
    async with lock:
        path = hub.repo.pack_path(channel, a, b)
        if path.is_file():
            return
        try:
            meta = await run(request, hub.repo.channel_meta, channel)
        except CaravaneError:
            raise web.HTTPNotFound() from None
        if b not in meta.releases or (a and a not in meta.releases) or a >= b:
            raise web.HTTPNotFound()
        new_bytes = await run(request, _new_bytes, hub.repo, channel, a, b)
        if new_bytes > hub.config.on_demand_pack_bytes:
            # too long to build while a node waits: queue it, the node takes objects now
            queue = request.app.get(PACK_QUEUE)
            if queue is not None:
                queue.put_nowait(channel)
            raise web.HTTPNotFound()
        await run(request, hub.repo.build_pack, channel, a, b, path)


def _new_bytes(repo: Any, channel: str, a: int, b: int) -> int:
    """Raw bytes of release ``b`` that release ``a`` lacks (what a pack a->b carries)."""
    new = repo.manifest(channel, b).chunk_sizes()
    old = set(repo.manifest(channel, a).chunk_sizes()) if a else set()
    return sum(n for h, n in new.items() if h not in old)


# --------------------------------------------------------------------------- app


def make_app(
    config: HubConfig, hub: Hub | None = None, scheduler: bool | None = None
) -> web.Application:
    hub = hub or Hub(config)
    app = web.Application(
        middlewares=[errors_middleware],
        client_max_size=max(config.max_json_bytes, config.max_object_bytes) + 1024,
    )
    app[HUB_KEY] = hub
    app[PACK_LOCKS] = {}
    app[PACK_QUEUE] = asyncio.Queue()
    r = app.router
    r.add_get("/api/v1/health", health)
    r.add_post("/api/v1/tokens", create_token)
    r.add_get("/api/v1/channels", list_channels)
    r.add_post("/api/v1/channels", create_channel)
    r.add_get("/api/v1/channels/{cid}", get_channel)
    r.add_post("/api/v1/uploads", start_upload)
    r.add_get("/api/v1/uploads/{uid}", upload_status)
    r.add_put("/api/v1/uploads/{uid}/objects/{sha}", put_object)
    r.add_post("/api/v1/uploads/{uid}/commit", commit_upload)
    r.add_post("/api/v1/nodes", register_node)
    r.add_get("/api/v1/nodes", fleet)
    r.add_post("/api/v1/enrol", enrol)
    r.add_post("/api/v1/nodes/{nid}/reports", node_report)
    r.add_get("/api/v1/audit", audit)
    r.add_get("/repo/{tail:.+}", repo_file)
    add_routes(app)
    add_usage_routes(app)

    use_scheduler = config.scheduler if scheduler is None else scheduler

    async def start_background(app: web.Application) -> None:
        from .jobs import JobRunner

        runner = JobRunner(hub)
        app[JOBS] = runner
        app[PACK_WORKER] = asyncio.create_task(_pack_worker(app, runner))
        if use_scheduler:
            runner.start()

    async def stop_background(app: web.Application) -> None:
        app[PACK_WORKER].cancel()
        app[JOBS].stop()
        hub.db.dispose()

    app.on_startup.append(start_background)
    app.on_cleanup.append(stop_background)
    return app


async def _pack_worker(app: web.Application, runner: Any) -> None:
    """After a publish, build the packs nodes will ask for (in the background)."""
    loop = asyncio.get_running_loop()
    while True:
        channel = await app[PACK_QUEUE].get()
        try:
            await loop.run_in_executor(None, runner.build_recent_packs, channel)
        except Exception:
            log.exception("building packs for %s failed; nodes will get them on demand", channel)
