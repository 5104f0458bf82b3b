"""Scheduled jobs (APScheduler): packs ahead of time, forgotten uploads, garbage, expiring
metadata, silent centres.

Several hub processes may serve one database; only the holder of the ``jobs`` lease in that
database runs the jobs, and the lease passes to another process if the holder goes away.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Container
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from apscheduler.schedulers.background import BackgroundScheduler

from caravane.packs import delta
from caravane.protocol.metadata import now_utc, parse_time

from .errors import PackBuildError
from .service import Hub

log = logging.getLogger("caravane.hub.jobs")
LEASE_SECONDS = 300
SUPERSEDED_GRACE_SECONDS = 24 * 3600
#: a pack build's lease; renewed while the build runs, lost this long after a crash
PACK_LEASE_SECONDS = 60

PackOutcome = Literal["built", "exists", "busy"]
#: lines of a failed pack build's own error output kept for the log
CHILD_ERROR_LINES = 5


def pack_lease(channel: str, a: int, b: int) -> str:
    """The lease that says which hub process builds the pack ``a`` -> ``b`` of a channel."""
    return f"pack:{channel}:{a}-{b}"


#: each job's name (as `caravane hub jobs NAME` says it, in metrics and as its logger's tail)
JOB_NAMES = {
    "build_recent_packs": "packs",
    # before gc, so that `caravane hub jobs` collects what the uploads it expires held
    "expire_uploads": "uploads",
    "collect_garbage": "gc",
    "refresh_expiring": "expiry",
    "flag_stale_centres": "stale",
}


def job_log(method: str) -> logging.Logger:
    """The logger a job writes to: ``caravane.hub.jobs.gc``, ``...packs`` and so on."""
    return logging.getLogger(f"caravane.hub.jobs.{JOB_NAMES.get(method, method)}")


class JobRunner:
    def __init__(self, hub: Hub, holder: str | None = None) -> None:
        self.hub = hub
        self.holder = holder or f"{socket.gethostname()[:60]}:{os.getpid()}:{id(self):x}"
        self.scheduler: BackgroundScheduler | None = None
        #: told (job name, seconds, failed) after each scheduled run (hub/metrics.py)
        self.on_run: Callable[[str, float, bool], None] | None = None
        #: pack builds running in processes of their own (stopped with the runner)
        self._children: set[subprocess.Popen[bytes]] = set()
        self._children_lock = threading.Lock()
        self._stopping = False

    # Each job is a plain method, so tests (and operators) can run it once.

    def build_recent_packs(self, channel: str | None = None) -> list[str]:
        """Direct packs to the latest release from nothing, from each of the last few
        releases and from every release a centre still holds (``Hub.held_versions``), then
        the packs those replace: a centre far behind takes one pack, never a chain."""
        repo = self.hub.repo
        built = []
        for c in [channel] if channel else repo.channels():
            meta = repo.channel_meta(c)
            latest = meta.version
            older = sorted(v for v in meta.releases if v < latest)
            wanted = set(older[-self.hub.config.pack_pairs :])
            wanted |= self.hub.held_versions(c) & set(older)
            for a in [0, *sorted(wanted)]:
                path = repo.pack_path(c, a, latest)
                if (
                    not path.exists()
                    and self.build_pack_once(c, a, latest, isolated=True) == "built"
                ):
                    built.append(path.name)
            self._drop_superseded_packs(c, latest)
        if built:
            job_log("build_recent_packs").info("built packs %s", ", ".join(built))
        return built

    def _drop_superseded_packs(self, channel: str, latest: int) -> None:
        """Remove packs to an older release once the direct pack to the latest exists.

        A centre asks for the pack to the latest release it has read of; one still resuming a
        pack to an older release has a day to finish before it is gone (it then asks again).
        """
        folder = self.hub.repo.path / "packs" / channel
        cutoff = time.time() - SUPERSEDED_GRACE_SECONDS
        for path in folder.glob("*-*.pack*") if folder.is_dir() else []:
            a, _, rest = path.name.partition("-")
            b = rest.split(".", 1)[0]
            if not (a.isdigit() and b.isdigit()) or int(b) >= latest:
                continue
            replaced = self.hub.repo.pack_path(channel, int(a), latest).exists()
            try:
                old = path.stat().st_mtime < cutoff
            except FileNotFoundError:
                continue
            if replaced and old:
                path.unlink(missing_ok=True)

    def build_pack_once(
        self, channel: str, a: int, b: int, level: int | None = None, *, isolated: bool = False
    ) -> PackOutcome:
        """Build one pack unless it exists or another process is building it now.

        Every hub process sharing the database asks for the pack's lease first, so a pack
        is built once however many processes (and requests, and the worker) want it; a
        caller told "busy" waits for the file to appear. The pack itself lands by an atomic
        rename, so a reader never sees half of one.

        ``isolated``: built by ``caravane pack build`` in a process of its own, as the
        packs made ahead of time are (a channel's first pack is the whole channel). Built
        in the server's process, its working set (a level-19 context, a group of chunks, a
        walk of a million files) came on top of the server's, about 240 MB at a million
        files, and what glibc kept of it stayed resident after; a build that fails or runs
        out of memory now takes only its own process down. Packs built while a node waits
        are small (``on_demand_pack_bytes``) and stay in the process: no start-up cost.
        """
        path = self.hub.repo.pack_path(channel, a, b)
        if path.is_file():
            return "exists"
        # one holder per build, so two builds in one process do not share a lease
        holder = f"{self.holder}:{uuid.uuid4().hex[:8]}"[:100]
        with self.hub.lease(pack_lease(channel, a, b), holder, PACK_LEASE_SECONDS) as mine:
            if not mine:
                return "busy"
            if path.is_file():  # the previous holder finished just before we asked
                return "exists"
            lvl = self.pack_level(channel, a, b) if level is None else level
            if isolated:
                self._build_in_child(channel, a, b, path, lvl)
            else:
                self.hub.repo.build_pack(channel, a, b, path, level=lvl)
        log.info("built pack %s %d-%d (level %d)", channel, a, b, lvl)
        return "built"

    def _build_in_child(self, channel: str, a: int, b: int, path: Path, level: int) -> None:
        """``caravane pack build`` of the hub's repository, waited for (the caller holds
        the pack's lease, renewed meanwhile); its error output is kept for the log."""
        cmd = [
            sys.executable,
            "-m",
            "caravane",
            "pack",
            "build",
            str(self.hub.repo.path),
            channel,
            str(path),
            "--from",
            str(a),
            "--to",
            str(b),
            "--level",
            str(level),
            "--json",
        ]
        with self._children_lock:
            if self._stopping:
                raise PackBuildError(f"pack {channel} {a}-{b} not built: the hub is stopping")
            child = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            self._children.add(child)
        try:
            _, err = child.communicate()
        finally:
            with self._children_lock:
                self._children.discard(child)
        if child.returncode:
            # a build stopped or killed (the hub stopping, out of memory) leaves its part file
            for part in Path(path).parent.glob(f".{Path(path).name}.{child.pid}-*.part"):
                part.unlink(missing_ok=True)
            lines = err.decode("utf-8", "replace").strip().splitlines()[-CHILD_ERROR_LINES:]
            why = " / ".join(lines) or f"exit status {child.returncode}"
            if child.returncode < 0:
                why = f"stopped by signal {-child.returncode}; {why}"
            raise PackBuildError(
                f"pack {channel} {a}-{b} (level {level}) could not be built: {why}; the "
                "worker tries again at its next run, and nodes take the objects meanwhile"
            )

    def pack_level(self, channel: str, a: int, b: int) -> int:
        """Strong compression for the usual update; a faster level for very large packs.

        Level 19 runs at a few MB/s on two cores: right for updates of some hundreds of MB,
        built once and carried many times, but hours for a full 50 GB channel whose content
        (video, PDF) is compressed already and gains little from it.
        """
        big = self.hub.pack_new_bytes(channel, a, b) > self.hub.config.strong_pack_bytes
        return 9 if big else delta.LEVEL

    def expire_uploads(self) -> list[str]:
        """Expire uploads idle for ``upload_expiry_days`` (a curator who gave up): the next
        collection takes the objects nothing else uses. Returns the uploads expired."""
        expired = self.hub.expire_uploads()
        jlog = job_log("expire_uploads")
        for u in expired:
            jlog.info(
                "upload %s of channel %s, opened by %s on %s, expired after %d days without "
                "activity (last at %s); its %d objects are no longer kept for it, and %s "
                "must publish again (`caravane publish %s FOLDER --hub ...`)",
                u["upload"],
                u["channel"],
                u["by"],
                u["created"],
                u["idle_days"],
                u["active"],
                u["objects"],
                u["by"],
                u["channel"],
            )
        if expired:
            jlog.info(
                "expired %d uploads idle for %d days or more",
                len(expired),
                self.hub.config.upload_expiry_days,
            )
        return [u["upload"] for u in expired]

    def collect_garbage(self) -> tuple[int, int]:
        """Objects no retained release uses, and packs of retired releases."""
        count, freed = self.hub.repo.collect_garbage(
            keep=self._open_upload_objects,
            grace_seconds=self.hub.config.gc_grace_hours * 3600,
        )
        if count:
            job_log("collect_garbage").info("removed %d unused objects (%d bytes)", count, freed)
        return count, freed

    def _open_upload_objects(self) -> Container[str]:
        return self.hub.open_upload_objects()

    def refresh_expiring(self) -> list[str]:
        """Re-sign channel metadata that expires within ``refresh_before_days``."""
        cfg = self.hub.config
        if not cfg.expires_days:
            return []
        limit = now_utc() + timedelta(days=cfg.refresh_before_days)
        refreshed = []
        for c in self.hub.repo.channels():
            meta = self.hub.repo.channel_meta(c)
            if meta.expires and parse_time(meta.expires, "expires") <= limit:
                self.hub.repo.refresh_expiry(c, cfg.expires_days)
                refreshed.append(c)
        if refreshed:
            job_log("refresh_expiring").info("refreshed the expiry of %s", ", ".join(refreshed))
        return refreshed

    def flag_stale_centres(self) -> list[str]:
        flagged = self.hub.flag_stale()
        if flagged:
            job_log("flag_stale_centres").warning(
                "no news for %d days from: %s", self.hub.config.stale_after_days, ", ".join(flagged)
            )
        return flagged

    # Scheduling

    def _guarded(self, job: Any) -> Any:
        name = JOB_NAMES.get(job.__name__, job.__name__)
        jlog = job_log(job.__name__)

        def guarded() -> None:
            if not self.hub.take_lease("jobs", self.holder, LEASE_SECONDS):
                return
            started = time.monotonic()
            failed = False
            try:
                job()
            except Exception:
                failed = True
                jlog.exception("scheduled job %s failed", name)
            took = time.monotonic() - started
            if not failed:
                jlog.debug("scheduled job %s finished in %.2f s", name, took)
            if self.on_run is not None:
                self.on_run(name, took, failed)

        guarded.__name__ = guarded.__qualname__ = name
        return guarded

    def start(self) -> None:
        sched = BackgroundScheduler(timezone="UTC")
        for job, every in (
            (self.build_recent_packs, {"minutes": 10}),
            (self.expire_uploads, {"hours": 1}),
            (self.collect_garbage, {"hours": 6}),
            (self.refresh_expiring, {"hours": 12}),
            (self.flag_stale_centres, {"hours": 1}),
        ):
            name = JOB_NAMES[job.__name__]
            sched.add_job(self._guarded(job), "interval", id=name, name=name, **every)
        sched.start()
        self.scheduler = sched

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        self.stop_builds()

    def stop_builds(self) -> None:
        """Stop the pack builds running in their own processes (the hub is stopping: a
        build is not waited for; its lease lapses and the next run builds it again)."""
        with self._children_lock:
            self._stopping = True
            children = list(self._children)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)  # at once, even inside a compression call
        for child in children:
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
