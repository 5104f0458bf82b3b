"""What release B holds that release A lacks: the one definition every caller shares.

A pack from A to B carries these chunks, the hub estimates a pack's size from them before
deciding to build it on demand, a field agent's drive is planned with them, and a centre
sizes its next download with them. They used to be computed in four places, each with its
own idea of "A" (nothing, a manifest, a set); a disagreement between them would make a drive
plan or an on-demand decision wrong without any test noticing, so there is one function.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from caravane.protocol.metadata import FileEntry, Manifest
from caravane.protocol.release import Release
from caravane.protocol.tree import Change

if TYPE_CHECKING:
    from .skim import LeafSummaries


def missing_chunks(old: Manifest | None, new: Manifest) -> dict[str, int]:
    """Chunks of ``new`` that ``old`` does not reference, as {sha256: size}.

    Ordered by first use in ``new`` (file order, then chunk order), which is the order a pack
    sends them in; each chunk appears once however often ``new`` repeats it. ``old`` is
    ``None`` for a receiver that holds nothing of the channel yet.
    """
    have = old.chunk_sizes() if old is not None else {}
    out: dict[str, int] = {}
    for f in new.files:
        for sha, size in f.chunks:
            if sha not in have and sha not in out:
                out[sha] = size
    return out


def new_bytes(old: Manifest | None, new: Manifest) -> int:
    """Raw bytes of the objects ``new`` has and ``old`` lacks (what a pack A->B carries):
    its new chunks and, in format 2, the pieces of its file list that changed."""
    have = old.tree_objects if old is not None else {}
    pieces = sum(n for sha, n in new.tree_objects.items() if sha not in have)
    return sum(missing_chunks(old, new).values()) + pieces


def missing_in_changes(
    changed: Iterable[Change], old: Release | None, summaries: LeafSummaries | None = None
) -> dict[str, int]:
    """:func:`missing_chunks` from the change stream of ``new`` against ``old``
    (``Release.changes_from``), holding what changed, not either release.

    The same answer: a chunk of an unchanged file is in ``old`` already, so only the new
    sides of the changes can bring chunks ``old`` lacks, in path order (which is ``new``'s
    file order). Those the old sides of the changes hold are dropped at once; the rest
    (content ``old`` may hold elsewhere, moved or shared) are looked for in one walk of
    ``old``'s files, which holds only the candidates: time follows ``old``, memory the
    change. The walk is skipped when no candidate is left.

    ``summaries`` (a pack build's, :mod:`.skim`): the walk decodes only the leaves of
    ``old`` whose summary holds a candidate's id, the same answer at the cost of the
    leaves that hold one (for content new to the channel, none).
    """
    out: dict[str, int] = {}
    gone: set[str] = set()
    for before, after in changed:
        if before is not None:
            gone.update(h for h, _ in before.chunks)
        if after is not None:
            for sha, size in after.chunks:
                if sha not in out:
                    out[sha] = size
    for sha in gone:
        out.pop(sha, None)
    if out and old is not None and summaries is not None and old.doc is not None:
        from .skim import id_key, probes_hit, skim

        probes = {id_key(h) for h in out}
        for leaf in skim(old, summaries, probes_hit(probes), 2):
            for f in leaf.entries or ():
                for sha, _ in f.chunks:
                    if out.pop(sha, None) is not None:
                        # found: probe no more for it (unless another wanted id shares
                        # its prefix), or every leaf that also holds it would be decoded
                        probes.clear()
                        probes.update(id_key(h) for h in out)
            if not out:
                break
    elif out and old is not None:
        for f in old.iter_files():
            for sha, _ in f.chunks:
                out.pop(sha, None)
            if not out:
                break
    return out


def new_contents(changed: Iterable[Change]) -> Iterator[FileEntry]:
    """The new sides of ``changed`` whose content differs from the old side's: the files
    a release brings that the similarity index may lack a sketch of."""
    for old, new in changed:
        if new is not None and (old is None or old.sha256 != new.sha256):
            yield new


def release_new_bytes(old: Release | None, new: Release) -> int:
    """:func:`new_bytes` between two releases read from their pieces (nothing per file held:
    the change, the pieces' refs, and at most one walk of ``old``)."""
    have = {r.sha256 for r in old.piece_refs()} if old is not None else set()
    pieces = 0
    seen: set[str] = set()
    for ref in new.piece_refs():
        if ref.sha256 not in have and ref.sha256 not in seen:
            seen.add(ref.sha256)
            pieces += ref.length
    return sum(missing_in_changes(new.changes_from(old), old).values()) + pieces


@dataclass
class FileChanges:
    """What a release adds, changes and removes, file by file, against the one before it.

    A curator reads it before signing (is this the archive I meant?) and on the release
    page; ``identical`` warns that publishing would only make a new version number. The
    lists may hold only the first paths of each kind (:func:`summarise_changes`); the
    counts are always whole.
    """

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    added_bytes: int = 0
    removed_bytes: int = 0
    n_added: int = 0
    n_changed: int = 0
    n_removed: int = 0

    @property
    def identical(self) -> bool:
        return not (self.n_added or self.n_changed or self.n_removed)


def summarise_changes(changed: Iterable[Change], files: int, limit: int) -> FileChanges:
    """:func:`file_changes` from a tree diff (:meth:`Release.changes_from`): counts of
    each kind and the first ``limit`` paths of each, in path order; ``files``, the new
    release's file count, gives the unchanged ones. Holds ``3 * limit`` paths whatever
    the release: comparing the two lists decoded whole held both (some 500 bytes a file,
    a gigabyte for a release page at a million files)."""
    out = FileChanges()
    for old, new in changed:
        if new is None:
            if old is None:
                continue
            out.n_removed += 1
            out.removed_bytes += old.size
            if len(out.removed) < limit:
                out.removed.append(old.path)
        elif old is None:
            out.n_added += 1
            out.added_bytes += new.size
            if len(out.added) < limit:
                out.added.append(new.path)
        elif old.sha256 != new.sha256 or old.mode != new.mode:
            out.n_changed += 1
            if len(out.changed) < limit:
                out.changed.append(new.path)
    out.unchanged = files - out.n_added - out.n_changed
    return out


def file_changes(old: list[FileEntry] | None, new: list[FileEntry]) -> FileChanges:
    """Paths of ``new`` that ``old`` lacks, holds with other bytes or mode, or no longer has.

    Files are compared by content hash and mode, so a file rewritten with the same bytes is
    unchanged. Lists come sorted by path.
    """
    before = {e.path: e for e in old or []}
    out = FileChanges()
    seen: set[str] = set()
    for e in new:
        seen.add(e.path)
        prev = before.get(e.path)
        if prev is None:
            out.added.append(e.path)
            out.added_bytes += e.size
        elif prev.sha256 != e.sha256 or prev.mode != e.mode:
            out.changed.append(e.path)
        else:
            out.unchanged += 1
    for path, e in before.items():
        if path not in seen:
            out.removed.append(path)
            out.removed_bytes += e.size
    out.added.sort()
    out.changed.sort()
    out.removed.sort()
    out.n_added, out.n_changed, out.n_removed = len(out.added), len(out.changed), len(out.removed)
    return out


__all__ = [
    "FileChanges",
    "file_changes",
    "summarise_changes",
    "missing_chunks",
    "missing_in_changes",
    "new_bytes",
    "release_new_bytes",
]
