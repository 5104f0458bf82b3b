"""A centre's node on a channel of a national library's size: time and peak RSS.

Issue 10 outcome 6: a node's sync stays under 150 MB whatever the file count. Three passes
of ``caravane node sync`` (each its own child process, its peak RSS read by
``bench/common.py``'s ``run_child``), against a folder mirror holding the hub's repository
and its packs:

1. **first sync**: a fresh centre takes version 1 (pack 0->1, verified, activated, indexed);
2. **one-file update**: one file changed and republished (version 2), the centre takes the
   pack 1->2 (the manifest's document and its changed pieces), then activates;
3. **second update**: the same again (version 3); this activation recycles version 1's
   folder, which the centre drops after it, and touches only what changed.

Trees come from ``bench/scale.py``'s ``make_tree`` (text-like files of 200 B-4 KB, folders of
1,000); publishing them is the hub's cost, outside the figures.

    python -m bench.node_scale [--sizes 100000,1000000] [--json out.json] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from caravane.hub.service import Principal
from caravane.node.agent import NodeAgent
from caravane.node.config import UpstreamConfig
from caravane.packs.files_cache import RACY_SECONDS

from .common import run_child, start_hub, table
from .scale import CHANNEL, caravane, change_one_file, make_tree


def _sync(centre: Path) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "caravane", "node", "sync", "-d", str(centre), "--no-report"]
    seconds, rss, code = run_child(cmd)
    if code != 0:
        raise RuntimeError(f"node sync exited {code}: {' '.join(cmd)}")
    return seconds, rss


def _child(cmd: list[str]) -> tuple[float, int]:
    seconds, rss, code = run_child(cmd)
    if code != 0:
        raise RuntimeError(f"exited {code}: {' '.join(cmd)}")
    return seconds, rss


def _publish(repo: Path, tree: Path) -> tuple[float, int]:
    return _child([*caravane(), "repo", "publish", str(repo), CHANNEL, str(tree)])


def _pack(repo: Path, base: int, target: int) -> tuple[float, int]:
    out = repo / "packs" / CHANNEL / f"{base}-{target}.pack"
    out.parent.mkdir(parents=True, exist_ok=True)
    return _child(
        [
            *caravane(),
            "pack",
            "build",
            str(repo),
            CHANNEL,
            str(out),
            "--from",
            str(base),
            "--to",
            str(target),
        ]
    )


def measure(files: int, work: Path) -> dict[str, Any]:
    hub_costs: dict[str, Any] = {}
    hub, _url, server = start_hub(work / "hub")
    try:
        repo = hub.config.repo_dir
        tree = make_tree(work / "tree", files)
        time.sleep(RACY_SECONDS + 0.1)
        hub_costs["publish_s"], hub_costs["publish_rss"] = _publish(repo, tree)
        hub_costs["pack_s"], hub_costs["pack_rss"] = _pack(repo, 0, 1)
        doc = hub.register_centre(
            Principal("bench", "admin"), {"name": "centre", "channels": [CHANNEL]}
        )
    finally:
        server.stop()
    centre = work / "centre"
    node = NodeAgent.init(
        centre, doc, upstreams=[UpstreamConfig("mirror", "folder", str(repo), 0)], offline=True
    )
    node.config.durable = False
    node.config.save()
    node.close()
    r: dict[str, Any] = {"files": files, **hub_costs}
    r["first_s"], r["first_rss"] = _sync(centre)

    # the first update links every unchanged file from version 1's folder; the second
    # recycles version 1's folder (the one a centre drops after it) and touches one file
    for version, key in ((2, "update"), (3, "again")):
        change_one_file(tree, files)
        time.sleep(RACY_SECONDS + 0.1)
        r[f"republish{version}_s"], r[f"republish{version}_rss"] = _publish(repo, tree)
        r[f"pack{version}_s"], r[f"pack{version}_rss"] = _pack(repo, version - 1, version)
        r[f"{key}_s"], r[f"{key}_rss"] = _sync(centre)
    shutil.rmtree(tree)
    live = centre / "live" / CHANNEL
    r["served_files"] = sum(1 for p in live.resolve().rglob("*") if p.is_file())
    return r


def _cost(r: dict[str, Any], key: str) -> str:
    return f"{r[key + '_s']:.1f} s, {r[key + '_rss'] / 1e6:.0f} MB"


def rows_of(results: list[dict[str, Any]]) -> str:
    hub = table(
        "hub side (time, peak RSS)",
        ["files", "first publish", "pack 0->1", "one-file republish", "pack 1->2"],
        [
            [
                f"{r['files']:,}",
                _cost(r, "publish"),
                _cost(r, "pack"),
                _cost(r, "republish2"),
                _cost(r, "pack2"),
            ]
            for r in results
        ],
    )
    return (
        hub
        + "\n"
        + table(
            "node sync (time, peak RSS)",
            ["files", "first sync", "one-file update", "second update (recycled)"],
            [
                [
                    f"{r['files']:,}",
                    f"{r['first_s']:.1f} s, {r['first_rss'] / 1e6:.0f} MB",
                    f"{r['update_s']:.1f} s, {r['update_rss'] / 1e6:.0f} MB",
                    f"{r['again_s']:.1f} s, {r['again_rss'] / 1e6:.0f} MB",
                ]
                for r in results
            ],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", type=Path, help="where the trees go (deleted after)")
    args = parser.parse_args()
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        work = Path(tempfile.mkdtemp(prefix=f"node-scale-{n}-", dir=args.work))
        try:
            results.append(measure(n, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(rows_of(results[-1:]), flush=True)
    print(rows_of(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
