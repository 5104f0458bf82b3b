"""Reading and writing a drive as hostile input.

A field agent's drive passes through many hands; whoever held it last may have replaced a
folder by a symlink into the centre's disk, a file by a link to ``/dev/zero`` or by a FIFO.
Every read and write of a drive (``usb import``, the agent's automatic import, ``usb verify``,
``usb ingest``, ``usb prepare`` onto a returned drive) goes through this module, which:

- walks each path component from the drive's root with ``O_NOFOLLOW`` and ``dir_fd``, so a
  symlinked folder or file anywhere below the root is refused, never followed;
- opens files ``O_NONBLOCK`` (a FIFO cannot block the open) and checks with ``fstat`` that
  what it opened is a regular file (a device, FIFO or socket is refused);
- never reads more than the caller's bound (the signed or planned size, MAX_REPORT_BYTES ...);
- writes only inside the drive's own folders: folders are created relative to their parent's
  descriptor, files through an ``O_CREAT | O_EXCL | O_NOFOLLOW`` temporary name renamed in
  place, so a planted symlink is replaced rather than written through.

The drive's root itself is whatever the operator named (a mount point may be a symlink).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from caravane.protocol.errors import CaravaneError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
BLOCK = 1024 * 1024


class DriveError(CaravaneError):
    """A drive that cannot be used as it is (read-only, full, not a bundle, tampered)."""


def _parts(rel: str | Path) -> list[str]:
    parts = [p for p in str(rel).split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise DriveError(f"{rel}: a path on the drive may not leave its folder")
    return parts


class Drive:
    """A drive's root folder, read and written without following anything planted on it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ internals

    def _refused(self, rel: str, what: str) -> DriveError:
        return DriveError(
            f"{self.root / rel}: {what} on the drive; it was refused (tampered or damaged "
            "drive): prepare it again at the hub / support refuse, a preparer de nouveau"
        )

    def _open_root(self) -> int:
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise DriveError(
                f"{self.root}: cannot open the drive ({exc.strerror}); is it mounted?"
            ) from None

    def _walk(self, parts: list[str], create: bool = False) -> int | None:
        """A descriptor of the folder ``parts`` below the root (None: it does not exist)."""
        fd = self._open_root()
        done: list[str] = []
        for name in parts:
            done.append(name)
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    return None
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                    nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    os.close(fd)
                    raise self._write_error("/".join(done), exc) from None
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = "/".join(done)
                    raise self._refused(where, "a link or a file where a folder belongs") from None
                raise DriveError(
                    f"{self.root / '/'.join(done)}: cannot open ({exc.strerror}); check the drive"
                ) from None
            os.close(fd)
            fd = nxt
        return fd

    def _write_error(self, rel: str, exc: OSError) -> DriveError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return DriveFullError(
                f"{self.root}: the drive is full; free some space or use a larger drive / "
                "le support est plein"
            )
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return DriveError(
                f"{self.root}: the drive is read-only; unlock it (write-protect switch) or use "
                "another drive / le support est en lecture seule"
            )
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
            return self._refused(rel, "a link or a file where a folder belongs")
        return DriveError(f"{self.root / rel}: cannot write ({exc.strerror}); check the drive")

    # ------------------------------------------------------------------ reading

    def open(self, rel: str | Path) -> BinaryIO:
        """A regular file of the drive, opened for reading; FileNotFoundError if absent."""
        parts = _parts(rel)
        if not parts:
            raise self._refused(str(rel), "a folder where a file belongs")
        dfd = self._walk(parts[:-1])
        if dfd is None:
            raise FileNotFoundError(errno.ENOENT, "not on the drive", str(self.root / str(rel)))
        try:
            fd = os.open(parts[-1], _READ_FLAGS, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._refused(str(rel), "a symbolic link") from None
            if exc.errno == errno.ENOENT:
                raise
            raise DriveError(
                f"{self.root / str(rel)}: cannot be read ({exc.strerror}); check the drive"
            ) from None
        finally:
            os.close(dfd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise self._refused(str(rel), "not a regular file (a device, FIFO or socket)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def open_path(self, path: Path) -> BinaryIO:
        """``open`` for a path under the root (the opener ``read_entries`` takes)."""
        try:
            rel = Path(path).relative_to(self.root)
        except ValueError:
            raise self._refused(str(path), "a path outside the drive's folder") from None
        return self.open(rel)

    def lexists(self, rel: str | Path) -> bool:
        """True when anything (a file, a link, a FIFO) sits at ``rel``."""
        parts = _parts(rel)
        dfd = self._walk(parts[:-1])
        if dfd is None:
            return False
        try:
            os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        finally:
            os.close(dfd)
        return True

    def size(self, rel: str | Path) -> int:
        with self.open(rel) as fh:
            return os.fstat(fh.fileno()).st_size

    def read_bytes(self, rel: str | Path, limit: int) -> bytes:
        """The whole file, refused if it holds more than ``limit`` bytes (read at most limit+1)."""
        with self.open(rel) as fh:
            if os.fstat(fh.fileno()).st_size > limit:
                raise self._too_large(str(rel), limit)
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise self._too_large(str(rel), limit)
        return data

    def _too_large(self, rel: str, limit: int) -> DriveError:
        return DriveError(
            f"{self.root / rel}: larger than the {limit} bytes such a file may hold; it was "
            "refused (tampered or damaged drive)"
        )

    def exists(self, rel: str | Path) -> bool:
        """True when ``rel`` names a regular file reached without following links."""
        try:
            self.open(rel).close()
        except (FileNotFoundError, DriveError):
            return False
        return True

    def files(self, rel: str | Path, suffix: str) -> list[str]:
        """Names of the entries other than folders in ``rel`` ending in ``suffix`` (sorted).

        Links and FIFOs are listed so that reading them is refused visibly (``open``); a
        folder that is itself a link is refused here.
        """
        fd = self._walk(_parts(rel))
        if fd is None:
            return []
        try:
            names = []
            with os.scandir(fd) as it:
                for e in it:
                    if e.name.endswith(suffix) and not e.is_dir(follow_symlinks=False):
                        names.append(e.name)
        finally:
            os.close(fd)
        return sorted(names)

    def is_dir(self, rel: str | Path) -> bool:
        fd = self._walk(_parts(rel))
        if fd is None:
            return False
        os.close(fd)
        return True

    # ------------------------------------------------------------------ writing

    def mkdirs(self, rel: str | Path) -> None:
        fd = self._walk(_parts(rel), create=True)
        assert fd is not None
        os.close(fd)

    @contextmanager
    def writer(self, rel: str | Path) -> Iterator[BinaryIO]:
        """Write ``rel`` through a fresh temporary name, fsync, then rename it in place."""
        parts = _parts(rel)
        dfd = self._walk(parts[:-1], create=True)
        assert dfd is not None
        tmp = f".{parts[-1]}.{os.getpid()}.part"
        try:
            with suppress(OSError):  # a stale part (or a link planted under its name)
                os.unlink(tmp, dir_fd=dfd)
            try:
                fd = os.open(tmp, _CREATE_FLAGS, 0o644, dir_fd=dfd)
            except OSError as exc:
                raise self._write_error(str(rel), exc) from None
            fh = os.fdopen(fd, "wb")
            try:
                with fh:
                    yield fh
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError as exc:
                _unlink_quiet(tmp, dfd)
                raise self._write_error(str(rel), exc) from None
            except BaseException:
                _unlink_quiet(tmp, dfd)
                raise
        finally:
            os.close(dfd)

    def write_bytes(self, rel: str | Path, data: bytes) -> None:
        with self.writer(rel) as fh:
            fh.write(data)

    def unlink(self, rel: str | Path) -> None:
        """Remove a file (a link is removed itself, never what it points to)."""
        parts = _parts(rel)
        dfd = self._walk(parts[:-1])
        if dfd is None:
            return
        try:
            _unlink_quiet(parts[-1], dfd)
        finally:
            os.close(dfd)


class DriveFullError(DriveError):
    """No space left on the drive."""


def _unlink_quiet(name: str, dfd: int) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        pass


__all__ = ["Drive", "DriveError", "DriveFullError"]
