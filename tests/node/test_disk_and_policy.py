"""Disk space, data budgets, sync windows and the bandwidth cap."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import namedtuple
from datetime import datetime
from pathlib import Path

import pytest

from caravane.node.config import NodeConfig, UpstreamConfig
from caravane.node.policy import RateLimiter, in_windows
from tests.node.conftest import World, content


def test_not_enough_space_says_how_much_and_fetches_nothing(world: World) -> None:
    v1 = world.publish(content(1))
    n = world.node("centre-a")
    world.sync(n)
    world.publish(content(2))
    free = shutil.disk_usage(n.config.data_dir).free
    n.config.margin_mb = free // (1024 * 1024) + 1000  # more than the disk has
    r = world.sync(n)
    c = r.channels[0]
    assert c.status == "waiting" and "GB more" in c.message
    assert c.missing_bytes > 1000 * 1024 * 1024
    assert r.received["hub"] < 20_000  # metadata only
    assert world.live(n) == world.versions[v1]
    assert int(n.state.get("disk_missing")) > 0


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 6 MiB file system (tmpfs), for a disk that fills up mid-sync."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_filling_up_mid_sync_stops_cleanly_and_loses_nothing(
    world: World, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.publish({"petit.txt": b"small first release"})
    n = world.node("centre-a")
    n.config.data_dir = small_disk / "node"
    shutil.copytree(world.tmp / "centre-a", n.config.data_dir, symlinks=True)
    from caravane.node.agent import NodeAgent

    n = NodeAgent.open(n.config.data_dir)
    n.config.durable = False
    n.config.margin_mb = 0
    assert world.sync(n).complete
    v2 = world.publish(content(2, big=5_000_000))
    # another program fills the disk after the space check: make the check see plenty
    real = shutil.disk_usage
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(real(p).total, 0, 10**12))
    r = world.sync(n)
    assert r.channels[0].status == "error"
    assert "disk" in r.channels[0].message.lower()
    assert world.live(n) == {"petit.txt": b"small first release"}
    monkeypatch.setattr(shutil, "disk_usage", real)
    # nothing half-written in the store: every object there verifies (some are still missing)
    rep = n.repo.verify()
    assert [p for p in rep.problems if "missing" not in p] == []
    # the operator frees space (here: a bigger disk), and the next sync finishes
    subprocess.run(["mount", "-o", "remount,size=40m", str(small_disk)], check=True)
    r2 = world.sync(n, ignore_demotion=True)
    assert r2.complete, r2.to_dict()
    assert world.live(n) == world.versions[v2]


def test_daily_budget_on_a_metered_link_stops_the_sync_and_keeps_what_came(
    world: World,
) -> None:
    world.publish(content(1, big=3_000_000))
    n = world.node(
        "centre-a",
        upstreams=[UpstreamConfig("satellite", "http", world.rh.url, metered=True)],
        daily_budget_mb=1,
    )
    r = world.sync(n)
    assert not r.complete
    assert any("budget" in e for e in r.errors)
    assert n.releases.active(world.channel) is None
    assert n.state.metered_bytes("day") >= 1_000_000
    kept = sum(p.stat().st_size for p in (n.config.partial_dir).rglob("*") if p.is_file())
    assert kept > 500_000  # what arrived stays for tomorrow
    n.config.daily_budget_mb = 0
    assert world.sync(n).complete


def test_sync_windows_wrap_past_midnight() -> None:
    cfg = NodeConfig(Path("."), windows=["22:00-06:00"])
    w = cfg.window_list()
    assert in_windows(w, datetime(2026, 1, 1, 23, 30))
    assert in_windows(w, datetime(2026, 1, 1, 5, 59))
    assert not in_windows(w, datetime(2026, 1, 1, 12, 0))
    assert in_windows([], datetime(2026, 1, 1, 12, 0))


def test_agent_outside_its_window_does_not_sync(world: World) -> None:
    world.publish(content(1))
    now = datetime.now()
    start = (now.hour + 2) % 24
    n = world.node("centre-a", windows=[f"{start:02d}:00-{(start + 1) % 24:02d}:00"])
    r = n.sync(respect_windows=True)
    assert "outside the sync windows" in r.skipped
    assert n.releases.active(world.channel) is None


def test_bandwidth_cap_slows_the_transfer() -> None:
    limiter = RateLimiter(200_000, burst=16_384)
    start = time.monotonic()
    for _ in range(40):
        limiter.take(10_000)  # 400 kB at 200 kB/s: about 2 s, never much less
    assert time.monotonic() - start >= 1.6


def test_bad_window_in_config_is_refused_at_load(tmp_path: Path) -> None:
    from caravane.protocol.errors import FormatError

    (tmp_path / "node.toml").write_text('[node]\nwindows = ["late-night"]\n')
    with pytest.raises(FormatError, match="HH:MM-HH:MM"):
        NodeConfig.load(tmp_path)


def test_config_round_trips(tmp_path: Path) -> None:
    cfg = NodeConfig(
        tmp_path,
        node_id="n1",
        channels=["a", "b"],
        windows=["22:00-06:00"],
        upstreams=[UpstreamConfig("hub", "http", "http://hub", 10, True)],
    )
    cfg.save()
    again = NodeConfig.load(tmp_path)
    assert again.channels == ["a", "b"] and again.upstreams == cfg.upstreams
    assert os.path.samefile(again.data_dir, tmp_path)


def test_hub_url_is_written_once_and_old_files_keep_loading(tmp_path: Path) -> None:
    old = (
        '[node]\nnode_id = "n1"\nhub_url = "http://hub.example:8400"\n\n'
        '[[upstream]]\nname = "hub"\nkind = "http"\nurl = "http://hub.example:8400"\n\n'
        '[[upstream]]\nname = "voisin"\nkind = "peer"\nurl = "http://10.0.0.7:8480/"\n'
    )
    (tmp_path / "node.toml").write_text(old)
    cfg = NodeConfig.load(tmp_path)
    assert cfg.hub_url == "http://hub.example:8400"
    hub, peer = cfg.upstreams
    assert hub.url == cfg.hub_url
    assert cfg.save().read_text().count("hub.example") == 1  # the duplicate is gone
    again = NodeConfig.load(tmp_path)
    assert again.upstreams == cfg.upstreams and again.hub_url == cfg.hub_url
    # the repository prefix is derived, never written by hand
    assert hub.repository_url == "http://hub.example:8400/repo"
    assert peer.repository_url == "http://10.0.0.7:8480/repo"
    assert UpstreamConfig("m", "mirror", "https://cdn/x").repository_url == "https://cdn/x"
    assert again.api_url("/api/v1/enrol") == "http://hub.example:8400/api/v1/enrol"


def test_a_file_naming_the_hub_only_as_its_upstream_still_reports_to_it(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(
        '[node]\nnode_id = "n1"\n\n[[upstream]]\nkind = "http"\nurl = "http://hub:1/"\n'
    )
    assert NodeConfig.load(tmp_path).hub_url == "http://hub:1"
