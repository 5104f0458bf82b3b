"""A repository simulator: publish versions from dicts, build packs, tamper with any file.

Each attack in these tests is then a few lines: make a hub and a centre's store, damage one
file the way an attacker or a bad drive would, and check that the reader refuses it with a
clear message and keeps what it had.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from caravane.packs.centre_store import CentreStore
from caravane.packs.hub_repository import HubRepository
from caravane.packs.layout import object_relpath
from caravane.packs.manifests import write_manifest
from caravane.protocol.keys import PrivateKey
from caravane.protocol.metadata import Envelope, FileEntry, Manifest, sign_envelope


def write_tree(folder: Path, files: dict[str, bytes | str]) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return folder


def read_tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@dataclass
class RepoSim:
    tmp: Path
    hub: HubRepository
    channel: str = "maths"
    _n: int = 0

    def publish(self, files: dict[str, bytes | str], **kw) -> int:
        self._n += 1
        src = write_tree(self.tmp / f"src-{self._n}", files)
        return self.hub.publish(self.channel, src, **kw).version

    def store(self, name: str = "store") -> CentreStore:
        return CentreStore.init(self.tmp / name, trust_root=self.hub.path / "metadata/root.json")

    def pack(self, a: int, b: int) -> Path:
        out = self.tmp / f"pack-{a}-{b}.pack"
        if not out.exists():
            self.hub.build_pack(self.channel, a, b, out)
        return out

    def hub_file(self, rel: str) -> Path:
        return self.hub.path / rel

    def flip(self, path: Path, offset: int | None = None) -> None:
        data = bytearray(path.read_bytes())
        i = len(data) // 2 if offset is None else offset
        data[i] ^= 0x01
        path.write_bytes(bytes(data))

    def truncate(self, path: Path, keep: int) -> None:
        path.write_bytes(path.read_bytes()[:keep])

    def resign(self, path: Path, key: PrivateKey, change=None) -> None:
        """Re-sign a metadata file with ``key`` (optionally after changing its content)."""
        env = Envelope.from_bytes(path.read_bytes(), str(path))
        signed = dict(env.signed)
        if change:
            change(signed)
        path.write_bytes(sign_envelope(signed, [key]))

    @property
    def release_key(self) -> PrivateKey:
        return PrivateKey.load(self.hub.key_path("release"))

    def rewrite_release(self, version: int, edit: Callable[[list[dict[str, Any]]], None]) -> bytes:
        """Release ``version`` with its file entries edited, signed by the hub's own key.

        What an attacker holding the release key (or a buggy publisher) would produce: the
        pieces are written into the hub's store, the document replaces the old one and the
        channel metadata names it. Returns the new manifest document.
        """
        m = self.hub.manifest(self.channel, version)
        files = [f.to_dict() for f in m.files]
        edit(files)
        entries = sorted(
            (
                FileEntry(
                    d["path"], d["size"], d["mode"], d["sha256"], [tuple(c) for c in d["chunks"]]
                )
                for d in files
            ),
            key=lambda e: e.path,
        )
        tampered = Manifest(m.channel, m.version, m.created, entries, m.notes)
        rel = f"manifests/{self.channel}/{version}.json"
        doc, written = write_manifest(self.hub.store, self.hub_file(rel), tampered)
        self.resign(
            self.hub_file(f"metadata/channels/{self.channel}.json"),
            self.release_key,
            lambda s: s["releases"][str(version)].update(
                manifest={"sha256": hashlib.sha256(doc).hexdigest(), "length": len(doc)},
                files=len(entries),
                size=written.total_size,
            ),
        )
        return doc

    def piece_of(self, version: int, path: str) -> str:
        """The id of the leaf piece of release ``version``'s tree that holds ``path``."""
        from caravane.protocol import tree

        doc = self.hub_file(f"manifests/{self.channel}/{version}.json").read_bytes()
        for ref, _, parsed in tree.walk(tree.parse_doc(doc), self.hub.pieces(), "test"):
            if ref.level == 0 and any(f["path"] == path for f in parsed["files"]):
                return ref.sha256
        raise KeyError(path)

    def object_of(self, version: int, path: str) -> Path:
        """The first object of ``path`` as a loose file (the form stores had before segments),
        for a test to damage; segment damage has its own tests (test_segments.py)."""
        m = self.hub.manifest(self.channel, version)
        sha = next(f for f in m.files if f.path == path).chunks[0][0]
        frame = self.hub.store.read_frame(sha)
        self.hub.store.remove(sha)
        loose = self.hub.path / object_relpath(sha)
        loose.parent.mkdir(parents=True, exist_ok=True)
        loose.write_bytes(frame)
        return loose


@pytest.fixture
def sim(tmp_path: Path) -> RepoSim:
    return RepoSim(tmp_path, HubRepository.init(tmp_path / "hub"))
