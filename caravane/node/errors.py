"""Errors of the node agent, worded for the operator at the centre."""

from __future__ import annotations

from caravane.protocol.errors import CaravaneError


class NodeError(CaravaneError):
    """Anything the node agent cannot do; the message says what to do next."""


class UpstreamError(NodeError):
    """An upstream failed or sent bad data; the engine demotes it and tries another."""

    def __init__(self, upstream: str, message: str) -> None:
        super().__init__(f"{upstream}: {message}")
        self.upstream = upstream


class UpstreamNotFound(UpstreamError):
    """The upstream answered, but does not hold that file (a mirror may lag behind)."""


class TooMuchData(UpstreamError):
    """The upstream sent more than the file can be: cut off, never resumed from it."""


class TooSlow(UpstreamError):
    """A fetch under the minimum rate or past its deadline: set aside for this pass."""


class NoUpstreamError(NodeError):
    """No configured upstream is reachable or willing right now."""


class DiskSpaceError(NodeError):
    """Not enough free space for the next release; nothing was fetched."""

    def __init__(self, needed: int, free: int, where: str) -> None:
        missing = needed - free
        super().__init__(
            f"the disk at {where} needs {missing / 1e9:.1f} GB more for the next release "
            f"({needed / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free); free some space or "
            "add a disk, then sync again"
        )
        self.needed, self.free, self.missing = needed, free, missing


class PassOver(NodeError):
    """This sync pass may not move another byte; it ends cleanly and keeps what arrived."""


class BudgetExceeded(PassOver):
    """The data budget of a metered link is spent; the sync stops and resumes later."""


class PassDeadline(PassOver):
    """The pass ran out of its time; the next pass continues where this one stopped."""


class NotEnrolled(NodeError):
    """The node has no identity yet."""


class DiskProblem(NodeError):
    """The centre's disk is full or read-only: nothing is lost, the next pass resumes."""


_FULL = ("database or disk is full", "no space left")
_READONLY = ("readonly database", "read-only file system")


def disk_problem(exc: BaseException, where: object = "the node's data folder") -> str | None:
    """One line an operator can act on if ``exc`` is a full or read-only disk, else None.

    SQLite says "database or disk is full" / "attempt to write a readonly database" through
    sqlite3 or SQLAlchemy (OperationalError); files say ENOSPC / EDQUOT / EROFS (OSError).
    Each would otherwise end a command in a traceback after the friendly lines.
    """
    import errno
    import os

    code = getattr(exc, "errno", None)
    text = str(exc).lower()
    if "unable to open database file" in text and isinstance(where, (str, os.PathLike)):
        # SQLite cannot create its WAL index on a read-only or full disk: ask the disk
        try:
            st = os.statvfs(where)
            if st.f_flag & os.ST_RDONLY:
                code = errno.EROFS
            elif st.f_bavail == 0:
                code = errno.ENOSPC
        except OSError:
            pass
    if code in (errno.ENOSPC, errno.EDQUOT) or any(s in text for s in _FULL):
        return (
            f"the disk holding {where} is full; free some space (old files, downloads), then "
            "run it again: everything received so far is kept and the next pass resumes"
        )
    if code == errno.EIO or "disk i/o error" in text:  # SQLite's word for a full WAL index
        return (
            f"cannot write to the disk holding {where} (full or failing); free some space or "
            "have the disk checked, then run it again: nothing received so far is lost"
        )
    if code == errno.EROFS or any(s in text for s in _READONLY):
        return (
            f"the disk holding {where} is read-only (a disk fault or a full check); have it "
            "checked and mounted read-write, then run it again: nothing was lost"
        )
    return None
