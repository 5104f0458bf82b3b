"""The systemd units load in systemd's own checker and keep their hardening."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "packaging" / "systemd"
NAMES = ("caravane-hub.service", "caravane-node.service")


def service_section(name: str) -> dict[str, list[str]]:
    """The [Service] keys of a unit, each with every value it is given."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_both_units(tmp_path: Path) -> None:
    """`systemd-analyze verify` in a root holding the system's units, ours and the command."""
    system = Path("/lib/systemd/system")
    if not (system / "sysinit.target").exists():
        pytest.skip("no systemd unit files on this machine to verify against")
    root = tmp_path / "root"
    shutil.copytree(system, root / "lib/systemd/system", symlinks=True)
    for name in NAMES:
        shutil.copy(UNITS / name, root / "lib/systemd/system" / name)
    (root / "usr/bin").mkdir(parents=True)
    caravane = Path(sys.executable).with_name("caravane")
    assert caravane.is_file(), "the caravane command is not installed in this environment"
    # a copy: systemd-analyze resolves a symlink inside the root, where the venv is not
    shutil.copy2(caravane, root / "usr/bin/caravane")
    out = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *NAMES],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr  # unknown or misspelt keys are only warnings


@pytest.mark.parametrize("name", NAMES)
def test_units_run_unprivileged_and_hardened(name: str) -> None:
    svc = service_section(name)
    assert svc["User"] == ["caravane"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "RestrictSUIDSGID": "yes",
    }.items():
        assert svc.get(key) == [value], (key, svc.get(key))
    assert any("/var/lib/caravane/" in v for v in svc["ReadWritePaths"])
    assert svc["Environment"][0].startswith("CARAVANE_LAYOUT=system")


def test_the_node_may_write_reports_onto_usb_drives_under_media() -> None:
    paths = " ".join(service_section("caravane-node.service")["ReadWritePaths"]).split()
    assert "-/media" in paths and "/var/lib/caravane/node" in paths
    assert "-/media" not in " ".join(service_section("caravane-hub.service")["ReadWritePaths"])


def test_unit_files_parse_as_ini() -> None:
    for name in NAMES:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string((UNITS / name).read_text())
        assert {"Unit", "Service", "Install"} <= set(parser.sections())
