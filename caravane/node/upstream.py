"""Where repository bytes come from: one small interface, many carriers.

The sync engine asks an ``Upstream`` for a byte range of a repository path (the static
layout of docs/FORMAT.md) and verifies everything itself, so an upstream needs no trust:
the hub, a static mirror, a peer centre, an rsync source and a mounted drive are all the
same to it. As in python-tuf's fetcher, every failure becomes one error type
(``UpstreamError``) and every read is bounded by a maximum length, so an upstream that sends
endless data is cut off.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import subprocess
import tempfile
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import httpx

from caravane.packs import compact
from caravane.protocol.errors import CaravaneError
from caravane.protocol.paths import check_path

from .config import UpstreamConfig
from .errors import TooMuchData, UpstreamError, UpstreamNotFound

BLOCK = 64 * 1024
log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
USER_AGENT = "caravane-node"


def http_client(timeout: float, max_redirects: int = MAX_REDIRECTS) -> httpx.Client:
    """The node's one way to speak HTTP: keep-alive, bounded redirects, proxies from the
    environment, a connect timeout and a per-read timeout, bytes as sent (no decoding)."""
    return httpx.Client(
        follow_redirects=True,
        max_redirects=max_redirects,
        trust_env=True,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
    )


def _zstd_bound(size: int) -> int:
    """The most a zstd frame of ``size`` bytes takes (ZSTD_COMPRESSBOUND, with room)."""
    return size + (size >> 7) + 1024


def _check_repo_path(path: str) -> str:
    check_path(path)  # no traversal, whatever the caller built
    return path


class Upstream(ABC):
    """A source of repository files, read by range."""

    def __init__(self, name: str, kind: str, cost: int = 10, metered: bool = False) -> None:
        self.name = name
        self.kind = kind
        self.cost = cost
        self.metered = metered
        # told of every block that crosses this upstream, kept or not (set by Transfer)
        self.meter: Callable[[int], None] | None = None

    def _wire(self, n: int) -> None:
        """Count ``n`` bytes that crossed the carrier (before any bound or skip)."""
        if self.meter is not None and n:
            self.meter(n)

    @abstractmethod
    def _fetch(self, path: str, offset: int, limit: int) -> Iterator[bytes]:
        """Yield the bytes of ``path`` from ``offset`` to its end; raise UpstreamError.

        ``limit`` is the most bytes the whole file may have: a carrier that copies whole
        files before serving them (rsync) refuses a bigger one before copying it.
        """

    def fetch(
        self, path: str, offset: int = 0, max_length: int = 1 << 20
    ) -> Generator[bytes, None, None]:
        """The bytes of ``path`` from ``offset``, never more than ``max_length`` of them."""
        _check_repo_path(path)
        got = 0
        try:
            for block in self._fetch(path, offset, offset + max_length):
                got += len(block)
                if got > max_length:
                    raise TooMuchData(
                        self.name, f"{path}: sent more than the {max_length} bytes expected"
                    )
                yield block
        except UpstreamError:
            raise
        except (OSError, httpx.HTTPError, ValueError) as exc:
            raise UpstreamError(self.name, f"{path}: {type(exc).__name__}: {exc}") from None

    def read(self, path: str, max_length: int) -> bytes:
        return b"".join(self.fetch(path, 0, max_length))

    def fetch_since(
        self, path: str, base: bytes, max_length: int = 1 << 20
    ) -> Generator[bytes, None, None]:
        """The whole of ``path``; an upstream that can sends it as a delta from ``base``
        (the reader's copy of an earlier version), decoded here. Others send the file."""
        return self.fetch(path, 0, max_length)

    def prefetch(self, paths: list[str], max_size: int = 0) -> None:  # noqa: B027 (optional hook)
        """A hint that these paths come next, none over ``max_size`` (rsync batches them)."""

    def probe(self) -> bool:
        """A cheap check that the upstream is there now (a link up, a drive inserted)."""
        try:
            self.read("metadata/root.json", 1 << 20)
            return True
        except UpstreamError:
            return False

    def done_with(self, path: str) -> None:  # noqa: B027 (optional hook)
        """``path`` is verified and stored: a carrier that cached it may drop its copy."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class FolderUpstream(Upstream):
    """A repository folder: a mounted drive, a mirror on a NAS, a folder a peer copied."""

    def __init__(self, name: str, folder: Path, cost: int = 0, kind: str = "folder") -> None:
        super().__init__(name, kind, cost)
        self.folder = Path(folder)

    def _fetch(self, path: str, offset: int, limit: int) -> Iterator[bytes]:
        target = self.folder / path
        try:
            fh = open(target, "rb")
        except FileNotFoundError:
            raise UpstreamNotFound(self.name, f"{path}: not on this drive or folder") from None
        with fh:
            fh.seek(offset)
            while block := fh.read(BLOCK):
                self._wire(len(block))
                yield block

    def probe(self) -> bool:
        return (self.folder / "metadata" / "root.json").is_file()


class HttpUpstream(Upstream):
    """The hub, a static mirror or a peer centre over HTTP(S), with Range for resumption.

    One httpx client per upstream keeps its connection alive: on a slow link a new TCP and
    TLS handshake per object would cost more than many objects. Redirects are followed
    (a CDN or an object store often answers 302 to where the bytes are) up to
    ``max_redirects``, so a loop ends with a clear error; proxies come from the environment
    (``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``), as for every other program at a centre
    behind a proxy. Reads are bounded by the caller and timed out per read, not per file.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        kind: str = "http",
        cost: int = 10,
        metered: bool = False,
        timeout: float = 30.0,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        super().__init__(name, kind, cost, metered)
        parts = urllib.parse.urlsplit(base_url.rstrip("/") + "/")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamError(name, f"{base_url!r} is not an http(s) URL")
        self.base_url = urllib.parse.urlunsplit(parts)
        self.timeout = timeout
        self.max_redirects = max_redirects
        self._client: httpx.Client | None = None

    def clone(self) -> HttpUpstream:
        """The same upstream on its own connection (for parallel object fetches)."""
        twin = HttpUpstream(
            self.name,
            self.base_url,
            self.kind,
            self.cost,
            self.metered,
            self.timeout,
            self.max_redirects,
        )
        twin.meter = self.meter
        return twin

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = http_client(self.timeout, self.max_redirects)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @contextlib.contextmanager
    def _http_errors(self, path: str) -> Iterator[None]:
        """httpx's failures as the one :class:`UpstreamError` a caller sorts."""
        try:
            yield
        except httpx.TooManyRedirects:
            raise UpstreamError(
                self.name,
                f"{path}: more than {self.max_redirects} redirects (a redirect loop?); "
                "check the upstream's URL",
            ) from None
        except httpx.HTTPError as exc:
            self.close()  # whatever state the connection is in, the next fetch starts clean
            raise UpstreamError(self.name, f"{path}: {type(exc).__name__}: {exc}") from None

    def _fetch(self, path: str, offset: int, limit: int) -> Iterator[bytes]:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        url = self.base_url + urllib.parse.quote(path)
        with self._http_errors(path), self._http().stream("GET", url, headers=headers) as resp:
            yield from self._body(resp, path, offset)

    def fetch_since(
        self, path: str, base: bytes, max_length: int = 1 << 20
    ) -> Generator[bytes, None, None]:
        """The hub answers a GET naming ``base`` by its hash with a delta from it
        (``packs/compact.py``); a mirror, a peer or a cache answers with the file."""
        _check_repo_path(path)
        sha = hashlib.sha256(base).hexdigest()
        url = self.base_url + urllib.parse.quote(path)
        what = f"{path} from {self.name}"
        headers = {compact.DELTA_BASE_HEADER: sha}
        try:
            with self._http_errors(path), self._http().stream("GET", url, headers=headers) as resp:
                named = resp.headers.get(compact.DELTA_HEADER)
                bound = max_length if named is None else _zstd_bound(max_length)
                body = bytearray()
                for block in self._body(resp, path, 0):
                    body += block
                    if len(body) > bound:
                        raise TooMuchData(
                            self.name, f"{path}: sent more than the {bound} bytes expected"
                        )
            if named is None:
                data = bytes(body)
            elif named.strip().lower() != sha:
                raise UpstreamError(self.name, f"{path}: a delta from a copy it was not asked for")
            else:
                data = compact.undo_metadata_delta(base, bytes(body), max_length, what)
        except UpstreamError:
            raise
        except CaravaneError as exc:
            # the whole file then: a hub that answers deltas badly still serves its files
            log.warning("%s: a damaged delta (%s); reading the whole file", what, exc)
            yield from self.fetch(path, 0, max_length)
            return
        yield data

    def _body(self, resp: httpx.Response, path: str, offset: int) -> Iterator[bytes]:
        if resp.status_code == 404:
            raise UpstreamNotFound(self.name, f"{path}: not found (404)")
        if resp.status_code == 416 and offset:
            return  # we already hold the whole file
        if resp.status_code not in (200, 206):
            raise UpstreamError(self.name, f"{path}: HTTP {resp.status_code} {resp.reason_phrase}")
        skip = offset if (offset and resp.status_code == 200) else 0
        if resp.status_code == 206:
            start = resp.headers.get("Content-Range", "")
            if not start.startswith(f"bytes {offset}-"):
                raise UpstreamError(self.name, f"{path}: wrong Content-Range {start!r}")
        expected = resp.headers.get("Content-Length")
        got = 0
        for block in resp.iter_raw():  # as the network delivers it: a drip shows as a drip
            self._wire(len(block))
            got += len(block)
            if skip:
                if len(block) <= skip:
                    skip -= len(block)
                    continue
                block, skip = block[skip:], 0
            yield block
        if expected is not None and expected.isdigit() and got != int(expected):
            raise UpstreamError(
                self.name, f"{path}: connection cut after {got} of {expected} bytes"
            )

    def probe(self) -> bool:
        """One HEAD of the root metadata with a short timeout: is the link up now?"""
        try:
            resp = self._http().head(
                self.base_url + "metadata/root.json", timeout=min(5.0, self.timeout)
            )
            return resp.status_code == 200
        except httpx.HTTPError:
            self.close()
            return False


class RsyncUpstream(Upstream):
    """An rsync source (``rsync://host/module`` or ``host:path``) through the system rsync.

    rsync fetches whole files, so a range is served from a local cache that rsync fills with
    ``--partial`` (an interrupted file keeps what arrived and continues with
    ``--append-verify``). ``prefetch`` fetches many objects in one rsync run.
    """

    def __init__(
        self,
        name: str,
        source: str,
        cache: Path,
        cost: int = 10,
        timeout: float = 30.0,
        metered: bool = False,
    ) -> None:
        super().__init__(name, "rsync", cost, metered)
        self.source = source.rstrip("/")
        self.cache = Path(cache)
        self.timeout = timeout
        if shutil.which("rsync") is None:
            raise UpstreamError(name, "the rsync program is not installed (apt-get install rsync)")

    def _run(self, args: list[str]) -> None:
        cmd = ["rsync", "-q", "--partial", f"--timeout={max(1, int(self.timeout))}", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 23 or "No such file" in proc.stderr:
            raise UpstreamNotFound(self.name, proc.stderr.strip().splitlines()[-1][:300])
        if proc.returncode != 0:
            msg = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
            raise UpstreamError(self.name, f"rsync exit {proc.returncode}: {msg}")

    def prefetch(self, paths: list[str], max_size: int = 0) -> None:
        todo = [p for p in paths if not (self.cache / p).is_file()]
        if not todo:
            return
        self.cache.mkdir(parents=True, exist_ok=True)
        bound = [f"--max-size={max_size}"] if max_size else []
        with tempfile.NamedTemporaryFile("w", dir=self.cache, suffix=".list") as fh:
            fh.write("\n".join(todo) + "\n")
            fh.flush()
            with contextlib.suppress(UpstreamNotFound):  # fetch reports missing ones
                self._run(
                    [*bound, f"--files-from={fh.name}", self.source + "/", str(self.cache) + "/"]
                )

    def _fetch(self, path: str, offset: int, limit: int) -> Iterator[bytes]:
        local = self.cache / path
        if path.startswith("metadata/"):
            local.unlink(missing_ok=True)  # it changes: never answer from an old copy
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            # bounded before the copy: rsync skips a bigger file instead of filling the disk
            self._run(
                ["--append-verify", f"--max-size={limit}", f"{self.source}/{path}", str(local)]
            )
            if not local.is_file():
                raise TooMuchData(
                    self.name, f"{path}: larger than the {limit} bytes expected (not copied)"
                )
        with open(local, "rb") as fh:
            fh.seek(offset)
            while block := fh.read(BLOCK):
                self._wire(len(block))
                yield block

    def done_with(self, path: str) -> None:
        (self.cache / path).unlink(missing_ok=True)

    def probe(self) -> bool:
        try:
            self._run(["--list-only", f"{self.source}/metadata/root.json"])
            return True
        except UpstreamError:
            return False


def make_upstream(cfg: UpstreamConfig, cache_dir: Path, timeout: float) -> Upstream:
    if cfg.kind == "folder":
        return FolderUpstream(cfg.name, Path(cfg.url), cfg.cost)
    if cfg.kind == "rsync":
        return RsyncUpstream(
            cfg.name,
            cfg.url,
            cache_dir / "rsync" / _slug(cfg.name),
            cfg.cost,
            timeout,
            cfg.metered,
        )
    return HttpUpstream(cfg.name, cfg.repository_url, cfg.kind, cfg.cost, cfg.metered, timeout)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or "rsync"
