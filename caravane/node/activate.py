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
from caravane.protocol.release import Release
from caravane.protocol.tree import Change

from . import books
from .errors import NodeError

log = logging.getLogger("caravane.node.activate")

#: files rebuilt from the store at once when a release is built afresh (one batch of
#: entries is what a build holds, whatever the release's size)
BUILD_BATCH = 4096


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

    def build(self, repo: CentreStore, release: Release) -> Path:
        """Materialise a release (hard links for unchanged files); return its final folder.

        What is held is proportional to what changed since the active release (the tree
        diff), never to the release: the files come from the pieces as they are read.
        """
        channel, version = release.channel, release.version
        final = self.folder(channel, version)
        if final.is_dir():
            return final
        base = self.releases_dir / channel
        base.mkdir(parents=True, exist_ok=True)
        for stale in base.glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a crash
        staging = base / f".staging-{version}"
        try:
            if self._recycle(repo, release, staging):
                os.replace(staging, final)
                if self.durable:
                    _fsync_dir(base)
                return final
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        staging.mkdir()
        try:
            self._link_unchanged(repo, release, channel, staging)
            if self.durable:
                _sync_tree(staging)
            os.replace(staging, final)
            if self.durable:
                _fsync_dir(base)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final

    def _release(self, repo: CentreStore, channel: str, version: int | None) -> Release | None:
        if version is None:
            return None
        try:
            return repo.release(channel, version)
        except Exception:
            return None

    def _recycle(self, repo: CentreStore, release: Release, staging: Path) -> bool:
        """Build the new release out of the previous one's folder; False when it cannot.

        The folder of the release before the active one is removed after this activation
        anyway (a centre keeps the active release and one to roll back to), so it is renamed
        to the staging name and only what differs is touched: changed files are replaced
        (hard-linked from the active release when it has them, else rebuilt from the store),
        removed ones deleted. The differences come from the tree diff of the two releases
        (``Release.changes_from``), which reads only the pieces that differ: the cost is the
        files that changed, where building afresh costs a hard link, a stat and a directory
        check per file (a million at a national library's size). A crash leaves a staging
        folder, which the next build removes before building from the active release the
        ordinary way; the active release is served throughout.
        """
        channel = release.channel
        active, prev = self.active(channel), self.previous(channel)
        if active is None or prev is None or not self.folder(channel, prev).is_dir():
            return False
        if (self.folder(channel, prev) / books.INDEX).exists():
            return False  # books are rebuilt from their entries: the ordinary path knows how
        old = self._release(repo, channel, prev)
        current = self._release(repo, channel, active)
        if old is None or current is None:
            return False
        try:
            changes = list(release.changes_from(old))
            # the paths where the active release differs from the new one: anywhere else
            # the active release holds the very file (same content and mode) to link
            differs = {_path_of(c) for c in release.changes_from(current)}
        except Exception:
            return False  # a piece missing or damaged: the ordinary path says which
        if any(zim.is_stream(_path_of(c)) for c in changes):
            return False
        os.rename(self.folder(channel, prev), staging)
        gone_dirs: set[Path] = set()
        for a, b in changes:
            if a is None:
                continue
            if b is not None and a.sha256 == b.sha256:
                continue  # the same content: at most its mode changes, below
            (staging / a.path).unlink(missing_ok=True)  # never written through: may be a link
            gone_dirs.add((staging / a.path).parent)
        self._remove_empty(staging, gone_dirs)
        folder = self.folder(channel, active)
        todo: list[FileEntry] = []
        written: list[Path] = []
        for a, b in changes:
            if b is None:
                continue
            if a is not None and a.sha256 == b.sha256:
                if a.mode != b.mode:
                    os.chmod(staging / b.path, b.mode)
                continue
            dest = staging / b.path
            _clear_way(staging, dest)
            if b.path not in differs:
                try:
                    if (folder / b.path).stat().st_size == b.size:
                        os.link(folder / b.path, dest)
                        continue
                except OSError:
                    pass  # rebuilt from the store below
            todo.append(b)
            written.append(dest)
        repo.materialise(
            Manifest(release.channel, release.version, release.created, todo, release.notes),
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
        self, repo: CentreStore, release: Release, channel: str, staging: Path
    ) -> int:
        """Build ``release`` in ``staging``: files the active release holds unchanged are
        hard-linked from its folder, the rest rebuilt from the store, a batch at a time.

        The files are walked once from the pieces; what is held is the set of paths that
        differ from the active release (the tree diff) and one batch of files to write.
        Returns the number of files linked.
        """
        active = self.active(channel)
        current = self._release(repo, channel, active)
        old_folder = self.folder(channel, active) if active is not None else staging
        differs: set[str] | None = None
        if current is not None:
            try:
                differs = {_path_of(c) for c in release.changes_from(current)}
            except Exception:
                differs = None  # the active release cannot be read: build from the store
        batch: list[FileEntry] = []
        streams: list[FileEntry] = []
        made = ""
        linked = 0

        def flush() -> None:
            if batch:
                repo.materialise(
                    Manifest(channel, release.version, release.created, batch, release.notes),
                    staging,
                )
                batch.clear()

        for f in release.iter_files():
            parent = os.path.dirname(f.path)
            if parent != made:  # folders for empty trees too, once per folder
                (staging / parent).mkdir(parents=True, exist_ok=True)
                made = parent
            if zim.is_stream(f.path):
                streams.append(f)
            if differs is not None and f.path not in differs and self._link(old_folder, staging, f):
                linked += 1
                continue
            batch.append(f)
            if len(batch) >= BUILD_BATCH:
                flush()
        flush()
        books.rebuild(staging, channel, streams)  # ZIM books from their entries (node/books.py)
        return linked

    @staticmethod
    def _link(old_folder: Path, staging: Path, f: FileEntry) -> bool:
        """Hard-link an unchanged file from the active release; False to rebuild it."""
        if zim.is_stream(f.path):  # an unchanged book: its rebuilt ZIM file
            return books.link_unchanged(old_folder, staging, f)
        src = old_folder / f.path
        try:
            if src.stat().st_size != f.size:
                return False  # someone changed the served copy; rebuild it from the store
            os.link(src, staging / f.path)
        except OSError:
            return False  # another file system, or links not allowed: copy from the store
        return True

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

    def verify_tree(self, release: Release) -> list[str]:
        """Files of a release folder that differ from the signed release (for status)."""
        folder = self.folder(release.channel, release.version)
        bad = []
        for f in release.iter_files():
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


def _path_of(change: Change) -> str:
    old, new = change
    entry = new if new is not None else old
    assert entry is not None  # a change has at least one side
    return entry.path


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
