"""A verified release whose file list is read on demand, in either manifest format.

``Manifest`` holds every file entry in memory, which a million-file release cannot afford
(hundreds of MB of Python objects). A :class:`Release` is what the signed channel metadata
and the manifest document say (counts, dates, the tree's root), checked when it is opened;
its files are walked from the pieces when a caller asks (``iter_files``), and two releases
are compared without walking either whole (``changes_from``). Every piece is verified as it
is read, so a damaged or forged piece fails the walk that reaches it.

Format 1 manifests (one flat document) are decoded whole, as before: they exist only in
repositories that have not published since format 2, and stay small enough for that.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from . import tree
from .errors import VerificationError
from .metadata import FileEntry, Manifest, ReleaseRef
from .tree import Change, PieceReader, PieceRef, TreeDoc
from .trust import TrustedState


@dataclass
class Release:
    channel: str
    version: int
    created: str
    notes: str
    files: int
    size: int
    spec_version: int
    #: format 2: the parsed document and where its pieces are read from
    doc: TreeDoc | None = None
    read: PieceReader | None = None
    #: format 1: the whole manifest
    flat: Manifest | None = None

    @classmethod
    def open(cls, data: bytes, ref: ReleaseRef, channel: str, read: PieceReader) -> Release:
        """The release these manifest bytes are, if the signed ``ref`` names them.

        Only the document is checked here (bytes against ``ref``, its channel, version and
        counts); the pieces are checked as they are read.
        """
        what = f"manifest of {channel!r} version {ref.version}"
        TrustedState.check_manifest_bytes(data, ref, channel)
        if tree.spec_version_of(data, what) != tree.TREE_SPEC_VERSION:
            return cls.of_manifest(TrustedState.verify_manifest(data, ref, channel, read))
        doc = tree.parse_doc(data, what)
        if doc.channel != channel or doc.version != ref.version:
            raise VerificationError(f"{what}: it claims {doc.channel!r} v{doc.version}")
        if doc.size != ref.size or doc.files != ref.files:
            raise VerificationError(f"{what}: its files differ from the signed metadata")
        return cls(
            doc.channel,
            doc.version,
            doc.created,
            doc.notes,
            doc.files,
            doc.size,
            tree.TREE_SPEC_VERSION,
            doc=doc,
            read=read,
        )

    @classmethod
    def of_manifest(cls, m: Manifest) -> Release:
        """A release already decoded whole (format 1, or a test's manifest)."""
        return cls(
            m.channel,
            m.version,
            m.created,
            m.notes,
            len(m.files),
            m.total_size,
            m.spec_version,
            flat=m,
        )

    @property
    def what(self) -> str:
        return f"manifest of {self.channel!r} version {self.version}"

    def iter_files(self) -> Iterator[FileEntry]:
        """The files in path order, each piece verified as it is read."""
        if self.flat is not None:
            yield from self.flat.files
            return
        assert self.doc is not None and self.read is not None
        yield from tree.iter_files(self.doc, self.read, self.what)

    def piece_refs(self) -> Iterator[PieceRef]:
        """The pieces of the file list (none in format 1), reading only its nodes."""
        if self.doc is None:
            return
        assert self.read is not None
        yield from tree.iter_refs(self.doc, self.read, self.what)

    def paths(self) -> Iterator[str]:
        """Each file's path in order, pieces verified, paths unchecked (:func:`tree.iter_paths`):
        the caller checks what it uses."""
        if self.doc is None:
            yield from (f.path for f in self.iter_files())
            return
        assert self.read is not None
        yield from tree.iter_paths(self.doc, self.read, self.what)

    def own_files(self) -> Iterator[FileEntry]:
        """:meth:`iter_files` of a release this process has just written from entries it
        checked (:func:`tree.iter_own_files`): the publish's commit."""
        if self.doc is None:
            yield from self.iter_files()
            return
        assert self.read is not None
        yield from tree.iter_own_files(self.doc, self.read, self.what)

    def changes_from(self, old: Release | None) -> Iterator[Change]:
        """(old entry, new entry) for every path that differs, in path order.

        Between two format 2 releases this reads only the pieces that differ; otherwise
        (a format 1 release on either side) the two lists are merged, one entry at a time.
        """
        if old is None:
            for f in self.iter_files():
                yield None, f
            return
        if self.doc is not None and old.doc is not None:
            assert self.read is not None
            yield from tree.diff(old.doc, self.doc, self.read, self.what)
            return
        yield from merge_changes(old.iter_files(), self.iter_files())


def merge_changes(old: Iterator[FileEntry], new: Iterator[FileEntry]) -> Iterator[Change]:
    """The changes between two path-ordered file streams, holding one entry of each."""
    a, b = next(old, None), next(new, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a.path < b.path):
            yield a, None
            a = next(old, None)
        elif a is None or b.path < a.path:
            yield None, b
            b = next(new, None)
        else:
            if a != b:
                yield a, b
            a, b = next(old, None), next(new, None)


__all__ = ["Release", "merge_changes"]
