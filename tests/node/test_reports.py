"""Signed reports: queued while the hub is away, delivered in order, never lost."""

from __future__ import annotations

import pytest

from caravane.node.errors import NodeError
from tests.node.conftest import World, content


def _fleet_row(world: World, node_id: str) -> dict:
    return next(r for r in world.rh.hub.fleet() if r["id"] == node_id)


def test_registration_and_report_reach_the_hub(world: World) -> None:
    world.publish(content(1))
    n = world.node("centre-a")
    n.config.hub_url = world.rh.url
    assert world.sync(n).complete
    n.make_report()
    assert n.send_reports() == 1
    row = _fleet_row(world, n.config.node_id)
    assert row["enrolled"] and row["installed"] == {"lecons": 1}
    assert row["behind"] == {} and row["last_route"] == "network"
    assert n.state.unsent_reports() == []


def test_reports_wait_while_the_hub_is_down_then_all_go(world: World) -> None:
    world.publish(content(1))
    n = world.node("centre-a")
    n.config.hub_url = "http://127.0.0.1:9"  # down
    world.sync(n)
    n.make_report()
    n.make_report()
    with pytest.raises(NodeError, match="not reachable"):
        n.send_reports()
    assert len(n.state.unsent_reports()) == 2
    n.config.hub_url = world.rh.url
    assert n.send_reports() == 2
    assert n.state.unsent_reports() == []
    assert _fleet_row(world, n.config.node_id)["installed"] == {"lecons": 1}


def test_usage_counts_travel_in_the_report(world: World) -> None:
    import urllib.request

    world.publish(content(1))
    n = world.node("centre-a")
    n.config.hub_url = world.rh.url
    world.sync(n)
    url = world.serve_node(n)
    for _ in range(3):
        urllib.request.urlopen(url + "/c/lecons/site/index.html", timeout=5).read()
    req = urllib.request.Request(
        url + "/c/lecons/videos/lecon-1.mp4", headers={"Range": "bytes=1000-"}
    )
    urllib.request.urlopen(req, timeout=5).read()  # a seek is not an opening
    world.servers.pop().stop()  # shutting down flushes the counters
    _, body = n.make_report()
    assert b'"lecons/site/index.html":3' in body
    assert b"lecon-1.mp4" not in body
