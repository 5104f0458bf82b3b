"""A centre takes a release of any size without holding its file list (packs/centre_store.py).

What an operator notices: an update's pack applies and checks out the signed files, whatever
changed where in the tree (files in several leaves, added, removed, sent as deltas against
their old versions); a pack whose changed piece was damaged is refused and the release held
before stays the one served; a manifest fetched from a mirror is verified piece by piece,
and one whose piece is damaged is not kept.
"""

from __future__ import annotations

import pytest

from caravane.packs.centre_store import CentreStore
from caravane.packs.packfile import MAGIC, encode_entry, read_entries
from caravane.protocol import tree
from caravane.protocol.errors import CaravaneError
from caravane.protocol.metadata import Manifest

from .conftest import RepoSim, read_tree

N = 3_000  # several leaves and a level of nodes


def _page(i: int, extra: str = "") -> str:
    return f"<html><title>page {i}</title><p>{'savoir eau sante ' * (i % 7 + 3)}{extra}</p>\n"


def _releases() -> tuple[dict[str, bytes | str], dict[str, bytes | str]]:
    v1: dict[str, bytes | str] = {f"d{i // 1000}/p{i:05d}.html": _page(i) for i in range(N)}
    v2 = dict(v1)
    for i in (12, 1_499, 2_987):  # three leaves far apart
        v2[f"d{i // 1000}/p{i:05d}.html"] = _page(i, " une phrase ajoutee cette semaine")
    del v2["d1/p01200.html"]
    v2["d2/p02500-bis.html"] = _page(2_500, " nouvelle")
    return v1, v2


def _no_whole_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if anything decodes a whole file list (what costs GBs at a million files)."""

    def refuse(*args: object, **kw: object) -> Manifest:
        raise AssertionError("decoded the whole file list")

    monkeypatch.setattr(tree, "decode_manifest", refuse)


def test_an_update_pack_touching_several_leaves_gives_the_signed_files(
    sim: RepoSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1_files, v2_files = _releases()
    v1, v2 = sim.publish(v1_files), sim.publish(v2_files)
    store = sim.store()
    store.apply_pack(sim.pack(0, v1))
    pack = sim.pack(v1, v2)
    assert any(e.kind == "delta" for e in read_entries(pack))
    _no_whole_list(monkeypatch)
    result = store.apply_pack(pack)
    assert (result.channel, result.version, result.complete) == ("maths", v2, True)
    monkeypatch.undo()
    out = sim.tmp / "out"
    store.checkout("maths", out)
    assert read_tree(out) == {
        p: d.encode() if isinstance(d, str) else d for p, d in v2_files.items()
    }


def test_an_update_pack_whose_changed_piece_is_damaged_is_refused(sim: RepoSim) -> None:
    v1_files, v2_files = _releases()
    v1, v2 = sim.publish(v1_files), sim.publish(v2_files)
    store = sim.store()
    store.apply_pack(sim.pack(0, v1))
    forged = sim.tmp / "forged.pack"
    with open(forged, "wb") as fh:
        fh.write(MAGIC)
        for e in read_entries(sim.pack(v1, v2)):
            hdr = {k: v for k, v in e.header.items() if k not in ("kind", "length")}
            payload = e.payload
            if e.kind == "tree":  # one byte of the changed pieces, on the way
                data = bytearray(payload)
                data[len(data) // 2] ^= 0x01
                payload = bytes(data)
            if e.kind != "end":
                fh.write(encode_entry(e.kind, hdr, payload))
    with pytest.raises(CaravaneError):
        store.apply_pack(forged)
    fresh = CentreStore(store.path)  # a new process: nothing in memory
    assert not (fresh.path / f"manifests/maths/{v2}.json").exists()
    out = sim.tmp / "out"
    fresh.checkout("maths", out)  # the release held before is still whole
    assert read_tree(out) == {
        p: d.encode() if isinstance(d, str) else d for p, d in v1_files.items()
    }


def test_a_fetched_manifest_is_verified_piece_by_piece(sim: RepoSim) -> None:
    v1_files, v2_files = _releases()
    v1, v2 = sim.publish(v1_files), sim.publish(v2_files)
    store = sim.store()
    store.apply_pack(sim.pack(0, v1))
    store.accept_channel("maths", sim.hub_file("metadata/channels/maths.json").read_bytes(), "t")
    doc = sim.hub_file(f"manifests/maths/{v2}.json").read_bytes()
    leaf = sim.piece_of(v2, "d1/p01499.html")
    size = sim.hub.manifest("maths", v2).tree_objects[leaf]
    good = sim.hub.store.read(leaf, size)

    def fetch(damaged: bool):  # what an upstream's objects bring
        def get(need: dict[str, int]) -> None:
            for sha, n in need.items():
                data = sim.hub.store.read(sha, n)
                if damaged and sha == leaf:
                    data = data.replace(b"p01499", b"p01498")
                store.store.put_raw(data, sha)

        return get

    with pytest.raises(CaravaneError):
        store.accept_manifest("maths", v2, doc, fetch(damaged=True))
    assert not (store.path / f"manifests/maths/{v2}.json").exists()
    store.store.remove(leaf)
    release = store.accept_manifest("maths", v2, doc, fetch(damaged=False))
    assert (release.version, release.files) == (v2, len(v2_files))
    assert store.store.read(leaf, size) == good
    changed = [b.path for a, b in release.changes_from(store.release("maths", v1)) if b]
    assert changed == [
        "d0/p00012.html",
        "d1/p01499.html",
        "d2/p02500-bis.html",
        "d2/p02987.html",
    ]
