"""The hub's pages and the centre's portal in a real browser (Chromium via Playwright).

One hub and one centre on 127.0.0.1: a curator publishes through the upload form, the admin
registers the centre, the fleet page shows it fall behind and catch up after the centre syncs
and reports; on the portal a visitor browses, opens a PDF, seeks in a video and switches the
language. Screenshots of the main pages go to docs/screenshots/.
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from caravane.node.agent import NodeAgent
from tests.node.conftest import World
from tests.web.conftest import make_zip, minimal_pdf, screenshot

VIDEO = b"\x00\x00\x00\x18ftypmp42" + random.Random(7).randbytes(1_500_000)


def sign_in(page, hub_url: str, token: str, goto: str = "/ui/fleet") -> None:
    page.goto(hub_url + goto)
    assert "/ui/login" in page.url
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{goto}")


def publish_via_form(page, hub_url: str, archive: Path, channel: str, notes: str) -> str:
    page.goto(hub_url + "/ui/publish")
    if page.get_by_label("Channel", exact=True).count() == 0:  # no channel yet: make it
        page.get_by_role("link", name="New channel").first.click()
        page.get_by_label("Title", exact=True).fill(channel)
        page.get_by_role("button", name="Create the channel").click()
        page.wait_for_url("**/ui/publish?channel=*")
    page.get_by_label("Channel", exact=True).select_option(channel)
    page.get_by_label("Notes").fill(notes)
    page.get_by_label("Archive (.zip or .tar.gz)").set_input_files(str(archive))
    page.get_by_role("button", name="Send and review").click()
    page.wait_for_url("**/ui/jobs/*")
    reviewed = page.locator('#job-state[data-state="review"], #job-state[data-state="failed"]')
    reviewed.wait_for(timeout=60_000)
    if page.locator('#job-state[data-state="review"]').count():
        page.locator("#sign").click()
    finished = page.locator('#job-state[data-state="done"], #job-state[data-state="failed"]')
    finished.wait_for(timeout=60_000)
    state = page.locator("#job-state").get_attribute("data-state") or ""
    return state if state == "done" else f"{state}: {page.locator('main').inner_text()}"


def in_thread(fn, *args):
    """Playwright's sync API keeps an event loop running here: asyncio.run needs a thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def report(n: NodeAgent, world: World) -> None:
    assert world.sync(n).complete
    n.make_report()
    assert n.send_reports() >= 1


def fleet_row(page, name: str):
    return page.locator(f'#fleet tr[data-centre="{name}"]')


def test_publish_fleet_and_portal(world: World, new_page, tmp_path: Path) -> None:
    hub = world.rh.url
    files_v1 = {
        "docs/guide.pdf": minimal_pdf("Guide v1"),
        "videos/lecon-1.mp4": VIDEO,
        "textes/lisez-moi.txt": "Bonjour à tous".encode(),
    }
    # --- a curator publishes the first release through the form (zipped folder)
    curator = new_page()
    sign_in(curator, hub, world.rh.token("curator"))
    arch = make_zip(tmp_path / "lecons-v1.zip", files_v1, top="lecons")
    assert publish_via_form(curator, hub, arch, "lecons", "Première <b>version</b>") == "done"
    assert "version 1 is published (3 files)" in curator.content()
    curator.goto(hub + "/ui/channels")
    release = curator.locator("section.channel tbody tr").first
    assert "test-curator" in release.inner_text()
    # notes are escaped, not interpreted
    assert "Première <b>version</b>" in release.inner_text()
    # a curator may not register centres
    curator.goto(hub + "/ui/register")
    assert "does not allow this page" in curator.content()

    # --- the admin registers a centre: the form gives the enrolment file
    admin = new_page()
    sign_in(admin, hub, world.rh.admin, goto="/ui/register")
    admin.get_by_label("Centre name").fill("Centre de Kita")
    admin.get_by_label("Region").fill("Kayes")
    admin.get_by_role("button", name="Register the centre").click()
    with admin.expect_download() as dl:
        admin.locator("#enrolment-download").click()
    enrolment = json.loads(Path(dl.value.path()).read_text(encoding="utf-8"))
    assert enrolment["format"] == "caravane-enrolment" and enrolment["channels"] == ["lecons"]
    n = NodeAgent.init(tmp_path / "kita", enrolment, offline=True)
    n.config.durable, n.config.timeout_seconds = False, 5
    n.config.save()
    assert n.config.hub_url == hub
    report(n, world)

    admin.goto(hub + "/ui/fleet")
    row = fleet_row(admin, "Centre de Kita")
    assert "up to date" in row.inner_text() and "Kayes" in row.inner_text()
    assert "network" in row.inner_text()

    # --- a second release: the centre falls behind
    files_v2 = dict(files_v1, **{"docs/guide.pdf": minimal_pdf("Guide v2")})
    arch2 = make_zip(tmp_path / "lecons-v2.zip", files_v2)
    assert publish_via_form(curator, hub, arch2, "lecons", "Deuxième") == "done"
    curator.goto(hub + "/ui/channels")
    screenshot(curator, "hub-channels")

    admin.goto(hub + "/ui/fleet")
    row = fleet_row(admin, "Centre de Kita")
    assert "lecons: 1 behind" in row.inner_text()
    assert "behind" in (row.get_attribute("class") or "")
    screenshot(admin, "hub-fleet")
    admin.get_by_label("Only centres that are behind").check()
    admin.get_by_role("button", name="Show").click()
    admin.wait_for_url("**behind=1**")
    assert fleet_row(admin, "Centre de Kita").count() == 1
    admin.get_by_label("Region").select_option("Kayes")
    admin.get_by_role("button", name="Show").click()
    assert fleet_row(admin, "Centre de Kita").count() == 1

    # --- the centre syncs and reports: caught up, and gone from the "behind" list
    report(n, world)
    admin.reload()
    assert fleet_row(admin, "Centre de Kita").count() == 0
    admin.goto(hub + "/ui/fleet")
    row = fleet_row(admin, "Centre de Kita")
    assert "up to date" in row.inner_text()
    row.get_by_role("link", name="Centre de Kita").click()
    assert admin.locator("#reports tbody tr").count() == 2
    assert "lecons: 2" in admin.locator("#reports tbody tr").first.inner_text()

    # --- the hub in French, remembered
    admin.get_by_role("link", name="Français").click()
    assert admin.locator("h2").first.inner_text() == "Rapports"
    admin.goto(hub + "/ui/channels")
    assert admin.locator("h1").inner_text() == "Chaînes et versions"
    admin.get_by_role("link", name="English").click()
    assert admin.locator("h1").inner_text() == "Channels and releases"

    # --- the portal: browse, open the PDF, seek in the video, switch language
    portal = world.serve_node(n)
    visitor = new_page()
    visitor.goto(portal + "/")
    assert "Collections" in visitor.locator("h1").inner_text()
    screenshot(visitor, "portal-catalogue")
    visitor.get_by_role("link", name="lecons").first.click()
    visitor.get_by_role("link", name="docs/").click()
    pdf_link = visitor.get_by_role("link", name="guide.pdf")
    pdf_href = pdf_link.get_attribute("href")
    pdf = visitor.evaluate(
        """async (href) => {
            const r = await fetch(href);
            const b = new Uint8Array(await r.arrayBuffer());
            return {status: r.status, type: r.headers.get('content-type'),
                    head: String.fromCharCode(...b.slice(0, 5)), size: b.length};
        }""",
        pdf_href,
    )
    assert pdf["status"] == 200 and pdf["type"] == "application/pdf"
    assert pdf["head"] == "%PDF-" and pdf["size"] == len(files_v2["docs/guide.pdf"])
    # the browser's own navigation to the PDF gets it as a PDF (viewer or download)
    resp = visitor.request.get(visitor.url + pdf_href)
    assert resp.ok and resp.headers["content-type"] == "application/pdf"

    visitor.goto(portal + "/c/lecons/videos/")
    seek = visitor.evaluate(
        """async () => {
            const r = await fetch('lecon-1.mp4', {headers: {Range: 'bytes=1000000-1000099'}});
            const b = new Uint8Array(await r.arrayBuffer());
            return {status: r.status, range: r.headers.get('content-range'),
                    type: r.headers.get('content-type'), first: b[0], size: b.length};
        }"""
    )
    assert seek["status"] == 206 and seek["size"] == 100
    assert seek["range"] == f"bytes 1000000-1000099/{len(VIDEO)}"
    assert seek["first"] == VIDEO[1000000] and seek["type"] == "video/mp4"

    visitor.goto(portal + "/")
    visitor.get_by_role("link", name="Français").click()
    assert "Bienvenue" in visitor.locator("p.welcome").inner_text()
    visitor.goto(portal + "/")  # the choice is remembered
    assert "Bienvenue" in visitor.locator("p.welcome").inner_text()
    visitor.get_by_role("link", name="English").click()
    assert "Welcome" in visitor.locator("p.welcome").inner_text()
    visitor.goto(portal + "/operator")
    screenshot(visitor, "portal-operator")


def test_roles_sessions_and_route_plans(world: World, new_page, tmp_path: Path) -> None:
    hub = world.rh.url
    in_thread(world.publish, {"a.txt": b"one"})
    behind = world.node("Centre B")
    in_thread(world.publish, {"a.txt": b"two"})

    # the sign-in page refuses an unknown token
    page = new_page("fr-FR")
    page.goto(hub + "/ui/fleet")
    page.get_by_label("Jeton d'accès").fill("crv_not-a-token")
    page.get_by_role("button", name="Se connecter").click()
    assert "inconnu" in page.locator("p.error").inner_text()

    # a field agent sees the fleet and route plans, but cannot publish or register
    agent = new_page()
    sign_in(agent, hub, world.rh.token("field_agent"), goto="/ui/routes")
    nav = agent.get_by_role("navigation").inner_text()
    assert "Publish" not in nav and "Register" not in nav
    for path in ("/ui/publish", "/ui/register"):
        agent.goto(hub + path)
        assert agent.locator("h1").inner_text().startswith("Something went wrong (403)")
    agent.goto(hub + "/ui/routes")
    agent.get_by_label("Centre B").check()
    agent.get_by_role("button", name="Show the plan").click()
    assert "0 → 2" in agent.locator("#plan").inner_text()
    with agent.expect_download() as dl:
        agent.get_by_role("link", name="Download the plan (JSON)").click()
    plan = json.loads(Path(dl.value.path()).read_text(encoding="utf-8"))
    assert plan["format"] == "caravane-route-plan"
    assert plan["centres"][0]["id"] == behind.config.node_id
    assert [(p["channel"], p["from_version"], p["to_version"]) for p in plan["packs"]] == [
        ("lecons", 0, 2)
    ]
    assert plan["packs"][0]["for_centres"] == [behind.config.node_id]

    # a POST without the session's CSRF token is refused, even with the session cookie
    status = agent.evaluate(
        """async () => (await fetch('/ui/logout', {method: 'POST',
              headers: {'Content-Type': 'application/x-www-form-urlencoded'},
              body: 'csrf=forged'})).status"""
    )
    assert status == 403
    # signing out ends the session
    agent.get_by_role("button", name="Sign out").click()
    agent.wait_for_url("**/ui/login")
    agent.goto(hub + "/ui/routes")
    assert "/ui/login" in agent.url
