"""Releases on disk and the atomic switch between them.

Layout under the node's data folder::

    releases/<channel>/<version>/   a complete, verified release (never changed in place)
    releases/<channel>/.staging-<version>/   being built; removed if found after a crash
    live/<channel>  -> ../releases/<channel>/<version>   what the portal serves

A release folder only gets its final name once every file in it is written and checked, and
``live/<channel>`` is a symbolic link replaced with one rename, so a crash at any instant
leaves either the old or the new release served, never a mix. Unchanged files are hard
links to the previous release: a new release costs only the bytes that changed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from caravane.packs import zim
from caravane.packs.centre_store import CentreStore
from caravane.protocol.metadata import Manifest

from . import books
from .errors import NodeError

log = logging.getLogger("caravane.node.activate")


class Releases:
    def __init__(self, releases_dir: Path, live_dir: Path, durable: bool = True) -> None:
        self.releases_dir = Path(releases_dir)
        self.live_dir = Path(live_dir)
        self.durable = durable

    def folder(self, channel: str, version: int) -> Path:
        return self.releases_dir / channel / str(version)

    def live_link(self, channel: str) -> Path:
        return self.live_dir / channel

    def active(self, channel: str) -> int | None:
        link = self.live_link(channel)
        try:
            target = os.readlink(link)
        except OSError:
            return None
        name = Path(target).name
        return int(name) if name.isdigit() else None

    def installed(self, channel: str) -> list[int]:
        base = self.releases_dir / channel
        if not base.is_dir():
            return []
        return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit())

    def channels(self) -> list[str]:
        if not self.live_dir.is_dir():
            return []
        return sorted(p.name for p in self.live_dir.iterdir() if p.is_symlink())

    def previous(self, channel: str) -> int | None:
        active = self.active(channel)
        older = [v for v in self.installed(channel) if active is None or v < active]
        return older[-1] if older else None

    # ------------------------------------------------------------------ build, switch

    def build(self, repo: CentreStore, manifest: Manifest) -> Path:
        """Materialise a release (hard links for unchanged files); return its final folder."""
        channel, version = manifest.channel, manifest.version
        final = self.folder(channel, version)
        if final.is_dir():
            return final
        base = self.releases_dir / channel
        base.mkdir(parents=True, exist_ok=True)
        for stale in base.glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a crash
        staging = base / f".staging-{version}"
        staging.mkdir()
        try:
            linked = self._link_unchanged(repo, manifest, channel, staging)
            rest = Manifest(
                manifest.channel,
                manifest.version,
                manifest.created,
                [f for f in manifest.files if f.path not in linked],
                manifest.notes,
            )
            repo.materialise(rest, staging)
            for f in manifest.files:  # folders for empty trees too
                (staging / f.path).parent.mkdir(parents=True, exist_ok=True)
            books.rebuild(staging, manifest)  # ZIM books from their entries (node/books.py)
            if self.durable:
                _sync_tree(staging)
            os.replace(staging, final)
            if self.durable:
                _fsync_dir(base)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final

    def _link_unchanged(
        self, repo: CentreStore, manifest: Manifest, channel: str, staging: Path
    ) -> set[str]:
        active = self.active(channel)
        if active is None:
            return set()
        try:
            old = repo.manifest(channel, active)
        except Exception:
            return set()
        old_folder = self.folder(channel, active)
        same = {f.path: f for f in old.files}
        linked: set[str] = set()
        for f in manifest.files:
            prev = same.get(f.path)
            if prev is None or prev.sha256 != f.sha256 or prev.mode != f.mode:
                continue
            if zim.is_stream(f.path):  # an unchanged book: its rebuilt ZIM file
                if books.link_unchanged(old_folder, staging, f):
                    linked.add(f.path)
                continue
            src = old_folder / f.path
            try:
                st = src.stat()
            except OSError:
                continue
            if st.st_size != f.size:
                continue  # someone changed the served copy; rebuild it from the store
            dest = staging / f.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dest)
            except OSError:
                continue  # another file system, or links not allowed: copy from the store
            linked.add(f.path)
        return linked

    def switch(self, channel: str, version: int) -> None:
        """Point ``live/<channel>`` at a complete release with one atomic rename."""
        final = self.folder(channel, version)
        if not final.is_dir():
            raise NodeError(f"release {version} of {channel!r} is not on this node")
        self.live_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.live_dir / f".{channel}.new"
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(final, self.live_dir), tmp)
        os.replace(tmp, self.live_link(channel))
        if self.durable:
            _fsync_dir(self.live_dir)
        try:
            books.refresh_library(self.live_dir)  # kiwix-serve's view (node/books.py)
        except OSError as exc:
            log.warning("kiwix library not refreshed: %s", exc)

    def prune(self, channel: str, keep: set[int]) -> list[int]:
        """Remove release folders other than ``keep`` (the active one and the previous)."""
        removed = []
        active = self.active(channel)
        for v in self.installed(channel):
            if v in keep or v == active:
                continue
            shutil.rmtree(self.folder(channel, v), ignore_errors=True)
            removed.append(v)
        return removed

    def verify_tree(self, manifest: Manifest) -> list[str]:
        """Files of a release folder that differ from the signed manifest (for status)."""
        folder = self.folder(manifest.channel, manifest.version)
        bad = []
        for f in manifest.files:
            path = folder / f.path
            if zim.is_stream(f.path):
                if not books.verify_book(folder, f):
                    bad.append(f.path)
                continue
            h = hashlib.sha256()
            try:
                with open(path, "rb") as fh:
                    while block := fh.read(1 << 20):
                        h.update(block)
            except OSError:
                bad.append(f.path)
                continue
            if h.hexdigest() != f.sha256:
                bad.append(f.path)
        return bad


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    """Make a staged release durable before it gets its final name."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))
