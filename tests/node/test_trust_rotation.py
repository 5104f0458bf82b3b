"""Key lifecycle at a centre (issue 12): rotations, a stolen release key, bounded root walks.

Each scenario publishes with the real hub code into the simulator, rotates keys with the
hub's real rotation, and runs the centre's real sync engine against dict-served upstreams.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from caravane.packs.centre_store import CentreStore
from caravane.packs.layout import channel_relpath, root_relpath
from caravane.protocol.errors import ExpiredError, SignatureError, VerificationError
from caravane.protocol.keys import PrivateKey
from caravane.protocol.metadata import Root, sign_envelope
from caravane.protocol.trust import MAX_ROOT_ROTATIONS
from tests.support.simulator import Centre, RepositorySimulator


def tree(version: int) -> dict[str, bytes]:
    return {"index.html": f"<h1>v{version}</h1>".encode(), "a/b.txt": b"texte " * 200}


def installed(sim: RepositorySimulator, centre: Centre, version: int) -> None:
    sim.publish(tree(version))
    res = centre.sync([sim.upstream("mirror")])
    assert res.complete, res.to_dict()
    assert centre.live()["index.html"] == f"<h1>v{version}</h1>".encode()


@pytest.mark.parametrize(
    "root, release",
    [(False, True), (True, False), (True, True)],
    ids=["release", "root", "both"],
)
def test_a_centre_holding_a_channel_keeps_updating_across_a_rotation(
    sim: RepositorySimulator, centre: Centre, root: bool, release: bool
) -> None:
    installed(sim, centre, 1)
    rotation = sim.rotate(root=root, release=release)
    assert rotation.root_version == 2 and rotation.channels == {"lecons": 2}
    sim.publish(tree(3))  # signed by the (new) release key
    res = centre.sync([sim.upstream("mirror-after")])
    assert res.ok and res.complete, res.to_dict()
    assert centre.repo.trusted.root.version == 2
    assert centre.live()["index.html"] == b"<h1>v3</h1>"
    assert centre.repo.known_version("lecons") == 3


def test_the_re_signed_version_alone_moves_a_centre_to_the_new_key(
    sim: RepositorySimulator, centre: Centre
) -> None:
    installed(sim, centre, 1)
    sim.rotate(release=True)
    res = centre.sync([sim.upstream("mirror-after")])
    assert res.complete, res.to_dict()
    assert centre.repo.known_version("lecons") == 2  # the bump, signed by the new key
    assert centre.live()["index.html"] == b"<h1>v1</h1>"  # same files, served on
    assert not centre.repo.snapshot().revoked("lecons")


def test_fast_forward_recovery_after_a_stolen_release_key(
    sim: RepositorySimulator, centre: Centre
) -> None:
    installed(sim, centre, 1)
    hub = sim.upstream("hub")
    # the thief signs version 1,000,000 with the stolen key and serves it from a mirror
    stolen = sim.release_key
    evil = sim.upstream("evil-mirror")
    for path, data in sim.forge({"index.html": b"<h1>pwned</h1>"}, 1_000_000, stolen).items():
        evil.replace(path, data)
    assert centre.sync([hub, evil]).complete
    assert centre.live()["index.html"] == b"<h1>pwned</h1>"
    assert centre.repo.known_version("lecons") == 1_000_000

    # the hub rotates the release key; the old key's metadata is revoked everywhere
    sim.rotate(release=True)
    before = sim.snapshot()
    # a carrier that holds the new root but only pre-rotation channel metadata: the
    # installed release is still served, and the attacker's floor no longer counts
    only_root = sim.upstream("drive-with-root-only")
    only_root.freeze({k: v for k, v in before.items() if "channels" not in k})
    only_root.replace(channel_relpath("lecons"), evil._file(channel_relpath("lecons")) or b"")
    res = centre.sync([only_root])
    assert centre.repo.trusted.root.version == 2
    assert centre.live()["index.html"] == b"<h1>pwned</h1>"
    assert centre.repo.known_version("lecons") is None
    assert any("revoked" in e for e in res.errors), res.errors

    sim.publish(tree(3))
    res = centre.sync([sim.upstream("hub-after"), evil])
    assert res.complete, res.to_dict()
    assert centre.live()["index.html"] == b"<h1>v3</h1>"
    assert centre.repo.known_version("lecons") == 3
    # and the thief's metadata stays refused: it is not replayed as the centre's own
    assert any("revoked" in e for e in res.errors), res.errors


def test_a_revoked_key_cannot_sign_new_metadata_for_a_rotated_centre(
    sim: RepositorySimulator, centre: Centre
) -> None:
    installed(sim, centre, 1)
    stolen = sim.release_key
    sim.rotate(release=True)
    assert centre.sync([sim.upstream("hub")]).complete
    forged = sim.forge({"index.html": b"<h1>pwned</h1>"}, 50, stolen)
    with pytest.raises(SignatureError, match="revoked"):
        centre.repo.accept_channel("lecons", forged[channel_relpath("lecons")], "forged")
    assert centre.repo.known_version("lecons") == 2


def test_root_updates_are_bounded_per_pass(sim: RepositorySimulator, centre: Centre) -> None:
    key = sim.root_key
    root = sim.repo.trusted.root
    keys = {role: [root.keys[k] for k in root.roles[role].keyids] for role in ("root", "release")}
    up = sim.upstream("endless")
    for v in range(2, MAX_ROOT_ROTATIONS + 3):
        up.replace(root_relpath(v), sign_envelope(Root.new(v, keys).to_dict(), [key]))
    res = centre.sync([up])
    assert centre.repo.trusted.root.version == 1 + MAX_ROOT_ROTATIONS
    assert any(f"more than {MAX_ROOT_ROTATIONS} new root versions" in e for e in res.errors)
    # the walk so far is kept: each root accepted was verified on its own
    assert (centre.repo.path / root_relpath(1 + MAX_ROOT_ROTATIONS)).is_file()


def test_a_badly_signed_intermediate_root_then_a_good_one(
    sim: RepositorySimulator, centre: Centre
) -> None:
    installed(sim, centre, 1)
    sim.rotate(root=True, release=True)
    sim.rotate(release=True)
    sim.publish(tree(4))
    bad = sim.upstream("bad")
    # root 2 signed by a key nobody trusts, in place of the real one
    other = Root.from_dict(json.loads(sim.files[root_relpath(2)])["signed"], "root 2")
    bad.replace(root_relpath(2), sign_envelope(other.to_dict(), [PrivateKey.generate()]))
    res = centre.sync([bad])
    assert centre.repo.trusted.root.version == 1
    assert centre.live()["index.html"] == b"<h1>v1</h1>"
    assert not res.ok
    res = centre.sync([sim.upstream("good")])
    assert res.complete, res.to_dict()
    assert centre.repo.trusted.root.version == 3
    assert centre.live()["index.html"] == b"<h1>v4</h1>"


def test_a_pack_after_a_release_rotation_updates_a_store(
    sim: RepositorySimulator, tmp_path: Path
) -> None:
    sim.publish(tree(1))
    store = CentreStore.init(tmp_path / "store", sim.root_bytes)
    store.apply_pack(sim.repo.path / sim.build_pack(0, 1))
    stolen = sim.release_key
    sim.rotate(release=True)
    sim.publish(tree(3))
    old_pack_meta = sim.forge({"x": b"y"}, 9, stolen)[channel_relpath("lecons")]
    store.apply_pack(sim.repo.path / sim.build_pack(1, 3))
    assert store.trusted.root.version == 2 and store.known_version("lecons") == 3
    with pytest.raises(VerificationError, match="revoked"):
        store.accept_channel("lecons", old_pack_meta, "old drive")


KINDS = ("http", "peer", "mirror", "rsync", "folder")


def test_expired_metadata_is_refused_from_every_kind_and_the_installed_release_is_served(
    sim: RepositorySimulator, tmp_path: Path
) -> None:
    sim.publish(tree(1))
    sim.expire_in(3)
    centres = {k: Centre.create(tmp_path / f"centre-{k}", sim) for k in KINDS}
    store = CentreStore.init(tmp_path / "drive-store", sim.root_bytes)
    try:
        for kind, c in centres.items():
            assert c.sync([sim.upstream(f"{kind}-1", kind=kind)]).complete
        pack = sim.repo.path / sim.build_pack(0, 1)
        store.apply_pack(pack)
        time.sleep(4)  # the metadata every centre holds has now expired
        sim.publish(tree(2))
        sim.expire_in(-1)  # and the carriers only have expired metadata of version 2
        for kind, c in centres.items():
            res = c.sync([sim.upstream(f"{kind}-2", kind=kind)])
            assert any("expired on" in e for e in res.errors), (kind, res.errors)
            assert c.live()["index.html"] == b"<h1>v1</h1>", kind  # still served
            assert c.repo.known_version("lecons") == 1
        with pytest.raises(ExpiredError):
            store.apply_pack(sim.repo.path / sim.build_pack(1, 2))
        store.checkout("lecons", tmp_path / "out")  # what the drive brought is still served
        assert (tmp_path / "out/index.html").read_bytes() == b"<h1>v1</h1>"
    finally:
        for c in centres.values():
            c.close()
