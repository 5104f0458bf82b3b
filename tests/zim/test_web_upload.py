"""A ZIM book in an archive uploaded on the hub's publish page goes through the same ingest."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

from caravane.hub.service import Principal
from tests.node.conftest import World
from tests.support.zimbook import hostile_files, make_book, pages
from tests.web.test_safety import Browser, _post_multipart


def _zipped(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _upload(world: World, b: Browser, csrf: str, data: bytes) -> str:
    fields = {"channel": world.channel, "csrf": csrf}
    status, body = _post_multipart(
        b, f"/ui/publish?csrf={csrf}", fields, {"archive": ("b.zip", data)}
    )
    assert status == 200, body
    return body


def test_book_uploaded_as_an_archive_is_published_as_its_entries(
    world: World, tmp_path: Path
) -> None:
    good = make_book(tmp_path / "lecons.zim", pages(20))
    world.rh.hub.create_channel(Principal("admin", "admin"), {"id": world.channel})
    b = Browser(world.rh.url)
    csrf = b.sign_in(world.rh.token("curator"))
    body = _upload(
        world, b, csrf, _zipped({"books/lecons.zim": good.read_bytes(), "lisez-moi.txt": b"livres"})
    )
    jid = body.split("/ui/jobs/")[1].split('"')[0]
    deadline = time.monotonic() + 60
    while 'data-state="review"' not in (page := b.call(f"/ui/jobs/{jid}")[1]):
        assert time.monotonic() < deadline and 'data-state="failed"' not in page, page[-1500:]
        time.sleep(0.2)
    assert "books/lecons.zim.crv" in page  # the review lists the book as its entries
    b.call(f"/ui/jobs/{jid}", {"csrf": csrf, "decision": "publish"})  # the curator signs
    while world.rh.hub.repo.known_version(world.channel) is None:
        assert time.monotonic() < deadline, "the publish job did not finish"
        time.sleep(0.2)
    paths = [f.path for f in world.rh.hub.repo.manifest(world.channel).files]
    assert paths == ["books/lecons.zim.crv", "lisez-moi.txt"]

    bad = hostile_files(tmp_path / "bad", good)["truncated"]
    body = _upload(
        world, b, csrf, _zipped({"books/lecons.zim": bad.read_bytes(), "lisez-moi.txt": b"livres"})
    )
    jid = body.split("/ui/jobs/")[1].split('"')[0] if "/ui/jobs/" in body else None
    deadline = time.monotonic() + 60
    while True:
        status, page = b.call(f"/ui/jobs/{jid}") if jid else (200, body)
        if "nothing was published" in page or "ZIM" in page and "damaged" in page:
            break
        assert time.monotonic() < deadline, page[-1500:]
        time.sleep(0.3)
    assert world.rh.hub.repo.known_version(world.channel) == 1
