"""The hub's repository: the one folder that holds the signing keys.

Only the hub signs, so only this class publishes, commits uploaded releases, re-signs
expiry, rotates the root, retains old releases and collects what nothing references. A
centre's store (:mod:`packs.centre_store`) has none of these methods: a store that could
sign would be one stolen drive away from signing for every centre.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from protocol.errors import NotFoundError
from protocol.keys import PrivateKey, PublicKey
from protocol.metadata import (
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

from .chunker import DEFAULT_AVG
from .errors import StoreError
from .ingest import Progress, ingest_files, scan_source
from .layout import channel_relpath, manifest_relpath
from .repository import (
    PublishResult,
    RepositoryBase,
    Snapshot,
    holds_signing_keys,
)
from .store import write_atomic


class HubRepository(RepositoryBase):
    """Sign, publish, collect: what only the hub does with its repository."""

    role = "hub"

    def __init__(self, path: Path, durable: bool = False) -> None:
        super().__init__(path, durable)
        if not holds_signing_keys(self.path):
            raise NotFoundError(
                f"{self.path}: no signing key in {self.path / 'keys'}; this is a centre's "
                "store, and only the hub repository can publish or sign"
            )

    @classmethod
    def init(cls, path: Path) -> HubRepository:
        """Create a hub repository: new root and release keys, root version 1."""
        path = Path(path)
        cls._refuse_existing(path)
        keys = {role: PrivateKey.generate() for role in ("root", "release")}
        for role, key in keys.items():
            key.save(path / "keys" / f"{role}.pem")
        root = Root.new(1, {r: [k.public] for r, k in keys.items()})
        cls._lay_out(path, sign_envelope(root.to_dict(), [keys["root"]]), 1)
        return cls(path)

    def _key(self, role: str) -> PrivateKey:
        path = self.path / "keys" / f"{role}.pem"
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
            snap = self.snapshot()
            old_meta = snap.channel_or_none(channel)
            version = old_meta.version + 1 if old_meta else 1
            previous = snap.manifest(channel, old_meta.version) if old_meta else None
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

        Channel metadata is read under the old root and re-signed with ``release_key`` (the
        new release key, if it changed), so centres see every channel keep working.
        """
        with self.lock():
            snap = self.snapshot()
            metas = [snap.channel(c) for c in self.channels()]
            old = self.trusted.root
            new = Root.new(old.version + 1, new_keys)
            data = sign_envelope(new.to_dict(), signers)
            self.trusted.update_root(data)
            self._write_root(new.version, data)
            key = release_key or self._key("release")
            for m in metas:
                meta = ChannelMeta(m.channel, m.version, m.releases, m.title, m.expires)
                write_atomic(
                    self.path / channel_relpath(m.channel),
                    sign_envelope(meta.to_dict(), [key]),
                    True,
                )
            return new.version

    # ------------------------------------------------------------------ retention

    def retain(self, channel: str, keep_last: int) -> list[int]:
        """Drop all but the newest ``keep_last`` releases of a channel; returns those dropped."""
        if keep_last < 1:
            raise ValueError("keep at least one release")
        with self.lock():
            meta = self.snapshot().channel(channel)
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

    def referenced_objects(self, snap: Snapshot | None = None) -> set[str]:
        """Every object a retained release uses (each manifest read and verified once)."""
        snap = snap or self.snapshot()
        refs: set[str] = set()
        for channel in self.channels():
            for v in snap.channel(channel).releases:
                if snap.has_manifest(channel, v):
                    refs.update(snap.manifest(channel, v, keep=False).chunk_sizes())
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


__all__ = ["HubRepository"]
