"""Where the hub's private keys live (issue 12): never in anything served or mirrored.

The repository folder is what a static server, a CDN, rsync or a drive copies whole; the
keys live beside it (``DATA/repo-keys``), the root key offline.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from caravane.packs.centre_store import CentreStore
from caravane.packs.hub_repository import HubRepository
from caravane.packs.repository import holds_signing_keys, keys_dir
from caravane.protocol.errors import CaravaneError
from caravane.protocol.keys import PrivateKey

from .conftest import write_tree

EXE = [sys.executable, "-m", "caravane"]


def run(*args: object) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*EXE, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_hub_init_keeps_every_key_out_of_the_served_folder(tmp_path: Path) -> None:
    data = tmp_path / "hubdata"
    offline = tmp_path / "usb" / "root.pem"
    out = json.loads(run("hub", "init", "--data", data, "--root-key-out", offline, "--json").stdout)
    assert out["root_key"] == str(offline)
    repo = data / "repo"
    release = data / "repo-keys" / "release.pem"
    assert release.is_file() and offline.is_file()
    assert not (data / "repo-keys" / "root.pem").exists()  # the hub runs without it
    assert release.stat().st_mode & 0o777 == 0o600
    assert offline.stat().st_mode & 0o777 == 0o600
    assert (data / "repo-keys").stat().st_mode & 0o777 == 0o700
    src = write_tree(tmp_path / "src", {"a.txt": b"un"})
    run("repo", "publish", repo, "c", src)

    # serve the repository folder as a plain web server would, and look everywhere
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/"
        for _ in range(100):
            try:
                get(base)
                break
            except OSError:
                time.sleep(0.05)
        served = [p for p in repo.rglob("*") if p.is_file()]
        assert served
        for path in served:
            status, body = get(base + path.relative_to(repo).as_posix())
            assert status == 200 and b"PRIVATE KEY" not in body, path
        for guess in ("keys/root.pem", "keys/release.pem", "../repo-keys/release.pem"):
            assert get(base + guess)[0] == 404, guess
    finally:
        server.terminate()
        server.wait(10)


def test_hub_init_says_to_move_the_root_key_offline(tmp_path: Path) -> None:
    r = run("hub", "init", "--data", tmp_path / "h")
    assert "USB key kept in a safe" in r.stdout
    assert (tmp_path / "h" / "offline-root-key.pem").is_file()


def test_an_old_repository_with_keys_inside_is_moved_out_when_the_hub_opens_it(
    tmp_path: Path,
) -> None:
    repo = HubRepository.init(tmp_path / "repo")
    # the old layout: keys inside the repository folder
    (repo.path / "keys").mkdir()
    for role in ("root", "release"):
        (keys_dir(repo.path) / f"{role}.pem").rename(repo.path / "keys" / f"{role}.pem")
    keys_dir(repo.path).rmdir()
    assert holds_signing_keys(repo.path)
    hub = HubRepository(repo.path)
    assert not (repo.path / "keys").exists()
    assert (keys_dir(repo.path) / "release.pem").stat().st_mode & 0o777 == 0o600
    hub.publish("c", write_tree(tmp_path / "src", {"a.txt": b"un"}))
    assert hub.channel_meta("c").version == 1


def test_a_key_on_both_sides_is_refused_with_both_paths_named(tmp_path: Path) -> None:
    repo = HubRepository.init(tmp_path / "repo")
    (repo.path / "keys").mkdir()
    PrivateKey.generate().save(repo.path / "keys" / "release.pem")
    with pytest.raises(CaravaneError, match="both exist"):
        HubRepository(repo.path)


def test_a_centre_store_beside_a_hub_repository_stays_a_centre(tmp_path: Path) -> None:
    hub = HubRepository.init(tmp_path / "hub")
    store = CentreStore.init(tmp_path / "store", hub.trusted.root_bytes)
    assert store.role == "centre" and not holds_signing_keys(store.path)


def test_rotate_keys_through_the_hub_command(tmp_path: Path) -> None:
    data = tmp_path / "hubdata"
    offline = tmp_path / "usb" / "root.pem"
    run("hub", "init", "--data", data, "--root-key-out", offline)
    src = write_tree(tmp_path / "src", {"a.txt": b"un"})
    run("repo", "publish", data / "repo", "c", src)
    run("keys", "generate", tmp_path / "new-release.pem")
    out = json.loads(
        run(
            "hub",
            "rotate-keys",
            "--config",
            data / "hub.toml",
            "--root-key",
            offline,
            "--new-release-key",
            tmp_path / "new-release.pem",
            "--json",
        ).stdout
    )
    assert out["root_version"] == 2 and out["channels"] == {"c": 2}
    new = PrivateKey.load(tmp_path / "new-release.pem")
    assert PrivateKey.load(data / "repo-keys" / "release.pem").keyid == new.keyid
    bad = subprocess.run(
        [
            *EXE,
            "hub",
            "rotate-keys",
            "--config",
            data / "hub.toml",
            "--root-key",
            tmp_path / "new-release.pem",
            "--new-release-key",
            offline,
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "is not the root key" in bad.stderr


def test_a_running_hub_picks_up_a_rotation_made_by_another_process(tmp_path: Path) -> None:
    serving = HubRepository.init(tmp_path / "repo")
    serving.publish("c", write_tree(tmp_path / "s1", {"a.txt": b"un"}))
    assert serving.trusted.root.version == 1
    operator = HubRepository(serving.path)  # `hub rotate-keys` in its own process
    operator.rotate_keys(PrivateKey.load(operator.key_path("root")), None, PrivateKey.generate())
    res = serving.publish("c", write_tree(tmp_path / "s3", {"a.txt": b"trois"}))
    assert res.version == 3 and serving.trusted.root.version == 2
