"""Publish jobs of the web page, kept in the database so any hub process shows their progress.

The process that received the archive unpacks, stores and signs it (the archive is on its
disk); it writes the job's state and progress to the database as it goes, at most every
half second, and the job page, on whichever process answers it, reads them back.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select

from .db import Database
from .models import PublishJobRow

FINISHED = ("done", "failed", "cancelled")
#: waiting for the curator's word (sign or drop): no process works on it, none is missed
WAITING = ("review",)
#: finished jobs are forgotten after this long (their releases and audit entries stay)
KEEP_SECONDS = 86400
#: progress is written at most this often (one small UPDATE)
SAVE_EVERY = 0.5
#: a running job is written at least this often, even while signing says nothing...
HEARTBEAT = 30.0
#: ...so one not written for this long lost its process (stopped, crashed, host down)
STALE_SECONDS = 120.0


@dataclass
class PublishJob:
    id: str
    channel: str
    actor: str
    archive: str
    # queued | unpacking | storing | review | signing | done | failed | cancelled
    state: str = "queued"
    total: int = 0
    done: int = 0
    version: int | None = None
    files: int = 0
    error: str = ""
    notes: str = ""
    upload: str = ""  # the open upload that holds the file list while the curator reviews
    latest: int | None = None  # the release the review compares with
    review: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    #: its process stopped before it finished (the page says so and offers to try again)
    interrupted: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def percent(self) -> int:
        if self.state == "done":
            return 100
        return int(100 * self.done / self.total) if self.total else 0


class PublishJobs:
    def __init__(self, db: Database, stale_seconds: float = STALE_SECONDS) -> None:
        self.db = db
        self.stale_seconds = stale_seconds
        self.holder = f"{socket.gethostname()[:60]}:{os.getpid()}"
        self._saved: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, job: PublishJob) -> None:
        """Record a new job (and forget finished ones older than a day)."""
        now = datetime.now(UTC)
        with self.db.session() as s:
            s.execute(
                delete(PublishJobRow).where(
                    PublishJobRow.state.in_(FINISHED),
                    PublishJobRow.updated_at < now - timedelta(seconds=KEEP_SECONDS),
                )
            )
            s.add(
                PublishJobRow(
                    id=job.id,
                    channel=job.channel,
                    actor=job.actor,
                    archive=job.archive[:255],
                    holder=self.holder,
                    state=job.state,
                    total=job.total,
                    done=job.done,
                    version=job.version,
                    files=job.files,
                    error=job.error,
                    notes=job.notes,
                    upload=job.upload,
                    latest=job.latest,
                    review=job.review or None,
                    started_at=datetime.fromtimestamp(job.started, UTC),
                    updated_at=now,
                )
            )

    def save(self, job: PublishJob) -> None:
        """Write the job's state and progress now (every change of state calls this)."""
        with self._lock:
            self._saved[job.id] = time.monotonic()
        with self.db.session() as s:
            row = s.get(PublishJobRow, job.id)
            if row is None:
                return  # forgotten meanwhile: nothing to show it on
            row.state, row.total, row.done = job.state, job.total, job.done
            row.version, row.files, row.error = job.version, job.files, job.error
            row.notes, row.upload, row.latest = job.notes, job.upload, job.latest
            row.review = job.review or None
            row.updated_at = datetime.now(UTC)
        if job.state in FINISHED:
            with self._lock:
                self._saved.pop(job.id, None)

    def save_soon(self, job: PublishJob) -> None:
        """Write progress unless it was written less than SAVE_EVERY seconds ago."""
        with self._lock:
            last = self._saved.get(job.id, 0.0)
        if time.monotonic() - last >= SAVE_EVERY:
            self.save(job)

    def progress(self, job: PublishJob) -> Callable[[int], None]:
        """A progress callback for ingestion: counts bytes, writes them now and then."""

        def add(n: int) -> None:
            job.done += n
            self.save_soon(job)

        return add

    async def keep_alive(self, job: PublishJob) -> None:
        """Write the job every HEARTBEAT seconds while it runs (cancelled when it ends)."""
        while True:
            await asyncio.sleep(HEARTBEAT)
            await asyncio.to_thread(self.save, job)

    def stale_reviews(self, older_than: float) -> list[PublishJob]:
        """Jobs still waiting for the curator's word that started before ``older_than``."""
        with self.db.session() as s:
            ids = list(
                s.scalars(
                    select(PublishJobRow.id).where(
                        PublishJobRow.state.in_(WAITING),
                        PublishJobRow.started_at < datetime.fromtimestamp(older_than, UTC),
                    )
                )
            )
        return [job for job in (self.get(i) for i in ids) if job is not None]

    def get(self, jid: str) -> PublishJob | None:
        """The job as last written; one whose process went silent is shown interrupted."""
        with self.db.session() as s:
            row = s.get(PublishJobRow, jid)
            if row is None:
                return None
            started = _aware(row.started_at)
            silent = (datetime.now(UTC) - _aware(row.updated_at)).total_seconds()
            waiting = row.state in FINISHED or row.state in WAITING
            interrupted = not waiting and silent > self.stale_seconds
            return PublishJob(
                id=row.id,
                channel=row.channel,
                actor=row.actor,
                archive=row.archive,
                state="failed" if interrupted else row.state,
                total=row.total,
                done=row.done,
                version=row.version,
                files=row.files,
                error=row.error,
                notes=row.notes or "",
                upload=row.upload or "",
                latest=row.latest,
                review=dict(row.review or {}),
                started=started.timestamp(),
                interrupted=interrupted,
            )


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=UTC)
