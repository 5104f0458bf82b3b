"""The long-running agent: scheduled syncs in the windows, reports, and drive watching.

APScheduler runs three jobs in background threads: a sync pass every
``sync_interval_minutes`` (inside the sync windows, only when an upstream answers the cheap
probe), sending queued reports, and a scan of the configured mount points every few seconds
so that a drive plugged in by a field agent is imported without anyone typing a command.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from caravane.protocol.errors import CaravaneError

from .agent import NodeAgent, import_drive_into_centre
from .errors import disk_problem

log = logging.getLogger("caravane.node.agent")
DRIVE_SCAN_SECONDS = 5


def give_back_memory() -> bool:
    """Hand the heap a pass freed back to the system; False where libc cannot (not glibc).

    A sync pass decodes packs and streams files through buffers that Python frees at the
    end, but glibc keeps freed pages in its arenas for reuse: measured, the idle node held
    about 12 MB more after a pass than before it, none of it live objects (issue 14,
    bench/node_rss.py). ``malloc_trim(0)`` returns those pages; the node then idles at its
    start-up figure until the next pass, which is minutes or hours away.
    """
    import ctypes

    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl, macOS: no malloc_trim, nothing to do
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


def find_drives(mounts: list[str]) -> list[Path]:
    """Folders under the mount points that carry a Caravane bundle (``caravane/bundle.json``)."""
    found = []
    for m in mounts:
        base = Path(m)
        candidates = [base]
        try:
            for child in base.iterdir():
                candidates.append(child)
                if child.is_dir():
                    candidates.extend(c for c in child.iterdir() if c.is_dir())
        except OSError:
            continue
        for c in candidates:
            if (c / "caravane" / "bundle.json").is_file():
                found.append(c)
    return found


class AgentService:
    def __init__(self, node: NodeAgent, portal: Any = None, blocking: bool = False) -> None:
        self.node = node
        self.portal = portal
        self.seen: dict[Path, float] = {}
        cls = BlockingScheduler if blocking else BackgroundScheduler
        self.scheduler = cls(job_defaults={"coalesce": True, "max_instances": 1})
        interval = max(0.1, float(node.config.sync_interval_minutes))
        self.scheduler.add_job(
            self.sync_job,
            "interval",
            minutes=interval,
            jitter=int(min(300, interval * 6)),
            next_run_time=datetime.now() + timedelta(seconds=2),
            id="sync",
        )
        if node.config.usb_mounts:
            self.scheduler.add_job(
                self.drive_job, "interval", seconds=DRIVE_SCAN_SECONDS, id="drives"
            )

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)

    def sync_job(self) -> None:
        try:
            self._sync_pass()
        finally:
            give_back_memory()

    def _sync_pass(self) -> None:
        try:
            result = self.node.sync(respect_windows=True)
            if result.skipped:
                log.info("sync skipped: %s", result.skipped)
                return
            for c in result.channels:
                log.info("%s: %s %s", c.channel, c.status, c.message)
            self.node.make_report()
            sent = self.node.send_reports()
            if sent:
                log.info("%d report(s) sent to the hub", sent)
        except CaravaneError as exc:
            log.warning("%s", exc)
        except Exception as exc:  # never let one bad pass stop the agent
            line = disk_problem(exc, self.node.config.data_dir)
            if line:  # one line, no traceback: the next pass resumes once space is freed
                log.error("%s", line)
                return
            log.exception("sync pass failed; the next one runs as scheduled")

    def drive_job(self) -> None:
        """Every few seconds: import each drive newly plugged in."""
        present = find_drives(self.node.config.usb_mounts)
        for gone in set(self.seen) - set(present):
            del self.seen[gone]
            if self.portal is not None:
                self.portal.drive_notice.pop(str(gone), None)
        for drive in present:
            stamp = (drive / "caravane" / "bundle.json").stat().st_mtime
            if self.seen.get(drive) == stamp:
                continue
            self.seen[drive] = stamp
            if self.portal is not None:
                self.portal.drive_notice[str(drive)] = "busy"
            log.info("drive found at %s: importing; do not remove it yet", drive)
            try:
                self._import(drive)
            finally:
                if self.portal is not None and drive in self.seen:
                    self.portal.drive_notice[str(drive)] = "done"
                give_back_memory()  # an import decodes packs as a sync pass does
            log.info("drive %s can be removed now", drive)

    def _import(self, drive: Path) -> None:
        try:
            out = import_drive_into_centre(self.node, drive)
            for line in out["errors"]:
                log.warning("drive %s: %s", drive, line)
        except CaravaneError as exc:
            log.warning("drive %s: %s", drive, exc)
        except Exception as exc:
            line = disk_problem(exc, f"{self.node.config.data_dir} or the drive {drive}")
            if line is None and not isinstance(exc, OSError):
                raise
            log.warning(
                "drive %s: %s", drive, line or f"removed or failed ({exc}); insert it again"
            )
            self.seen.pop(drive, None)  # imported again once the problem is fixed


def run_agent(node: NodeAgent) -> None:
    """The agent alone, in the foreground (``caravane node run --no-serve``)."""
    service = AgentService(node, blocking=True)
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        service.start()
    time.sleep(0)
