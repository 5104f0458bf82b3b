"""A repository folder: the hub's signed repository, or a node's verified store.

Both have the same static layout (docs/FORMAT.md). A hub repository holds the signing keys
under ``keys/``; a store repository only pins the hub's root. Every read of metadata, a
manifest or an object goes through the trust rules, so a store on a drive or a mirror gets
the same checks as one fetched over the network.

Writes are ordered so a crash never leaves a reader inconsistent: objects first, then the
manifest, then the signed channel metadata, each by an atomic rename.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import zstandard as zstd

from protocol.canonical import canonical_bytes
from protocol.errors import (
    CaravaneError,
    FormatError,
    NotFoundError,
    PathError,
    RollbackError,
    VerificationError,
)
from protocol.keys import PrivateKey, PublicKey
from protocol.metadata import (
    MAX_METADATA_BYTES,
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
from protocol.paths import check_paths
from protocol.trust import TrustedState, root_version_of

from . import delta
from .chunker import DEFAULT_AVG, iter_chunks
from .errors import PackError, StoreError, TruncatedPackError
from .layout import (
    REPO_MARKER,
    channel_relpath,
    manifest_relpath,
    pack_relpath,
    root_relpath,
)
from .packfile import DEFAULT_VOLUME_SIZE, Opener, PackWriter, read_entries
from .store import ObjectStore, compress, decode_frame, write_atomic

Progress = Callable[[int], None] | None
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
PREFETCH = 32
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


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
    new_files: list[str] = field(default_factory=list)
    changed_files: list[str] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)

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


def _mode_of(st: os.stat_result) -> int:
    return 0o755 if st.st_mode & 0o111 else 0o644


def scan_source(source: Path) -> list[tuple[str, Path]]:
    """Files under ``source`` as (manifest path, real path), sorted, symlinks refused."""
    source = Path(source)
    if not source.is_dir():
        raise NotFoundError(f"{source}: no such folder to publish")
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            real = Path(dirpath, name)
            rel = real.relative_to(source).as_posix()
            if real.is_symlink():
                raise PathError(f"{real}: symbolic links cannot be published; copy the file in")
            if not real.is_file():
                raise PathError(f"{real}: not a regular file")
            out.append((unicodedata.normalize("NFC", rel), real))
    out.sort(key=lambda item: item[0].encode())
    check_paths(p for p, _ in out)
    return out


def ingest_files(
    store: ObjectStore, files: list[tuple[str, Path]], avg_chunk: int, progress: Progress = None
) -> tuple[list[FileEntry], int, int, int]:
    """Chunk, hash and store every file, compressing in worker threads.

    Returns (file entries, new objects, their raw bytes, their stored bytes). Used by the
    hub's own publish and by a curator's client, which builds locally and uploads only what
    the hub lacks.
    """
    new_objects = new_bytes = stored = 0
    # one pipeline across files: small files do not each wait for their last chunk
    per_file: list[tuple[str, os.stat_result, str, list[tuple[str, int]]]] = []

    def put(data: bytes) -> tuple[str, int, int]:
        sha, written = store.put_raw(data)
        return sha, len(data), written

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        pending: deque[tuple[list[tuple[str, int]], Future[tuple[str, int, int]]]] = deque()

        def drain(keep: int) -> None:
            nonlocal new_objects, new_bytes, stored
            while len(pending) > keep:
                chunks, future = pending.popleft()
                sha, n, w = future.result()
                chunks.append((sha, n))
                if w:
                    new_objects += 1
                    new_bytes += n
                    stored += w

        for rel, real in files:
            st = real.stat()
            fhash = hashlib.sha256()
            chunks: list[tuple[str, int]] = []
            with open(real, "rb") as fh:
                for piece in iter_chunks(fh, avg_chunk):
                    fhash.update(piece)
                    data = bytes(piece)
                    pending.append((chunks, pool.submit(put, data)))
                    drain(PREFETCH)
                    if progress:
                        progress(len(data))
            per_file.append((rel, st, fhash.hexdigest(), chunks))
        drain(0)
    entries: list[FileEntry] = []
    for (rel, st, digest, chunks), (_, real) in zip(per_file, files, strict=True):
        size = sum(n for _, n in chunks)
        if size != st.st_size:
            raise StoreError(f"{real}: changed while it was being published; try again")
        entries.append(FileEntry(rel, size, _mode_of(st), digest, chunks))
    return entries, new_objects, new_bytes, stored


class Repository:
    def __init__(self, path: Path, durable: bool = False) -> None:
        self.path = Path(path)
        if not (self.path / REPO_MARKER).is_file():
            raise NotFoundError(
                f"{self.path}: not a Caravane repository (run `caravane repo init` first)"
            )
        self.durable = durable
        self.store = ObjectStore(self.path, durable=durable)
        self._trusted: TrustedState | None = None

    # ------------------------------------------------------------------ setup

    @classmethod
    def init(cls, path: Path, trust_root: Path | bytes | None = None) -> Repository:
        """Create a hub repository (new keys) or, with ``trust_root``, a store pinning a root."""
        path = Path(path)
        if (path / REPO_MARKER).exists():
            raise FormatError(f"{path}: already a Caravane repository")
        if trust_root is not None:
            data = trust_root if isinstance(trust_root, bytes) else Path(trust_root).read_bytes()
            state = TrustedState(data)  # refuses anything that is not a self-signed root
            version = state.root.version
        for sub in ("metadata/root", "metadata/channels", "manifests", "objects", "packs"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        if trust_root is None:
            keys = {role: PrivateKey.generate() for role in ("root", "release")}
            for role, key in keys.items():
                key.save(path / "keys" / f"{role}.pem")
            root = Root.new(1, {r: [k.public] for r, k in keys.items()})
            data = sign_envelope(root.to_dict(), [keys["root"]])
            version = 1
        write_atomic(path / root_relpath(version), data, True)
        write_atomic(path / root_relpath(), data, True)
        write_atomic(
            path / REPO_MARKER,
            canonical_bytes({"format": "caravane-repository", "format_version": 1}),
            True,
        )
        return cls(path)

    @property
    def is_hub(self) -> bool:
        return (self.path / "keys" / "release.pem").is_file()

    def _key(self, role: str) -> PrivateKey:
        path = self.path / "keys" / f"{role}.pem"
        if not path.is_file():
            raise NotFoundError(f"{path}: signing key missing; only the hub repository can publish")
        return PrivateKey.load(path)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One writer at a time per repository (publish, apply, retention)."""
        with open(self.path / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ trust

    def root_versions(self) -> list[int]:
        folder = self.path / "metadata/root"
        return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())

    @property
    def trusted(self) -> TrustedState:
        """The trust state: the first root this repository pinned, walked to the newest."""
        if self._trusted is None:
            versions = self.root_versions()
            if not versions:
                raise NotFoundError(f"{self.path}: no root metadata")
            state = TrustedState((self.path / root_relpath(versions[0])).read_bytes())
            for v in versions[1:]:
                state.update_root((self.path / root_relpath(v)).read_bytes(), f"root v{v}")
            self._trusted = state
        return self._trusted

    def rotate_root(
        self,
        new_keys: dict[str, list[PublicKey]],
        signers: list[PrivateKey],
        release_key: PrivateKey | None = None,
    ) -> int:
        """Publish root N+1 (``signers`` hold old and new root keys) and re-sign channels.

        Channel metadata is read under the old root and re-signed with ``release_key`` (the
        new release key, if it changed), so centres see every channel keep working.
        """
        with self.lock():
            metas = [self.channel_meta(c) for c in self.channels()]
            old = self.trusted.root
            new = Root.new(old.version + 1, new_keys)
            data = sign_envelope(new.to_dict(), signers)
            self.trusted.update_root(data)
            write_atomic(self.path / root_relpath(new.version), data, True)
            write_atomic(self.path / root_relpath(), data, True)
            key = release_key or self._key("release")
            for m in metas:
                meta = ChannelMeta(m.channel, m.version, m.releases, m.title, m.expires)
                write_atomic(
                    self.path / channel_relpath(m.channel),
                    sign_envelope(meta.to_dict(), [key]),
                    True,
                )
            return new.version

    def channels(self) -> list[str]:
        base = self.path / "metadata/channels"
        return sorted(p.stem for p in base.glob("*.json")) if base.is_dir() else []

    def channel_bytes(self, channel: str) -> bytes | None:
        try:
            return (self.path / channel_relpath(channel)).read_bytes()
        except FileNotFoundError:
            return None

    def channel_meta(self, channel: str) -> ChannelMeta:
        """This repository's own channel metadata, verified (expiry is not enforced on it)."""
        data = self.channel_bytes(channel)
        if data is None:
            raise NotFoundError(f"channel {channel!r} does not exist in {self.path}")
        return self.trusted.verify_channel(data, channel, check_expiry=False)

    def manifest_bytes(self, channel: str, version: int) -> bytes:
        try:
            return (self.path / manifest_relpath(channel, version)).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(
                f"manifest of {channel!r} version {version} is not in {self.path}"
            ) from None

    def manifest(self, channel: str, version: int | None = None) -> Manifest:
        meta = self.channel_meta(channel)
        version = self.latest_local_version(channel, meta) if version is None else version
        ref = meta.releases.get(version)
        if ref is None:
            have = ", ".join(str(v) for v in sorted(meta.releases))
            raise NotFoundError(f"channel {channel!r} has no version {version} (has: {have})")
        return self.trusted.verify_manifest(self.manifest_bytes(channel, version), ref, channel)

    # ------------------------------------------------------------------ accepting fetched data

    def accept_root(self, data: bytes, what: str = "root metadata") -> int:
        """Verify root N+1 (signed by old and new keys) fetched from anywhere, and keep it."""
        with self.lock():
            root = self.trusted.update_root(data, what)
            write_atomic(self.path / root_relpath(root.version), data, True)
            write_atomic(self.path / root_relpath(), data, True)
            return root.version

    def known_version(self, channel: str) -> int | None:
        data = self.channel_bytes(channel)
        if data is None:
            return None
        return self.trusted.verify_channel(data, channel, check_expiry=False).version

    def check_channel_bytes(self, channel: str, data: bytes, what: str) -> ChannelMeta:
        """Verify channel metadata from an upstream: signature, no rollback, not expired."""
        return self.trusted.verify_channel(data, channel, self.known_version(channel), what=what)

    def accept_channel(self, channel: str, data: bytes, what: str) -> ChannelMeta:
        """Verify and keep channel metadata if it is newer than what this store knows."""
        with self.lock():
            meta = self.check_channel_bytes(channel, data, what)
            known = self.known_version(channel)
            if known is None or meta.version > known:
                write_atomic(self.path / channel_relpath(channel), data, True)
            return meta

    def accept_manifest(self, channel: str, version: int, data: bytes) -> Manifest:
        """Verify a fetched manifest against the signed channel metadata, and keep it."""
        ref = self.channel_meta(channel).releases.get(version)
        if ref is None:
            raise NotFoundError(f"channel {channel!r} has no signed version {version}")
        manifest = self.trusted.verify_manifest(data, ref, channel)
        write_atomic(self.path / manifest_relpath(channel, version), data, self.durable)
        return manifest

    def latest_local_version(self, channel: str, meta: ChannelMeta | None = None) -> int:
        """The newest release this repository holds whole (a store may lag).

        A centre's store may hold the manifest of a release whose objects are still on
        their way (a cut pack keeps its verified manifest), so there every object is checked
        too; a hub only ever commits complete releases.
        """
        meta = meta or self.channel_meta(channel)
        for v in sorted(meta.releases, reverse=True):
            if (self.path / manifest_relpath(channel, v)).is_file() and (
                self.is_hub or self._complete(channel, v)
            ):
                return v
        raise NotFoundError(f"no release of channel {channel!r} is complete in {self.path}")

    def _complete(self, channel: str, version: int) -> bool:
        try:
            manifest = self.manifest(channel, version)
        except CaravaneError:
            return False
        return all(self.store.has(sha) for sha in manifest.chunk_sizes())

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
    ) -> PublishResult:
        """Chunk and store ``source``, then commit it as the channel's next release."""
        check_channel(channel)
        self._key("release")  # fail before the long work, not after
        files = scan_source(Path(source))
        entries, new_objects, new_bytes, stored = ingest_files(
            self.store, files, avg_chunk, progress
        )
        result = self.commit_release(
            channel, entries, notes=notes, title=title, expires_days=expires_days
        )
        result.new_objects, result.new_bytes, result.stored_bytes = new_objects, new_bytes, stored
        return result

    def commit_release(
        self,
        channel: str,
        entries: list[FileEntry],
        *,
        notes: str = "",
        title: str | None = None,
        expires_days: int | None = None,
    ) -> PublishResult:
        """Sign a release whose objects are all in the store (the hub's upload path too).

        The manifest is written first and the channel metadata last, by renames, so readers
        see the release all at once or not at all.
        """
        check_channel(channel)
        release_key = self._key("release")
        entries = sorted(entries, key=lambda f: f.path.encode())
        check_paths(f.path for f in entries)
        with self.lock():
            # checked under the lock that collection takes: what is here now stays until
            # the release that references it is signed
            missing = {h for f in entries for h, _ in f.chunks if not self.store.has(h)}
            if missing:
                raise StoreError(
                    f"cannot publish {channel!r}: {len(missing)} objects are not in the store "
                    "yet; upload them and commit again"
                )
            old_bytes = self.channel_bytes(channel)
            old_meta = (
                self.trusted.verify_channel(old_bytes, channel, check_expiry=False)
                if old_bytes
                else None
            )
            version = old_meta.version + 1 if old_meta else 1
            previous = self.manifest(channel, old_meta.version) if old_meta else None
            manifest = Manifest(channel, version, format_time(now_utc()), entries, notes)
            mbytes = manifest.to_bytes()
            write_atomic(self.path / manifest_relpath(channel, version), mbytes, self.durable)
            ref = ReleaseRef(
                version,
                hashlib.sha256(mbytes).hexdigest(),
                len(mbytes),
                manifest.created,
                manifest.total_size,
                len(entries),
            )
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
        old_files = {f.path: f.sha256 for f in previous.files} if previous else {}
        new_paths = {f.path for f in entries}
        return PublishResult(
            channel=channel,
            version=version,
            files=len(entries),
            total_bytes=manifest.total_size,
            new_objects=0,
            new_bytes=0,
            stored_bytes=0,
            manifest_sha256=ref.manifest_sha256,
            new_files=[f.path for f in entries if f.path not in old_files],
            changed_files=[
                f.path for f in entries if f.path in old_files and old_files[f.path] != f.sha256
            ],
            removed_files=sorted(p for p in old_files if p not in new_paths),
        )

    def ingest(
        self, source: Path, avg_chunk: int = DEFAULT_AVG, progress: Progress = None
    ) -> tuple[list[FileEntry], int, int, int]:
        """Chunk and store a folder without publishing it (a curator's client-side build).

        Returns (file entries, new objects, their raw bytes, their stored bytes).
        """
        return ingest_files(self.store, scan_source(Path(source)), avg_chunk, progress)

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
        return meta

    def refresh_expiry(self, channel: str, expires_days: int) -> ChannelMeta:
        """Re-sign a channel's metadata with a new expiry (the hub's scheduled job)."""
        with self.lock():
            meta = self.channel_meta(channel)
            return self._sign_channel(
                channel, meta.version, meta.releases, meta.title, expires_days
            )

    # ------------------------------------------------------------------ checkout

    def checkout(
        self,
        channel: str,
        dest: Path,
        version: int | None = None,
        *,
        replace: bool = False,
        progress: Progress = None,
    ) -> Manifest:
        """Write a verified release into ``dest``, through a staging folder and a rename."""
        manifest = self.manifest(channel, version)
        dest = Path(dest)
        if dest.exists() and any(dest.iterdir()) and not replace:
            raise FormatError(f"{dest}: folder exists and is not empty (use --replace)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.with_name(f".{dest.name}.staging-{os.getpid()}")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        try:
            self.materialise(manifest, staging, progress)
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
        return manifest

    def materialise(self, manifest: Manifest, folder: Path, progress: Progress = None) -> None:
        """Rebuild every file of ``manifest`` under ``folder`` from verified chunks.

        Each chunk is decompressed (bounded by its signed size) and checked against its
        SHA-256 in worker threads while the main thread writes; since the chunk list comes
        from the signed manifest, a file made of verified chunks is the file that was signed.
        """
        folder = Path(folder)

        def load(path: str, sha: str, size: int) -> bytes:
            data = decode_frame(self.store.read_frame(sha), size, f"object {sha[:16]} of {path!r}")
            if hashlib.sha256(data).hexdigest() != sha:
                raise VerificationError(
                    f"{path!r}: object {sha[:16]} in {self.path} does not match its "
                    "SHA-256 (corrupt or tampered store); run `caravane repo verify`"
                )
            return data

        # one pipeline across files, so many small files keep both cores busy
        upcoming = ((f.path, sha, size) for f in manifest.files for sha, size in f.chunks)
        pending: deque[Future[bytes]] = deque()
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:

            def next_chunk() -> bytes:
                while len(pending) < PREFETCH:
                    job = next(upcoming, None)
                    if job is None:
                        break
                    pending.append(pool.submit(load, *job))
                return pending.popleft().result()

            for entry in manifest.files:
                target = folder / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as out:
                    for _ in entry.chunks:
                        data = next_chunk()
                        out.write(data)
                        if progress:
                            progress(len(data))
                    if self.durable:
                        out.flush()
                        os.fsync(out.fileno())
                if not entry.chunks and entry.sha256 != EMPTY_SHA256:
                    raise VerificationError(f"{entry.path!r}: empty, but its SHA-256 is not")
                os.chmod(target, entry.mode)

    # ------------------------------------------------------------------ verify

    def verify(self, progress: Progress = None) -> VerifyReport:
        problems: list[str] = []
        channels: dict[str, list[int]] = {}
        sizes: dict[str, int] = {}
        try:
            _ = self.trusted
        except (VerificationError, FormatError, NotFoundError) as exc:
            return VerifyReport({}, 0, 0, 0, [f"root metadata: {exc}"])
        for channel in self.channels():
            try:
                meta = self.channel_meta(channel)
            except (VerificationError, FormatError) as exc:
                problems.append(str(exc))
                continue
            channels[channel] = []
            for v in sorted(meta.releases):
                if not (self.path / manifest_relpath(channel, v)).is_file():
                    continue
                try:
                    m = self.manifest(channel, v)
                except (VerificationError, FormatError, NotFoundError) as exc:
                    problems.append(str(exc))
                    continue
                channels[channel].append(v)
                for f in m.files:
                    for sha, n in f.chunks:
                        sizes[sha] = n
        checked = nbytes = 0
        for sha, n in sizes.items():
            try:
                self.store.read(sha, n)
                checked += 1
                nbytes += n
            except (VerificationError, StoreError) as exc:
                problems.append(str(exc))
            if progress:
                progress(n)
        unreferenced = sum(1 for sha in self.store.iter_ids() if sha not in sizes)
        return VerifyReport(channels, checked, nbytes, unreferenced, problems)

    # ------------------------------------------------------------------ retention

    def retain(self, channel: str, keep_last: int) -> list[int]:
        """Drop all but the newest ``keep_last`` releases of a channel; returns those dropped."""
        if keep_last < 1:
            raise ValueError("keep at least one release")
        with self.lock():
            meta = self.channel_meta(channel)
            versions = sorted(meta.releases)
            drop = versions[:-keep_last]
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

    def referenced_objects(self) -> set[str]:
        refs: set[str] = set()
        for channel in self.channels():
            meta = self.channel_meta(channel)
            for v in meta.releases:
                if (self.path / manifest_relpath(channel, v)).is_file():
                    for f in self.manifest(channel, v).files:
                        refs.update(h for h, _ in f.chunks)
        return refs

    def collect_garbage(
        self, keep: Callable[[], set[str]] | None = None, grace_seconds: float = 0.0
    ) -> tuple[int, int]:
        """Remove objects no retained manifest uses; returns (objects, bytes) removed.

        Everything is decided under the repository lock that commits take, so a release
        cannot be signed between reading what is referenced and removing what is not.
        ``keep`` (objects of uploads still open) is asked under that lock too. Objects
        written or freshened within ``grace_seconds`` are spared: they belong to uploads
        in flight, which may have started after ``keep`` was asked.
        """
        with self.lock():
            cutoff = time.time() - grace_seconds
            refs = self.referenced_objects() | (keep() if keep else set())
            count = freed = 0
            for sha in list(self.store.iter_ids()):
                if sha not in refs:
                    n = self.store.remove_unless_fresh(sha, cutoff)
                    if n:
                        freed += n
                        count += 1
            return count, freed

    # ------------------------------------------------------------------ packs

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
        """What a store holding ``from_version`` (0: nothing) needs to reach ``to_version``."""
        if from_version >= to_version:
            raise FormatError(f"--from {from_version} must be older than --to {to_version}")
        new = self.manifest(channel, to_version)
        old = self.manifest(channel, from_version) if from_version else None
        chunk_bytes = self.store.read  # verified reads: a corrupt hub store never ships
        writer = PackWriter(Path(out), volume_size)
        try:
            for v in self.root_versions():
                if v == 1:
                    continue  # every reader pinned a root: version 1 at least
                writer.add(
                    "metadata",
                    {"path": root_relpath(v)},
                    compress((self.path / root_relpath(v)).read_bytes(), level),
                )
            channel_data = self.channel_bytes(channel)
            assert channel_data is not None
            writer.add(
                "metadata", {"path": channel_relpath(channel)}, compress(channel_data, level)
            )
            old_mbytes = self.manifest_bytes(channel, from_version) if from_version else b""
            new_mbytes = self.manifest_bytes(channel, to_version)
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
            n_chunks = n_bytes = 0
            for group in delta.plan_groups(old, new, chunk_bytes):
                base = b"".join(chunk_bytes(h, n) for h, n in group.base)
                target = b"".join(chunk_bytes(h, n) for h, n in group.targets)
                payload = delta.compress_group(base, target, level)
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

    def apply_pack(
        self,
        pack: Path,
        progress: Progress = None,
        dry_run: bool = False,
        opener: Opener | None = None,
    ) -> ApplyResult:
        """Verify a pack against this repository's pinned root and add what it carries.

        Chunks are stored as soon as their group verifies, so a truncated pack keeps all it
        delivered; the manifest and channel metadata are written last, only when every object
        of the release is present. ``dry_run`` checks everything and writes nothing.
        ``opener`` opens the pack's volumes (a drive's walks its folders without links).
        Each entry's payload is bounded before it is read by what the signed metadata says
        it may hold, so a forged length costs no memory.
        """
        if dry_run:
            return self._dry_apply(pack)
        pack = Path(pack)
        state = self.trusted
        pending_channel: tuple[str, bytes, ChannelMeta] | None = None
        manifest: Manifest | None = None
        old: Manifest | None = None
        mbytes = b""
        added = 0

        def payload_limit(header: dict[str, Any]) -> int:
            return _entry_bound(header, pending_channel, manifest)

        with self.lock():
            try:
                for entry in read_entries(pack, opener, payload_limit):
                    what = f"{pack.name} entry at byte {entry.offset}"
                    if entry.kind == "metadata":
                        pending_channel = (
                            self._apply_metadata(entry, state, what) or pending_channel
                        )
                    elif entry.kind == "manifest":
                        manifest, mbytes = self._apply_manifest(entry, pending_channel, what)
                        base_version = entry.header["base_version"]
                        old = (
                            self.manifest(manifest.channel, base_version) if base_version else None
                        )
                    elif entry.kind == "delta":
                        added += self._apply_delta(entry, what, progress, old, manifest)
            except TruncatedPackError as exc:
                if manifest is not None:
                    # verified against the signed metadata: keep it, so whatever carries the
                    # rest (the network, the next drive) knows what the release needs
                    write_atomic(
                        self.path / manifest_relpath(manifest.channel, manifest.version),
                        mbytes,
                        self.durable,
                    )
                raise TruncatedPackError(
                    f"{exc} ({added} objects from it were verified and kept)"
                ) from None
            if manifest is None or pending_channel is None:
                raise PackError(f"{pack}: carries no release manifest")
            missing = [sha for sha in manifest.chunk_sizes() if not self.store.has(sha)]
            if missing:
                raise PackError(
                    f"{pack}: {len(missing)} objects of {manifest.channel!r} version "
                    f"{manifest.version} are neither in the pack nor in {self.path}; this pack "
                    "was built for a store holding another release"
                )
            channel, cbytes, meta = pending_channel
            write_atomic(
                self.path / manifest_relpath(channel, manifest.version), mbytes, self.durable
            )
            current = self.channel_bytes(channel)
            current_version = (
                state.verify_channel(current, channel, check_expiry=False).version
                if current
                else None
            )
            if current_version is None or meta.version >= current_version:
                write_atomic(self.path / channel_relpath(channel), cbytes, True)
        return ApplyResult(manifest.channel, manifest.version, added, True)

    def _dry_apply(self, pack: Path) -> ApplyResult:
        """Run the whole verification of ``pack`` against a throw-away copy of the metadata."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="caravane-verify-") as tmp:
            scratch = Path(tmp)
            for sub in ("metadata", "manifests"):
                if (self.path / sub).exists():
                    shutil.copytree(self.path / sub, scratch / sub)
            (scratch / REPO_MARKER).write_bytes((self.path / REPO_MARKER).read_bytes())
            view = Repository(scratch)
            view.store = _OverlayStore(self.store, ObjectStore(scratch))
            return view.apply_pack(pack)

    def _apply_metadata(
        self, entry: Any, state: TrustedState, what: str
    ) -> tuple[str, bytes, ChannelMeta] | None:
        path = str(entry.header.get("path", ""))
        data = delta.decompress_group(b"", entry.payload, _frame_size(entry.payload, what), what)
        if path.startswith("metadata/root/"):
            version = root_version_of(data)
            if version > state.root.version:
                state.update_root(data, f"{what} ({path})")
                write_atomic(self.path / root_relpath(version), data, True)
                write_atomic(self.path / root_relpath(), data, True)
            return None
        if path.startswith("metadata/channels/") and path.endswith(".json"):
            channel = check_channel(path[len("metadata/channels/") : -len(".json")])
            current = self.channel_bytes(channel)
            known = state.verify_channel(current, channel, check_expiry=False) if current else None
            try:
                meta = state.verify_channel(
                    data, channel, known.version if known else None, what=f"{what} ({path})"
                )
            except RollbackError:
                # An older pack is still useful if our newer metadata still lists its release.
                assert known is not None and current is not None
                return channel, current, known
            return channel, data, meta
        raise PackError(f"{what}: unexpected metadata path {path!r}")

    def _apply_manifest(
        self, entry: Any, pending: tuple[str, bytes, ChannelMeta] | None, what: str
    ) -> tuple[Manifest, bytes]:
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
        base = self.manifest_bytes(channel, base_version) if base_version else b""
        data = delta.decompress_group(base, entry.payload, size, what)
        return self.trusted.verify_manifest(data, ref, channel), data

    def _apply_delta(
        self,
        entry: Any,
        what: str,
        progress: Progress,
        old: Manifest | None,
        new: Manifest | None,
    ) -> int:
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


def _zstd_bound(size: int) -> int:
    """The most a zstd frame of ``size`` bytes can take (ZSTD_COMPRESSBOUND, with room)."""
    return size + (size >> 7) + 128 * 1024


def _entry_bound(
    header: dict[str, Any],
    pending: tuple[str, bytes, ChannelMeta] | None,
    manifest: Manifest | None,
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
    if kind == "delta" and manifest is not None:
        try:
            targets = delta.resolve_runs(header.get("targets"), manifest, "pack entry targets")
        except CaravaneError:
            return 0
        return _zstd_bound(min(sum(n for _, n in targets), delta.GROUP_TARGET + (16 << 20)))
    return 0


def _frame_size(frame: bytes, what: str) -> int:
    """Declared size of a metadata frame, bounded like any metadata read."""
    try:
        size = zstd.get_frame_parameters(frame).content_size
    except zstd.ZstdError:
        raise PackError(f"{what}: metadata is not a zstd frame") from None
    if not 0 <= size <= MAX_METADATA_BYTES:
        raise PackError(f"{what}: metadata larger than {MAX_METADATA_BYTES} bytes")
    return size


class _OverlayStore(ObjectStore):
    """Reads from a real store, writes to a scratch one (dry-run verification)."""

    def __init__(self, lower: ObjectStore, upper: ObjectStore) -> None:
        super().__init__(upper.root)
        self.lower = lower

    def has(self, sha: str) -> bool:
        return super().has(sha) or self.lower.has(sha)

    def read_frame(self, sha: str) -> bytes:
        return super().read_frame(sha) if super().has(sha) else self.lower.read_frame(sha)


__all__ = [
    "ApplyResult",
    "PackInfo",
    "PublishResult",
    "Repository",
    "VerifyReport",
    "scan_source",
]
