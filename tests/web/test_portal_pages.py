"""The centre's portal and operator page in Chromium, as visitors and operators use them.

A hub on 127.0.0.1 publishes a small health library (HTML pages, a PDF, an image, a video);
a centre syncs it for real and serves it. In French and English, at 1366x768, 390x844 and
320x640: search finds pages by their title and text with accents folded, suggestions come
while typing, content pages keep a way back, the header fits (the language link never
covers the search button), everything works from the keyboard, and axe-core finds no
violation on any portal page. The operator presses "Sync now" and sees the new release.
Screenshots go to docs/screenshots/.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from pathlib import Path

import pytest

from caravane.hub.client import HubClient
from caravane.node.agent import NodeAgent
from tests.foundation.conftest import write_tree
from tests.node.conftest import World
from tests.web.conftest import minimal_pdf, screenshot
from tests.web.test_browser import in_thread

AXE = Path(__file__).parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"
SIZES = {"desktop": (1366, 768), "phone": (390, 844), "small": (320, 640)}
LOCALES = {"en": "en-GB", "fr": "fr-FR"}


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"\x00" + b"\x2a\x6f\xb0" * 4
    rows = raw * 4
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def page_html(title: str, body: str) -> bytes:
    return (
        f'<!doctype html><html lang="fr"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>body{{margin:0;font-family:serif}} h1{{color:#600}}</style></head>"
        f"<body><h1>{title}</h1><p>{body}</p></body></html>"
    ).encode()


def library(version: int) -> dict[str, bytes]:
    return {
        "index.html": page_html("Santé pour tous", "Guides de santé pour les animateurs."),
        "guides/alimentation.html": page_html(
            "Nutrition de l'enfant", "Les repas du jeune enfant, de 6 mois à 5 ans."
        ),
        "guides/hygiene.html": page_html("Hygiène", "Se laver les mains au savon."),
        "docs/paludisme.pdf": minimal_pdf("Moustiquaire impregnee"),
        "images/puits.png": png(),
        "videos/lecon.mp4": b"\x00\x00\x00\x18ftypmp42" + bytes(20_000),
        "nouveautes.txt": f"Version {version} de la bibliotheque".encode(),
    }


def publish(world: World, files: dict[str, bytes], n: int) -> None:
    src = write_tree(world.tmp / f"library-{n}", files)
    client = HubClient(world.rh.url, world.rh.token("curator"))
    asyncio.run(
        client.publish("sante", src, cache=world.tmp / "cache", title="Santé", notes="Guides")
    )


@pytest.fixture
def centre(world: World, tmp_path: Path) -> tuple[str, NodeAgent]:
    if not AXE.is_file():
        pytest.skip("axe-core is not installed: (cd tests/web/axe && npm ci)")
    world.channel = "sante"
    in_thread(publish, world, library(1), 1)
    n = world.node("Centre de Koudougou")
    assert world.sync(n).complete
    return world.serve_node(n), n


def axe_violations(page) -> list[str]:
    page.add_script_tag(path=str(AXE))
    found = page.evaluate(
        """async () => {
            const r = await axe.run(document);
            return r.violations.map(v => v.id + ': ' + v.nodes.map(n => n.target).join(' '));
        }"""
    )
    return list(found)


def open_page(new_page, lang: str, size: str):
    page = new_page(LOCALES[lang])
    w, h = SIZES[size]
    page.set_viewport_size({"width": w, "height": h})
    return page


def assert_header_fits(page) -> None:
    box = page.evaluate(
        """() => {
            const r = e => e.getBoundingClientRect();
            const b = r(document.querySelector('.find button'));
            const l = r(document.querySelector('a.lang'));
            const i = r(document.querySelector('#q'));
            return {b: [b.left, b.top, b.right, b.bottom], l: [l.left, l.top, l.right, l.bottom],
                    i: [i.left, i.right], width: innerWidth,
                    scroll: document.scrollingElement.scrollWidth};
        }"""
    )
    b, lang = box["b"], box["l"]
    overlap = not (lang[2] <= b[0] or b[2] <= lang[0] or lang[3] <= b[1] or b[3] <= lang[1])
    assert not overlap, box
    assert b[2] <= box["width"] and box["scroll"] <= box["width"], box  # nothing cut off
    assert box["i"][1] - box["i"][0] >= 120, box  # room to type


@pytest.mark.parametrize("lang", ["en", "fr"])
def test_search_suggestions_and_pages_at_every_size(centre, new_page, lang: str) -> None:
    url, _ = centre
    words = {
        "en": ("Collections", "Results for", "Back to Santé", "Search", "Search titles and texts"),
        "fr": (
            "Collections",
            "Résultats pour",
            "Retour à Santé",
            "Rechercher",
            "Chercher dans les titres et les textes",
        ),
    }[lang]
    for size in SIZES:
        page = open_page(new_page, lang, size)
        page.goto(url + "/")
        assert page.locator("h1").inner_text() == words[0]
        card = page.locator(".card").first
        assert "Santé" in card.inner_text() and "Guides de santé" in card.inner_text()
        assert axe_violations(page) == []
        assert_header_fits(page)
        if size != "desktop" or lang == "en":
            screenshot(page, f"portal-catalogue-{lang}-{size}")

        # the title of a page, typed with its apostrophe
        # the search box (a combobox: it offers suggestions)
        page.get_by_role("combobox", name=words[4]).fill("nutrition de l'enfant")
        page.get_by_role("button", name=words[3]).click()
        assert words[1] in page.locator("h1").inner_text()
        first = page.locator("#results li").first
        assert first.locator("a.hit").inner_text() == "Nutrition de l'enfant"
        assert "Santé" in first.locator(".where").inner_text()
        assert axe_violations(page) == []
        assert_header_fits(page)
        # accents do not matter, either way
        page.goto(url + "/search?q=Hygi%C3%A8ne")
        assert page.locator("#results a.hit").first.inner_text() == "Hygiène"
        page.goto(url + "/search?q=hygiene+savon")
        assert page.locator("#results a.hit").all_inner_texts() == ["Hygiène"]
        assert "savon" in page.locator("#results mark").all_inner_texts()
        page.goto(url + "/search?q=moustiquaire")  # the text inside the PDF
        assert "paludisme.pdf" in page.locator("#results .where").first.inner_text()
        screenshot(page, f"portal-search-{lang}-{size}")

        # a PDF and an image open in a page with the way back; the files stay as they are
        page.goto(url + "/c/sante/docs/paludisme.pdf")
        assert page.locator("iframe").get_attribute("src") == "paludisme.pdf?raw=1"
        assert page.get_by_role("link", name=words[2]).count() >= 1
        assert axe_violations(page) == []
        if size == "phone":
            screenshot(page, f"portal-pdf-{lang}-{size}")
        page.goto(url + "/c/sante/images/puits.png")
        assert page.locator(".viewer img").evaluate("i => i.complete && i.naturalWidth") == 4
        assert axe_violations(page) == []
        page.goto(url + "/c/sante/videos/")
        assert page.locator("h1").inner_text() == "Santé / videos"  # titles, not ids
        # file-type icons load (an SVG sprite: no emoji font needed on the centre's PCs)
        icon = page.locator("svg.icon use").first
        assert icon.get_attribute("href") == "/static/icons.svg#video"
        assert page.request.get(url + "/static/icons.svg").ok
        assert axe_violations(page) == []
        page.goto(url + "/operator")
        assert axe_violations(page) == []
        assert_header_fits(page)


def test_suggestions_keyboard_and_the_bar_on_a_site(centre, new_page) -> None:
    url, _ = centre
    page = open_page(new_page, "en", "phone")
    page.goto(url + "/")
    # suggestions while typing fill the box's list
    page.locator("#q").press_sequentially("nutr", delay=30)
    option = page.locator('#q-suggestions option[value="Nutrition de l\'enfant"]')
    option.wait_for(state="attached")
    # the plain form still works without JavaScript's help: the JSON endpoint too
    doc = page.evaluate("async () => (await fetch('/api/suggest?q=hyg')).json()")
    assert [s["title"] for s in doc["suggestions"]] == ["Hygiène"]

    # keyboard only: skip link, search box, results, a page and its bar
    page.goto(url + "/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "q":
            break
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("hygiene")
    page.keyboard.press("Enter")
    page.wait_for_url("**/search?q=hygiene")
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.className") == "hit":
            break
    assert page.evaluate("document.activeElement.textContent") == "Hygiène"
    page.keyboard.press("Enter")
    page.wait_for_url("**/c/sante/guides/hygiene.html")
    # the site's page as it is, with the thin bar on top
    assert page.locator("h1").inner_text() == "Hygiène"
    assert page.locator("h1").evaluate("h => getComputedStyle(h).color") == "rgb(102, 0, 0)"
    bar = page.locator("#caravane-bar")
    assert bar.get_by_role("link").all_inner_texts() == ["Home", "Search", "Back to Santé"]
    screenshot(page, "portal-page-bar-en-phone")
    page.keyboard.press("Tab")  # the bar comes first
    assert page.evaluate("document.activeElement.textContent") == "Home"
    bar.get_by_role("link", name="Back to Santé").click()
    page.wait_for_url("**/c/sante/guides/")
    # what a site's scripts fetch is the file itself, without the bar
    raw = page.evaluate("async () => (await fetch('hygiene.html')).text()")
    assert "caravane-bar" not in raw and raw.startswith("<!doctype html>")


def test_operator_syncs_now_and_tells_the_truth(centre, world: World, new_page) -> None:
    url, n = centre
    in_thread(publish, world, library(2), 2)
    for lang, size in (("fr", "phone"), ("en", "desktop")):
        page = open_page(new_page, lang, size)
        page.goto(url + "/operator")
        text = page.locator("main").inner_text()
        assert "Centre Centre" not in text and "Centre de Koudougou" in text
        assert "UTC" not in page.locator("table.events").inner_text()
        assert axe_violations(page) == []
        screenshot(page, f"portal-operator-{lang}-{size}")
    # the centre has not asked the hub since: it still believes it is up to date, and
    # says when it last checked instead of claiming there is nothing newer
    assert "Last word from an upstream: just now" in page.locator(".summary").inner_text()
    page.get_by_role("button", name="Sync now").click()
    page.wait_for_url("**/operator#job")
    done = page.locator('#job [data-state="done"]')
    done.wait_for(timeout=60_000)
    assert "Santé: version 2 is now served." in page.locator("#job").inner_text()
    card = page.locator('article[data-channel="sante"]')
    assert "Version 2 is served" in card.inner_text()
    assert n.releases.active("sante") == 2
    assert axe_violations(page) == []
    screenshot(page, "portal-operator-after-sync-en-desktop")
    # and search follows the release served: version 2's text is found
    page.goto(url + "/search?q=version+2+bibliotheque")
    assert page.locator("#results a.hit").first.inner_text() == "nouveautes"
