"""The portal's search index: build, one-file update, query, against ``grep -ril``.

A folder of N HTML pages (about 3 KB of French-like text each, a title each) is indexed as
activation indexes a first release, then one page changes and the update is timed (it
must read and write one row, whatever N), then queries are timed (median of 20) beside
``grep -ril WORD`` over the same folder, the tool an operator would reach for.

    python -m bench.search_index [--files 20000] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from caravane.node.search import SearchIndex
from caravane.protocol.metadata import FileEntry, Manifest

from .common import median, self_peak_rss, table

WORDS = [
    "enfant",
    "nutrition",
    "hygiène",
    "eau",
    "puits",
    "savon",
    "école",
    "santé",
    "récolte",
    "mil",
    "sorgho",
    "marché",
    "coopérative",
    "lecture",
    "calcul",
    "vaccin",
    "paludisme",
    "moustiquaire",
    "forage",
    "irrigation",
    "élevage",
    "chèvre",
    "poulet",
    "jardin",
    "semence",
    "pluie",
    "saison",
    "engrais",
    "compost",
    "arbre",
    "reboisement",
]


def page(rng: random.Random, i: int) -> bytes:
    title = " ".join(rng.choice(WORDS) for _ in range(4)) + f" {i}"
    body = " ".join(rng.choice(WORDS) for _ in range(400))
    return (
        f"<!doctype html><html><head><title>{title}</title></head>"
        f"<body><h1>{title}</h1><p>{body}</p></body></html>"
    ).encode()


def manifest(folder: Path, version: int) -> Manifest:
    files = []
    for p in sorted(folder.rglob("*.html")):
        data = p.read_bytes()
        rel = p.relative_to(folder).as_posix()
        files.append(FileEntry(rel, len(data), 0o644, hashlib.sha256(data).hexdigest()))
    return Manifest("bench", version, "2026-01-01T00:00:00Z", files)


def run(n: int) -> dict[str, Any]:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        v1 = root / "v1"
        for i in range(n):
            p = v1 / f"d{i // 500:03d}" / f"page-{i:06d}.html"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(page(rng, i))
        m1 = manifest(v1, 1)
        index = SearchIndex(root / "search.db")
        t0 = time.perf_counter()
        full = index.update(m1, v1, lambda v: None)
        build = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in root.glob("search.db*"))
        # one page edited: version 2 is version 1's folder with that page rewritten
        changed = v1 / "d000" / "page-000003.html"
        changed.write_bytes(page(random.Random(99), 3).replace(b"enfant", b"girafe"))
        m2 = manifest(v1, 2)
        t0 = time.perf_counter()
        inc = index.update(m2, v1, lambda v: m1 if v == 1 else None)
        update = time.perf_counter() - t0
        served = {"bench": 2}
        q_times, g_times = [], []
        for _ in range(20):
            t0 = time.perf_counter()
            hits = index.search("hygiene savon", served, 50)
            q_times.append(time.perf_counter() - t0)
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run(["grep", "-ril", "savon", str(v1)], capture_output=True, check=False)
            g_times.append(time.perf_counter() - t0)
        assert inc.written == 1 and len(hits) == 50
        return {
            "files": n,
            "build_s": round(build, 2),
            "build_files_per_s": round(n / build),
            "rows_written_full": full.written,
            "update_one_file_ms": round(update * 1000, 1),
            "rows_written_update": inc.written,
            "query_ms_median": round(median(q_times) * 1000, 2),
            "grep_ms_median": round(median(g_times) * 1000, 1),
            "index_mb": round(size / 1e6, 1),
            "peak_rss_mb": round(self_peak_rss() / 1e6),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true", help="2,000 files")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = run(2_000 if args.quick else args.files)
    print(table("portal search index", list(out), [list(out.values())]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
