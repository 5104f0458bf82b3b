"""Web publish jobs in the database: what any hub process shows of a job, and of a lost one."""

from __future__ import annotations

import time

from caravane.hub.publish_jobs import PublishJob, PublishJobs
from caravane.hub.service import Hub


def test_a_job_is_seen_as_its_process_last_wrote_it(hub: Hub) -> None:
    here, there = PublishJobs(hub.db), PublishJobs(hub.db)  # two processes' views
    job = PublishJob("j1", "lecons", "amina", "lecons.zip")
    here.add(job)
    job.state, job.total = "storing", 1000
    here.progress(job)(400)  # the first progress is written at once
    seen = there.get("j1")
    assert seen is not None
    assert (seen.state, seen.done, seen.total, seen.percent) == ("storing", 400, 1000, 40)
    here.progress(job)(100)  # within half a second of the last write: not written yet
    assert there.get("j1").done == 400  # type: ignore[union-attr]
    job.state, job.version, job.files = "done", 3, 12
    here.save(job)
    seen = there.get("j1")
    assert seen is not None and (seen.state, seen.version, seen.percent) == ("done", 3, 100)
    assert there.get("nope") is None


def test_a_job_whose_process_went_silent_is_shown_interrupted(hub: Hub) -> None:
    jobs = PublishJobs(hub.db, stale_seconds=1)
    job = PublishJob("j2", "lecons", "amina", "lecons.zip", state="signing")
    jobs.add(job)
    seen = jobs.get("j2")
    assert seen is not None and seen.state == "signing" and not seen.interrupted
    time.sleep(1.5)  # no heartbeat: the process that ran it is gone
    seen = jobs.get("j2")
    assert seen is not None and seen.state == "failed" and seen.interrupted
    finished = PublishJob("j3", "lecons", "amina", "b.zip", state="done")
    jobs.add(finished)
    time.sleep(1.5)
    assert jobs.get("j3").state == "done"  # type: ignore[union-attr]  # finished stays so
