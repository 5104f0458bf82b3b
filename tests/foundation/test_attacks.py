"""Each attack from the foundation issue, as one short test: refused, named, nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zstandard as zstd

from caravane.packs.errors import PackError, TruncatedPackError
from caravane.packs.packfile import read_entries
from caravane.protocol.canonical import canonical_bytes
from caravane.protocol.errors import (
    ExpiredError,
    PathError,
    RollbackError,
    SignatureError,
    VerificationError,
)
from caravane.protocol.keys import PrivateKey
from caravane.protocol.metadata import Manifest

from .conftest import RepoSim, read_tree

V1 = {"index.html": "<h1>Bonjour</h1>\n" * 300, "Leçons/été.pdf": bytes(range(256)) * 400}
V2 = dict(V1, **{"index.html": "<h1>Bonjour !</h1>\n" * 300, "nouveau.txt": "neuf\n" * 100})


def test_changed_object_byte_fails_checkout_and_keeps_previous(sim: RepoSim, tmp_path: Path):
    sim.publish(V1)
    dest = tmp_path / "served"
    sim.hub.checkout("maths", dest)
    before = read_tree(dest)
    sim.flip(sim.object_of(1, "Leçons/été.pdf"), offset=-3)
    with pytest.raises(VerificationError, match="Leçons/été.pdf"):
        sim.hub.checkout("maths", dest, replace=True)
    assert read_tree(dest) == before
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


def test_checkout_failure_leaves_no_half_tree(sim: RepoSim, tmp_path: Path):
    sim.publish(V1)
    sim.flip(sim.object_of(1, "Leçons/été.pdf"), offset=-3)
    with pytest.raises(VerificationError):
        sim.hub.checkout("maths", tmp_path / "new")
    assert not (tmp_path / "new").exists()
    # the hub, its keys and its files cache beside it, the source; no half-written tree
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub", "hub-cache", "hub-keys", "src-1"]


def test_verify_names_every_damaged_object(sim: RepoSim):
    sim.publish(V1)
    sim.flip(sim.object_of(1, "index.html"), offset=-2)
    report = sim.hub.verify()
    assert not report.ok and "does not match" in report.problems[0] or report.problems


def test_changed_manifest_byte_is_refused(sim: RepoSim):
    sim.publish(V1)
    sim.flip(sim.hub_file("manifests/maths/1.json"))
    with pytest.raises(VerificationError, match="SHA-256 does not match"):
        sim.hub.manifest("maths", 1)


def test_changed_channel_metadata_is_refused(sim: RepoSim):
    sim.publish(V1)
    path = sim.hub_file("metadata/channels/maths.json")
    doc = json.loads(path.read_bytes())
    doc["signed"]["title"] = "forged"
    path.write_bytes(canonical_bytes(doc))
    with pytest.raises(SignatureError, match="release key"):
        sim.hub.channel_meta("maths")


def test_changed_root_is_refused(sim: RepoSim, tmp_path: Path):
    path = sim.hub_file("metadata/root.json")
    doc = json.loads(path.read_bytes())
    doc["signed"]["roles"]["release"]["keyids"] = list(doc["signed"]["roles"]["root"]["keyids"])
    path.write_bytes(canonical_bytes(doc))
    with pytest.raises(SignatureError, match="not signed by its own root keys"):
        sim.store()
    assert not (tmp_path / "store").exists()


def test_metadata_signed_by_another_key_is_refused(sim: RepoSim):
    sim.publish(V1)
    sim.resign(sim.hub_file("metadata/channels/maths.json"), PrivateKey.generate())
    with pytest.raises(SignatureError):
        sim.hub.channel_meta("maths")


def test_pack_from_another_hub_is_refused(sim: RepoSim, tmp_path: Path):
    from caravane.packs.hub_repository import HubRepository

    other = HubRepository.init(tmp_path / "other")
    src = tmp_path / "src-other"
    src.mkdir()
    (src / "a.txt").write_text("autre")
    other.publish("maths", src)
    other.build_pack("maths", 0, 1, tmp_path / "other.pack")
    store = sim.store()
    with pytest.raises(SignatureError, match="another hub"):
        store.apply_pack(tmp_path / "other.pack")
    assert store.channels() == []


def test_older_version_replayed_is_refused(sim: RepoSim):
    sim.publish(V1)
    sim.publish(V2)
    old_pack = sim.pack(0, 1)
    old_meta = sim.hub_file("metadata/channels/maths.json").read_bytes()
    store = sim.store()
    store.apply_pack(sim.pack(0, 2))
    # The v1-era channel metadata is older than what the store accepted: rollback refused.
    with pytest.raises(RollbackError, match="older"):
        store.trusted.verify_channel(
            _v1_meta(sim), "maths", known_version=store.channel_meta("maths").version
        )
    # An old pack still applies (its release is listed by the newer metadata) without
    # taking the channel back.
    store.apply_pack(old_pack)
    assert store.channel_meta("maths").version == 2
    assert old_meta == sim.hub_file("metadata/channels/maths.json").read_bytes()


def _v1_meta(sim: RepoSim) -> bytes:
    from caravane.protocol.metadata import Envelope

    env = Envelope.from_bytes(sim.hub_file("metadata/channels/maths.json").read_bytes(), "m")
    signed = dict(env.signed)
    signed["version"] = 1
    signed["releases"] = {"1": signed["releases"]["1"]}
    from caravane.protocol.metadata import sign_envelope

    return sign_envelope(signed, [sim.release_key])


def test_expired_metadata_in_a_pack_is_refused(sim: RepoSim):
    sim.publish(V1)
    sim.resign(
        sim.hub_file("metadata/channels/maths.json"),
        sim.release_key,
        lambda s: s.__setitem__("expires", "2020-01-01T00:00:00Z"),
    )
    store = sim.store()
    with pytest.raises(ExpiredError, match="expired on 2020-01-01"):
        store.apply_pack(sim.pack(0, 1))
    assert store.channels() == []


def _signed_manifest_with_path(sim: RepoSim, bad_path: str) -> None:
    """A manifest that the hub's own release key signs, with one hostile path."""
    sim.publish(V1)
    sim.rewrite_release(1, lambda files: files[0].__setitem__("path", bad_path))


@pytest.mark.parametrize(
    "bad",
    ["../../etc/passwd", "/etc/passwd", "a/../../b", "ok/\x07bell", "a\\b", "./x", ""],
)
def test_manifest_with_hostile_path_is_refused(sim: RepoSim, tmp_path: Path, bad: str):
    _signed_manifest_with_path(sim, bad)
    with pytest.raises(PathError):
        sim.hub.checkout("maths", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "etc").exists()


def test_manifest_with_case_colliding_names_is_refused(sim: RepoSim):
    sim.publish(V1)
    files = [f.to_dict() for f in sim.hub.manifest("maths", 1).files]
    files.append(dict(files[0], path=files[0]["path"].upper()))
    files.sort(key=lambda f: f["path"].encode())
    doc = Manifest("maths", 1, "2026-01-01T00:00:00Z", []).to_dict() | {"files": files}
    with pytest.raises(PathError, match="differ only by case"):
        Manifest.from_dict(doc)
    # the same two names in a format 2 tree, signed by the hub's own key
    sim.rewrite_release(1, lambda fs: fs.append(dict(fs[0], path=fs[0]["path"].upper())))
    with pytest.raises(PathError, match="differ only by case"):
        sim.hub.manifest("maths", 1)


def test_decompression_bomb_is_refused(sim: RepoSim, tmp_path: Path):
    sim.publish(V1)
    obj = sim.object_of(1, "index.html")
    m = sim.hub.manifest("maths", 1)
    size = next(f for f in m.files if f.path == "index.html").chunks[0][1]
    obj.write_bytes(zstd.ZstdCompressor().compress(b"\0" * (size * 1000)))
    with pytest.raises(VerificationError, match="decompression bomb"):
        sim.hub.checkout("maths", tmp_path / "out")
    # A frame that hides its size is refused too.
    obj.write_bytes(zstd.ZstdCompressor(write_content_size=False).compress(b"\0" * size))
    with pytest.raises(VerificationError):
        sim.hub.checkout("maths", tmp_path / "out")


@pytest.mark.parametrize("kind", ["metadata", "manifest", "delta", "end"])
def test_changed_byte_in_each_pack_entry_is_refused(sim: RepoSim, kind: str):
    sim.publish(V1)
    sim.publish(V2)
    pack = sim.pack(1, 2)
    entry = next(e for e in read_entries(pack) if e.kind == kind)
    sim.flip(pack, offset=8 + entry.offset + entry.length - 40)
    store = sim.store()
    store.apply_pack(sim.pack(0, 1))
    with pytest.raises(PackError, match="checksum|corrupt"):
        store.apply_pack(pack)
    assert store.latest_local_version("maths") == 1


def test_truncated_pack_keeps_complete_entries_and_resumes(
    sim: RepoSim, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr("caravane.packs.delta.GROUP_TARGET", 16 * 1024)  # several delta entries
    import random

    sim.publish({f"f{i}.bin": random.Random(i).randbytes(20_000) for i in range(8)})
    pack = sim.pack(0, 1)
    full = pack.read_bytes()
    entries = list(read_entries(pack))
    deltas = [e for e in entries if e.kind == "delta"]
    assert len(deltas) >= 3
    cut = 8 + deltas[2].offset + 10  # inside the third delta entry
    pack.write_bytes(full[:cut])
    got = []
    with pytest.raises(TruncatedPackError):
        for e in read_entries(pack):
            got.append(e.kind)
    assert got.count("delta") == 2
    store = sim.store()
    with pytest.raises(TruncatedPackError, match="were verified and kept"):
        store.apply_pack(pack)
    assert store.channels() == []  # nothing half-activated
    kept = sum(1 for _ in store.store.iter_ids())
    assert kept > 0
    pack.write_bytes(full)
    assert store.apply_pack(pack).objects_added == sum(1 for _ in sim.hub.store.iter_ids()) - kept
    assert store.latest_local_version("maths") == 1
