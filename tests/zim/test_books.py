"""ZIM books end to end: published, updated by what changed, rebuilt, read, served, checked.

A real book made with python-libzim goes through the curator's upload client (the code
``caravane publish --hub`` runs) to a real hub on 127.0.0.1; centres take it with
``caravane node sync`` or from a drive, rebuild the ZIM file, and serve it in the portal,
through kiwix-serve, and as a download that zimcheck accepts.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from caravane.node.agent import NodeAgent
from tests.hub.conftest import free_port
from tests.node.conftest import World
from tests.support.zimbook import hostile_files, make_book, pages

BOOK = "books/lecons.zim"
CHANGED = {3: "photosynthèse revue et corrigée", 17: "nouvelle leçon de géométrie", 40: "fin"}


def run(*args: object, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "caravane", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def folder(tmp: Path, name: str, texts: dict[int, str]) -> Path:
    src = tmp / name
    make_book(src / BOOK, texts)
    (src / "lisez-moi.txt").write_text("Livres de la semaine\n", encoding="utf-8")
    return src


def publish(world: World, src: Path) -> int:
    import asyncio

    from caravane.hub.client import HubClient

    client = HubClient(world.rh.url, world.rh.token("curator"))
    out = asyncio.run(client.publish(world.channel, src, cache=world.tmp / "curator-cache"))
    return int(out["version"])


def sync(data_dir: Path, *extra: str) -> dict:
    out = run("node", "sync", "-d", data_dir, *extra, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    return doc


def zimcheck(path: Path) -> None:
    if shutil.which("zimcheck") is None:
        pytest.skip("zimcheck is not installed (apt-get install zim-tools; .ci/run does)")
    out = subprocess.run(["zimcheck", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:]


@pytest.fixture
def v1(tmp_path: Path) -> dict[int, str]:
    return pages(60)


def test_book_published_updated_by_its_changes_read_and_downloaded(
    world: World, tmp_path: Path, v1: dict[int, str]
) -> None:
    src1 = folder(tmp_path, "src-1", v1)
    assert publish(world, src1) == 1
    n = world.node("Kita")
    data = n.config.data_dir
    n.close()

    first = sync(data)
    assert first["channels"][0]["status"] == "activated", first
    live = data / "live" / world.channel
    assert (live / BOOK).is_file() and not (live / (BOOK + ".crv")).exists()

    n = NodeAgent.open(data)
    base = world.serve_node(n)
    with httpx.Client(base_url=base, timeout=10) as web:
        listing = web.get("/books/")
        assert listing.status_code == 200 and "Leçons de sciences" in listing.text
        book = f"/books/{world.channel}/{BOOK}/"
        home = web.get(book, follow_redirects=True)
        assert home.status_code == 200 and "Leçon 59" in home.text
        page = web.get(book + "content/a/3.html")
        assert page.status_code == 200 and "savoir3" in page.text
        img = web.get(book + "content/images/3.png")
        assert img.headers["content-type"] == "image/png" and img.content.startswith(b"\x89PNG")
        moved = web.get(book + "content/debut")  # a redirect entry of the book
        assert moved.status_code == 302 and moved.headers["location"].endswith("content/index.html")
        found = web.get(book + "search", params={"q": "savoir17"})
        assert found.status_code == 200 and "a/17.html" in found.text
        titles = web.get(book + "suggest", params={"q": "Leçon 4"}).json()["suggestions"]
        assert any(s["path"] == "a/4.html" for s in titles)
        assert web.get(book + "content/nothing-here.html").status_code == 404
        assert web.get(f"/books/{world.channel}/books/absent.zim/").status_code == 404

        # the update: three pages changed; the centre pays for them, not for the book
        src2 = folder(tmp_path, "src-2", pages(60, CHANGED))
        assert publish(world, src2) == 2
        second = sync(data)
        assert second["channels"][0]["status"] == "activated", second
        received = sum(second["received"].values())
        whole = (src2 / BOOK).stat().st_size
        print("update bytes", received, "whole new book", whole)
        assert received < whole / 5, (received, whole)

        page = web.get(book + "content/a/17.html")
        assert "nouvelle leçon de géométrie" in page.text
        found = web.get(book + "search", params={"q": "photosynthèse"})
        assert "a/3.html" in found.text

        download = web.get(f"/c/{world.channel}/{BOOK}")
        assert download.status_code == 200
        got = tmp_path / "telephone.zim"
        got.write_bytes(download.content)
    zimcheck(got)
    status = run("node", "status", "-d", data, "--json")
    assert status.returncode == 0, status.stderr


def test_tampered_entries_are_refused_and_the_book_stays_served(
    world: World, tmp_path: Path, v1: dict[int, str]
) -> None:
    from caravane.node.config import UpstreamConfig
    from caravane.packs.layout import object_relpath
    from caravane.packs.repository import Repository

    publish(world, folder(tmp_path, "src-1", v1))
    mirror = world.mirror_copy("mirror")
    n = world.node("Kita", upstreams=[UpstreamConfig("drive", "folder", str(mirror))])
    data = n.config.data_dir
    n.close()
    assert sync(data)["channels"][0]["active"] == 1

    publish(world, folder(tmp_path, "src-2", pages(60, CHANGED)))
    shutil.rmtree(mirror)
    world.mirror_copy("mirror")

    def stream_chunks(version: int) -> set[str]:
        """The book's chunks in release ``version`` (the hub's verified manifest)."""
        files = Repository.open(world.hub_repo).manifest(world.channel, version).files
        return {sha for f in files if f.path == BOOK + ".crv" for sha, _ in f.chunks}

    new_chunks = stream_chunks(2) - stream_chunks(1)
    assert new_chunks
    for sha in new_chunks:  # the changed entries, rewritten on the carrier
        (mirror / object_relpath(sha)).write_bytes(b"\x28\xb5\x2f\xfd" + b"rewritten" * 50)
    shutil.rmtree(mirror / "packs", ignore_errors=True)

    out = run("node", "sync", "-d", data, "--json")
    doc = json.loads(out.stdout)
    assert doc["channels"][0]["active"] == 1 and doc["channels"][0]["status"] != "activated"
    import libzim.reader

    a = libzim.reader.Archive(str(data / "live" / world.channel / BOOK))
    assert "savoir17" in bytes(a.get_entry_by_path("a/17.html").get_item().content).decode()


def test_hostile_zim_at_publish_is_refused_and_nothing_published(
    tmp_path: Path, v1: dict[int, str]
) -> None:
    good = make_book(tmp_path / "good" / "lecons.zim", v1)
    repo = tmp_path / "repo"
    assert run("repo", "init", repo).returncode == 0
    for kind, path in hostile_files(tmp_path / "bad", good).items():
        src = tmp_path / f"src-{kind}"
        src.mkdir()
        shutil.copy(path, src / "livre.zim")
        out = run("repo", "publish", repo, "lecons", src)
        assert out.returncode != 0, kind
        assert "Traceback" not in out.stderr, out.stderr
        said = out.stderr
        assert "livre.zim" in said and ("nothing was published" in said or "again" in said), said
    assert not (repo / "manifests" / "lecons").exists()
    reserved = tmp_path / "src-reserved"
    reserved.mkdir()
    (reserved / "x.zim.crv").write_bytes(b"hello")
    out = run("repo", "publish", repo, "lecons", reserved)
    assert out.returncode != 0 and "reserved" in out.stderr


def test_drive_carries_the_first_copy_then_the_update(
    world: World, tmp_path: Path, v1: dict[int, str]
) -> None:
    config = world.rh.hub.config
    hub_toml = config.data_dir / "hub.toml"
    hub_toml.write_text(config.to_toml())
    centre = NodeAgent.init(
        tmp_path / "centre", world.enrolment("Nioro"), upstreams=[], offline=True
    )
    centre.config.durable = False
    centre.config.save()
    centre.close()
    data = tmp_path / "centre"
    publish(world, folder(tmp_path, "src-1", v1))
    for version, texts in ((1, v1), (2, pages(60, CHANGED))):
        if version == 2:
            publish(world, folder(tmp_path, "src-2", texts))
        drive = tmp_path / f"drive-{version}"
        drive.mkdir()
        out = run("usb", "prepare", drive, "--nodes", "Nioro", "--hub-config", hub_toml, "--json")
        assert out.returncode == 0, out.stderr
        carried = sum(p.stat().st_size for p in drive.rglob("*") if p.is_file())
        if version == 2:  # the update travels as the changed entries, not as the book
            assert carried < (tmp_path / "src-2" / BOOK).stat().st_size / 3, carried
        out = run("usb", "import", drive, "-d", data, "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["channels"][0]["status"] == "activated", out.stdout
        out = run("usb", "ingest", drive, "--hub-config", hub_toml, "--json")  # back at the hub
        assert out.returncode == 0, out.stderr
    import libzim.reader

    a = libzim.reader.Archive(str(data / "live" / world.channel / BOOK))
    assert (
        "nouvelle leçon de géométrie"
        in bytes(a.get_entry_by_path("a/17.html").get_item().content).decode()
    )


def _wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"kiwix-serve exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError("kiwix-serve did not open its port")


def test_kiwix_serve_follows_activations_without_restart(
    world: World, tmp_path: Path, v1: dict[int, str]
) -> None:
    if shutil.which("kiwix-serve") is None or shutil.which("kiwix-manage") is None:
        pytest.skip("kiwix-serve is not installed (apt-get install kiwix-tools; .ci/run does)")
    publish(world, folder(tmp_path, "src-1", v1))
    n = world.node("Kita")
    data = n.config.data_dir
    n.close()
    sync(data)
    assert (data / "kiwix" / "library.xml").is_file()
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "caravane",
            "node",
            "kiwix",
            "-d",
            str(data),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc)
        with httpx.Client(timeout=10) as c:
            # the book's address in this kiwix-serve (/lecons or /content/lecons by version)
            feed = c.get(f"http://127.0.0.1:{port}/catalog/v2/entries").text
            href = re.search(r'<link type="text/html" href="([^"]+)"', feed)
            assert href, feed
            url = f"http://127.0.0.1:{port}{href.group(1)}/a/17.html"
            first = c.get(url, follow_redirects=True)
            assert first.status_code == 200 and "savoir17" in first.text
            publish(world, folder(tmp_path, "src-2", pages(60, CHANGED)))
            sync(data)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                page = c.get(url, follow_redirects=True)
                if "nouvelle leçon de géométrie" in page.text:
                    break
                time.sleep(0.5)
            else:
                raise AssertionError("kiwix-serve still serves the old book")
        assert proc.poll() is None  # the same process all along
    finally:
        proc.terminate()
        proc.wait(10)
