"""The trust rules, as a small state machine over bytes.

Load order (each step needs the previous one):

1. A pinned root, read from the reader's own disk (enrolment or ``repo init --trust``).
2. Zero or more newer roots, ``root/<N+1>.json``: each must be signed by a threshold of the
   current root's root keys *and* of its own root keys, and carry version N+1.
   At most :data:`MAX_ROOT_ROTATIONS` in one pass (a carrier cannot keep a reader walking
   an endless chain).
3. Channel metadata: signed by the current root's release role; its version must not be
   lower than the highest this reader accepted (rollback), and, when it comes from an
   upstream, it must not have expired (freeze).
4. Manifests: accepted only when their SHA-256 and length are the ones the verified channel
   metadata names for that version (no mix-and-match, no endless data).

Objects are then checked against the manifest by the store (``packs/store.py``).

Key rotation (TUF's rule for timestamp and snapshot metadata): when a new root takes the
release role away from a key, channel metadata signed only by that key stops counting for
rollback, so the version floor restarts under the new key. That is what lets a centre
recover from a stolen release key that signed version 1,000,000: the hub rotates, and the
centre accepts the new key's lower versions. The reader's own copy still verifies under the
root it was accepted with (:meth:`TrustedState.verify_revoked`), so the release it installed
is served until one signed by the new key replaces it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import TYPE_CHECKING

from . import tree
from .canonical import load_json
from .errors import ExpiredError, FormatError, RollbackError, SignatureError, VerificationError
from .metadata import (
    ChannelMeta,
    Envelope,
    Manifest,
    ReleaseRef,
    Root,
    now_utc,
    parse_time,
)

if TYPE_CHECKING:
    from .release import Release

MAX_ROOT_ROTATIONS = 1024


def too_many_roots(where: str, limit: int = MAX_ROOT_ROTATIONS) -> VerificationError:
    """The error for a carrier offering more new roots than one pass may walk."""
    return VerificationError(
        f"{where}: more than {limit} new root versions in one pass; the carrier is "
        "damaged or hostile, stop using it and ask the hub for a current root.json"
    )


class TrustedState:
    def __init__(self, root_bytes: bytes, what: str = "pinned root metadata") -> None:
        env = Envelope.from_bytes(root_bytes, what)
        root = Root.from_dict(env.signed, what)
        if not root.satisfied(env, "root"):
            raise SignatureError(f"{what}: not signed by its own root keys")
        self.root = root
        self.root_bytes = root_bytes
        #: the roots this one replaced, oldest first (to read the reader's own old copies)
        self.previous: list[Root] = []

    def update_root(self, data: bytes, what: str = "next root metadata") -> Root:
        """Move to root N+1; refuse anything not signed by old and new root keys."""
        env = Envelope.from_bytes(data, what)
        new = Root.from_dict(env.signed, what)
        if new.version != self.root.version + 1:
            raise RollbackError(f"{what}: version {new.version}, expected {self.root.version + 1}")
        if not self.root.satisfied(env, "root"):
            raise SignatureError(f"{what}: not signed by the keys of the root it replaces")
        if not new.satisfied(env, "root"):
            raise SignatureError(f"{what}: not signed by its own new root keys")
        self.previous.append(self.root)
        self.root = new
        self.root_bytes = data
        return new

    def copy(self) -> TrustedState:
        """An independent state at the same root, with the same history (to try a carrier's
        roots without moving the reader's own state)."""
        other = TrustedState.__new__(TrustedState)
        other.root, other.root_bytes, other.previous = (
            self.root,
            self.root_bytes,
            list(self.previous),
        )
        return other

    def release_revoked(self, data: bytes, what: str) -> bool:
        """Whether ``data`` is signed only by release keys a newer root took away."""
        env = Envelope.from_bytes(data, what)
        if self.root.satisfied(env, "release"):
            return False
        return any(old.satisfied(env, "release") for old in self.previous)

    def verify_revoked(self, data: bytes, channel: str, what: str | None = None) -> ChannelMeta:
        """Verify the reader's OWN copy of channel metadata a revoked release key signed.

        Only for metadata the reader accepted earlier (under the root of its time): it
        describes the release still installed, which is served until the new key signs a
        replacement. It never sets a rollback floor and is never taken from a carrier.
        """
        what = what or f"channel metadata for {channel!r}"
        if not self.release_revoked(data, what):
            raise SignatureError(
                f"{what}: signature does not match the hub's release key, old or current; the "
                "file was changed or comes from another hub"
            )
        meta = ChannelMeta.from_dict(Envelope.from_bytes(data, what).signed, what)
        if meta.channel != channel:
            raise VerificationError(f"{what}: it describes channel {meta.channel!r}")
        return meta

    def verify_channel(
        self,
        data: bytes,
        channel: str,
        known_version: int | None = None,
        now: datetime | None = None,
        check_expiry: bool = True,
        what: str | None = None,
    ) -> ChannelMeta:
        """Verify channel metadata read from an upstream or the reader's own store.

        ``known_version`` is the highest version of this channel already accepted; the
        reader's own store passes ``check_expiry=False`` so an installed release keeps being
        served after its metadata expired.
        """
        what = what or f"channel metadata for {channel!r}"
        env = Envelope.from_bytes(data, what)
        if not self.root.satisfied(env, "release"):
            if any(old.satisfied(env, "release") for old in self.previous):
                raise SignatureError(
                    f"{what}: signed by a release key the hub has revoked (root version "
                    f"{self.root.version}); this carrier is out of date, sync from the hub or "
                    "a drive prepared after the key rotation"
                )
            raise SignatureError(
                f"{what}: signature does not match the hub's release key; the file was "
                "changed or comes from another hub"
            )
        meta = ChannelMeta.from_dict(env.signed, what)
        if meta.channel != channel:
            raise VerificationError(f"{what}: it describes channel {meta.channel!r}")
        if known_version is not None and meta.version < known_version:
            raise RollbackError(
                f"{what}: version {meta.version} is older than version {known_version} "
                "already accepted (an old copy was replayed)"
            )
        if check_expiry:
            self.check_expiry(meta, now, what)
        return meta

    @staticmethod
    def check_expiry(
        meta: ChannelMeta, now: datetime | None = None, what: str | None = None
    ) -> ChannelMeta:
        """Refuse verified channel metadata whose expiry has passed (a freeze attack).

        Separate from :meth:`verify_channel` so a reader that already verified these very
        bytes in the same operation checks their freshness without a second signature check.
        """
        what = what or f"channel metadata for {meta.channel!r}"
        if meta.expires is not None:
            expires = parse_time(meta.expires, f"{what} expires")
            if (now or now_utc()) > expires:
                raise ExpiredError(
                    f"{what}: expired on {meta.expires}; fetch fresh metadata from the hub or "
                    "a newer drive"
                )
        return meta

    @staticmethod
    def check_manifest_bytes(data: bytes, ref: ReleaseRef, channel: str) -> None:
        """Whether ``data`` is the manifest document the signed ``ref`` names (no parsing)."""
        what = f"manifest of {channel!r} version {ref.version}"
        if len(data) != ref.manifest_length:
            raise VerificationError(
                f"{what}: {len(data)} bytes, signed metadata says {ref.manifest_length}"
            )
        if hashlib.sha256(data).hexdigest() != ref.manifest_sha256:
            raise VerificationError(f"{what}: SHA-256 does not match the signed metadata")

    @staticmethod
    def verify_manifest(
        data: bytes, ref: ReleaseRef, channel: str, read: tree.PieceReader | None = None
    ) -> Manifest:
        """The manifest these bytes are, if the signed ``ref`` names them.

        A format 2 manifest names a tree of pieces; ``read`` supplies them (from a store, a
        pack or an upstream) and each is checked against the hash its parent names.
        """
        what = f"manifest of {channel!r} version {ref.version}"
        TrustedState.check_manifest_bytes(data, ref, channel)
        if tree.spec_version_of(data, what) == tree.TREE_SPEC_VERSION:
            if read is None:
                raise VerificationError(f"{what}: a tree manifest, and nowhere to read its pieces")
            manifest = tree.decode_manifest(data, read, what)
        else:
            manifest = Manifest.from_bytes(data, what)
        if manifest.channel != channel or manifest.version != ref.version:
            raise VerificationError(f"{what}: it claims {manifest.channel!r} v{manifest.version}")
        if manifest.spec_version == tree.TREE_SPEC_VERSION and (
            manifest.total_size != ref.size or len(manifest.files) != ref.files
        ):
            raise VerificationError(f"{what}: its files differ from the signed metadata")
        return manifest

    @staticmethod
    def verify_release(
        data: bytes, ref: ReleaseRef, channel: str, read: tree.PieceReader
    ) -> Release:
        """:meth:`verify_manifest` without holding the file list: the release these bytes
        are, each piece of a format 2 tree verified as it is read (against the hash its
        parent names), the paths, their order and the counts checked as a stream.

        What is held is one path of nodes and a batch of leaves, whatever the release's
        size; a piece missing or damaged raises :class:`VerificationError` part way.
        Format 1 manifests are decoded whole, as :meth:`verify_manifest` does.
        """
        from .release import Release  # release.py builds on this module

        release = Release.open(data, ref, channel, read)
        if release.doc is not None:
            for _ in release.iter_files():
                pass  # tree.iter_files checks each piece, the paths and the counts
        return release


def root_version_of(data: bytes) -> int:
    """The version a root file claims, before verification (to order files on disk)."""
    doc = load_json(data, "root metadata")
    try:
        return int(doc["signed"]["version"])
    except (KeyError, TypeError, ValueError):
        raise FormatError("root metadata: no version") from None
