"""Memory of a centre's node at rest: `caravane node run` idle, read from /proc.

A Raspberry Pi 4 with 2 GB shares its memory with the centre's desktop and browser; the
node's budget at rest is 80 MB resident (issue 14). Two figures, each the median of
``--runs`` fresh processes:

- **start-up**: `caravane node run` on an enrolled centre whose sync window is closed, so
  no pass has run: what the portal, the scheduler and the state database hold.
- **after a sync**: the same centre with its window open and its hub up; the node's first
  pass (two seconds after the start) fetches a release of a few MB, verifies it, switches to
  it and sends its report; the figure is read once that is done and the node is idle again.
  This is the honest figure: a node spends its life between passes, holding whatever
  the last pass imported.

The hub runs in this process (SQLite, loopback); every node is its own child process.

    .venv/bin/python -m bench.node_rss [--runs 3] [--settle 8] [--env MALLOC_ARENA_MAX=2]
                                       [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import free_port, start_hub, write_random_files
from caravane.hub.service import Principal
from caravane.node.agent import NodeAgent
from caravane.node.config import NodeConfig

BUDGET_MB = 80
CHANNEL = "bench"


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])  # kB
    return out


def closed_window() -> str:
    """A one-minute sync window twelve hours away: the agent starts, but never syncs."""
    start = datetime.now() + timedelta(hours=12)
    end = start + timedelta(minutes=1)
    return f"{start:%H:%M}-{end:%H:%M}"


def pass_done(db: Path) -> bool:
    """The first pass switched to a release and the hub took its report."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as c:
            (active,) = c.execute("SELECT COUNT(*) FROM activations").fetchone()
            (sent,) = c.execute(
                "SELECT COUNT(*) FROM report_queue WHERE sent_at IS NOT NULL"
            ).fetchone()
            return bool(active and sent)
    except sqlite3.Error:
        return False


def node_rss(centre: Path, settle: float, wait_pass: bool, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "caravane",
            "node",
            "run",
            "-d",
            str(centre),
            "--port",
            str(free_port()),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        started = time.monotonic()
        if wait_pass:
            while not pass_done(centre / "node.db"):
                if proc.poll() is not None:
                    raise SystemExit(f"node run exited with {proc.returncode}")
                if time.monotonic() - started > 120:
                    raise SystemExit("the node's first sync pass did not finish in 120 s")
                time.sleep(0.2)
        pass_s = time.monotonic() - started
        time.sleep(settle)
        if proc.poll() is not None:
            raise SystemExit(f"node run exited with {proc.returncode}")
        status = proc_status(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "rss_mb": status["VmRSS"] / 1024,
        "peak_mb": status["VmHWM"] / 1024,
        "anon_mb": status.get("RssAnon", 0) / 1024,
        "pass_s": pass_s if wait_pass else None,
    }


def one_run(tmp: Path, settle: float, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    hub, url, server = start_hub(tmp / "hub")
    try:
        src = write_random_files(tmp / "src", 4 << 20, 8, seed=1)
        (src / "index.html").write_text("<h1>Bienvenue</h1>\n" * 2000, encoding="utf-8")
        hub.repo.publish(CHANNEL, src)
        doc = hub.register_centre(
            Principal("bench", "admin"), {"name": "centre", "channels": [CHANNEL]}
        )
        centre = tmp / "centre"
        NodeAgent.init(centre, doc).close()  # enrolled with the hub, nothing fetched yet

        cfg = NodeConfig.load(centre)
        cfg.windows = [closed_window()]
        cfg.save()
        startup = node_rss(centre, settle, wait_pass=False, env=env)

        cfg.windows = []
        cfg.save()
        synced = node_rss(centre, settle, wait_pass=True, env=env)
        return {"startup": startup, "after_sync": synced}
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=8.0, help="seconds idle before reading")
    ap.add_argument("--quick", action="store_true", help="one run, settle 4 s")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the node")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    runs, settle = (1, 4.0) if args.quick else (args.runs, args.settle)
    env = os.environ | {"CARAVANE_LAYOUT": "local"}
    env |= dict(e.split("=", 1) for e in args.env)
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="caravane-rss-") as t:
            results.append(one_run(Path(t), settle, env))

    def med(phase: str, key: str) -> float:
        return round(statistics.median(r[phase][key] for r in results), 1)

    out: dict[str, Any] = {"runs": runs, "settle_s": settle, "budget_mb": BUDGET_MB}
    out["env"] = args.env
    for phase in ("startup", "after_sync"):
        out[phase] = {k: med(phase, k) for k in ("rss_mb", "peak_mb", "anon_mb")}
        out[phase]["all_rss_mb"] = [round(r[phase]["rss_mb"], 1) for r in results]
    print(f"node run, median of {runs} (budget {BUDGET_MB} MB){' ' + ' '.join(args.env)}:")
    for phase, label in (("startup", "at rest after start-up"), ("after_sync", "after a sync")):
        p = out[phase]
        print(
            f"  {label:24s} RSS {p['rss_mb']:5.1f} MB (runs {p['all_rss_mb']}), "
            f"peak {p['peak_mb']:5.1f} MB, anonymous {p['anon_mb']:5.1f} MB"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
