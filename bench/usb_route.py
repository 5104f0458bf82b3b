"""A field agent's drive for three centres at different versions.

Bytes written to the drive by ``caravane usb prepare`` for centres holding nothing, the
previous release and the one before, against copying the latest full release with
``rsync -a``; prepare and import speeds in MB/s beside rsync's copy of the same data.

    python -m bench.usb_route [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from caravane.hub.service import Principal
from caravane.hub.usb import prepare_for_route
from caravane.node.agent import NodeAgent, import_drive_into_centre

from .common import start_hub, table


def _release(folder: Path, size: int, version: int) -> Path:
    """Mixed content; each version edits a tenth of the files and adds a few."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rnd = random.Random(1)
    n = 40
    per = size // n
    for i in range(n):
        data = bytearray(rnd.randbytes(per) if i % 2 else (f"leçon {i} " * (per // 9)).encode())
        edits = random.Random(version * 1000 + i)
        if i % 10 < version - 1:
            for _ in range(5):
                at = edits.randrange(len(data))
                data[at : at + 100] = edits.randbytes(100)
        (folder / f"f{i:02d}.bin").write_bytes(bytes(data))
    for j in range(version - 1):
        (folder / f"new-{j}.bin").write_bytes(random.Random(j + 50).randbytes(per // 4))
    return folder


def run(size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="caravane-bench-usb-") as t:
        tmp = Path(t)
        hub, url, server = start_hub(tmp / "hub")
        try:
            centres = []
            for v in (1, 2, 3):
                hub.repo.publish("bench", _release(tmp / "src", size, v))
                if v < 3:
                    # a centre that stopped at version v (it reported it by drive or network)
                    doc = hub.register_centre(
                        Principal("bench", "admin"), {"name": f"at-v{v}", "channels": ["bench"]}
                    )
                    with hub.db.session() as s:
                        from caravane.hub.models import Centre as CentreRow

                        s.get(CentreRow, doc["node_id"]).installed = {"bench": v}
                    centres.append((doc, v))
            doc0 = hub.register_centre(
                Principal("bench", "admin"), {"name": "new", "channels": ["bench"]}
            )
            centres.insert(0, (doc0, 0))
            latest_size = sum(p.stat().st_size for p in (tmp / "src").iterdir())

            drive = tmp / "drive"
            drive.mkdir()
            t0 = time.monotonic()
            res = prepare_for_route(hub, drive, names=["new", "at-v1", "at-v2"])
            prepare_s = time.monotonic() - t0
            written = sum(p.stat().st_size for p in drive.rglob("*") if p.is_file())
            # the usual case: the hub's job built these packs after the publish
            warm_drive = tmp / "drive-2"
            warm_drive.mkdir()
            t0 = time.monotonic()
            prepare_for_route(hub, warm_drive, names=["new", "at-v1", "at-v2"])
            warm_s = time.monotonic() - t0

            rs = tmp / "rsync-drive"
            t0 = time.monotonic()
            subprocess.run(["rsync", "-a", str(tmp / "src") + "/", str(rs) + "/"], check=True)
            rsync_s = time.monotonic() - t0

            # import at the centre holding nothing (the biggest job)
            node = NodeAgent.init(tmp / "centre", doc0, upstreams=[], offline=True)
            node.config.durable = False
            t0 = time.monotonic()
            out = import_drive_into_centre(node, drive)
            import_s = time.monotonic() - t0
            assert out["ok"], out
        finally:
            server.stop()
    return {
        "release_bytes": latest_size,
        "drive_bytes": written,
        "naive_bytes": latest_size,
        "naive_per_centre_bytes": 3 * latest_size,
        "packs": len(res.written),
        "prepare_mb_s": latest_size / prepare_s / 1e6,
        "prepare_s": prepare_s,
        "prepare_warm_mb_s": latest_size / warm_s / 1e6,
        "import_mb_s": latest_size / import_s / 1e6,
        "rsync_mb_s": latest_size / rsync_s / 1e6,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    r = run(60_000_000 if args.quick else 200_000_000)
    print(
        table(
            "USB drive for three centres (holding nothing, v1, v2; latest is v3)",
            ["what", "bytes on the drive", "vs latest release"],
            [
                [
                    "caravane usb prepare",
                    f"{r['drive_bytes'] / 1e6:.1f} MB",
                    f"{r['drive_bytes'] / r['release_bytes']:.2f}x",
                ],
                ["rsync -a of the latest release", f"{r['release_bytes'] / 1e6:.1f} MB", "1.00x"],
                ["a copy per centre", f"{r['naive_per_centre_bytes'] / 1e6:.1f} MB", "3.00x"],
            ],
        )
    )
    print()
    print(
        table(
            "Speed (MB of the latest release per second)",
            [
                "usb prepare (packs built now)",
                "usb prepare (packs prebuilt)",
                "usb import",
                "rsync -a",
            ],
            [
                [
                    f"{r['prepare_mb_s']:.1f}",
                    f"{r['prepare_warm_mb_s']:.1f}",
                    f"{r['import_mb_s']:.1f}",
                    f"{r['rsync_mb_s']:.1f}",
                ]
            ],
        )
    )
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return r


if __name__ == "__main__":
    main()
