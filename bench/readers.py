"""The hub-side readers of a release at scale: time and peak RSS, one command each.

Issue 10 (outcomes 4 and 6): checkout, verify, pack build, USB prepare and collection must
stay under 150 MB whatever the file count, and a pack for a one-file change must cost what
the change costs. This builds a channel of N generated files (``bench.scale.make_tree``)
published twice (one file changed), then runs each reader in its own child process:

- ``repo checkout`` (materialise with verification) against ``zstd -d | tar -x``;
- ``repo verify`` (every manifest and object);
- ``pack build --from 1 --to 2`` (a one-file change);
- ``usb prepare --repo`` for one centre holding version 1;
- collection (``HubRepository.collect_garbage``, after ``retain`` keeps version 2 only).

    python -m bench.readers --files 100000 [--keep DIR] [--reuse DIR] [--json out.json]

``--reuse DIR`` measures a fixture a previous ``--keep DIR`` run left (publishing 1M files
takes a while); ``CARAVANE_BENCH_PYTHONPATH`` runs the commands against another checkout of
the code (the "before" figures).
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

from caravane.packs.files_cache import RACY_SECONDS

from .common import run_child, table
from .scale import CHANNEL, caravane, change_one_file, make_tree, shell


def _env() -> dict[str, str]:
    env = dict(os.environ)
    other = os.environ.get("CARAVANE_BENCH_PYTHONPATH")
    if other:
        env["PYTHONPATH"] = other
    return env


def _cv() -> list[str]:
    if os.environ.get("CARAVANE_BENCH_PYTHONPATH"):
        return [sys.executable, "-m", "caravane"]
    return caravane()


def child(cmd: list[str], what: str) -> tuple[float, int]:
    seconds, rss, code = run_child(cmd, env=_env())
    if code != 0:
        raise RuntimeError(f"{what} failed (exit {code}): {' '.join(cmd)}")
    return seconds, rss


def build_fixture(files: int, work: Path) -> Path:
    """A repository with versions 1 and 2 of CHANNEL (one file changed), and b.tar.zst."""
    tree = make_tree(work / "tree", files)
    time.sleep(RACY_SECONDS + 0.1)
    repo = work / "repo"
    cv = _cv()
    subprocess.run([*cv, "repo", "init", str(repo)], check=True, env=_env())
    subprocess.run([*cv, "repo", "publish", str(repo), CHANNEL, str(tree)], check=True, env=_env())
    change_one_file(tree, files)
    subprocess.run([*cv, "repo", "publish", str(repo), CHANNEL, str(tree)], check=True, env=_env())
    shell(f"tar -C {tree} -cf - . | zstd -3 -T0 -q -f -o {work}/b.tar.zst")
    shutil.rmtree(tree)
    return repo


def measure(files: int, work: Path) -> dict[str, Any]:
    repo = work / "repo"
    cv = _cv()
    r: dict[str, Any] = {"files": files}
    out = work / "checkout"
    shutil.rmtree(out, ignore_errors=True)
    r["checkout_s"], r["checkout_rss"] = child(
        [*cv, "repo", "checkout", str(repo), CHANNEL, str(out)], "checkout"
    )
    shutil.rmtree(out, ignore_errors=True)
    untar = work / "untar"
    shutil.rmtree(untar, ignore_errors=True)
    untar.mkdir()
    r["untar_s"] = shell(f"zstd -d -q -c {work}/b.tar.zst | tar -C {untar} -xf -")
    shutil.rmtree(untar, ignore_errors=True)
    r["verify_s"], r["verify_rss"] = child([*cv, "repo", "verify", str(repo)], "verify")
    pack = work / "1-2.pack"
    for p in work.glob("1-2.pack*"):
        p.unlink()
    r["pack_build_s"], r["pack_build_rss"] = child(
        [*cv, "pack", "build", str(repo), CHANNEL, str(pack), "--from", "1", "--to", "2"],
        "pack build",
    )
    r["pack_bytes"] = sum(p.stat().st_size for p in work.glob("1-2.pack*"))
    drive = work / "drive"
    shutil.rmtree(drive, ignore_errors=True)
    shutil.rmtree(repo / "packs", ignore_errors=True)  # build it, not copy a cached one
    drive.mkdir()
    r["usb_prepare_s"], r["usb_prepare_rss"] = child(
        [*cv, "usb", "prepare", str(drive), "--repo", str(repo), "--centre", f"c1={CHANNEL}:1"],
        "usb prepare",
    )
    shutil.rmtree(drive, ignore_errors=True)
    # collection on a copy whose version 1 is dropped (the fixture stays reusable)
    gc_repo = work / "repo-gc"
    shutil.rmtree(gc_repo, ignore_errors=True)
    subprocess.run(["cp", "-al", str(repo), str(gc_repo)], check=True)
    keys = work / "repo-keys"
    gc_keys = work / "repo-gc-keys"
    shutil.rmtree(gc_keys, ignore_errors=True)
    shutil.copytree(keys, gc_keys)
    for seg in (gc_repo / "segments").glob("*"):
        if seg.is_file():  # the index and segments are written: copies, not links
            data = seg.read_bytes()
            seg.unlink()
            seg.write_bytes(data)
    code = (
        "import sys; from caravane.packs.hub_repository import HubRepository as H; "
        f"h = H(sys.argv[1]); h.retain({CHANNEL!r}, 1); print(h.collect_garbage())"
    )
    r["gc_s"], r["gc_rss"] = child([sys.executable, "-c", code, str(gc_repo)], "collection")
    shutil.rmtree(gc_repo, ignore_errors=True)
    shutil.rmtree(gc_keys, ignore_errors=True)
    return r


def report(results: list[dict[str, Any]]) -> str:
    rows: list[list[Any]] = []
    for r in results:
        n = f"{r['files']:,}"
        rows.append(
            [n, "repo checkout", f"{r['checkout_s']:.1f}", f"{r['checkout_rss'] / 1e6:.0f}"]
        )
        rows.append([n, "zstd -d | tar -x", f"{r['untar_s']:.1f}", ""])
        rows.append([n, "repo verify", f"{r['verify_s']:.1f}", f"{r['verify_rss'] / 1e6:.0f}"])
        rows.append(
            [n, "pack build 1->2", f"{r['pack_build_s']:.1f}", f"{r['pack_build_rss'] / 1e6:.0f}"]
        )
        rows.append(
            [n, "usb prepare", f"{r['usb_prepare_s']:.1f}", f"{r['usb_prepare_rss'] / 1e6:.0f}"]
        )
        rows.append([n, "collection", f"{r['gc_s']:.1f}", f"{r['gc_rss'] / 1e6:.0f}"])
    return table("hub-side readers", ["files", "command", "seconds", "peak RSS MB"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--keep", type=Path, help="build the fixture here and keep it")
    ap.add_argument("--reuse", type=Path, help="measure the fixture a --keep run left here")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.reuse:
        work = args.reuse
    else:
        work = args.keep or Path(tempfile.mkdtemp(prefix="caravane-readers-"))
        work.mkdir(parents=True, exist_ok=True)
        build_fixture(args.files, work)
    try:
        results = [measure(args.files, work)]
    finally:
        if not (args.keep or args.reuse):
            shutil.rmtree(work, ignore_errors=True)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
