"""First publish and one-file republish of a large tree: time and peak RSS, against tar|zstd.

Issue 10 asks for ``caravane repo publish`` under 150 MB at 1,000,000 files whatever the
file count, and a one-file republish in seconds. Each command runs in its own child process
(``run_child``: its own peak RSS). The tree is made by ``bench.scale.make_tree`` unless one
is given (``--tree``, reused between runs: a republish appends a line to its middle file).

    python -m bench.publish_rss --files 100000 [--tree DIR] [--work DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from caravane.packs.files_cache import RACY_SECONDS

from .common import table
from .scale import CHANNEL, caravane, change_one_file, child, make_tree, shell


def measure(files: int, tree: Path | None, work: Path) -> dict[str, Any]:
    if tree is None:
        tree = make_tree(work / "tree", files)
        time.sleep(RACY_SECONDS + 0.1)  # past the files cache's racy window
    repo = work / "repo"
    cv = caravane()
    subprocess.run([*cv, "repo", "init", str(repo)], check=True, capture_output=True)
    r: dict[str, Any] = {"files": files}
    r["publish_s"], r["publish_rss"] = child(
        [*cv, "repo", "publish", str(repo), CHANNEL, str(tree)], "first publish"
    )
    r["tar_zstd_s"] = shell(f"tar -C {tree} -cf - . | zstd -3 -T0 -q -f -o {work}/a.tar.zst")
    change_one_file(tree, files)
    time.sleep(RACY_SECONDS + 0.1)
    r["republish_s"], r["republish_rss"] = child(
        [*cv, "repo", "publish", str(repo), CHANNEL, str(tree)], "republish"
    )
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--tree", type=Path, default=None, help="an existing tree of --files files")
    ap.add_argument("--work", type=Path, default=None, help="where the repository goes")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="caravane-publish-", dir=args.work))
    try:
        r = measure(args.files, args.tree, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mib = 1024 * 1024
    print(
        table(
            "repo publish: first and one-file republish",
            ["files", "publish s", "x tar|zstd", "publish MiB", "1-file republish s", "MiB"],
            [
                [
                    r["files"],
                    r["publish_s"],
                    r["publish_s"] / r["tar_zstd_s"],
                    r["publish_rss"] / mib,
                    r["republish_s"],
                    r["republish_rss"] / mib,
                ]
            ],
        )
    )
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
