"""A centre syncs from a real hub: first release, updates by delta, and what it keeps."""

from __future__ import annotations

import os

from caravane.node.config import UpstreamConfig
from tests.node.conftest import World, content


def test_first_sync_then_update_travels_as_a_small_delta(world: World) -> None:
    v1 = world.publish(content(1))
    n = world.node("centre-a")
    r1 = world.sync(n)
    assert r1.complete and r1.channels[0].status == "activated"
    assert world.live(n) == world.versions[v1]

    v2 = world.publish(content(2))
    r2 = world.sync(n)
    assert r2.channels[0].status == "activated" and r2.channels[0].route == "network"
    assert world.live(n) == world.versions[v2]
    # only the edit travelled: far less than the release itself
    release_size = sum(len(b) for b in world.versions[v2].values())
    assert r2.received["hub"] < release_size // 10
    # the previous release stays for rollback; unchanged files are hard links to it
    assert n.releases.installed(world.channel) == [1, 2]
    a = n.releases.folder(world.channel, 1) / "site/page.html"
    b = n.releases.folder(world.channel, 2) / "site/page.html"
    assert os.stat(a).st_ino == os.stat(b).st_ino


def test_nothing_new_fetches_only_metadata(world: World) -> None:
    world.publish(content(1))
    n = world.node("centre-a")
    world.sync(n)
    again = world.sync(n)
    assert again.channels[0].status == "up-to-date"
    assert again.received["hub"] < 10_000


def test_third_release_prunes_the_oldest_and_unused_objects(world: World) -> None:
    world.publish(content(1))
    n = world.node("centre-a")
    world.sync(n)
    world.publish(content(2))
    world.sync(n)
    world.publish({"only.txt": b"a completely different release"})
    world.sync(n)
    assert n.releases.installed(world.channel) == [2, 3]
    assert world.live(n) == {"only.txt": b"a completely different release"}
    report = n.repo.verify()
    assert report.ok
    assert report.unreferenced_objects == 0  # v1's objects were collected


def test_rollback_holds_until_a_newer_release(world: World) -> None:
    v1 = world.publish(content(1))
    n = world.node("centre-a")
    world.sync(n)
    world.publish(content(2))
    world.sync(n)
    assert n.rollback(world.channel) == v1
    assert world.live(n) == world.versions[v1]
    held = world.sync(n)
    assert held.channels[0].status == "held"
    assert world.live(n) == world.versions[v1]
    v3 = world.publish(content(3))
    r = world.sync(n)
    assert r.channels[0].status == "activated"
    assert world.live(n) == world.versions[v3]


def test_a_node_syncs_only_its_subscribed_channels(world: World) -> None:
    world.publish(content(1))
    world.channel = "autre"
    world.publish({"x.txt": b"other channel"})
    world.channel = "lecons"
    n = world.node("centre-a")
    r = world.sync(n)
    assert [c.channel for c in r.channels] == ["lecons"]
    assert n.releases.channels() == ["lecons"]


def test_unreachable_hub_is_a_quiet_skip(world: World) -> None:
    world.publish(content(1))
    n = world.node("centre-a", upstreams=[UpstreamConfig("hub", "http", "http://127.0.0.1:9")])
    r = world.sync(n)
    assert r.skipped and not r.complete
    assert n.releases.active(world.channel) is None
