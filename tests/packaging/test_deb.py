"""The Debian package on a fresh Debian machine: install, run the hub, stop it, purge.

The machine is a Debian bookworm (minbase, python3, rsync) made by debootstrap in this test's
folder and entered with chroot: no Docker engine is needed, only root and debootstrap. The
base system is made once and kept as a tarball in ~/.cache/caravane (``$CARAVANE_DEB_CACHE``),
unpacked afresh for each run, so a second run costs the package build and the install. The
package is built by ``scripts/build-deb`` as an operator would; ``$CARAVANE_DEB`` names an
already built one instead (CI builds it once).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
MIRROR = os.environ.get("CARAVANE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CACHE = Path(os.environ.get("CARAVANE_DEB_CACHE", Path.home() / ".cache" / "caravane" / "deb"))
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, mount)"
    for tool in ("debootstrap", "chroot", "dpkg-deb", "mount", "tar"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install debootstrap dpkg-dev)"
    if not Path("/usr/bin/python3").exists():
        return "no /usr/bin/python3 (Debian's python3 and python3-venv build the package)"
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(missing() is not None, reason=str(missing())),
]


def sh(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=CLEAN_ENV
    )


def base_tarball(work: Path) -> Path:
    """A pristine Debian base system as a tarball: made by debootstrap once, then reused."""
    tarball = CACHE / f"{SUITE}-minbase-python3-rsync.tar"
    if tarball.is_file():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    target = work / "debootstrap"
    out = sh(
        "debootstrap",
        "--variant=minbase",
        "--include=python3,rsync",
        f"--cache-dir={CACHE / 'debs'}",
        SUITE,
        target,
        MIRROR,
        timeout=900,
    )
    (CACHE / "debs").mkdir(exist_ok=True)
    if out.returncode != 0:
        pytest.skip(f"debootstrap could not make a {SUITE} system here: {out.stderr[-500:]}")
    partial = tarball.with_suffix(".partial")
    assert sh("tar", "-C", target, "--numeric-owner", "-cf", partial, ".").returncode == 0
    partial.rename(tarball)
    shutil.rmtree(target, ignore_errors=True)
    return tarball


@pytest.fixture
def debian(tmp_path: Path) -> Iterator[Path]:
    """A fresh Debian root in the test's folder, /proc mounted while the test runs."""
    root = tmp_path / "debian"
    root.mkdir()
    tarball = base_tarball(tmp_path)
    assert sh("tar", "-C", root, "--numeric-owner", "-xf", tarball).returncode == 0
    assert sh("mount", "-t", "proc", "proc", root / "proc").returncode == 0
    try:
        yield root
    finally:
        sh("umount", "-l", root / "proc")


def built_package(out: Path) -> Path:
    given = os.environ.get("CARAVANE_DEB")
    if given:
        return Path(given)
    build = subprocess.run(
        [str(REPO / "scripts" / "build-deb"), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    deb = Path(build.stdout.strip().splitlines()[-1])
    assert deb.is_file() and deb.suffix == ".deb"
    return deb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_health(url: str, proc: subprocess.Popen[str], seconds: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hub serve exited with {proc.returncode}: {proc.stderr}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return dict(json.loads(resp.read()))
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds}s")


def test_install_serve_stop_and_purge_on_fresh_debian(debian: Path, tmp_path: Path) -> None:
    deb = built_package(tmp_path / "out")
    shutil.copy(deb, debian / "tmp" / deb.name)

    def inside(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return sh("chroot", debian, *args, timeout=timeout)

    out = inside("dpkg", "-i", f"/tmp/{deb.name}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "caravane installed" in out.stdout

    out = inside("caravane", "--help")
    assert out.returncode == 0, out.stderr
    assert "hub" in out.stdout and "node" in out.stdout
    # the package made the service user and the FHS folders
    assert "caravane:" in (debian / "etc" / "passwd").read_text()
    assert (debian / "var/lib/caravane/hub").is_dir()
    assert (debian / "lib/systemd/system/caravane-hub.service").is_file()
    # the node imports and chunks in the installed environment
    out = inside("caravane", "node", "--help")
    assert out.returncode == 0, out.stderr

    port = free_port()
    # root would make files the service user cannot write: refused, with the command to run
    out = inside("caravane", "hub", "init", "--port", str(port))
    assert out.returncode != 0 and "sudo -u caravane caravane hub init" in out.stderr
    assert not (debian / "etc/caravane/hub.toml").exists()
    out = inside(
        "runuser", "-u", "caravane", "--", "caravane", "hub", "init", "--port", str(port), "--json"
    )
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    assert made["config"] == "/etc/caravane/hub.toml"  # FHS defaults: no --data, no --config
    assert (debian / "var/lib/caravane/hub/repo").is_dir()
    assert (debian / "var/lib/caravane/hub/hub.toml").exists() is False

    serve = subprocess.Popen(
        ["chroot", str(debian), "runuser", "-u", "caravane", "--", "caravane", "hub", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CLEAN_ENV,
        start_new_session=True,
    )
    try:
        health = wait_health(f"http://127.0.0.1:{port}/api/v1/health", serve)
        assert health["ok"] is True
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/channels",
            headers={"Authorization": f"Bearer {made['admin_token']}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2)

    out = inside("dpkg", "--purge", "caravane")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not (debian / "opt/caravane").exists()
    assert not (debian / "usr/bin/caravane").exists()
    assert not (debian / "etc/caravane").exists()
    # a purge keeps the hub's keys and repository, and says so
    assert (debian / "var/lib/caravane/hub/repo-keys").is_dir()
    assert "/var/lib/caravane" in out.stderr
