"""Costs at the size of a national library: many small files, one-file changes.

Why this exists: a ministry publishes hundreds of thousands of files and changes a handful
every week. Principle 7 of the design says a one-file change must cost seconds at the hub
and about a kilobyte of metadata plus the delta at a centre, whatever the channel's size.
This benchmark measures how each cost grows with the channel (10k, 100k, 1M files) for a
one-file change, next to what a user would pick instead, in the same run:

- first publish (``caravane repo publish``) against ``tar | zstd -3 -T0``;
- republish after one file changed, against re-making the tar.zst;
- one-file update bytes per carrier: what a connected centre downloads (signed channel
  metadata + manifest), the pack a drive carries (``pack build --from 1 --to 2``), against
  ``zstd --patch-from`` and ``xdelta3`` between tars of the two trees and ``rsync`` (its wire
  bytes, file list included, which also grows with the tree);
- pack build time; checkout with verification against ``zstd -d | tar -x``;
- disk used by the repository against the tar.zst of the tree;
- the peak RSS of every Caravane command (each in its own child process).

Trees are generated (seeded text-like files of 200 B-4 KB in folders of 1,000) and deleted
after each size. One run per size: the machine is shared, read the ratios.

    python -m bench.scale [--sizes 10000,100000] [--json out.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from caravane.packs.files_cache import RACY_SECONDS

from .common import run_child, table

CHANNEL = "lib"
_PROSE = (
    "eau sante ecole lecon savoir nutrition enfant village marche pluie riz mil karite "
    "centre livre page carte histoire calcul lecture science terre soleil arbre puits "
    "the of and learning health water school child market rain book reading map"
)
WORDS = _PROSE.split()


def caravane() -> list[str]:
    exe = Path(sys.executable).with_name("caravane")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "caravane.cli"]


def make_tree(root: Path, files: int, seed: int = 7) -> Path:
    """``files`` text-like files of 200 B-4 KB, 1,000 per folder (two levels past 1M)."""
    rnd = random.Random(seed)
    for i in range(files):
        folder = root / f"d{i // 1_000_000:02d}" / f"d{(i // 1000) % 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        n = rnd.randint(30, 600)
        text = " ".join(rnd.choice(WORDS) for _ in range(n))
        (folder / f"page-{i:07d}.html").write_text(
            f"<html><title>page {i}</title><body><p>{text}</p></body></html>\n"
        )
    return root


def change_one_file(root: Path, files: int) -> Path:
    i = files // 2
    path = root / f"d{i // 1_000_000:02d}" / f"d{(i // 1000) % 1000:03d}" / f"page-{i:07d}.html"
    with open(path, "a") as fh:
        fh.write("<p>une phrase ajoutee cette semaine / a sentence added this week</p>\n")
    return path


def shell(cmd: str) -> float:
    start = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, capture_output=True)
    return time.monotonic() - start


def child(cmd: list[str], what: str) -> tuple[float, int]:
    seconds, rss, code = run_child(cmd)
    if code != 0:
        raise RuntimeError(f"{what} failed (exit {code}): {' '.join(cmd)}")
    return seconds, rss


def du(path: Path) -> int:
    out = subprocess.run(
        ["du", "-sb", "--apparent-size", str(path)], capture_output=True, text=True
    )
    apparent = int(out.stdout.split()[0])
    blocks = subprocess.run(["du", "-sB1", str(path)], capture_output=True, text=True)
    return max(apparent, int(blocks.stdout.split()[0]))


def store_disk(repo: Path) -> tuple[int, int]:
    """Disk the object store takes (blocks, loose objects and segments with their index)
    and the compressed payload it holds (the sum of its frames)."""
    from caravane.packs.store import ObjectStore

    store = ObjectStore(repo)
    payload = 0
    for sha in store.iter_ids():
        payload += store.frame_size(sha)
    disk = sum(du(repo / d) for d in ("objects", "segments") if (repo / d).exists())
    return disk, payload


def rsync_wire_bytes(src: Path, dest: Path) -> int:
    """Bytes rsync sends to update ``dest`` to ``src`` (delta mode, file list included)."""
    out = subprocess.run(
        ["rsync", "-a", "--no-whole-file", "--stats", f"{src}/", f"{dest}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    sent = re.search(r"Total bytes sent: ([\d,.]+)", out)
    received = re.search(r"Total bytes received: ([\d,.]+)", out)
    assert sent and received, out
    return int(re.sub(r"[,.]", "", sent.group(1))) + int(re.sub(r"[,.]", "", received.group(1)))


def measure(files: int, work: Path) -> dict[str, Any]:
    tree = make_tree(work / "tree", files)
    # a library's files were written days before: past the files cache's racy window,
    # or the last seconds of generated files would be read again at every republish
    time.sleep(RACY_SECONDS + 0.1)
    raw = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    repo = work / "repo"
    cv = caravane()
    subprocess.run([*cv, "repo", "init", str(repo)], check=True, capture_output=True)
    r: dict[str, Any] = {"files": files, "raw_bytes": raw}

    r["publish_s"], r["publish_rss"] = child(
        [*cv, "repo", "publish", str(repo), CHANNEL, str(tree)], "first publish"
    )
    # what a connected centre holding v1 holds of the channel: its signed metadata
    v1_meta = (repo / "metadata" / "channels" / f"{CHANNEL}.json").read_bytes()
    tar_a = work / "a.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(tar_a), "."], check=True)
    r["tar_zstd_s"] = shell(f"tar -C {tree} -cf - . | zstd -3 -T0 -q -o {work}/a.tar.zst")
    r["tar_zst_bytes"] = (work / "a.tar.zst").stat().st_size
    r["repo_disk_bytes"] = du(repo)
    r["store_disk_bytes"], r["payload_bytes"] = store_disk(repo)

    # the same tree before the change, for rsync to update
    shutil.copytree(tree, work / "rsync-dest")
    change_one_file(tree, files)
    r["republish_s"], r["republish_rss"] = child(
        [*cv, "repo", "publish", str(repo), CHANNEL, str(tree)], "republish"
    )
    r["tar_zstd_again_s"] = shell(f"tar -C {tree} -cf - . | zstd -3 -T0 -q -f -o {work}/b.tar.zst")
    tar_b = work / "b.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(tar_b), "."], check=True)

    meta = repo / "metadata" / "channels" / f"{CHANNEL}.json"
    pack = work / "1-2.pack"
    r["pack_build_s"], r["pack_build_rss"] = child(
        [*cv, "pack", "build", str(repo), CHANNEL, str(pack), "--from", "1", "--to", "2"],
        "pack build",
    )
    r["pack_bytes"] = sum(p.stat().st_size for p in work.glob("1-2.pack*"))
    # a connected centre holding v1: the signed channel metadata, as the hub sends it (a
    # delta from the centre's copy, packs/compact.py), then the pack 1->2, which carries
    # the new manifest as a delta (node/sync.py asks for it before any manifest;
    # tests/node/test_engine.py checks that no manifests/ path is fetched); before this the
    # whole manifest came first, which is what the "whole manifest" column still shows
    from caravane.packs.compact import metadata_delta

    r["channel_delta_bytes"] = len(metadata_delta(v1_meta, meta.read_bytes()))
    r["online_bytes"] = r["channel_delta_bytes"] + r["pack_bytes"]
    r.update(_metadata_costs(repo, pack, meta))

    patch = work / "patch.zst"
    try:
        shell(f"zstd -q -19 --long=31 --patch-from={tar_a} {tar_b} -o {patch} -f --memory=2048MB")
        r["zstd_patch_bytes"] = patch.stat().st_size
    except subprocess.CalledProcessError:
        # zstd's window stops at 2 GiB (--long=31): a tar of a million files is larger
        r["zstd_patch_bytes"] = None
    if shutil.which("xdelta3"):
        shell(f"xdelta3 -e -9 -f -B 1073741824 -s {tar_a} {tar_b} {work}/patch.xd3")
        r["xdelta3_bytes"] = (work / "patch.xd3").stat().st_size
    else:
        r["xdelta3_bytes"] = None
    r["rsync_bytes"] = rsync_wire_bytes(tree, work / "rsync-dest")

    out = work / "checkout"
    r["checkout_s"], r["checkout_rss"] = child(
        [*cv, "repo", "checkout", str(repo), CHANNEL, str(out)], "checkout"
    )
    untar = work / "untar"
    untar.mkdir()
    r["untar_s"] = shell(f"zstd -d -q -c {work}/b.tar.zst | tar -C {untar} -xf -")
    return r


def _metadata_costs(repo: Path, pack: Path, meta: Path) -> dict[str, int]:
    """What of the update is signed metadata, on each carrier, and what format 1 cost.

    Format 2 (docs/FORMAT.md): the pack carries the manifest document and the changed pieces
    of the file list as deltas; a centre without a pack (a static mirror) fetches the document
    and the changed pieces as objects. Format 1 sent the whole flat manifest there.
    """
    from caravane.packs.packfile import read_entries
    from caravane.packs.repository import Repository
    from caravane.protocol.metadata import Manifest

    r = Repository.open(repo)
    m1, m2 = r.manifest(CHANNEL, 1), r.manifest(CHANNEL, 2)
    changed = [sha for sha in m2.tree_objects if sha not in m1.tree_objects]
    doc = (repo / "manifests" / CHANNEL / "2.json").stat().st_size
    flat = Manifest(m2.channel, m2.version, m2.created, m2.files, m2.notes).to_bytes()
    in_pack = sum(
        e.length for e in read_entries(pack) if e.kind in ("metadata", "manifest", "tree")
    )
    return {
        "channel_meta_bytes": meta.stat().st_size,
        "pack_metadata_bytes": in_pack,
        "online_metadata_bytes": meta.stat().st_size
        + doc
        + sum(r.store.frame_size(sha) for sha in changed),
        "flat_manifest_bytes": meta.stat().st_size + len(flat),
        "changed_pieces": len(changed),
    }


def rows_of(results: list[dict[str, Any]]) -> list[str]:
    mib = 1 << 20
    out = []
    out.append(
        table(
            "Publishing (seconds; peak RSS of the Caravane command)",
            [
                "files",
                "publish s",
                "tar|zstd s",
                "ratio",
                "RSS MiB",
                "1-file republish s",
                "tar|zstd again s",
                "RSS MiB",
            ],
            [
                [
                    r["files"],
                    r["publish_s"],
                    r["tar_zstd_s"],
                    r["publish_s"] / r["tar_zstd_s"],
                    r["publish_rss"] / mib,
                    r["republish_s"],
                    r["tar_zstd_again_s"],
                    r["republish_rss"] / mib,
                ]
                for r in results
            ],
        )
    )
    out.append(
        table(
            "One-file update, bytes a centre receives",
            [
                "files",
                "online (metadata delta + pack)",
                "channel metadata: file / delta",
                "signed metadata in the pack",
                "online, no pack: metadata + changed pieces",
                "format 1: metadata + whole manifest",
                "pack (drive)",
                "zstd --patch-from",
                "xdelta3",
                "rsync (wire)",
                "pack build s",
                "build RSS MiB",
            ],
            [
                [
                    r["files"],
                    r["online_bytes"],
                    f"{r['channel_meta_bytes']} / {r['channel_delta_bytes']}",
                    r["pack_metadata_bytes"],
                    r["online_metadata_bytes"],
                    r["flat_manifest_bytes"],
                    r["pack_bytes"],
                    r["zstd_patch_bytes"] if r["zstd_patch_bytes"] is not None else "n/a",
                    r["xdelta3_bytes"] if r["xdelta3_bytes"] is not None else "n/a",
                    r["rsync_bytes"],
                    r["pack_build_s"],
                    r["pack_build_rss"] / mib,
                ]
                for r in results
            ],
        )
    )
    out.append(
        table(
            "Checkout with verification, disk",
            [
                "files",
                "checkout s",
                "zstd -d|tar -x s",
                "ratio",
                "RSS MiB",
                "repo on disk",
                "tar.zst",
                "disk ratio",
                "store / payload",
            ],
            [
                [
                    r["files"],
                    r["checkout_s"],
                    r["untar_s"],
                    r["checkout_s"] / r["untar_s"],
                    r["checkout_rss"] / mib,
                    r["repo_disk_bytes"],
                    r["tar_zst_bytes"],
                    r["repo_disk_bytes"] / r["tar_zst_bytes"],
                    r["store_disk_bytes"] / max(1, r["payload_bytes"]),
                ]
                for r in results
            ],
        )
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated file counts")
    ap.add_argument("--quick", action="store_true", help="only 10,000 files")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = ap.parse_args()
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    results = []
    for n in sizes:
        if args.keep:
            work = args.keep / str(n)
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            results.append(measure(n, work))
        else:
            with tempfile.TemporaryDirectory(prefix=f"caravane-scale-{n}-") as t:
                results.append(measure(n, Path(t)))
        print(f"{n:,} files done", file=sys.stderr)
    print("\n\n".join(rows_of(results)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
