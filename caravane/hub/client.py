"""A curator's client: build a release locally, upload only what the hub lacks, commit.

The build goes into a local cache of compressed objects, so a publish cut half-way (laptop
closed, link down) resumes with the next run: the hub answers which objects it still lacks,
the client sends those, and the release becomes visible only when the hub has verified all.

HTTP goes through httpx, the library the centre's agent uses too: redirects followed within
a bound, proxies from the environment (``HTTPS_PROXY``, ``NO_PROXY``), separate connect and
read timeouts, and answers read up to a bound. Whatever goes wrong on the way (refused
connection, unknown host, TLS, timeout, a cut connection, a proxy) comes out as one
:class:`HubClientError` whose message names the hub, says what happened in plain words and
what to do next; a library exception never reaches the person at the keyboard.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import hashlib
import os
import random
import socket
import ssl
import struct
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from itertools import chain
from pathlib import Path
from typing import Any, Final

import httpx

from caravane.packs.chunker import DEFAULT_AVG
from caravane.packs.files_cache import FilesCache
from caravane.packs.idset import IdSet
from caravane.packs.ingest import Ingest, iter_source, iter_source_cached
from caravane.packs.ingest import ingest_tree as read_tree
from caravane.packs.repository import ingest_files, scan_source
from caravane.packs.store import DEFAULT_LEVEL, ObjectStore, compress_many
from caravane.protocol.metadata import FileEntry, check_channel
from caravane.protocol.tree import PieceRef, root_ref

from .errors import HubError

RETRIES: Final = 6
PARALLEL: Final = 4
DECLARE_BATCH: Final = 2000  # chunks per declaration request
#: ... and at least this many unless the folder is done or the outbox full: each declaration
#: and each batch of objects costs the hub a token check and a few transactions, and the
#: objects of one declaration fill ~4 MB batches (64 made 41 declarations and 52 batches of
#: 133 MB, 512 make 6 and 23: a third less hub CPU in those requests)
DECLARE_MIN: Final = 512
MAX_REDIRECTS: Final = 5
MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024  # the biggest JSON answer: a huge upload's "missing"
RESUME_HINT: Final = "run the same command again later: what was uploaded is kept"


class HubClientError(HubError):
    """Publishing could not talk to the hub (or the hub refused): one message, no traceback.

    ``status`` is the hub's HTTP status when it answered, else 503 (it could not be reached).
    """

    def __init__(self, message: str, status: int = 503, retry: bool = False) -> None:
        super().__init__(message, status)
        self.retry = retry


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "caravane" / "publish"


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost OS / TLS error behind a library exception (what actually happened)."""
    seen: set[int] = set()
    cur: BaseException = exc
    while id(cur) not in seen:
        seen.add(id(cur))
        nxt = cur.__cause__ or cur.__context__
        if nxt is None:
            break
        cur = nxt
        if isinstance(cur, ssl.SSLError | socket.gaierror | ConnectionRefusedError):
            return cur
    return cur


def proxy_for(url: str) -> str | None:
    """The proxy the environment sets for ``url`` (``HTTPS_PROXY`` ... minus ``NO_PROXY``)."""
    parsed = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parsed.scheme) or proxies.get("all")
    if not proxy or not parsed.hostname or urllib.request.proxy_bypass(parsed.hostname):
        return None
    return proxy


def explain(
    url: str, exc: httpx.HTTPError | TimeoutError, proxy: str | None = None
) -> HubClientError:
    """Turn a transport failure into words an operator can act on (and say if it is worth
    retrying: a refused connection may be a hub restarting, a bad certificate is not)."""
    cause = _root_cause(exc)
    where = f"cannot reach the hub at {url}"
    if proxy and isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.ProxyError):
        return HubClientError(
            f"{where} through the proxy {proxy} (from the environment): {cause}; check "
            "HTTPS_PROXY / HTTP_PROXY, or add the hub's host to NO_PROXY",
            retry=True,
        )
    if isinstance(exc, httpx.TooManyRedirects):
        return HubClientError(
            f"{where}: more than {MAX_REDIRECTS} redirects; check the --hub URL "
            "(it should be the hub's own address)",
        )
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return HubClientError(
            f"{where}: {url!r} is not an http:// or https:// address; check the --hub URL"
        )
    if isinstance(cause, ssl.SSLCertVerificationError):
        return HubClientError(
            f"{where}: its TLS certificate is not valid ({cause.verify_message}); check the "
            "hub's certificate, or the URL's host name",
        )
    if isinstance(cause, ssl.SSLError):
        return HubClientError(
            f"{where}: the TLS handshake failed ({cause.reason or cause}); is the URL's scheme "
            "right (http:// or https://)?",
        )
    if isinstance(cause, socket.gaierror):
        host = httpx.URL(url).host
        return HubClientError(
            f"{where}: the host name {host!r} does not resolve (no DNS answer); check the "
            "--hub URL, or the network link",
            retry=True,
        )
    if isinstance(cause, ConnectionRefusedError) or (
        isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
    ):
        return HubClientError(
            f"{where}: connection refused; is the hub running, and are the URL's host and "
            "port right?",
            retry=True,
        )
    if isinstance(exc, httpx.ConnectTimeout):
        return HubClientError(
            f"{where}: no answer to the connection within the timeout; the link may be down "
            f"or very slow: {RESUME_HINT}",
            retry=True,
        )
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return HubClientError(
            f"{where}: the hub stopped answering (timed out); {RESUME_HINT}", retry=True
        )
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return HubClientError(
            f"{where}: the connection was cut in the middle of a request; {RESUME_HINT}",
            retry=True,
        )
    if isinstance(exc, httpx.ConnectError):
        return HubClientError(
            f"{where}: cannot connect ({cause}); check the network link and the --hub URL",
            retry=True,
        )
    return HubClientError(f"{where}: {type(exc).__name__}: {exc}; {RESUME_HINT}", retry=True)


BATCH_RECORD: Final = struct.Struct(">32sI")  # as hub.app.parse_batch reads it
BATCH_BYTES: Final = 4 * 1024 * 1024
BATCH_OBJECTS: Final = 1024
#: compressed bytes a streaming publish holds in memory before the folder's reading waits
OUTBOX_BYTES: Final = 32 * 1024 * 1024
#: ... and chunks handed over for declaration and not yet answered: where the hub declares
#: more slowly than the folder is read (small files), a backlog of tens of thousands of
#: chunks held some 4 KB each besides their frames (223 MiB at 300,000 pages; 175 MiB
#: with this bound, at the same speed)
OUTBOX_CHUNKS: Final = 4 * DECLARE_BATCH
#: rounds of "the commit names objects it lacks, the client sends them" before giving up
RESEND_ROUNDS: Final = 8
#: chunks of unchanged files asked about in one request (the hub takes up to 100,000)
ASK_BATCH: Final = 10_000


def batches(sized: list[tuple[str, int]]) -> list[list[str]]:
    """Objects (sha, frame size) grouped into request bodies of about BATCH_BYTES.

    Batches keep the round trips per publish small, and a cut upload loses at most the
    batches in flight: the objects of every answered batch are on the hub already.
    """
    out: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for sha, n in sized:
        if cur and (size + n > BATCH_BYTES or len(cur) >= BATCH_OBJECTS):
            out.append(cur)
            cur, size = [], 0
        cur.append(sha)
        size += n
    if cur:
        out.append(cur)
    return out


class UploadCancelled(HubClientError):
    """The publish stopped (the hub refused, the link is gone): the folder's reading ends."""


class Outbox:
    """Chunks compressed once, held in memory until the hub has answered for them.

    A streaming publish used to write every object into the client's cache and read it back
    to send it: a second write, a second read and an index transaction per object, on the
    same cores that the hub's verification needs. The outbox keeps each new chunk's zstd
    frame only until the hub says it lacks it (then it is sent and dropped) or holds it
    (dropped). The hub still decodes and hashes every frame it receives, so nothing here is
    trusted.

    Reading waits while the frames of chunks already handed over for declaration, and
    those taken for a request not yet answered, pass ``limit`` bytes, or the handed-over
    chunks number more than ``chunks`` (:meth:`announce`, :meth:`wait_room`): memory stays
    bounded however slow the link or the hub's answers, at ``limit`` plus the few chunks the
    ingest pipeline compresses ahead. Only those chunks count, because only they can leave
    while reading waits. Frames in flight were once left out: the requests' bodies held up
    to another 16 MiB beside a full outbox (memray, the 133 MB mixed folder).

    As :class:`~caravane.packs.ingest.ChunkSink` it is what ``ingest_files`` writes into.
    ``wanted`` keeps only those chunks (a second pass for objects the hub lacks after all).
    """

    def __init__(
        self,
        level: int = DEFAULT_LEVEL,
        limit: int = OUTBOX_BYTES,
        wanted: set[str] | None = None,
        chunks: int = OUTBOX_CHUNKS,
    ) -> None:
        self.level = level
        self.limit = limit
        self.chunks = chunks
        self.wanted = wanted
        self.frames: dict[str, bytes] = {}
        self.announced: set[str] = set()  # handed over for declaration, frame still here
        self.queued = 0  # bytes of those frames
        self.flying = 0  # bytes of frames taken for a request that is not answered yet
        #: sent or dropped: a later copy of the chunk is not kept (8 bytes an id: a million
        #: chunks in 8 MB; an id taken for another, one chance in 2^64, is named missing by
        #: the hub at the commit and sent then)
        self.gone = IdSet()
        self.closed = False
        self._cond = threading.Condition()

    def _known(self, sha: str) -> bool:
        return (
            sha in self.frames
            or sha in self.gone
            or (self.wanted is not None and sha not in self.wanted)
        )

    def put_raw(self, data: bytes | memoryview, sha: str | None = None) -> tuple[str, int]:
        """Compress a chunk and hold its frame (unless held, sent or dropped already).

        Called in ``ingest_files``' worker threads; a chunk's frame is held before the
        chunk is declared, because the declaration follows its ``put_raw``.
        """
        return self.put_raw_many([(sha, bytes(data))])[0]

    def put_raw_many(self, items: list[tuple[str | None, bytes]]) -> list[tuple[str, int]]:
        """:meth:`put_raw` for a batch of chunks (what ``ingest_files`` hands its workers),
        compressed in one call as the local store does (:func:`compress_many`): one call a
        chunk handed the interpreter lock to the reading thread and back each time, and
        made the client compress small files at a quarter of a local publish's speed."""
        shas = [sha or hashlib.sha256(data).hexdigest() for sha, data in items]
        todo: dict[str, bytes] = {}
        with self._cond:
            for sha, (_, data) in zip(shas, items, strict=True):
                if not self._known(sha):
                    todo.setdefault(sha, data)
        frames = dict(zip(todo, compress_many(list(todo.values()), self.level), strict=True))
        out: list[tuple[str, int]] = []
        with self._cond:
            if self.closed:
                raise UploadCancelled("the upload stopped")
            for sha in shas:
                # a repeat in the batch, or a chunk another thread held meanwhile, is
                # known: answered 0, its frame not kept twice
                frame = frames.pop(sha, None)
                if frame is None or self._known(sha):
                    out.append((sha, 0))
                    continue
                self.frames[sha] = frame
                out.append((sha, len(frame)))
        return out

    def freshen_many(
        self, shas: Iterable[str], at: float | None = None, expected: bool = False
    ) -> set[str]:
        """Nothing is kept here: the hub is asked instead (``ingest_files``' ``held``)."""
        return set()

    def announce(self, sha: str) -> bool:
        """The chunk is handed over for declaration; True if the outbox is now full."""
        with self._cond:
            frame = self.frames.get(sha)
            if frame is not None and sha not in self.announced:
                self.announced.add(sha)
                self.queued += len(frame)
            return self._full()

    def _full(self) -> bool:
        return self.queued + self.flying > self.limit or len(self.announced) > self.chunks

    def _low(self) -> bool:
        return (
            self.queued + self.flying <= self.limit // 2 and len(self.announced) <= self.chunks // 2
        )

    def wait_room(self) -> None:
        """Block the folder's reading once the outbox is full, until it is half empty (in
        the ingest thread). Waiting only until it was no longer full made every next chunk
        fill it again: a declaration of one chunk each, 8x a local publish on PostgreSQL."""
        with self._cond:
            while not self._low() and not self.closed:
                self._cond.wait()
            if self.closed:
                raise UploadCancelled("the upload stopped")

    def size(self, sha: str) -> int:
        with self._cond:
            frame = self.frames.get(sha)
            return len(frame) if frame is not None else 0

    def _forget(self, sha: str) -> bytes | None:
        self.gone.add(sha)
        frame = self.frames.pop(sha, None)
        if frame is not None and sha in self.announced:
            self.announced.discard(sha)
            self.queued -= len(frame)
        return frame

    def take(self, shas: list[str]) -> list[tuple[str, bytes]]:
        """The frames of ``shas``, no longer held (they are about to be sent).

        A chunk of an unchanged file, which the hub said it held when asked, has no frame
        here: if the hub lacks it after all, the file list's answer names it again and a
        second pass reads it (:meth:`HubClient._send_again`).
        """
        out: list[tuple[str, bytes]] = []
        with self._cond:
            for sha in shas:
                frame = self._forget(sha)
                if frame is not None:
                    out.append((sha, frame))
                    self.flying += len(frame)
            self._cond.notify_all()
        return out

    def landed(self, frames: int) -> None:
        """A request taken with :meth:`take` is over (answered or failed): its ``frames``
        bytes are no longer held."""
        with self._cond:
            self.flying = max(0, self.flying - frames)  # 0 once closed
            self._cond.notify_all()

    def drop(self, shas: Iterable[str]) -> None:
        """Forget frames the hub already holds."""
        with self._cond:
            for sha in shas:
                self._forget(sha)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self.frames.clear()
            self.announced.clear()
            self.queued = self.flying = 0
            self._cond.notify_all()


class SentPieces:
    """The manifest pieces of the last tree this cache published to one channel of one hub.

    A republish makes every piece of the file list again (about one per 30 files), and
    most are the ones the hub already holds: declaring them all cost a one-file change at
    a million files some 30,000 declarations. Those named here are neither declared nor
    sent. Nothing is trusted by it: the hub reads every piece of the tree when it commits
    and names any it lacks (collected, if another release replaced this one), which the
    client then makes and sends again (:meth:`HubClient._send_again`). 32 bytes a piece.
    """

    def __init__(self, cache: Path, hub: str, channel: str) -> None:
        key = hashlib.sha256(f"{hub}\0{channel}".encode()).hexdigest()[:32]
        self.path = cache / "pieces" / key
        self.known: set[str] = set()
        self.made: list[str] = []
        self.root: str | None = None  # the root of the tree last published, first id

    def load(self, latest_root: object) -> None:
        """Take the pieces recorded if they are the tree of the hub's latest release
        (``latest_root``, from the upload's start): any other tree on the hub, and they may
        have been collected, so all are declared, and the hub answers which it lacks."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return
        if len(data) % 32 or len(data) < 64:  # a damaged file: forgotten
            return
        if data[:32].hex() == latest_root:
            self.known = {data[i : i + 32].hex() for i in range(32, len(data), 32)}

    def save(self) -> None:
        """The tree just committed is the one to skip next time (written atomically)."""
        if self.root is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(bytes.fromhex(h) for h in [self.root, *self.made]))
        os.replace(tmp, self.path)


def ingest_tree(
    sink: Outbox,
    folder: Path,
    cache: FilesCache | None = None,
    on_object: Callable[[str, int], object] | None = None,
    pieces: SentPieces | None = None,
) -> tuple[PieceRef | None, int, int]:
    """Read ``folder`` into ``sink`` as a local publish does, the file list included
    (:func:`caravane.packs.ingest.ingest_tree`); the hub gets the pieces as objects and the
    root in one small request (``PUT .../tree``). ``pieces``: those of the last tree
    published from this cache, not sent again."""

    def keep(sha: str) -> bool:
        if pieces is None:
            return True
        pieces.made.append(sha)
        return sha not in pieces.known

    # with a cache, runs of unchanged files come whole from it (a stat each, no lookup per
    # file), as in a local republish
    files = (
        iter_source_cached(folder, cache, DEFAULT_AVG) if cache is not None else iter_source(folder)
    )
    made = read_tree(sink, files, cache, on_object, keep_piece=keep)
    if pieces is not None and made[0] is not None:
        pieces.root = made[0].sha256
    return made


def root_doc(root: PieceRef | None, files: int, size: int) -> dict[str, Any]:
    """The body of ``PUT .../tree``: what the signed document will say of the tree."""
    return {"tree": root_ref(root), "files": files, "size": size}


#: put in the declaration queue when reading waits for room: declare what is pending now
FLUSH: Final = ("", -1)


class HubClient:
    """Talks to one hub with one token; :meth:`publish` is the whole curator's job."""

    def __init__(
        self,
        url: str,
        token: str,
        timeout: float = 120,
        *,
        connect_timeout: float = 15,
        retries: int = RETRIES,
        backoff: float = 0.5,
        outbox_bytes: int = OUTBOX_BYTES,
        outbox_chunks: int = OUTBOX_CHUNKS,
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.retries = max(1, retries)
        self.backoff = backoff
        self.proxy = proxy_for(self.url)
        self.outbox_bytes = outbox_bytes  # compressed bytes held before reading waits
        self.outbox_chunks = outbox_chunks  # ... and chunks waiting for the hub's answer
        # Until the hub has answered once, a refused connection or an unknown host is a
        # wrong URL or a hub that is not running: say so at once instead of retrying.
        self.reached = False

    def _session(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            headers=self.headers,
            timeout=self.timeout,
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            limits=httpx.Limits(max_connections=PARALLEL, max_keepalive_connections=PARALLEL),
            trust_env=True,
        )

    async def _once(
        self, s: httpx.AsyncClient, method: str, path: str, **kw: Any
    ) -> tuple[int, dict[str, Any]]:
        """One request; the answer read up to MAX_ANSWER_BYTES and decoded as JSON."""
        async with s.stream(method, self.url + path, **kw) as r:
            body = bytearray()
            async for piece in r.aiter_bytes():
                body += piece
                if len(body) > MAX_ANSWER_BYTES:
                    raise HubClientError(
                        f"the hub at {self.url} sent an answer larger than "
                        f"{MAX_ANSWER_BYTES} bytes to {method} {path}; is --hub a Caravane hub?",
                        502,
                    )
            try:
                doc = httpx.Response(r.status_code, content=bytes(body)).json()
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                text = bytes(body[:200]).decode("utf-8", "replace")
                doc = {"error": f"not a JSON answer ({r.status_code}): {text!r}"}
            return r.status_code, doc

    async def _call(
        self, s: httpx.AsyncClient, method: str, path: str, **kw: Any
    ) -> tuple[int, dict[str, Any]]:
        """One API call, retried with backoff on transport failures and 5xx answers."""
        delay = self.backoff
        for attempt in range(self.retries):
            try:
                status, body = await self._once(s, method, path, **kw)
                self.reached = True
                if status < 500:
                    return status, body
                err = HubClientError(
                    f"the hub at {self.url} is failing ({status}: {body.get('error', '')}); "
                    f"{RESUME_HINT}",
                    503,
                    retry=True,
                )
            except (httpx.HTTPError, TimeoutError) as exc:
                err = explain(self.url, exc, self.proxy)
                if not self.reached and isinstance(exc, httpx.ConnectError):
                    err.retry = False
            if not err.retry or attempt == self.retries - 1:
                raise err
            await asyncio.sleep(delay + random.uniform(0, delay))
            delay = min(delay * 2, 10)
        raise AssertionError("unreachable")

    @staticmethod
    def _check(status: int, body: dict[str, Any], what: str) -> dict[str, Any]:
        if status >= 400:
            raise HubClientError(f"{what}: {body.get('error', status)}", status)
        return body

    async def publish(
        self,
        channel: str,
        folder: Path,
        *,
        notes: str = "",
        title: str | None = None,
        cache: Path | None = None,
        progress: Callable[[int], object] | None = None,
        max_objects: int | None = None,
    ) -> dict[str, Any]:
        """Publish ``folder``; ``max_objects`` stops after that many uploads (tests, resume).

        Objects are declared and uploaded while the folder is still being chunked (a
        *streaming* upload), then the file list is sent and the release committed; a hub
        from before streaming uploads gets the file list first, as it expects.
        """
        check_channel(channel)
        store = ObjectStore(cache or default_cache())
        files_cache = FilesCache(store.root / "files.sqlite")  # unchanged files are not re-read
        try:
            async with self._session() as s:
                await self._ensure_channel(s, channel, title)
                if max_objects is None:
                    pieces = SentPieces(store.root, self.url, channel)
                    done = await self._publish_streaming(
                        s, channel, folder, notes, files_cache, progress, pieces
                    )
                    if done is not None:
                        return done
                return await self._publish_listed(
                    s, channel, folder, notes, store, files_cache, progress, max_objects
                )
        finally:
            files_cache.close()

    async def _ensure_channel(self, s: httpx.AsyncClient, channel: str, title: str | None) -> None:
        status, body = await self._call(s, "GET", f"/api/v1/channels/{channel}")
        if status == 404:
            doc: dict[str, Any] = {"id": channel, "title": title or channel}
            self._check(
                *await self._call(s, "POST", "/api/v1/channels", json=doc), "creating the channel"
            )
        else:
            self._check(status, body, "reading the channel")

    async def _send(
        self,
        s: httpx.AsyncClient,
        uid: str,
        items: list[tuple[str, bytes]],
        progress: Callable[[int], object] | None,
    ) -> int:
        """One batch of objects (sha, zstd frame) in one request; returns the bytes sent.

        ``items`` is emptied once the body holds the frames (the callers keep no other
        reference): a batch in flight is held once, where each record copied before the
        join and the frames kept beside the body held it up to three times (memray, the
        133 MB mixed folder: a peak heap of 99 MB became 88-97 MB)."""
        if not items:
            return 0
        count, first = len(items), items[0][0]
        body = b"".join(
            chain.from_iterable(
                (BATCH_RECORD.pack(bytes.fromhex(sha), len(frame)), frame) for sha, frame in items
            )
        )
        items.clear()
        self._check(
            *await self._call(
                s,
                "POST",
                f"/api/v1/uploads/{uid}/objects",
                content=body,
                headers={"Content-Type": "application/octet-stream"},
            ),
            f"uploading {count} objects from {first[:16]}",
        )
        if progress:
            progress(len(body))
        return len(body)

    async def _upload_all(
        self,
        s: httpx.AsyncClient,
        uid: str,
        read: Callable[[list[str]], list[tuple[str, bytes]]],
        sized: list[tuple[str, int]],
        progress: Callable[[int], object] | None,
    ) -> int:
        """Objects (sha, frame size) in batches over PARALLEL connections; ``read`` gives
        a batch's frames (from the local cache, or the outbox)."""
        queue: asyncio.Queue[list[str]] = asyncio.Queue()
        for batch in batches(sized):
            queue.put_nowait(batch)
        sent = 0

        async def worker() -> None:
            nonlocal sent
            while not queue.empty():
                sent += await self._send(s, uid, read(queue.get_nowait()), progress)

        await asyncio.gather(*(worker() for _ in range(PARALLEL)))
        return sent

    async def _publish_listed(
        self,
        s: httpx.AsyncClient,
        channel: str,
        folder: Path,
        notes: str,
        store: ObjectStore,
        files_cache: FilesCache,
        progress: Callable[[int], object] | None,
        max_objects: int | None,
    ) -> dict[str, Any]:
        """The file list first, then the objects the hub lacks (every hub accepts this).

        The objects go through the local cache, so a cut upload (``max_objects``) sends the
        rest from there without compressing them again.
        """
        loop = asyncio.get_running_loop()
        entries, *_ = await loop.run_in_executor(
            None, ingest_files, store, scan_source(folder), DEFAULT_AVG, None, files_cache
        )
        doc = {"channel": channel, "notes": notes, "files": [e.to_dict() for e in entries]}
        up = self._check(
            *await self._call(s, "POST", "/api/v1/uploads", json=doc), "starting the upload"
        )
        uid, missing = str(up["upload"]), [str(h) for h in up["missing"]]
        if max_objects is not None:
            missing = missing[:max_objects]

        def read(shas: list[str]) -> list[tuple[str, bytes]]:
            return [(sha, store.read_frame(sha)) for sha in shas]

        sized = [(sha, store.frame_size(sha)) for sha in missing]
        sent = await self._upload_all(s, uid, read, sized, progress)
        if max_objects is not None and len(up["missing"]) > max_objects:
            return {"upload": uid, "sent_objects": len(missing), "complete": False}
        result = self._check(
            *await self._call(s, "POST", f"/api/v1/uploads/{uid}/commit"), "committing"
        )
        return dict(result, upload=uid, sent_objects=len(missing), sent_bytes=sent, complete=True)

    async def _publish_streaming(
        self,
        s: httpx.AsyncClient,
        channel: str,
        folder: Path,
        notes: str,
        files_cache: FilesCache,
        progress: Callable[[int], object] | None,
        pieces: SentPieces | None = None,
    ) -> dict[str, Any] | None:
        """Chunks declared and objects sent while the folder is read; None if the hub is
        from before streaming uploads (it then gets the file list first).

        Each new chunk is compressed once into an :class:`Outbox` and sent from memory:
        nothing goes through the local object cache. Resuming a cut publish costs reading
        the folder again, and the upload sends only what the hub still lacks; files the
        files cache knows unchanged are not read at all when the hub holds their chunks.
        """
        start = {"channel": channel, "notes": notes, "stream": True, "tree": True}
        status, body = await self._call(s, "POST", "/api/v1/uploads", json=start)
        if status == 422 and "'files'" in str(body.get("error", "")):
            return None
        uid = str(self._check(status, body, "starting the upload")["upload"])
        # a hub that takes the file list as pieces says so; an older one gets the list
        as_tree = body.get("tree") is True
        if as_tree and pieces is not None:
            pieces.load(body.get("latest_root"))
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue()
        to_send: asyncio.Queue[list[str] | None] = asyncio.Queue()
        sent = sent_objects = 0

        async def declare_now(pairs: list[tuple[str, int]]) -> list[str]:
            doc = {"chunks": [[h, n] for h, n in pairs]}
            answer = self._check(
                *await self._call(s, "POST", f"/api/v1/uploads/{uid}/chunks", json=doc),
                "declaring objects",
            )
            return [str(h) for h in answer["missing"]]

        def held(wanted: dict[str, int]) -> set[str]:
            """Which chunks of unchanged files the hub holds (asked from the ingest thread;
            declared, so the hub keeps them for this upload)."""
            pairs = list(wanted.items())
            present: set[str] = set()
            for i in range(0, len(pairs), ASK_BATCH):
                part = pairs[i : i + ASK_BATCH]
                future = asyncio.run_coroutine_threadsafe(declare_now(part), loop)
                while True:
                    try:
                        missing = set(future.result(timeout=1))
                        break
                    except TimeoutError:
                        if outbox.closed:
                            future.cancel()
                            raise UploadCancelled("the upload stopped") from None
                present.update(h for h, _ in part if h not in missing)
            return present

        outbox = Outbox(limit=self.outbox_bytes, chunks=self.outbox_chunks)

        # chunks the ingest thread found, handed to the loop by one wake-up for as many as
        # arrived meanwhile (a wake-up a chunk, a write to the loop's pipe each, cost the
        # client a tenth of its time on small files)
        arrived: collections.deque[tuple[str, int]] = collections.deque()
        woken = threading.Event()

        def take_arrived() -> None:  # in the loop
            woken.clear()  # first: a chunk that arrives after this wakes the loop again
            while arrived:
                chunks.put_nowait(arrived.popleft())

        def hand_over(item: tuple[str, int]) -> None:  # in the ingest thread
            arrived.append(item)
            if not woken.is_set():
                woken.set()
                loop.call_soon_threadsafe(take_arrived)

        def on_chunk(sha: str, size: int) -> None:  # in the ingest thread
            hand_over((sha, size))
            if outbox.announce(sha):  # full: what waits for a declaration goes now
                hand_over(FLUSH)
                outbox.wait_room()

        def run_ingest() -> list[FileEntry] | tuple[PieceRef | None, int, int]:
            if as_tree:
                return ingest_tree(outbox, folder, files_cache, on_chunk, pieces)
            files = scan_source(folder)
            return ingest_files(outbox, files, DEFAULT_AVG, None, files_cache, on_chunk, held)[0]

        async def ingest() -> list[FileEntry] | tuple[PieceRef | None, int, int]:
            try:
                return await loop.run_in_executor(None, run_ingest)
            finally:
                take_arrived()
                chunks.put_nowait(None)  # after every chunk the ingest thread found

        async def declare() -> None:
            nonlocal sent_objects
            seen = IdSet()  # 8 bytes a chunk (a wrong "seen": the hub names it at the commit)
            pending: dict[str, int] = {}
            more = True
            while more:
                item = await chunks.get()
                flush = item is FLUSH
                if item is None:
                    more = False
                elif not flush and item[0] not in seen:
                    seen.add(item[0])
                    pending[item[0]] = item[1]
                if pending and (
                    not more or flush or len(pending) >= DECLARE_BATCH or chunks.empty()
                ):
                    if more and not flush and len(pending) < DECLARE_MIN and chunks.empty():
                        continue  # wait for a few more before a round trip
                    missing = await declare_now(list(pending.items()))
                    lacking = set(missing)
                    outbox.drop(h for h in pending if h not in lacking)
                    pending = {}
                    sent_objects += len(missing)
                    for batch in batches([(h, outbox.size(h)) for h in missing]):
                        to_send.put_nowait(batch)
            for _ in range(PARALLEL):
                to_send.put_nowait(None)

        async def worker() -> None:
            nonlocal sent
            while (batch := await to_send.get()) is not None:
                frames = outbox.take(batch)
                held = sum(len(f) for _, f in frames)
                try:
                    sent += await self._send(s, uid, frames, progress)
                finally:
                    outbox.landed(held)

        try:
            async with asyncio.TaskGroup() as tg:
                listed = tg.create_task(ingest())
                tg.create_task(declare())
                for _ in range(PARALLEL):
                    tg.create_task(worker())
        except BaseExceptionGroup as group:
            # the first failure says what happened (a refusal, the link); the others follow
            raise _first_error(group) from None
        finally:
            outbox.close()  # the folder's reading, if still going, stops waiting for room
        made = listed.result()
        # the hub commits at once when it lacks nothing (a hub that does not know
        # "commit" here answers the missing objects only, and the commit follows)
        if isinstance(made, tuple):
            doc = {**root_doc(*made), "commit": True}
            answer = self._check(
                *await self._call(s, "PUT", f"/api/v1/uploads/{uid}/tree", json=doc),
                "sending the file list's root",
            )
        else:
            doc = {"files": [e.to_dict() for e in made], "commit": True}
            answer = self._check(
                *await self._call(s, "PUT", f"/api/v1/uploads/{uid}/files", json=doc),
                "sending the file list",
            )
        late = [str(h) for h in answer["missing"]]  # collected at the hub meanwhile: again
        if late:
            sent += await self._send_again(s, uid, folder, set(late), progress, as_tree)
        committed = answer.get("committed")
        if isinstance(committed, dict) and not late:
            result = committed
        else:
            for _ in range(RESEND_ROUNDS):
                status, body = await self._call(s, "POST", f"/api/v1/uploads/{uid}/commit")
                again = body.get("missing") if status == 409 and as_tree else None
                if not isinstance(again, list) or not again:
                    break
                # the commit read further and found more (a piece it could not read before)
                late += [str(h) for h in again]
                sent += await self._send_again(s, uid, folder, set(map(str, again)), progress, True)
            result = self._check(status, body, "committing")
        if as_tree and pieces is not None:
            pieces.save()
        return dict(
            result,
            upload=uid,
            sent_objects=sent_objects + len(late),
            sent_bytes=sent,
            complete=True,
        )

    async def _send_again(
        self,
        s: httpx.AsyncClient,
        uid: str,
        folder: Path,
        late: set[str],
        progress: Callable[[int], object] | None,
        as_tree: bool = False,
    ) -> int:
        """Objects the hub lacks after all (collected since it said it held them, or a
        duplicate of a chunk it was asked about): read the folder again for just those
        (the file list's pieces too, for a tree upload: they are made again alike)."""
        loop = asyncio.get_running_loop()
        outbox = Outbox(limit=2**62, wanted=late)
        sizes: dict[str, int] = {}

        def found(sha: str, size: int) -> None:
            if sha in late:
                sizes[sha] = size

        def read_again() -> None:
            if as_tree:
                ingest_tree(outbox, folder, on_object=found)
            else:
                for _ in Ingest(outbox, iter_source(folder), DEFAULT_AVG, on_chunk=found):
                    pass

        await loop.run_in_executor(None, read_again)
        if as_tree and sizes:
            # a tree upload declares only what it read: these are declared now, so the hub
            # takes them (and keeps them for this upload)
            pairs = sorted(sizes.items())
            for i in range(0, len(pairs), ASK_BATCH):
                doc = {"chunks": [[h, n] for h, n in pairs[i : i + ASK_BATCH]]}
                self._check(
                    *await self._call(s, "POST", f"/api/v1/uploads/{uid}/chunks", json=doc),
                    "declaring objects",
                )
        lost = late - set(outbox.frames)
        if lost:
            raise HubClientError(
                f"{len(lost)} objects the hub asks for are no longer in {folder} (a file "
                "changed during the publish?); run the same command again",
                409,
            )
        sized = [(h, len(f)) for h, f in outbox.frames.items()]
        return await self._upload_all(s, uid, outbox.take, sized, progress)


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The exception to show from a task group's failures: a HubClientError first."""
    flat: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))
        else:
            flat.append(exc)
    for exc in flat:
        if isinstance(exc, HubClientError) and not isinstance(exc, UploadCancelled):
            return exc
    return flat[0]
