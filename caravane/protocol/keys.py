"""Ed25519 keys: the hub's root and release keys and each node's own key.

Private keys are stored as PEM (PKCS#8) with file mode 0600; public keys travel as hex in
metadata. A key id is the SHA-256 of the canonical public key document, as in TUF.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .canonical import canonical_bytes
from .errors import FormatError


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    @property
    def keyid(self) -> str:
        return hashlib.sha256(canonical_bytes(self.to_dict())).hexdigest()

    def to_dict(self) -> dict[str, str]:
        return {"keytype": "ed25519", "public": self.raw.hex()}

    @classmethod
    def from_dict(cls, data: object) -> PublicKey:
        if not isinstance(data, dict) or data.get("keytype") != "ed25519":
            raise FormatError("key: only ed25519 keys are supported")
        try:
            raw = bytes.fromhex(str(data["public"]))
        except (KeyError, ValueError):
            raise FormatError("key: public key is not hex") from None
        if len(raw) != 32:
            raise FormatError("key: an ed25519 public key is 32 bytes")
        return cls(raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True


class PrivateKey:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public(self) -> PublicKey:
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return PublicKey(raw)

    @property
    def keyid(self) -> str:
        return self.public.keyid

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def to_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def save(self, path: Path) -> None:
        """Write the key readable by its owner only, never half-written."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.to_pem())
        os.replace(tmp, path)

    @classmethod
    def from_pem(cls, data: bytes) -> PrivateKey:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise FormatError(f"not a PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise FormatError("not an Ed25519 private key")
        return cls(key)

    @classmethod
    def load(cls, path: Path) -> PrivateKey:
        try:
            return cls.from_pem(path.read_bytes())
        except FormatError as exc:
            raise FormatError(f"{path}: {exc}") from None
