"""Errors of the node agent, worded for the operator at the centre."""

from __future__ import annotations

from protocol.errors import CaravaneError


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
