"""What the HTTP API (hub/app.py) and the web pages (hub/web.py) share: the application's
keys and the one way to run blocking work (database, disk, signing) off the event loop.

Both layers sit on top of :mod:`hub.service`; neither imports the other's handlers, so this
small module is where their common state lives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from aiohttp import web

from .service import Hub

T = TypeVar("T")

HUB_KEY: web.AppKey[Hub] = web.AppKey("hub", Hub)
# channels whose packs to build after a publish (API and web publish both feed it; the
# worker in hub/app.py drains it)
PACK_QUEUE: web.AppKey[asyncio.Queue[str]] = web.AppKey("pack_queue", asyncio.Queue)


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in the default thread pool so the event loop keeps serving."""
    return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args, **kwargs))


def queue_packs(app: web.Application, channel: str) -> None:
    """Ask the background worker to build the usual packs of ``channel`` (if it runs)."""
    queue = app.get(PACK_QUEUE)
    if queue is not None:
        queue.put_nowait(channel)
