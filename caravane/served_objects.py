"""``GET /repo/objects/<aa>/<sha>`` answered from an object store (hub and centre alike).

Objects no longer exist as files (they live in segments), but the URL layout every node
agent, mirror and peer already uses stays: one zstd frame per object, immutable, with a
strong ETag (the object id itself: the content cannot change under it) and single byte
ranges so an interrupted transfer of a large object resumes.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from caravane.packs.errors import StoreError
from caravane.packs.store import ObjectStore

OBJECT_PATH = re.compile(r"^objects/([0-9a-f]{2})/([0-9a-f]{64})$")
IMMUTABLE = "public, max-age=31536000, immutable"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def object_id(tail: str) -> str | None:
    """The object id a repository path names, or None if it is not an object path."""
    m = OBJECT_PATH.match(tail)
    if m is None or m.group(2)[:2] != m.group(1):
        return None
    return m.group(2)


async def object_response(request: web.Request, store: ObjectStore, sha: str) -> web.Response:
    try:
        frame = await asyncio.to_thread(store.read_frame, sha)
    except StoreError:
        raise web.HTTPNotFound() from None
    etag = f'"{sha}"'
    headers = {"Cache-Control": IMMUTABLE, "ETag": etag, "Accept-Ranges": "bytes"}
    inm = request.headers.get("If-None-Match")
    if inm is not None and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
        return web.Response(status=304, headers=headers)
    rng = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if rng and (if_range is None or if_range.strip() == etag):
        m = _RANGE.match(rng.strip())
        if m and (m.group(1) or m.group(2)):
            size = len(frame)
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:
                start, end = max(0, size - int(m.group(2))), size - 1
            if start >= size or start > end:
                headers["Content-Range"] = f"bytes */{size}"
                return web.Response(status=416, headers=headers)
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return web.Response(
                status=206,
                body=frame[start : end + 1],
                headers=headers,
                content_type="application/octet-stream",
            )
    return web.Response(body=frame, headers=headers, content_type="application/octet-stream")
