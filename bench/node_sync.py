"""Node sync over a bad link, and node memory on a big channel.

1. Through the fault-injecting proxy at 2 Mbit/s with a cut every 5 MB: Caravane's goodput
   as a share of the link rate and the bytes fetched again per cut, side by side with
   ``rsync --partial`` (rerun after each cut, as an operator's script would) through the
   same proxy and the same cuts.
2. Peak memory (RSS) of ``caravane node sync`` bringing a fresh centre a channel of 5 GB
   over loopback, and its throughput.

    python -m bench.node_sync [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from caravane.hub.service import Principal
from caravane.node.agent import NodeAgent
from caravane.node.config import UpstreamConfig
from tests.support.faultproxy import FaultProxy

from .common import free_port, run_child, start_hub, table, write_random_files

RATE = 2_000_000 / 8  # 2 Mbit/s in bytes per second


def _node(hub: Any, url: str, where: Path, name: str) -> NodeAgent:
    doc = hub.register_centre(Principal("bench", "admin"), {"name": name, "channels": ["bench"]})
    n = NodeAgent.init(
        where / name, doc, upstreams=[UpstreamConfig("hub", "http", url)], offline=True
    )
    n.config.durable = False
    n.config.timeout_seconds = 10
    n.config.save()
    return n


def bad_link(tmp: Path, size: int, cut_every: int) -> dict[str, Any]:
    hub, url, server = start_hub(tmp / "hub")
    try:
        src = write_random_files(tmp / "src", size, 3, seed=1)
        hub.repo.publish("bench", src)
        # what a clean sync costs (pack built once on the hub, as after a publish)
        ref = _node(hub, url, tmp, "reference")
        clean = ref.sync().received["hub"]

        proxy = FaultProxy(int(url.rsplit(":", 1)[1]))
        proxy.faults.throttle = RATE
        proxy.faults.cut_every = cut_every
        n = _node(hub, proxy.url, tmp, "centre")
        start = time.monotonic()
        r = n.sync(retry_base=0.2)
        took = time.monotonic() - start
        assert r.complete, r.to_dict()
        proxy.close()
        caravane = {
            "payload": clean,
            "wire": proxy.down_bytes,
            "seconds": took,
            "cuts": proxy.cuts,
            "goodput_share": clean / took / RATE,
            "refetched_per_cut": (proxy.down_bytes - clean) / max(1, proxy.cuts),
        }
    finally:
        server.stop()
    return {"caravane": caravane, "rsync": rsync_bad_link(tmp, src, cut_every)}


def rsync_bad_link(tmp: Path, src: Path, cut_every: int) -> dict[str, Any]:
    if shutil.which("rsync") is None:
        return {"error": "rsync not installed"}
    port = free_port()
    conf = tmp / "rsyncd.conf"
    conf.write_text(
        f"use chroot = no\nlog file = {tmp / 'rsyncd.log'}\npid file = {tmp / 'rsyncd.pid'}\n"
        f"[data]\npath = {src}\nread only = yes\n"
    )
    daemon = subprocess.Popen(
        [
            "rsync",
            "--daemon",
            "--no-detach",
            f"--config={conf}",
            f"--port={port}",
            "--address=127.0.0.1",
        ]
    )
    time.sleep(0.5)
    proxy = FaultProxy(port)
    proxy.faults.throttle = RATE
    proxy.faults.cut_every = cut_every
    dest = tmp / "rsync-dest"
    dest.mkdir()
    payload = sum(p.stat().st_size for p in src.iterdir())
    start = time.monotonic()
    runs = 0
    try:
        while runs < 200:
            runs += 1
            rc = subprocess.run(
                [
                    "rsync",
                    "-a",
                    "--partial",
                    "--timeout=30",
                    f"rsync://127.0.0.1:{proxy.port}/data/",
                    str(dest) + "/",
                ],
                capture_output=True,
            ).returncode
            if rc == 0:
                break
        took = time.monotonic() - start
    finally:
        proxy.close()
        daemon.terminate()
        daemon.wait()
    return {
        "payload": payload,
        "wire": proxy.down_bytes,
        "seconds": took,
        "cuts": proxy.cuts,
        "runs": runs,
        "goodput_share": payload / took / RATE,
        "refetched_per_cut": (proxy.down_bytes - payload) / max(1, proxy.cuts),
    }


def big_channel(tmp: Path, size: int) -> dict[str, Any]:
    hub, url, server = start_hub(tmp / "hub-big")
    try:
        src = tmp / "big-src"
        # a mix: large incompressible files and many small text files
        write_random_files(src / "video", size * 9 // 10, max(1, size // (512 << 20)), seed=2)
        text = src / "texts"
        text.mkdir(parents=True)
        chunk = ("Leçon, exercice et corrigé. " * 40).encode()
        n_text = max(1, size // 10 // (256 << 10))
        for i in range(n_text):
            (text / f"t{i:05d}.txt").write_bytes(
                chunk * ((256 << 10) // len(chunk)) + str(i).encode()
            )
        t0 = time.monotonic()
        hub.repo.publish("bench", src)
        publish_s = time.monotonic() - t0
        shutil.rmtree(src)
        n = _node(hub, url, tmp, "big-centre")
        n.close()
        seconds, rss, rc = run_child(
            [
                sys.executable,
                "-m",
                "caravane",
                "node",
                "sync",
                "-d",
                str(tmp / "big-centre"),
                "--no-report",
            ]
        )
        if rc != 0:
            raise RuntimeError(f"node sync exited {rc}")
    finally:
        server.stop()
    return {
        "channel_bytes": size,
        "sync_seconds": seconds,
        "sync_mb_s": size / seconds / 1e6,
        "node_peak_rss": rss,
        "hub_publish_mb_s": size / publish_s / 1e6,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a minute or two")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument(
        "--big-gb", type=float, default=float(os.environ.get("CARAVANE_BENCH_NODE_GB", 5))
    )
    args = ap.parse_args(argv)
    link_size = 6_000_000 if args.quick else 15_000_000
    cut = 2_000_000 if args.quick else 5_000_000
    big = int((0.5 if args.quick else args.big_gb) * 1e9)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="caravane-bench-node-") as t:
        tmp = Path(t)
        out["bad_link"] = bad_link(tmp / "link", link_size, cut)
        out["big_channel"] = big_channel(tmp / "big", big)
    bl = out["bad_link"]
    rows = []
    for name in ("caravane", "rsync"):
        d = bl[name]
        if "error" in d:
            rows.append([name, d["error"], "", "", "", ""])
            continue
        rows.append(
            [
                "caravane node sync" if name == "caravane" else "rsync --partial (rerun)",
                f"{d['payload'] / 1e6:.1f} MB",
                f"{d['seconds']:.1f} s",
                d["cuts"],
                f"{d['goodput_share'] * 100:.1f} %",
                f"{d['refetched_per_cut'] / 1024:.1f} KiB",
            ]
        )
    print(
        table(
            f"Bad link: 2 Mbit/s, a cut every {cut / 1e6:.0f} MB",
            ["tool", "payload", "time", "cuts", "goodput / link rate", "re-fetched per cut"],
            rows,
        )
    )
    bc = out["big_channel"]
    print()
    print(
        table(
            "Big channel over loopback (fresh centre)",
            ["channel", "node sync", "node peak RSS", "hub publish"],
            [
                [
                    f"{bc['channel_bytes'] / 1e9:.1f} GB",
                    f"{bc['sync_mb_s']:.0f} MB/s",
                    f"{bc['node_peak_rss'] / 2**20:.0f} MiB",
                    f"{bc['hub_publish_mb_s']:.0f} MB/s",
                ]
            ],
        )
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
