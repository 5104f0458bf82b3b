"""Where a one-file republish of a big channel spends its time, step by step.

Why this exists: principle 7 asks for a one-file change to cost seconds at the hub whatever
the channel's size. ``bench.scale`` times the whole command; this one times its parts in
one process (a generated tree of small files, first publish, one file edited, republish),
so the report can say how much is per-file work that the files cache leaves (a stat and a
cache lookup per file, a presence check per reused chunk) and how much is the file list:
each entry into the tree's pieces, and the commit's walk of the diff under the lock.

    python -m bench.republish_parts [--files 100000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from caravane.packs import hub_repository, ingest, manifests, repository
from caravane.packs.files_cache import FilesCache
from caravane.packs.hub_repository import HubRepository
from caravane.packs.store import ObjectStore
from caravane.protocol import tree
from caravane.protocol.paths import ListingChecker

from .common import table
from .scale import change_one_file, make_tree

#: (where the function lives, its name, the step it is counted under); indented steps run
#: inside the one above them
STEPS: list[tuple[Any, str, str]] = [
    # the publish streams (scan, ingest and the tree's pieces run interleaved, a window of
    # files at a time): the first step is all of it, the indented ones parts of it
    (manifests, "write_tree", "scan, ingest, pieces (streamed)"),
    (ingest, "_listing", "  folder listings (scandir, names, sort)"),
    (ListingChecker, "listing", "  path checks (a listing at a time)"),
    (FilesCache, "folder", "  files-cache rows read (one per folder)"),
    (FilesCache, "lookup", "  files-cache lookups (files not in a cached run)"),
    (ObjectStore, "present", "  reused objects present? (after a collection only)"),
    (FilesCache, "record", "  files-cache records (files read)"),
    (FilesCache, "commit", "  files-cache write"),
    (tree.TreeWriter, "add", "  entries into the tree's pieces"),
    (HubRepository, "_commit_tree", "commit (under the lock)"),
    (ObjectStore, "missing", "  objects of the diff present?"),
]


@contextmanager
def timing() -> Iterator[dict[str, float]]:
    """Wrap each step's function so its time adds up under its label while inside."""
    spent: dict[str, float] = {}
    saved: list[tuple[Any, str, Callable[..., Any]]] = []

    def wrap(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - start

        return timed

    for owner, name, label in STEPS:
        raw = inspect.getattr_static(owner, name)
        fn = getattr(owner, name)
        saved.append((owner, name, raw))
        wrapped = wrap(fn, label)
        setattr(owner, name, staticmethod(wrapped) if isinstance(raw, staticmethod) else wrapped)
        # modules that imported the function by name see the wrapper too
        for mod in (hub_repository, repository, ingest):
            if getattr(mod, name, None) is fn:
                saved.append((mod, name, fn))
                setattr(mod, name, wrap(fn, label))
    try:
        yield spent
    finally:
        for owner, name, fn in reversed(saved):
            setattr(owner, name, fn)


def measure(files: int, work: Path) -> dict[str, Any]:
    tree = make_tree(work / "tree", files)
    repo = HubRepository.init(work / "repo")
    time.sleep(2.1)  # past the files cache's racy window, as a tree edited days ago
    start = time.perf_counter()
    repo.publish("lib", tree)
    first = time.perf_counter() - start
    change_one_file(tree, files)
    time.sleep(2.1)
    with timing() as spent:
        start = time.perf_counter()
        res = repo.publish("lib", tree)
        total = time.perf_counter() - start
    assert res.changed_files and len(res.changed_files) == 1, res.changed_files
    return {"files": files, "first": first, "total": total, "steps": dict(spent)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = ap.parse_args()
    if args.keep:
        shutil.rmtree(args.keep, ignore_errors=True)
        args.keep.mkdir(parents=True)
        r = measure(args.files, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="caravane-republish-") as t:
            r = measure(args.files, Path(t))
    rows = [
        [label, r["steps"].get(label, 0.0), 100 * r["steps"].get(label, 0.0) / r["total"]]
        for _, _, label in STEPS
    ]
    top = sum(s for label, s in r["steps"].items() if not label.startswith(" "))
    rows.append(
        [
            "rest (the lists of changed files, closing the cache)",
            r["total"] - top,
            100 * (r["total"] - top) / r["total"],
        ]
    )
    print(
        table(
            f"One-file republish of {r['files']:,} files: {r['total']:.2f} s "
            f"(first publish {r['first']:.2f} s), in one process",
            ["step", "seconds", "% of the republish"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
