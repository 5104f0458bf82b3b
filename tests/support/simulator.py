"""An in-memory repository for the node's sync engine, in the spirit of python-tuf's
``tests/repository_simulator.py``.

``RepositorySimulator`` publishes releases with the real hub code (``Repository.init`` and
``publish`` from small folders the test writes, ``build_pack``) and keeps every file of the
static layout in a dict. ``SimulatedUpstream`` serves that dict through the node's real
``Upstream`` interface, so a ``SyncEngine`` runs against it with no hub process and no
socket. Each upstream records every fetch (path, offset, bytes sent) and lets a test
tamper with, delete or replace any file it serves, make a path fail, or make it slow.

A ``Centre`` is a node's store, releases and state in a temporary folder, with an engine
factory, so a test reads as: publish, make upstreams, damage one, sync, check.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from caravane.node.activate import Releases
from caravane.node.errors import UpstreamError, UpstreamNotFound
from caravane.node.state import NodeState
from caravane.node.sync import SyncEngine, SyncResult
from caravane.node.upstream import Upstream
from caravane.packs.hub_repository import RotationResult
from caravane.packs.layout import channel_relpath, manifest_relpath, object_relpath, pack_relpath
from caravane.packs.repository import Repository
from caravane.protocol.keys import PrivateKey
from caravane.protocol.metadata import (
    ChannelMeta,
    Manifest,
    ReleaseRef,
    format_time,
    now_utc,
    sign_envelope,
)
from tests.foundation.conftest import read_tree, write_tree

BLOCK = 16 * 1024
LAYOUT_DIRS = ("metadata", "manifests", "objects", "packs")


@dataclass
class Fetch:
    """One request an upstream answered: what, from where, and how many bytes it sent."""

    upstream: str
    path: str
    offset: int
    sent: int = 0
    outcome: str = "open"  # open | done | not found | failed | closed early


@dataclass
class Slow:
    """Serve matching paths ``block`` bytes at a time, ``delay`` seconds apart."""

    delay: float
    block: int = 1


class RepositorySimulator:
    """A hub repository built with the real publishing code, served from a dict."""

    def __init__(self, tmp: Path, channel: str = "lecons") -> None:
        self.tmp = Path(tmp)
        self.channel = channel
        self.repo = Repository.init(self.tmp / "sim-hub")
        self.files: dict[str, bytes] = {}
        self.versions: dict[int, dict[str, bytes]] = {}
        self.upstreams: list[SimulatedUpstream] = []
        self._sources = 0
        self._snapshot()

    @property
    def root_bytes(self) -> bytes:
        return self.files["metadata/root.json"]

    def publish(self, tree: dict[str, bytes], channel: str | None = None) -> int:
        """Publish ``tree`` as the channel's next signed release; returns its version."""
        self._sources += 1
        src = write_tree(self.tmp / f"sim-src-{self._sources}", dict(tree))
        result = self.repo.publish(channel or self.channel, src)
        self.versions[result.version] = dict(tree)
        self._snapshot()
        return result.version

    def build_pack(self, base: int, target: int, channel: str | None = None) -> str:
        """Build the pack ``base``->``target`` (0: from nothing); returns its layout path."""
        ch = channel or self.channel
        rel = pack_relpath(ch, base, target)
        self.repo.build_pack(ch, base, target, self.repo.path / rel)
        self._snapshot()
        return rel

    # ------------------------------------------------------------------ keys

    @property
    def root_key(self) -> PrivateKey:
        """The current root key (``init`` left it beside the repository, not offline)."""
        return PrivateKey.load(self.repo.key_path("root"))

    @property
    def release_key(self) -> PrivateKey:
        return PrivateKey.load(self.repo.key_path("release"))

    def rotate(self, root: bool = False, release: bool = False) -> RotationResult:
        """Rotate the root key, the release key or both with the hub's real code."""
        new_root = PrivateKey.generate() if root else None
        new_release = PrivateKey.generate() if release else None
        result = self.repo.rotate_keys(self.root_key, new_root, new_release)
        if new_root is not None:
            new_root.save(self.repo.key_path("root"))
        self._snapshot()
        return result

    def expire_in(self, seconds: int, channel: str | None = None) -> None:
        """Sign the channel's metadata again with an expiry ``seconds`` from now."""
        ch = channel or self.channel
        meta = self.repo.channel_meta(ch)
        expires = format_time(now_utc() + timedelta(seconds=seconds))
        again = ChannelMeta(ch, meta.version, meta.releases, meta.title, expires)
        data = sign_envelope(again.to_dict(), [self.release_key])
        (self.repo.path / channel_relpath(ch)).write_bytes(data)
        self._snapshot()

    def forge(
        self, tree: dict[str, bytes], version: int, key: PrivateKey, channel: str | None = None
    ) -> dict[str, bytes]:
        """What a thief of ``key`` serves: release ``version`` of ``tree``, signed by it.

        Objects go to the hub's store (content-addressed, harmless there); the manifest
        and channel metadata are only returned, for an upstream to serve (``replace``).
        """
        self._sources += 1
        src = write_tree(self.tmp / f"sim-forged-{self._sources}", dict(tree))
        forged = forge_release(self.repo, src, channel or self.channel, version, key)
        self._snapshot()
        return forged

    def snapshot(self) -> dict[str, bytes]:
        """A copy of every served file now (to replay an old state: a frozen mirror)."""
        return dict(self.files)

    def upstream(
        self, name: str, cost: int = 10, kind: str = "mirror", **kw: Any
    ) -> SimulatedUpstream:
        up = SimulatedUpstream(self, name, kind=kind, cost=cost, **kw)
        self.upstreams.append(up)
        return up

    def _snapshot(self) -> None:
        for top in LAYOUT_DIRS:
            folder = self.repo.path / top
            if folder.is_dir():
                for rel, data in read_tree(folder).items():
                    self.files[f"{top}/{rel}"] = data
        for sha in self.repo.store.iter_ids():  # served at objects/<aa>/<sha>, kept in segments
            self.files[object_relpath(sha)] = self.repo.store.read_frame(sha)


def forge_release(
    repo: Any, src: Path, channel: str, version: int, key: PrivateKey
) -> dict[str, bytes]:
    """Release ``version`` of folder ``src`` signed by ``key``, as a key thief makes it.

    The objects go into ``repo``'s store (content-addressed: harmless, and a mirror copy
    then carries them); the manifest and channel metadata are returned by layout path,
    for a carrier to serve, and never written into ``repo``.
    """
    entries, *_ = repo.ingest(src)
    manifest = Manifest(channel, version, format_time(now_utc()), entries, "forged")
    mbytes = manifest.to_bytes()
    meta = repo.channel_meta(channel)
    releases = dict(meta.releases)
    releases[version] = ReleaseRef(
        version, hashlib.sha256(mbytes).hexdigest(), len(mbytes), manifest.created, 0, 0
    )
    forged = ChannelMeta(channel, version, releases, meta.title, None)
    return {
        manifest_relpath(channel, version): mbytes,
        channel_relpath(channel): sign_envelope(forged.to_dict(), [key]),
    }


class SimulatedUpstream(Upstream):
    """A carrier serving the simulator's files, with per-upstream damage and a fetch log."""

    def __init__(
        self,
        sim: RepositorySimulator,
        name: str,
        *,
        kind: str = "mirror",
        cost: int = 10,
        metered: bool = False,
        block: int = BLOCK,
    ) -> None:
        super().__init__(name, kind, cost, metered)
        self.sim = sim
        self.block = block
        self.overrides: dict[str, bytes | None] = {}  # None: deleted on this upstream
        self.failing: dict[str, str] = {}  # path prefix -> error message
        self.slow: dict[str, Slow] = {}  # path prefix -> pace
        self.reachable = True
        self.fetches: list[Fetch] = []

    # ------------------------------------------------------------------ damage

    def tamper(self, path: str, change: Callable[[bytes], bytes]) -> None:
        self.overrides[path] = change(self._file(path) or b"")

    def replace(self, path: str, data: bytes) -> None:
        self.overrides[path] = data

    def delete(self, path: str) -> None:
        self.overrides[path] = None

    def fail(self, prefix: str, message: str = "connection reset by peer") -> None:
        self.failing[prefix] = message

    def pace(self, prefix: str, delay: float, block: int = 1) -> None:
        self.slow[prefix] = Slow(delay, block)

    def freeze(self, files: dict[str, bytes]) -> None:
        """Serve exactly ``files`` from now on (a mirror frozen at an old state)."""
        self.overrides = {p: None for p in self.sim.files} | dict(files)

    def restore(self) -> None:
        self.overrides.clear()
        self.failing.clear()
        self.slow.clear()

    # ------------------------------------------------------------------ the log

    def sent(self, prefix: str = "") -> int:
        """Bytes this upstream sent for paths under ``prefix``."""
        return sum(f.sent for f in self.fetches if f.path.startswith(prefix))

    def paths(self) -> list[str]:
        return [f.path for f in self.fetches]

    # ------------------------------------------------------------------ Upstream

    def _file(self, path: str) -> bytes | None:
        if path in self.overrides:
            return self.overrides[path]
        return self.sim.files.get(path)

    def _match(self, table: dict[str, Any], path: str) -> Any:
        return next((v for p, v in table.items() if path.startswith(p)), None)

    def probe(self) -> bool:
        return self.reachable and self._file("metadata/root.json") is not None

    def _fetch(self, path: str, offset: int, limit: int) -> Iterator[bytes]:
        record = Fetch(self.name, path, offset)
        self.fetches.append(record)
        if not self.reachable:
            record.outcome = "failed"
            raise UpstreamError(self.name, f"{path}: the link is down")
        message = self._match(self.failing, path)
        if message is not None:
            record.outcome = "failed"
            raise UpstreamError(self.name, f"{path}: {message}")
        data = self._file(path)
        if data is None:
            record.outcome = "not found"
            raise UpstreamNotFound(self.name, f"{path}: not found")
        pace: Slow | None = self._match(self.slow, path)
        step = pace.block if pace else self.block
        try:
            for start in range(offset, len(data), step):
                if pace:
                    time.sleep(pace.delay)
                block = data[start : start + step]
                record.sent += len(block)
                self._wire(len(block))
                yield block
        except GeneratorExit:
            record.outcome = "closed early"
            raise
        record.outcome = "done"


@dataclass
class Centre:
    """A node's store, releases and state in a folder: what a SyncEngine works on."""

    path: Path
    repo: Repository
    releases: Releases
    state: NodeState
    channels: list[str] = field(default_factory=lambda: ["lecons"])

    @classmethod
    def create(cls, path: Path, sim: RepositorySimulator) -> Centre:
        path = Path(path)
        repo = Repository.init(path / "store", sim.root_bytes)
        releases = Releases(path / "releases", path / "live", durable=False)
        state = NodeState(f"sqlite:///{path / 'node.db'}")
        return cls(path, repo, releases, state, [sim.channel])

    @property
    def partial_dir(self) -> Path:
        return self.path / "partial"

    def engine(self, upstreams: list[Upstream], **kw: Any) -> SyncEngine:
        kw.setdefault("retry_base", 0.01)
        kw.setdefault("margin", 0)
        return SyncEngine(self.repo, self.releases, self.state, upstreams, self.partial_dir, **kw)

    def sync(self, upstreams: list[Upstream], **kw: Any) -> SyncResult:
        return self.engine(upstreams, **kw).sync(self.channels)

    def live(self, channel: str = "lecons") -> dict[str, bytes]:
        return read_tree(self.releases.live_link(channel))

    def close(self) -> None:
        self.state.close()
