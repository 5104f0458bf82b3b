"""A real hub on 127.0.0.1 (ephemeral port), on SQLite and, when reachable, on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from sqlalchemy import create_engine, text

from caravane.hub.app import make_app
from caravane.hub.config import HubConfig
from caravane.hub.db import upgrade
from caravane.hub.service import Hub
from caravane.packs.repository import Repository

PG_URL = os.environ.get(
    "CARAVANE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def postgres_reachable() -> str | None:
    """None when PostgreSQL answers, else why not (the reason a skip prints)."""
    try:
        with create_engine(PG_URL, connect_args={"connect_timeout": 3}).connect() as c:
            c.execute(text("select 1"))
    except Exception as exc:  # any failure means: not reachable from here
        return f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}"
    return None


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    reason = postgres_reachable()
    if reason:
        pytest.skip(reason)
    return PG_URL


@contextmanager
def fresh_database() -> Iterator[str]:
    """A PostgreSQL database of its own, dropped afterwards (skips when none is reachable)."""
    reason = postgres_reachable()
    if reason:
        pytest.skip(reason)
    name = f"caravane_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database per test, dropped afterwards."""
    with fresh_database() as url:
        yield url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningHub:
    hub: Hub
    url: str
    admin: str
    data: Path

    def token(self, role: str) -> str:
        return self.hub.create_token(f"test-{role}", role)


class ServerThread:
    """Runs an aiohttp app on its own loop in a thread: real sockets, real HTTP."""

    def __init__(self, app: web.Application, port: int) -> None:
        self.app, self.port = app, port
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        self.loop.run_until_complete(site.start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(20), "hub did not start"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(20)


def start_hub(data: Path, url: str | None = None, **cfg) -> tuple[RunningHub, ServerThread]:
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = HubConfig(data_dir=data, database_url=url or "", port=port, scheduler=False, **cfg)
    Repository.init(config.repo_dir)
    upgrade(config.url)
    hub = Hub(config)
    server = ServerThread(make_app(config, hub, scheduler=False), port)
    server.start()
    admin = hub.create_token("admin", "admin")
    return RunningHub(hub, f"http://127.0.0.1:{port}", admin, data), server


@pytest.fixture(params=["sqlite", "postgresql"])
def running_hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningHub]:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    rh, server = start_hub(tmp_path / "hub", url)
    yield rh
    server.stop()


@pytest.fixture
def sqlite_hub(tmp_path: Path) -> Iterator[RunningHub]:
    rh, server = start_hub(tmp_path / "hub")
    yield rh
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hub]:
    """A hub without an HTTP server: the jobs run against its repository and database."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    cfg = HubConfig(data_dir=tmp_path / "hub", database_url=url, scheduler=False, keep_last=2)
    cfg.data_dir.mkdir(parents=True)
    Repository.init(cfg.repo_dir)
    upgrade(cfg.url)
    h = Hub(cfg)
    yield h
    h.db.dispose()
