"""The operator page over real HTTP: the truth about releases and routes, and its buttons."""

from __future__ import annotations

import http.cookiejar
import re
import time
import urllib.error
import urllib.parse
import urllib.request

from caravane.node.config import UpstreamConfig
from tests.node.conftest import World, content


class Client:
    """A browser-like client with cookies (the CSRF cookie)."""

    def __init__(self, base: str, lang: str = "en") -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.lang = lang

    def get(self, path: str) -> tuple[int, str]:
        req = urllib.request.Request(self.base + path, headers={"Accept-Language": self.lang})
        try:
            with self.opener.open(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post(self, path: str, fields: dict[str, str], origin: str | None = None) -> tuple[int, str]:
        headers = {"Accept-Language": self.lang}
        if origin:
            headers["Origin"] = origin
        data = urllib.parse.urlencode(fields).encode()
        req = urllib.request.Request(self.base + path, data, headers)
        try:
            with self.opener.open(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def wait_job(c: Client) -> dict:
    import json

    for _ in range(200):
        _, body = c.get("/api/operator/job")
        doc = json.loads(body)
        if doc["job"] and doc["job"]["state"] != "running":
            return doc
        time.sleep(0.1)
    raise AssertionError("the job did not end")


def test_the_page_says_a_newer_release_waits_and_why(world: World) -> None:
    world.publish(content(1, big=50_000, files=2))
    # a budget of 1 MB a day on a metered link: the first release fits, the second does not
    metered = [UpstreamConfig("hub", "http", world.rh.url, 10, metered=True)]
    n = world.node("Centre de Koudougou", upstreams=metered, daily_budget_mb=1)
    assert world.sync(n).complete
    world.publish(content(2, big=2_000_000, files=2))
    r = world.sync(n)
    assert not r.complete
    url = world.serve_node(n)
    status, page = Client(url).get("/operator")
    assert status == 200
    assert "Centre Centre" not in page and "Centre de Koudougou" in page
    assert "Version 1 is served" in page
    assert "Version 2 is known" in page and "it is not served yet" in page
    assert "Today&#39;s data budget (1.0 MB) is spent" in page
    assert "The last pass said" not in page  # said once, in words, not the engine's line
    assert "Last pass just now" in page and "by hand: not complete" in page
    # routes: the hub was in contact just now, and its last complete sync was the first one
    route = page[page.index("Network (hub)") :]
    assert "Last contact</dt><dd>just now" in route
    # events in the page's language and the centre's time, not UTC ISO strings
    _, fr = Client(url, "fr").get("/operator")
    assert (
        "lecons : la version 1 est maintenant servie (première livraison ; arrivée par "
        "Réseau (hub))." in fr
    )
    assert not re.search(r"<td>\d{4}-\d\d-\d\dT", fr)
    assert "Le forfait de données du jour" in fr


def test_sync_now_needs_the_csrf_token_then_runs(world: World) -> None:
    world.publish(content(1, big=50_000, files=2))
    n = world.node("Centre B", windows=["00:00-00:01"])
    url = world.serve_node(n)
    c = Client(url)
    _, page = c.get("/operator")
    assert "Nothing is served yet" in page and "Sync now" in page
    # a forged or missing token is refused and starts nothing
    assert c.post("/operator/sync", {"csrf": "x" * 43})[0] == 403
    assert c.post("/operator/sync", {})[0] == 403
    other = Client(url)  # another visitor's token is not ours
    assert other.post("/operator/sync", {"csrf": csrf_of(page)})[0] == 403
    # the right token from another site's page (Origin) is refused as well
    assert c.post("/operator/sync", {"csrf": csrf_of(page)}, "http://evil.example")[0] == 403
    assert n.releases.active("lecons") is None
    # the button: a POST, back to the page, the job runs and the page says how it ended
    status, page = c.post("/operator/sync", {"csrf": csrf_of(page)})
    assert status == 200 and "Sync started at" in page
    doc = wait_job(c)
    assert doc["job"]["state"] == "done", doc
    assert n.releases.active("lecons") == 1
    _, page = c.get("/operator")
    assert "lecons: version 1 is now served." in page and "finished" in page
    assert "Version 1 is served" in page


def test_import_the_drive_button(world: World, tmp_path) -> None:
    from caravane.hub.usb import prepare_for_route

    world.publish(content(1, big=50_000, files=2))
    mounts = tmp_path / "media"
    mounts.mkdir()
    n = world.node("Centre C", upstreams=[], usb_mounts=[str(mounts)])
    url = world.serve_node(n)
    c = Client(url)
    _, page = c.get("/operator")
    status, page = c.post("/operator/import", {"csrf": csrf_of(page)})
    doc = wait_job(c)
    assert doc["job"]["state"] == "failed"
    assert "No drive was found in " + str(mounts) in doc["words"]["lines"][0]
    # the field agent's drive, prepared at the hub, is plugged in: the button imports it
    (mounts / "KEY").mkdir()
    prepare_for_route(world.rh.hub, mounts / "KEY", channels=["lecons"])
    _, page = c.get("/operator")
    assert c.post("/operator/import", {"csrf": csrf_of(page)})[0] == 200
    doc = wait_job(c)
    assert doc["job"]["state"] == "done", doc
    assert n.releases.active("lecons") == 1
    _, page = c.get("/operator")
    assert "Drive import started at" in page and "lecons: version 1 is now served." in page
    assert "The drive " + str(mounts / "KEY") + " can be removed now." in page
    assert "USB drive" in page and "Last complete sync</dt><dd>just now" in page


def test_outside_the_windows_the_page_says_so(world: World) -> None:
    from datetime import datetime, timedelta

    world.publish(content(1, big=50_000, files=2))
    later = datetime.now() + timedelta(hours=2)
    window = f"{later:%H}:00-{(later + timedelta(hours=1)):%H}:00"
    n = world.node("Centre D", windows=[window])
    assert n.sync(respect_windows=True).skipped.startswith("outside the sync windows")
    _, page = Client(world.serve_node(n)).get("/operator")
    assert "by the agent: skipped, outside the sync windows." in page
    assert f"It is outside the sync windows ({window})" in page
    assert "Nothing is served yet" in page
