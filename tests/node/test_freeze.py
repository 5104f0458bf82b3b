"""A freeze is visible: a frozen mirror keeps serving valid old metadata, the centre says so.

The hub's own answer or a newer signature from any carrier is fresh word; the same old
signature from a mirror is not. After ``freeze_warning_days`` without fresh word, ``node
status`` (text and --json) warns in English and French.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from caravane.node.config import UpstreamConfig
from caravane.node.state import now
from tests.node.conftest import World, content


def _status(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "caravane", "node", "status", "-d", str(data_dir), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_frozen_mirror_is_visible_after_the_warning_age(world: World, tmp_path: Path) -> None:
    world.publish(content(1))
    frozen = world.mirror_copy("frozen-mirror")
    n = world.node(
        "kita",
        [
            UpstreamConfig("mirror", "folder", str(frozen), 0),
            UpstreamConfig("hub", "http", world.rh.url, 10),
        ],
    )
    assert world.sync(n).complete
    st = n.status()
    assert st["freeze_warning"] is None
    fresh = st["channels"][0]["freshness"]
    assert fresh["last_fresh_word"] and fresh["fresh_word_age_days"] == 0
    assert st["freeze_warning_days"] == 14

    # three weeks later the hub is out of reach; only the frozen mirror answers
    three_weeks_ago = (now() - timedelta(days=21)).isoformat(timespec="seconds")
    n.state.set(f"fresh:{world.channel}", three_weeks_ago)
    n.config.upstreams = [UpstreamConfig("mirror", "folder", str(frozen), 0)]
    n.config.save()
    assert world.sync(n).complete  # "up to date" as far as the mirror knows
    st = n.status()
    ch = st["channels"][0]
    assert ch["state"] == "up-to-date" and ch["freshness"]["stale"]
    assert ch["freshness"]["last_checked"] > three_weeks_ago  # it did hear from the mirror
    warning = st["freeze_warning"]
    assert warning["en"].startswith("Health: no fresh word from the hub for 21 days")
    assert warning["fr"].startswith("Santé : aucune nouvelle fraîche du hub depuis 21 jours")

    out = _status(n.config.data_dir)
    assert out.returncode == 0, out.stderr
    assert "no fresh word from the hub for 21 days" in out.stdout
    out = _status(n.config.data_dir, "--lang", "fr")  # the field agent's language
    assert out.returncode == 0 and "depuis 21 jours" in out.stdout
    doc = json.loads(_status(n.config.data_dir, "--json").stdout)
    assert doc["channels"][0]["freshness"]["fresh_word_age_days"] == 21
    assert doc["freeze_warning"]["days"] == "21"

    # a carrier bringing a newer signature is fresh word again
    world.publish(content(2))
    moving = world.mirror_copy("moving-mirror")
    n.config.upstreams = [UpstreamConfig("mirror", "folder", str(moving), 0)]
    n.config.save()
    assert world.sync(n).complete
    st = n.status()
    assert st["freeze_warning"] is None
    assert st["channels"][0]["freshness"]["fresh_word_age_days"] == 0


def test_warning_age_comes_from_node_toml(world: World) -> None:
    world.publish(content(1))
    n = world.node("nioro", freeze_warning_days=3)
    assert world.sync(n).complete
    n.state.set(f"fresh:{world.channel}", (now() - timedelta(days=4)).isoformat())
    reopened = type(n).open(n.config.data_dir)
    assert reopened.config.freeze_warning_days == 3
    assert "for 4 days" in reopened.status()["freeze_warning"]["en"]
