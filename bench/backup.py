"""Backup and restore of a hub, against what an operator would do by hand (tar, cp -al).

Builds a hub (SQLite) whose channel has FILES files of 4 KiB plus a few large ones, then
times, each in its own process (peak RSS is the command's own):

- ``caravane hub backup`` (hard links: same file system) and ``--copy``;
- ``caravane hub restore`` of the linked backup and of the copied one;
- ``tar -cf`` of the data folder and ``cp -al`` of it: faster, but neither is consistent
  while the hub publishes, and neither checks anything on the way back.

    python -m bench.backup [--files 20000] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from caravane.hub.config import HubConfig
from caravane.hub.db import upgrade
from caravane.packs.hub_repository import HubRepository

from .common import run_child, table, write_random_files

CARAVANE = str(Path(sys.executable).parent / "caravane")


def build_hub(data: Path, files: int) -> Path:
    data.mkdir(parents=True)
    cfg = HubConfig(data_dir=data, scheduler=False)
    HubRepository.init(cfg.repo_dir, root_key_out=data.parent / "root.pem")
    upgrade(cfg.url)
    (data / "hub.toml").write_text(cfg.to_toml(), encoding="utf-8")
    src = data.parent / "src"
    small = src / "pages"
    small.mkdir(parents=True)
    for i in range(files):
        (small / f"page-{i:06d}.html").write_bytes(f"<p>page {i}</p>".encode() * 280)
    write_random_files(src / "media", 64 * 1024 * 1024, 4, seed=1)
    subprocess.run(
        [CARAVANE, "repo", "publish", str(cfg.repo_dir), "lecons", str(src)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return data / "hub.toml"


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", "--count-links", str(path)], capture_output=True, text=True)
    return int(out.stdout.split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true", help="2,000 files")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    files = 2_000 if args.quick else args.files
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="caravane-bench-backup-") as tmp:
        t = Path(tmp)
        config = build_hub(t / "hub", files)
        size = du(t / "hub")
        runs = [
            ("caravane hub backup (hard links)", [CARAVANE, "hub", "backup", str(t / "b1"),
                                                  "--config", str(config)], t / "b1"),
            ("caravane hub backup --copy", [CARAVANE, "hub", "backup", str(t / "b2"),
                                            "--config", str(config), "--copy"], t / "b2"),
            ("caravane hub restore (linked backup)", [CARAVANE, "hub", "restore", str(t / "b1"),
                                                      "--data", str(t / "r1")], t / "r1"),
            ("caravane hub restore (copied backup)", [CARAVANE, "hub", "restore", str(t / "b2"),
                                                      "--data", str(t / "r2")], t / "r2"),
            ("tar -cf data folder", ["tar", "-cf", str(t / "hub.tar"), "-C", str(t), "hub"],
             t / "hub.tar"),
            ("cp -al data folder", ["cp", "-al", str(t / "hub"), str(t / "cpal")], t / "cpal"),
        ]  # fmt: skip
        for name, cmd, out in runs:
            seconds, rss, code = run_child(cmd)
            if code != 0:
                raise SystemExit(f"{name} failed with exit code {code}")
            rows.append([name, seconds, rss // (1024 * 1024), size // (1024 * 1024)])
            _ = out
        shutil.rmtree(t / "cpal", ignore_errors=True)
    print(
        table(
            f"hub backup and restore: {files:,} small files + 64 MiB of media",
            ["what", "seconds", "peak RSS MiB", "hub MiB"],
            rows,
        )
    )
    if args.json:
        doc = [dict(zip(["what", "seconds", "rss_mib", "hub_mib"], r, strict=True)) for r in rows]
        args.json.write_text(json.dumps({"files": files, "runs": doc}, indent=2))


if __name__ == "__main__":
    main()
