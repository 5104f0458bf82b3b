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
from caravane.protocol.metadata import FileEntry, Manifest

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
        try:
            if self._recycle(repo, manifest, staging):
                os.replace(staging, final)
                if self.durable:
                    _fsync_dir(base)
                return final
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
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

    def _recycle(self, repo: CentreStore, manifest: Manifest, staging: Path) -> bool:
        """Build the new release out of the previous one's folder; False when it cannot.

        The folder of the release before the active one is removed after this activation
        anyway (a centre keeps the active release and one to roll back to), so it is renamed
        to the staging name and only what differs is touched: changed files are replaced
        (hard-linked from the active release when it has them, else rebuilt from the store),
        removed ones deleted. The cost is the files that changed between the two releases,
        where building afresh costs a hard link, a stat and a directory check per file (a
        million at a national library's size). A crash leaves a staging folder, which the
        next build removes before building from the active release the ordinary way; the
        active release is served throughout.
        """
        channel = manifest.channel
        active, prev = self.active(channel), self.previous(channel)
        if active is None or prev is None or not self.folder(channel, prev).is_dir():
            return False
        try:
            old = repo.manifest(channel, prev)
            current = repo.manifest(channel, active)
        except Exception:
            return False
        if any(zim.is_stream(f.path) for m in (old, manifest) for f in m.files):
            return False  # books are rebuilt from their entries: the ordinary path knows how
        os.rename(self.folder(channel, prev), staging)
        new_paths = {f.path: f for f in manifest.files}
        gone_dirs: set[Path] = set()
        had: dict[str, tuple[str, int]] = {}
        for f in old.files:
            entry = new_paths.get(f.path)
            if entry is not None and entry.sha256 == f.sha256:
                had[f.path] = (f.sha256, f.mode)
                continue
            (staging / f.path).unlink(missing_ok=True)  # never written through: may be a link
            gone_dirs.add((staging / f.path).parent)
        self._remove_empty(staging, gone_dirs)
        in_active = {f.path: f for f in current.files}
        folder = self.folder(channel, active)
        todo: list[FileEntry] = []
        written: list[Path] = []
        for f in manifest.files:
            kept = had.get(f.path)
            if kept is not None:
                if kept[1] != f.mode:
                    os.chmod(staging / f.path, f.mode)
                continue
            dest = staging / f.path
            _clear_way(staging, dest)
            same = in_active.get(f.path)
            if same is not None and same.sha256 == f.sha256 and same.mode == f.mode:
                try:
                    if (folder / f.path).stat().st_size == f.size:
                        os.link(folder / f.path, dest)
                        continue
                except OSError:
                    pass  # rebuilt from the store below
            todo.append(f)
            written.append(dest)
        repo.materialise(
            Manifest(manifest.channel, manifest.version, manifest.created, todo, manifest.notes),
            staging,
        )
        if self.durable:
            for d in {p.parent for p in written} | {staging}:
                _fsync_dir(d)
        return True

    @staticmethod
    def _remove_empty(root: Path, folders: set[Path]) -> None:
        """Remove the folders a deletion left empty, deepest first, never ``root``."""
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            while folder != root and root in folder.parents:
                try:
                    folder.rmdir()
                except OSError:
                    break  # not empty (or gone): its parents are not empty either
                folder = folder.parent

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


def _clear_way(root: Path, dest: Path) -> None:
    """Make room for a file at ``dest``: a folder there, or a file where a parent folder goes,
    belonged to the previous release (the collision rule forbids both in one release)."""
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    parent = dest.parent
    while parent != root:
        if parent.is_file() or parent.is_symlink():
            parent.unlink()
            break
        parent = parent.parent
    dest.parent.mkdir(parents=True, exist_ok=True)


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
