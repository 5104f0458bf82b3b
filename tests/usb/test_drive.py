"""A field agent's route, at the level of repositories: drives prepared, carried, imported.

Drives are folders; a full or read-only drive is a real tmpfs mount when this machine lets
the tests mount one (root in a container usually can), otherwise those tests are skipped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from caravane.packs.bundle import (
    DriveError,
    Target,
    import_drive,
    prepare,
    read_description,
    verify_drive,
    write_return,
)
from caravane.packs.packfile import volume_paths
from caravane.packs.repository import Repository

CHANNEL = "lecons"


def _tree(folder: Path, version: int, seed: int = 7) -> Path:
    rnd = random.Random(seed)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "Leçons").mkdir()
    (folder / "Leçons" / "été.html").write_text(
        f"<p>Le cours numéro {version}</p>\n" * 400, encoding="utf-8"
    )
    (folder / "video.bin").write_bytes(rnd.randbytes(400_000) + bytes([version]) * 5000)
    (folder / f"nouveau-{version}.txt").write_text("nouveau contenu\n" * 50 * version)
    return folder


@pytest.fixture
def hub(tmp_path: Path) -> Repository:
    repo = Repository.init(tmp_path / "hub")
    for v in (1, 2, 3):
        repo.publish(CHANNEL, _tree(tmp_path / "src", v))
    return repo


def _store_at(hub: Repository, path: Path, version: int) -> Repository:
    store = Repository.init(path, trust_root=hub.path / "metadata/root.json")
    for v in range(1, version + 1):
        pack = hub.pack_path(CHANNEL, v - 1, v)
        if not pack.exists():
            hub.build_pack(CHANNEL, v - 1, v, pack)
        store.apply_pack(pack)
    return store


def _checkout_bytes(store: Repository, dest: Path) -> dict[str, bytes]:
    store.checkout(CHANNEL, dest, replace=True)
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}


def test_route_of_three_centres(hub: Repository, tmp_path: Path) -> None:
    drive = tmp_path / "drive"
    drive.mkdir()
    centres = {"A": 0, "B": 1, "C": 2}
    stores = {n: _store_at(hub, tmp_path / f"store-{n}", v) for n, v in centres.items()}
    res = prepare(hub, drive, [Target(n, {CHANNEL: v}) for n, v in centres.items()], [CHANNEL])
    assert not res.skipped
    assert verify_drive(drive, hub) == []

    expected = _checkout_bytes(hub, tmp_path / "expected")
    # Centre A imports normally.
    out = import_drive(stores["A"], drive)
    assert out.ok and out.applied == [{"channel": CHANNEL, "from": 0, "to": 3}]
    assert _checkout_bytes(stores["A"], tmp_path / "A") == expected

    # Centre B: the drive is pulled out half-way (its pack is cut short).
    pack_b = drive / "caravane/repo/packs" / CHANNEL / "1-3.pack"
    good = pack_b.read_bytes()
    pack_b.write_bytes(good[: len(good) // 2])
    out = import_drive(stores["B"], drive)
    assert not out.ok and "incomplete" in out.failed[0]
    assert stores["B"].latest_local_version(CHANNEL) == 1  # still serving what it had
    pack_b.write_bytes(good)  # re-inserted, complete
    out = import_drive(stores["B"], drive)
    assert out.ok and stores["B"].latest_local_version(CHANNEL) == 3
    assert _checkout_bytes(stores["B"], tmp_path / "B") == expected

    # Centre C: a tampered drive is refused, then a good one works.
    pack_c = drive / "caravane/repo/packs" / CHANNEL / "2-3.pack"
    data = bytearray(pack_c.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack_c.write_bytes(bytes(data))
    assert verify_drive(drive, hub)  # the read-back check sees it too
    out = import_drive(stores["C"], drive)
    assert not out.ok and "refused" in out.failed[0]
    assert stores["C"].latest_local_version(CHANNEL) == 2
    data[len(data) // 2] ^= 0xFF
    pack_c.write_bytes(bytes(data))
    assert import_drive(stores["C"], drive).ok
    assert _checkout_bytes(stores["C"], tmp_path / "C") == expected

    # Reports travel back on the same drive.
    for name in centres:
        write_return(drive, name, json.dumps({"centre": name}).encode(), f"{name}: OK\n")
    assert sorted(p.name for p in (drive / "caravane/reports").iterdir()) == [
        "A.json",
        "B.json",
        "C.json",
    ]


def test_drive_from_another_hub_is_refused(hub: Repository, tmp_path: Path) -> None:
    other = Repository.init(tmp_path / "other-hub")
    other.publish(CHANNEL, _tree(tmp_path / "src2", 1, seed=3))
    drive = tmp_path / "drive"
    drive.mkdir()
    prepare(other, drive, [Target("X", {CHANNEL: 0})], [CHANNEL])
    store = _store_at(hub, tmp_path / "store", 1)
    with pytest.raises(DriveError, match="another hub"):
        import_drive(store, drive)
    assert store.latest_local_version(CHANNEL) == 1
    assert verify_drive(drive, hub)  # the hub's own check names the mismatch too


def test_rerun_after_interruption_reuses_complete_packs(hub: Repository, tmp_path: Path) -> None:
    drive = tmp_path / "drive"
    drive.mkdir()
    targets = [Target("A", {CHANNEL: 0}), Target("B", {CHANNEL: 2})]
    prepare(hub, drive, targets, [CHANNEL])
    # Interrupted run: description lost, one pack cut short.
    (drive / "caravane/bundle.json").unlink()
    cut = drive / "caravane/repo/packs" / CHANNEL / "2-3.pack"
    cut.write_bytes(cut.read_bytes()[:100])
    with pytest.raises(DriveError):
        read_description(drive)
    res = prepare(hub, drive, targets, [CHANNEL])
    reused = {(w["from_version"], w["reused"]) for w in res.written}
    assert reused == {(0, True), (2, False)}
    assert verify_drive(drive, hub) == []


def test_volumes_stay_under_the_size_asked(
    hub: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("caravane.packs.delta.GROUP_TARGET", 64 * 1024)  # many small entries
    drive = tmp_path / "drive"
    drive.mkdir()
    prepare(hub, drive, [Target("A", {CHANNEL: 0})], [CHANNEL], volume_size=200 * 1024)
    first = drive / "caravane/repo/packs" / CHANNEL / "0-3.pack"
    vols = volume_paths(first)
    assert len(vols) > 1 and all(v.stat().st_size <= 200 * 1024 for v in vols)
    store = Repository.init(tmp_path / "s", trust_root=hub.path / "metadata/root.json")
    assert import_drive(store, drive).ok


@pytest.fixture
def small_mount(tmp_path: Path):
    """A real 1 MiB file system: a drive that fills up, or that can be made read-only."""
    mnt = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode != 0 or os.geteuid() != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_small_drive_takes_the_highest_priority_part(tmp_path: Path, small_mount: Path) -> None:
    # A far-behind centre needs a 3 MB full pack; a near one needs a small update.
    hub = Repository.init(tmp_path / "hub2")
    src = _tree(tmp_path / "src-big", 1)
    (src / "film.bin").write_bytes(random.Random(1).randbytes(3_000_000))
    hub.publish(CHANNEL, src)
    (src / "nouveau-2.txt").write_text("une petite mise à jour\n")
    hub.publish(CHANNEL, src)
    targets = [Target("far", {CHANNEL: 0}), Target("near", {CHANNEL: 1})]
    res = prepare(hub, small_mount, targets, [CHANNEL])
    assert [(s["from_version"], s["reason"]) for s in res.skipped] == [
        (0, "does not fit on the drive")
    ]
    assert [w["from_version"] for w in res.written] == [1]
    plan = json.loads((small_mount / "caravane/plans/far.json").read_text())
    assert plan["steps"] == [] and plan["not_on_drive"][0]["from"] == 0
    near = Repository.init(tmp_path / "near", trust_root=hub.path / "metadata/root.json")
    hub.build_pack(CHANNEL, 0, 1, tmp_path / "01.pack")
    near.apply_pack(tmp_path / "01.pack")
    assert import_drive(near, small_mount).applied == [{"channel": CHANNEL, "from": 1, "to": 2}]


def test_read_only_drive_gets_a_clear_message(hub: Repository, small_mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    with pytest.raises(DriveError, match="read-only"):
        prepare(hub, small_mount, [Target("A", {CHANNEL: 2})], [CHANNEL])
