"""Manifests in a store: writing format 2 pieces as objects, reading them back.

The tree format itself (protocol/tree.py) takes and returns bytes; this module is where its
pieces meet an :class:`ObjectStore`. A piece is stored like a chunk (compressed, named by the
SHA-256 of its bytes), so collection, mirrors, peers and packs treat it like any object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from caravane.protocol import tree
from caravane.protocol.errors import VerificationError
from caravane.protocol.metadata import FileEntry, Manifest, ReleaseRef

from .errors import StoreError
from .store import ObjectStore, write_atomic


def store_reader(
    store: ObjectStore, fetch: Callable[[dict[str, int]], None] | None = None
) -> tree.PieceReader:
    """Pieces from ``store``; ``fetch`` is asked first for those it lacks (an upstream).

    The tree code verifies every piece's hash itself, so the store skips its own check.
    """

    def read(refs: list[tree.PieceRef]) -> list[bytes]:
        if fetch is not None:
            missing = {r.sha256: r.length for r in refs if not store.has(r.sha256)}
            if missing:
                fetch(missing)
        out = []
        for r in refs:
            try:
                out.append(store.read(r.sha256, r.length, verify=False))
            except StoreError:
                raise VerificationError(
                    f"manifest piece {r.sha256[:16]} is not in {store.root}: the release is "
                    "incomplete here; sync again or apply the pack that carries it"
                ) from None
        return out

    return read


class PieceWriter:
    """Where a :class:`~caravane.protocol.tree.TreeWriter` puts pieces: this store, a batch
    at a time (one presence query and one index transaction per ``BATCH`` pieces; a piece
    already here, shared with an earlier release, is freshened instead of written)."""

    BATCH = 64

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._items: list[tuple[str | None, bytes]] = []

    def put(self, ref: tree.PieceRef, data: bytes) -> None:
        self._items.append((ref.sha256, data))
        if len(self._items) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        if self._items:
            self.store.put_raw_many(self._items)
            self._items = []


@dataclass
class WrittenTree:
    """A file list whose pieces are in the store: what its document and collection need."""

    root: tree.PieceRef | None
    files: int
    size: int
    #: every piece, {sha256: length} (a few per thousand files)
    objects: dict[str, int]


def write_tree(
    store: ObjectStore,
    entries: Iterable[FileEntry | tree.EncodedEntry | list[tree.EncodedEntry]],
    check: bool = True,
) -> WrittenTree:
    """Write the pieces of ``entries`` (ascending paths) into ``store`` as they close.

    Nothing here holds more than the open run of each level of the tree.
    """
    sink = PieceWriter(store)
    writer = tree.TreeWriter(sink.put, check=check)
    for entry in entries:
        if isinstance(entry, list):  # a run of unchanged files (Ingest, ``encoded``)
            writer.add_run(entry)
        else:
            writer.add(entry)
    root = writer.finish()
    sink.flush()
    return WrittenTree(root, writer.files, writer.size, writer.objects)


def write_manifest(
    store: ObjectStore, path: Path, manifest: Manifest, durable: bool = False
) -> tuple[bytes, Manifest]:
    """Store ``manifest`` in format 2: pieces first, then its document at ``path``.

    Returns the document (what the channel metadata signs by hash) and the manifest as a
    reader will decode it (its pieces recorded, for collection and verification).
    """
    # pieces already here belong to a retained release, and the caller holds the lock that
    # collection takes: only the changed ones are written (a few per update)
    writer = write_tree(store, manifest.files, check=False)
    doc = tree.encode_doc(
        manifest.channel,
        manifest.version,
        manifest.created,
        manifest.notes,
        writer.files,
        writer.size,
        writer.root,
    )
    write_atomic(path, doc, durable)
    written = Manifest(
        manifest.channel,
        manifest.version,
        manifest.created,
        manifest.files,
        manifest.notes,
        spec_version=tree.TREE_SPEC_VERSION,
        tree_objects=dict(writer.objects),
    )
    return doc, written


def release_ref(doc: bytes, manifest: Manifest, version: int | None = None) -> ReleaseRef:
    """What channel metadata says of a release whose manifest document is ``doc``."""
    return ReleaseRef(
        manifest.version if version is None else version,
        hashlib.sha256(doc).hexdigest(),
        len(doc),
        manifest.created,
        manifest.total_size,
        len(manifest.files),
    )


def pieces_of(doc: bytes, store: ObjectStore) -> Iterator[tuple[str, bytes]]:
    """Each piece of a format 2 document, id and bytes, from ``store`` (collection's mark:
    the pieces themselves, and the object ids written in them), a batch at a time."""
    if tree.spec_version_of(doc) != tree.TREE_SPEC_VERSION:
        return
    reader = store_reader(store)
    for ref, data, _ in tree.walk(tree.parse_doc(doc), reader, "manifest"):
        yield ref.sha256, data


__all__ = [
    "PieceWriter",
    "WrittenTree",
    "pieces_of",
    "release_ref",
    "store_reader",
    "write_manifest",
    "write_tree",
]
