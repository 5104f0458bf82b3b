"""Issue 13: a full or read-only disk at a centre ends in one line, loses nothing, and the
next pass resumes by itself. The disk is a real tmpfs of a few megabytes (needs root to
mount; skipped with the reason otherwise)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from caravane.node.agent import NodeAgent
from caravane.node.service import AgentService
from tests.node.conftest import World, content


@contextlib.contextmanager
def small_disk(path: Path, size: str = "8m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of the disk with one file."""
    filler = disk / "filler.bin"
    with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):
        block = b"\0" * 4096
        while True:
            fh.write(block)
    return filler


def init_centre(world: World, tmp_path: Path, where: Path, name: str) -> Path:
    """`caravane node init` of a centre enrolled at the world's hub, its data in ``where``."""
    enrol = tmp_path / "enrol.json"
    enrol.write_text(json.dumps(world.enrolment(name) | {"hub_url": world.rh.url}))
    assert run("node", "init", str(where), "--enrolment", str(enrol)).returncode == 0
    return where


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "caravane", *args], capture_output=True, text=True, timeout=120
    )


def test_disk_full_ends_in_one_line_and_the_next_pass_resumes(world: World, tmp_path: Path) -> None:
    world.publish(content(1, big=200_000, files=2))
    with small_disk(tmp_path / "disk") as disk:
        d = init_centre(world, tmp_path, disk / "centre", "Centre Sud")
        n = NodeAgent.open(d)  # the agent was running before the disk filled up
        n.config.margin_mb = 1  # the disk is 8 MB: keep the usual free margin out of it
        n.config.save()
        service = AgentService(n)
        filler = fill(disk)

        out = run("node", "report", "-d", str(d))
        assert out.returncode != 0
        assert "Traceback" not in out.stderr, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "full" in lines[0]
        assert "free some space" in lines[0] and "run it again" in lines[0]

        out = run("node", "sync", "-d", str(d))
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        assert "full" in out.stdout + out.stderr

        # the agent's loop: one line in the log, no exception, nothing stops
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logging.getLogger("caravane.node.agent").addHandler(handler)
        try:
            service.sync_job()
        finally:
            logging.getLogger("caravane.node.agent").removeHandler(handler)
        assert any("full" in r.getMessage() for r in records), records
        assert not any(r.exc_info for r in records)

        # space comes back: the next pass syncs and the reports reach the hub
        os.unlink(filler)
        service.sync_job()
        assert n.releases.active("lecons") == 1
        assert n.state.unsent_reports() == []
        row = next(r for r in world.rh.hub.fleet() if r["name"] == "Centre Sud")
        assert row["installed"] == {"lecons": 1}
        n.close()


def test_read_only_disk_ends_in_one_line(world: World, tmp_path: Path) -> None:
    world.publish(content(1, big=100_000, files=1))
    with small_disk(tmp_path / "disk") as disk:
        d = init_centre(world, tmp_path, disk / "centre", "Centre Est")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        out = run("node", "report", "-d", str(d))
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "read-only" in lines[0], lines
