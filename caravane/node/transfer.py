"""How bytes move during one sync pass, apart from what they mean.

The sync engine (node/sync.py) says *what* it needs, in protocol order: root, channel,
manifest, pack or objects. ``Transfer`` owns *how* it gets there: which upstreams are
tried and in what order, which ones are set aside after a failure, retries with backoff,
the data budgets of metered links, the deadlines of a pass and of one fetch, the minimum
rate under which a dripping upstream is dropped, and the count of every byte that crossed
each upstream and each route. Keeping this policy in one place is what lets the engine's
steps read as the protocol (as python-tuf's ``Updater`` reads over its ``FetcherInterface``)
and lets a test drive the engine with an in-memory upstream.

Errors are sorted once, here: ``UpstreamNotFound`` (try the next upstream quietly),
``UpstreamError`` (set the upstream aside), ``BAD_DATA`` (it sent something that does not
verify: set it aside and say so), a full disk (``is_disk_full``: never the upstream's
fault), and ``PassOver`` (the budget or the pass deadline is spent: the pass ends cleanly).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TypeVar

from caravane.packs.errors import DiskFullError, PackError
from caravane.protocol.errors import BadDataError

from .errors import (
    BudgetExceeded,
    PassDeadline,
    TooMuchData,
    TooSlow,
    UpstreamError,
    UpstreamNotFound,
)
from .policy import RateLimiter
from .state import NodeState
from .upstream import Upstream

log = logging.getLogger("caravane.node")
T = TypeVar("T")

#: Everything an upstream can send that fails verification. ``PackError`` comes from
#: packs/ (a pack that does not parse); the rest derive from protocol's ``BadDataError``.
BAD_DATA: tuple[type[Exception], ...] = (BadDataError, PackError)

#: errno values that mean "the disk is full" (a quota counts as full for us).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

ROUTE_OF_KIND = {
    "http": "network",
    "mirror": "mirror",
    "peer": "peer",
    "rsync": "rsync",
    "folder": "usb",
}

#: How long a fetch runs before its rate is judged (slow starts are normal on satellite).
RATE_GRACE_SECONDS = 5.0


def is_disk_full(exc: BaseException) -> bool:
    """True for the store's own ``DiskFullError`` and for ENOSPC/EDQUOT from anywhere."""
    if isinstance(exc, DiskFullError):
        return True
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


class Transfer:
    """The upstreams of one sync pass and the policy that moves bytes from them.

    Every field is set here, so ``available()`` and the counters are usable before (and
    after) a pass. One ``Transfer`` serves one pass: ``open()`` probes the upstreams,
    ``close()`` writes the byte counts to the node's state and releases connections.
    """

    def __init__(
        self,
        state: NodeState,
        upstreams: list[Upstream],
        *,
        limiter: RateLimiter | None = None,
        daily_budget: int = 0,
        monthly_budget: int = 0,
        retries: int = 4,
        retry_base: float = 1.0,
        ignore_demotion: bool = False,
        on_event: Callable[[str, str], None] | None = None,
        progress: Callable[[int], object] | None = None,
        pass_seconds: float = 0.0,
        fetch_seconds: float = 0.0,
        min_rate: int = 0,
        rate_grace: float = RATE_GRACE_SECONDS,
    ) -> None:
        self.state = state
        self.upstreams = sorted(upstreams, key=lambda u: u.cost)
        self.limiter = limiter or RateLimiter(0)
        self.daily_budget = daily_budget
        self.monthly_budget = monthly_budget
        self.retries = retries
        self.retry_base = retry_base
        self.ignore_demotion = ignore_demotion
        self.on_event = on_event
        self.progress = progress
        self.pass_seconds = pass_seconds
        self.fetch_seconds = fetch_seconds
        self.min_rate = min_rate  # bytes/s; 0: any rate will do
        self.rate_grace = rate_grace
        # what this pass moved, per upstream and per route (usb, network, peer ...)
        self.received: dict[str, int] = defaultdict(int)
        self.by_route: dict[str, int] = defaultdict(int)
        self.errors: list[str] = []
        self.set_aside_now: set[str] = set()
        self._unflushed: dict[str, int] = defaultdict(int)
        self._metered_pass = 0  # bytes over metered upstreams in this pass
        self._day_used = 0  # metered bytes before this pass (read once, in open())
        self._month_used = 0
        self._deadline: float | None = None
        self._lock = threading.RLock()
        for up in self.upstreams:
            up.meter = self._meter_for(up)

    # ------------------------------------------------------------------ the pass

    def open(self) -> bool:
        """Start a pass: probe each upstream; True when at least one answered."""
        if self.daily_budget or self.monthly_budget:
            self._day_used = self.state.metered_bytes("day")
            self._month_used = self.state.metered_bytes("month")
        if self.pass_seconds:
            self._deadline = time.monotonic() + self.pass_seconds
        reachable = False
        for up in self.available():
            if up.probe():
                reachable = True
            else:
                self.set_aside_now.add(up.name)
        return reachable

    def close(self) -> None:
        """End the pass: record what crossed each upstream and release connections."""
        self._flush()
        for up in self.upstreams:
            up.close()

    def available(self) -> list[Upstream]:
        """Upstreams to try now, cheapest first: none set aside in this pass or recently."""
        out = []
        for up in self.upstreams:
            if up.name in self.set_aside_now:
                continue
            if not self.ignore_demotion and self.state.demoted_until(up.name):
                continue
            out.append(up)
        return out

    def route(self) -> str:
        """The route that brought most of this pass's bytes ("local" if none came)."""
        if not self.by_route:
            return "local"
        return max(self.by_route.items(), key=lambda kv: kv[1])[0]

    # ------------------------------------------------------------------ outcomes

    def event(self, level: str, message: str) -> None:
        getattr(log, level if level in ("info", "warning", "error") else "info")(message)
        with contextlib.suppress(Exception):  # the log line above is the record of last resort
            self.state.event(level, message)
        if self.on_event:
            self.on_event(level, message)

    def set_aside(self, up: Upstream, message: str) -> None:
        """``up`` failed or sent bad data: not used again in this pass, nor for a while."""
        until = self.state.record_failure(up.name, message)
        self.errors.append(message)
        self.event(
            "warning",
            f"{message}; upstream {up.name} is set aside until {until:%H:%M} UTC and the "
            "next one is tried",
        )
        self.set_aside_now.add(up.name)

    def succeeded(self, up: Upstream) -> None:
        self.state.record_ok(up.name)

    def first(self, what: str, fetch: Callable[[Upstream], T]) -> T | None:
        """``fetch`` from each available upstream in turn; the first result that verifies.

        ``fetch`` reads and verifies; whatever it raises is sorted here: not found moves on
        quietly, a failure or bad data sets that upstream aside and moves on.
        """
        for up in self.available():
            ok, value = self._attempt(up, what, fetch)
            if ok:
                return value
        return None

    def every(self, what: str, fetch: Callable[[Upstream], T]) -> list[tuple[Upstream, T]]:
        """``fetch`` from every available upstream (the freshest channel metadata wins)."""
        found: list[tuple[Upstream, T]] = []
        for up in self.available():
            ok, value = self._attempt(up, what, fetch)
            if ok:
                found.append((up, value))  # type: ignore[arg-type]
        return found

    def _attempt(
        self, up: Upstream, what: str, fetch: Callable[[Upstream], T]
    ) -> tuple[bool, T | None]:
        try:
            return True, fetch(up)
        except UpstreamNotFound:
            pass
        except UpstreamError as exc:
            self.set_aside(up, str(exc))
        except BAD_DATA as exc:
            self.set_aside(up, f"discarded {what} from {up.name}: {exc}")
        return False, None

    # ------------------------------------------------------------------ moving bytes

    def copy(
        self,
        up: Upstream,
        path: str,
        offset: int,
        max_length: int,
        write: Callable[[bytes], object],
        since: bytes | None = None,
    ) -> int:
        """Copy ``path`` from ``offset`` into ``write``, at most ``max_length`` bytes
        (``since``: the whole file, as a delta from these bytes where the upstream can).

        Before each block the pass's budget and deadline are checked, so the pass ends
        between two blocks, never with a block half kept; every block already handed to
        ``write`` was paid for and stays. A fetch past its own deadline, or slower than
        the minimum rate after a grace period, fails like a cut link (``UpstreamError``).
        """
        started = time.monotonic()
        got = 0
        blocks = (
            up.fetch(path, offset, max_length)
            if since is None
            else up.fetch_since(path, since, max_length)
        )
        try:
            while True:
                self._check_pass(up)
                block = next(blocks, None)
                if block is None:
                    return got
                write(block)
                got += len(block)
                self._check_fetch(up, path, started, got)
        finally:
            blocks.close()  # a generator left early closes its connection now

    def read(
        self, up: Upstream, path: str, max_length: int, since: bytes | None = None
    ) -> bytes:
        """A whole small file (metadata, a manifest, one object), bounded; ``since``: the
        reader's copy of an earlier version, which an upstream may send a delta from."""
        parts: list[bytes] = []
        self.copy(up, path, 0, max_length, parts.append, since)
        return b"".join(parts)

    def retrying(self, fn: Callable[[], T], progress: Callable[[], int]) -> T:
        """Run ``fn`` again after a cut: at once while bytes keep arriving, else with backoff."""
        failures = 0
        while True:
            before = progress()
            try:
                return fn()
            except (UpstreamNotFound, TooMuchData, TooSlow):
                raise  # asking the same upstream again would not change the answer
            except UpstreamError as exc:
                if progress() > before:
                    failures = 0  # it moved forward: the link is up, just flaky
                    log.info("%s; resuming", exc)
                    continue
                failures += 1
                if failures > self.retries:
                    raise
                delay = self.retry_base * 2 ** (failures - 1) * random.uniform(0.5, 1.5)
                self._check_pass(None, delay)
                log.info("%s; retry %d in %.1fs", exc, failures, delay)
                time.sleep(delay)

    # ------------------------------------------------------------------ limits

    def _check_pass(self, up: Upstream | None, ahead: float = 0.0) -> None:
        """Raise ``PassOver`` when the pass may not read another block."""
        if self._deadline is not None and time.monotonic() + ahead > self._deadline:
            raise PassDeadline(
                f"this sync pass reached its time limit ({self.pass_seconds:.0f} s); what "
                "arrived is kept and the next pass continues"
            )
        if up is None or not up.metered:
            return
        with self._lock:
            used = self._metered_pass
        if self.daily_budget and self._day_used + used >= self.daily_budget:
            raise BudgetExceeded(
                f"today's data budget on metered links ({self.daily_budget / 1e6:.0f} MB) is "
                "spent; the sync stops here and continues tomorrow (what arrived is kept)"
            )
        if self.monthly_budget and self._month_used + used >= self.monthly_budget:
            raise BudgetExceeded(
                f"this month's data budget on metered links ({self.monthly_budget / 1e6:.0f} "
                "MB) is spent; the sync continues next month, or bring a drive"
            )

    def _check_fetch(self, up: Upstream, path: str, started: float, got: int) -> None:
        elapsed = time.monotonic() - started
        if self.fetch_seconds and elapsed > self.fetch_seconds:
            raise TooSlow(up.name, f"{path}: took longer than {self.fetch_seconds:.0f} s")
        if self.min_rate and elapsed > self.rate_grace and got / elapsed < self.min_rate:
            raise TooSlow(
                up.name,
                f"{path}: too slow ({got / elapsed:.0f} bytes/s, under the "
                f"{self.min_rate} bytes/s minimum)",
            )

    # ------------------------------------------------------------------ counting

    def _meter_for(self, up: Upstream) -> Callable[[int], None]:
        """What ``up`` calls for every block that crosses it, kept or not."""
        name, metered = up.name, up.metered
        route = ROUTE_OF_KIND.get(up.kind, "network")
        throttled = up.kind != "folder"

        def meter(n: int) -> None:
            if throttled:
                self.limiter.take(n)
            with self._lock:
                self.received[name] += n
                self.by_route[route] += n
                self._unflushed[name] += n
                if metered:
                    self._metered_pass += n
                if self.progress:
                    self.progress(n)
                if self._unflushed[name] >= 1 << 20:
                    self._flush(name)

        return meter

    def _flush(self, only: str | None = None) -> None:
        with self._lock:
            for name, n in list(self._unflushed.items()):
                if n and (only is None or only == name):
                    metered = next((u.metered for u in self.upstreams if u.name == name), False)
                    self.state.add_transfer(name, metered, n)
                    self._unflushed[name] = 0
