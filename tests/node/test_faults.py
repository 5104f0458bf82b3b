"""Bad links and bad upstreams: cuts, stalls, flipped bytes, endless answers, tampering.

Every test checks what the operator would notice: the sync completes (or waits) without
serving anything half-done, bytes fetched again stay within one object or 1 MiB per
interruption, and the upstream that sent bad data is named in the log and set aside.
"""

from __future__ import annotations

import socket
import threading

from caravane.node.config import UpstreamConfig
from caravane.node.upstream import FolderUpstream, HttpUpstream
from caravane.packs.layout import object_relpath
from tests.node.conftest import World, content, random_bytes

MIB = 1 << 20


def _reference_bytes(world: World, name: str) -> int:
    """What a clean sync of the latest release costs, on a fresh centre."""
    ref = world.node(name)
    r = world.sync(ref)
    assert r.complete
    return r.received["hub"]


def test_cut_every_300k_completes_and_refetches_little(world: World) -> None:
    world.publish(content(1, big=4_000_000))
    clean = _reference_bytes(world, "reference")
    proxy = world.proxy()
    proxy.faults.cut_every = 300_000
    n = world.node("centre-a", upstreams=[UpstreamConfig("hub", "http", proxy.url)])
    r = world.sync(n)
    assert r.complete, r.to_dict()
    assert world.live(n) == world.versions[1]
    assert proxy.cuts >= 10
    refetched = r.received["hub"] - clean
    assert refetched <= proxy.cuts * MIB, (refetched, proxy.cuts)


def test_stalled_link_times_out_and_resumes(world: World) -> None:
    world.publish(content(1, big=2_000_000))
    proxy = world.proxy()
    proxy.faults.stall_after = 500_000
    proxy.faults.stall_connections = 1
    n = world.node("centre-a", upstreams=[UpstreamConfig("hub", "http", proxy.url)])
    n.config.timeout_seconds = 1
    r = world.sync(n)
    assert r.complete, r.to_dict()
    assert world.live(n) == world.versions[1]


def test_flipped_byte_in_metadata_is_refused(world: World) -> None:
    v1 = world.publish(content(1))
    n = world.node("centre-a")  # a new centre reads the pack (its whole tree inside) first
    proxy = world.proxy()
    proxy.faults.flip_at = 5_000  # inside the pack, after the channel metadata
    n.config.upstreams = [UpstreamConfig("hub", "http", proxy.url)]
    first = world.sync(n)
    assert first.channels[0].status == "waiting"
    damaged = ("checksum", "corrupt entry")  # a payload's byte, or a header's
    assert any("hub" in e and any(d in e for d in damaged) for e in first.errors), first.errors
    assert n.releases.active(world.channel) is None  # nothing unverified was installed
    second = world.sync(n, ignore_demotion=True)
    assert second.complete, second.to_dict()
    assert world.live(n) == world.versions[v1]


def test_flipped_byte_in_an_update_is_refused_and_the_release_kept(world: World) -> None:
    """An update comes as the pack (its manifest inside): a flipped byte there is refused."""
    v1 = world.publish(content(1))
    n = world.node("centre-a")
    world.sync(n)
    v2 = world.publish(content(2))
    proxy = world.proxy()
    proxy.faults.flip_at = 5_000  # inside the pack's first entries
    n.config.upstreams = [UpstreamConfig("hub", "http", proxy.url)]
    first = world.sync(n)
    assert first.channels[0].status == "waiting"
    assert any("hub" in e and "damaged pack" in e for e in first.errors), first.errors
    assert world.live(n) == world.versions[v1]
    second = world.sync(n, ignore_demotion=True)
    assert second.complete, second.to_dict()
    assert world.live(n) == world.versions[v2]


def test_flipped_byte_in_a_pack_keeps_the_good_part_and_resumes(world: World) -> None:
    v1 = world.publish(content(1))
    n = world.node("centre-a")
    world.sync(n)
    v2 = world.publish(content(2) | {"nouveau.bin": random_bytes(1_500_000, 7)})
    proxy = world.proxy()
    n.config.upstreams = [UpstreamConfig("hub", "http", proxy.url)]
    proxy.faults.flip_at = 1_000_000  # well inside the pack
    first = world.sync(n)
    assert first.channels[0].status == "waiting", first.to_dict()
    assert any("damaged pack" in e for e in first.errors)
    assert world.live(n) == world.versions[v1]
    second = world.sync(n, ignore_demotion=True)
    assert second.complete, second.to_dict()
    assert world.live(n) == world.versions[v2]
    # the entries before the damaged one were kept: at most one pack's worth came again
    assert second.received["hub"] <= first.received["hub"]
    assert n.repo.verify().ok


def _endless_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def handle(c: socket.socket) -> None:
        try:
            c.recv(65536)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
            while True:
                c.sendall(b"\0" * 65536)
        except OSError:
            pass

    def accept() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_server_sending_endless_data_is_cut_off_and_set_aside(world: World) -> None:
    world.publish(content(1, big=500_000))
    srv, port = _endless_server()
    try:
        n = world.node(
            "centre-a",
            upstreams=[
                UpstreamConfig("endless", "mirror", f"http://127.0.0.1:{port}", cost=1),
                UpstreamConfig("hub", "http", world.rh.url, cost=10),
            ],
        )
        r = world.sync(n)
        assert r.complete, r.to_dict()
        assert world.live(n) == world.versions[1]
        assert r.received["endless"] <= 2 * MIB + 65536
        assert any("endless" in e and "more than" in e for e in r.errors)
        assert n.state.demoted_until("endless") is not None
    finally:
        srv.close()


def test_tampered_object_on_a_mirror_is_refused_and_another_upstream_finishes(
    world: World,
) -> None:
    world.publish(content(1))
    bad = world.mirror_copy("bad-mirror")
    good = world.mirror_copy("good-mirror")
    for m in (bad, good):  # no packs: objects one by one
        for p in (m / "packs").rglob("*"):
            if p.is_file():
                p.unlink()
    manifest = world.rh.hub.repo.manifest(world.channel, 1)
    sha = sorted(manifest.chunk_sizes())[0]
    frame = bad / object_relpath(sha)
    frame.write_bytes(world.rh.hub.repo.store.read_frame(sorted(manifest.chunk_sizes())[1]))
    n = world.node(
        "centre-a",
        upstreams=[
            UpstreamConfig("bad-mirror", "folder", str(bad), cost=1),
            UpstreamConfig("good-mirror", "folder", str(good), cost=2),
        ],
    )
    r = world.sync(n)
    assert r.complete, r.to_dict()
    assert world.live(n) == world.versions[1]
    assert any("bad-mirror" in e and "tampered" in e for e in r.errors)
    assert n.state.demoted_until("bad-mirror") is not None
    assert "bad-mirror" in " ".join(e["message"] for e in n.state.recent_events(20))


def test_rolled_back_and_forged_metadata_are_refused_current_release_kept(
    world: World,
) -> None:
    world.publish(content(1))
    old = world.mirror_copy("old-mirror")  # frozen at version 1
    v2 = world.publish(content(2))
    n = world.node("centre-a")
    world.sync(n)
    assert world.live(n) == world.versions[v2]
    forged = world.mirror_copy("forged-mirror")
    meta = forged / "metadata/channels/lecons.json"
    meta.write_bytes(meta.read_bytes().replace(b'"version":2', b'"version":9'))
    n.config.upstreams = [
        UpstreamConfig("old-mirror", "folder", str(old), cost=1),
        UpstreamConfig("forged-mirror", "folder", str(forged), cost=2),
    ]
    r = world.sync(n)
    assert world.live(n) == world.versions[v2]
    text = " ".join(r.errors)
    assert "old-mirror" in text and "older than version 2" in text
    assert "forged-mirror" in text and "signature" in text


def test_transfer_started_over_http_finishes_from_a_folder(world: World) -> None:
    world.publish(content(1, big=4_000_000))
    # the hub builds the pack the node will ask for; a mirror copy then has the same file
    n = world.node("centre-a")
    pack_rel = "packs/lecons/0-1.pack"
    HttpUpstream("warm", world.rh.url + "/repo").read(pack_rel, 64 * MIB)
    mirror = world.mirror_copy("usb-copy")
    pack_size = (mirror / pack_rel).stat().st_size
    proxy = world.proxy()
    proxy.faults.cut_every = pack_size // 2
    proxy.faults.down_after_cuts = 1  # the link goes down for good after the first cut
    n.config.upstreams = [UpstreamConfig("hub", "http", proxy.url)]
    first = world.sync(n, retries=1)
    assert first.channels[0].status == "waiting"
    assert n.releases.active(world.channel) is None
    drive = FolderUpstream("drive", mirror)
    second = n.sync(only=[drive], retry_base=0.05)
    assert second.complete, second.to_dict()
    assert second.received["drive"] < pack_size * 0.6  # continued, not restarted
    assert world.live(n) == world.versions[1]
