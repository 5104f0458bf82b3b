"""Other carriers: a peer centre relays to its neighbour, an rsync source, a static mirror."""

from __future__ import annotations

import shutil

import pytest

from caravane.node.config import UpstreamConfig
from tests.node.conftest import World, content


def test_peer_relay_node_b_syncs_from_node_a_only(world: World) -> None:
    v1 = world.publish(content(1))
    a = world.node("centre-a")
    assert world.sync(a).complete
    peer_url = world.serve_node(a)
    b = world.node("centre-b", upstreams=[UpstreamConfig("centre-a", "peer", peer_url)])
    r = world.sync(b)
    assert r.complete, r.to_dict()
    assert set(r.received) == {"centre-a"}
    assert world.live(b) == world.versions[v1]
    assert r.channels[0].route == "peer"

    v2 = world.publish(content(2))
    assert world.sync(a).complete
    r2 = world.sync(b)
    assert r2.complete and world.live(b) == world.versions[v2]


def test_peer_does_not_serve_anything_but_its_store(world: World) -> None:
    import urllib.error
    import urllib.request

    world.publish(content(1))
    a = world.node("centre-a")
    world.sync(a)
    url = world.serve_node(a)
    for path in (
        "/repo/keys/node.pem",
        "/repo/../node.toml",
        "/repo/%2e%2e/node.toml",
        "/repo/node.db",
    ):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + path, timeout=5)
        assert err.value.code in (400, 404)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="the rsync program is not installed")
def test_rsync_source(world: World) -> None:
    v1 = world.publish(content(1))
    # an rsync module serves a mirror the hub pushed (loose objects; the hub's own folder
    # keeps them in segments); rsync reads only the repository paths it is asked for
    source = str(world.mirror_copy("rsync-module"))
    n = world.node("centre-a", upstreams=[UpstreamConfig("rsync", "rsync", source)])
    r = world.sync(n)
    assert r.complete, r.to_dict()
    assert world.live(n) == world.versions[v1]
    assert r.channels[0].route == "rsync"
    # the next release is seen: metadata is never answered from rsync's local cache
    v2 = world.publish(content(2))
    world.mirror_copy("rsync-module")
    r = world.sync(n)
    assert r.complete and world.live(n) == world.versions[v2]


def test_static_mirror_over_http(world: World) -> None:
    """Any static web server can serve a mirror: here the hub's /repo/ as a plain mirror."""
    v1 = world.publish(content(1))
    n = world.node("centre-a", upstreams=[UpstreamConfig("cdn", "mirror", world.rh.url + "/repo")])
    r = world.sync(n)
    assert r.complete and world.live(n) == world.versions[v1]
    assert r.channels[0].route == "mirror"
