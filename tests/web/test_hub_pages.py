"""The hub's pages as a field agent, a curator and an admin use them, in Chromium.

Each flow runs at 1366x768 in English and at 390x844 in French; every page it passes
through is checked by axe-core (zero violations) and for anything off-screen, at both
sizes and in both languages (and the fleet also at 320 px). Expected words come from the
catalogues, so a test reads the same in either language.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import zipfile
from pathlib import Path

import pytest

from caravane.hub.auth import Principal
from caravane.i18n import Translator
from tests.node.conftest import World
from tests.web.a11y import check_page
from tests.web.conftest import screenshot
from tests.web.test_browser import in_thread, report

DESKTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}
VIEWS = [("en", DESKTOP), ("fr", PHONE)]
OTHER_VIEWS = [("fr", DESKTOP), ("en", PHONE)]
CURATOR = Principal("curator", "curator")
ADMIN = Principal("admin", "admin")


@pytest.fixture
def open_page(browser):
    """A page in its own context at a viewport and language; remembers the pages it saw."""
    contexts = []

    def make(lang: str, viewport: dict[str, int]):
        ctx = browser.new_context(
            locale="fr-FR" if lang == "fr" else "en-GB",
            viewport=viewport,
            accept_downloads=True,
        )
        ctx.set_default_timeout(15_000)
        contexts.append(ctx)
        return ctx.new_page()

    yield make
    for ctx in contexts:
        ctx.close()


def sign_in(page, hub: str, token: str, lang: str, goto: str) -> None:
    t = Translator(lang)
    page.goto(f"{hub}{goto}{'&' if '?' in goto else '?'}lang={lang}")
    page.get_by_label(t("hub.token")).fill(token)
    page.get_by_role("button", name=t("hub.sign_in")).click()
    page.wait_for_url(f"**{goto.split('?')[0]}*")


def everywhere(open_page, hub: str, token: str, paths: list[str]) -> None:
    """The pages a flow visited, again in the other language and size: axe and layout.

    One page per template is enough (release 1 and release 2 are the same page).
    """
    kinds: dict[tuple[str, bool], str] = {}
    for path in paths:
        base, _, query = path.partition("?")
        kinds.setdefault((re.sub(r"/([0-9a-f]{12}|\d+)(?=/|$)", "/N", base), bool(query)), path)
    paths = list(kinds.values())
    for lang, view in OTHER_VIEWS:
        page = open_page(lang, view)
        sign_in(page, hub, token, lang, paths[0])
        for path in paths:
            page.goto(hub + path)
            check_page(page, f"{path} ({lang}, {view['width']} px)")


def zip_of(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(f"site/{name}", data)
    return path


# --------------------------------------------------------------------------- field agent


def test_field_agent_plans_a_route_prints_it_and_prepares_the_drive(
    world: World, open_page, tmp_path: Path
) -> None:
    hub = world.rh.hub
    hub.create_channel(CURATOR, {"id": "lecons", "title": "Leçons de lecture"})
    in_thread(world.publish, {"a.txt": b"lecons " * 1000})
    hub.create_channel(CURATOR, {"id": "sante", "title": "Santé de l'enfant"})
    world.channel = "sante"
    in_thread(world.publish, {"b.bin": random.Random(3).randbytes(300_000)})
    kita = hub.register_centre(ADMIN, {"name": "Kita", "region": "Kayes", "channels": ["lecons"]})
    hub.register_centre(ADMIN, {"name": "Nioro", "region": "Kayes", "channels": ["sante"]})
    hub.register_centre(ADMIN, {"name": "Kati", "region": "Koulikoro", "channels": ["lecons"]})
    drive = tmp_path / "drive"
    drive.mkdir()
    hub.config.usb_mounts = [str(drive), str(tmp_path / "not-plugged")]
    token = world.rh.token("field_agent")
    visited: list[str] = []

    for lang, view in VIEWS:
        t = Translator(lang)
        page = open_page(lang, view)
        sign_in(page, world.rh.url, token, lang, "/ui/routes")
        check_page(page)
        page.get_by_label(t("hub.region")).select_option("Kayes")
        page.get_by_role("button", name=t("hub.plan_go")).click()
        page.wait_for_url("**region=Kayes**")
        visited.append(page.url.removeprefix(world.rh.url))
        check_page(page)
        # each centre gets only its own subscriptions
        rows = page.locator("#plan tbody tr").all_inner_texts()
        assert len(rows) == 2
        assert any("Santé de l'enfant" in r and "Nioro" in r and "Kita" not in r for r in rows)
        assert any("Leçons de lecture" in r and "Kita" in r and "Nioro" not in r for r in rows)
        assert page.locator("#drive-needed").inner_text().startswith(
            t("hub.drive_needed", size="").split(" ")[0]
        )
        kita_sheet = page.locator('.centre-sheet[data-centre="Kita"]').inner_text()
        assert "Leçons de lecture" in kita_sheet and "Santé" not in kita_sheet
        assert t("hub.tick_receipt") in kita_sheet
        assert page.locator('.centre-sheet[data-centre="Kati"]').count() == 0
        # on paper: the checklist without the menus and forms
        page.emulate_media(media="print")
        assert page.locator("header").is_hidden() and page.locator("form").first.is_hidden()
        assert page.locator("#checklist").is_visible()
        page.emulate_media(media="screen")
        assert t("hub.drive_not_plugged") in page.locator("#mounts").inner_text()
        # the plan to take along
        with page.expect_download() as dl:
            page.get_by_role("link", name=t("hub.plan_download")).click()
        plan = json.loads(Path(dl.value.path()).read_text(encoding="utf-8"))
        by_name = {c["name"]: c for c in plan["centres"]}
        assert [s["channel"] for s in by_name["Kita"]["steps"]] == ["lecons"]
        assert plan["drive_bytes_needed"] > plan["total_bytes"] > 0
        # the drive is plugged into the hub machine: prepare it from the page
        page.get_by_role("button", name=t("hub.drive_prepare_at", path=str(drive))).click()
        page.wait_for_url("**/ui/routes/jobs/*")
        done = page.locator('#job-state[data-state="done"], #job-state[data-state="failed"]')
        done.wait_for(timeout=60_000)
        assert page.locator("#job-state").get_attribute("data-state") == "done", page.content()
        assert t("hub.drive_job_remove") in page.locator("main").inner_text()
        visited.append(page.url.removeprefix(world.rh.url))
        check_page(page)
        if lang == "en":
            screenshot(page, "hub-drive-ready")
            page.go_back()
            screenshot(page, "hub-route-plan")
    on_drive = json.loads((drive / "caravane" / "plans" / f"{kita['node_id']}.json").read_text())
    assert [s["channel"] for s in on_drive["steps"]] == ["lecons"]
    everywhere(open_page, world.rh.url, token, ["/ui/routes", *visited])


# --------------------------------------------------------------------------- curator


def test_curator_creates_a_channel_uploads_in_pieces_and_reviews_before_signing(
    world: World, open_page, tmp_path: Path
) -> None:
    token = world.rh.token("curator")
    site = {
        "index.html": b"<h1>Sante</h1>",
        "guide.pdf": b"%PDF-1.4 guide",
        "video.bin": random.Random(5).randbytes(2_600_000),  # three pieces of 1 MiB
    }
    visited: list[str] = []
    for lang, view in VIEWS:
        t = Translator(lang)
        page = open_page(lang, view)
        sign_in(page, world.rh.url, token, lang, "/ui/channels/new")
        check_page(page)
        title = "Santé de l'enfant" if lang == "en" else "Éducation civique"
        slug = "sante-de-l-enfant" if lang == "en" else "education-civique"
        page.get_by_label(t("hub.channel_title"), exact=True).fill(title)
        assert page.get_by_label(t("hub.channel_id"), exact=True).input_value() == slug
        # a refused id: the page's own message, the form kept
        page.get_by_label(t("hub.channel_id"), exact=True).fill("Santé!")
        page.get_by_role("button", name=t("hub.channel_create")).click()
        assert page.locator("#id-error").inner_text() == t("hub.channel_bad_id", id="Santé!")
        assert page.get_by_label(t("hub.channel_title"), exact=True).input_value() == title
        check_page(page, "new channel with an error")
        # the server says the same without the script (and keeps the form)
        status = page.evaluate(
            """async () => { const f = new FormData(document.getElementById('channel-form'));
                f.set('id', 'Bad Id'); const r = await fetch('/ui/channels/new',
                {method: 'POST', body: new URLSearchParams(f)});
                const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
                return [r.status, doc.getElementById('id-error').textContent,
                        doc.getElementById('title').value]; }"""
        )
        assert status == [422, t("hub.channel_bad_id", id="Bad Id"), title]
        page.get_by_label(t("hub.channel_id"), exact=True).fill(slug)
        page.get_by_role("button", name=t("hub.channel_create")).click()
        page.wait_for_url(f"**/ui/publish?channel={slug}**")
        assert page.get_by_label(t("hub.channel"), exact=True).input_value() == slug
        check_page(page)

        # a file that is not an archive: the message in the page, the notes kept
        notes = page.get_by_label(t("hub.notes"))
        notes.fill("Première version")
        bad = tmp_path / f"notes-{lang}.txt"
        bad.write_text("not an archive")
        page.get_by_label(t("hub.archive")).set_input_files(str(bad))
        page.get_by_role("button", name=t("hub.publish_next")).click()
        assert page.locator("#publish-error").inner_text() == t(
            "hub.publish_wrong_kind", name=bad.name
        )
        fake = tmp_path / f"fake-{lang}.zip"
        fake.write_bytes(b"this is not a zip file at all")
        page.get_by_label(t("hub.archive")).set_input_files(str(fake))
        page.get_by_role("button", name=t("hub.publish_next")).click()
        page.wait_for_load_state()
        page.locator("#publish-error").wait_for()
        assert page.locator("#publish-error").inner_text() == t(
            "hub.publish_wrong_kind", name=fake.name
        )
        assert page.get_by_label(t("hub.notes")).input_value() == "Première version"
        check_page(page, "publish form with an error")

        # the real archive goes in pieces; the connection is cut once and the page resumes
        good = zip_of(tmp_path / f"site-{lang}.zip", site)
        cut = {"done": False}

        def cut_once(route, request, cut=cut, lang=lang):
            """The second piece never arrives: the connection drops under it."""
            offset = request.headers.get("upload-offset", "0")
            if request.method == "PUT" and offset != "0" and (lang == "en" or not cut["done"]):
                cut["done"] = True
                route.abort("connectionreset")
            else:
                route.continue_()

        page.route("**/ui/uploads/*", cut_once)
        page.get_by_label(t("hub.archive")).set_input_files(str(good))
        page.get_by_role("button", name=t("hub.publish_next")).click()
        if lang == "en":
            # the link stays down: the page says it retries; the laptop is closed (reload),
            # and choosing the same file again sends only what the hub does not hold
            page.get_by_text(t("hub.upload_retry", s=1)).wait_for()
            held = page.evaluate(
                """async () => { const id = Object.entries(localStorage)
                    .find(([k]) => k.startsWith('caravane-upload:'))[1];
                  const csrf = document.getElementById('publish-form').dataset.csrf;
                  const r = await fetch('/ui/uploads/' + id, {headers: {'X-CSRF-Token': csrf}});
                  return (await r.json()).offset; }"""
            )
            size = good.stat().st_size
            assert held == 1024 * 1024 < size  # the whole first piece, not what came first
            bar = page.locator("#upload-progress").evaluate("b => b.value")
            assert bar == 100 * held // size
            page.unroute("**/ui/uploads/*")
            page.reload()
            sent: list[str] = []

            def record(r, sent=sent):
                if r.method == "PUT":
                    sent.append(r.headers.get("upload-offset", ""))

            page.on("request", record)
            page.get_by_label(t("hub.archive")).set_input_files(str(good))
            page.get_by_role("button", name=t("hub.publish_next")).click()
        page.wait_for_url("**/ui/jobs/*", timeout=60_000)
        assert cut["done"]
        if lang == "en":
            assert sent and sent[0] == str(held), sent  # resumed where the hub stood
        page.locator('#job-state[data-state="review"]').wait_for(timeout=60_000)
        counts = page.locator("#change-counts").inner_text()
        assert t("hub.changes_added", n=3) in counts
        visited.append(page.url.removeprefix(world.rh.url))
        check_page(page, "review of a first release")
        if lang == "en":
            screenshot(page, "hub-publish-review")
        page.get_by_role("button", name=t("hub.review_sign", v=1)).click()
        page.locator('#job-state[data-state="done"]').wait_for(timeout=60_000)
        page.get_by_role("link", name=t("hub.release_see", v=1)).click()
        assert "guide.pdf" in page.locator("#paths-added").inner_text()
        visited.append(page.url.removeprefix(world.rh.url))
        check_page(page)
        page.goto(world.rh.url + "/ui/channels")
        check_page(page)
        # the hub holds exactly the archive's files
        assert world.rh.hub.channel(slug)["releases"][0]["files"] == 3

        if lang != "en":  # the rest of the flow once is enough (its pages: everywhere())
            continue
        # the same archive again: a warning, and nothing published unless confirmed
        page.goto(f"{world.rh.url}/ui/publish?channel={slug}")
        page.get_by_label(t("hub.archive")).set_input_files(str(good))
        page.get_by_role("button", name=t("hub.publish_next")).click()
        page.locator('#job-state[data-state="review"]').wait_for(timeout=60_000)
        assert page.locator("#identical").inner_text() == t("hub.review_identical", v=1)
        check_page(page, "review of an identical archive")
        page.get_by_role("button", name=t("hub.review_cancel")).click()
        page.locator('#job-state[data-state="cancelled"]').wait_for()
        assert world.rh.hub.channel(slug)["latest"] == 1

        # a changed file and a removed one: the diff before and after signing
        changed = dict(site, **{"index.html": b"<h1>Sante v2</h1>"})
        del changed["guide.pdf"]
        page.goto(f"{world.rh.url}/ui/publish?channel={slug}")
        page.get_by_label(t("hub.archive")).set_input_files(
            str(zip_of(tmp_path / f"site2-{lang}.zip", changed))
        )
        page.get_by_role("button", name=t("hub.publish_next")).click()
        page.locator('#job-state[data-state="review"]').wait_for(timeout=60_000)
        counts = page.locator("#change-counts").inner_text()
        assert t("hub.changes_changed", n=1) in counts and t("hub.changes_removed", n=1) in counts
        assert page.locator("#paths-removed").inner_text() == "guide.pdf"
        page.get_by_role("button", name=t("hub.review_sign", v=2)).click()
        page.locator('#job-state[data-state="done"]').wait_for(timeout=60_000)
        page.get_by_role("link", name=t("hub.release_see", v=2)).click()
        assert page.locator("#paths-changed").inner_text() == "index.html"
        assert page.locator("#paths-removed").inner_text() == "guide.pdf"
        visited.append(page.url.removeprefix(world.rh.url))
    everywhere(
        open_page, world.rh.url, token,
        ["/ui/channels/new", "/ui/publish", "/ui/channels", *visited],
    )


# --------------------------------------------------------------------------- admin


def test_admin_registers_centres_and_reads_the_fleet(
    world: World, open_page, tmp_path: Path
) -> None:
    hub = world.rh.hub
    hub.create_channel(CURATOR, {"id": "lecons", "title": "Leçons de lecture"})
    in_thread(world.publish, {"a.txt": b"one"})
    koudougou = world.node("Centre de Koudougou")
    report(koudougou, world)
    in_thread(world.publish, {"a.txt": b"two"})  # Koudougou is now one behind
    ouaga = world.node("Centre de Ouaga")
    report(ouaga, world)
    visited: list[str] = []

    for lang, view in VIEWS:
        t = Translator(lang)
        page = open_page(lang, view)
        sign_in(page, world.rh.url, world.rh.admin, lang, "/ui/register")
        check_page(page)
        name = "Centre de Kita" if lang == "en" else "Centre de Ségou"
        page.get_by_label(t("hub.centre_name")).fill(name)
        page.get_by_label(t("hub.region")).fill("Kayes")
        assert page.get_by_label("Leçons de lecture").is_checked()
        page.get_by_role("button", name=t("hub.register_go")).click()
        assert page.locator("h1").inner_text() == t("hub.registered_title", name=name)
        assert "caravane node init" in page.locator("#next-steps").inner_text()
        assert "Leçons de lecture" in page.locator(".facts").inner_text()
        check_page(page, "registered")
        if lang == "en":
            screenshot(page, "hub-registered")
        with page.expect_download() as dl:
            page.locator("#enrolment-download").click()
        enrolment = json.loads(Path(dl.value.path()).read_text(encoding="utf-8"))
        assert enrolment["format"] == "caravane-enrolment" and enrolment["name"] == name
        # the same name again (other case, extra spaces): refused unless confirmed
        page.goto(world.rh.url + "/ui/register")
        page.get_by_label(t("hub.centre_name")).fill("  " + name.upper() + " ")
        page.get_by_role("button", name=t("hub.register_go")).click()
        assert page.locator("#duplicate").is_visible()
        assert page.get_by_label(t("hub.centre_name")).input_value() == name.upper()
        check_page(page, "duplicate name")
        assert sum(1 for c in hub.fleet() if c["name"] == name) == 1
        page.get_by_label(t("hub.register_duplicate_confirm", name=name)).check()
        page.get_by_role("button", name=t("hub.register_go")).click()
        assert page.locator("h1").inner_text() == t("hub.registered_title", name=name.upper())

        # the fleet: totals, the one behind first, relative times, titles
        page.goto(world.rh.url + "/ui/fleet")
        total = len(hub.fleet())
        assert page.locator("#fleet-totals strong").inner_text() == t(
            "hub.fleet_up_to_date", n=1, total=total
        )
        order = page.locator("#fleet tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.centre)"
        )
        # furthest behind first: the new centres hold nothing (2 behind), then Koudougou
        assert order[-2:] == ["Centre de Koudougou", "Centre de Ouaga"]
        row = page.locator('#fleet tr[data-centre="Centre de Koudougou"]')
        assert t("hub.versions_behind", channel="Leçons de lecture", n=1) in row.inner_text()
        contact = row.locator(".contact-cell time").first
        assert contact.inner_text() == t("hub.just_now")
        assert contact.get_attribute("datetime")
        check_page(page)
        if lang == "en":
            screenshot(page, "hub-fleet")
        else:
            screenshot(page, "hub-fleet-phone")
        page.get_by_role("link", name=t("hub.sort_name")).click()
        page.wait_for_url("**sort=name**")
        names = [n for n in page.locator("#fleet tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.centre)")]
        assert names == sorted(names, key=str.casefold)
        visited.append(page.url.removeprefix(world.rh.url))
        with page.expect_download() as dl:
            page.get_by_role("link", name=t("hub.fleet_csv")).click()
        rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text("utf-8-sig"))))
        k = next(r for r in rows if r["centre"] == "Centre de Koudougou")
        assert (k["channel_title"], k["installed"], k["latest"], k["behind"]) == (
            "Leçons de lecture", "1", "2", "1"
        )
        page.locator("#fleet tbody tr").first.get_by_role("link").click()
        assert "Leçons de lecture" in page.locator(".facts").inner_text()
        visited.append(page.url.removeprefix(world.rh.url))
        check_page(page)
    everywhere(open_page, world.rh.url, world.rh.admin, ["/ui/register", "/ui/fleet", *visited])
    narrow = open_page("fr", {"width": 320, "height": 640})
    sign_in(narrow, world.rh.url, world.rh.admin, "fr", "/ui/fleet")
    check_page(narrow, "fleet at 320 px")
    assert koudougou.config.node_id and ouaga.config.node_id
