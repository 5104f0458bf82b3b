"""A centre's collection after a one-file update: counts against the mark and sweep before.

A centre collects after every activation. Until 2026-12-02 that was a mark of everything its
kept manifests name (every piece of every kept release read, its ids kept as 64-bit
prefixes) and a sweep of every object id of the store: a cost that grew with the channel for
a one-file update. It now counts what each manifest names (``packs/refcount.py``). Both are
run here, each in its own child process (time and peak RSS), on a centre store made
directly with the real tree writer: ``N`` files of one object each (written, so the store
holds as many ids as a real one), releases that differ by one file each.

1. **mark and sweep** (the code before, kept here as the baseline): versions 1 and 2 kept;
2. **first collection by counts**: the same store with no counts yet (an upgraded centre):
   every kept manifest counted once, then one sweep of the store's ids;
3. **one-file update**: version 3 arrives, version 1 is dropped; then version 4, version 2
   dropped (the median of the two is reported).

    python -m bench.collection [--sizes 100000,1000000] [--json out.json] [--work DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from caravane.packs.centre_store import CentreStore
from caravane.packs.hub_repository import HubRepository
from caravane.packs.layout import manifest_relpath
from caravane.packs.manifests import write_tree
from caravane.protocol import tree
from caravane.protocol.metadata import FileEntry

from .common import median, run_child, table

CHANNEL = "bench"

#: the collection before counts (node/sync.py until 2026-12-02), as the baseline
MARK_AND_SWEEP = r"""
import json, re, sys, time
from pathlib import Path
from caravane.packs.centre_store import CentreStore
from caravane.packs.idset import IdSet
from caravane.packs.manifests import pieces_of
HEX = re.compile(rb'"([0-9a-f]{64})"')
repo = CentreStore(Path(sys.argv[1]))
start = time.perf_counter()
with repo.lock():
    keep = IdSet()
    for path in (repo.path / "manifests").glob("*/*.json"):
        data = path.read_bytes()
        for sha in HEX.findall(data):
            keep.add(sha.decode())
        for sha, piece in pieces_of(data, repo.store):
            keep.add(sha)
            for s in HEX.findall(piece):
                keep.add(s.decode())
    gone = [sha for sha in repo.store.iter_ids() if sha not in keep]
    for sha in gone:
        repo.store.remove(sha)
print(json.dumps({"seconds": time.perf_counter() - start, "removed": len(gone)}))
"""

COUNTS = r"""
import json, sys, time
from pathlib import Path
from caravane.packs.centre_store import CentreStore
store = CentreStore(Path(sys.argv[1]))
start = time.perf_counter()
r = store.collect()
print(json.dumps({"seconds": time.perf_counter() - start, "pieces_read": r.pieces_read,
                  "removed": r.removed, "swept": r.swept, "skipped": r.skipped}))
"""


def _content(i: int, version: int) -> bytes:
    return f"<p>page {i} of the library, edition {version}</p>\n".encode() * 4


def _entries(n: int, changed: dict[int, int]) -> Iterator[FileEntry]:
    for i in range(n):
        data = _content(i, changed.get(i, 0))
        sha = hashlib.sha256(data).hexdigest()
        yield FileEntry(
            f"d{i // 1000:04d}/page-{i:07d}.html", len(data), 0o644, sha, [(sha, len(data))]
        )


def _release(store: CentreStore, n: int, version: int, changed: dict[int, int]) -> None:
    """Write release ``version``'s objects (the new ones) and pieces, then its document."""
    items: list[tuple[str | None, bytes]] = []
    todo = changed.items() if version > 1 else ((i, 0) for i in range(n))
    for i, v in todo:
        data = _content(i, v)
        items.append((hashlib.sha256(data).hexdigest(), data))
        if len(items) >= 2000:
            store.store.put_raw_many(list(items))
            items.clear()
    if items:
        store.store.put_raw_many(items)
    written = write_tree(store.store, _entries(n, changed), check=False)
    doc = tree.encode_doc(
        CHANNEL, version, "2026-12-02T00:00:00Z", "", written.files, written.size, written.root
    )
    path = store.path / manifest_relpath(CHANNEL, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(doc)


def _child(code: str, store: Path) -> tuple[float, int, dict[str, Any]]:
    """The collection's own seconds (not the interpreter's start) and the child's peak RSS."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(code)
    out = Path(fh.name + ".out")
    cmd = ["sh", "-c", f'"{sys.executable}" "{fh.name}" "{store}" > "{out}"']
    seconds, rss, status = run_child(cmd)
    text = out.read_text() if out.exists() else ""
    Path(fh.name).unlink()
    out.unlink(missing_ok=True)
    if status != 0:
        raise RuntimeError(f"collection exited {status}")
    report: dict[str, Any] = json.loads(text)
    if report.get("skipped"):
        raise RuntimeError(f"collection skipped: {report['skipped']}")
    return float(report["seconds"]), rss, report


def measure(n: int, work: Path) -> dict[str, Any]:
    hub = HubRepository.init(work / "hub")
    store = CentreStore.init(work / "store", trust_root=hub.path / "metadata/root.json")
    changed: dict[int, int] = {}
    _release(store, n, 1, changed)
    changed[n // 3] = 2
    _release(store, n, 2, changed)
    r: dict[str, Any] = {"files": n}
    copy = work / "store-mark"
    # by another process: copying a database this process has open would drop its locks
    subprocess.run(["cp", "-a", str(store.path), str(copy)], check=True)
    r["mark_s"], r["mark_rss"], _ = _child(MARK_AND_SWEEP, copy)
    shutil.rmtree(copy)
    r["first_s"], r["first_rss"], _ = _child(COUNTS, store.path)
    updates = []
    for version, drop in ((3, 1), (4, 2)):
        changed[(n // 3 + version * 7919) % n] = version
        _release(store, n, version, changed)
        (store.path / manifest_relpath(CHANNEL, drop)).unlink()
        updates.append(_child(COUNTS, store.path))
    r["update_s"] = median([u[0] for u in updates])
    r["update_rss"] = max(u[1] for u in updates)
    r["update_pieces"] = max(u[2]["pieces_read"] for u in updates)
    r["update_removed"] = min(u[2]["removed"] for u in updates)
    r["counts_bytes"] = (store.path / "live.sqlite").stat().st_size
    r["index_bytes"] = (store.path / "segments" / "index.sqlite").stat().st_size
    return r


def rows_of(results: list[dict[str, Any]]) -> str:
    return table(
        "centre collection after an update (time, peak RSS)",
        [
            "files",
            "mark and sweep (before)",
            "first collection by counts",
            "one-file update by counts",
            "pieces read",
            "objects removed",
            "counts file",
        ],
        [
            [
                f"{r['files']:,}",
                f"{r['mark_s']:.2f} s, {r['mark_rss'] / 1e6:.0f} MB",
                f"{r['first_s']:.2f} s, {r['first_rss'] / 1e6:.0f} MB",
                f"{r['update_s']:.2f} s, {r['update_rss'] / 1e6:.0f} MB",
                r["update_pieces"],
                r["update_removed"],
                f"{r['counts_bytes'] / 1e6:.1f} MB (object index {r['index_bytes'] / 1e6:.0f} MB)",
            ]
            for r in results
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--quick", action="store_true", help="10,000 files only")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", type=Path, help="where the stores go (deleted after)")
    args = parser.parse_args()
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    results = []
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"collection-{n}-", dir=args.work))
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
