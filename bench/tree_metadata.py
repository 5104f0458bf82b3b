"""Signed metadata of a one-file update, format 1 (flat manifest) against format 2 (tree).

Why this exists: issue 10 asks that a one-file change cost a centre about 1 KB of signed
metadata plus the delta, at 10k, 100k and 1M files, over every carrier, with no ceiling
below 10 million files. The file list is what grows with the channel, so this measures it
alone, in process, on synthetic file lists (paths in folders of 1,000, one chunk a file):

- format 2, in a pack: the manifest document as a delta against the old one, plus the
  changed pieces compressed against the old pieces that cover the same paths (what
  ``build_pack`` writes; drives carry the same pack);
- format 2, online without a pack (a static mirror): the document plus the changed pieces as
  stored objects (each its own zstd frame);
- format 1, in a pack: the whole new manifest as a zstd delta against the old one (what packs
  carried before), and the whole manifest (what a centre without a pack downloaded).

The channel metadata that comes with every update is measured by bench.scale (it lists the
retained releases). Sizes above 100,000 files skip the format 1 delta unless ``--flat``:
zstd -19 over two 220 MB documents takes minutes, and the issue's own figures (3.2 MB at
700,000 files, past zstd's window) already show that cliff.

    python -m bench.tree_metadata [--sizes 10000,100000,1000000] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from caravane.packs import delta
from caravane.packs.store import compress
from caravane.protocol import tree
from caravane.protocol.metadata import FileEntry, Manifest

from .common import table


def _files(n: int, changed: int | None = None) -> list[FileEntry]:
    out = []
    for i in range(n):
        path = f"d{i // 1000:04d}/page-{i:07d}.html"
        seed = b"v2" if i == changed else b"v1"
        sha = hashlib.sha256(path.encode() + seed).hexdigest()
        size = 200 + (i * 37) % 3800
        out.append(FileEntry(path, size, 0o644, sha, [(sha, size)]))
    return out


def measure(n: int, flat: bool) -> dict[str, Any]:
    a = Manifest("lib", 1, "2026-12-01T00:00:00Z", _files(n))
    b = Manifest("lib", 2, "2026-12-08T00:00:00Z", _files(n, changed=n // 2))
    t0 = time.perf_counter()
    ea, eb = tree.encode_manifest(a), tree.encode_manifest(b)
    encode_s = (time.perf_counter() - t0) / 2
    old = {ref.sha256: (ref, data) for ref, data in ea.pieces}
    new = [(ref, data) for ref, data in eb.pieces if ref.sha256 not in old]
    bases = tree.bases_for([r for r, _ in new], [r for r, _ in ea.pieces])
    base = b"".join(old[r.sha256][1] for r in bases)
    tree_payload = delta.compress_group(base, b"".join(d for _, d in new))
    doc_delta = delta.manifest_delta(ea.doc, eb.doc)
    # entry headers as build_pack writes them (JSON: sizes and base ids)
    header = len(
        json.dumps(
            {
                "base": [[r.sha256, r.length] for r in bases],
                "sizes": [r.length for r, _ in new],
                "base_manifest": False,
                "base_version": 1,
                "kind": "tree",
                "length": 0,
            }
        )
    )
    r: dict[str, Any] = {
        "files": n,
        "levels": (eb.root.level + 1) if eb.root else 0,
        "pieces": len(eb.pieces),
        "changed_pieces": len(new),
        "doc_bytes": len(eb.doc),
        "pack_v2_bytes": len(doc_delta) + len(tree_payload) + header + 2 * 80,
        "online_v2_bytes": len(eb.doc) + sum(len(compress(d)) for _, d in new),
        "encode_s": encode_s,
        "flat_bytes": None,
        "pack_v1_bytes": None,
    }
    if flat or n <= 100_000:
        fa, fb = a.to_bytes(), b.to_bytes()
        r["flat_bytes"] = len(fb)
        r["pack_v1_bytes"] = len(delta.manifest_delta(fa, fb)) + 80
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--flat", action="store_true", help="format 1 deltas at every size")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = [measure(int(s), args.flat) for s in args.sizes.split(",")]
    print(
        table(
            "One-file update: manifest bytes a centre receives",
            [
                "files",
                "tree levels",
                "pieces",
                "changed",
                "format 2 in a pack",
                "format 2 online, no pack",
                "format 1 in a pack",
                "format 1 whole manifest",
                "encode s",
            ],
            [
                [
                    r["files"],
                    r["levels"],
                    r["pieces"],
                    r["changed_pieces"],
                    r["pack_v2_bytes"],
                    r["online_v2_bytes"],
                    r["pack_v1_bytes"] if r["pack_v1_bytes"] is not None else "n/a",
                    r["flat_bytes"] if r["flat_bytes"] is not None else "n/a",
                    r["encode_s"],
                ]
                for r in results
            ],
        )
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
