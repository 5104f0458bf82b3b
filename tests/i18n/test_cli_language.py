"""Field agents read the ``caravane usb`` and ``caravane node status`` lines in their language."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from caravane.node.agent import NodeAgent
from tests.node.conftest import World, content


def run(*args: object, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "caravane", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **env},
    )


FR = {"LANG": "fr_FR.UTF-8"}


def test_a_route_in_french_then_english(world: World, tmp_path: Path) -> None:
    world.publish(content(1))
    config = world.rh.hub.config
    hub_toml = config.data_dir / "hub.toml"
    hub_toml.write_text(config.to_toml())
    NodeAgent.init(tmp_path / "centre", world.enrolment("Kita"), upstreams=[], offline=True).close()
    drive = tmp_path / "drive"
    drive.mkdir()

    out = run("usb", "prepare", drive, "--hub-config", hub_toml, **FR)
    assert out.returncode != 0 and "dites quels centres : --nodes" in out.stderr
    out = run("usb", "prepare", drive, "--nodes", "Nowhere", "--hub-config", hub_toml, **FR)
    assert out.returncode != 0 and "error: centres inconnus : Nowhere" in out.stderr
    out = run("usb", "prepare", drive, "--nodes", "Kita", "--hub-config", hub_toml, **FR)
    assert out.returncode == 0, out.stderr
    assert f"clé {drive} : 1 paquet, 3,0 Mo, vérifié" in out.stdout
    assert "la clé peut être retirée" in out.stdout

    out = run("usb", "verify", drive, "--repo", config.repo_dir, **FR)
    assert out.returncode == 0 and "clé OK : chaque paquet se relit" in out.stdout
    out = run("usb", "verify", drive, "--repo", config.repo_dir, "--lang", "en", **FR)
    assert out.returncode == 0 and "drive OK: every pack reads back" in out.stdout

    out = run("node", "status", "-d", tmp_path / "centre", **FR)
    assert out.returncode == 0, out.stderr
    assert "lecons : sert la version —" in out.stdout and "(rien reçu encore)" in out.stdout
    assert "disque libre : " in out.stdout
    out = run("node", "status", "-d", tmp_path / "centre", LANG="C.UTF-8")
    assert "lecons: serving —" in out.stdout and "free disk: " in out.stdout

    out = run("usb", "import", drive, "-d", tmp_path / "centre", **FR)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["lecons : version 1 installée", "la clé peut être retirée"]
    out = run("usb", "import", drive, "-d", tmp_path / "centre", "--lang", "en", **FR)
    assert out.returncode == 0, out.stderr
    assert "lecons: already up to date (version 1)" in out.stdout
    out = run("node", "status", "-d", tmp_path / "centre", "--lang", "fr")
    assert "(à jour)" in out.stdout

    # gettext's order: LANGUAGE before LANG
    out = run("usb", "ingest", drive, "--hub-config", hub_toml, LANGUAGE="en", **FR)
    assert out.returncode == 0, out.stderr
    assert "recorded (route: usb)" in out.stdout
    out = run("usb", "ingest", drive, "--hub-config", hub_toml, LC_MESSAGES="fr_BF.UTF-8")
    assert out.returncode == 0, out.stderr
    assert "déjà connu : " in out.stdout  # the same drive twice


def test_errors_in_the_readers_language_json_in_english(tmp_path: Path) -> None:
    missing = tmp_path / "no-centre-here"
    out = run("node", "status", "-d", missing, **FR)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"error: {missing} : pas de configuration de centre ici ; "
        "lancez d'abord `caravane node init`"
    )
    out = run("node", "status", "-d", missing, "--json", **FR)
    assert out.returncode == 1  # scripts read the same English words in every locale
    assert '"error": "' + str(missing) + ": no node configuration" in out.stdout
    out = run("node", "status", "-d", missing, "--lang", "en", **FR)
    assert "error: " + str(missing) + ": no node configuration; run" in out.stderr
