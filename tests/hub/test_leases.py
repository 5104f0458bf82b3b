"""Leases in the database: one holder among processes racing for it, on both engines.

The scheduled jobs and each pack build take a lease so that, of several hub processes on
one database, exactly one does the work; a holder that stops renewing loses it.
"""

from __future__ import annotations

import threading
import time

from caravane.hub.service import Hub


def _race(hub: Hub, name: str, holders: list[str], seconds: int) -> list[str]:
    """Every holder asks at the same instant; who got it."""
    won: list[str] = []
    start = threading.Barrier(len(holders))

    def ask(holder: str) -> None:
        start.wait()
        if hub.take_lease(name, holder, seconds):
            won.append(holder)

    threads = [threading.Thread(target=ask, args=(h,)) for h in holders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return won


def test_one_holder_wins_a_new_lease_and_an_expired_one(hub: Hub) -> None:
    holders = [f"host:{i}" for i in range(6)]
    first = _race(hub, "pack:lecons:1-2", holders, 1)
    assert len(first) == 1
    assert hub.lease_holder("pack:lecons:1-2") == first[0]
    others = [h for h in holders if h != first[0]]
    assert not hub.take_lease("pack:lecons:1-2", others[0], 1)  # held
    assert hub.take_lease("pack:lecons:1-2", first[0], 1)  # its holder renews it
    time.sleep(1.2)
    assert hub.lease_holder("pack:lecons:1-2") is None  # expired: nobody holds it
    second = _race(hub, "pack:lecons:1-2", others, 30)
    assert len(second) == 1 and second[0] != first[0]


def test_a_lease_is_given_back_after_the_work_and_kept_during_it(hub: Hub) -> None:
    with hub.lease("jobs", "a", 3) as mine:
        assert mine
        with hub.lease("jobs", "b", 3) as theirs:
            assert not theirs
        time.sleep(4)  # longer than the lease: renewed meanwhile
        assert hub.lease_holder("jobs") == "a"
    assert hub.lease_holder("jobs") is None
    assert hub.take_lease("jobs", "b", 3)
