"""The compromised-key drill of docs/TRUST.md, end to end (issue 12).

Over HTTP: a real hub on 127.0.0.1, a centre's node agent, and a thief's static mirror
serving a release signed with the stolen release key. Over drives: ``usb prepare`` before
and after the rotation, ``usb import`` at a centre's store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from caravane.hub.cli import record_rotation
from caravane.node.config import UpstreamConfig
from caravane.packs.bundle import DriveError, Target, import_drive, prepare
from caravane.packs.centre_store import CentreStore
from caravane.packs.hub_repository import HubRepository
from caravane.protocol.keys import PrivateKey
from tests.foundation.conftest import write_tree
from tests.node.conftest import World
from tests.node.test_http import static_mirror
from tests.support.simulator import forge_release


def small(version: int) -> dict[str, bytes]:
    return {"site/index.html": f"<h1>v{version}</h1>".encode(), "a.txt": b"texte " * 100}


def test_drill_over_http_a_centre_recovers_from_a_stolen_release_key(world: World) -> None:
    world.publish(small(1))
    hub: HubRepository = world.rh.hub.repo  # type: ignore[assignment]
    stolen = PrivateKey.load(hub.key_path("release"))
    # the thief's mirror: a copy of the hub's repository plus a release it signed
    src = write_tree(world.tmp / "evil-src", {"site/index.html": b"<h1>pwned</h1>"})
    forged = forge_release(hub, src, world.channel, 1_000_000, stolen)
    evil_dir = world.mirror_copy("evil")  # with the forged objects
    for rel, data in forged.items():
        (evil_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (evil_dir / rel).write_bytes(data)
    evil_url = static_mirror(evil_dir, world.servers)
    node = world.node(
        "centre",
        upstreams=[
            UpstreamConfig("hub", "http", world.rh.url),
            UpstreamConfig("evil", "mirror", evil_url + "/"),
        ],
    )
    try:
        res = world.sync(node)
        assert world.live(node)["site/index.html"] == b"<h1>pwned</h1>", res.to_dict()

        # the drill: new release key, rotation with the offline root key, a new release
        root_key = PrivateKey.load(hub.key_path("root"))
        new_release = PrivateKey.generate()
        result = hub.rotate_keys(root_key, None, new_release)
        record_rotation(world.rh.hub, result.root_version, result.channels)
        assert result.channels == {world.channel: 2}
        world.publish(small(3))

        res = world.sync(node)
        assert world.live(node)["site/index.html"] == b"<h1>v3</h1>", res.to_dict()
        assert node.repo.trusted.root.version == 2
        assert node.repo.known_version(world.channel) == 3
        assert any("revoked" in e for e in res.errors), res.errors  # the thief's mirror
        versions = [r["version"] for r in world.rh.hub.channel(world.channel)["releases"]]
        assert versions == [1, 2, 3]
    finally:
        node.close()


CHANNEL = "lecons"


@pytest.mark.parametrize("root", [False, True], ids=["release", "release-and-root"])
def test_drill_over_drives(tmp_path: Path, root: bool) -> None:
    hub = HubRepository.init(tmp_path / "hub")
    hub.publish(CHANNEL, write_tree(tmp_path / "s1", small(1)))
    store = CentreStore.init(tmp_path / "store", hub.trusted.root_bytes)
    first = tmp_path / "first-drive"
    first.mkdir()
    prepare(hub, first, [Target("A", {CHANNEL: 0})], [CHANNEL])
    assert import_drive(store, first).ok
    assert store.latest_local_version(CHANNEL) == 1

    new_root = PrivateKey.generate() if root else None
    hub.rotate_keys(PrivateKey.load(hub.key_path("root")), new_root, PrivateKey.generate())
    hub.publish(CHANNEL, write_tree(tmp_path / "s3", small(3)))
    drive = tmp_path / "drive"
    drive.mkdir()
    prepare(hub, drive, [Target("A", {CHANNEL: 1})], [CHANNEL])
    out = import_drive(store, drive)
    assert out.ok, out.to_dict()
    assert store.trusted.root.version == 2
    assert store.latest_local_version(CHANNEL) == 3
    store.checkout(CHANNEL, tmp_path / "out")
    assert (tmp_path / "out/site/index.html").read_bytes() == b"<h1>v3</h1>"


def test_a_drive_prepared_before_the_rotation_is_named_as_such(tmp_path: Path) -> None:
    hub = HubRepository.init(tmp_path / "hub")
    hub.publish(CHANNEL, write_tree(tmp_path / "s1", small(1)))
    hub.publish(CHANNEL, write_tree(tmp_path / "s2", small(2)))
    store = CentreStore.init(tmp_path / "store", hub.trusted.root_bytes)
    store.apply_pack(_pack(hub, tmp_path, 0, 1))
    old_drive = tmp_path / "old-drive"
    old_drive.mkdir()
    prepare(hub, old_drive, [Target("A", {CHANNEL: 1})], [CHANNEL])
    hub.rotate_keys(PrivateKey.load(hub.key_path("root")), None, PrivateKey.generate())
    store.apply_pack(_pack(hub, tmp_path, 1, 3))  # the centre moved on by the network
    with pytest.raises(DriveError, match="before the hub changed its keys"):
        import_drive(store, old_drive)


def _pack(hub: HubRepository, tmp: Path, a: int, b: int) -> Path:
    out = tmp / f"{a}-{b}.pack"
    hub.build_pack(CHANNEL, a, b, out)
    return out
