"""Typed wire objects: root and channel metadata, release manifests, signed envelopes.

Every class has explicit ``from_dict``/``to_dict``; ``from_dict`` is strict, because its
input is untrusted until a signature or a pinned hash says otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .canonical import canonical_bytes, load_json
from .errors import FormatError
from .keys import PrivateKey, PublicKey
from .paths import check_paths

SPEC_VERSION = 1
CHANNEL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_METADATA_BYTES = 1 << 20  # root or channel metadata
ROLES = ("root", "release")


def check_channel(channel: str) -> str:
    if not isinstance(channel, str) or not CHANNEL_RE.match(channel):
        raise FormatError(
            f"channel id {channel!r} is not valid: use 1-64 lower-case letters, digits, '.', '_'"
            " or '-', starting with a letter or digit"
        )
    return channel


def _req(data: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise FormatError(f"{what}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FormatError(f"{what}: field {key!r} has the wrong type")
    return value


def _sha(value: Any, what: str) -> str:
    if not isinstance(value, str) or not HEX64.match(value):
        raise FormatError(f"{what}: not a SHA-256 hex digest")
    return value


def _nonneg(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FormatError(f"{what}: not a non-negative integer")
    return value


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any, what: str) -> datetime:
    try:
        return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise FormatError(f"{what}: {text!r} is not a UTC time like 2026-01-31T12:00:00Z") from None


# --------------------------------------------------------------------------- envelopes


@dataclass(frozen=True)
class Envelope:
    signed: dict[str, Any]
    signatures: list[tuple[str, bytes]]

    @property
    def signed_bytes(self) -> bytes:
        return canonical_bytes(self.signed)

    @classmethod
    def from_bytes(cls, data: bytes, what: str, max_length: int = MAX_METADATA_BYTES) -> Envelope:
        doc = load_json(data, what, max_length)
        signed = _req(doc, "signed", dict, what)
        sigs = _req(doc, "signatures", list, what)
        out: list[tuple[str, bytes]] = []
        for sig in sigs:
            try:
                out.append((str(sig["keyid"]), bytes.fromhex(str(sig["sig"]))))
            except (KeyError, TypeError, ValueError):
                raise FormatError(f"{what}: malformed signature entry") from None
        return cls(signed, out)

    def to_bytes(self) -> bytes:
        return canonical_bytes(
            {
                "signed": self.signed,
                "signatures": [{"keyid": k, "sig": s.hex()} for k, s in self.signatures],
            }
        )

    def count_valid(self, keys: dict[str, PublicKey], allowed: list[str]) -> int:
        """Distinct allowed keys with a valid signature over ``signed``."""
        data = self.signed_bytes
        good: set[str] = set()
        for keyid, sig in self.signatures:
            known = keyid in allowed and keyid in keys and keyid not in good
            if known and keys[keyid].verify(sig, data):
                good.add(keyid)
        return len(good)


def sign_envelope(signed: dict[str, Any], keys: list[PrivateKey]) -> bytes:
    data = canonical_bytes(signed)
    return Envelope(signed, [(k.keyid, k.sign(data)) for k in keys]).to_bytes()


# --------------------------------------------------------------------------- root


@dataclass(frozen=True)
class Role:
    keyids: list[str]
    threshold: int

    def to_dict(self) -> dict[str, Any]:
        return {"keyids": sorted(self.keyids), "threshold": self.threshold}


@dataclass(frozen=True)
class Root:
    version: int
    keys: dict[str, PublicKey]
    roles: dict[str, Role]

    @classmethod
    def new(
        cls,
        version: int,
        role_keys: dict[str, list[PublicKey]],
        thresholds: dict[str, int] | None = None,
    ) -> Root:
        keys: dict[str, PublicKey] = {}
        roles: dict[str, Role] = {}
        for role in ROLES:
            pubs = role_keys[role]
            for pub in pubs:
                keys[pub.keyid] = pub
            threshold = (thresholds or {}).get(role, 1)
            roles[role] = Role([p.keyid for p in pubs], threshold)
        return cls(version, keys, roles)

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": "root",
            "spec_version": SPEC_VERSION,
            "version": self.version,
            "keys": {k: v.to_dict() for k, v in self.keys.items()},
            "roles": {name: role.to_dict() for name, role in self.roles.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str = "root metadata") -> Root:
        if data.get("_type") != "root":
            raise FormatError(f"{what}: not root metadata")
        if data.get("spec_version") != SPEC_VERSION:
            raise FormatError(f"{what}: unsupported spec_version {data.get('spec_version')!r}")
        version = _req(data, "version", int, what)
        if version < 1:
            raise FormatError(f"{what}: version must be at least 1")
        keys = {}
        for keyid, kd in _req(data, "keys", dict, what).items():
            pub = PublicKey.from_dict(kd)
            if pub.keyid != keyid:
                raise FormatError(f"{what}: key id {keyid[:12]} does not match its key")
            keys[keyid] = pub
        roles = {}
        raw_roles = _req(data, "roles", dict, what)
        for name in ROLES:
            rd = _req(raw_roles, name, dict, what)
            keyids = _req(rd, "keyids", list, f"{what} role {name}")
            threshold = _req(rd, "threshold", int, f"{what} role {name}")
            if threshold < 1 or threshold > len(set(keyids)):
                raise FormatError(f"{what}: role {name} threshold {threshold} cannot be met")
            if any(k not in keys for k in keyids):
                raise FormatError(f"{what}: role {name} names an unknown key")
            roles[name] = Role([str(k) for k in keyids], threshold)
        return cls(version, keys, roles)

    def satisfied(self, env: Envelope, role: str) -> bool:
        r = self.roles[role]
        return env.count_valid(self.keys, r.keyids) >= r.threshold


# --------------------------------------------------------------------------- channel


@dataclass(frozen=True)
class ReleaseRef:
    """What signed channel metadata says about one release: its manifest's hash and length."""

    version: int
    manifest_sha256: str
    manifest_length: int
    created: str
    size: int
    files: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": {"sha256": self.manifest_sha256, "length": self.manifest_length},
            "created": self.created,
            "size": self.size,
            "files": self.files,
        }

    @classmethod
    def from_dict(cls, version: int, data: dict[str, Any], what: str) -> ReleaseRef:
        man = _req(data, "manifest", dict, what)
        return cls(
            version=version,
            manifest_sha256=_sha(man.get("sha256"), f"{what} manifest"),
            manifest_length=_nonneg(man.get("length"), f"{what} manifest length"),
            created=str(_req(data, "created", str, what)),
            size=_nonneg(data.get("size", 0), f"{what} size"),
            files=_nonneg(data.get("files", 0), f"{what} files"),
        )


@dataclass(frozen=True)
class ChannelMeta:
    channel: str
    version: int
    releases: dict[int, ReleaseRef]
    title: str = ""
    expires: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": "channel",
            "spec_version": SPEC_VERSION,
            "channel": self.channel,
            "version": self.version,
            "title": self.title,
            "expires": self.expires,
            "releases": {str(v): r.to_dict() for v, r in sorted(self.releases.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str = "channel metadata") -> ChannelMeta:
        if data.get("_type") != "channel":
            raise FormatError(f"{what}: not channel metadata")
        if data.get("spec_version") != SPEC_VERSION:
            raise FormatError(f"{what}: unsupported spec_version {data.get('spec_version')!r}")
        channel = check_channel(_req(data, "channel", str, what))
        version = _req(data, "version", int, what)
        releases: dict[int, ReleaseRef] = {}
        for key, rd in _req(data, "releases", dict, what).items():
            try:
                v = int(key)
            except ValueError:
                raise FormatError(f"{what}: release key {key!r} is not a version") from None
            releases[v] = ReleaseRef.from_dict(v, rd, f"{what} release {v}")
        if version not in releases:
            raise FormatError(f"{what}: latest version {version} is not among its releases")
        if max(releases) != version:
            raise FormatError(f"{what}: lists a release newer than its version")
        expires = data.get("expires")
        if expires is not None:
            parse_time(expires, f"{what} expires")
        return cls(channel, version, releases, str(data.get("title", "")), expires)

    @property
    def latest(self) -> ReleaseRef:
        return self.releases[self.version]


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a release. Slotted: a national library holds a million of them in memory."""

    path: str
    size: int
    mode: int
    sha256: str
    chunks: list[tuple[str, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "mode": self.mode,
            "sha256": self.sha256,
            "chunks": [[h, n] for h, n in self.chunks],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileEntry:
        """Strict, with the checks written so the common case formats no message (a
        million entries are parsed per release); errors name the entry as before."""
        path = _req(data, "path", str, "manifest file entry")
        size: Any = data.get("size")
        mode: Any = data.get("mode")
        sha: Any = data.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            _nonneg(size, f"manifest entry {path!r} size")
        if not isinstance(mode, int) or isinstance(mode, bool):
            _req(data, "mode", int, f"manifest entry {path!r}")
        if mode not in (0o644, 0o755):
            raise FormatError(f"manifest entry {path!r}: mode {oct(mode)} is not 0644 or 0755")
        if not isinstance(sha, str) or not HEX64.match(sha):
            _sha(sha, f"manifest entry {path!r} sha256")
        raw = _req(data, "chunks", list, f"manifest entry {path!r}")
        chunks = []
        total = 0
        for item in raw:
            if not isinstance(item, list) or len(item) != 2:
                raise FormatError(f"manifest entry {path!r}: malformed chunk")
            h, n = item
            if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
                _nonneg(n, f"manifest entry {path!r} chunk size")
                raise FormatError(f"manifest entry {path!r}: empty chunk")
            if h == sha:
                h = sha  # one string for a file of one chunk (its hash is the chunk's)
            elif not isinstance(h, str) or not HEX64.match(h):
                _sha(h, f"manifest entry {path!r} chunk")
            chunks.append((h, n))
            total += n
        if total != size:
            raise FormatError(
                f"manifest entry {path!r}: chunks add up to {total} bytes, not {size}"
            )
        return cls(path, size, mode, sha, chunks)


@dataclass(frozen=True)
class Manifest:
    channel: str
    version: int
    created: str
    files: list[FileEntry]
    notes: str = ""
    #: 1: one flat signed document (this class's own bytes); 2: a tree of pieces
    #: (protocol/tree.py), whose object ids and lengths are kept here once decoded
    spec_version: int = SPEC_VERSION
    tree_objects: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        if self.spec_version != SPEC_VERSION:
            raise FormatError("a format 2 manifest is encoded by protocol/tree.py")
        return {
            "_type": "manifest",
            "spec_version": SPEC_VERSION,
            "channel": self.channel,
            "version": self.version,
            "created": self.created,
            "notes": self.notes,
            "files": [f.to_dict() for f in self.files],
        }

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str = "manifest") -> Manifest:
        if not isinstance(data, dict) or data.get("_type") != "manifest":
            raise FormatError(f"{what}: not a release manifest")
        if data.get("spec_version") != SPEC_VERSION:
            raise FormatError(f"{what}: unsupported spec_version {data.get('spec_version')!r}")
        files = [FileEntry.from_dict(fd) for fd in _req(data, "files", list, what)]
        check_paths(f.path for f in files)
        return cls(
            channel=check_channel(_req(data, "channel", str, what)),
            version=_req(data, "version", int, what),
            created=str(_req(data, "created", str, what)),
            files=files,
            notes=str(data.get("notes", "")),
        )

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "manifest") -> Manifest:
        return cls.from_dict(load_json(data, what), what)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def chunk_sizes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.files:
            for h, n in f.chunks:
                out[h] = n
        return out

    def object_sizes(self) -> dict[str, int]:
        """Every object the release needs kept: its chunks and, in format 2, its pieces."""
        out = self.chunk_sizes()
        out.update(self.tree_objects)
        return out
