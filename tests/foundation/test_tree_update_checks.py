"""An update's tree checked by its diff refuses exactly what a walk of the whole tree refuses.

The hub checks a curator's uploaded tree, and a centre a pack's, by the diff from the
release before (``tree.checked_changes``), reading only the pieces the two do not share.
That is sound only if no tree can pass it that a whole walk (``tree.iter_files``, every
piece, entry, path, order and count) refuses. Here an honest old tree is cut into leaves at
random; the new tree keeps some of those leaves byte for byte (shared pieces the diff skips
unread), drops some, and puts in leaves a hostile client wrote: paths out of order, repeated
across a leaf boundary, colliding by case with a kept path, a file where a folder is.
"""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from caravane.protocol import tree
from caravane.protocol.canonical import canonical_bytes
from caravane.protocol.errors import CaravaneError, PathError
from caravane.protocol.metadata import FileEntry

NAMES = st.from_regex(r"[abAB]{1,2}(/[ab]{1,2}){0,2}", fullmatch=True)


def _entry(path: str, seed: int = 0) -> FileEntry:
    sha = hashlib.sha256(f"{path}:{seed}".encode()).hexdigest()
    return FileEntry(path, 10 + seed, 0o644, sha, [(sha, 10 + seed)])


def _tree(
    blocks: list[list[FileEntry]], pieces: dict[str, bytes]
) -> tuple[tree.TreeDoc, dict[str, Any]]:
    """A tree of one node over a leaf per block (one leaf alone: the root), as a client
    that checks nothing writes it; its pieces go into ``pieces``."""
    refs = []
    for block in blocks:
        data = tree._leaf_bytes([e.to_dict() for e in block])
        refs.append(tree._ref(block[0].path, data, len(block), sum(e.size for e in block), 0))
        pieces[refs[-1].sha256] = data
    if len(refs) == 1:
        root = refs[0]
    else:
        node = tree._node_bytes(1, refs)
        root = tree._ref("", node, sum(r.files for r in refs), sum(r.size for r in refs), 1)
        pieces[root.sha256] = node
    files, size = root.files, root.size
    ref = {"sha256": root.sha256, "length": root.length, "level": root.level}
    doc = canonical_bytes(
        {
            "_type": "manifest",
            "spec_version": 2,
            "channel": "lecons",
            "version": 2,
            "created": "2026-12-03T00:00:00Z",
            "notes": "",
            "files": files,
            "size": size,
            "tree": ref,
        }
    )
    return tree.parse_doc(doc), ref


def _valid_paths(paths: list[str]) -> list[str]:
    """The paths a release may hold together, kept greedily: each one kept if the list with
    it still passes ``check_paths`` (valid names, no case collision, no file where a folder
    is)."""
    out: list[str] = []
    for p in paths:
        try:
            tree.check_paths(sorted({*out, p}, key=str.encode))
        except PathError:
            continue
        out = sorted({*out, p}, key=str.encode)
    return out


def _verdict(run: Any) -> str:
    try:
        for _ in run:
            pass
    except CaravaneError as exc:
        return f"refused: {type(exc).__name__}"
    return "accepted"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_the_diff_refuses_what_a_whole_walk_refuses(data: st.DataObject) -> None:
    old_paths = _valid_paths(data.draw(st.lists(NAMES, min_size=2, max_size=40)))
    if len(old_paths) < 2:
        return
    tree.check_paths(old_paths)  # the old tree is honest
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(old_paths) - 1), max_size=6))))
    bounds = [0, *cuts, len(old_paths)]
    old_blocks = [
        [_entry(p) for p in old_paths[a:b]] for a, b in zip(bounds, bounds[1:], strict=False)
    ]
    pieces: dict[str, bytes] = {}
    old_doc, _ = _tree(old_blocks, pieces)
    assert _verdict(tree.iter_files(old_doc, lambda refs: [pieces[r.sha256] for r in refs]))

    new_blocks: list[list[FileEntry]] = []
    for block in old_blocks:
        action = data.draw(st.sampled_from(["keep", "keep", "drop", "rewrite"]))
        if action == "keep":
            new_blocks.append(block)
        elif action == "rewrite":
            # a hostile leaf: any paths from the same names, in the order drawn, some of
            # them the old ones again (a repeat across a boundary), some changed contents
            raw = data.draw(st.lists(NAMES, min_size=1, max_size=8))
            seeds = data.draw(st.lists(st.integers(0, 2), min_size=len(raw), max_size=len(raw)))
            new_blocks.append([_entry(p, n) for p, n in zip(raw, seeds, strict=True)])
        if data.draw(st.booleans()):
            extra = data.draw(st.lists(NAMES, min_size=1, max_size=4))
            if data.draw(st.booleans()):
                extra = sorted(extra, key=str.encode)
            new_blocks.append([_entry(p, 1) for p in extra])
    if not new_blocks:
        return
    new_doc, _ = _tree(new_blocks, pieces)

    def read(refs: list[tree.PieceRef]) -> list[bytes]:
        return [pieces[r.sha256] for r in refs]

    whole = _verdict(tree.iter_files(new_doc, read))
    by_diff = _verdict(tree.checked_changes(old_doc, new_doc, read))
    assert (whole == "accepted") == (by_diff == "accepted"), (whole, by_diff, new_blocks)


def test_a_path_repeated_just_after_a_shared_leaf_is_refused() -> None:
    """The case the diff's order check exists for: a new leaf after a leaf both trees
    share names a path that leaf holds; no change is out of order among the changes, and
    the new tree's key after the shared leaf is below the old tree's next key."""
    a = [_entry(p) for p in ("a/1", "a/2", "a/3")]
    c = [_entry(p) for p in ("c/1", "c/2")]
    pieces: dict[str, bytes] = {}
    old_doc, _ = _tree([a, c], pieces)
    new_doc, _ = _tree([a, [_entry("a/2", 1), _entry("b/1")], c], pieces)

    def read(refs: list[tree.PieceRef]) -> list[bytes]:
        return [pieces[r.sha256] for r in refs]

    assert _verdict(tree.iter_files(new_doc, read)).startswith("refused")
    assert _verdict(tree.checked_changes(old_doc, new_doc, read)).startswith("refused")
    # and the honest insertion there is taken: b/1 after the shared leaf
    ok_doc, _ = _tree([a, [_entry("b/1")], c], pieces)
    assert _verdict(tree.checked_changes(old_doc, ok_doc, read)) == "accepted"
