"""A repository folder: what the hub's signed repository and a centre's store share.

Both roles use the same static layout (docs/FORMAT.md) and the same rules for reading it,
so a store on a drive or a mirror gets the same checks as one fetched over the network. What
differs is what each may do, and that follows the class, not a test on the folder:

- :class:`packs.hub_repository.HubRepository` holds the signing keys: it publishes, signs,
  rotates the root, retains and collects.
- :class:`packs.centre_store.CentreStore` only pins the hub's root: it accepts verified
  metadata, applies packs and reports which releases it holds whole.
- :class:`RepositoryBase` (here) is the folder, the object store, the writer lock and
  everything that only reads verified content: checkout, verification, and building packs
  (a centre that is up to date fills a field agent's drive, so it builds packs too).

Reads of metadata go through a :class:`Snapshot` made at the start of each operation, which
verifies root, channel metadata and each manifest at most once for that operation, instead
of re-reading and re-verifying them on every call.

Writes are ordered so a crash never leaves a reader inconsistent: objects first, then the
manifest, then the signed channel metadata, each by an atomic rename.

:class:`Repository` is the name callers used before the split: calling it opens the role
class the folder holds. It stays for this release so callers can move off it one by one.
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import logging
import os
import shutil
import sqlite3
import tempfile
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

from caravane.protocol import tree
from caravane.protocol.canonical import canonical_bytes
from caravane.protocol.errors import (
    CaravaneError,
    FormatError,
    NotFoundError,
    SignatureError,
    VerificationError,
)
from caravane.protocol.metadata import ChannelMeta, FileEntry, Manifest, ReleaseRef
from caravane.protocol.paths import check_path
from caravane.protocol.release import Release
from caravane.protocol.trust import TrustedState

from . import changes, compact, delta, similarity, skim
from .errors import StoreError
from .idset import IdSet
from .ingest import PREFETCH, Progress, ingest_files, scan_source
from .layout import (
    REPO_MARKER,
    channel_relpath,
    manifest_relpath,
    pack_relpath,
    root_relpath,
)
from .manifests import store_reader
from .packfile import DEFAULT_VOLUME_SIZE, PackWriter
from .store import ObjectStore, compress, decode_frame, write_atomic

if TYPE_CHECKING:
    from .centre_store import CentreStore
    from .hub_repository import HubRepository

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 256 * 1024 * 1024
#: files up to this size are written whole by a worker, in batches (see ``materialise``)
SMALL_FILE = 1024 * 1024
WRITE_BATCH = 128
WRITE_BATCH_BYTES = 4 * 1024 * 1024
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
RELEASE_KEY = "release.pem"
#: where keys lived before they moved out: inside the served folder (issue 12)
LEGACY_KEYS = "keys"


def keys_dir(path: Path) -> Path:
    """Where the hub keeps the signing keys of the repository at ``path``: beside it.

    ``DATA/repo`` keeps its keys in ``DATA/repo-keys``, never inside the folder a static
    server, a CDN, rsync or a drive copies; one folder per repository, so a hub repository
    and a centre's store side by side in one folder never take each other's keys.
    """
    path = Path(path).absolute()
    return path.parent / f"{path.name}-keys"


def holds_signing_keys(path: Path) -> bool:
    """True for the hub's repository: the one folder with a release signing key beside it
    (or still inside it, in the old layout the hub moves out when it opens it)."""
    return (keys_dir(path) / RELEASE_KEY).is_file() or (
        Path(path) / LEGACY_KEYS / RELEASE_KEY
    ).is_file()


@dataclass
class PublishResult:
    channel: str
    version: int
    files: int
    total_bytes: int
    new_objects: int
    new_bytes: int
    stored_bytes: int
    manifest_sha256: str
    #: the first ``EXAMPLES`` paths of each kind of change, in path order (a first publish of
    #: a million files does not list them all); the counts are below
    new_files: list[str] = field(default_factory=list)
    changed_files: list[str] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)
    files_added: int = 0
    files_changed: int = 0
    files_removed: int = 0

    EXAMPLES: ClassVar[int] = 100

    def count_change(self, old: FileEntry | None, new: FileEntry | None) -> None:
        """Note one path of the diff from the previous release (a content change only:
        an entry whose mode or chunking alone changed is not a changed file)."""
        if old is None and new is not None:
            self.files_added += 1
            if len(self.new_files) < self.EXAMPLES:
                self.new_files.append(new.path)
        elif new is None and old is not None:
            self.files_removed += 1
            if len(self.removed_files) < self.EXAMPLES:
                self.removed_files.append(old.path)
        elif old is not None and new is not None and old.sha256 != new.sha256:
            self.files_changed += 1
            if len(self.changed_files) < self.EXAMPLES:
                self.changed_files.append(new.path)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyReport:
    channels: dict[str, list[int]]
    objects_checked: int
    bytes_checked: int
    unreferenced_objects: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), ok=self.ok)


@dataclass
class PackInfo:
    channel: str
    from_version: int
    to_version: int
    volumes: list[str]
    size: int
    entries: int
    new_chunks: int
    new_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ApplyResult:
    channel: str
    version: int
    objects_added: int
    complete: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Snapshot:
    """Verified metadata of one repository, held for the length of one operation.

    Channel metadata is read and verified once per channel, each manifest once per version;
    an operation that writes metadata records it here, so what it reads next is what it
    wrote. The snapshot belongs to one operation and is dropped with it: the files may
    change between operations (another process publishes, a sync accepts newer metadata).

    A change of trusted root (a rotation accepted mid-operation) empties it, so nothing
    verified under the old root is reused under the new one. The repository's own channel
    metadata that only a revoked release key signed is still read (it describes the release
    installed), but marked revoked: it sets no rollback floor and is never taken as
    identical to what a carrier offers (see :mod:`protocol.trust`).
    """

    def __init__(self, repo: RepositoryBase) -> None:
        self.repo = repo
        self.trusted = repo.trusted
        self._root_version = self.trusted.root.version
        self._channels: dict[str, tuple[bytes, ChannelMeta] | None] = {}
        self._manifests: dict[tuple[str, int], Manifest] = {}
        self._manifest_data: dict[tuple[str, int], bytes] = {}
        self._revoked: set[str] = set()

    def _current(self) -> None:
        if self.trusted.root.version != self._root_version:
            self._root_version = self.trusted.root.version
            self._channels.clear()
            self._revoked.clear()
            self._manifests.clear()
            self._manifest_data.clear()

    # ------------------------------------------------------------------ channels

    def _channel_entry(self, channel: str) -> tuple[bytes, ChannelMeta] | None:
        self._current()
        if channel not in self._channels:
            data = self.repo.channel_bytes(channel)
            if data is None:
                self._channels[channel] = None
            else:
                self._channels[channel] = (data, self._verify_own(data, channel))
        return self._channels[channel]

    def _verify_own(self, data: bytes, channel: str) -> ChannelMeta:
        """The repository's own copy: current release key, or a revoked one (marked)."""
        try:
            return self.trusted.verify_channel(data, channel, check_expiry=False)
        except SignatureError:
            what = f"channel metadata for {channel!r} in {self.repo.path}"
            if not self.trusted.release_revoked(data, what):
                raise
        self._revoked.add(channel)
        return self.trusted.verify_revoked(data, channel)

    def revoked(self, channel: str) -> bool:
        """Whether this repository's copy was signed only by a release key since revoked."""
        self._channel_entry(channel)
        return channel in self._revoked

    def channel_or_none(self, channel: str) -> ChannelMeta | None:
        """This repository's own channel metadata, verified (expiry is not enforced on it)."""
        entry = self._channel_entry(channel)
        return entry[1] if entry else None

    def channel(self, channel: str) -> ChannelMeta:
        meta = self.channel_or_none(channel)
        if meta is None:
            raise NotFoundError(f"channel {channel!r} does not exist in {self.repo.path}")
        return meta

    def channel_bytes(self, channel: str) -> bytes | None:
        """The bytes of the channel metadata that verified (so a copy is what was checked)."""
        entry = self._channel_entry(channel)
        return entry[0] if entry else None

    def known_version(self, channel: str) -> int | None:
        """The rollback floor: the highest version accepted under the current release key.

        None for metadata a revoked key signed: after a rotation the floor restarts under
        the new key (a stolen key's version 1,000,000 must not hold a centre forever).
        """
        meta = self.channel_or_none(channel)
        return meta.version if meta and channel not in self._revoked else None

    def remember_channel(self, channel: str, data: bytes, meta: ChannelMeta) -> None:
        """Record channel metadata this operation verified and wrote."""
        self._current()
        self._channels[channel] = (data, meta)
        self._revoked.discard(channel)

    # ------------------------------------------------------------------ manifests

    def ref(self, channel: str, version: int) -> ReleaseRef:
        ref = self.channel(channel).releases.get(version)
        if ref is None:
            have = ", ".join(str(v) for v in sorted(self.channel(channel).releases))
            raise NotFoundError(f"channel {channel!r} has no version {version} (has: {have})")
        return ref

    def has_manifest(self, channel: str, version: int) -> bool:
        """Whether the manifest file is here (not verified: use :meth:`manifest` for that)."""
        self._current()
        return (channel, version) in self._manifests or (
            self.repo.path / manifest_relpath(channel, version)
        ).is_file()

    def manifest(self, channel: str, version: int, keep: bool = True) -> Manifest:
        """A verified manifest; ``keep=False`` for walks that visit each version once."""
        self._current()
        key = (channel, version)
        manifest = self._manifests.get(key)
        if manifest is None:
            ref = self.ref(channel, version)
            data = self.repo.manifest_bytes(channel, version)
            manifest = self.trusted.verify_manifest(data, ref, channel, self.repo.pieces())
            if keep:
                self._manifests[key] = manifest
        return manifest

    def release(self, channel: str, version: int) -> Release:
        """A verified release whose files are read from the store on demand (format 2
        holds nothing per file: what every walk of a million-file release should use)."""
        self._current()
        ref = self.ref(channel, version)
        data = self.repo.manifest_bytes(channel, version)
        return Release.open(data, ref, channel, self.repo.pieces())

    def manifest_with_bytes(self, channel: str, version: int) -> tuple[Manifest, bytes]:
        """A verified manifest and the very bytes that verified (delta bases, packs)."""
        self._current()
        key = (channel, version)
        if key in self._manifests and key in self._manifest_data:
            return self._manifests[key], self._manifest_data[key]
        ref = self.ref(channel, version)
        data = self.repo.manifest_bytes(channel, version)
        manifest = self.trusted.verify_manifest(data, ref, channel, self.repo.pieces())
        self.remember_manifest(channel, version, data, manifest)
        return manifest, data

    def remember_manifest(self, channel: str, version: int, data: bytes, m: Manifest) -> None:
        """Record a manifest this operation verified (and usually wrote)."""
        self._current()
        self._manifests[(channel, version)] = m
        self._manifest_data[(channel, version)] = data


#: A lock a repository's owner adds to the folder's own (see :meth:`RepositoryBase.lock`).
SharedLock = Callable[[], AbstractContextManager[object]]


class RepositoryBase:
    """The folder, its object store, its lock, and what only reads verified content."""

    #: "hub" or "centre": what this class may do, for messages and reports.
    role: ClassVar[str] = "repository"

    def __init__(self, path: Path, durable: bool = False) -> None:
        self.path = Path(path)
        if not (self.path / REPO_MARKER).is_file():
            raise NotFoundError(
                f"{self.path}: not a Caravane repository (run `caravane repo init` first)"
            )
        self.durable = durable
        self.store = ObjectStore(self.path, durable=durable)
        self._trusted: TrustedState | None = None
        #: taken inside the folder's lock by every writer. The folder's ``flock`` holds
        #: among the processes of one host; hub processes on several hosts sharing this
        #: folder need more, which their owner installs here (the hub: a PostgreSQL
        #: advisory lock). ``packs`` knows nothing of databases: it only calls it.
        self.shared_lock: SharedLock | None = None

    @property
    def is_hub(self) -> bool:
        """Kept for callers that label their output by role; prefer :attr:`role`."""
        return self.role == "hub"

    @staticmethod
    def _lay_out(path: Path, root: bytes, root_version: int) -> None:
        """Create the folders, the pinned root and, last, the marker that says "ready"."""
        for sub in ("metadata/root", "metadata/channels", "manifests", "objects", "packs"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        write_atomic(path / root_relpath(root_version), root, True)
        write_atomic(path / root_relpath(), root, True)
        write_atomic(
            path / REPO_MARKER,
            canonical_bytes({"format": "caravane-repository", "format_version": 1}),
            True,
        )

    @staticmethod
    def _refuse_existing(path: Path) -> None:
        if (path / REPO_MARKER).exists():
            raise FormatError(f"{path}: already a Caravane repository")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One writer at a time per repository (publish, apply, retention).

        The local ``flock`` first, then :attr:`shared_lock` if one is installed: every
        writer takes them in that order, so two never wait on each other crosswise.
        """
        with open(self.path / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                if self.shared_lock is None:
                    yield
                else:
                    with self.shared_lock():
                        yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ trust

    def readable(self) -> str:
        """ "ok", or why this folder cannot be read now (what a readiness probe reports)."""
        root = self.path / root_relpath()
        try:
            with open(root, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            return f"cannot read {root}: {exc.strerror or exc}"
        return "ok"

    def pieces(self) -> tree.PieceReader:
        """Where this repository's format 2 manifests read their pieces: its own store."""
        return store_reader(self.store)

    def root_versions(self) -> list[int]:
        folder = self.path / "metadata/root"
        return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())

    @property
    def trusted(self) -> TrustedState:
        """The trust state: the first root this repository pinned, walked to the newest.

        A root another process accepted since (``hub rotate-keys`` while the hub serves, a
        sync while the portal serves) is picked up here: one ``stat`` per call.
        """
        if self._trusted is not None:
            following = self.path / root_relpath(self._trusted.root.version + 1)
            if following.is_file():
                self._trusted = None
        if self._trusted is None:
            versions = self.root_versions()
            if not versions:
                raise NotFoundError(f"{self.path}: no root metadata")
            state = TrustedState((self.path / root_relpath(versions[0])).read_bytes())
            for v in versions[1:]:
                state.update_root((self.path / root_relpath(v)).read_bytes(), f"root v{v}")
            self._trusted = state
        return self._trusted

    def _write_root(self, version: int, data: bytes) -> None:
        """Keep a root the trust state just accepted, numbered and as the current one."""
        write_atomic(self.path / root_relpath(version), data, True)
        write_atomic(self.path / root_relpath(), data, True)

    def snapshot(self) -> Snapshot:
        """Verified metadata for one operation (see :class:`Snapshot`)."""
        return Snapshot(self)

    # ------------------------------------------------------------------ reading

    def channels(self) -> list[str]:
        base = self.path / "metadata/channels"
        return sorted(p.stem for p in base.glob("*.json")) if base.is_dir() else []

    def channel_bytes(self, channel: str) -> bytes | None:
        """Raw channel metadata as stored, unverified (see :meth:`Snapshot.channel_bytes`)."""
        try:
            return (self.path / channel_relpath(channel)).read_bytes()
        except FileNotFoundError:
            return None

    def channel_meta(self, channel: str) -> ChannelMeta:
        """This repository's own channel metadata, verified (expiry is not enforced on it)."""
        return self.snapshot().channel(channel)

    def known_version(self, channel: str) -> int | None:
        return self.snapshot().known_version(channel)

    def manifest_bytes(self, channel: str, version: int) -> bytes:
        """Raw manifest as stored, unverified (see :meth:`Snapshot.manifest_with_bytes`)."""
        try:
            return (self.path / manifest_relpath(channel, version)).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(
                f"manifest of {channel!r} version {version} is not in {self.path}"
            ) from None

    def manifest(self, channel: str, version: int | None = None) -> Manifest:
        """A verified manifest; without ``version``, the newest release held whole."""
        snap = self.snapshot()
        if version is None:
            version = self.latest_local_version(channel, snap)
        return snap.manifest(channel, version)

    def latest_local_version(self, channel: str, snap: Snapshot | None = None) -> int:
        """The newest release this repository holds whole (a store may lag)."""
        snap = snap or self.snapshot()
        for v in sorted(snap.channel(channel).releases, reverse=True):
            if snap.has_manifest(channel, v) and self._holds_whole(snap, channel, v):
                return v
        raise NotFoundError(f"no release of channel {channel!r} is complete in {self.path}")

    def _holds_whole(self, snap: Snapshot, channel: str, version: int) -> bool:
        """Whether every object of a release whose manifest is here is here too."""
        raise NotImplementedError

    def new_bytes(self, channel: str, from_version: int, to_version: int) -> int:
        """Raw bytes of ``to_version`` that ``from_version`` (0: nothing) lacks.

        What a pack between them carries before compression: the hub's estimate for
        deciding whether to build a pack while a centre waits.
        """
        snap = self.snapshot()
        old = snap.release(channel, from_version) if from_version else None
        return changes.release_new_bytes(old, snap.release(channel, to_version))

    # ------------------------------------------------------------------ checkout

    def checkout(
        self,
        channel: str,
        dest: Path,
        version: int | None = None,
        *,
        replace: bool = False,
        progress: Progress = None,
        manifest: Manifest | Release | None = None,
    ) -> Release:
        """Write a verified release into ``dest``, through a staging folder and a rename.

        The files are read from the release's pieces as they are written (nothing per file
        is held: a million-file release checks out in the memory of a thousand), each piece
        verified as it is read; a damaged piece or chunk part way fails the checkout, and
        the staging folder goes with it, leaving ``dest`` as it was.

        ``manifest``: that release, if the caller opened it already (the CLI does, to size
        its progress bar).
        """
        release: Release | None = None
        if isinstance(manifest, Release):
            release = manifest
        elif manifest is not None:
            release = Release.of_manifest(manifest)
        if release is None or release.channel != channel or release.version != version:
            snap = self.snapshot()
            if version is None:
                version = self.latest_local_version(channel, snap)
            release = snap.release(channel, version)
        dest = Path(dest)
        if dest.exists() and any(dest.iterdir()) and not replace:
            raise FormatError(f"{dest}: folder exists and is not empty (use --replace)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.with_name(f".{dest.name}.staging-{os.getpid()}")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        try:
            self.materialise(release, staging, progress)
            if dest.exists():
                old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
                os.replace(dest, old)
                os.replace(staging, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return release

    def materialise(
        self,
        files: Manifest | Release | Iterable[FileEntry],
        folder: Path,
        progress: Progress = None,
    ) -> None:
        """Rebuild every file of ``files`` under ``folder`` from verified chunks.

        Each chunk is decompressed (bounded by its signed size) and checked against its
        SHA-256 before a byte of it is written; since the chunk list comes from the signed
        manifest, a file made of verified chunks is the file that was signed. A
        :class:`Release` is walked from its pieces as the files are written (path order),
        so what is held is the files in flight, not the release; a walk that fails part way
        (a damaged piece) raises, leaving ``folder`` unfinished for the caller to drop.

        Small files go to the worker threads in batches (``WRITE_BATCH`` files or
        ``WRITE_BATCH_BYTES``), each batch read from the store in one query and one open per
        segment, then verified and written by the worker itself: handing every chunk to a
        thread and every write back to the main one cost more in hand-offs than the work.
        Bigger files stream chunk by chunk through the same pool, in order.
        """
        folder = Path(folder)
        if isinstance(files, Manifest):
            entries: Iterable[FileEntry] = files.files
        elif isinstance(files, Release):
            entries = files.iter_files()
        else:
            entries = files if isinstance(files, (list, tuple)) else list(files)
        # every folder first, then the files: making each folder as the paths reach it,
        # while the workers create files, cost four to six times the system time (100,000
        # files: 47-68 s against 15 s here). The folders are about one path in a hundred;
        # a release is walked once more for them, its paths only (each folder checked
        # here; every path is checked by the walk that writes the files)
        paths = files.paths() if isinstance(files, Release) else (f.path for f in entries)
        for sub in sorted({os.path.dirname(p) for p in paths} - {""}):
            (folder / check_path(sub)).mkdir(parents=True, exist_ok=True)
        umask = _umask()
        workers = max(2, os.cpu_count() or 2)
        pending: deque[Future[int]] = deque()
        batch: list[FileEntry] = []
        batch_bytes = 0
        with ThreadPoolExecutor(max_workers=workers) as pool:

            def wait(keep: int) -> None:
                while len(pending) > keep:
                    n = pending.popleft().result()
                    if progress:
                        progress(n)

            def flush() -> None:
                nonlocal batch, batch_bytes
                if batch:
                    pending.append(pool.submit(self._write_small, batch, folder, umask))
                    batch, batch_bytes = [], 0
                    wait(2 * workers)

            try:
                for entry in entries:
                    if entry.size <= SMALL_FILE:
                        batch.append(entry)
                        batch_bytes += entry.size
                        if len(batch) >= WRITE_BATCH or batch_bytes >= WRITE_BATCH_BYTES:
                            flush()
                        continue
                    self._write_big(entry, folder, pool, progress)
                flush()
            finally:
                # the writes in flight finish (or fail) before the caller drops the folder
                for job in pending:
                    job.exception()
            wait(0)

    def _load(self, path: str, sha: str, size: int, frame: bytes | None = None) -> bytes:
        """One chunk of ``path``, decompressed within its signed size and verified."""
        if frame is None:
            frame = self.store.read_frame(sha)
        data = decode_frame(frame, size, f"object {sha[:16]} of {path!r}")
        if hashlib.sha256(data).hexdigest() != sha:
            raise VerificationError(
                f"{path!r}: object {sha[:16]} in {self.path} does not match its "
                "SHA-256 (corrupt or tampered store); run `caravane repo verify`"
            )
        return data

    def _write_small(self, batch: list[FileEntry], folder: Path, umask: int) -> int:
        """Verify and write a batch of small files (in a worker); returns their bytes."""
        frames = self.store.read_frames(sha for f in batch for sha, _ in f.chunks)
        base = os.fspath(folder)
        total = 0
        for entry in batch:
            parts = [self._load(entry.path, sha, n, frames[sha]) for sha, n in entry.chunks]
            if not entry.chunks and entry.sha256 != EMPTY_SHA256:
                raise VerificationError(f"{entry.path!r}: empty, but its SHA-256 is not")
            target = os.path.join(base, entry.path)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, entry.mode)
            try:
                _write_all(fd, parts)
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if entry.mode & umask:
                os.chmod(target, entry.mode)  # the umask took bits the manifest gives
            total += entry.size
        return total

    def _write_big(
        self,
        entry: FileEntry,
        folder: Path,
        pool: ThreadPoolExecutor,
        progress: Progress,
    ) -> None:
        """Write one big file, its chunks loaded and verified ``PREFETCH`` ahead in ``pool``."""
        upcoming = iter(entry.chunks)
        pending: deque[Future[bytes]] = deque()

        def next_chunk() -> bytes:
            while len(pending) < PREFETCH:
                job = next(upcoming, None)
                if job is None:
                    break
                pending.append(pool.submit(self._load, entry.path, *job))
            return pending.popleft().result()

        target = folder / entry.path
        with open(target, "wb") as out:
            for _ in entry.chunks:
                data = next_chunk()
                out.write(data)
                if progress:
                    progress(len(data))
            if self.durable:
                out.flush()
                os.fsync(out.fileno())
        os.chmod(target, entry.mode)

    # ------------------------------------------------------------------ verify

    def verify(self, progress: Progress = None) -> VerifyReport:
        """Every signature, manifest and object here; problems are listed, not raised.

        Each release is walked from its pieces (nothing per file is held), each object read
        and verified the first time a release names it. What was checked is remembered in
        an :class:`~.idset.IdSet` (8 B an object, where a set of ids took about 120): an
        object whose first 64 bits match one checked already is taken as checked (about
        one chance in 2^64 per object that a damaged one is not read again).
        """
        problems: list[str] = []
        channels: dict[str, list[int]] = {}
        seen = IdSet()
        checked = nbytes = 0
        try:
            snap = self.snapshot()
        except (VerificationError, FormatError, NotFoundError) as exc:
            return VerifyReport({}, 0, 0, 0, [f"root metadata: {exc}"])

        def check(sha: str, n: int) -> None:
            nonlocal checked, nbytes
            if sha in seen:
                return
            seen.add(sha)
            try:
                self.store.read(sha, n)
                checked += 1
                nbytes += n
            except (VerificationError, StoreError) as exc:
                problems.append(str(exc))
            if progress:
                progress(n)

        for channel in self.channels():
            try:
                meta = snap.channel(channel)
            except (VerificationError, FormatError) as exc:
                problems.append(str(exc))
                continue
            channels[channel] = []
            for v in sorted(meta.releases):
                if not snap.has_manifest(channel, v):
                    continue
                try:
                    release = snap.release(channel, v)
                    objects: list[tuple[str, int]] = []
                    for ref in release.piece_refs():
                        objects.append((ref.sha256, ref.length))
                    for f in release.iter_files():
                        for sha, n in f.chunks:
                            check(sha, n)
                except (VerificationError, FormatError, NotFoundError, StoreError) as exc:
                    problems.append(str(exc))
                    continue
                for sha, n in objects:
                    check(sha, n)
                channels[channel].append(v)
        unreferenced = sum(1 for sha in self.store.iter_ids() if sha not in seen)
        return VerifyReport(channels, checked, nbytes, unreferenced, problems)

    def verify_pack(self, pack: Path, channels: Collection[str] | None = None) -> ApplyResult:
        """Run the whole verification of applying ``pack`` here, writing nothing here.

        The metadata is copied to a throw-away folder opened as a centre's store whose
        objects are read from this repository, so either role can check a pack (a field
        agent checks a drive against the hub's repository or a centre's store).
        """
        from .centre_store import CentreStore

        with tempfile.TemporaryDirectory(prefix="caravane-verify-") as tmp:
            scratch = Path(tmp)
            for sub in ("metadata", "manifests"):
                if (self.path / sub).exists():
                    shutil.copytree(self.path / sub, scratch / sub)
            (scratch / REPO_MARKER).write_bytes((self.path / REPO_MARKER).read_bytes())
            view = CentreStore(scratch)
            view.store = _OverlayStore(self.store, ObjectStore(scratch))
            return view.apply_pack(pack, channels=channels)

    # ------------------------------------------------------------------ packs

    def index_sketches(self, files: Collection[FileEntry]) -> int:
        """Sketch the files of a release that the similarity index lacks (packs/similarity.py).

        Called when a release is committed, so a later pack build from it reads nothing of
        it to choose delta bases; costs one read of the content new to the repository. The
        index is a cache: a failure here is logged, and the next build fills the gap.
        """
        sketches = similarity.open_index(self.path)
        if sketches is None:
            return 0
        try:
            return sketches.ensure(files, self.store.read, remember=True)
        except (sqlite3.Error, CaravaneError) as exc:
            log.warning("%s: similarity index not updated (%s)", self.path, exc)
            if isinstance(exc, sqlite3.Error) and similarity.is_damage(exc):
                sketches.close()
                sketches.remove_files()  # the next build rebuilds it
            return 0
        finally:
            sketches.close()

    def pack_path(self, channel: str, from_version: int, to_version: int) -> Path:
        return self.path / pack_relpath(channel, from_version, to_version)

    def build_pack(
        self,
        channel: str,
        from_version: int,
        to_version: int,
        out: Path,
        volume_size: int = DEFAULT_VOLUME_SIZE,
        level: int = delta.LEVEL,
        progress: Progress = None,
    ) -> PackInfo:
        """What a store holding ``from_version`` (0: nothing) needs to reach ``to_version``.

        Only verified content goes in: the manifests and channel metadata are the bytes
        that verified, and chunks are read with their hashes checked, so a corrupt store
        never ships.
        """
        if from_version >= to_version:
            raise FormatError(f"--from {from_version} must be older than --to {to_version}")
        snap = self.snapshot()
        new_ref = snap.ref(channel, to_version)  # first: a missing channel says so
        new_mbytes = self.manifest_bytes(channel, to_version)
        new = Release.open(new_mbytes, new_ref, channel, self.pieces())
        old_rel: Release | None = None
        old_mbytes = b""
        if from_version:
            ref = snap.ref(channel, from_version)
            old_mbytes = self.manifest_bytes(channel, from_version)
            old_rel = Release.open(old_mbytes, ref, channel, self.pieces())
        channel_data = snap.channel_bytes(channel)
        assert channel_data is not None  # the manifests above verified against it
        chunk_bytes = self.store.read
        # what B holds that A lacks, from the change between them (a one-file change
        # reads a few pieces of each tree, and A's files once if a chunk may be elsewhere
        # in A); then where each file carrying one sits in B, for the pack's chunk runs
        changed = new.changes_from(old_rel)
        targets: Iterable[tuple[int, FileEntry]]
        wanted: dict[str, int] | delta.FirstCarry
        # the similarity index, and beside it the summaries of A's leaves, which spare the
        # walks of A below all but the leaves holding something a target shares (.skim)
        sketches = similarity.open_index(self.path) if old_rel is not None else None
        summaries = sketches.leaf_summaries() if sketches is not None else None
        if old_rel is None:
            # from nothing: every file of B as it streams, never held (a million files)
            wanted = delta.FirstCarry()
            targets = enumerate(new.iter_files())
        else:
            kept = list(changed)
            try:
                wanted = changes.missing_in_changes(kept, old_rel, summaries)
            except sqlite3.Error as exc:
                log.warning("%s: leaf summaries failed (%s); walking A", self.path, exc)
                summaries = None
                wanted = changes.missing_in_changes(kept, old_rel)
            files = [f for _, f in kept if f is not None and any(h in wanted for h, _ in f.chunks)]
            del kept
            targets = list(zip(_positions(new, [f.path for f in files]), files, strict=True))
        similar = old_rel is not None and isinstance(targets, list) and bool(targets)
        if similar:
            assert old_rel is not None and isinstance(targets, list)
            key = release_key(old_mbytes)
            if sketches is not None:
                self._complete_by_diff(sketches, snap, channel, old_rel, key)
            a = old_rel
            index: delta.SimilarityIndex = delta.StreamedSimilarity(
                a.iter_files,
                key,
                chunk_bytes,
                sketches,
                [f for _, f in targets],
                skim=(
                    (lambda want: skim.skim(a, summaries, want, delta.CANDIDATES))
                    if summaries is not None and a.doc is not None
                    else None
                ),
                leaves=lambda refs: skim.leaf_entries(a, refs),
            )
        else:
            index = delta.SimilarityIndex(None, chunk_bytes)
        writer = PackWriter(Path(out), volume_size)
        try:
            previous: tuple[int, bytes] | None = None
            for v in self.root_versions():
                data = (self.path / root_relpath(v)).read_bytes()
                if v > 1:  # every reader pinned a root: version 1 at least
                    # a reader that must take root v holds root v - 1 by then (compact.py)
                    if previous is not None and previous[0] == v - 1:
                        header = {"path": root_relpath(v), "dict": compact.ROOT_DICT}
                        prefix = compact.root_prefix(previous[1])
                        payload = delta.compress_group(prefix, data, level)
                    else:
                        header, payload = {"path": root_relpath(v)}, compress(data, level)
                    writer.add("metadata", header, payload)
                previous = (v, data)
            # against a prefix the receiver builds from the base release's document (the
            # skeleton and that release's entry: about half the bytes, compact.py)
            writer.add(
                "metadata",
                {
                    "path": channel_relpath(channel),
                    "dict": compact.CHANNEL_DICT,
                    "base_version": from_version,
                },
                delta.compress_group(compact.channel_prefix(old_mbytes), channel_data, level),
            )
            writer.add(
                "manifest",
                {
                    "channel": channel,
                    "version": to_version,
                    "base_version": from_version,
                    "size": len(new_mbytes),
                },
                delta.manifest_delta(old_mbytes, new_mbytes, level),
            )
            if new.spec_version == tree.TREE_SPEC_VERSION:
                self._add_tree(writer, from_version, old_rel, old_mbytes, new, level)
            n_chunks = n_bytes = 0
            groups = delta.plan_target_groups(index, targets, wanted)
            for group in groups:
                base = _gather(chunk_bytes, group.base)
                target = _gather(chunk_bytes, group.targets)
                payload = delta.compress_group(base, target, level)
                del base, target
                writer.add(
                    "delta",
                    {
                        "base_version": from_version,
                        "base": group.base_runs,
                        "targets": group.target_runs,
                    },
                    payload,
                )
                n_chunks += len(group.targets)
                n_bytes += group.target_bytes
                if progress:
                    progress(group.target_bytes)
            volumes = writer.finish(
                {
                    "channel": channel,
                    "from": from_version,
                    "to": to_version,
                    "chunks": n_chunks,
                    "bytes": n_bytes,
                }
            )
        except BaseException:
            writer.abort()
            raise
        finally:
            if sketches is not None:
                sketches.close()
            if isinstance(wanted, delta.FirstCarry):
                wanted.close()
        return PackInfo(
            channel,
            from_version,
            to_version,
            [str(v) for v in volumes],
            sum(v.stat().st_size for v in volumes),
            len(writer.index),
            n_chunks,
            n_bytes,
        )

    def _complete_by_diff(
        self, sketches: similarity.SketchIndex, snap: Snapshot, channel: str, a: Release, key: bytes
    ) -> None:
        """Note A complete in the similarity index from an earlier release that is, sketching
        what changed between them, so the build does not walk all of A to check (the first
        build from each new release did: the channel's cost for a one-file change). The
        nearest retained release among the few before A; none complete: the build walks."""
        try:
            if sketches.is_complete(key):
                return
            versions = sorted(snap.channel(channel).releases)
            older = [v for v in versions if v < a.version][-COMPLETE_LOOKBACK:]
            for v in reversed(older):
                mbytes = self.manifest_bytes(channel, v)
                if not sketches.is_complete(release_key(mbytes)):
                    continue
                base = Release.open(mbytes, snap.ref(channel, v), channel, self.pieces())
                batch: list[FileEntry] = []
                for new in changes.new_contents(a.changes_from(base)):
                    batch.append(new)
                    if len(batch) >= SKETCH_BATCH:
                        sketches.ensure(batch, self.store.read)
                        batch = []
                sketches.ensure(batch, self.store.read)
                sketches.note_complete(key)
                return
        except sqlite3.Error as exc:  # a cache: the build's own check walks A instead
            log.warning("%s: similarity index not completed from the diff (%s)", self.path, exc)

    def _add_tree(
        self,
        writer: PackWriter,
        from_version: int,
        old: Release | None,
        old_doc: bytes,
        new: Release,
        level: int,
    ) -> None:
        """The pieces of the new tree the base release lacks, top-down, as deltas.

        Each group is compressed against the old pieces covering the same paths (a changed
        leaf against its old version), or, from a format 1 release, against its whole old
        manifest, which holds the same entries: the move to format 2 costs a small delta too.

        The pieces' refs come from the nodes alone (leaves are read only to be sent or used
        as a base), level by level from the root as before: the tree is balanced, so a
        stable sort of the depth-first refs by level is that order.
        """
        read = self.pieces()

        def top_down(release: Release) -> list[tree.PieceRef]:
            return sorted(release.piece_refs(), key=lambda r: -r.level)

        new_refs = top_down(new)
        old_refs: list[tree.PieceRef] = []
        whole_old = False
        if old is not None and old.spec_version == tree.TREE_SPEC_VERSION:
            old_refs = top_down(old)
        elif old is not None:
            whole_old = len(old_doc) <= delta.GROUP_BASE
        have = {r.sha256 for r in old_refs}
        todo = [r for r in new_refs if r.sha256 not in have]
        # the bases the receiver can find by a short name, as it will learn them
        known = compact.KnownPieces(old.doc.root if old is not None and old.doc else None)

        def flush(group: list[tree.PieceRef]) -> None:
            bases = tree.bases_for(group, old_refs)
            datas = read(bases)
            names: list[str | list[Any]] = []
            for ref, data in zip(bases, datas, strict=True):
                names.append(known.name(ref))
                if isinstance(names[-1], str):
                    known.learn(ref, data, f"{self.path}: piece {ref.sha256[:12]}")
            base = (old_doc if whole_old else b"") + b"".join(datas)
            del datas
            target = b"".join(read(group))
            header: dict[str, Any] = {
                "base_version": from_version,
                "bases": names,
                "sizes": [r.length for r in group],
            }
            if whole_old:
                header["base_manifest"] = True
            writer.add("tree", header, delta.compress_group(base, target, level))

        group: list[tree.PieceRef] = []
        size = 0
        for ref in todo:
            if group and size + ref.length > delta.GROUP_TARGET:
                flush(group)
                group, size = [], 0
            group.append(ref)
            size += ref.length
        if group:
            flush(group)


#: releases before A looked at for one whose sketches are all indexed
COMPLETE_LOOKBACK = 4
SKETCH_BATCH = 2048


def release_key(manifest_bytes: bytes) -> bytes:
    """A release's name in the similarity index's ``complete`` notes."""
    return hashlib.sha256(b"release " + manifest_bytes).digest()


def _positions(release: Release, paths: list[str]) -> list[int]:
    """Where each of ``paths`` (ascending, all in ``release``) sits in its file order.

    Format 2: each path is found by going down the tree, counting the files of the
    pieces before it (their parents say how many), so a few changed files cost a few
    pieces per level, not a walk; only the pieces on the current path are held. Format 1:
    the flat list, counted.
    """
    if not paths:
        return []
    if release.doc is None:
        where = {p: i for i, p in enumerate(paths)}
        out = [0] * len(paths)
        for i, f in enumerate(release.iter_files()):
            j = where.get(f.path)
            if j is not None:
                out[j] = i
        return out
    assert release.read is not None and release.doc.root is not None
    read, what = release.read, release.what
    path_cache: dict[int, tuple[str, Any]] = {}  # level -> (sha, children or entries)

    def parts(ref: tree.PieceRef) -> Any:
        cached = path_cache.get(ref.level)
        if cached is None or cached[0] != ref.sha256:
            datas = read([ref])
            if len(datas) != 1:
                raise VerificationError(f"{what}: pieces missing")
            name = f"{what} piece {ref.sha256[:12]}"
            if ref.level > 0:
                value: Any = tree.children_of(ref, datas[0], name)
            else:
                value = tree.leaf_entries(ref, datas[0], name)
            cached = path_cache[ref.level] = (ref.sha256, value)
        return cached[1]

    out = []
    for path in paths:
        ref, base = release.doc.root, 0
        while ref.level > 0:
            kids: list[tree.PieceRef] = parts(ref)
            i = max(bisect.bisect_right([k.first for k in kids], path) - 1, 0)
            base += sum(k.files for k in kids[:i])
            ref = kids[i]
        entries: list[FileEntry] = parts(ref)
        j = next((j for j, e in enumerate(entries) if e.path == path), None)
        if j is None:
            raise VerificationError(f"{what}: {path!r} is not where its tree says")
        out.append(base + j)
    return out


def _umask() -> int:
    """The process's umask (read by setting it; done before any worker thread starts)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_all(fd: int, parts: list[bytes]) -> None:
    """Write ``parts`` to ``fd`` in one ``writev`` when it takes them all (it nearly always
    does for a small file)."""
    total = sum(len(p) for p in parts)
    done = os.writev(fd, parts) if parts else 0
    while done < total:
        rest = b"".join(parts)[done:]
        done += os.write(fd, rest)


class _OverlayStore(ObjectStore):
    """Reads from a real store, writes to a scratch one (dry-run verification)."""

    def __init__(self, lower: ObjectStore, upper: ObjectStore) -> None:
        super().__init__(upper.root)
        self.lower = lower

    def has(self, sha: str) -> bool:
        return super().has(sha) or self.lower.has(sha)

    def read_frame(self, sha: str) -> bytes:
        return super().read_frame(sha) if super().has(sha) else self.lower.read_frame(sha)


def open_repository(path: Path, durable: bool = False) -> HubRepository | CentreStore:
    """Open a folder as the role it holds: the hub's repository if it holds the signing
    keys, a centre's store otherwise (for commands that work on either, like the CLI's)."""
    from .centre_store import CentreStore
    from .hub_repository import HubRepository

    path = Path(path)
    if not (path / REPO_MARKER).is_file():
        raise NotFoundError(f"{path}: not a Caravane repository (run `caravane repo init` first)")
    if holds_signing_keys(path):
        return HubRepository(path, durable)
    return CentreStore(path, durable)


class Repository(RepositoryBase):
    """The name callers used before the split by role; callers move off it.

    ``Repository(path)`` returns the role object the folder holds (see
    :func:`open_repository`), and ``Repository.init`` creates a hub repository or, with
    ``trust_root``, a centre's store. New code names the role it needs:
    ``HubRepository(path)``, ``CentreStore(path)``, or ``Repository.open(path)`` where
    either will do. Nothing is ever an instance of this class.
    """

    def __new__(cls, path: Path, durable: bool = False) -> Repository:
        # the role object is not an instance of this class, so __init__ is not run again
        return cast("Repository", open_repository(path, durable))

    @staticmethod
    def open(path: Path, durable: bool = False) -> HubRepository | CentreStore:
        return open_repository(path, durable)

    @staticmethod
    def init(path: Path, trust_root: Path | bytes | None = None) -> Any:
        """A hub repository (new keys) or, with ``trust_root``, a store pinning that root."""
        from .centre_store import CentreStore
        from .hub_repository import HubRepository

        if trust_root is None:
            return HubRepository.init(path)
        return CentreStore.init(path, trust_root)

    if TYPE_CHECKING:
        # role methods are reached through the object returned above; to the type checker
        # the old name answers everything, as it did before the split
        def __getattr__(self, name: str) -> Any: ...


__all__ = [
    "ApplyResult",
    "PackInfo",
    "PublishResult",
    "Repository",
    "RepositoryBase",
    "Snapshot",
    "VerifyReport",
    "ingest_files",
    "open_repository",
    "scan_source",
]


def _gather(read: Callable[[str, int], bytes], chunks: Sequence[tuple[str, int]]) -> bytearray:
    """The chunks' bytes end to end, in one buffer of their size: ``b"".join`` of the
    chunks held each chunk and the joined copy at once, twice a group's bytes (a first
    pack's groups of 8 MiB, an update's bases of up to 32 MiB besides) at the peak of a
    pack build."""
    out = bytearray(sum(n for _, n in chunks))
    view, pos = memoryview(out), 0
    for sha, n in chunks:
        data = read(sha, n)
        if len(data) != n:
            raise StoreError(f"object {sha[:16]}: {len(data)} bytes, not the {n} named")
        view[pos : pos + n] = data
        pos += n
    view.release()
    return out
