"""The publish page's archive goes into the hub as a tree of pieces, as a curator's client
sends it: the review is the diff of the two trees, and signing checks the tree whole."""

from __future__ import annotations

import time

from caravane.hub.models import Upload
from caravane.hub.service import Principal
from tests.node.conftest import World
from tests.web.test_safety import Browser, _post_multipart
from tests.zim.test_web_upload import _zipped


def _publish(world: World, b: Browser, csrf: str, files: dict[str, bytes]) -> tuple[str, str]:
    """Upload an archive and wait for its review; (job id, review page)."""
    fields = {"channel": world.channel, "csrf": csrf}
    status, body = _post_multipart(
        b, f"/ui/publish?csrf={csrf}", fields, {"archive": ("l.zip", _zipped(files))}
    )
    assert status == 200, body
    jid = body.split("/ui/jobs/")[1].split('"')[0]
    deadline = time.monotonic() + 60
    while 'data-state="review"' not in (page := b.call(f"/ui/jobs/{jid}")[1]):
        assert time.monotonic() < deadline and 'data-state="failed"' not in page, page[-1500:]
        time.sleep(0.2)
    return jid, page


def _sign(world: World, b: Browser, csrf: str, jid: str, version: int) -> None:
    b.call(f"/ui/jobs/{jid}", {"csrf": csrf, "decision": "publish"})
    deadline = time.monotonic() + 60
    while world.rh.hub.repo.known_version(world.channel) != version:
        assert time.monotonic() < deadline, "the publish job did not finish"
        time.sleep(0.2)


def test_an_archive_is_reviewed_as_the_diff_of_two_trees_and_signed_as_one(world: World) -> None:
    hub = world.rh.hub
    hub.create_channel(Principal("admin", "admin"), {"id": world.channel})
    b = Browser(world.rh.url)
    csrf = b.sign_in(world.rh.token("curator"))
    first = {f"lecons/l{i:03d}.txt": f"leçon {i}\n".encode() * (i + 1) for i in range(120)}
    first["lisez-moi.txt"] = b"des lecons\n"  # two entries at the top: kept as folders
    jid, page = _publish(world, b, csrf, first)
    assert "lecons/l000.txt" in page
    with hub.db.session() as s:
        (up,) = s.query(Upload).all()
        # the file list is a tree in the store: the upload's row names its root only
        assert up.tree is not None and up.tree["files"] == 121 and not up.files
    _sign(world, b, csrf, jid, 1)

    second = dict(first)
    second["lecons/l005.txt"] = "une leçon réécrite\n".encode()
    del second["lecons/l007.txt"]
    second["lecons/nouvelle.txt"] = b"nouvelle\n"
    jid, page = _publish(world, b, csrf, second)
    for path in ("lecons/l005.txt", "lecons/l007.txt", "lecons/nouvelle.txt"):
        assert path in page
    assert "lecons/l006.txt" not in page  # unchanged: counted, not listed
    _sign(world, b, csrf, jid, 2)
    release = hub.repo.snapshot().release(world.channel, 2)
    assert {f.path for f in release.iter_files()} == set(second)
    assert hub.repo.verify().ok
    # the release page: the same diff, from the two signed trees
    status, page = b.call(f"/ui/channels/{world.channel}/releases/2")
    assert status == 200
    for path in ("lecons/l005.txt", "lecons/l007.txt", "lecons/nouvelle.txt"):
        assert path in page
    assert "lecons/l006.txt" not in page
