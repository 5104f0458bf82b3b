"""One-file pack build at the size of a library: with the similarity index, without it.

Why this exists: choosing delta bases used to read and sketch every file of release A, so
building the pack A->B for a one-file change cost as much as the whole channel (issue 10).
The sketches now persist in ``<repo>/index/similarity.sqlite`` (packs/similarity.py). This
benchmark builds the same pack, in child processes one after the other in one run:

- ``before``: the code of ``--baseline-rev`` (git archive of its ``caravane/``), if given;
- ``warm``: this code, with the index as publishing left it (the usual case);
- ``cold``: this code, index removed (the first build after an upgrade: it reads all of A
  once and writes the index);

and reports each one's seconds, peak RSS and pack bytes (which must all be equal), plus the
planning step alone (manifests loaded, ``plan_groups`` only), which is the part the index
changes; the rest (manifest verification, the manifest's own delta) is the same code.

    python -m bench.pack_build [--files 10000] [--baseline-rev HEAD~1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import run_child, table
from .scale import CHANNEL, caravane, change_one_file, make_tree

ROOT = Path(__file__).resolve().parent.parent

BUILD = """
import sys
from pathlib import Path
from caravane.packs.hub_repository import HubRepository
HubRepository(Path(sys.argv[1])).build_pack(sys.argv[2], 1, 2, Path(sys.argv[3]))
"""

PLAN = """
import inspect, sys, time
from pathlib import Path
from caravane.packs import delta
from caravane.packs.hub_repository import HubRepository
repo = HubRepository(Path(sys.argv[1]))
snap = repo.snapshot()
old, new = snap.manifest(sys.argv[2], 1), snap.manifest(sys.argv[2], 2)
start = time.monotonic()
if "sketches" in inspect.signature(delta.plan_groups).parameters:
    from caravane.packs.similarity import open_index
    index = open_index(repo.path)
    groups = list(delta.plan_groups(old, new, repo.store.read, index))
else:
    groups = list(delta.plan_groups(old, new, repo.store.read))
Path(sys.argv[3]).write_text(str(time.monotonic() - start))
"""


def _child(code: str, args: list[str], pythonpath: Path) -> tuple[float, int]:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    # -P: not the current folder first on sys.path (it would shadow PYTHONPATH)
    seconds, rss, rc = run_child([sys.executable, "-P", "-c", code, *args], env)
    if rc != 0:
        raise RuntimeError(f"child failed ({rc}): {args}")
    return seconds, rss


def _drop_index(repo: Path) -> None:
    shutil.rmtree(repo / "index", ignore_errors=True)


def measure(files: int, work: Path, baseline: Path | None) -> list[list[object]]:
    tree = make_tree(work / "tree", files)
    repo = work / "repo"
    cv = caravane()
    subprocess.run([*cv, "repo", "init", str(repo)], check=True, capture_output=True)
    start = time.monotonic()
    subprocess.run(
        [*cv, "repo", "publish", str(repo), CHANNEL, str(tree)], check=True, capture_output=True
    )
    publish_s = time.monotonic() - start
    change_one_file(tree, files)
    subprocess.run(
        [*cv, "repo", "publish", str(repo), CHANNEL, str(tree)], check=True, capture_output=True
    )
    index_bytes = sum(p.stat().st_size for p in (repo / "index").glob("*"))
    print(
        f"{files:,} files: first publish {publish_s:.1f} s, index {index_bytes:,} bytes",
        file=sys.stderr,
    )

    runs: list[tuple[str, Path, bool]] = [("warm index", ROOT, False)]
    if baseline is not None:
        runs.append(("before (no index)", baseline, False))
    runs += [("cold index (rebuilt)", ROOT, True), ("warm index again", ROOT, False)]
    rows: list[list[object]] = []
    digests = set()
    for label, code_root, cold in runs:
        if cold:
            _drop_index(repo)
        pack = work / f"{len(rows)}.pack"
        seconds, rss = _child(BUILD, [str(repo), CHANNEL, str(pack)], code_root)
        data = b"".join(p.read_bytes() for p in sorted(work.glob(f"{len(rows)}.pack*")))
        digests.add(hashlib.sha256(data).hexdigest())
        if cold:
            _drop_index(repo)
        timing = work / "plan.txt"
        _, plan_rss = _child(PLAN, [str(repo), CHANNEL, str(timing)], code_root)
        plan_inner = float(timing.read_text())
        rows.append(
            [files, label, seconds, rss / (1 << 20), len(data), plan_inner, plan_rss / (1 << 20)]
        )
    if len(digests) != 1:
        raise RuntimeError(f"the builds made different packs: {digests}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", default="10000", help="comma-separated file counts")
    ap.add_argument("--baseline-rev", help="git revision whose code is the 'before' run")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = ap.parse_args()
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="caravane-packbuild-") as t:
        baseline = None
        if args.baseline_rev:
            baseline = Path(t) / "baseline"
            baseline.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.baseline_rev, "caravane"],
                check=True,
                capture_output=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        for n in [int(s) for s in args.files.split(",")]:
            work = (args.keep or Path(t)) / str(n)
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            rows += measure(n, work, baseline)
    print(
        table(
            "One-file pack build (child processes, one run; same pack bytes in every row)",
            [
                "files",
                "code",
                "build s",
                "build RSS MiB",
                "pack bytes",
                "plan_groups s",
                "plan-only RSS MiB",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
