"""The hub's HTTP service (aiohttp): the JSON API and the static, signed repository.

The repository is served as immutable files (objects, manifests, packs: cached for a year)
and two small mutable kinds (root and channel metadata: cached for a minute), with Range and
ETag handled by aiohttp's FileResponse (sendfile). Every API error is a JSON body
``{"error": ..., "status": ...}`` and never stops the service.

Vocabulary: the code says *centre* for a place the hub knows (``register_centre``,
``Centre``), *node* only for the agent software running there. The API's paths and JSON keys
still say node (``/api/v1/nodes``, ``node_id``, ``"nodes"`` in the fleet and health answers,
the enrolment document): node agents already in the field and operators' scripts read them,
and renaming them would break every one of those at once for no gain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import struct
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from functools import wraps
from pathlib import Path
from typing import Any

from aiohttp import web

from caravane.packs import compact, delta
from caravane.protocol.errors import CaravaneError
from caravane.protocol.metadata import HEX64
from caravane.served_objects import object_id, object_response

from .appstate import HUB_KEY, PACK_QUEUE, in_thread, queue_packs
from .auth import ANY_ROLE, Principal, Role, authorize
from .config import HubConfig
from .errors import HubError, NotFound
from .jobs import JobRunner, pack_lease
from .metrics import METRICS, add_metrics
from .service import Hub
from .usage_web import add_usage_routes
from .web import add_routes

log = logging.getLogger("caravane.hub")
PACK_LOCKS: web.AppKey[dict[tuple[str, int, int], asyncio.Lock]] = web.AppKey("pack_locks", dict)
JOBS: web.AppKey[JobRunner] = web.AppKey("jobs", JobRunner)
PACK_WORKER: web.AppKey[asyncio.Task[None]] = web.AppKey("pack_worker", asyncio.Task)
PACK_RE = re.compile(r"^packs/([a-z0-9][a-z0-9._-]{0,63})/(\d+)-(\d+)\.pack$")
STATIC_ROOTS = ("metadata/", "manifests/", "objects/", "packs/")
IMMUTABLE = "public, max-age=31536000, immutable"
MUTABLE = "public, max-age=60, must-revalidate"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_error(status: int, message: str, **detail: Any) -> web.Response:
    return web.json_response({**detail, "error": message, "status": status}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HubError as exc:
        return _json_error(exc.status, str(exc), **exc.detail)
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


async def read_body(request: web.Request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes.

    Each route has its own limit (JSON, one object, a batch of objects); the server-wide
    ``client_max_size`` is only the largest of them, so a chunked body without a length is
    counted here as it arrives.
    """
    if request.content_length is not None and request.content_length > limit:
        raise HubError(f"{what} larger than {limit} bytes", 413)
    if request.content_length is not None:
        # the length is known and within the limit: the pieces joined once (a batch of
        # objects is megabytes; growing a buffer and copying it out was two more copies)
        try:
            return await request.content.readexactly(request.content_length)
        except asyncio.IncompleteReadError:
            raise HubError(f"{what} ends before its Content-Length", 400) from None
    body = bytearray()
    async for piece in request.content.iter_chunked(256 * 1024):
        body += piece
        if len(body) > limit:
            raise HubError(f"{what} larger than {limit} bytes", 413)
    return bytes(body)


async def body_json(request: web.Request) -> dict[str, Any]:
    hub = request.app[HUB_KEY]
    data = await read_body(request, hub.config.max_json_bytes, "JSON body")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HubError("body is not valid JSON", 400) from None
    if not isinstance(doc, dict):
        raise HubError("body must be a JSON object", 400)
    return doc


SignedInHandler = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]


def api(*roles: Role) -> Callable[[SignedInHandler], Handler]:
    """An API route for token holders: authenticate, then :func:`hub.auth.authorize`.

    The roles are always named (``api(*ANY_ROLE)`` for any token holder); an admin passes
    everywhere. The check runs before the body is read, so a refused caller costs nothing.
    """
    if not roles:
        raise ValueError("api() needs the roles that may call the route")

    def wrap(fn: SignedInHandler) -> Handler:
        @wraps(fn)
        async def handler(request: web.Request) -> web.StreamResponse:
            hub = request.app[HUB_KEY]
            p = await in_thread(hub.authenticate, request.headers.get("Authorization"))
            authorize(p.role, roles)
            return await fn(request, p)

        return handler

    return wrap


# --------------------------------------------------------------------------- API


async def health(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    counts = await in_thread(hub.counts)
    return web.json_response({"ok": True, **counts})


@api("admin")
async def create_token(request: web.Request, p: Principal) -> web.Response:
    doc = await body_json(request)
    token = await in_thread(
        request.app[HUB_KEY].create_token,
        str(doc.get("name", "")),
        str(doc.get("role", "")),
        p.name,
    )
    return web.json_response({"token": token}, status=201)


@api(*ANY_ROLE)
async def list_channels(request: web.Request, p: Principal) -> web.Response:
    return web.json_response({"channels": await in_thread(request.app[HUB_KEY].channels)})


@api("curator")
async def create_channel(request: web.Request, p: Principal) -> web.Response:
    doc = await body_json(request)
    out = await in_thread(request.app[HUB_KEY].create_channel, p, doc)
    return web.json_response(out, status=201)


@api(*ANY_ROLE)
async def get_channel(request: web.Request, p: Principal) -> web.Response:
    return web.json_response(
        await in_thread(request.app[HUB_KEY].channel, request.match_info["cid"])
    )


@api("curator")
async def start_upload(request: web.Request, p: Principal) -> web.Response:
    doc = await body_json(request)
    return web.json_response(await in_thread(request.app[HUB_KEY].start_upload, p, doc), status=201)


@api("curator")
async def upload_status(request: web.Request, p: Principal) -> web.Response:
    return web.json_response(
        await in_thread(request.app[HUB_KEY].upload_status, p, request.match_info["uid"])
    )


@api("curator")
async def put_object(request: web.Request, p: Principal) -> web.Response:
    hub = request.app[HUB_KEY]
    sha = request.match_info["sha"]
    if not HEX64.match(sha):
        raise HubError("object id must be a SHA-256 hex digest", 400)
    if request.content_length is None:
        raise HubError("object body without a Content-Length", 411)
    frame = await read_body(request, hub.config.max_object_bytes, "object body")
    new = await in_thread(hub.put_object, p, request.match_info["uid"], sha, frame)
    return web.json_response({"stored": sha, "new": new}, status=201 if new else 200)


BATCH_RECORD = struct.Struct(">32sI")  # raw SHA-256, then the frame's length
MAX_BATCH_OBJECTS = 4096


def parse_batch(body: bytes, max_object: int) -> list[tuple[str, memoryview]]:
    """Split a batch body: records of (32-byte SHA-256, 4-byte big-endian length, frame).

    A binary layout rather than JSON or multipart: no encoding of the frames, and the body
    is cut with a memory view, so the cost per object is a few slices (the frames are views
    of the body, not copies: verified and appended to a segment from there).
    """
    view = memoryview(body)
    out: list[tuple[str, memoryview]] = []
    pos = 0
    while pos < len(view):
        if pos + BATCH_RECORD.size > len(view):
            raise HubError("batch body ends inside a record header", 400)
        raw, n = BATCH_RECORD.unpack_from(view, pos)
        pos += BATCH_RECORD.size
        if n > max_object:
            raise HubError(f"object larger than {max_object} bytes in a batch", 413)
        if pos + n > len(view):
            raise HubError("batch body ends inside an object", 400)
        out.append((raw.hex(), view[pos : pos + n]))
        pos += n
        if len(out) > MAX_BATCH_OBJECTS:
            raise HubError(f"more than {MAX_BATCH_OBJECTS} objects in one batch", 413)
    return out


@api("curator")
async def put_objects(request: web.Request, p: Principal) -> web.Response:
    """Many objects of an upload in one request (what ``caravane publish`` sends).

    One round trip, one token check and two database lookups per batch instead of per
    object: the per-object cost of publishing through the API is then the verification
    and the write, as for a local publish.
    """
    hub = request.app[HUB_KEY]
    body = await read_body(request, hub.config.max_batch_bytes, "batch body")
    records = parse_batch(body, hub.config.max_object_bytes)
    new = await in_thread(hub.put_objects, p, request.match_info["uid"], records)
    return web.json_response({"stored": len(records), "new": new})


@api("curator")
async def declare_chunks(request: web.Request, p: Principal) -> web.Response:
    doc = await body_json(request)
    hub = request.app[HUB_KEY]
    return web.json_response(await in_thread(hub.declare_chunks, p, request.match_info["uid"], doc))


async def _file_list(
    request: web.Request,
    p: Principal,
    take: Callable[[Principal, str, dict[str, Any]], dict[str, Any]],
) -> web.Response:
    """An upload's file list (whole, or as a tree's root), and its packs if it committed."""
    doc = await body_json(request)
    out = await in_thread(take, p, request.match_info["uid"], doc)
    if "committed" in out:
        queue_packs(request.app, out["committed"]["channel"])
    return web.json_response(out)


@api("curator")
async def set_files(request: web.Request, p: Principal) -> web.Response:
    return await _file_list(request, p, request.app[HUB_KEY].set_files)


@api("curator")
async def set_tree(request: web.Request, p: Principal) -> web.Response:
    return await _file_list(request, p, request.app[HUB_KEY].set_tree)


@api("curator")
async def commit_upload(request: web.Request, p: Principal) -> web.Response:
    hub = request.app[HUB_KEY]
    out = await in_thread(hub.commit_upload, p, request.match_info["uid"])
    if not out.get("already"):
        queue_packs(request.app, out["channel"])
    return web.json_response(out)


@api("admin")
async def register_centre(request: web.Request, p: Principal) -> web.Response:
    doc = await body_json(request)
    return web.json_response(
        await in_thread(request.app[HUB_KEY].register_centre, p, doc), status=201
    )


async def enrol(request: web.Request) -> web.Response:
    """No token: the one-time enrolment code in the body is the credential."""
    doc = await body_json(request)
    return web.json_response(await in_thread(request.app[HUB_KEY].enrol, doc))


async def centre_report(request: web.Request) -> web.Response:
    """No token: the report's signature by the centre's enrolled key is the credential."""
    hub = request.app[HUB_KEY]
    data = await read_body(request, hub.config.max_json_bytes, "report")
    # ?via=<centre>: a peer centre relays this report (the signature still is the centre's)
    via = request.query.get("via") or None
    out = await in_thread(hub.accept_report, data, "network", request.match_info["nid"], via)
    return web.json_response(out)


@api(*ANY_ROLE)
async def fleet(request: web.Request, p: Principal) -> web.Response:
    region = request.query.get("region") or None
    behind = request.query.get("behind") in ("1", "true", "yes")
    return web.json_response({"nodes": await in_thread(request.app[HUB_KEY].fleet, region, behind)})


@api("admin")
async def audit(request: web.Request, p: Principal) -> web.Response:
    return web.json_response({"audit": await in_thread(request.app[HUB_KEY].audit_log)})


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
    sha = object_id(tail)
    if sha is not None:  # objects live in segments; the URL layout is unchanged
        return await object_response(request, hub.repo.store, sha)
    if not path.is_file():
        m = PACK_RE.match(tail)
        if not m:
            raise web.HTTPNotFound()
        await _build_pack_on_demand(request, m.group(1), int(m.group(2)), int(m.group(3)))
        if not path.is_file():
            raise web.HTTPNotFound()
    cache = MUTABLE if tail.startswith("metadata/") else IMMUTABLE
    if CHANNEL_RE.match(tail):
        delta = _channel_delta(request, hub.repo.path, tail, path)
        if delta is not None:
            return delta
    small = _small_file(request, path, cache)
    if small is not None:
        return small
    return web.FileResponse(path, headers={"Cache-Control": cache})


SMALL_FILE = 1024 * 1024
CHANNEL_RE = re.compile(r"^metadata/channels/([a-z0-9][a-z0-9._-]{0,63})\.json$")


def _channel_delta(
    request: web.Request, repo: Path, tail: str, path: Path
) -> web.Response | None:
    """Channel metadata as a delta from the copy a centre names (packs/compact.py).

    A centre reads its channels' metadata at every pass, about 700 bytes each, where a
    delta from its own copy is some 20 bytes unchanged and 200 with a new release. Only a
    whole GET naming a copy this hub signed and still keeps gets one; the answer says so
    in its own header, so a reader that asked nothing, or a cache between, gets the file.
    """
    base_sha = request.headers.get(compact.DELTA_BASE_HEADER, "").strip().lower()
    if not base_sha or "Range" in request.headers:
        return None
    m = CHANNEL_RE.match(tail)
    assert m is not None
    base = compact.recall(repo, m.group(1), base_sha)
    if base is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return web.Response(
        body=compact.metadata_delta(base, data),
        headers={
            "Cache-Control": "no-store",
            "Vary": compact.DELTA_BASE_HEADER,
            compact.DELTA_HEADER: base_sha,
        },
        content_type="application/zstd",
    )


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


#: how long a request waits for a pack another hub process is building before it answers
#: 404 (the node then takes the objects one by one)
PACK_WAIT_SECONDS = 60.0


async def _build_pack_on_demand(request: web.Request, channel: str, a: int, b: int) -> None:
    """Build a small pack a node asked for, once across every hub process.

    Requests in this process for the same pack queue on one asyncio lock; across processes
    the pack's database lease decides who builds, and the others wait for its file.
    """
    hub = request.app[HUB_KEY]
    locks = request.app[PACK_LOCKS]
    lock = locks.setdefault((channel, a, b), asyncio.Lock())
    async with lock:
        path = hub.repo.pack_path(channel, a, b)
        if path.is_file():
            return
        try:
            meta = await in_thread(hub.repo.channel_meta, channel)
        except CaravaneError:
            raise web.HTTPNotFound() from None
        if b not in meta.releases or (a and a not in meta.releases) or a >= b:
            raise web.HTTPNotFound()
        new_bytes = await in_thread(hub.pack_new_bytes, channel, a, b)
        if new_bytes > hub.config.on_demand_pack_bytes:
            # too long to build while a node waits: queue it, the node takes objects now
            queue_packs(request.app, channel)
            raise web.HTTPNotFound()
        runner = request.app[JOBS]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PACK_WAIT_SECONDS
        waited = False
        while await in_thread(runner.build_pack_once, channel, a, b, delta.LEVEL) == "busy":
            if not waited:
                holder = await in_thread(hub.lease_holder, pack_lease(channel, a, b))
                log.info("pack %s %d-%d is being built by %s; waiting", channel, a, b, holder)
                waited = True
            if loop.time() > deadline:
                raise web.HTTPNotFound()
            await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- app


def server_options(config: HubConfig) -> dict[str, Any]:
    """Options for aiohttp's server (``web.run_app`` / ``AppRunner``) from hub.toml.

    aiohttp has no separate header-read timeout; its keep-alive timer runs from the moment a
    connection opens and closes any connection still waiting for a whole request head, so
    it is the header deadline (and the idle keep-alive time between requests).
    """
    return {"keepalive_timeout": float(config.header_timeout_seconds)}


#: the least a request body must bring per ``body_timeout_seconds`` window
MIN_BODY_BYTES = 1024


def body_deadline(seconds: float) -> Any:
    """A middleware that drops a client whose request body trickles in too slowly.

    A watchdog looks at the body's byte count every ``seconds``; a body not finished that
    brought less than MIN_BODY_BYTES in the window has its connection closed, which ends
    the handler's read with an error (one-byte-per-second uploads hold no worker).
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.body_exists or request.content.at_eof():
            return await handler(request)

        async def watch() -> None:
            seen = request.content.total_bytes
            while not request.content.at_eof():
                await asyncio.sleep(seconds)
                now = request.content.total_bytes
                if not request.content.at_eof() and now - seen < MIN_BODY_BYTES:
                    log.info("dropped %s: request body too slow", request.remote)
                    if request.transport is not None:
                        request.transport.close()
                    return
                seen = now

        watcher = asyncio.create_task(watch())
        try:
            return await handler(request)
        finally:
            watcher.cancel()

    return middleware


def make_app(
    config: HubConfig, hub: Hub | None = None, scheduler: bool | None = None
) -> web.Application:
    hub = hub or Hub(config)
    app = web.Application(
        middlewares=[errors_middleware, body_deadline(config.body_timeout_seconds)],
        client_max_size=max(config.max_json_bytes, config.max_object_bytes, config.max_batch_bytes)
        + 1024,
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
    r.add_post("/api/v1/uploads/{uid}/objects", put_objects)
    r.add_post("/api/v1/uploads/{uid}/chunks", declare_chunks)
    r.add_put("/api/v1/uploads/{uid}/files", set_files)
    r.add_put("/api/v1/uploads/{uid}/tree", set_tree)
    r.add_post("/api/v1/uploads/{uid}/commit", commit_upload)
    r.add_post("/api/v1/nodes", register_centre)
    r.add_get("/api/v1/nodes", fleet)
    r.add_post("/api/v1/enrol", enrol)
    r.add_post("/api/v1/nodes/{nid}/reports", centre_report)
    r.add_get("/api/v1/audit", audit)
    r.add_get("/repo/{tail:.+}", repo_file)
    add_routes(app)
    add_usage_routes(app)
    hub.on_publish = add_metrics(app, hub).published

    use_scheduler = config.scheduler if scheduler is None else scheduler

    async def start_background(app: web.Application) -> None:
        runner = JobRunner(hub)
        runner.on_run = app[METRICS].job_ran
        app[JOBS] = runner
        app[PACK_WORKER] = asyncio.create_task(_pack_worker(app, runner))
        if use_scheduler:
            runner.start()

    async def stop_background(app: web.Application) -> None:
        app[PACK_WORKER].cancel()
        app[JOBS].stop()
        hub.close()

    app.on_startup.append(start_background)
    app.on_cleanup.append(stop_background)
    return app


async def _pack_worker(app: web.Application, runner: JobRunner) -> None:
    """After a publish, sketch the new release's files for the similarity index (left out
    of the curator's wait: :meth:`Hub.sketch_pending`), then build the packs nodes will ask
    for (in the background)."""
    loop = asyncio.get_running_loop()
    while True:
        channel = await app[PACK_QUEUE].get()
        try:
            await loop.run_in_executor(None, app[HUB_KEY].sketch_pending, channel)
        except Exception:  # a cache: the pack build sketches what it lacks itself
            log.exception("sketching the release of %s failed; pack builds will", channel)
        try:
            await loop.run_in_executor(None, runner.build_recent_packs, channel)
        except Exception:
            log.exception("building packs for %s failed; nodes will get them on demand", channel)
