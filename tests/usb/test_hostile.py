"""A drive is hostile input at every step: links, FIFOs, /dev/zero, oversized files.

Each case ends with a clear refusal (one line, non-zero exit at the CLI) and nothing
written outside the centre's and the drive's folders. Tests run as root, so a read-only
drive is a tmpfs remounted read-only (tests/usb/test_drive.py) or, here, a file where a
folder is expected; a full drive is a 1 MB tmpfs (test_drive.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from caravane.node.agent import NodeAgent
from caravane.packs.bundle import (
    DriveError,
    Target,
    import_drive,
    plan_for,
    prepare,
    read_description,
    read_returns,
    verify_drive,
    write_return,
)
from caravane.packs.repository import Repository
from tests.node.conftest import World, content
from tests.usb.test_drive import CHANNEL, _store_at, _tree


@pytest.fixture
def hub(tmp_path: Path) -> Repository:
    repo = Repository.init(tmp_path / "hub")
    for v in (1, 2):
        repo.publish(CHANNEL, _tree(tmp_path / "src", v))
    return repo


@pytest.fixture
def drive(hub: Repository, tmp_path: Path) -> Path:
    d = tmp_path / "drive"
    d.mkdir()
    prepare(hub, d, [Target("A", {CHANNEL: 0})], [CHANNEL])
    return d


def _outside(tmp_path: Path) -> Path:
    victim = tmp_path / "centre-disk"
    victim.mkdir(exist_ok=True)
    return victim


def _within(seconds: float, fn: Callable[[], object]) -> object:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it blocks."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked on the drive (a FIFO was opened blocking?)"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


def _pack(drive: Path) -> Path:
    return drive / "caravane/repo/packs" / CHANNEL / "0-2.pack"


def test_symlinked_return_folders_are_refused(drive: Path, tmp_path: Path) -> None:
    victim = _outside(tmp_path)
    for folder in ("reports", "receipts"):
        target = drive / "caravane" / folder
        shutil.rmtree(target, ignore_errors=True)
        target.symlink_to(victim, target_is_directory=True)
        with pytest.raises(DriveError, match="link"):
            write_return(drive, "A", b"{}", "receipt")
        target.unlink()
    assert list(victim.iterdir()) == []


def test_symlinked_report_file_is_replaced_not_written_through(drive: Path, tmp_path: Path) -> None:
    victim = _outside(tmp_path) / "passwd"
    victim.write_text("precious\n")
    (drive / "caravane/reports").mkdir()
    (drive / "caravane/reports/A.json").symlink_to(victim)
    write_return(drive, "A", b'{"r": 1}', "ok")
    assert victim.read_text() == "precious\n"
    assert not (drive / "caravane/reports/A.json").is_symlink()


def test_prepare_refuses_a_symlinked_plans_folder(
    hub: Repository, drive: Path, tmp_path: Path
) -> None:
    victim = _outside(tmp_path)
    shutil.rmtree(drive / "caravane/plans")
    (drive / "caravane/plans").symlink_to(victim, target_is_directory=True)
    with pytest.raises(DriveError, match="link"):
        prepare(hub, drive, [Target("A", {CHANNEL: 0})], [CHANNEL])
    assert list(victim.iterdir()) == []


def test_prepare_refuses_a_symlinked_bundle_folder(hub: Repository, tmp_path: Path) -> None:
    victim = _outside(tmp_path)
    d = tmp_path / "d"
    d.mkdir()
    (d / "caravane").symlink_to(victim, target_is_directory=True)
    with pytest.raises(DriveError, match="link"):
        prepare(hub, d, [Target("A", {CHANNEL: 0})], [CHANNEL])
    assert list(victim.iterdir()) == []


def test_a_file_where_a_folder_belongs_is_refused(hub: Repository, tmp_path: Path) -> None:
    """The read-only case without a mount: the drive's folder cannot be made."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "caravane").write_text("not a folder")
    with pytest.raises(DriveError, match="a file where a folder belongs"):
        prepare(hub, d, [Target("A", {CHANNEL: 0})], [CHANNEL])


def test_pack_linked_to_dev_zero_is_refused_at_once(
    hub: Repository, drive: Path, tmp_path: Path
) -> None:
    store = _store_at(hub, tmp_path / "store", 0)
    _pack(drive).unlink()
    _pack(drive).symlink_to("/dev/zero")
    out = _within(20, lambda: import_drive(store, drive))
    assert isinstance(out, object) and not out.ok  # type: ignore[attr-defined]
    assert "refused" in out.failed[0]  # type: ignore[attr-defined]
    assert any("link" in p or "regular" in p for p in verify_drive(drive, hub))


def test_fifo_pack_and_fifo_description_never_block(
    hub: Repository, drive: Path, tmp_path: Path
) -> None:
    store = _store_at(hub, tmp_path / "store", 0)
    _pack(drive).unlink()
    os.mkfifo(_pack(drive))
    out = _within(20, lambda: import_drive(store, drive))
    assert not out.ok and "not a regular file" in out.failed[0]  # type: ignore[attr-defined]
    desc = drive / "caravane/bundle.json"
    desc.unlink()
    os.mkfifo(desc)
    with pytest.raises(DriveError, match="not a regular file"):
        _within(20, lambda: read_description(drive))


def test_symlinked_metadata_and_oversized_files_are_refused(
    hub: Repository, drive: Path, tmp_path: Path
) -> None:
    store = _store_at(hub, tmp_path / "store", 0)
    meta = drive / "caravane/repo/metadata/channels" / f"{CHANNEL}.json"
    meta.unlink()
    meta.symlink_to("/dev/zero")
    with pytest.raises(DriveError, match="link"):
        _within(20, lambda: import_drive(store, drive))
    # a plan file grown past its bound (sparse: no disk used) is refused before reading
    plan = drive / "caravane/plans/A.json"
    with open(plan, "r+b") as fh:
        fh.truncate(2 * 1024**3)
    with pytest.raises(DriveError, match="larger than"):
        plan_for(drive, "A")


def test_hostile_reports_at_ingest_are_listed_not_read(drive: Path, tmp_path: Path) -> None:
    reports = drive / "caravane/reports"
    reports.mkdir()
    (reports / "zero.json").symlink_to("/dev/zero")
    os.mkfifo(reports / "fifo.json")
    with open(reports / "huge.json", "wb") as fh:
        fh.truncate(1024**3)
    (reports / "good.json").write_bytes(b"{}")
    good, refused = _within(20, lambda: read_returns(drive))  # type: ignore[misc]
    assert good == [("good", b"{}")]
    assert len(refused) == 3
    assert "fifo.json" in refused[0] and "not a regular file" in refused[0]
    assert "huge.json" in refused[1] and "larger than" in refused[1]
    assert "zero.json" in refused[2] and "link" in refused[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "caravane", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_import_and_ingest_on_a_hostile_drive(world: World, tmp_path: Path) -> None:
    world.publish(content(1))
    config = world.rh.hub.config
    hub_toml = config.data_dir / "hub.toml"
    hub_toml.write_text(config.to_toml())
    NodeAgent.init(tmp_path / "centre", world.enrolment("Kita"), upstreams=[], offline=True)
    d = tmp_path / "usb"
    d.mkdir()
    out = run("usb", "prepare", d, "--nodes", "Kita", "--hub-config", hub_toml)
    assert out.returncode == 0, out.stderr

    victim = _outside(tmp_path)
    # prepare onto a returned drive whose plans folder leads into the hub's disk: refused
    plans = d / "caravane/plans"
    shutil.move(plans, tmp_path / "plans-kept")
    plans.symlink_to(victim, target_is_directory=True)
    out = run("usb", "prepare", d, "--nodes", "Kita", "--hub-config", hub_toml)
    assert out.returncode == 1 and "link" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and list(victim.iterdir()) == []
    plans.unlink()
    shutil.move(tmp_path / "plans-kept", plans)
    # verify reads a FIFO in place of a pack volume without hanging, and says so
    pack = next((d / "caravane/repo/packs").rglob("*.pack"))
    kept = pack.read_bytes()
    pack.unlink()
    os.mkfifo(pack)
    out = run("usb", "verify", d, "--repo", config.repo_dir)
    assert out.returncode == 3 and "not a regular file" in out.stdout
    pack.unlink()
    pack.write_bytes(kept)

    (d / "caravane/reports").symlink_to(victim, target_is_directory=True)
    (d / "caravane/enrolments").symlink_to(victim, target_is_directory=True)
    out = run("usb", "import", d, "-d", tmp_path / "centre", "--json")
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert not doc["report_written"] and "link" in doc["errors"][-1]
    assert list(victim.iterdir()) == []
    # the content itself was verified and installed
    assert doc["channels"][0]["status"] == "activated"

    (d / "caravane/reports").unlink()
    (d / "caravane/reports").mkdir()
    (d / "caravane/reports/kita.json").symlink_to("/dev/zero")
    with open(d / "caravane/reports/big.json", "wb") as fh:
        fh.truncate(1024**3)
    out = run("usb", "ingest", d, "--hub-config", hub_toml, "--json")
    assert out.returncode == 1
    refused = json.loads(out.stdout)["refused"]
    assert any("enrolments" in r and "link" in r for r in refused)
    assert any("big.json" in r and "larger than" in r for r in refused)
