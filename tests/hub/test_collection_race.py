"""Collection raced against uploads and commits: no accepted object is ever lost.

The reproduction from the field: a slow collection (a large store) read what to keep, then
uploads arrived and a release was committed, and collection removed the new release's
objects while publish said "ok". Here collection is slowed down the same way (every object
it looks at costs a little time) and runs over and over, in a thread and in a second
process, while uploads and commits go on; after each round every committed release must be
whole.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from caravane.hub.errors import Conflict
from caravane.hub.jobs import JobRunner
from caravane.hub.service import Hub
from caravane.packs.store import ObjectStore

from .test_jobs import ADMIN, publish
from .util import noise

ROUNDS = 100


class SlowStore(ObjectStore):
    """The hub's store, with collection's walk slowed as on a store of millions of objects."""

    def iter_ids(self):  # type: ignore[no-untyped-def]
        for sha in super().iter_ids():
            time.sleep(0.0005)
            yield sha


def _slow(hub: Hub) -> None:
    hub.repo.store = SlowStore(hub.repo.path)
    # old, unreferenced objects for collection to walk through (and remove)
    for i in range(200):
        sha, _ = hub.repo.store.put_raw(noise(300, f"old-{i}"))
        hub.repo.store.freshen(sha, at=time.time() - 7 * 86400)


def _check_whole(hub: Hub) -> None:
    report = hub.repo.verify()
    assert report.ok, report.problems[:5]


def test_collection_in_a_thread_never_loses_a_committed_object(hub: Hub, tmp_path: Path):
    _slow(hub)
    runner = JobRunner(hub)
    stop = threading.Event()
    collected: list[int] = []

    def collect_forever() -> None:
        while not stop.is_set():
            collected.append(runner.collect_garbage()[0])

    gc = threading.Thread(target=collect_forever)
    gc.start()
    try:
        for i in range(ROUNDS):
            files = {f"f{i}.bin": noise(3000, f"r{i}"), "shared.txt": f"shared {i % 3}"}
            res, _ = publish(hub, tmp_path / f"r{i}", files)
            assert res["version"] == i + 1
    finally:
        stop.set()
        gc.join()
    assert sum(collected) >= 200  # collection did run and remove the old objects
    _check_whole(hub)


def test_grace_period_spares_objects_of_an_upload_opened_during_collection(
    hub: Hub, tmp_path: Path
):
    """An upload that starts after collection asked what to keep still commits."""
    _slow(hub)
    runner = JobRunner(hub)
    started = threading.Event()
    original = hub.repo.referenced_objects

    def referenced(*args: Any, **kw: Any) -> Any:
        refs = original(*args, **kw)
        started.set()
        time.sleep(0.3)  # the upload below opens and sends its objects meanwhile
        return refs

    hub.repo.referenced_objects = referenced  # type: ignore[method-assign]
    gc = threading.Thread(target=runner.collect_garbage)
    gc.start()
    assert started.wait(10)
    res, _ = publish(hub, tmp_path / "late", {"late.bin": noise(5000, "late")})
    gc.join()
    assert res["version"] == 1
    _check_whole(hub)


GC_LOOP = """
import sys, time
from caravane.hub.config import HubConfig
from caravane.hub.errors import Conflict
from caravane.hub.jobs import JobRunner
from caravane.hub.service import Hub
cfg = HubConfig(data_dir=__import__("pathlib").Path(sys.argv[1]), database_url=sys.argv[2],
                scheduler=False, keep_last=2)
runner = JobRunner(Hub(cfg))
stop = __import__("pathlib").Path(sys.argv[3])
end = time.monotonic() + 120
n = 0
while not stop.exists() and time.monotonic() < end:
    n += runner.collect_garbage()[0]
print(n)
"""


def test_collection_in_another_process_never_loses_a_committed_object(hub: Hub, tmp_path: Path):
    _slow(hub)
    stop = tmp_path / "stop"
    proc = subprocess.Popen(
        [sys.executable, "-c", GC_LOOP, str(hub.config.data_dir), hub.config.url, str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for i in range(ROUNDS):
            files = {f"p{i}.bin": noise(2000, f"p{i}")}
            res, _ = publish(hub, tmp_path / f"p{i}", files)
            assert res["version"] == i + 1
            if proc.poll() is not None:
                break
    finally:
        stop.touch()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert int(out.strip()) >= 200
    _check_whole(hub)


def test_commit_refuses_a_release_whose_object_went_missing(hub: Hub, tmp_path: Path):
    """An object removed between the upload and the commit is named, never signed missing.

    (409 over HTTP, with the step to take.)
    """
    up, entries = publish(hub, tmp_path / "a", {"a.bin": noise(5000, "a")}, commit=False)
    hub.repo.store.remove(entries[0].chunks[0][0])
    with pytest.raises(Conflict, match="upload them and commit again"):
        hub.commit_upload(ADMIN, up["upload"])
    assert hub.repo.channels() == []
