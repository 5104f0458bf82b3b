"""A one-file update's signed metadata, named in few bytes (packs/compact.py).

What a centre pays every week for one changed page is the pack's channel metadata,
manifest document and changed tree pieces. The channel metadata is compressed against a
prefix both sides build from the base release, and the tree entries name their base pieces
by short prefixes; packs built before either still apply, and a name or prefix that does
not match what the centre holds is refused, the centre still on its release.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravane.packs import compact, delta
from caravane.packs.errors import PackError
from caravane.packs.hub_repository import HubRepository
from caravane.packs.packfile import PackWriter, read_entries
from caravane.packs.store import compress
from caravane.protocol import tree
from caravane.protocol.errors import CaravaneError, NotFoundError

from .conftest import RepoSim, read_tree

N = 3_000


def library(edit: int | None = None) -> dict[str, bytes | str]:
    files: dict[str, bytes | str] = {
        f"d{i // 500}/page-{i:05d}.html": f"<p>page {i} : eau, ecole, lecon {i * 7}</p>\n"
        for i in range(N)
    }
    if edit is not None:
        files[f"d{edit // 500}/page-{edit:05d}.html"] += "<p>une phrase de plus</p>\n"
    return files


@pytest.fixture
def updated(sim: RepoSim) -> RepoSim:
    sim.publish(library())
    sim.publish(library(edit=1234))
    return sim


def _metadata_bytes(pack: Path) -> int:
    return sum(e.length for e in read_entries(pack) if e.kind in ("metadata", "manifest", "tree"))


def rewrite(
    pack: Path,
    out: Path,
    edit: Callable[[str, dict[str, Any], bytes], tuple[dict, bytes] | None],
) -> Path:
    """``pack`` with each entry passed through ``edit``, written as a valid pack."""
    writer = PackWriter(out)
    summary: dict[str, Any] = {}
    for e in read_entries(pack):
        header = {k: v for k, v in e.header.items() if k not in ("kind", "length")}
        if e.kind == "end":
            summary = header["summary"]
            continue
        edited = edit(e.kind, header, e.payload)
        if edited is not None:  # None: the entry left out
            writer.add(e.kind, *edited)
    writer.finish(summary)
    return out


def as_built_before(sim: RepoSim, pack: Path, out: Path) -> Path:
    """The same pack as the previous release of Caravane wrote it: metadata compressed
    alone, every base piece named by its full id and length under ``base``."""
    doc = sim.hub.manifest_bytes(sim.channel, 1)
    known = compact.KnownPieces(tree.parse_doc(doc).root)

    def edit(kind: str, header: dict[str, Any], payload: bytes) -> tuple[dict, bytes]:
        if kind == "metadata" and header.pop("dict", None):
            base = compact.channel_prefix(doc if header.pop("base_version") else None)
            data = delta.decompress_group(base, payload, _declared(payload), "test")
            return header, compress(data)
        if kind == "tree":
            full = []
            for item in header.pop("bases"):
                sha, length, ref = known.resolve(item, "test")
                full.append([sha, length])
                if ref is not None:
                    known.learn(ref, sim.hub.store.read(sha, length), "test")
            return dict(header, base=full, base_manifest=False), payload
        return header, payload

    return rewrite(pack, out, edit)


def _declared(frame: bytes) -> int:
    import zstandard

    return int(zstandard.get_frame_parameters(frame).content_size)


def test_a_one_file_update_carries_under_a_kilobyte_of_signed_metadata(
    updated: RepoSim, tmp_path: Path
) -> None:
    pack = updated.pack(1, 2)
    before = as_built_before(updated, pack, tmp_path / "before.pack")
    # the channel metadata, the manifest document and the changed pieces of the tree
    assert _metadata_bytes(pack) <= 1024, _metadata_bytes(pack)
    assert _metadata_bytes(before) - _metadata_bytes(pack) >= 300  # what the names saved
    trees = [e for e in read_entries(pack) if e.kind == "tree"]
    assert trees and all(isinstance(b, str) for e in trees for b in e.header["bases"])
    store = updated.store()
    store.apply_pack(updated.pack(0, 1))
    store.apply_pack(pack)
    store.checkout(updated.channel, tmp_path / "out")
    assert read_tree(tmp_path / "out") == {
        k: v.encode() if isinstance(v, str) else v for k, v in library(edit=1234).items()
    }


def test_a_pack_built_before_the_short_names_still_applies(
    updated: RepoSim, tmp_path: Path
) -> None:
    old = as_built_before(updated, updated.pack(1, 2), tmp_path / "before.pack")
    assert not any("dict" in e.header for e in read_entries(old))
    store = updated.store()
    store.apply_pack(updated.pack(0, 1))
    store.apply_pack(old)
    assert store.latest_local_version(updated.channel) == 2
    assert store.verify().ok


def _tree_bases(pack: Path, out: Path, change: Callable[[list[Any]], list[Any]]) -> Path:
    def edit(kind: str, header: dict[str, Any], payload: bytes) -> tuple[dict, bytes]:
        if kind == "tree":
            header = dict(header, bases=change(list(header["bases"])))
        return header, payload

    return rewrite(pack, out, edit)


@pytest.mark.parametrize(
    "change",
    [
        lambda b: ["0123456789ab", *b[1:]],  # a name the centre knows no piece by
        lambda b: [b[0], b[2], b[1], *b[3:]],  # two known names swapped: the wrong bases
        lambda b: [b[0][:8], *b[1:]],  # a name cut short
        lambda b: [[b[0], "831"], *b[1:]],  # a full name of the wrong shape
    ],
    ids=["unknown", "swapped", "short", "malformed"],
)
def test_a_base_name_that_does_not_match_is_refused_and_v1_kept(
    updated: RepoSim, tmp_path: Path, change: Callable[[list[Any]], list[Any]]
) -> None:
    bad = _tree_bases(updated.pack(1, 2), tmp_path / "bad.pack", change)
    store = updated.store()
    store.apply_pack(updated.pack(0, 1))
    held = set(store.store.iter_ids())
    with pytest.raises(CaravaneError, match="base piece|not name|does not hold|zstd|corrupt"):
        store.apply_pack(bad)
    assert store.latest_local_version(updated.channel) == 1
    # at most pieces the signed release names, verified before the bad one (as a pack cut
    # short keeps them), never anything else
    assert set(store.store.iter_ids()) - held <= set(updated.hub.store.iter_ids())
    assert store.verify().ok
    store.apply_pack(updated.pack(1, 2))  # the good pack still applies after it
    assert store.latest_local_version(updated.channel) == 2


def _metadata_header(pack: Path, out: Path, **changes: Any) -> Path:
    def edit(kind: str, header: dict[str, Any], payload: bytes) -> tuple[dict, bytes]:
        if kind == "metadata":
            header = dict(header, **changes)
        return header, payload

    return rewrite(pack, out, edit)


def test_metadata_against_a_prefix_this_version_does_not_know_says_to_upgrade(
    updated: RepoSim, tmp_path: Path
) -> None:
    bad = _metadata_header(updated.pack(1, 2), tmp_path / "bad.pack", dict="channel-9")
    store = updated.store()
    store.apply_pack(updated.pack(0, 1))
    with pytest.raises(PackError, match="upgrade this centre's software"):
        store.apply_pack(bad)
    assert store.latest_local_version(updated.channel) == 1


def test_metadata_against_a_release_the_centre_lacks_says_to_apply_in_order(
    sim: RepoSim, tmp_path: Path
) -> None:
    sim.publish(library())
    sim.publish(library(edit=1))
    sim.publish(library(edit=2))
    store = sim.store()
    store.apply_pack(sim.pack(0, 1))
    with pytest.raises(NotFoundError, match="apply the packs in order"):
        store.apply_pack(sim.pack(2, 3))
    assert store.latest_local_version(sim.channel) == 1


def test_metadata_decompressed_against_the_wrong_release_is_refused(
    sim: RepoSim, tmp_path: Path
) -> None:
    """A pack whose metadata says it starts from v1 when it was compressed from v2's
    document: the bytes that come out do not verify, and nothing changes."""
    sim.publish(library())
    sim.publish(library(edit=1))
    sim.publish(library(edit=2))
    store = sim.store()
    store.apply_pack(sim.pack(0, 1))
    store.apply_pack(sim.pack(1, 2))
    bad = _metadata_header(sim.pack(2, 3), tmp_path / "bad.pack", base_version=1)
    with pytest.raises(CaravaneError):
        store.apply_pack(bad)
    assert store.latest_local_version(sim.channel) == 2


def test_the_channel_prefix_is_the_skeleton_for_a_first_pack_or_an_odd_document() -> None:
    skeleton = compact.channel_prefix(None)
    assert compact.channel_prefix(b"") == skeleton
    assert compact.channel_prefix(b"not json") == skeleton
    assert compact.channel_prefix(b'{"spec_version": 1, "files": []}') == skeleton
    doc = b'{"_type":"manifest","created":"2026-12-08T00:00:00Z","files":3,"size":9,'
    doc += b'"spec_version":2,"version":4}'
    assert compact.channel_prefix(doc).startswith(skeleton)
    assert b'"4":{"created":"2026-12-08T00:00:00Z","files":3' in compact.channel_prefix(doc)


def test_a_short_name_two_known_pieces_share_is_never_used() -> None:
    def ref(sha: str, level: int = 0) -> tree.PieceRef:
        return tree.PieceRef("a", sha, 10, 1, 1, level)

    root = ref("ab" * 32, 1)
    known = compact.KnownPieces(root)
    assert known.name(root) == "ab" * 6
    twin = ref("ab" * 6 + "cd" * 26)
    known._add(twin)
    assert known.name(root) == [root.sha256, 10] and known.name(twin) == [twin.sha256, 10]
    with pytest.raises(PackError, match="does not hold"):
        known.resolve("ab" * 6, "test")


def _rotate(sim: RepoSim) -> None:
    """A new root key, signed by the old and the new (the hub's rotation)."""
    from caravane.protocol.keys import PrivateKey

    old = PrivateKey.load(sim.hub.key_path("root"))
    new = PrivateKey.generate()
    sim.hub.rotate_root({"root": [new.public], "release": [sim.release_key.public]}, [old, new])
    new.save(sim.hub.key_path("root"))


def test_roots_after_rotations_travel_as_deltas_and_a_centre_takes_them_in_order(
    sim: RepoSim, tmp_path: Path
) -> None:
    sim.publish(library())
    store = sim.store()  # pinned root 1
    store.apply_pack(sim.pack(0, 1))
    _rotate(sim)
    _rotate(sim)  # roots 2 and 3; each rotation signs the channel again (v2, v3)
    pack = sim.pack(1, 3)
    roots = [e for e in read_entries(pack) if e.header.get("path", "").startswith("metadata/root")]
    assert [e.header["path"] for e in roots] == ["metadata/root/2.json", "metadata/root/3.json"]
    assert all(e.header["dict"] == compact.ROOT_DICT for e in roots)
    whole = len(compress(sim.hub_file("metadata/root/3.json").read_bytes()))
    assert roots[1].length - 80 < whole * 0.8, (roots[1].length, whole)  # 80: the entry's frame
    store.apply_pack(pack)
    assert store.trusted.root.version == 3 and store.latest_local_version(sim.channel) == 3
    again = sim.store("again")  # a centre enrolled after the rotations skips them unread
    again.apply_pack(sim.pack(0, 3))
    assert again.trusted.root.version == 3


def test_a_root_delta_whose_previous_root_the_centre_lacks_is_refused(
    sim: RepoSim, tmp_path: Path
) -> None:
    sim.publish(library())
    store = sim.store()
    store.apply_pack(sim.pack(0, 1))
    _rotate(sim)
    _rotate(sim)

    def drop_root_2(kind: str, header: dict[str, Any], payload: bytes) -> tuple[dict, bytes] | None:
        return None if header.get("path") == "metadata/root/2.json" else (header, payload)

    bad = rewrite(sim.pack(1, 3), tmp_path / "bad.pack", drop_root_2)
    with pytest.raises(PackError, match="follows a root this centre does not hold"):
        store.apply_pack(bad)
    assert store.trusted.root.version == 1 and store.latest_local_version(sim.channel) == 1


@st.composite
def library_and_edit(draw: st.DrawFn) -> tuple[dict[str, bytes], dict[str, bytes]]:
    n = draw(st.integers(2, 60))
    a = {f"d{i % 7}/p{i:03d}.txt": b"page %d " % i * draw(st.integers(1, 3)) for i in range(n)}
    b = dict(a)
    for path in draw(st.lists(st.sampled_from(sorted(a)), max_size=4, unique=True)):
        action = draw(st.sampled_from(["modify", "remove", "beside"]))
        if action == "modify":
            b[path] = a[path] + b"!"
        elif action == "remove" and len(b) > 1:
            del b[path]
        else:
            b[path.replace(".txt", "-bis.txt")] = b"nouveau"
    return a, b


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(library_and_edit())
def test_deep_trees_name_their_bases_so_the_receiver_finds_them(
    ab: tuple[dict[str, bytes], dict[str, bytes]],
) -> None:
    """Leaves of two entries and nodes of two children: trees of four or five levels on a
    few dozen files, so every rule of KnownPieces is crossed (a base under a node read as a
    base, a neighbour under one that was not, a first release, a removed leaf)."""
    a, b = ab
    small = {"LEAF_MIN": 1, "LEAF_MODULUS": 2, "NODE_MIN": 2, "NODE_MODULUS": 2}
    with tempfile.TemporaryDirectory() as tmp, mock.patch.multiple(tree, **small):
        t = Path(tmp)
        sim = RepoSim(t, HubRepository.init(t / "hub"))
        sim.publish(a)
        sim.publish(b)
        store = sim.store()
        store.apply_pack(sim.pack(0, 1))
        store.apply_pack(sim.pack(1, 2))
        store.checkout(sim.channel, t / "out")
        assert read_tree(t / "out") == b
        names = [
            n for e in read_entries(sim.pack(1, 2)) if e.kind == "tree" for n in e.header["bases"]
        ]
        levels = {tree.parse_doc(sim.hub.manifest_bytes(sim.channel, v)).root for v in (1, 2)}
        if names and len({r.level for r in levels if r is not None}) == 1:
            # the same height: the new root's base is the old root, which the centre knows
            assert isinstance(names[0], str), names
