"""A curator's client: build a release locally, upload only what the hub lacks, commit.

The build goes into a local cache of compressed objects, so a publish cut half-way (laptop
closed, link down) resumes with the next run: the hub answers which objects it still lacks,
the client sends those, and the release becomes visible only when the hub has verified all.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from packs.chunker import DEFAULT_AVG
from packs.repository import ingest_files, scan_source
from packs.store import ObjectStore
from protocol.metadata import check_channel

from .errors import HubError

RETRIES = 6
PARALLEL = 4


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "caravane" / "publish"


class HubClient:
    def __init__(self, url: str, token: str, timeout: float = 120) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _call(
        self, s: aiohttp.ClientSession, method: str, path: str, **kw: Any
    ) -> tuple[int, Any]:
        """One API call, retried with backoff on network errors and 5xx answers."""
        delay = 0.5
        for attempt in range(RETRIES):
            try:
                async with s.request(method, self.url + path, **kw) as r:
                    try:
                        body = await r.json(content_type=None)
                    except ValueError:
                        body = {"error": (await r.text())[:200]}
                    if r.status < 500:
                        return r.status, body
                    err = f"{r.status} {body.get('error', '')}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                err = f"{type(exc).__name__}: {exc}"
            if attempt == RETRIES - 1:
                raise HubError(
                    f"hub at {self.url} unreachable or failing ({err}); run again "
                    "later: what was uploaded is kept",
                    503,
                )
            await asyncio.sleep(delay + random.uniform(0, delay))
            delay = min(delay * 2, 10)
        raise AssertionError("unreachable")

    @staticmethod
    def _check(status: int, body: Any, what: str) -> Any:
        if status >= 400:
            raise HubError(f"{what}: {body.get('error', status)}", status)
        return body

    async def publish(
        self,
        channel: str,
        folder: Path,
        *,
        notes: str = "",
        title: str | None = None,
        cache: Path | None = None,
        progress: Callable[[int], None] | None = None,
        max_objects: int | None = None,
    ) -> dict[str, Any]:
        """Publish ``folder``; ``max_objects`` stops after that many uploads (tests, resume)."""
        check_channel(channel)
        store = ObjectStore(cache or default_cache())
        loop = asyncio.get_running_loop()
        entries, *_ = await loop.run_in_executor(
            None, ingest_files, store, scan_source(folder), DEFAULT_AVG, None
        )
        async with aiohttp.ClientSession(headers=self.headers, timeout=self.timeout) as s:
            status, body = await self._call(s, "GET", f"/api/v1/channels/{channel}")
            if status == 404:
                doc = {"id": channel, "title": title or channel}
                self._check(
                    *await self._call(s, "POST", "/api/v1/channels", json=doc),
                    "creating the channel",
                )
            else:
                self._check(status, body, "reading the channel")
            doc = {"channel": channel, "notes": notes, "files": [e.to_dict() for e in entries]}
            up = self._check(
                *await self._call(s, "POST", "/api/v1/uploads", json=doc), "starting the upload"
            )
            uid, missing = up["upload"], up["missing"]
            if max_objects is not None:
                missing = missing[:max_objects]
            sent = 0
            queue: asyncio.Queue[str] = asyncio.Queue()
            for sha in missing:
                queue.put_nowait(sha)

            async def worker() -> None:
                nonlocal sent
                while not queue.empty():
                    sha = queue.get_nowait()
                    frame = store.read_frame(sha)
                    self._check(
                        *await self._call(
                            s, "PUT", f"/api/v1/uploads/{uid}/objects/{sha}", data=frame
                        ),
                        f"uploading object {sha[:16]}",
                    )
                    sent += len(frame)
                    if progress:
                        progress(len(frame))

            await asyncio.gather(*(worker() for _ in range(PARALLEL)))
            if max_objects is not None and len(up["missing"]) > max_objects:
                return {"upload": uid, "sent_objects": len(missing), "complete": False}
            result = self._check(
                *await self._call(s, "POST", f"/api/v1/uploads/{uid}/commit"), "committing"
            )
            return dict(
                result, upload=uid, sent_objects=len(missing), sent_bytes=sent, complete=True
            )
