"""docs/CONFIGURATION.md is made from the config dataclasses and is current."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from caravane.config_doc import example, reference, sections
from caravane.hub.config import HubConfig
from caravane.node.config import NodeConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIGURATION.md"


def config_doc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "caravane.config_doc", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_committed_reference_is_current() -> None:
    out = config_doc("--check", str(DOC))
    assert out.returncode == 0, (
        f"{out.stderr}\nregenerate: python -m caravane.config_doc > docs/CONFIGURATION.md"
    )


def test_a_stale_reference_is_refused_with_the_command_to_run(tmp_path: Path) -> None:
    stale = tmp_path / "CONFIGURATION.md"
    stale.write_text(reference().replace("`8470`", "`8000`"))
    out = config_doc("--check", str(stale))
    assert out.returncode == 1
    assert "out of date" in out.stderr and "python -m caravane.config_doc" in out.stderr


def test_every_setting_of_both_files_is_documented() -> None:
    text = reference()
    documented = {s.key for _, _, items in sections() for s in items}
    for name in HubConfig.__dataclass_fields__:
        if name != "extra":
            assert f"| `{name}` |" in text
    for name in NodeConfig.__dataclass_fields__:
        assert name == "upstreams" or name in documented


def test_the_example_files_load_as_the_defaults(tmp_path: Path) -> None:
    hub = tmp_path / "hub.toml"
    hub.write_text(example("hub"))
    assert HubConfig.load(hub) == HubConfig(data_dir=Path("/var/lib/caravane/hub"))
    node = tmp_path / "node.toml"
    node.write_text(example("node"))
    tomllib.loads(node.read_text())
    assert NodeConfig.load(node) == NodeConfig(data_dir=Path("/var/lib/caravane/node"))
