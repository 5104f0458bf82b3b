"""A channel of large files (videos, PDFs, disk images): tens of GB in a few dozen files.

Why this exists: issue 10 asks that every command stay bounded in memory "at 40 GB", and that
a change to one large file cost about the change, not the file. A 40 GB channel is mostly
chunk lists (a 4 GB video is 65,000 chunks of 64 KiB), so this measures what the small-file
benchmark (``bench.scale``) does not: publish, a 1 MB edit in the middle of one file, the
pack for that edit, checkout with verification, and peak memory of each command, beside
what a user would pick instead in the same run:

- ``tar | zstd -3 -T0`` for publish, ``zstd -d | tar -x`` for checkout;
- ``zstd --patch-from`` and ``xdelta3`` between the old and new version of the edited file,
  and ``rsync``'s wire bytes to update a copy of that file.

Content, per file in turn: random bytes (video, does not compress), text-like bytes (about
2:1) and a mix of the two in 1 MB runs (a PDF with images). Nothing repeats, so
deduplication cannot flatter the figures.

Disk: about 3.7 times ``--gb`` free (the folder, the store, a tar.zst, one checkout at a
time); the benchmark refuses to start with less. 40 GB therefore needs about 150 GB free.

    python -m bench.large_channel [--gb 40] [--file-mb 1024] [--json out.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import table
from .scale import CHANNEL, caravane, child, du, rsync_wire_bytes, shell, store_disk

MB = 1 << 20
#: bytes -> a 16-letter alphabet with spaces: text-like, compresses about 2:1, never repeats
_TEXT = bytes.maketrans(bytes(range(256)), (b"etaoinshrdlucmfw  " * 15)[:256])


def _block(rnd: random.Random, kind: str, i: int) -> bytes:
    raw = rnd.randbytes(MB)
    if kind == "video" or (kind == "pdf" and i % 3 == 0):
        return raw
    return raw.translate(_TEXT)


def make_channel(root: Path, total_mb: int, file_mb: int, seed: int = 11) -> int:
    rnd = random.Random(seed)
    kinds = ["video", "text", "pdf"]
    made = n = 0
    while made < total_mb:
        size = min(file_mb, total_mb - made)
        kind = kinds[n % 3]
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{kind}-{n:03d}.bin", "wb") as fh:
            for i in range(size):
                fh.write(_block(rnd, kind, i))
        made += size
        n += 1
    return n


def edit_middle(path: Path, seed: int = 12) -> None:
    """Overwrite 1 MB in the middle of ``path`` (a re-encoded scene, a corrected page)."""
    rnd = random.Random(seed)
    with open(path, "r+b") as fh:
        fh.seek(os.path.getsize(path) // 2)
        fh.write(rnd.randbytes(MB).translate(_TEXT))


def measure(total_mb: int, file_mb: int, work: Path) -> dict[str, Any]:
    tree = work / "tree"
    files = make_channel(tree, total_mb, file_mb)
    repo = work / "repo"
    cv = caravane()
    shell(f"{' '.join(cv)} repo init {repo}")
    r: dict[str, Any] = {"gb": total_mb / 1024, "files": files}
    r["publish_s"], r["publish_rss"] = child(
        [*cv, "repo", "publish", str(repo), CHANNEL, str(tree)], "first publish"
    )
    r["tar_zstd_s"] = shell(f"tar -C {tree} -cf - . | zstd -3 -T0 -q -o {work}/a.tar.zst")
    r["tar_zst_bytes"] = (work / "a.tar.zst").stat().st_size
    r["store_disk_bytes"], r["payload_bytes"] = store_disk(repo)

    edited = sorted((tree / "text").iterdir())[0]
    old_copy = work / "old-file"
    shutil.copyfile(edited, old_copy)
    edit_middle(edited)
    r["republish_s"], r["republish_rss"] = child(
        [*cv, "repo", "publish", str(repo), CHANNEL, str(tree)], "republish"
    )
    (work / "a.tar.zst").unlink()
    r["tar_zstd_again_s"] = shell(f"tar -C {tree} -cf - . | zstd -3 -T0 -q -o {work}/b.tar.zst")

    pack = work / "1-2.pack"
    r["pack_build_s"], r["pack_build_rss"] = child(
        [*cv, "pack", "build", str(repo), CHANNEL, str(pack), "--from", "1", "--to", "2"],
        "pack build",
    )
    r["pack_bytes"] = sum(p.stat().st_size for p in work.glob("1-2.pack*"))
    shell(
        f"zstd -q -19 --long=31 --memory=2048MB --patch-from={old_copy} {edited} "
        f"-o {work}/patch.zst -f"
    )
    r["zstd_patch_bytes"] = (work / "patch.zst").stat().st_size
    if shutil.which("xdelta3"):
        shell(f"xdelta3 -e -9 -f -B 1073741824 -s {old_copy} {edited} {work}/patch.xd3")
        r["xdelta3_bytes"] = (work / "patch.xd3").stat().st_size
    else:
        r["xdelta3_bytes"] = None
    dest = work / "rsync-dest"
    dest.mkdir()
    shutil.copy2(old_copy, dest / edited.name)
    # an older copy, as on a centre: rsync skips a file of the same size and second
    os.utime(dest / edited.name, (1_000_000_000, 1_000_000_000))
    one = work / "rsync-src"
    one.mkdir()
    os.link(edited, one / edited.name)
    r["rsync_bytes"] = rsync_wire_bytes(one, dest)
    shutil.rmtree(dest)
    shutil.rmtree(one)
    old_copy.unlink()

    out = work / "checkout"
    r["checkout_s"], r["checkout_rss"] = child(
        [*cv, "repo", "checkout", str(repo), CHANNEL, str(out)], "checkout"
    )
    shutil.rmtree(out)
    shutil.rmtree(tree)  # the untar below needs the room
    untar = work / "untar"
    untar.mkdir()
    r["untar_s"] = shell(f"zstd -d -q -c {work}/b.tar.zst | tar -C {untar} -xf -")
    r["repo_disk_bytes"] = du(repo)
    return r


def rows_of(results: list[dict[str, Any]]) -> list[str]:
    mib = 1 << 20
    return [
        table(
            "Large files: publish, 1 MB edit in one file, checkout (seconds; peak RSS MiB)",
            [
                "GB",
                "files",
                "publish s",
                "tar|zstd s",
                "RSS",
                "republish s",
                "tar|zstd again s",
                "RSS",
                "checkout s",
                "zstd -d|tar -x s",
                "RSS",
            ],
            [
                [
                    r["gb"],
                    r["files"],
                    r["publish_s"],
                    r["tar_zstd_s"],
                    r["publish_rss"] / mib,
                    r["republish_s"],
                    r["tar_zstd_again_s"],
                    r["republish_rss"] / mib,
                    r["checkout_s"],
                    r["untar_s"],
                    r["checkout_rss"] / mib,
                ]
                for r in results
            ],
        ),
        table(
            "Large files: the 1 MB edit, bytes a centre receives; disk",
            [
                "GB",
                "pack",
                "zstd --patch-from",
                "xdelta3",
                "rsync (wire)",
                "pack build s",
                "RSS",
                "store / payload",
                "repo / tar.zst",
            ],
            [
                [
                    r["gb"],
                    r["pack_bytes"],
                    r["zstd_patch_bytes"],
                    r["xdelta3_bytes"] if r["xdelta3_bytes"] is not None else "n/a",
                    r["rsync_bytes"],
                    r["pack_build_s"],
                    r["pack_build_rss"] / mib,
                    r["store_disk_bytes"] / max(1, r["payload_bytes"]),
                    r["repo_disk_bytes"] / r["tar_zst_bytes"],
                ]
                for r in results
            ],
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=40.0, help="size of the channel")
    ap.add_argument("--file-mb", type=int, default=1024, help="size of each file")
    ap.add_argument("--quick", action="store_true", help="1 GB in files of 128 MB")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = ap.parse_args()
    total_mb = 1024 if args.quick else int(args.gb * 1024)
    file_mb = 128 if args.quick else args.file_mb
    base = args.keep or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    need = int(total_mb * MB * 3.7)
    free = shutil.disk_usage(base).free
    if free < need:
        sys.exit(
            f"{total_mb / 1024:.1f} GB needs about {need / 2**30:.0f} GB free in {base}, "
            f"{free / 2**30:.0f} GB are; pass a smaller --gb or --keep on a larger disk"
        )
    if args.keep:
        work = args.keep / "large"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        results = [measure(total_mb, file_mb, work)]
    else:
        with tempfile.TemporaryDirectory(prefix="caravane-large-", dir=base) as t:
            results = [measure(total_mb, file_mb, Path(t))]
    print("\n\n".join(rows_of(results)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
