"""Languages are the catalogues present: a translator's new catalogue is served, no code change.

Also the plural forms pages use for counts (French: 0 and 1 singular; English: only 1).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from babel.messages.pofile import read_po, write_po

from caravane import i18n
from tests.node.conftest import World


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


@pytest.fixture
def portal(world: World) -> str:
    """A centre serving one channel of a single file (a count of 1 on the catalogue)."""
    world.publish({"guide.txt": b"lire et compter\n"})
    n = world.node("Koudougou")
    world.sync(n)
    return world.serve_node(n)


def add_moore(tmp_path: Path) -> Path:
    """What TRANSLATING.md tells a translator to do, on a copy of the catalogues."""
    locales = Path(shutil.copytree(i18n.LOCALES, tmp_path / "locales"))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "caravane.i18n_tools",
            "init",
            "mos",
            "--name",
            "Mooré",
            "--plural-forms",
            "nplurals=1; plural=0;",
            "--locales",
            str(locales),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    path = locales / "mos" / "LC_MESSAGES" / "caravane.po"
    with path.open("rb") as f:
        cat = read_po(f)
    cat["portal.title"].string = "Zãmsg zĩiga"
    cat["portal.files"].string = ("sɛb {n}",)  # one form: Plural-Forms says nplurals=1
    with path.open("wb") as f:
        write_po(f, cat)
    return locales


def test_a_new_catalogue_is_a_new_language(
    portal: str, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(i18n, "RECHECK", 0.0)  # look at the folders on every request
    _, _, page = get(portal + "/?lang=mos")
    assert 'lang="en"' in page  # no Mooré catalogue yet: English
    monkeypatch.setenv("CARAVANE_LOCALES", str(add_moore(tmp_path)))

    status, headers, page = get(portal + "/?lang=mos")
    assert status == 200 and headers["Content-Language"] == "mos"
    assert '<html lang="mos">' in page and "Zãmsg zĩiga" in page and "sɛb 1" in page
    assert "Bienvenue" in page  # not translated yet: French, then English
    assert 'hreflang="fr"' in page and 'hreflang="en"' in page

    _, headers, page = get(portal + "/", {"Accept-Language": "mos, fr;q=0.8"})
    assert headers["Content-Language"] == "mos"
    _, _, page = get(portal + "/?lang=en")
    assert '<a href="?lang=mos" hreflang="mos" lang="mos" class="lang">Mooré</a>' in page

    _, headers, page = get(world.rh.url + "/ui/login?lang=mos")
    assert headers["Content-Language"] == "mos" and 'hreflang="en"' in page
    _, _, page = get(world.rh.url + "/ui/login?lang=fr")
    assert ">Mooré</a>" in page and ">English</a>" in page

    # a catalogue that does not parse does not take the pages down
    broken = tmp_path / "locales" / "mos" / "LC_MESSAGES" / "caravane.po"
    broken.write_text('msgid "portal.title"\nmsgstr "unterminated\nmsgid\n', encoding="utf-8")
    status, _, page = get(portal + "/?lang=mos")
    assert status == 200 and "Centre d'apprentissage" in page.replace("&#39;", "'")


def test_counts_take_the_plural_form_of_the_language(portal: str) -> None:
    _, _, page = get(portal + "/?lang=en")
    assert "1 file ·" in page
    _, _, page = get(portal + "/?lang=fr")
    assert "1 fichier ·" in page


def test_plural_rules_french_and_english() -> None:
    en, fr = i18n.Translator("en"), i18n.Translator("fr")
    assert [en.n("portal.files", k) for k in (0, 1, 2)] == ["0 files", "1 file", "2 files"]
    assert [fr.n("portal.files", k) for k in (0, 1, 2)] == ["0 fichier", "1 fichier", "2 fichiers"]
    # a page not yet converted to t.n still reads the right form from n=
    assert fr("portal.files", n=1) == "1 fichier"
    assert en.n("hub.keep_last", 1) == "keeps the last release"
    assert en.n("hub.keep_last", 3) == "keeps the last 3"
