"""`caravane hub migrate`: the only command that changes the schema, locked, on both engines.

Every other hub command refuses a database whose schema is older (or newer) than the code
with one line naming the command to run; `hub init` makes a database ready to serve.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from caravane.hub.config import HubConfig
from caravane.hub.db import downgrade, head_revision, make_engine, migration_lock
from caravane.hub.locks import REPOSITORY, advisory_lock
from tests.hub.util import CARAVANE, cli


@pytest.fixture(params=["sqlite", "postgresql"])
def hub_config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A hub made by `hub init` (SQLite in its folder, or a fresh PostgreSQL database)."""
    extra = (
        ["--database-url", request.getfixturevalue("pg_url")] if request.param != "sqlite" else []
    )
    r = cli("hub", "init", "--data", str(tmp_path / "hub"), *extra, "--json")
    assert r.returncode == 0, r.stderr
    yield tmp_path / "hub/hub.toml"


def _url(config: Path) -> str:
    return HubConfig.load(config).url


def _refusal(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_an_old_schema_is_refused_until_hub_migrate_runs(hub_config: Path) -> None:
    head = head_revision()
    downgrade(_url(hub_config), "0004")  # the database of the previous release
    for args in (
        ("hub", "status"),
        ("hub", "token", "create", "--name", "x", "--role", "curator"),
        ("hub", "serve", "--no-scheduler"),
    ):
        line = _refusal(cli(*args, "--config", str(hub_config), timeout=60))
        assert line.startswith("error: "), line
        assert "revision 0004" in line and head in line, line
        assert f"run `caravane hub migrate --config {hub_config}`" in line, line

    r = cli("hub", "migrate", "--config", str(hub_config), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"ok": True, "from": "0004", "to": head, "changed": True}
    r = cli("hub", "migrate", "--config", str(hub_config))
    assert r.returncode == 0, r.stderr
    assert f"already at revision {head}" in r.stdout
    r = cli("hub", "status", "--config", str(hub_config), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True


WAITING = "waiting for another `caravane hub migrate` to finish"


def test_two_migrations_at_once_run_one_after_the_other(hub_config: Path, tmp_path: Path) -> None:
    """Both wait while the lock is held elsewhere; one migrates, the other finds it done."""
    url = _url(hub_config)
    downgrade(url, "base")
    engine = make_engine(url)
    logs = [tmp_path / f"migrate-{i}.err" for i in range(2)]
    try:
        with migration_lock(engine):
            procs = [
                subprocess.Popen(
                    [CARAVANE, "hub", "migrate", "--config", str(hub_config), "--json"],
                    stdout=subprocess.PIPE,
                    stderr=log.open("w"),
                    text=True,
                )
                for log in logs
            ]
            deadline = time.monotonic() + 90
            while not all(WAITING in log.read_text() for log in logs):  # both wait for it
                assert time.monotonic() < deadline, [log.read_text() for log in logs]
                assert [p.poll() for p in procs] == [None, None]
                time.sleep(0.2)
    finally:
        engine.dispose()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = sorted((json.loads(o)["from"] or "", json.loads(o)["to"]) for o, _ in outs)
    # the second to get the lock found nothing left to do
    assert results == [("", head_revision()), (head_revision(), head_revision())]


def test_a_schema_newer_than_the_code_is_refused_and_left_alone(hub_config: Path) -> None:
    engine = make_engine(_url(hub_config))
    try:
        with engine.begin() as c:
            c.execute(text("UPDATE alembic_version SET version_num = '0999'"))
        line = _refusal(cli("hub", "status", "--config", str(hub_config)))
        assert "revision 0999, newer than this version of caravane knows" in line, line
        line = _refusal(cli("hub", "migrate", "--config", str(hub_config)))
        assert "newer than this version of caravane knows" in line and "nothing was changed" in line
        with engine.connect() as c:
            assert c.scalar(text("SELECT version_num FROM alembic_version")) == "0999"
    finally:
        engine.dispose()


def test_repository_writers_on_postgresql_wait_for_the_advisory_lock(
    pg_url: str, tmp_path: Path
) -> None:
    """A hub process on another host holds the repository lock: a writer here waits for it.

    The other host's process is stood in for by this test holding the same advisory lock (it
    shares nothing with this host but the database); `hub jobs gc` takes the repository
    lock, so it must not finish before the lock is given back.
    """
    r = cli("hub", "init", "--data", str(tmp_path / "hub"), "--database-url", pg_url)
    assert r.returncode == 0, r.stderr
    config = tmp_path / "hub/hub.toml"
    engine = make_engine(pg_url)
    try:
        with advisory_lock(engine, REPOSITORY):
            gc = subprocess.Popen(
                [CARAVANE, "hub", "jobs", "gc", "--config", str(config), "--json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            # wait until its request for the lock is queued behind ours, in the server
            waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            deadline = time.monotonic() + 90
            with engine.connect() as c:
                while not c.scalar(text(waiting)):
                    assert gc.poll() is None, gc.communicate()
                    assert time.monotonic() < deadline, "hub jobs gc never asked for the lock"
                    time.sleep(0.2)
                    c.rollback()
            time.sleep(1)
            assert gc.poll() is None, gc.communicate()  # still waiting, nothing done
        out, err = gc.communicate(timeout=120)
    finally:
        engine.dispose()
    assert gc.returncode == 0, err
    assert json.loads(out)["results"]["gc"] == [0, 0]
