"""Manifest format 2: a release's file list as a tree of hashed pieces.

Format 1 signs one flat document naming every file; at a national library's size it is tens
or hundreds of MB, every update re-sends (or delta-encodes against) all of it, and it hits
``MAX_MANIFEST_BYTES`` near a million files. Format 2 keeps the same sorted list of file
entries but cuts it into **leaves** at content-defined boundaries and names the leaves from
**nodes**, level by level up to one root, as prolly trees (Noms, Dolt) do over a sorted key
space. The manifest document itself (signed by hash in channel metadata) is a few hundred
bytes naming the root. Pieces are ordinary objects, addressed by the SHA-256 of their
canonical bytes, so every carrier that moves objects (packs, drives, mirrors, peers) moves
them, and a receiver fetches only the pieces it does not hold: a one-file change replaces one
leaf and one node per level (four pieces at a million files).

Why content-defined boundaries: a boundary falls after an entry whose path hashes to 0
modulo the fan-out, so inserting or removing a file changes the piece that holds it (and its
neighbour at worst), never every piece after it. Bounds in entries and bytes keep a hostile
or pathological tree small per piece.

Load order, for a reader (every step refuses on the first failure)::

    1. the manifest document verified against the signed ReleaseRef (caller, trust.py)
    2. the root piece, by the hash and length the document names
    3. each level's pieces, by the hashes and lengths their parent names; a node's counts
       and sizes must add up to what its parent claims, levels must step down by one, and
       the leaves must hold strictly ascending paths starting at the key the parent names
    4. the flattened list goes through the same path checks as format 1

An update may instead be checked by its diff from a verified release (:func:`checked_changes`):
the pieces both trees name are skipped unread, named with the same counts; the new tree's
keys must ascend across them; the changed paths and the added ones are checked as in 4.

This module takes and returns bytes; where pieces come from (a store, a pack, an upstream)
is the caller's ``PieceReader``.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .canonical import canonical_bytes, load_json
from .errors import FormatError, VerificationError
from .metadata import FileEntry, Manifest, check_channel
from .paths import SortedPathChecker, check_added, check_paths

TREE_SPEC_VERSION = 2
LEAF_TYPE = "manifest-leaf"
NODE_TYPE = "manifest-node"

#: a piece larger than this is refused before it is parsed (a leaf holding one file of
#: 40 GB of 64 KiB chunks is about 48 MB)
MAX_PIECE_BYTES = 64 * 1024 * 1024
#: levels above the leaves; 36 children a node on average gives 10^12 files at 6
MAX_LEVELS = 8
MAX_FILES = 100_000_000
#: the signed document itself: a root reference, counts and the release notes (the same
#: bound as any signed metadata)
MAX_DOC_BYTES = 1024 * 1024
MAX_CHILDREN = 1024
MAX_LEAF_ENTRIES = 2048

#: pieces read at once while walking a level
READ_BATCH = 256

LEAF_MIN, LEAF_MODULUS, LEAF_MAX_BYTES = 8, 64, 256 * 1024
NODE_MIN, NODE_MODULUS, NODE_MAX_CHILDREN = 4, 32, 512


@dataclass(frozen=True)
class PieceRef:
    """A piece as its parent names it: the key it starts at, its hash, length and counts."""

    first: str
    sha256: str
    length: int
    files: int
    size: int
    level: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "sha256": self.sha256,
            "length": self.length,
            "files": self.files,
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, data: Any, level: int, what: str) -> PieceRef:
        if not isinstance(data, dict):
            raise FormatError(f"{what}: malformed piece reference")
        first, sha, length = data.get("first"), data.get("sha256"), data.get("length")
        files, size = data.get("files"), data.get("size")
        if not isinstance(first, str) or not isinstance(sha, str) or len(sha) != 64:
            raise FormatError(f"{what}: malformed piece reference")
        try:
            int(sha, 16)
        except ValueError:
            raise FormatError(f"{what}: piece hash is not hexadecimal") from None
        for name, value in (("length", length), ("files", files), ("size", size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise FormatError(f"{what}: piece {name} is not a count")
        assert isinstance(length, int) and isinstance(files, int) and isinstance(size, int)
        if length == 0 or length > MAX_PIECE_BYTES or files == 0:
            raise FormatError(f"{what}: piece of {length} bytes and {files} files is refused")
        return cls(first, sha.lower(), length, files, size, level)


@dataclass
class EncodedManifest:
    """A manifest in format 2: the signed document, and the pieces it needs, top-down."""

    doc: bytes
    root: PieceRef | None
    pieces: list[tuple[PieceRef, bytes]] = field(default_factory=list)

    def objects(self) -> dict[str, int]:
        return {ref.sha256: ref.length for ref, _ in self.pieces}


#: reads pieces by reference, a level at a time (so a fetcher can ask for them together);
#: returns their bytes in the same order. Verification is this module's job, not the reader's.
PieceReader = Callable[[list[PieceRef]], list[bytes]]


def _split_hash(level: int, key: str) -> int:
    digest = hashlib.sha256(b"caravane-tree\x00%d\x00" % level + key.encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _leaf_bytes(entries: list[dict[str, Any]]) -> bytes:
    return canonical_bytes({"_type": LEAF_TYPE, "files": entries})


_LEAF_HEAD = b'{"_type":"%s","files":[' % LEAF_TYPE.encode()
_LEAF_TAIL = b"]}"


class EncodedEntry(NamedTuple):
    """A file entry already in its canonical bytes, with what a writer needs to place it.

    A republish takes unchanged files' entries from the files cache in this form, so that
    a million unchanged files cost no entry object and no JSON encoding each: a leaf is
    its entries' bytes joined (exactly :func:`_leaf_bytes` of their dicts)."""

    path: str
    size: int
    chunks: int  # how many
    data: bytes
    #: whether a leaf may end after it (its path's split hash: kept with it, not hashed again)
    cut: bool


def encode_entry(entry: FileEntry) -> EncodedEntry:
    """``entry``'s canonical bytes, as a leaf holds them."""
    path = entry.path
    data = entry_bytes(entry)
    return EncodedEntry(path, entry.size, len(entry.chunks), data, _is_cut(path))


#: JSON's own string encoder (the C one where there is one): what ``json.dumps`` with
#: ``ensure_ascii=False`` writes for a string
_json_str: Callable[[str], str] = json.encoder.encode_basestring


def entry_bytes(entry: FileEntry) -> bytes:
    """:func:`canonical_bytes` of ``entry.to_dict()``, written out for the one shape a file
    entry has (keys in sorted order: chunks, mode, path, sha256, size).

    A first publish encodes every file's entry: the general encoder (a check of every value,
    a dict and a list per chunk, then ``json.dumps``) cost about 25 us a file, a third of
    what a small file's whole ingest may cost. Any value of another type than the entry's
    own (a bool or float for a count, say) takes the general encoder, which says what is
    wrong with it; the two are compared on drawn entries in the tests."""
    size, mode, chunks, sha = entry.size, entry.mode, entry.chunks, entry.sha256
    if (
        type(size) is not int
        or type(mode) is not int
        or type(sha) is not str
        or type(entry.path) is not str
        or not all(
            isinstance(c, tuple | list) and len(c) == 2 and type(c[0]) is str and type(c[1]) is int
            for c in chunks
        )
    ):
        return canonical_bytes(entry.to_dict())
    esc = _json_str
    listed = ",".join([f"[{esc(h)},{n}]" for h, n in chunks])
    return (
        f'{{"chunks":[{listed}],"mode":{mode},"path":{esc(entry.path)},'
        f'"sha256":{esc(sha)},"size":{size}}}'
    ).encode()


def _is_cut(path: str) -> bool:
    return _split_hash(0, path) % LEAF_MODULUS == 0


def _node_bytes(level: int, children: list[PieceRef]) -> bytes:
    return canonical_bytes(
        {"_type": NODE_TYPE, "level": level, "children": [c.to_dict() for c in children]}
    )


def _ref(first: str, data: bytes, files: int, size: int, level: int) -> PieceRef:
    return PieceRef(first, hashlib.sha256(data).hexdigest(), len(data), files, size, level)


def _leaf(first: str, run: list[bytes], size: int, last: EncodedEntry) -> tuple[PieceRef, bytes]:
    data = b"".join((_LEAF_HEAD, b",".join(run), _LEAF_TAIL))
    if len(data) > MAX_PIECE_BYTES:  # one file of about 56 GB of 64 KiB chunks
        raise FormatError(
            f"{last.path!r} has {last.chunks} chunks, more than one manifest "
            f"piece of {MAX_PIECE_BYTES} bytes holds; split the file or publish it with larger "
            "chunks"
        )
    return _ref(first, data, len(run), size, 0), data


class TreeWriter:
    """Builds a sorted file list's pieces as its entries arrive, one run per level held.

    A publisher of a million files never holds the list: each piece goes to ``put`` (a
    store) the moment it closes, and only the open run of each level (a few hundred entries
    or references) stays here. The pieces are exactly those of the whole list built at once,
    since every boundary depends only on the run it closes: the same files give the same
    pieces at the hub, in a pack builder, in a test.

    ``check``: each path is checked as it arrives (:class:`SortedPathChecker`); a caller that
    checked them already may skip it. Entries out of order are refused either way.
    """

    def __init__(self, put: Callable[[PieceRef, bytes], None], check: bool = True) -> None:
        self._put = put
        self._checker = SortedPathChecker() if check else None
        self._last: str | None = None
        self._run: list[bytes] = []
        self._tail: EncodedEntry | None = None
        self._run_bytes = self._run_size = 0
        self._first = ""
        #: per level above the leaves: the children of the node being filled
        self._pending: list[list[PieceRef]] = [[]]
        #: per level: pieces closed, and the last one (the root, when a level has one)
        self._closed: list[int] = [0]
        self._last_ref: list[PieceRef | None] = [None]
        self.files = 0
        self.size = 0
        #: every piece written, {sha256: length} (what collection keeps for the release)
        self.objects: dict[str, int] = {}

    def add(self, entry: FileEntry | EncodedEntry) -> None:
        """The next entry; an :class:`EncodedEntry` is taken as its bytes stand (the caller
        encoded it from a checked entry: the files cache, or :func:`encode_entry`)."""
        coded = entry if isinstance(entry, EncodedEntry) else encode_entry(entry)
        path = coded.path
        if self._checker is not None:
            self._checker.add(path)
        elif self._last is not None and not self._last < path:
            raise FormatError(f"manifest: files out of order or repeated at {path!r}")
        self._last = path
        self.files += 1
        self.size += coded.size
        run = self._run
        if not run:
            self._first = path
        run.append(coded.data)
        self._tail = coded
        self._run_size += coded.size
        self._run_bytes += 80 + len(path) + 70 * coded.chunks
        natural = len(run) >= LEAF_MIN and coded.cut
        if natural or self._run_bytes >= LEAF_MAX_BYTES or len(run) >= MAX_LEAF_ENTRIES:
            self._close_leaf()

    def add_all(self, entries: Iterable[FileEntry | EncodedEntry]) -> None:
        for entry in entries:
            self.add(entry)

    def add_run(self, entries: list[EncodedEntry]) -> None:
        """:meth:`add` for each of ``entries`` (a republish's unchanged files, a folder's run
        at a time), its loop written out: a million calls of :meth:`add` were a sixth of a
        republish at a million files."""
        if self._checker is not None:
            for entry in entries:
                self.add(entry)
            return
        last, run = self._last, self._run
        for coded in entries:
            path, size, chunks, data, cut = coded
            if last is not None and not last < path:
                raise FormatError(f"manifest: files out of order or repeated at {path!r}")
            last = path
            if not run:
                self._first = path
            run.append(data)
            self._run_size += size
            self._run_bytes += 80 + len(path) + 70 * chunks
            if (
                (cut and len(run) >= LEAF_MIN)
                or self._run_bytes >= LEAF_MAX_BYTES
                or len(run) >= MAX_LEAF_ENTRIES
            ):
                self._tail = coded
                self._close_leaf()
                run = self._run
        if entries:
            self._tail = entries[-1]
        self._last = last
        self.files += len(entries)
        self.size += sum(e[1] for e in entries)

    def _close_leaf(self) -> None:
        assert self._tail is not None
        ref, data = _leaf(self._first, self._run, self._run_size, self._tail)
        self._run, self._run_bytes, self._run_size = [], 0, 0
        self._emit(ref, data)

    def _emit(self, ref: PieceRef, data: bytes) -> None:
        self._put(ref, data)
        self.objects[ref.sha256] = ref.length
        level = ref.level
        self._closed[level] += 1
        self._last_ref[level] = ref
        if len(self._pending) <= level + 1:
            self._pending.append([])
            self._closed.append(0)
            self._last_ref.append(None)
        run = self._pending[level + 1]
        run.append(ref)
        up = level + 1
        if (len(run) >= NODE_MIN and _split_hash(up, ref.first) % NODE_MODULUS == 0) or len(
            run
        ) >= NODE_MAX_CHILDREN:
            self._close_node(up)

    def _close_node(self, level: int) -> None:
        run = self._pending[level]
        self._pending[level] = []
        data = _node_bytes(level, run)
        ref = _ref(run[0].first, data, sum(c.files for c in run), sum(c.size for c in run), level)
        self._emit(ref, data)

    def finish(self) -> PieceRef | None:
        """Close the open runs; the root (None for an empty release)."""
        if self._checker is not None:
            self._checker.finish()
        if self._run:
            self._close_leaf()
        level = 0
        while self._closed[level] > 1:
            if self._pending[level + 1]:
                self._close_node(level + 1)
            level += 1
        return self._last_ref[level]


def build_tree(files: list[FileEntry]) -> tuple[PieceRef | None, list[tuple[PieceRef, bytes]]]:
    """The pieces of ``files`` (sorted by path), root first then level by level down.

    Deterministic: the same file list gives the same pieces at the hub and everywhere else.
    An empty release has no root. Holds every piece: :class:`TreeWriter` is the streaming form.
    """
    pieces: list[tuple[PieceRef, bytes]] = []
    writer = TreeWriter(lambda ref, data: pieces.append((ref, data)), check=False)
    writer.add_all(files)
    root = writer.finish()
    if root is None:
        return None, []
    pieces.sort(key=lambda p: -p[0].level)  # stable: each level stays in key order
    return root, pieces


def wire_bound(files: int, size: int) -> int:
    """The most bytes a release's whole tree may take, from its signed counts.

    Generous (a kilobyte a file, and a chunk reference for every 16 KiB) because it only
    stops an endless or bloated stream; every piece is verified as it arrives anyway.
    """
    return files * 1024 + (size // (16 * 1024) + files) * 80 + 64 * 1024


def _check_sorted(files: list[FileEntry]) -> None:
    for a, b in zip(files, files[1:], strict=False):
        if not a.path < b.path:
            raise FormatError(f"manifest: files out of order or repeated at {b.path!r}")


def encode_manifest(manifest: Manifest) -> EncodedManifest:
    """``manifest`` in format 2 (its files sorted by path, as every publisher sorts them)."""
    root, pieces = build_tree(manifest.files)
    doc = encode_doc(
        manifest.channel,
        manifest.version,
        manifest.created,
        manifest.notes,
        len(manifest.files),
        manifest.total_size,
        root,
    )
    return EncodedManifest(doc, root, pieces)


def root_ref(root: PieceRef | None) -> dict[str, Any] | None:
    """How a document names its tree's root (``tree``): the root's counts are the
    document's own. The same shape names it in an upload (``PUT .../tree``)."""
    if root is None:
        return None
    return {"sha256": root.sha256, "length": root.length, "level": root.level}


def encode_doc(
    channel: str,
    version: int,
    created: str,
    notes: str,
    files: int,
    size: int,
    root: PieceRef | None,
) -> bytes:
    """The signed document of a tree whose pieces are written (a :class:`TreeWriter`'s)."""
    tree = root_ref(root)
    doc = canonical_bytes(
        {
            "_type": "manifest",
            "spec_version": TREE_SPEC_VERSION,
            "channel": channel,
            "version": version,
            "created": created,
            "notes": notes,
            "files": files,
            "size": size,
            "tree": tree,
        }
    )
    if len(doc) > MAX_DOC_BYTES:
        raise FormatError(
            f"the release notes make the manifest {len(doc)} bytes, more than the "
            f"{MAX_DOC_BYTES} a centre reads; shorten them"
        )
    return doc


@dataclass(frozen=True)
class TreeDoc:
    """The signed format 2 document, parsed: what it says before any piece is read."""

    channel: str
    version: int
    created: str
    notes: str
    files: int
    size: int
    root: PieceRef | None


def spec_version_of(data: bytes, what: str = "manifest") -> int:
    """1 for a flat manifest, 2 for a tree (the document is parsed, not checked).

    A tree's document is at most ``MAX_DOC_BYTES``: anything longer is a flat manifest,
    known without parsing it twice (format 1 lists reach hundreds of MB)."""
    if len(data) > MAX_DOC_BYTES:
        return 1
    doc = load_json(data, what)
    if not isinstance(doc, dict):
        raise FormatError(f"{what}: not a release manifest")
    version = doc.get("spec_version")
    return version if isinstance(version, int) else 0


def parse_doc(data: bytes, what: str = "manifest") -> TreeDoc:
    doc = load_json(data, what, MAX_DOC_BYTES)
    if not isinstance(doc, dict) or doc.get("_type") != "manifest":
        raise FormatError(f"{what}: not a release manifest")
    if doc.get("spec_version") != TREE_SPEC_VERSION:
        raise FormatError(f"{what}: unsupported spec_version {doc.get('spec_version')!r}")
    files, size, version = doc.get("files"), doc.get("size"), doc.get("version")
    for name, value in (("files", files), ("size", size), ("version", version)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise FormatError(f"{what}: {name} is not a count")
    assert isinstance(files, int) and isinstance(size, int) and isinstance(version, int)
    if files > MAX_FILES:
        raise FormatError(f"{what}: {files} files, more than the {MAX_FILES} allowed")
    channel, created = doc.get("channel"), doc.get("created")
    if not isinstance(channel, str) or not isinstance(created, str):
        raise FormatError(f"{what}: malformed manifest")
    tree = doc.get("tree")
    root: PieceRef | None = None
    if tree is None:
        if files:
            raise FormatError(f"{what}: names {files} files but no tree")
    else:
        if not isinstance(tree, dict):
            raise FormatError(f"{what}: malformed tree reference")
        level = tree.get("level")
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= MAX_LEVELS:
            raise FormatError(f"{what}: tree level {level!r} is refused")
        root = PieceRef.from_dict(
            {**tree, "first": "", "files": files or 1, "size": size}, level, f"{what} tree"
        )
        if files == 0:
            raise FormatError(f"{what}: a tree with no files")
    return TreeDoc(
        check_channel(channel), version, created, str(doc.get("notes", "")), files, size, root
    )


def _check_piece(ref: PieceRef, data: bytes, what: str) -> Any:
    if len(data) != ref.length:
        raise VerificationError(f"{what}: {len(data)} bytes, its parent says {ref.length}")
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise VerificationError(f"{what}: SHA-256 does not match the one its parent names")
    return load_json(data, what)


def _node_children(ref: PieceRef, doc: Any, what: str) -> list[PieceRef]:
    if not isinstance(doc, dict) or doc.get("_type") != NODE_TYPE:
        raise FormatError(f"{what}: not a manifest node")
    if doc.get("level") != ref.level:
        raise FormatError(f"{what}: level {doc.get('level')!r}, its parent says {ref.level}")
    raw = doc.get("children")
    if not isinstance(raw, list) or not raw or len(raw) > MAX_CHILDREN:
        raise FormatError(f"{what}: malformed children")
    children = [PieceRef.from_dict(c, ref.level - 1, f"{what} child") for c in raw]
    if sum(c.files for c in children) != ref.files or sum(c.size for c in children) != ref.size:
        raise VerificationError(f"{what}: children do not add up to what its parent says")
    if ref.first and children[0].first != ref.first:
        raise FormatError(f"{what}: starts at {children[0].first!r}, its parent says {ref.first!r}")
    for a, b in zip(children, children[1:], strict=False):
        if not a.first < b.first:
            raise FormatError(f"{what}: children out of order at {b.first!r}")
    return children


def _leaf_entries(ref: PieceRef, doc: Any, what: str) -> list[FileEntry]:
    if not isinstance(doc, dict) or doc.get("_type") != LEAF_TYPE:
        raise FormatError(f"{what}: not a manifest leaf")
    raw = doc.get("files")
    if not isinstance(raw, list) or not raw or len(raw) > MAX_LEAF_ENTRIES:
        raise FormatError(f"{what}: malformed file list")
    entries = [FileEntry.from_dict(d) for d in raw]
    if len(entries) != ref.files or sum(e.size for e in entries) != ref.size:
        raise VerificationError(f"{what}: files do not add up to what its parent says")
    if ref.first and entries[0].path != ref.first:
        raise FormatError(f"{what}: starts at {entries[0].path!r}, its parent says {ref.first!r}")
    return entries


def leaf_entries(ref: PieceRef, data: bytes, what: str) -> list[FileEntry]:
    """A leaf's bytes checked against its reference, as its entries."""
    if ref.level != 0:
        raise FormatError(f"{what}: a node where a leaf was expected")
    return _leaf_entries(ref, _check_piece(ref, data, what), what)


def children_of(ref: PieceRef, data: bytes, what: str) -> list[PieceRef]:
    """A piece checked against its reference; the pieces it names (none for a leaf)."""
    parsed = _check_piece(ref, data, what)
    if ref.level > 0:
        return _node_children(ref, parsed, what)
    _leaf_entries(ref, parsed, what)
    return []


def walk(doc: TreeDoc, read: PieceReader, what: str) -> Iterator[tuple[PieceRef, bytes, Any]]:
    """Every piece of the tree, verified, level by level from the root (parsed JSON too)."""
    if doc.root is None:
        return
    level_refs = [doc.root]
    while level_refs:
        below: list[PieceRef] = []
        # a batch at a time: a reader that fetches asks for many at once, and no more than
        # a batch of pieces' bytes is held here whatever the size of the level
        for start in range(0, len(level_refs), READ_BATCH):
            batch = level_refs[start : start + READ_BATCH]
            datas = read(batch)
            if len(datas) != len(batch):
                raise VerificationError(f"{what}: pieces missing")
            for ref, data in zip(batch, datas, strict=True):
                parsed = _check_piece(ref, data, f"{what} piece {ref.sha256[:12]}")
                if ref.level > 0:
                    below.extend(_node_children(ref, parsed, f"{what} piece {ref.sha256[:12]}"))
                yield ref, data, parsed
        level_refs = below


def decode_manifest(data: bytes, read: PieceReader, what: str = "manifest") -> Manifest:
    """A format 2 manifest and its pieces, checked, as the in-memory :class:`Manifest`."""
    doc = parse_doc(data, what)
    files: list[FileEntry] = []
    objects: dict[str, int] = {}
    for ref, _, parsed in walk(doc, read, what):
        objects[ref.sha256] = ref.length
        if ref.level == 0:
            files.extend(_leaf_entries(ref, parsed, f"{what} piece {ref.sha256[:12]}"))
    if len(files) != doc.files:
        raise VerificationError(f"{what}: holds {len(files)} files, says {doc.files}")
    _check_sorted(files)
    check_paths(f.path for f in files)
    return Manifest(
        doc.channel,
        doc.version,
        doc.created,
        files,
        doc.notes,
        spec_version=TREE_SPEC_VERSION,
        tree_objects=objects,
    )


#: leaves read at once while iterating files (each at most ``LEAF_MAX_BYTES`` of entries,
#: bar one huge file's chunk list)
LEAF_BATCH = 32


def iter_leaves(
    doc: TreeDoc, read: PieceReader, what: str = "manifest"
) -> Iterator[tuple[PieceRef, list[FileEntry]]]:
    """Each leaf with its entries, in path order, every piece verified on the way down.

    Depth first, so what is held is one path of nodes and a batch of leaves, never a level:
    a reader of a million-file release holds a few hundred entries at a time.
    """
    for ref, parsed, name in _leaf_docs(doc, read, what):
        yield ref, _leaf_entries(ref, parsed, name)


def iter_own_files(doc: TreeDoc, read: PieceReader, what: str = "manifest") -> Iterator[FileEntry]:
    """The files of a tree this process has just written from entries it checked itself (a
    publish's commit, under the lock): every piece verified by its hash, so the bytes are
    the ones written, but each entry made as it stands, without :func:`iter_files`' checks
    of its fields, its path and the order (a third of a first publish's commit: 0.8 s at
    100,000 files). Never for a tree that came from elsewhere."""
    for _, parsed, _ in _leaf_docs(doc, read, what):
        for d in parsed["files"]:
            yield FileEntry(
                d["path"], d["size"], d["mode"], d["sha256"], [(h, n) for h, n in d["chunks"]]
            )


def iter_paths(doc: TreeDoc, read: PieceReader, what: str = "manifest") -> Iterator[str]:
    """The path of each file, every piece verified by its hash, the paths **not** checked:
    for a caller that checks what it uses of them (a checkout making the folders, one path
    in a thousand, before the full walk), at a fraction of :func:`iter_files`."""
    for _, parsed, name in _leaf_docs(doc, read, what):
        files = parsed.get("files") if isinstance(parsed, dict) else None
        if not isinstance(files, list):
            raise FormatError(f"{name}: malformed file list")
        for d in files:
            path = d.get("path") if isinstance(d, dict) else None
            if not isinstance(path, str):
                raise FormatError(f"{name}: malformed file entry")
            yield path


def _leaf_docs(doc: TreeDoc, read: PieceReader, what: str) -> Iterator[tuple[PieceRef, Any, str]]:
    """Each leaf's reference, its parsed JSON (its hash checked) and its name, in order."""
    if doc.root is None:
        return
    stack: list[list[PieceRef]] = [[doc.root]]
    while stack:
        refs = stack[-1]
        if not refs:
            stack.pop()
            continue
        if refs[0].level > 0:
            stack.append(_open_node(read, refs.pop(0), what))
            continue
        n = 1
        while n < len(refs) and n < LEAF_BATCH and refs[n].level == 0:
            n += 1
        batch, stack[-1] = refs[:n], refs[n:]
        for ref, data in zip(batch, _read(read, batch, what), strict=True):
            name = f"{what} piece {ref.sha256[:12]}"
            yield ref, _check_piece(ref, data, name), name


def iter_refs(doc: TreeDoc, read: PieceReader, what: str = "manifest") -> Iterator[PieceRef]:
    """Every piece the tree names, nodes verified, leaves not read (about one piece in
    thirty): what collection keeps and what a mirror must hold, at a fraction of a walk."""
    if doc.root is None:
        return
    stack: list[list[PieceRef]] = [[doc.root]]
    while stack:
        refs = stack[-1]
        if not refs:
            stack.pop()
            continue
        ref = refs.pop(0)
        yield ref
        if ref.level > 0:
            stack.append(_open_node(read, ref, what))


def _open_node(read: PieceReader, ref: PieceRef, what: str) -> list[PieceRef]:
    """The children a node names, the node read and verified against its reference."""
    (data,) = _read(read, [ref], what)
    name = f"{what} piece {ref.sha256[:12]}"
    return _node_children(ref, _check_piece(ref, data, name), name)


def _read(read: PieceReader, refs: list[PieceRef], what: str) -> list[bytes]:
    datas = read(refs)
    if len(datas) != len(refs):
        raise VerificationError(f"{what}: pieces missing")
    return datas


def iter_files(doc: TreeDoc, read: PieceReader, what: str = "manifest") -> Iterator[FileEntry]:
    """The release's files in path order, checked as :func:`decode_manifest` checks them
    (paths, order, counts) without holding them: the streaming form of ``Manifest.files``.

    A check that fails raises part way through; a caller that acts on entries as they come
    (a checkout) must treat what it did so far as unfinished.
    """
    checker = SortedPathChecker()
    size = 0
    for _, entries in iter_leaves(doc, read, what):
        for entry in entries:
            checker.add(entry.path)
            size += entry.size
            yield entry
    checker.finish()
    if checker.count != doc.files or size != doc.size:
        raise VerificationError(
            f"{what}: holds {checker.count} files of {size} bytes, says {doc.files} of {doc.size}"
        )


class PathCursor:
    """A format 2 release's entries from a path on, found by going down from the root by
    the first keys the nodes give (every piece verified as it is read): what a folder's
    listing needs, at the cost of that folder's entries and a few nodes per level."""

    def __init__(self, doc: TreeDoc, read: PieceReader, what: str) -> None:
        self._root, self._read, self._what = doc.root, read, what
        self._nodes: dict[str, tuple[list[str], list[PieceRef]]] = {}

    def _piece(self, ref: PieceRef) -> bytes:
        datas = self._read([ref])
        if len(datas) != 1:
            raise VerificationError(f"{self._what}: pieces missing")
        return datas[0]

    def _children(self, ref: PieceRef) -> tuple[list[str], list[PieceRef]]:
        got = self._nodes.get(ref.sha256)
        if got is None:
            kids = children_of(ref, self._piece(ref), f"{self._what} piece {ref.sha256[:12]}")
            if len(self._nodes) >= 1024:
                self._nodes.clear()
            got = self._nodes[ref.sha256] = ([k.first for k in kids], kids)
        return got

    def _leaf(self, ref: PieceRef) -> list[FileEntry]:
        return leaf_entries(ref, self._piece(ref), f"{self._what} piece {ref.sha256[:12]}")

    def entries_from(self, key: str) -> Iterator[FileEntry]:
        """The entries whose path is ``key`` or after it, in order."""
        if self._root is None:
            return
        stack: list[tuple[list[PieceRef], int]] = []
        ref = self._root
        while ref.level > 0:
            firsts, kids = self._children(ref)
            i = max(bisect.bisect_right(firsts, key) - 1, 0)
            stack.append((kids, i))
            ref = kids[i]
        entries = self._leaf(ref)
        yield from entries[bisect.bisect_left([e.path for e in entries], key) :]
        while stack:
            kids, i = stack.pop()
            if i + 1 == len(kids):
                continue
            stack.append((kids, i + 1))
            ref = kids[i + 1]
            while ref.level > 0:
                _, below = self._children(ref)
                stack.append((below, 0))
                ref = below[0]
            yield from self._leaf(ref)

    def listing(self, prefix: str) -> list[tuple[str, bool]]:
        """The direct entries of the folder ``prefix`` ("" or ending with "/"): (name, is a
        folder). A subfolder is skipped in one seek past its paths, so the listing costs
        the folder's own files and a descent per subfolder, not what lies below."""
        out: list[tuple[str, bool]] = []
        key = prefix
        while True:
            for entry in self.entries_from(key):
                if not entry.path.startswith(prefix):
                    return out
                rest = entry.path[len(prefix) :]
                cut = rest.find("/")
                if cut < 0:
                    out.append((rest, False))
                    continue
                out.append((rest[:cut], True))
                key = prefix + rest[:cut] + "0"  # "0" follows "/": past the subfolder
                break
            else:
                return out


#: a change between two releases: (old entry or None, new entry or None), same path
Change = tuple[FileEntry | None, FileEntry | None]


class _Side:
    """One tree's remaining key space, in order: unexpanded pieces and loose entries."""

    def __init__(self, doc: TreeDoc | None, read: PieceReader, what: str) -> None:
        self.items: deque[PieceRef | FileEntry] = deque(
            [doc.root] if doc is not None and doc.root is not None else []
        )
        self.read = read
        self.what = what
        self.pieces_read = 0

    def expand(self) -> None:
        """Replace the first piece by what it holds (its children, or its entries)."""
        ref = self.items.popleft()
        assert isinstance(ref, PieceRef)
        (data,) = _read(self.read, [ref], self.what)
        self.pieces_read += 1
        name = f"{self.what} piece {ref.sha256[:12]}"
        parsed = _check_piece(ref, data, name)
        inner: list[PieceRef | FileEntry] = []
        if ref.level > 0:
            inner.extend(_node_children(ref, parsed, name))
        else:
            inner.extend(_leaf_entries(ref, parsed, name))
        self.items.extendleft(reversed(inner))


def _key(item: PieceRef | FileEntry) -> str:
    return item.first if isinstance(item, PieceRef) else item.path


class TreeDiff:
    """What changed from one release's tree to another's, in path order.

    Pieces with the same hash hold the same entries, so they are skipped without being read:
    a one-file change reads the pieces on that file's path in both trees (a leaf and one node
    per level, a few KB) whatever the channel's size, where comparing the two file lists cost
    time and memory in proportion to the channel. ``old`` None: everything is new.

    ``old`` must have been verified whole when it was accepted (``iter_files`` or
    :func:`decode_manifest`); ``new`` is checked as far as a walk of it would be, but for
    the paths' own rules (the caller's :class:`SortedPathChecker` over the changes and
    :func:`paths.check_added`): every piece read is verified against its parent, a piece
    both trees name must be named with the same counts (:func:`_same_piece`), and the new
    tree's keys must ascend across every piece boundary, the skipped pieces included. A
    skipped piece's last key is not read unless a new key falls below the key that follows
    the piece in ``old`` (the one case where the new tree could repeat or reorder a path
    the piece holds); then its right edge is read, a piece per level.
    """

    def __init__(
        self,
        old: TreeDoc | None,
        new: TreeDoc,
        read: PieceReader,
        what: str = "manifest",
    ) -> None:
        self._a = _Side(old, read, f"{what} (old)")
        self._b = _Side(new, read, f"{what} (new)")
        self._read = read
        self._what = f"{what} (new)"
        #: the new tree's last key so far (None at the start, or after a skipped piece)
        self._last: str | None = None
        #: a piece of the new tree skipped unread, and the key after it in the old tree
        self._skipped: tuple[PieceRef, str | None] | None = None
        self._edges_read = 0

    @property
    def pieces_read(self) -> int:
        return self._a.pieces_read + self._b.pieces_read + self._edges_read

    def _ascends(self, first: str) -> None:
        """The new tree's next item starts at ``first``: it must come after the last one."""
        skipped, self._skipped = self._skipped, None
        if skipped is not None:
            piece, bound = skipped
            if bound is not None and first >= bound:
                return  # the piece's keys are all below ``bound`` (old is sorted)
            last = self._last_key(piece)
            if not first > last:
                raise FormatError(f"{self._what}: {first!r} does not come after {last!r}")
        elif self._last is not None and not first > self._last:
            raise FormatError(f"{self._what}: {first!r} does not come after {self._last!r}")

    def _took(self, entry: FileEntry) -> None:
        self._ascends(entry.path)
        self._last = entry.path

    def _skip(self, piece: PieceRef, bound: str | None) -> None:
        self._ascends(piece.first)
        self._last, self._skipped = None, (piece, bound)

    def _last_key(self, ref: PieceRef) -> str:
        """The last path a verified piece holds: down its right edge."""
        while True:
            (data,) = _read(self._read, [ref], self._what)
            self._edges_read += 1
            name = f"{self._what} piece {ref.sha256[:12]}"
            parsed = _check_piece(ref, data, name)
            if ref.level == 0:
                return _leaf_entries(ref, parsed, name)[-1].path
            ref = _node_children(ref, parsed, name)[-1]

    def __iter__(self) -> Iterator[Change]:
        a, b = self._a, self._b
        while a.items or b.items:
            if not b.items:
                head = a.items[0]
                if isinstance(head, PieceRef):
                    a.expand()
                else:
                    a.items.popleft()
                    yield head, None
                continue
            if not a.items:
                head = b.items[0]
                if isinstance(head, PieceRef):
                    b.expand()
                else:
                    b.items.popleft()
                    self._took(head)
                    yield None, head
                continue
            x, y = a.items[0], b.items[0]
            if isinstance(x, PieceRef) and isinstance(y, PieceRef):
                if x.sha256 == y.sha256:
                    _same_piece(x, y, b.what)
                    a.items.popleft()
                    b.items.popleft()
                    self._skip(y, _key(a.items[0]) if a.items else None)
                else:
                    # open the taller piece (both when level with each other): pieces of
                    # different heights cover key ranges that do not line up
                    if x.level >= y.level:
                        a.expand()
                    if y.level >= x.level:
                        b.expand()
                continue
            if isinstance(x, FileEntry) and isinstance(y, FileEntry):
                if x.path == y.path:
                    a.items.popleft()
                    b.items.popleft()
                    self._took(y)
                    if x != y:
                        yield x, y
                elif x.path < y.path:
                    a.items.popleft()
                    yield x, None
                else:
                    b.items.popleft()
                    self._took(y)
                    yield None, y
                continue
            # an entry on one side, a piece on the other: the entry comes first when its
            # path is below every key the piece holds; otherwise the piece must be opened
            if isinstance(x, FileEntry):
                assert isinstance(y, PieceRef)
                if x.path < y.first:
                    a.items.popleft()
                    yield x, None
                else:
                    b.expand()
            else:
                assert isinstance(y, FileEntry)
                if y.path < x.first:
                    b.items.popleft()
                    self._took(y)
                    yield None, y
                else:
                    a.expand()


def _same_piece(old: PieceRef, new: PieceRef, what: str) -> None:
    """A piece both trees name is skipped unread: the new tree's parent must then say of it
    what the old one (verified) says, or counts no walk checked would pass into the new
    tree (one parent's sum holds with any child count it claims)."""
    if (
        old.length != new.length
        or old.files != new.files
        or old.size != new.size
        or old.level != new.level
        or (old.first and new.first and old.first != new.first)
    ):
        raise VerificationError(
            f"{what}: piece {new.sha256[:12]} is named with counts that are not its own"
        )


def diff(
    old: TreeDoc | None, new: TreeDoc, read: PieceReader, what: str = "manifest"
) -> Iterator[Change]:
    """:class:`TreeDiff` as a plain iterator."""
    return iter(TreeDiff(old, new, read, what))


def checked_changes(
    old: TreeDoc, new: TreeDoc, read: PieceReader, what: str = "manifest"
) -> Iterator[Change]:
    """:func:`diff` of a ``new`` tree that is not trusted yet from a verified ``old`` one,
    with every check a whole walk of ``new`` (:func:`iter_files`) would make, reading only
    the pieces the two do not share: the diff's own (pieces, counts, order across the
    pieces it skips), each changed path checked in order (:class:`SortedPathChecker`), and
    each added path against the folders it joins (:func:`paths.check_added`, once the
    changes are all out). A caller must exhaust it; what it yielded before a failure is
    not to be used. Holds the added paths (the change), not the release.
    """
    checker = SortedPathChecker()
    added: list[str] = []
    for before, entry in diff(old, new, read, what):
        if entry is not None:
            checker.add(entry.path)
            if before is None:
                added.append(entry.path)
        yield before, entry
    checker.finish()
    if added:  # names a case-insensitive drive would merge with ones already there
        check_added(added, PathCursor(new, read, what).listing)


def piece_refs(data: bytes, read: PieceReader, what: str = "manifest") -> list[PieceRef]:
    """Every piece a format 2 manifest names, top-down, verified (cheaper than decoding)."""
    return [ref for ref, _, _ in walk(parse_doc(data, what), read, what)]


def bases_for(
    new: list[PieceRef], old: list[PieceRef], budget: int = 8 * 1024 * 1024
) -> list[PieceRef]:
    """Old pieces covering the same key ranges as the new ones, level by level.

    A changed leaf is usually the old leaf with one entry edited, so its old version is the
    best zstd base there is; this is what keeps a one-file change's metadata near 1 KB.
    """
    by_level: dict[int, list[PieceRef]] = {}
    for ref in old:
        by_level.setdefault(ref.level, []).append(ref)
    for refs in by_level.values():
        refs.sort(key=lambda r: r.first)
    keys = {level: [r.first for r in refs] for level, refs in by_level.items()}
    have = {r.sha256 for r in old}
    out: list[PieceRef] = []
    seen: set[str] = set()
    spent = 0
    for ref in new:
        if ref.sha256 in have:
            continue
        row = by_level.get(ref.level, [])
        i = max(bisect.bisect_right(keys.get(ref.level, []), ref.first) - 1, 0)
        for cand in row[i : i + 2]:
            if cand.sha256 in seen or spent + cand.length > budget:
                continue
            seen.add(cand.sha256)
            spent += cand.length
            out.append(cand)
    return out


__all__ = [
    "Change",
    "EncodedManifest",
    "MAX_PIECE_BYTES",
    "PieceReader",
    "PieceRef",
    "TREE_SPEC_VERSION",
    "TreeDoc",
    "bases_for",
    "TreeDiff",
    "TreeWriter",
    "entry_bytes",
    "build_tree",
    "children_of",
    "decode_manifest",
    "diff",
    "encode_doc",
    "encode_manifest",
    "iter_files",
    "iter_leaves",
    "iter_own_files",
    "iter_paths",
    "iter_refs",
    "parse_doc",
    "piece_refs",
    "spec_version_of",
    "walk",
    "wire_bound",
]
