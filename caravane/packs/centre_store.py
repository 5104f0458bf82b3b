"""A centre's store: verified content from the hub, kept and served, never signed here.

The store pins the hub's root at enrolment and takes everything else from untrusted
carriers (the hub, a mirror, a peer centre, a drive): newer roots, channel metadata,
manifests and packs, each accepted only after it verifies against that chain. It has no
signing key and no method that signs: publishing, expiry, rotation and collection of the
hub's releases are :class:`packs.hub_repository.HubRepository`'s alone.

A store may hold a release's manifest before all its objects (a pack cut short keeps what
it delivered), so "which release can be served" checks every object here, where the hub can
trust its own commits.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Callable, Collection
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from caravane.protocol import tree
from caravane.protocol.errors import (
    CaravaneError,
    FormatError,
    NotFoundError,
    RollbackError,
    VerificationError,
)
from caravane.protocol.metadata import (
    MAX_METADATA_BYTES,
    ChannelMeta,
    FileEntry,
    Manifest,
    ReleaseRef,
    check_channel,
)
from caravane.protocol.release import Release
from caravane.protocol.trust import (
    MAX_ROOT_ROTATIONS,
    TrustedState,
    root_version_of,
    too_many_roots,
)

from . import compact, delta
from .errors import PackError, StoreError, TruncatedPackError
from .ingest import Progress
from .layout import channel_relpath, manifest_relpath
from .manifests import store_reader
from .packfile import Opener, read_entries
from .refcount import CollectReport, Intake, LiveCounts
from .repository import (
    MAX_MANIFEST_BYTES,
    ApplyResult,
    RepositoryBase,
    Snapshot,
    holds_signing_keys,
)
from .store import write_atomic

Pending = tuple[str, bytes, ChannelMeta]  # channel, metadata bytes, verified metadata


class CentreStore(RepositoryBase):
    """Trust, accept, apply, check out: what a centre does with what the hub signed."""

    role = "centre"
    _roots_taken = 0
    _subscribed: set[str] | None = None
    _unwritten_roots: list[tuple[int, bytes]]

    def __init__(self, path: Path, durable: bool = False) -> None:
        super().__init__(path, durable)
        if holds_signing_keys(self.path):
            raise FormatError(
                f"{self.path}: this is the hub's repository (it holds the signing keys); the "
                "hub publishes releases, it does not take them from packs or other hubs"
            )

    @classmethod
    def init(cls, path: Path, trust_root: Path | bytes) -> CentreStore:
        """Create a store that pins ``trust_root`` (the hub's root, from enrolment)."""
        path = Path(path)
        cls._refuse_existing(path)
        data = trust_root if isinstance(trust_root, bytes) else Path(trust_root).read_bytes()
        state = TrustedState(data)  # refuses anything that is not a self-signed root
        cls._lay_out(path, data, state.root.version)
        return cls(path)

    def release(self, channel: str, version: int) -> Release:
        """A verified release of this store, its files read from the pieces on demand."""
        return self.snapshot().release(channel, version)

    def _holds_whole(self, snap: Snapshot, channel: str, version: int) -> bool:
        try:
            release = snap.release(channel, version)
            # reading the files reads every piece of the list: those are here too
            return all(self.store.has(sha) for f in release.iter_files() for sha, _ in f.chunks)
        except CaravaneError:
            return False

    # ------------------------------------------------------------------ collection

    def intake(self) -> Intake:
        """A token for objects that enter before a manifest names them (see refcount.py)."""
        return Intake(self.path, self.durable)

    def collect(self) -> CollectReport:
        """Remove the objects no manifest on disk names; the cost follows what changed.

        Every manifest file on disk counts (the kept releases, and a newer one whose objects
        are still arriving): the caller first removes the files of releases it no longer
        keeps. Space is given back by compacting segments once enough has left them.
        """
        with self.lock():
            manifests: dict[str, bytes] = {}
            for path in sorted((self.path / "manifests").glob("*/*.json")):
                name = path.relative_to(self.path).as_posix()
                try:
                    manifests[name] = path.read_bytes()
                except OSError as exc:
                    return CollectReport(skipped=f"{path} cannot be read ({exc})")
            return LiveCounts(self.path, self.store, self.durable).collect(manifests)

    # ------------------------------------------------------------------ accepting fetched data

    def accept_root(self, data: bytes, what: str = "root metadata") -> int:
        """Verify root N+1 (signed by old and new keys) fetched from anywhere, and keep it."""
        with self.lock():
            root = self.trusted.update_root(data, what)
            self._write_root(root.version, data)
            return root.version

    def check_channel_bytes(self, channel: str, data: bytes, what: str) -> ChannelMeta:
        """Verify channel metadata from an upstream: signature, no rollback, not expired."""
        return self._verify_incoming(self.snapshot(), channel, data, what)

    def _verify_incoming(
        self, snap: Snapshot, channel: str, data: bytes, what: str | None
    ) -> ChannelMeta:
        """Channel metadata from a carrier, checked against what this store holds.

        Bytes identical to the store's own copy, which this operation has just verified,
        are not verified again; only their expiry is checked, which the store's own copy
        is not held to (an installed release is served after its metadata expired).
        """
        known = snap.channel_or_none(channel)
        if known is not None and not snap.revoked(channel) and data == snap.channel_bytes(channel):
            return self.trusted.check_expiry(known, what=what)
        return self.trusted.verify_channel(data, channel, snap.known_version(channel), what=what)

    def accept_channel(self, channel: str, data: bytes, what: str) -> ChannelMeta:
        """Verify and keep channel metadata if it is newer than what this store knows."""
        with self.lock():
            snap = self.snapshot()
            known = snap.known_version(channel)
            meta = self._verify_incoming(snap, channel, data, what)
            if known is None or meta.version > known:
                write_atomic(self.path / channel_relpath(channel), data, True)
                snap.remember_channel(channel, data, meta)
            return meta

    def accept_manifest(
        self,
        channel: str,
        version: int,
        data: bytes,
        fetch: Callable[[dict[str, int]], None] | None = None,
    ) -> Release:
        """Verify a fetched manifest against the signed channel metadata, and keep it.

        A format 2 manifest's pieces come from this store, and ``fetch`` (an upstream's
        objects) brings in the ones it lacks: for an update, the few pieces that changed.
        The tree is verified as a stream (``TrustedState.verify_release``): every piece and
        path is checked before the manifest is kept, and no file list is held.
        """
        ref = self.snapshot().channel(channel).releases.get(version)
        if ref is None:
            raise NotFoundError(f"channel {channel!r} has no signed version {version}")
        # pieces fetched for a manifest that then fails its checks are named by nothing:
        # a token stays for them (none when nothing was fetched)
        token = self.intake()

        def fetch_noted(need: dict[str, int]) -> None:
            assert fetch is not None
            token.open()
            fetch(need)

        reader = store_reader(self.store, fetch_noted if fetch is not None else None)
        release = self.trusted.verify_release(data, ref, channel, reader)
        write_atomic(self.path / manifest_relpath(channel, version), data, self.durable)
        token.settle()
        # read from the store from now on: every piece is here
        return Release.open(data, ref, channel, self.pieces()) if release.doc else release

    # ------------------------------------------------------------------ packs

    def apply_pack(
        self,
        pack: Path,
        progress: Progress = None,
        dry_run: bool = False,
        channels: Collection[str] | None = None,
        opener: Opener | None = None,
    ) -> ApplyResult:
        """Verify a pack against this store's pinned root and add what it carries.

        Chunks are stored as soon as their group verifies, so a truncated pack keeps all it
        delivered; the manifest and channel metadata are written last, only when every object
        of the release is present. ``dry_run`` checks everything and writes nothing.

        ``channels`` are the ones this centre subscribes to: a pack for any other channel is
        refused before anything from it is written (newer roots it carries included), so a
        centre keeps nothing of channels it does not serve.

        ``opener`` opens the pack's volumes (a drive's walks its folders without links). Each
        entry's payload is bounded before it is read by what the signed metadata says it may
        hold, so a forged length costs no memory.
        """
        if dry_run:
            return self.verify_pack(pack, channels)
        pack = Path(pack)
        self._roots_taken = 0  # bounded per pack, like a sync pass (MAX_ROOT_ROTATIONS)
        self._subscribed = None if channels is None else set(channels)
        self._unwritten_roots = []
        try:
            token = self.intake()  # left on disk once the first object is written
            with token:
                return self._apply_pack_locked(pack, progress, opener, token)
        finally:
            if self._unwritten_roots:  # verified but never kept: the disk is the truth
                self._trusted = None

    def _apply_pack_locked(
        self, pack: Path, progress: Progress, opener: Opener | None, objects: Intake
    ) -> ApplyResult:
        pending_channel: Pending | None = None
        release: Release | None = None
        intake: _TreeIntake | None = None
        old: Release | None = None
        # the files of the new release and of its base by position (what a delta's runs
        # name), read from the pieces on demand
        files: Manifest | None = None
        old_files: Manifest | None = None
        changed: list[FileEntry] | None = None  # the new files the tree diff names
        mbytes = b""
        added = 0

        def payload_limit(header: dict[str, Any]) -> int:
            if header.get("kind") == "delta":
                finish_tree()  # a delta names files of the new release: check it first
            return _entry_bound(header, pending_channel, files, intake)

        def finish_tree() -> Manifest | None:
            """The release's files once every piece its tree names is here and verified."""
            nonlocal release, intake, files, changed
            if release is None and intake is not None:
                release, changed = self._verify_tree(mbytes, intake, old)
                intake = None
            if release is not None and files is None:
                files = _positional(release)
            return files

        with self.lock():
            snap = self.snapshot()
            try:
                for entry in read_entries(pack, opener, payload_limit):
                    what = f"{pack.name} entry at byte {entry.offset}"
                    if entry.kind == "metadata":
                        pending_channel = self._apply_metadata(entry, snap, what) or pending_channel
                    elif entry.kind == "manifest":
                        release, mbytes, old, intake = self._apply_manifest(
                            entry, pending_channel, snap, what
                        )
                        files, changed = None, None
                        old_files = _positional(old) if old is not None else None
                    elif entry.kind == "tree":
                        if intake is None:
                            raise PackError(f"{what}: manifest pieces without a tree manifest")
                        objects.open()  # the first objects of this pack go in
                        added += self._apply_tree(entry, what, intake)
                    elif entry.kind == "delta":
                        objects.open()
                        added += self._apply_delta(entry, what, progress, old_files, finish_tree())
            except TruncatedPackError as exc:
                try:
                    finish_tree()
                except CaravaneError:
                    release = None  # pieces still missing: the next carrier brings them
                if release is not None:
                    # verified against the signed metadata: keep it, so whatever carries the
                    # rest (the network, the next drive) knows what the release needs
                    write_atomic(
                        self.path / manifest_relpath(release.channel, release.version),
                        mbytes,
                        self.durable,
                    )
                    objects.settle()  # a pack carries one release: it names all it wrote
                raise TruncatedPackError(
                    f"{exc} ({added} objects from it were verified and kept)"
                ) from None
            try:
                finish_tree()
            except VerificationError as exc:
                raise PackError(
                    f"{pack}: {exc}; this pack was built for a store holding another release"
                ) from None
            if release is None or pending_channel is None:
                raise PackError(f"{pack}: carries no release manifest")
            # an update's pack brings the files the tree diff names; the others are the base
            # release's, which this store holds (a first release: every file is looked at)
            looked = changed if changed is not None else release.iter_files()
            missing = {sha for f in looked for sha, _ in f.chunks if not self.store.has(sha)}
            if missing:
                raise PackError(
                    f"{pack}: {len(missing)} objects of {release.channel!r} version "
                    f"{release.version} are neither in the pack nor in {self.path}; this pack "
                    "was built for a store holding another release"
                )
            channel, cbytes, meta = pending_channel
            write_atomic(
                self.path / manifest_relpath(channel, release.version), mbytes, self.durable
            )
            current_version = snap.known_version(channel)
            if current_version is None or meta.version >= current_version:
                write_atomic(self.path / channel_relpath(channel), cbytes, True)
                snap.remember_channel(channel, cbytes, meta)
        return ApplyResult(release.channel, release.version, added, True)

    def _apply_metadata(self, entry: Any, snap: Snapshot, what: str) -> Pending | None:
        state = self.trusted
        path = str(entry.header.get("path", ""))
        channel: str | None = None
        if path.startswith("metadata/channels/") and path.endswith(".json"):
            channel = check_channel(path[len("metadata/channels/") : -len(".json")])
            if self._subscribed is not None and channel not in self._subscribed:
                self._trusted = None  # forget the roots this pack carried: none was kept
                raise PackError(
                    f"{what}: this pack is for channel {channel!r}, which this centre does "
                    f"not subscribe to ({', '.join(sorted(self._subscribed)) or 'none'}); "
                    "nothing from it was kept"
                )
        root_version = _root_version_of_path(path)
        if root_version is not None and root_version <= state.root.version:
            return None  # a root this centre took already (the pack serves older ones too)
        data = delta.decompress_group(
            self._metadata_prefix(entry.header, path, channel, snap, what),
            entry.payload,
            compact.metadata_size(entry.payload, MAX_METADATA_BYTES, what),
            what,
        )
        if path.startswith("metadata/root/"):
            version = root_version_of(data)
            if version > state.root.version:
                self._roots_taken += 1
                if self._roots_taken > MAX_ROOT_ROTATIONS:
                    raise too_many_roots(what)
                state.update_root(data, f"{what} ({path})")
                # written with the channel's metadata, once the pack is known to be for us
                self._unwritten_roots.append((version, data))
            return None
        if channel is not None:
            for version, root in self._unwritten_roots:
                self._write_root(version, root)
            self._unwritten_roots.clear()
            known = snap.channel_or_none(channel)
            try:
                meta = self._verify_incoming(snap, channel, data, f"{what} ({path})")
            except RollbackError:
                # An older pack is still useful if our newer metadata still lists its release.
                current = snap.channel_bytes(channel)
                assert known is not None and current is not None
                return channel, current, known
            return channel, data, meta
        raise PackError(f"{what}: unexpected metadata path {path!r}")

    def _metadata_prefix(
        self, header: dict[str, Any], path: str, channel: str | None, snap: Snapshot, what: str
    ) -> bytes:
        """What a metadata entry was compressed against (``packs/compact.py``): nothing,
        or the channel skeleton and the entry of the base release, read from its document
        here. A prefix this store cannot build is a clear refusal, not a wrong guess."""
        name = header.get("dict")
        if name is None:
            return b""  # packs built before the prefix
        if name == compact.ROOT_DICT:
            version = _root_version_of_path(path)
            state = self.trusted
            if version is None or version != state.root.version + 1:
                raise PackError(
                    f"{what}: root {path!r} follows a root this centre does not hold (it "
                    f"trusts root version {state.root.version}); the pack is damaged, or "
                    "take the missing root from the hub or a newer drive first"
                )
            return compact.root_prefix(state.root_bytes)
        if name != compact.CHANNEL_DICT:
            raise PackError(
                f"{what}: metadata compressed against {str(name)[:32]!r}, which this version "
                "of Caravane does not know; upgrade this centre's software, then import again"
            )
        base_version = header.get("base_version", 0)
        if not isinstance(base_version, int) or isinstance(base_version, bool):
            raise PackError(f"{what}: malformed metadata entry")
        if not base_version:
            return compact.channel_prefix(None)
        if channel is None:
            raise PackError(
                f"{what}: {path[:80]!r} is not channel metadata, yet names its prefix; the "
                "pack is damaged or forged"
            )
        if not snap.has_manifest(channel, base_version):
            raise NotFoundError(
                f"manifest of {channel!r} version {base_version} is not in {self.path}: "
                "this pack updates from that release; apply the packs in order"
            )
        return compact.channel_prefix(self.manifest_bytes(channel, base_version))

    def _apply_manifest(
        self, entry: Any, pending: Pending | None, snap: Snapshot, what: str
    ) -> tuple[Release | None, bytes, Release | None, _TreeIntake | None]:
        """The pack's manifest, verified, with the base release it was built against.

        A format 2 manifest is only its document here: its pieces follow in ``tree``
        entries (or are in this store already), and the release is verified once they are
        (:meth:`_verify_tree`).
        """
        if pending is None:
            raise PackError(f"{what}: manifest before its channel metadata")
        channel, _, meta = pending
        h = entry.header
        version, base_version, size = h.get("version"), h.get("base_version"), h.get("size")
        if not all(isinstance(x, int) for x in (version, base_version, size)):
            raise PackError(f"{what}: malformed manifest entry")
        ref = meta.releases.get(version)
        if ref is None:
            raise VerificationError(
                f"{what}: version {version} of {channel!r} is not in the signed metadata"
            )
        if size != ref.manifest_length or size > MAX_MANIFEST_BYTES:
            raise VerificationError(f"{what}: manifest length differs from the signed one")
        old: Release | None = None
        base = b""
        if base_version:
            if not snap.has_manifest(channel, base_version):
                raise NotFoundError(
                    f"manifest of {channel!r} version {base_version} is not in {self.path}: "
                    "this pack updates from that release; apply the packs in order"
                )
            base = self.manifest_bytes(channel, base_version)
            old = Release.open(base, snap.ref(channel, base_version), channel, self.pieces())
        data = delta.decompress_group(base, entry.payload, size, what)
        if tree.spec_version_of(data, what) == tree.TREE_SPEC_VERSION:
            self.trusted.check_manifest_bytes(data, ref, channel)
            doc = tree.parse_doc(data, what)
            if doc.channel != channel or doc.version != ref.version:
                raise VerificationError(f"{what}: it claims {doc.channel!r} v{doc.version}")
            root = old.doc.root if old is not None and old.doc is not None else None
            return None, data, old, _TreeIntake(channel, ref, doc, base, root)
        flat = self.trusted.verify_manifest(data, ref, channel)
        return Release.of_manifest(flat), data, old, None

    def _verify_tree(
        self, data: bytes, intake: _TreeIntake, old: Release | None
    ) -> tuple[Release, list[FileEntry] | None]:
        """The pack's release once its pieces are here, verified without its file list.

        Against a format 2 base this store holds (an update), the tree diff reads exactly
        the pieces the two trees do not share, each checked against the hash its parent
        names; the shared ones are the base's, verified when it was taken. The new files it
        names are returned, their paths checked. A first release is walked whole from its
        pieces (every piece, path and count checked, a batch of leaves at a time).
        """
        release = Release.open(data, intake.ref, intake.channel, self.pieces())
        if old is None or old.doc is None:
            for _ in release.iter_files():
                pass  # tree.iter_files verifies as it goes
            return release, None
        assert release.doc is not None and release.read is not None
        changed = [
            new
            for _, new in tree.checked_changes(old.doc, release.doc, release.read, release.what)
            if new is not None
        ]
        return release, changed

    def _apply_tree(self, entry: Any, what: str, intake: _TreeIntake) -> int:
        """Manifest pieces, each kept only if the part of the new tree verified so far names it.

        Pieces come top-down (a node before the pieces it names), so a hostile pack can add
        nothing to this store that the signed release does not use.
        """
        h = entry.header
        # "bases": short names among the base pieces known so far, or full ids; "base":
        # full ids only (packs built before compact.py)
        sizes, base_refs = h.get("sizes"), h.get("bases", h.get("base", []))
        if not isinstance(sizes, list) or not sizes or not isinstance(base_refs, list):
            raise PackError(f"{what}: malformed manifest pieces entry")
        if not all(isinstance(n, int) and 0 < n <= tree.MAX_PIECE_BYTES for n in sizes):
            raise PackError(f"{what}: malformed manifest piece size")
        if "bases" not in h and any(isinstance(item, str) for item in base_refs):
            raise PackError(f"{what}: malformed base piece")
        base_parts = []
        if h.get("base_manifest"):
            base_parts.append(intake.old_doc)
        spent = 0
        for item in base_refs:
            sha, length, ref = intake.known.resolve(item, what)
            spent += length
            if spent > delta.GROUP_BASE:
                raise PackError(f"{what}: base larger than the format allows")
            try:
                base_parts.append(self.store.read(sha, length))
            except (StoreError, VerificationError):
                raise PackError(
                    f"{what}: needs manifest pieces this store lacks; apply the packs in order"
                ) from None
            if ref is not None:
                intake.known.learn(ref, base_parts[-1], what)
        data = delta.decompress_group(b"".join(base_parts), entry.payload, sum(sizes), what)
        added = pos = 0
        for n in sizes:
            piece = data[pos : pos + n]
            pos += n
            sha = intake.accept(piece, what)
            _, written = self.store.put_raw(piece, sha)
            added += 1 if written else 0
        return added

    def _apply_delta(
        self,
        entry: Any,
        what: str,
        progress: Progress,
        old: Manifest | None,
        new: Manifest | None,
    ) -> int:
        """A group of chunks; ``old`` and ``new`` give the files of the base and new releases
        by position (a delta's runs name them so), read from the pieces on demand."""
        if new is None:
            raise PackError(f"{what}: delta before the release manifest")
        base_refs = delta.resolve_runs(entry.header.get("base", []), old, f"{what} base")
        targets = delta.resolve_runs(entry.header.get("targets"), new, f"{what} targets")
        if (
            sum(n for _, n in targets) > delta.GROUP_TARGET + 16 * 1024 * 1024
            or sum(n for _, n in base_refs) > delta.GROUP_BASE + 16 * 1024 * 1024
        ):
            raise PackError(f"{what}: delta group larger than the format allows")
        if all(self.store.has(h) for h, _ in targets):
            return 0
        try:
            base = b"".join(self.store.read(h, n) for h, n in base_refs)
        except StoreError:
            raise PackError(
                f"{what}: needs objects this store lacks; apply the packs in order"
            ) from None
        total = sum(n for _, n in targets)
        data = delta.decompress_group(base, entry.payload, total, what)
        added = 0
        for sha, piece in delta.split_targets(data, targets, what):
            _, written = self.store.put_raw(piece, sha)
            added += 1 if written else 0
            if progress:
                progress(len(piece))
        return added


class _TreeIntake:
    """What of a format 2 release's tree a pack has delivered: the pieces it may still send.

    Starts from the root the signed document names; each accepted node adds the pieces it
    names. A piece named by nothing verified so far is refused.
    """

    def __init__(
        self,
        channel: str,
        ref: ReleaseRef,
        doc: tree.TreeDoc,
        old_doc: bytes,
        old_root: tree.PieceRef | None = None,
    ) -> None:
        self.channel, self.ref, self.old_doc = channel, ref, old_doc
        #: the base release's pieces the pack may name short (compact.py)
        self.known = compact.KnownPieces(old_root)
        self.named: dict[str, tree.PieceRef] = {}
        if doc.root is not None:
            self.named[doc.root.sha256] = doc.root

    def accept(self, piece: bytes, what: str) -> str:
        """Take ``piece`` if the tree verified so far names it; returns its id."""
        sha = hashlib.sha256(piece).hexdigest()
        ref = self.named.pop(sha, None)
        if ref is None or ref.length != len(piece):
            raise VerificationError(
                f"{what}: carries a manifest piece ({sha[:16]}) that the signed release does "
                "not name; the pack is corrupt or forged, nothing more from it is kept"
            )
        for child in tree.children_of(ref, piece, what):
            self.named[child.sha256] = child
        return sha


class _Positional:
    """A format 2 release's files by position, read from its pieces as they are asked for.

    What a delta's chunk runs need (``delta.resolve_runs`` reads ``len(files)`` and
    ``files[i]``) without the whole list: each lookup goes down from the root by the file
    counts the nodes give, holding the nodes on the way (a few hundred) and the last leaf,
    which the runs of a pack, in file order, mostly stay in.
    """

    def __init__(self, doc: tree.TreeDoc, read: tree.PieceReader, what: str) -> None:
        self._root, self._count, self._read, self._what = doc.root, doc.files, read, what
        self._nodes: dict[str, tuple[list[int], list[tree.PieceRef]]] = {}
        self._leaf: tuple[int, list[FileEntry]] = (0, [])

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i: int) -> FileEntry:
        if not 0 <= i < self._count or self._root is None:
            raise IndexError(i)
        start, entries = self._leaf
        if start <= i < start + len(entries):
            return entries[i - start]
        ref, start = self._root, 0
        while ref.level > 0:
            starts, children = self._children(ref)
            k = bisect.bisect_right(starts, i - start) - 1
            ref, start = children[k], start + starts[k]
        name = f"{self._what} piece {ref.sha256[:12]}"
        # the checks tree.iter_leaves makes of a leaf: hash, length, entries and counts
        entries = tree.leaf_entries(ref, self._piece(ref), name)
        self._leaf = (start, entries)
        return entries[i - start]

    def _piece(self, ref: tree.PieceRef) -> bytes:
        datas = self._read([ref])
        if len(datas) != 1:
            raise VerificationError(f"{self._what}: pieces missing")
        return datas[0]

    def _children(self, ref: tree.PieceRef) -> tuple[list[int], list[tree.PieceRef]]:
        got = self._nodes.get(ref.sha256)
        if got is None:
            children = tree.children_of(ref, self._piece(ref), self._what)
            starts = list(itertools.accumulate((c.files for c in children), initial=0))[:-1]
            if len(self._nodes) >= 1024:
                self._nodes.clear()
            got = self._nodes[ref.sha256] = (starts, children)
        return got


def _positional(release: Release) -> Manifest:
    """``release``'s files by position, for ``delta.resolve_runs`` (a format 1 release's
    own list; a format 2 one's read from its pieces, :class:`_Positional`)."""
    if release.flat is not None:
        return release.flat
    assert release.doc is not None and release.read is not None
    view = _Positional(release.doc, release.read, release.what)
    # resolve_runs reads only ``.files`` (its length and items by index): a view will do
    return cast(Manifest, SimpleNamespace(files=view))


def _root_version_of_path(path: str) -> int | None:
    """N for ``metadata/root/N.json``, else None."""
    stem = path[len("metadata/root/") : -len(".json")]
    if path.startswith("metadata/root/") and path.endswith(".json") and stem.isdigit():
        return int(stem)
    return None


def _zstd_bound(size: int) -> int:
    """The most a zstd frame of ``size`` bytes can take (ZSTD_COMPRESSBOUND, with room)."""
    return size + (size >> 7) + 128 * 1024


def _entry_bound(
    header: dict[str, Any],
    pending: Pending | None,
    manifest: Manifest | None,
    intake: _TreeIntake | None = None,
) -> int:
    """The largest payload a pack entry may have, from the signed sizes known so far.

    Metadata: a frame of at most MAX_METADATA_BYTES. Manifest: a frame of the length the
    verified channel metadata gives for that version. Delta: a frame of the targets it names
    in the verified manifest. Anything else (out of order, unknown version): nothing.
    """
    kind = header.get("kind")
    if kind == "end":
        return 0
    if kind == "metadata":
        return _zstd_bound(MAX_METADATA_BYTES)
    if kind == "manifest":
        version = header.get("version")
        ref = pending[2].releases.get(version) if pending and isinstance(version, int) else None
        return _zstd_bound(min(ref.manifest_length, MAX_MANIFEST_BYTES)) if ref else 0
    if kind == "tree" and intake is not None:
        sizes = header.get("sizes")
        if not isinstance(sizes, list) or not all(isinstance(n, int) and n > 0 for n in sizes):
            return 0
        return _zstd_bound(min(sum(sizes), tree.MAX_PIECE_BYTES + delta.GROUP_TARGET))
    if kind == "delta" and manifest is not None:
        try:
            targets = delta.resolve_runs(header.get("targets"), manifest, "pack entry targets")
        except CaravaneError:
            return 0
        return _zstd_bound(min(sum(n for _, n in targets), delta.GROUP_TARGET + (16 << 20)))
    return 0


__all__ = ["CentreStore"]
