"""The usage pages in a real browser (Chromium via Playwright), in English and in French.

One hub on 127.0.0.1 with a channel in two releases and four centres whose signed reports
came over HTTP (tests.hub.test_usage.seed_usage): a curator reads the trend chart, the most
and never used files, the centres nobody opened, downloads the CSV, and switches to French;
a field agent is refused. Screenshots go to docs/screenshots/.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hub.conftest import RunningHub, start_hub
from tests.hub.test_usage import seed_usage
from tests.web.conftest import screenshot


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[RunningHub]:
    rh, server = start_hub(tmp_path / "hub")
    seed_usage(rh, tmp_path)
    yield rh
    server.stop()


def sign_in(page, hub_url: str, token: str, goto: str) -> None:
    page.goto(hub_url + goto)
    assert "/ui/login" in page.url
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{goto}")


def cells(page, selector: str) -> list[list[str]]:
    rows = page.locator(f"{selector} tbody tr")
    return [
        [c.strip() for c in rows.nth(i).locator("th, td").all_inner_texts()]
        for i in range(rows.count())
    ]


def test_usage_pages_in_english_and_french(seeded: RunningHub, new_page, browser) -> None:
    hub = seeded.url
    page = new_page()
    sign_in(page, hub, seeded.token("curator"), "/ui/usage")
    page.get_by_role("link", name="Usage", exact=True).wait_for()
    assert page.locator("h1").inner_text() == "Usage of the content"
    # the chart: an SVG with a title, bars for the two releases, release marks
    chart = page.locator("svg#trend-chart")
    assert chart.get_attribute("role") == "img"
    assert "Openings in lecons, by release" in (chart.locator("title").first.text_content() or "")
    assert page.locator("svg#trend-chart rect.bar").count() >= 2
    assert page.locator("svg#trend-chart line.release").count() >= 1
    # most used: small counts merged and hidden
    assert cells(page, "#top-files") == [
        ["a.pdf", "52"],
        ["c.mp4", "8"],
        ["other files (1)", "< 5"],
    ]
    assert "b.html" not in page.locator("#top-files").inner_text()
    assert page.locator("#never-used li").all_inner_texts() == ["d.txt", "e.pdf"]
    assert "2 of the 5 files of version 2" in page.locator("#never-summary").inner_text()
    screenshot(page, "hub-usage")

    # the CSV behind the table, as downloaded from the page
    with page.expect_download() as dl:
        page.locator("#top-h ~ p a", has_text="Download as CSV").click()
    text = Path(dl.value.path()).read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][-3:] == ["path", "items", "count"]
    assert [r[-3:] for r in rows[1:]] == [
        ["a.pdf", "1", "52"],
        ["c.mp4", "1", "8"],
        ["", "1", "<5"],
    ]

    # filter by region and by month
    page.get_by_label("Region", exact=True).select_option("Sikasso")
    page.get_by_label("Totals per", exact=True).select_option("month")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**region=Sikasso**")
    assert cells(page, "#top-files") == [["other files (1)", "< 5"]]

    # centres and regions
    page.goto(hub + "/ui/usage/centres")
    assert cells(page, "#nobody-opened")[0][:2] == ["Nioro", "Kayes"]
    assert cells(page, "#centres") == [["Kita", "Kayes", "62"], ["other centres (1)", "", "< 5"]]
    assert "Bobo" in page.locator("#no-report").inner_text()
    assert cells(page, "#regions") == [["Kayes", "62"], ["other regions (1)", "< 5"]]
    assert "Sikasso" not in page.locator("#centres").inner_text()
    screenshot(page, "hub-usage-centres")

    # the same pages in French
    page.get_by_role("link", name="Français").click()
    page.wait_for_url("**lang=fr**")
    assert page.locator("html").get_attribute("lang") == "fr"
    assert page.locator("h1").inner_text() == "Utilisation par centre et par région"
    assert "Centres dont personne n'a ouvert le portail" in page.content()
    assert cells(page, "#centres")[1] == ["autres centres (1)", "", "< 5"]
    page.goto(hub + "/ui/usage?channel=lecons")
    assert page.locator("h1").inner_text() == "Utilisation des contenus"
    assert "Les plus utilisés dans lecons" in page.locator("#top-h").inner_text()
    assert cells(page, "#top-files")[-1] == ["autres fichiers (1)", "< 5"]
    assert "2 des 5 fichiers de la version 2" in page.locator("#never-summary").inner_text()
    assert page.get_by_label("Période", exact=True).count() == 1

    # a field agent does not see usage
    agent = new_page()
    sign_in(agent, hub, seeded.token("field_agent"), "/ui/routes")
    assert agent.get_by_role("link", name="Usage", exact=True).count() == 0
    agent.goto(hub + "/ui/usage")
    assert "does not allow this page" in agent.content()
    agent.goto(hub + "/ui/usage/export/files.csv?channel=lecons")
    assert "does not allow this page" in agent.content()
