"""The `caravane` command as a user runs it: help everywhere, JSON for scripts, clean errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

import caravane.cli
from caravane.cli import Caravane, main, register_commands
from caravane.packs.repository import Repository

from .conftest import read_tree, write_tree

EXE = [sys.executable, "-m", "caravane"]
register_commands(main)  # what `caravane` does before reading its command line


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*EXE, *map(str, args)], capture_output=True, text=True, timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", [(), *_commands(main)], ids=lambda p: " ".join(p) or "main")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_publish_checkout_pack_round_trip_with_json(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"Leçons/été.pdf": b"%PDF" + bytes(5000), "a.txt": "a"})
    run("repo", "init", tmp_path / "hub")
    out = json.loads(run("repo", "publish", tmp_path / "hub", "maths", src, "--json").stdout)
    assert (
        out["version"] == 1
        and out["files"] == 2
        and out["new_files"] == ["Leçons/été.pdf", "a.txt"]
    )
    (src / "a.txt").write_text("changé")
    out = json.loads(run("repo", "publish", tmp_path / "hub", "maths", src, "--json").stdout)
    assert out["version"] == 2 and out["changed_files"] == ["a.txt"]
    text = run("repo", "publish", tmp_path / "hub", "maths", src).stdout
    assert "published maths version 3" in text

    verify = json.loads(run("repo", "verify", tmp_path / "hub", "--json").stdout)
    assert verify["ok"] and verify["channels"] == {"maths": [1, 2, 3]}

    pack = json.loads(
        run(
            "pack", "build", tmp_path / "hub", "maths", tmp_path / "p", "--to", "2", "--json"
        ).stdout
    )
    assert pack["from_version"] == 0 and pack["to_version"] == 2
    run("repo", "init", tmp_path / "node", "--trust", tmp_path / "hub/metadata/root.json")
    v = json.loads(
        run("pack", "verify", tmp_path / "p", "--repo", tmp_path / "node", "--json").stdout
    )
    assert v["release"] == {"channel": "maths", "version": 2}
    assert json.loads(run("pack", "apply", tmp_path / "p", tmp_path / "node", "--json").stdout)[
        "ok"
    ]
    co = json.loads(
        run("repo", "checkout", tmp_path / "node", "maths", tmp_path / "out", "--json").stdout
    )
    assert co["version"] == 2
    assert read_tree(tmp_path / "out") == read_tree(src)


def test_errors_are_one_line_and_non_zero(tmp_path: Path) -> None:
    r = run("repo", "checkout", tmp_path / "nope", "maths", tmp_path / "out", ok=False)
    assert r.returncode != 0 and "Error" in r.stderr  # click refuses a missing folder
    (tmp_path / "empty").mkdir()
    r = run("repo", "publish", tmp_path / "empty", "maths", tmp_path, ok=False)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error:") and "not a Caravane repository" in r.stderr
    run("repo", "init", tmp_path / "hub")
    r = run("repo", "publish", tmp_path / "hub", "Bad Channel!", tmp_path / "empty", ok=False)
    assert r.returncode == 1 and "channel id" in r.stderr
    r = run("repo", "checkout", tmp_path / "hub", "maths", tmp_path / "o", "--json", ok=False)
    assert r.returncode == 1 and json.loads(r.stdout)["ok"] is False
    assert not (tmp_path / "o").exists()


def test_damaged_repository_fails_verify_with_exit_3(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a.bin": bytes(range(256)) * 100})
    run("repo", "init", tmp_path / "hub")
    run("repo", "publish", tmp_path / "hub", "c", src)
    # damage the last byte of the file's only chunk, where the segment index places it
    sha = hashlib.sha256(bytes(range(256)) * 100).hexdigest()
    index = Repository.open(tmp_path / "hub").store.index
    loc = index.locate(sha)
    assert loc is not None
    segment = index.segment_path(loc.segment)
    data = bytearray(segment.read_bytes())
    data[loc.offset + loc.length - 1] ^= 0xFF
    segment.write_bytes(bytes(data))
    r = run("repo", "verify", tmp_path / "hub", ok=False)
    assert r.returncode == 3 and "FAILED" in r.stdout and sha[:16] in r.stdout


def test_keys_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    out = json.loads(run("keys", "generate", tmp_path / "k.pem", "--json").stdout)
    assert len(out["keyid"]) == 64 and (tmp_path / "k.pem").stat().st_mode & 0o077 == 0
    r = run("keys", "generate", tmp_path / "k.pem", ok=False)
    assert r.returncode == 1 and "refusing to overwrite" in r.stderr


def test_root_rotation_through_the_cli(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a.txt": "un"})
    run("repo", "init", tmp_path / "hub")
    run("repo", "publish", tmp_path / "hub", "c", src)
    run("repo", "init", tmp_path / "node", "--trust", tmp_path / "hub/metadata/root.json")
    run("keys", "generate", tmp_path / "newroot.pem")
    run("keys", "generate", tmp_path / "newrelease.pem")
    run(
        "repo",
        "rotate-root",
        tmp_path / "hub",
        "--new-root-key",
        tmp_path / "newroot.pem",
        "--new-release-key",
        tmp_path / "newrelease.pem",
    )
    (src / "a.txt").write_text("deux")
    run("repo", "publish", tmp_path / "hub", "c", src)  # signed by the new release key
    run("pack", "build", tmp_path / "hub", "c", tmp_path / "p")
    run("pack", "apply", tmp_path / "p", tmp_path / "node")  # follows root 1 -> 2
    assert (tmp_path / "node/metadata/root/2.json").is_file()
    run("repo", "checkout", tmp_path / "node", "c", tmp_path / "out")
    assert (tmp_path / "out/a.txt").read_text() == "deux"


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = json.loads(run("demo", "--dir", tmp_path / "demo", "--json").stdout)
    assert out["ok"] and out["centre_identical"] and out["versions"] == [1, 2]


def test_every_group_is_registered_in_one_place() -> None:
    assert set(main.commands) >= {"keys", "repo", "pack", "demo", "publish", "hub", "node", "usb"}
    assert {name for _, _, name in caravane.cli.COMMANDS} == set(main.commands)


def test_a_group_that_fails_to_import_stops_caravane_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing dependency inside a sub-command's module is an error, not a missing command."""
    from click.testing import CliRunner

    (tmp_path / "broken_commands.py").write_text("import not_installed_library_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        caravane.cli, "COMMANDS", (*caravane.cli.COMMANDS, ("broken_commands", "cmd", "broken"))
    )
    root = Caravane(name="caravane")
    result = CliRunner().invoke(root, ["--help"])
    assert result.exit_code == 1
    assert "error: the `caravane broken` commands cannot be loaded" in result.output
    assert "broken_commands" in result.output and "not_installed_library_xyz" in result.output
    assert "reinstall" in result.output


def test_the_real_command_fails_loudly_when_hub_cli_cannot_import() -> None:
    code = (
        "import sys, runpy; sys.modules['caravane.hub.cli'] = None; "
        "runpy.run_module('caravane', run_name='__main__')"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "repo", "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("error: the `caravane hub` commands cannot be loaded")
    assert "caravane.hub.cli" in r.stderr and "Traceback" not in r.stderr
