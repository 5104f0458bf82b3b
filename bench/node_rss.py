"""Memory of a centre's node at rest: `caravane node run` idle, read from /proc.

A Raspberry Pi 4 with 2 GB shares its memory with the centre's desktop and browser; the
node's budget at rest is 80 MB resident. This sets a centre up with `caravane demo`, starts
`caravane node run` on it (its hub gone, as at an offline centre), waits for it to settle
and reads VmRSS and VmHWM of the process, and the modules it imported.

    .venv/bin/python -m bench.node_rss [--settle 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import free_port


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])  # kB
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--settle", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true", help="settle 8 s")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    settle = 8.0 if args.quick else args.settle
    env = os.environ | {"CARAVANE_LAYOUT": "local"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "demo"
        subprocess.run(
            [sys.executable, "-m", "caravane", "demo", "--dir", str(work), "--json"],
            check=True,
            capture_output=True,
            env=env,
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "caravane",
                "node",
                "run",
                "-d",
                str(work / "centre"),
                "--port",
                str(free_port()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
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
    result = {
        "settle_s": settle,
        "rss_mb": round(status["VmRSS"] / 1024, 1),
        "peak_rss_mb": round(status["VmHWM"] / 1024, 1),
        "anon_mb": round(status.get("RssAnon", 0) / 1024, 1),
        "budget_mb": 80,
    }
    print(
        f"node run at rest: RSS {result['rss_mb']} MB (peak {result['peak_rss_mb']} MB, "
        f"anonymous {result['anon_mb']} MB); budget {result['budget_mb']} MB"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
