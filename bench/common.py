"""Shared pieces of the benchmarks: a hub on loopback, data, timing, tables."""

from __future__ import annotations

import os
import random
import resource
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from caravane.demo import ThreadedServer
from caravane.hub.app import make_app
from caravane.hub.config import HubConfig
from caravane.hub.db import upgrade
from caravane.hub.service import Hub
from caravane.packs.repository import Repository


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_hub(data: Path) -> tuple[Hub, str, ThreadedServer]:
    """A real hub (SQLite) on an ephemeral loopback port, in a thread of this process."""
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = HubConfig(data_dir=data, port=port, scheduler=False)
    Repository.init(cfg.repo_dir)
    upgrade(cfg.url)
    hub = Hub(cfg)
    server = ThreadedServer(make_app(cfg, hub, scheduler=False), port)
    return hub, f"http://127.0.0.1:{port}", server


def write_random_files(folder: Path, total: int, files: int, seed: int) -> Path:
    """Incompressible content (like video): compression cannot flatter the transfer."""
    folder.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    per = total // files
    for i in range(files):
        with open(folder / f"file-{i:03d}.bin", "wb") as fh:
            left = per
            while left:
                n = min(left, 1 << 20)
                fh.write(rnd.randbytes(n))
                left -= n
    return folder


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, int]:
    """Run a command; return (seconds, its own peak RSS in bytes, exit code)."""
    seconds, rss, code, _, _ = run_measured(cmd, env)
    return seconds, rss, code


def run_measured(
    cmd: list[str], env: dict[str, str] | None = None
) -> tuple[float, int, int, float, bytes]:
    """Run a command; return (seconds, its own peak RSS in bytes, exit code, CPU seconds of
    it and its children, its stderr).

    Linux keeps ``ru_maxrss`` across ``execve``, so a child forked straight from this (large)
    Python process would report our RSS; ``/usr/bin/time`` is a small process in between,
    and the figure it reports is the command's own.
    """
    with tempfile.TemporaryDirectory(prefix="caravane-rss-") as t:
        rss_file = Path(t) / "rss.txt"
        timer = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file)] if HAVE_TIME else []
        start = time.monotonic()
        proc = subprocess.Popen(
            [*timer, *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert proc.stderr is not None
        err = proc.stderr.read()  # drained as it runs: a full pipe would stall the command
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - start
        cpu = usage.ru_utime + usage.ru_stime
        measured = rss_file.read_text().split() if rss_file.exists() else []
        rss = int(measured[-1]) * 1024 if HAVE_TIME and measured else usage.ru_maxrss * 1024
        return seconds, rss, code, cpu, err


HAVE_TIME = os.path.exists("/usr/bin/time")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.monotonic()
    out = fn()
    return time.monotonic() - start, out


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    lines = [title, "  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def self_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
