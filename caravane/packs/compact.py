"""How a pack, or the hub, names in few bytes what its receiver already holds.

A one-file update is a few hundred bytes of content, and the signed metadata around it is
what a centre pays for every week (issue 10 asks for about 1 KB whatever the channel's
size). Four parts of that metadata repeated what the receiver already had:

- the **channel metadata** (its JSON keys, and the entry of the release the pack starts
  from) was compressed alone, and zstd has nothing to match in 700 bytes. It is now
  compressed against a prefix both sides build the same way: a frozen skeleton of channel
  metadata and the entry the base release's own manifest document gives
  (:func:`channel_prefix`);
- a **tree entry** named each base piece by its full SHA-256 and length (72 bytes of header
  a piece, most of a one-file update's tree entry). A base the receiver can find by a short
  prefix among the base release's pieces it knows at that point, which are its root and
  the children of every node already used as a base (:class:`KnownPieces`), is now named
  by that prefix alone; any other by its full id as before;
- after a key rotation every pack carries the **new root**: it is compressed against the
  root before it (:func:`root_prefix`);
- a centre **online** read the whole channel metadata from the hub at every pass, then the
  pack repeated it. The hub keeps what it signed by hash (:func:`remember`), and a reader
  naming the copy it holds gets the new one as a delta from it (:func:`metadata_delta`):
  a new release's entry and signature, or some 20 bytes when nothing changed.

Both sides follow the same rules over the same bytes, so the sender knows exactly what the
receiver can resolve. A name the receiver cannot resolve, or resolves to the wrong base,
cannot make it accept anything: a frame decompressed against the wrong prefix fails the
hash its parent or the signature names, and the message says what to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import zstandard as zstd

from caravane.protocol import tree
from caravane.protocol.canonical import canonical_bytes
from caravane.protocol.errors import CaravaneError

from . import delta
from .errors import PackError

log = logging.getLogger(__name__)

#: the names of the prefixes a metadata entry may be compressed against ("dict" in its
#: header); a reader refuses one it does not know, so a skeleton is never changed in place
CHANNEL_DICT = "channel-1"

#: a root compressed against the root before it, which a reader that must take it holds
#: by then (it pinned it, took it earlier in the same pack, or skips this one)
ROOT_DICT = "previous-root"

#: channel metadata with every value blanked, in canonical form (frozen: see CHANNEL_DICT)
_CHANNEL_SKELETON = canonical_bytes(
    {
        "signatures": [{"keyid": "", "sig": ""}],
        "signed": {
            "_type": "channel",
            "channel": "",
            "expires": None,
            "releases": {
                "0": {
                    "created": "2026-01-01T00:00:00Z",
                    "files": 0,
                    "manifest": {"length": 0, "sha256": ""},
                    "size": 0,
                }
            },
            "spec_version": 1,
            "title": "",
            "version": 0,
        },
    }
)

#: hex digits of a short base name: 48 bits, unique among the few thousand pieces a
#: receiver knows at once (a name two known pieces share is never used)
SHORT = 12


def channel_prefix(base_doc: bytes | None) -> bytes:
    """The prefix a pack's channel metadata is compressed against.

    The skeleton, then, when the pack starts from a format 2 release whose manifest
    document the receiver holds (``base_doc``), that release's entry as channel metadata
    lists it: its created time, counts and the document's own hash and length.
    """
    if not base_doc:
        return _CHANNEL_SKELETON
    try:
        doc = json.loads(base_doc)
        if doc.get("spec_version") != tree.TREE_SPEC_VERSION:
            return _CHANNEL_SKELETON
        entry = {
            str(int(doc["version"])): {
                "created": str(doc["created"]),
                "files": int(doc["files"]),
                "manifest": {
                    "length": len(base_doc),
                    "sha256": hashlib.sha256(base_doc).hexdigest(),
                },
                "size": int(doc["size"]),
            }
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        return _CHANNEL_SKELETON  # the receiver's copy was verified; a test's may be odd
    return _CHANNEL_SKELETON + canonical_bytes(entry)


def root_prefix(previous: bytes) -> bytes:
    """The prefix a pack's root N is compressed against: root N - 1 as signed. After a key
    rotation every pack carries the new root: 525 bytes alone, about 340 this way."""
    return _led(previous)


class KnownPieces:
    """The base release's pieces a receiver can find by a short name at this point of a pack.

    It starts with the base tree's root (its document names it) and learns the children of
    each node used as a base under a short name, in the order the pack names them. The
    builder keeps one to choose names; the receiver keeps one to resolve them.
    """

    def __init__(self, root: tree.PieceRef | None) -> None:
        #: short name -> the one piece known under it (None: two known pieces share it)
        self._by_name: dict[str, tree.PieceRef | None] = {}
        if root is not None:
            self._add(root)

    def _add(self, ref: tree.PieceRef) -> None:
        name = ref.sha256[:SHORT]
        if name not in self._by_name:
            self._by_name[name] = ref
        else:
            known = self._by_name[name]
            if known is not None and known.sha256 != ref.sha256:
                self._by_name[name] = None

    def name(self, ref: tree.PieceRef) -> str | list[Any]:
        """What a tree entry's header says for base ``ref``."""
        known = self._by_name.get(ref.sha256[:SHORT])
        if known is not None and known.sha256 == ref.sha256 and known.length == ref.length:
            return ref.sha256[:SHORT]
        return [ref.sha256, ref.length]

    def resolve(self, item: Any, what: str) -> tuple[str, int, tree.PieceRef | None]:
        """A header's base name as (id, length, ref if named short), or a clear refusal."""
        if isinstance(item, str):
            ref = self._by_name.get(item) if len(item) == SHORT else None
            if ref is None:
                raise PackError(
                    f"{what}: names a base piece {item[:SHORT]!r} that the release this pack "
                    "starts from does not hold; this pack was built for a store holding "
                    "another release, or it is damaged"
                )
            return ref.sha256, ref.length, ref
        if (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], int)
            and not isinstance(item[1], bool)
        ):
            return item[0], item[1], None
        raise PackError(f"{what}: malformed base piece")

    def learn(self, ref: tree.PieceRef, data: bytes, what: str) -> None:
        """Note the pieces node ``ref`` names, once its bytes are read as a base."""
        if ref.level == 0:
            return
        try:
            children = tree.children_of(ref, data, what)
        except CaravaneError as exc:
            raise PackError(f"{what}: base piece {ref.sha256[:12]} is damaged: {exc}") from None
        for child in children:
            self._add(child)




# --------------------------------------------------------------------------- channel history

#: where a repository keeps the channel metadata it signed, by hash, for deltas; a dot
#: folder, which mirrors skip and the hub does not serve
HISTORY_DIR = ".channel-history"
#: versions kept a channel: a centre polling weekly for half a year gets deltas
HISTORY_KEEP = 32
#: the header a reader names the bytes it holds with, and the answer names them back
DELTA_BASE_HEADER = "Caravane-Delta-Base"
DELTA_HEADER = "Caravane-Delta"


def _history(repo: Path, channel: str) -> Path:
    return repo / HISTORY_DIR / channel


def remember(repo: Path, channel: str, data: bytes) -> None:
    """Keep signed channel metadata ``data`` by its hash, the oldest past HISTORY_KEEP
    dropped. A cache: a failure to write it costs a later reader a whole copy, no more."""
    folder = _history(repo, channel)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha256(data).hexdigest()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        kept = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        for old in kept[:-HISTORY_KEEP]:
            old.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("%s: channel metadata history not kept (%s)", folder, exc)


def recall(repo: Path, channel: str, sha: str) -> bytes | None:
    """Channel metadata this repository signed with hash ``sha``, if it still keeps it."""
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        return None
    try:
        data = (_history(repo, channel) / f"{sha}.json").read_bytes()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == sha else None


def metadata_delta(base: bytes, data: bytes) -> bytes:
    """``data`` as a zstd frame against ``base`` (the metadata a reader holds): a new
    release's entry and signature, about 200 bytes, or some 20 when nothing changed."""
    return delta.compress_group(_led(base), data, delta.LEVEL)


def _led(base: bytes) -> bytes:
    """The prefix of a metadata delta: ``base`` after one newline. zstd finds no match for
    data that starts exactly where its prefix starts (unchanged metadata stayed 415 bytes
    of 685 against itself, 18 with this byte)."""
    return b"\n" + base


def undo_metadata_delta(base: bytes, frame: bytes, max_length: int, what: str) -> bytes:
    """The metadata a :func:`metadata_delta` frame holds, never more than ``max_length``."""
    return delta.decompress_group(_led(base), frame, metadata_size(frame, max_length, what), what)


def metadata_size(frame: bytes, max_length: int, what: str) -> int:
    """The size a frame of metadata declares, refused past ``max_length`` before a byte of
    it is decompressed (a pack's metadata entry, or a hub's delta of channel metadata)."""
    try:
        size = zstd.get_frame_parameters(frame).content_size
    except zstd.ZstdError:
        raise PackError(f"{what}: metadata is not a zstd frame") from None
    if not 0 <= size <= max_length:
        raise PackError(f"{what}: metadata larger than {max_length} bytes")
    return int(size)


__all__ = [
    "CHANNEL_DICT",
    "ROOT_DICT",
    "DELTA_BASE_HEADER",
    "DELTA_HEADER",
    "KnownPieces",
    "SHORT",
    "channel_prefix",
    "metadata_delta",
    "metadata_size",
    "recall",
    "remember",
    "root_prefix",
    "undo_metadata_delta",
]
