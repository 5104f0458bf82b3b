"""Where commands look for their files: the checkout layout, or the FHS one of a system install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def caravane(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARAVANE_")}
    return subprocess.run(
        [sys.executable, "-m", "caravane", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=base | env,
    )


def test_a_checkout_looks_in_the_current_folder(tmp_path: Path) -> None:
    out = caravane("hub", "status", cwd=tmp_path, CARAVANE_LAYOUT="local")
    assert out.returncode != 0
    assert "caravane-hub/hub.toml: no hub configuration" in out.stderr
    out = caravane("node", "status", cwd=tmp_path, CARAVANE_LAYOUT="local")
    assert out.returncode != 0 and "caravane-node" in out.stderr


def test_a_system_install_looks_in_etc(tmp_path: Path) -> None:
    out = caravane("hub", "status", cwd=tmp_path, CARAVANE_LAYOUT="system")
    assert out.returncode != 0
    assert "/etc/caravane/hub.toml: no hub configuration" in out.stderr
    out = caravane("node", "status", cwd=tmp_path, CARAVANE_LAYOUT="system")
    assert out.returncode != 0 and "/etc/caravane/node.toml" in out.stderr


def test_flags_and_environment_win_over_the_layout(tmp_path: Path) -> None:
    mine = tmp_path / "mine.toml"
    out = caravane("hub", "status", "--config", str(mine), cwd=tmp_path, CARAVANE_LAYOUT="system")
    assert f"{mine}: no hub configuration" in out.stderr
    out = caravane(
        "hub", "status", cwd=tmp_path, CARAVANE_LAYOUT="system", CARAVANE_HUB_CONFIG=str(mine)
    )
    assert f"{mine}: no hub configuration" in out.stderr
    there = tmp_path / "centre"
    out = caravane(
        "node", "status", cwd=tmp_path, CARAVANE_LAYOUT="system", CARAVANE_NODE_DIR=str(there)
    )
    assert str(there) in out.stderr and "/etc/caravane" not in out.stderr


def test_a_checkout_hub_is_made_where_the_operator_stands(tmp_path: Path) -> None:
    out = caravane("hub", "init", "--json", cwd=tmp_path, CARAVANE_LAYOUT="local")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "caravane-hub" / "hub.toml").is_file()
    out = caravane("hub", "status", "--json", cwd=tmp_path, CARAVANE_LAYOUT="local")
    assert out.returncode == 0, out.stderr


def test_a_wrong_layout_value_is_one_clear_error(tmp_path: Path) -> None:
    out = caravane("hub", "status", cwd=tmp_path, CARAVANE_LAYOUT="fhs")
    assert out.returncode == 1
    assert "CARAVANE_LAYOUT='fhs'" in out.stderr and "Traceback" not in out.stderr
