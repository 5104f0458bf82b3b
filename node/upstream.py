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
import http.client
import shutil
import subprocess
import tempfile
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

from protocol.paths import check_path

from .config import UpstreamConfig
from .errors import TooMuchData, UpstreamError, UpstreamNotFound

BLOCK = 64 * 1024


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
    def _fetch(self, path: str, offset: int) -> Iterator[bytes]:
        """Yield the bytes of ``path`` from ``offset`` to its end; raise UpstreamError."""

    def fetch(self, path: str, offset: int = 0, max_length: int = 1 << 20) -> Iterator[bytes]:
        """The bytes of ``path`` from ``offset``, never more than ``max_length`` of them."""
        _check_repo_path(path)
        got = 0
        try:
            for block in self._fetch(path, offset):
                got += len(block)
                if got > max_length:
                    raise TooMuchData(
                        self.name, f"{path}: sent more than the {max_length} bytes expected"
                    )
                yield block
        except UpstreamError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise UpstreamError(self.name, f"{path}: {type(exc).__name__}: {exc}") from None

    def read(self, path: str, max_length: int) -> bytes:
        return b"".join(self.fetch(path, 0, max_length))

    def prefetch(self, paths: list[str]) -> None:  # noqa: B027 (optional hook)
        """A hint that these paths come next (rsync batches them into one run)."""

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

    def _fetch(self, path: str, offset: int) -> Iterator[bytes]:
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
    """The hub, a static mirror or a peer centre over HTTP, with Range for resumption.

    One keep-alive connection (http.client) per upstream: on a slow link a new TCP and
    TLS handshake per object would cost more than many objects.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        kind: str = "http",
        cost: int = 10,
        metered: bool = False,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(name, kind, cost, metered)
        parts = urllib.parse.urlsplit(base_url.rstrip("/") + "/")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamError(name, f"{base_url!r} is not an http(s) URL")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.prefix = parts.path
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def clone(self) -> HttpUpstream:
        """The same upstream on its own connection (for parallel object fetches)."""
        base = f"{self.scheme}://{self.host}" + (f":{self.port}" if self.port else "")
        twin = HttpUpstream(
            self.name, base + self.prefix, self.kind, self.cost, self.metered, self.timeout
        )
        twin.meter = self.meter
        return twin

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = (
                http.client.HTTPSConnection
                if self.scheme == "https"
                else http.client.HTTPConnection
            )
            self._conn = cls(self.host, self.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _fetch(self, path: str, offset: int) -> Iterator[bytes]:
        headers = {"User-Agent": "caravane-node", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        url = self.prefix + urllib.parse.quote(path)
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request("GET", url, headers=headers)
                resp = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()  # a kept-alive connection the server closed: one fresh try
                if attempt == 2:
                    raise
            except BaseException:
                self.close()  # a timeout mid-request leaves the connection unusable
                raise
        try:
            if resp.status == 404:
                resp.read()
                raise UpstreamNotFound(self.name, f"{path}: not found (404)")
            if resp.status == 416 and offset:
                resp.read()
                return  # we already hold the whole file
            if resp.status not in (200, 206):
                resp.read(4096)
                self.close()
                raise UpstreamError(self.name, f"{path}: HTTP {resp.status} {resp.reason}")
            skip = offset if (offset and resp.status == 200) else 0
            if resp.status == 206:
                start = resp.getheader("Content-Range", "")
                if not start.startswith(f"bytes {offset}-"):
                    raise UpstreamError(self.name, f"{path}: wrong Content-Range {start!r}")
            expected = resp.getheader("Content-Length")
            got = 0
            while True:
                block = resp.read(BLOCK)
                if not block:
                    break
                self._wire(len(block))
                got += len(block)
                if skip:
                    if len(block) <= skip:
                        skip -= len(block)
                        continue
                    block, skip = block[skip:], 0
                yield block
            if expected is not None and got != int(expected):
                raise UpstreamError(
                    self.name, f"{path}: connection cut after {got} of {expected} bytes"
                )
        except BaseException:
            self.close()
            raise

    def probe(self) -> bool:
        """One HEAD of the root metadata with a short timeout: is the link up now?"""
        try:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=min(5, self.timeout))
            if self.scheme == "https":
                conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=min(5, self.timeout)
                )
            conn.request("HEAD", self.prefix + "metadata/root.json")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except (TimeoutError, OSError, http.client.HTTPException):
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

    def prefetch(self, paths: list[str]) -> None:  # noqa: B027 (optional hook)
        todo = [p for p in paths if not (self.cache / p).is_file()]
        if not todo:
            return
        self.cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.cache, suffix=".list") as fh:
            fh.write("\n".join(todo) + "\n")
            fh.flush()
            with contextlib.suppress(UpstreamNotFound):  # fetch reports missing ones
                self._run([f"--files-from={fh.name}", self.source + "/", str(self.cache) + "/"])

    def _fetch(self, path: str, offset: int) -> Iterator[bytes]:
        local = self.cache / path
        if path.startswith("metadata/"):
            local.unlink(missing_ok=True)  # it changes: never answer from an old copy
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            self._run(["--append-verify", f"{self.source}/{path}", str(local)])
        try:
            with open(local, "rb") as fh:
                fh.seek(offset)
                while block := fh.read(BLOCK):
                    self._wire(len(block))
                    yield block
        finally:
            pass

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
    base = cfg.url.rstrip("/")
    if cfg.kind in ("http", "peer"):
        base += "/repo"  # the hub and peer centres serve the store under /repo/
    return HttpUpstream(cfg.name, base, cfg.kind, cfg.cost, cfg.metered, timeout)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or "rsync"
