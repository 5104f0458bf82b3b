"""Names every carrier can hold, channels a centre subscribes to, manifests that lie (issue 12)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from caravane.packs.centre_store import CentreStore
from caravane.packs.errors import PackError
from caravane.packs.layout import channel_relpath, manifest_relpath, pack_relpath
from caravane.protocol.canonical import canonical_bytes
from caravane.protocol.errors import PathError
from caravane.protocol.metadata import ChannelMeta, Manifest, ReleaseRef, sign_envelope
from caravane.protocol.paths import check_path
from tests.support.simulator import Centre, RepositorySimulator

BAD_NAMES = [
    "CON",
    "docs/con.txt",
    "aux.tar.gz",
    "NUL",
    "prn.html",
    "COM1",
    "lpt9.log",
    "q?.txt",
    "a<b.txt",
    'say"hi".txt',
    "pipe|x",
    "star*.txt",
    "colon/a:b",
    "trailing.",
    "folder./x.txt",
    "trailing space ",
    "tab\there",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_publish_refuses_a_name_windows_or_fat32_cannot_hold(
    sim: RepositorySimulator, tmp_path: Path, name: str
) -> None:
    src = tmp_path / "src"
    (src / name).parent.mkdir(parents=True, exist_ok=True)
    (src / name).write_bytes(b"x")
    with pytest.raises(PathError, match="manifest path") as err:
        sim.repo.publish("lecons", src)
    # the message names the path, or the name in it that is refused (a folder's listing
    # is checked before anything in it: "folder./x.txt" is refused as 'folder.')
    shown = str(err.value)
    assert repr(name) in shown or any(repr(part) in shown for part in name.split("/"))
    assert sim.repo.channels() == []  # nothing signed


@pytest.mark.parametrize("name", ["Console.txt", "COM10", "aux-notes/a.txt", "con_x.txt", "a.b"])
def test_names_that_only_look_reserved_are_published(name: str) -> None:
    assert check_path(name) == name


def resign_release(
    sim: RepositorySimulator, version: int, manifest: dict[str, Any]
) -> dict[str, bytes]:
    """Channel metadata naming ``manifest`` as ``version``, signed with the release key."""
    mbytes = canonical_bytes(manifest)
    meta = sim.repo.channel_meta("lecons")
    releases = dict(meta.releases)
    releases[version] = ReleaseRef(
        version, hashlib.sha256(mbytes).hexdigest(), len(mbytes), manifest["created"], 0, 0
    )
    signed = ChannelMeta("lecons", version, releases, meta.title, None)
    return {
        manifest_relpath("lecons", version): mbytes,
        channel_relpath("lecons"): sign_envelope(signed.to_dict(), [sim.release_key]),
    }


def served_v1(sim: RepositorySimulator, centre: Centre) -> dict[str, Any]:
    sim.publish({"index.html": b"<h1>v1</h1>", "a.txt": b"un"})
    assert centre.sync([sim.upstream("first")]).complete
    # as a format 1 document (one flat file list), which centres still read: a forger
    # edits it most easily; format 2 trees get the same attacks in tests/foundation
    m = sim.repo.manifest("lecons", 1)
    return Manifest(m.channel, m.version, m.created, m.files, m.notes).to_dict()


def test_a_centre_refuses_a_signed_manifest_with_a_reserved_name(
    sim: RepositorySimulator, centre: Centre
) -> None:
    doc = served_v1(sim, centre)
    doc["version"] = 2
    doc["files"][0]["path"] = "CON.txt"
    up = sim.upstream("bad")
    for path, data in resign_release(sim, 2, doc).items():
        up.replace(path, data)
    res = centre.sync([up])
    assert not res.complete
    assert any("'CON.txt'" in e for e in res.errors), res.errors
    assert centre.live()["index.html"] == b"<h1>v1</h1>"
    assert not (centre.repo.path / manifest_relpath("lecons", 2)).exists()


@pytest.mark.parametrize("claim", [("autre", 2), ("lecons", 3)], ids=["channel", "version"])
def test_a_manifest_claiming_another_channel_or_version_is_refused(
    sim: RepositorySimulator, centre: Centre, claim: tuple[str, int]
) -> None:
    doc = served_v1(sim, centre)
    doc["channel"], doc["version"] = claim
    up = sim.upstream("bad")
    for path, data in resign_release(sim, 2, doc).items():
        up.replace(path, data)
    res = centre.sync([up])
    assert any(f"it claims {claim[0]!r} v{claim[1]}" in e for e in res.errors), res.errors
    assert centre.live()["index.html"] == b"<h1>v1</h1>"


def test_the_same_version_signed_again_with_other_content_changes_nothing(
    sim: RepositorySimulator, centre: Centre
) -> None:
    doc = served_v1(sim, centre)
    sim.publish({"index.html": b"<h1>v2</h1>"})
    assert centre.sync([sim.upstream("hub")]).complete
    kept = (centre.repo.path / channel_relpath("lecons")).read_bytes()
    doc["version"] = 2  # v1's files, as a second "version 2"
    up = sim.upstream("other-v2")
    for path, data in resign_release(sim, 2, doc).items():
        up.replace(path, data)
    res = centre.sync([up])
    assert res.complete, res.to_dict()
    assert (centre.repo.path / channel_relpath("lecons")).read_bytes() == kept
    assert centre.live()["index.html"] == b"<h1>v2</h1>"


def test_a_pack_for_a_channel_not_subscribed_is_refused_before_anything_is_written(
    sim: RepositorySimulator, tmp_path: Path
) -> None:
    sim.publish({"a.txt": b"un"})
    sim.publish({"b.txt": b"autre chose"}, channel="autre")
    sim.rotate(release=True)  # the pack carries root 2 as well
    store = CentreStore.init(tmp_path / "store", _root1(sim))  # pinned before rotation
    (store.path / ".lock").touch()  # the writer lock is not content
    before = sorted(str(p.relative_to(store.path)) for p in store.path.rglob("*"))
    pack = sim.repo.path / sim.build_pack(0, 2, channel="autre")
    with pytest.raises(PackError, match="does not subscribe"):
        store.apply_pack(pack, channels=["lecons"])
    after = sorted(str(p.relative_to(store.path)) for p in store.path.rglob("*"))
    assert after == before
    assert store.trusted.root.version == 1
    # the same pack is taken by a centre that subscribes to it
    assert store.apply_pack(pack, channels=["autre"]).version == 2


def _root1(sim: RepositorySimulator) -> bytes:
    return (sim.repo.path / "metadata/root/1.json").read_bytes()


def test_sync_refuses_a_pack_of_another_channel_served_at_its_path(
    sim: RepositorySimulator, centre: Centre
) -> None:
    sim.publish({"a.txt": b"un"})
    sim.publish({"b.txt": b"autre chose"}, channel="autre")
    sim.build_pack(0, 1, channel="autre")
    up = sim.upstream("mixed-up")
    up.replace(pack_relpath("lecons", 0, 1), sim.files[pack_relpath("autre", 0, 1)])
    for p in [k for k in sim.files if k.startswith(("objects/", "manifests/"))]:
        up.delete(p)  # only packs: the centre must use the one at lecons' path
    res = centre.sync([up])
    assert not res.complete
    assert any("does not subscribe" in e for e in res.errors), res.errors
    assert not (centre.repo.path / channel_relpath("autre")).exists()
    assert not (centre.repo.path / "manifests" / "autre").exists()
