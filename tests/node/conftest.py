"""Centres against a real hub on 127.0.0.1: publish, enrol, sync, tamper, cut.

``World`` holds one running hub (SQLite) and makes nodes for it; content is published
through the real upload client, and a node's upstreams can be the hub, the hub behind the
fault-injecting proxy, a folder copy of the hub's repository, a peer node, or rsync.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from caravane.hub.client import HubClient
from caravane.hub.mirror import push
from caravane.hub.service import Principal
from caravane.node.agent import NodeAgent
from caravane.node.config import UpstreamConfig
from caravane.node.serve import make_app as make_node_app
from tests.foundation.conftest import read_tree, write_tree
from tests.hub.conftest import RunningHub, ServerThread, free_port, start_hub
from tests.support.faultproxy import FaultProxy
from tests.support.simulator import Centre, RepositorySimulator


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def content(version: int, big: int = 3_000_000, files: int = 12) -> dict[str, bytes]:
    """A release: a big binary (video-like), a few texts, an HTML site; later versions edit."""
    tree: dict[str, bytes] = {
        "videos/lecon-1.mp4": random_bytes(big, 1) + random_bytes(50_000 * (version - 1), version),
        "site/index.html": f"<h1>Leçons v{version}</h1><a href='page.html'>suite</a>".encode(),
        "site/page.html": b"<p>page</p>",
    }
    for i in range(files):
        tree[f"textes/été-{i:02d}.txt"] = (f"chapitre {i} version " * 500).encode() + (
            f" v{version}".encode() if i % 3 == 0 else b""
        )
    return tree


@dataclass
class World:
    tmp: Path
    rh: RunningHub
    channel: str = "lecons"
    servers: list[ServerThread] = field(default_factory=list)
    proxies: list[FaultProxy] = field(default_factory=list)
    versions: dict[int, dict[str, bytes]] = field(default_factory=dict)
    _n: int = 0

    @property
    def hub_repo(self) -> Path:
        return self.rh.hub.repo.path

    def publish(self, files: dict[str, bytes]) -> int:
        self._n += 1
        src = write_tree(self.tmp / f"src-{self._n}", files)
        client = HubClient(self.rh.url, self.rh.token("curator"))
        out = asyncio.run(client.publish(self.channel, src, cache=self.tmp / "curator-cache"))
        version = int(out["version"])
        self.versions[version] = dict(files)
        return version

    def enrolment(self, name: str) -> dict:
        return self.rh.hub.register_centre(
            Principal("admin", "admin"), {"name": name, "channels": [self.channel]}
        )

    def node(self, name: str, upstreams: list[UpstreamConfig] | None = None, **cfg) -> NodeAgent:
        doc = self.enrolment(name)
        if upstreams is None:
            upstreams = [UpstreamConfig("hub", "http", self.rh.url)]
        n = NodeAgent.init(self.tmp / name, doc, upstreams=upstreams, offline=True)
        n.config.durable = False
        n.config.timeout_seconds = 5
        for k, v in cfg.items():
            setattr(n.config, k, v)
        n.config.save()
        n.close()
        return NodeAgent.open(self.tmp / name)

    def proxy(self, port: int | None = None) -> FaultProxy:
        p = FaultProxy(port or int(self.rh.url.rsplit(":", 1)[1]))
        self.proxies.append(p)
        return p

    def mirror_copy(self, name: str) -> Path:
        dest = self.tmp / name
        push(self.hub_repo, str(dest))  # loose objects, as a static mirror serves them
        return dest

    def serve_node(self, n: NodeAgent) -> str:
        port = free_port()
        server = ServerThread(make_node_app(n), port)
        server.start()
        self.servers.append(server)
        return f"http://127.0.0.1:{port}"

    def live(self, n: NodeAgent) -> dict[str, bytes]:
        return read_tree(n.releases.live_link(self.channel))

    def sync(self, n: NodeAgent, **kw):
        kw.setdefault("retry_base", 0.05)
        return n.sync(**kw)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path, None)


@pytest.fixture(params=["sqlite", "postgresql"])
def world_any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """The same world with the hub on SQLite and on PostgreSQL (skipped when unreachable)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    yield from _world(tmp_path, url)


def _world(tmp_path: Path, db_url: str | None) -> Iterator[World]:
    rh, server = start_hub(tmp_path / "hub", db_url)
    w = World(tmp_path, rh)
    yield w
    for p in w.proxies:
        p.close()
    for s in w.servers:
        s.stop()
    server.stop()


def env_without_proxy() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


# the in-memory repository simulator and a centre syncing from it (no hub, no socket)
@pytest.fixture
def sim(tmp_path: Path) -> RepositorySimulator:
    return RepositorySimulator(tmp_path)


@pytest.fixture
def centre(tmp_path: Path, sim: RepositorySimulator) -> Iterator[Centre]:
    c = Centre.create(tmp_path / "centre", sim)
    yield c
    c.close()
