"""What a centre spends switching to a release after a one-file change, by channel size.

Why this exists: a centre keeps the active release and one to roll back to; switching used to
build the new folder afresh, a hard link (plus a stat and a folder check) per unchanged file,
so a one-file update of a million-file library cost a million links. Activation now recycles
the folder of the release before the active one (node/activate.py) and touches only what
differs. This builds release 3 both ways on the same centre store, in the same run, next to
``cp -al`` of the active release (what an operator's script would do: hard-link everything,
then replace the changed file) and ``rsync -a --link-dest``.

    python -m bench.activation [--files 20000,100000] [--json out.json]
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

from caravane.node.activate import Releases
from caravane.packs.centre_store import CentreStore
from caravane.packs.hub_repository import HubRepository

from .common import table


def _tree(root: Path, n: int, changed: int | None) -> Path:
    if root.exists():
        shutil.rmtree(root)
    for i in range(n):
        p = root / f"d{i // 1000:04d}" / f"page-{i:07d}.html"
        p.parent.mkdir(parents=True, exist_ok=True)
        body = f"<p>page {i} {'texte ' * (i % 40)}</p>"
        p.write_text(body + (f" edit {changed}" if i == n // 2 and changed else ""))
    return root


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(n: int, work: Path) -> dict[str, Any]:
    hub = HubRepository.init(work / "hub")
    for v in (1, 2, 3):
        hub.publish("lib", _tree(work / "src", n, None if v == 1 else v))
    r: dict[str, Any] = {"files": n}
    out: dict[str, float] = {}
    for way in ("recycled", "afresh"):
        centre = work / f"centre-{way}"
        store = CentreStore.init(centre / "store", hub.path / "metadata/root.json")
        rel = Releases(centre / "releases", centre / "live", durable=True)
        for v in (1, 2):
            pack = work / f"p{v}.pack"
            if not pack.exists():
                hub.build_pack("lib", v - 1, v, pack)
            store.apply_pack(pack)
            rel.build(store, store.release("lib", v))
            rel.switch("lib", v)
        if not (work / "p3.pack").exists():
            hub.build_pack("lib", 2, 3, work / "p3.pack")
        store.apply_pack(work / "p3.pack")
        m = store.release("lib", 3)
        if way == "afresh":
            rel._recycle = lambda *a, **k: False  # type: ignore[method-assign]
        out[way] = _timed(lambda rel=rel, store=store, m=m: rel.build(store, m))
    r["recycled_s"], r["afresh_s"] = out["recycled"], out["afresh"]
    active = work / "centre-afresh/releases/lib/2"
    r["cp_al_s"] = _timed(
        lambda: subprocess.run(["cp", "-al", str(active), str(work / "cp-al")], check=True)
    )
    r["rsync_link_dest_s"] = _timed(
        lambda: subprocess.run(
            ["rsync", "-a", f"--link-dest={active}", f"{active}/", str(work / "rsync-ld")],
            check=True,
        )
    )
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", default="20000,100000")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = []
    for n in (int(x) for x in args.files.split(",")):
        with tempfile.TemporaryDirectory(prefix="caravane-bench-act-") as t:
            results.append(measure(n, Path(t)))
            print(f"{n:,} files done", flush=True)
    print(
        table(
            "Switching to a release after a one-file change (seconds)",
            [
                "files",
                "recycled (now)",
                "built afresh (before)",
                "ratio",
                "cp -al",
                "rsync --link-dest",
            ],
            [
                [
                    r["files"],
                    r["recycled_s"],
                    r["afresh_s"],
                    r["afresh_s"] / max(r["recycled_s"], 1e-9),
                    r["cp_al_s"],
                    r["rsync_link_dest_s"],
                ]
                for r in results
            ],
        )
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
