"""The hub's repository: the one folder that holds the signing keys.

Only the hub signs, so only this class publishes, commits uploaded releases, re-signs
expiry, rotates the root, retains old releases and collects what nothing references. A
centre's store (:mod:`packs.centre_store`) has none of these methods: a store that could
sign would be one stolen drive away from signing for every centre.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Collection, Container, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from caravane.protocol import tree as treefmt
from caravane.protocol.errors import CaravaneError, NotFoundError
from caravane.protocol.keys import PrivateKey, PublicKey
from caravane.protocol.metadata import (
    ChannelMeta,
    FileEntry,
    Manifest,
    ReleaseRef,
    Root,
    check_channel,
    format_time,
    now_utc,
    parse_time,
    sign_envelope,
)
from caravane.protocol.release import Release
from caravane.protocol.tree import Change, encode_doc

from . import compact, similarity
from .changes import new_contents
from .chunker import DEFAULT_AVG
from .errors import MissingObjects, StoreError
from .files_cache import FilesCache
from .idset import IdSet
from .ingest import (
    CachedRun,
    Ingest,
    Progress,
    SourceFile,
    ingest_files,
    iter_source,
    iter_source_cached,
    scan_source,
)
from .layout import channel_relpath, manifest_relpath
from .manifests import WrittenTree, release_ref, store_reader, write_manifest, write_tree
from .repository import (
    LEGACY_KEYS,
    RELEASE_KEY,
    PublishResult,
    RepositoryBase,
    Snapshot,
    holds_signing_keys,
    keys_dir,
)
from .store import write_atomic

log = logging.getLogger(__name__)
#: chunks whose presence is checked per query while a commit walks its diff
CHECK_BATCH = 20_000
#: objects an uploader is told it still has to send, at most, per answer (it sends those and
#: commits again)
MISSING_NAMED = 20_000
#: new or changed files kept for the similarity index after a commit; past it, the diff
#: is walked again once the lock is released (a first publish of a million files)
SKETCH_HOLD = 5_000


def _lacking(index: similarity.SketchIndex, files: list[FileEntry]) -> list[FileEntry] | None:
    """The files of ``files`` whose content ``index`` has no sketch of (None: it cannot
    tell; the caller falls back on walking the diff again)."""
    try:
        have = index.known({f.sha256 for f in files if similarity.sketchable(f)})
    except sqlite3.Error as exc:
        log.warning("%s: similarity index not read (%s)", index.path, exc)
        return None
    return [f for f in files if f.sha256 not in have and similarity.sketchable(f)]


class Walked:
    """What the checked walk of an upload's file list found before the lock: the summary
    of its diff, the new contents to sketch (up to ``SKETCH_HOLD``), and what makes them
    still true under the lock (the store's removal count when the walk began, the release
    it diffed from)."""

    def __init__(self, removals: int, previous: int | None, files: int, size: int) -> None:
        self.removals, self.previous = removals, previous
        self.tally = PublishResult("", 0, files, size, 0, 0, 0, "")
        self.sketch: list[FileEntry] | None = []

    def note(self, before: FileEntry | None, entry: FileEntry | None) -> None:
        self.tally.count_change(before, entry)
        if entry is None or self.sketch is None:
            return
        if before is None or before.sha256 != entry.sha256:
            self.sketch.append(entry)
            if len(self.sketch) > SKETCH_HOLD:
                self.sketch = None  # too many to hold: the diff is walked again after

    def holds(self, removals: int, previous: int | None) -> bool:
        """Whether nothing the walk checked can have changed (under the lock)."""
        return removals == self.removals and previous == self.previous


@dataclass
class RotationResult:
    """A rotation: the new root version and each channel's re-signed version."""

    root_version: int
    channels: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"root_version": self.root_version, "channels": self.channels}


class HubRepository(RepositoryBase):
    """Sign, publish, collect: what only the hub does with its repository."""

    role = "hub"

    def __init__(self, path: Path, durable: bool = False) -> None:
        super().__init__(path, durable)
        self.keys_dir = keys_dir(self.path)
        move_keys_out(self.path)
        if not holds_signing_keys(self.path):
            raise NotFoundError(
                f"{self.path}: no signing key in {self.keys_dir}; this is a centre's "
                "store, and only the hub repository can publish or sign"
            )

    @classmethod
    def init(cls, path: Path, root_key_out: Path | None = None) -> HubRepository:
        """Create a hub repository: new root and release keys, root version 1.

        The release key goes to the keys folder beside the repository (:func:`keys_dir`),
        the root key to ``root_key_out`` (the operator moves it offline; the hub never needs
        it to run), or, without it, to the keys folder too. Neither is ever inside ``path``.
        """
        path = Path(path)
        cls._refuse_existing(path)
        folder = keys_dir(path)
        root_out = Path(root_key_out) if root_key_out else folder / "root.pem"
        if (folder / RELEASE_KEY).exists() or root_out.exists():
            raise StoreError(
                f"{folder / RELEASE_KEY} or {root_out} already exists: keys of another "
                "repository; move them away or choose another folder"
            )
        keys = {role: PrivateKey.generate() for role in ("root", "release")}
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        keys["release"].save(folder / RELEASE_KEY)
        keys["root"].save(root_out)
        root = Root.new(1, {r: [k.public] for r, k in keys.items()})
        cls._lay_out(path, sign_envelope(root.to_dict(), [keys["root"]]), 1)
        return cls(path)

    @property
    def files_cache_path(self) -> Path:
        """What published folders' files were made of (beside the keys: never served)."""
        return self.keys_dir.parent / f"{self.path.name}-cache" / "files.sqlite"

    def key_path(self, role: str) -> Path:
        """Where this hub keeps the private key of ``role`` (the root key may be offline)."""
        return self.keys_dir / f"{role}.pem"

    def signing_key(self, role: str) -> PrivateKey:
        """The private key of ``role`` (the hub signs acknowledgements with the release key)."""
        return self._key(role)

    def _key(self, role: str) -> PrivateKey:
        path = self.key_path(role)
        if not path.is_file():
            raise NotFoundError(f"{path}: signing key missing; only the hub repository can publish")
        return PrivateKey.load(path)

    def _holds_whole(self, snap: Snapshot, channel: str, version: int) -> bool:
        # the hub commits a release only once every object is in its store
        return True

    # ------------------------------------------------------------------ publish

    def publish(
        self,
        channel: str,
        source: Path,
        *,
        notes: str = "",
        title: str | None = None,
        expires_days: int | None = None,
        avg_chunk: int = DEFAULT_AVG,
        progress: Progress = None,
        scanned: Iterable[SourceFile] | None = None,
    ) -> PublishResult:
        """Chunk and store ``source``, then commit it as the channel's next release.

        Streams: files are read in path order (:func:`iter_source`), each entry goes into
        the tree's pieces as it is made, and nothing grows with the number of files. The
        pieces are written before the lock is taken (a first publish of a million files
        must not stop collection and commits for an hour); under the lock, every object the
        release names and the previous release does not is checked to be still here.
        ``scanned``: the files, in manifest path order, if the caller listed them already.
        """
        check_channel(channel)
        self._key("release")  # fail before the long work, not after
        cache = FilesCache(self.files_cache_path)
        files: Iterable[SourceFile | CachedRun]
        if scanned is not None:
            files = scanned
        elif cache.removals_seen() == self.store.removals():
            # nothing left the store since the cache's last pass: what it names is here,
            # so the scan itself passes unchanged files on (a stat each, nothing read)
            files = iter_source_cached(Path(source), cache, avg_chunk)
        else:
            files = iter_source(Path(source))
        # the files read are sketched as they are read (not read back after the commit)
        index = similarity.open_index(self.path)
        inline = similarity.InlineSketches(index) if index is not None else None
        try:
            # entries as bytes: an unchanged file's comes from the cache into its leaf as is
            run = Ingest(
                self.store,
                files,
                avg_chunk,
                progress,
                cache,
                encoded=True,
                on_content=inline.add if inline is not None else None,
            )
            try:
                written = write_tree(self.store, run, check=False)  # iter_source checked paths
            finally:
                if inline is not None:
                    inline.close()
            try:
                with self.lock():
                    result, after = self._commit_tree(
                        channel,
                        written,
                        notes=notes,
                        title=title,
                        expires_days=expires_days,
                        early=True,
                        sketched=index if inline is not None and not inline.failed else None,
                    )
            except StoreError:
                # objects the cache named are gone after all (collected while the folder
                # was read): the next publish asks for each one it takes from the cache
                cache.saw_removals(None)
                raise
        finally:
            cache.close()
            if index is not None:
                index.close()
        after()
        result.new_objects, result.new_bytes = run.new_objects, run.new_bytes
        result.stored_bytes = run.stored
        return result

    def ingest(
        self, source: Path, avg_chunk: int = DEFAULT_AVG, progress: Progress = None
    ) -> tuple[list[FileEntry], int, int, int]:
        """Chunk and store a folder without publishing it (a curator's client-side build).

        Returns (file entries, new objects, their raw bytes, their stored bytes).
        """
        return ingest_files(self.store, scan_source(Path(source)), avg_chunk, progress)

    def commit_release(
        self,
        channel: str,
        entries: Iterable[FileEntry],
        *,
        notes: str = "",
        title: str | None = None,
        expires_days: int | None = None,
        ordered: bool = False,
        sketch: bool = True,
    ) -> PublishResult:
        """Sign a release whose objects are all in the store (the hub's upload path too).

        ``entries`` in any order (sorted here), or, with ``ordered``, already in ascending
        path order, e.g. a generator, so that they are never held. Everything happens under
        the lock that collection takes. The manifest is written first and the channel
        metadata last, by renames, so readers see the release all at once or not at all.
        ``sketch=False`` leaves the similarity index to the caller (:meth:`index_sketches`):
        a hub answers the curator first and sketches in the background, as it builds packs.
        """
        check_channel(channel)
        self._key("release")
        if not ordered:
            entries = sorted(entries, key=lambda f: f.path.encode())
        with self.lock():
            written = write_tree(self.store, entries)
            result, after = self._commit_tree(
                channel, written, notes=notes, title=title, expires_days=expires_days
            )
        if sketch:
            after()
        return result

    def commit_uploaded_tree(
        self,
        channel: str,
        root: treefmt.PieceRef | None,
        files: int,
        size: int,
        *,
        notes: str = "",
        title: str | None = None,
        expires_days: int | None = None,
    ) -> tuple[PublishResult, Callable[[], int]]:
        """Sign a file list that arrived as manifest pieces (a curator's upload through
        the hub), once it is checked; returns the summary and the similarity index's
        feeding, for the caller to run when it likes (after answering the curator).

        The pieces came from a client, so they are hostile input: before the lock is
        taken they are checked as a centre checks what it is sent. A channel's first tree
        is walked whole (:func:`tree.iter_files`: every piece verified by the hash its
        parent names, every entry, path, order and count); an update by its diff from the
        latest release (:func:`tree.checked_changes`), reading the pieces the trees do not
        share: a one-file change costs a few pieces, not the channel. The chunks of what
        is new are asked for. Nothing here holds more than a batch of leaves (or the added
        paths). Under the lock, the chunks of the entries that differ from the latest
        release are checked again, as a local publish does.

        :class:`MissingObjects` names pieces or chunks not in the store (at most
        ``MISSING_NAMED``, found before the check stops): the uploader sends them and
        commits again.
        """
        check_channel(channel)
        self._key("release")
        what = f"the uploaded file list of {channel!r}"
        # the same checks as a signed document's (level bounds, counts, a tree iff files)
        doc = treefmt.parse_doc(encode_doc(channel, 0, "", "", files, size, root), what)

        def absent(wanted: dict[str, int]) -> None:
            named = sorted(wanted)[:MISSING_NAMED]
            raise MissingObjects(
                f"{len(wanted)} manifest pieces of {channel!r} are not uploaded yet", named
            )

        read = store_reader(self.store, absent)
        snap = self.snapshot()
        meta = snap.channel_or_none(channel)
        previous = snap.release(channel, meta.version) if meta else None
        chunks: dict[str, int] = {}
        lacking: set[str] = set()
        # read before the first chunk is asked for: while it stands, nothing found here
        # has left the store since, and the commit need not walk the entries again
        walked = Walked(self.store.removals(), meta.version if meta else None, files, size)

        def named(before: FileEntry | None, entry: FileEntry | None) -> None:
            walked.note(before, entry)
            if entry is None:
                return
            chunks.update(entry.chunks)
            if len(chunks) >= CHECK_BATCH:
                lacking.update(self.store.missing(chunks))
                chunks.clear()
                if len(lacking) >= MISSING_NAMED:  # enough to name (a client that sent none)
                    refuse()

        def refuse() -> None:
            raise MissingObjects(
                f"cannot publish {channel!r}: {len(lacking)} or more objects are not on the hub",
                sorted(lacking)[:MISSING_NAMED],
            )

        if previous is None or previous.doc is None:
            # a first tree: walked whole, each piece, entry and path checked as it comes,
            # the counts at the end, every chunk asked for
            for file in treefmt.iter_files(doc, read, what):
                named(None, file)
        else:
            # an update: what a centre checks of one (the diff, with the new tree's order
            # across the pieces it skips, and the added paths against the folders they
            # join), reading the pieces the two trees do not share; the chunks of the
            # entries they share are the latest release's, which nothing collects
            for before, entry in treefmt.checked_changes(previous.doc, doc, read, what):
                named(before, entry)
        lacking.update(self.store.missing(chunks))
        if lacking:
            refuse()
        objects = {ref.sha256: ref.length for ref in treefmt.iter_refs(doc, read, what)}
        with self.lock():
            return self._commit_tree(
                channel,
                WrittenTree(doc.root, doc.files, doc.size, objects),
                notes=notes,
                title=title,
                expires_days=expires_days,
                early=True,
                walked=walked,
            )

    def tree_changes(
        self, channel: str, root: treefmt.PieceRef | None, files: int, size: int
    ) -> tuple[int | None, Iterator[Change]]:
        """The latest release of ``channel`` (None before the first) and the diff from it
        of a tree whose pieces are in the store (what a curator reviews before signing):
        the pieces the two trees do not share are read, each checked by its hash."""
        what = f"the file list of {channel!r} to review"
        doc = treefmt.parse_doc(encode_doc(channel, 0, "", "", files, size, root), what)
        new = Release(
            channel, 0, "", "", files, size, treefmt.TREE_SPEC_VERSION, doc=doc, read=self.pieces()
        )
        snap = self.snapshot()
        meta = snap.channel_or_none(channel)
        previous = snap.release(channel, meta.version) if meta else None
        return (meta.version if meta else None), new.changes_from(previous)

    def _commit_tree(
        self,
        channel: str,
        tree: WrittenTree,
        *,
        notes: str,
        title: str | None,
        expires_days: int | None,
        early: bool = False,
        sketched: similarity.SketchIndex | None = None,
        walked: Walked | None = None,
    ) -> tuple[PublishResult, Callable[[], int]]:
        """Sign ``tree`` (its pieces in the store) as the channel's next release; the caller
        holds the lock, and calls the function returned once it has let go of it (the
        similarity index is fed then).

        ``early``: the pieces were written before the lock was taken, so they are checked
        again under it. The objects of the channel's latest release are here (nothing
        collects what a retained release names, and the hub signs only whole releases), so
        only the chunks of the entries that differ from it are checked, walking the diff in
        batches; the same walk gives the publish summary. A one-file change reads a few
        pieces, a first publish every entry once.

        ``sketched``: the similarity index, fed while the files were read; the new contents
        kept for it are only those it still lacks (files taken from the files cache whose
        content the previous release did not hold, large files), so a first publish of a
        million files does not walk its diff a second time after the lock.

        ``walked``: what a checked walk of the same diff found before the lock (an upload's
        commit). While the store has removed nothing since that walk began and the channel
        is still at the release it was diffed from, every chunk it found is still here and
        its counts stand: the entries are not walked again under the lock (a first upload
        of 100,000 files walked them twice, about 1 s each; 10 s at a million).
        """
        release_key = self._key("release")
        if early:
            self._refuse_missing(channel, self.store.missing(tree.objects))
        snap = self.snapshot()
        old_meta = snap.channel_or_none(channel)
        version = old_meta.version + 1 if old_meta else 1
        previous = snap.release(channel, old_meta.version) if old_meta else None
        created = format_time(now_utc())
        doc = encode_doc(channel, version, created, notes, tree.files, tree.size, tree.root)
        ref = ReleaseRef(
            version, hashlib.sha256(doc).hexdigest(), len(doc), created, tree.size, tree.files
        )
        new = Release.open(doc, ref, channel, self.pieces())
        result = PublishResult(
            channel=channel,
            version=version,
            files=tree.files,
            total_bytes=tree.size,
            new_objects=0,
            new_bytes=0,
            stored_bytes=0,
            manifest_sha256=ref.manifest_sha256,
        )
        sketch: list[FileEntry] | None = []
        chunks: dict[str, int] = {}
        if walked is not None and walked.holds(
            self.store.removals(), old_meta.version if old_meta else None
        ):
            walked.tally.channel, walked.tally.version = channel, version
            walked.tally.manifest_sha256 = ref.manifest_sha256
            result, sketch = walked.tally, walked.sketch
            changes: Iterable[tuple[FileEntry | None, FileEntry | None]] = ()
        else:
            # a channel's first release: every file is new, and they are the entries just
            # written (from checked entries, for an early publish): made without the checks
            changes = (
                ((None, f) for f in new.own_files())
                if previous is None and early
                else new.changes_from(previous)
            )
        for old, entry in changes:
            result.count_change(old, entry)
            if entry is None:
                continue
            chunks.update(entry.chunks)
            if len(chunks) >= CHECK_BATCH:
                self._refuse_missing(channel, self.store.missing(chunks))
                chunks.clear()
            if sketch is not None and (old is None or old.sha256 != entry.sha256):
                sketch.append(entry)
                if len(sketch) > SKETCH_HOLD:
                    sketch = _lacking(sketched, sketch) if sketched is not None else None
                    if sketch is not None and len(sketch) > SKETCH_HOLD:
                        sketch = None  # too many to hold: the diff is walked again after
        self._refuse_missing(channel, self.store.missing(chunks))
        write_atomic(self.path / manifest_relpath(channel, version), doc, self.durable)
        releases = dict(old_meta.releases) if old_meta else {}
        releases[version] = ref
        self._sign_channel(
            channel,
            version,
            releases,
            title if title is not None else (old_meta.title if old_meta else ""),
            expires_days,
            release_key,
        )
        # outside the lock: the release is signed; this only spares later pack builds work
        return result, lambda: self._sketch_changes(new, previous, sketch)

    def _refuse_missing(self, channel: str, missing: Collection[str]) -> None:
        if missing:
            raise MissingObjects(
                f"cannot publish {channel!r}: {len(missing)} objects are not in the store "
                "(not uploaded yet, or collected while the folder was read); upload them or "
                "publish again",
                sorted(missing)[:MISSING_NAMED],
            )

    def _sketch_changes(
        self, new: Release, previous: Release | None, held: list[FileEntry] | None
    ) -> int:
        """Sketch the new and changed files of a release for the similarity index, from
        the list the commit kept or, past ``SKETCH_HOLD`` files, walking the diff again;
        returns how many files were sketched."""
        if held is not None:
            return self.index_sketches(held) if held else 0
        done = 0
        try:
            batch: list[FileEntry] = []
            for entry in new_contents(new.changes_from(previous)):
                batch.append(entry)
                if len(batch) >= SKETCH_HOLD:
                    done += self.index_sketches(batch)
                    batch = []
            done += self.index_sketches(batch)
        except CaravaneError as exc:  # a cache: the next pack build fills the gap
            log.warning("%s: similarity index not updated (%s)", self.path, exc)
        return done

    # ------------------------------------------------------------------ signing

    def _sign_channel(
        self,
        channel: str,
        version: int,
        releases: dict[int, ReleaseRef],
        title: str,
        expires_days: int | None,
        key: PrivateKey | None = None,
    ) -> ChannelMeta:
        expires = format_time(now_utc() + timedelta(days=expires_days)) if expires_days else None
        meta = ChannelMeta(channel, version, releases, title, expires)
        data = sign_envelope(meta.to_dict(), [key or self._key("release")])
        write_atomic(self.path / channel_relpath(channel), data, True)
        compact.remember(self.path, channel, data)  # what a centre may hold, for deltas
        return meta

    def refresh_expiry(self, channel: str, expires_days: int) -> ChannelMeta:
        """Re-sign a channel's metadata with a new expiry (the hub's scheduled job)."""
        with self.lock():
            meta = self.snapshot().channel(channel)
            return self._sign_channel(
                channel, meta.version, meta.releases, meta.title, expires_days
            )

    def rotate_root(
        self,
        new_keys: dict[str, list[PublicKey]],
        signers: list[PrivateKey],
        release_key: PrivateKey | None = None,
    ) -> int:
        """Publish root N+1 (``signers`` hold old and new root keys) and re-sign channels.

        Every channel gets a new version, the same files as its latest release, signed
        with ``release_key`` (the new release key, if it changed): a centre that accepts
        root N+1 drops channel metadata only the revoked key signed, so it needs a version
        the new key signed, and one above whatever the revoked key signed before, to move
        on. Returns the new root version; :meth:`rotate_keys` is the operator's entry.
        """
        with self.lock():
            snap = self.snapshot()
            # read under the old root: once root N+1 is in, the old signatures may not verify
            plan = [
                (meta, snap.manifest(meta.channel, meta.version))
                for meta in (snap.channel(c) for c in self.channels())
            ]
            old = self.trusted.root
            new = Root.new(old.version + 1, new_keys)
            data = sign_envelope(new.to_dict(), signers)
            self.trusted.update_root(data, f"root v{new.version} being signed")
            key = release_key or self._key("release")
            if key.keyid not in new.roles["release"].keyids:
                raise StoreError(
                    "the release key given is not the release key of the new root; pass the "
                    "private key whose public key the rotation names"
                )
            self._write_root(new.version, data)
            if release_key is not None:
                release_key.save(self.key_path("release"))
            for meta, latest in plan:
                self._resign_bumped(meta, latest, key, old.version, new.version)
            return new.version

    def _resign_bumped(
        self, meta: ChannelMeta, latest: Manifest, key: PrivateKey, old_root: int, new_root: int
    ) -> int:
        """Sign the channel's latest files again as its next version, with ``key``."""
        version = meta.version + 1
        notes = (
            f"version {meta.version} signed again after a key rotation "
            f"(root {old_root} -> {new_root})"
        )
        manifest = Manifest(meta.channel, version, format_time(now_utc()), latest.files, notes)
        mbytes, manifest = write_manifest(
            self.store, self.path / manifest_relpath(meta.channel, version), manifest, self.durable
        )
        releases = dict(meta.releases)
        releases[version] = release_ref(mbytes, manifest)
        expires_days = None
        if meta.expires:
            left = parse_time(meta.expires, "expires") - now_utc()
            expires_days = max(1, left.days)
        self._sign_channel(meta.channel, version, releases, meta.title, expires_days, key)
        return version

    def rotate_keys(
        self,
        root_key: PrivateKey,
        new_root_key: PrivateKey | None = None,
        new_release_key: PrivateKey | None = None,
    ) -> RotationResult:
        """Replace the root key, the release key or both, with the current root key.

        ``root_key`` is the offline root key (it must be the current root's); the new root
        is signed by it and by ``new_root_key`` when the root key changes. Every channel is
        signed again as a new version (see :meth:`rotate_root`).
        """
        root = self.trusted.root
        if root_key.keyid not in root.roles["root"].keyids:
            raise StoreError(
                f"the root key given ({root_key.keyid[:12]}) is not the root key of root "
                f"version {root.version}; use the offline root key kept when the hub was made"
            )
        if new_root_key is None and new_release_key is None:
            raise StoreError("nothing to rotate: name --new-root-key, --new-release-key or both")
        roots = (
            [new_root_key.public]
            if new_root_key
            else [root.keys[k] for k in root.roles["root"].keyids]
        )
        releases = (
            [new_release_key.public]
            if new_release_key
            else [root.keys[k] for k in root.roles["release"].keyids]
        )
        signers = [root_key] + ([new_root_key] if new_root_key else [])
        before = {c: self.snapshot().channel(c).version for c in self.channels()}
        version = self.rotate_root({"root": roots, "release": releases}, signers, new_release_key)
        return RotationResult(version, {c: v + 1 for c, v in before.items()})

    # ------------------------------------------------------------------ retention

    def retain(self, channel: str, keep_last: int, also_keep: Collection[int] = ()) -> list[int]:
        """Drop all but the newest ``keep_last`` releases of a channel and ``also_keep``
        (releases centres still hold, so packs can start from them); returns those dropped."""
        if keep_last < 1:
            raise ValueError("keep at least one release")
        with self.lock():
            meta = self.snapshot().channel(channel)
            versions = sorted(meta.releases)
            drop = [v for v in versions[:-keep_last] if v not in also_keep]
            if not drop:
                return []
            kept = {v: r for v, r in meta.releases.items() if v not in drop}
            expires_days = None
            if meta.expires:
                left = parse_time(meta.expires, "expires") - now_utc()
                expires_days = max(1, left.days)
            self._sign_channel(channel, meta.version, kept, meta.title, expires_days)
            for v in drop:
                (self.path / manifest_relpath(channel, v)).unlink(missing_ok=True)
                for p in (self.path / "packs" / channel).glob(f"*-{v}.pack*"):
                    p.unlink()
                for p in (self.path / "packs" / channel).glob(f"{v}-*.pack*"):
                    p.unlink()
            return drop

    def referenced_objects(
        self, snap: Snapshot | None = None, contents: IdSet | None = None
    ) -> IdSet:
        """Every object a retained release uses, read from the pieces (nothing per file held).

        Each release is walked leaf by leaf, every piece verified as it is read; the ids go
        into an :class:`~.idset.IdSet`, 8 B an object (a ``set`` of ids took about 120 B,
        250 MB at two million). Its rare false "yes" (two ids sharing 64 bits) only keeps
        an object collection could have freed. ``contents``, when given, gets the content
        hash of every file on the way (what the similarity index may keep sketches of).
        """
        snap = snap or self.snapshot()
        refs = IdSet()
        for channel in self.channels():
            for v in snap.channel(channel).releases:
                if snap.has_manifest(channel, v):
                    release = snap.release(channel, v)
                    refs.update(ref.sha256 for ref in release.piece_refs())
                    for f in release.iter_files():
                        for sha, _ in f.chunks:
                            refs.add(sha)
                        if contents is not None:
                            contents.add(f.sha256)
        return refs

    def collect_garbage(
        self, keep: Callable[[], Container[str]] | None = None, grace_seconds: float = 0.0
    ) -> tuple[int, int]:
        """Remove objects no retained manifest uses; returns (objects, bytes) removed.

        Everything is decided under the repository lock that commits take, so a release
        cannot be signed between reading what is referenced and removing what is not.
        ``keep`` (objects of uploads still open) is asked under that lock too. Objects
        written or freshened within ``grace_seconds`` are spared: they belong to uploads
        in flight, which may have started after ``keep`` was asked. The store's ids are
        walked in pages (removal during the walk is safe), never listed whole.
        """
        with self.lock():
            cutoff = time.time() - grace_seconds
            contents = IdSet()
            refs = self.referenced_objects(contents=contents)
            extra: Container[str] = keep() if keep else ()
            count = freed = 0
            for sha in self.store.iter_ids():
                if sha not in refs and sha not in extra:
                    n = self.store.remove_unless_fresh(sha, cutoff)
                    if n:
                        freed += n
                        count += 1
            # under the lock too: what a release signed meanwhile brings is never pruned
            self._prune_index(contents, refs)
        # outside the lock: moving live objects between segments never changes what is
        # stored, so commits need not wait for it
        self.store.compact()
        return count, freed

    def _prune_index(self, contents: IdSet, pieces: IdSet) -> None:
        """Drop the similarity index's sketches of content no retained release holds and its
        summaries of file-list leaves no retained release names: without this the index
        grew with every release ever published (a week's changed leaves are summarised
        again, 5 KB each). A cache: a failure is logged and the next collection retries."""
        sketches = similarity.open_index(self.path)
        if sketches is None:
            return
        try:
            files, leaves = sketches.prune(contents, pieces)
            if files or leaves:
                log.info(
                    "%s: similarity index: %d sketches and %d leaf summaries of content no "
                    "retained release holds removed",
                    self.path,
                    files,
                    leaves,
                )
        except sqlite3.Error as exc:
            log.warning(
                "%s: similarity index not pruned (%s); the next collection retries", self.path, exc
            )
        finally:
            sketches.close()


def move_keys_out(path: Path) -> list[Path]:
    """Move keys an older ``repo init`` wrote inside the repository to the folder beside it.

    Anything inside the repository may be served by a static server or copied to a mirror or
    a drive, so the hub moves them the first time it opens the repository; returns the
    files moved. A key already beside the repository is never overwritten: the hub refuses,
    naming both files, and the operator keeps the right one.
    """
    legacy = Path(path) / LEGACY_KEYS
    if not legacy.is_dir():
        return []
    dest = keys_dir(path)
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    moved: list[Path] = []
    for key in sorted(legacy.iterdir()):
        target = dest / key.name
        if target.exists():
            raise StoreError(
                f"{key} and {target} both exist: keep the right one in {dest}, delete the "
                f"other, then remove {legacy} (keys must not stay inside the served folder)"
            )
        shutil.move(str(key), str(target))
        os.chmod(target, 0o600)
        moved.append(target)
    legacy.rmdir()
    return moved


__all__ = ["HubRepository", "RotationResult", "move_keys_out"]
