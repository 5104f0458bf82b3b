"""The catalogue tools as the merger and a translator run them: import-json, extract, check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from caravane import i18n

PACKAGE = Path(i18n.__file__).parent
REPO = PACKAGE.parent


def tools(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "caravane.i18n_tools", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.fixture
def locales(tmp_path: Path) -> Path:
    """A copy of the shipped catalogues to break or extend."""
    return Path(shutil.copytree(i18n.LOCALES, tmp_path / "locales"))


def po(locales: Path, lang: str) -> Path:
    return locales / lang / "LC_MESSAGES" / "caravane.po"


def entry(path: Path, key: str) -> object:
    with path.open("rb") as f:
        msg = read_po(f).get(key)
    return None if msg is None else (msg.string, msg.fuzzy)


def test_shipped_catalogues_pass_the_check() -> None:
    out = tools("check")
    assert out.returncode == 0, out.stderr
    assert "catalogues OK" in out.stdout
    assert "out of date" not in out.stderr  # caravane.pot matches the code


def test_check_names_a_key_missing_from_french(locales: Path) -> None:
    path = po(locales, "fr")
    text = path.read_text(encoding="utf-8")
    cut = 'msgid "portal.search_label"\nmsgstr "Chercher dans les titres et les textes"\n'
    assert cut in text
    path.write_text(text.replace(cut, ""), encoding="utf-8")
    english = po(locales, "en")
    cut = 'msgid "cli.usb.removable"\nmsgstr "the drive can be removed"\n'
    assert cut in english.read_text(encoding="utf-8")
    english.write_text(english.read_text(encoding="utf-8").replace(cut, ""), encoding="utf-8")
    out = tools("check", "--locales", locales)
    assert out.returncode == 1
    assert "'portal.search_label'" in out.stderr and "base.html" in out.stderr
    assert "en/LC_MESSAGES/caravane.po: 'cli.usb.removable' (caravane/usb_cli.py:" in out.stderr


def test_check_names_the_line_of_a_syntax_error(locales: Path) -> None:
    path = po(locales, "en")
    lines = path.read_text(encoding="utf-8").splitlines()
    at = lines.index('msgid "portal.title"')
    lines[at + 1] = 'msgstr "Learning centre'  # the closing quote is lost
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tools("check", "--locales", locales, "--json")
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert not doc["ok"] and any("syntax error" in e and "en" in e for e in doc["errors"])


def test_check_refuses_a_placeholder_the_english_text_does_not_have(locales: Path) -> None:
    path = po(locales, "fr")
    text = path.read_text(encoding="utf-8")
    good = "{channel} : à jour (version {v})."
    assert good in text
    path.write_text(text.replace(good, "{chaine} : à jour (version {v})."), encoding="utf-8")
    out = tools("check", "--locales", locales)
    assert out.returncode == 1 and "'op.channel_ok' names chaine" in out.stderr


def test_import_json_merges_and_is_idempotent(locales: Path) -> None:
    fr = po(locales, "fr")
    text = fr.read_text(encoding="utf-8")
    fr.write_text(  # a translator left an entry fuzzy
        text.replace('msgid "portal.search"\n', '#, fuzzy\nmsgid "portal.search"\n'),
        encoding="utf-8",
    )
    # what another branch still writes: the old JSON files, with a new key, a changed
    # text, and the old one-form text of an entry that has plural forms now
    doc_fr = {
        "hub.fleet_totals": "{n} sur {total} à jour",
        "portal.welcome": "Bienvenue ! Tout est libre.",
        "portal.search": "Rechercher",
        "portal.files": "{n} fichiers",
    }
    doc_en = {"hub.fleet_totals": "{n} of {total} up to date", "portal.files": "{n} files"}
    (locales / "fr.json").write_text(json.dumps(doc_fr, ensure_ascii=False), encoding="utf-8")
    (locales / "en.json").write_text(json.dumps(doc_en), encoding="utf-8")

    out = tools("import-json", "--locales", locales)
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr
    assert not list(locales.glob("*.json"))
    assert entry(fr, "hub.fleet_totals") == ("{n} sur {total} à jour", False)
    assert entry(po(locales, "en"), "hub.fleet_totals") == ("{n} of {total} up to date", False)
    assert entry(fr, "portal.welcome") == ("Bienvenue ! Tout est libre.", False)
    assert entry(fr, "portal.search") == ("Rechercher", False)  # fuzzy cleared
    assert entry(fr, "portal.files") == (("{n} fichier", "{n} fichiers"), False)
    first = {p: p.read_bytes() for p in locales.rglob("*.po")}

    # the merger runs it again: nothing left to do, nothing changes
    out = tools("import-json", "--locales", locales)
    assert out.returncode == 0 and "nothing to import" in out.stdout
    # and the same JSON once more (a second branch with the same keys): same files
    (locales / "fr.json").write_text(json.dumps(doc_fr, ensure_ascii=False), encoding="utf-8")
    assert tools("import-json", "--locales", locales).returncode == 0
    assert {p: p.read_bytes() for p in locales.rglob("*.po")} == first


def test_import_json_keeps_plural_forms_and_says_so(locales: Path) -> None:
    (locales / "en.json").write_text(json.dumps({"portal.files": "{n} documents"}))
    out = tools("import-json", "--locales", locales)
    assert out.returncode == 0
    assert "portal.files has plural forms" in out.stderr
    assert entry(po(locales, "en"), "portal.files") == (("{n} file", "{n} files"), False)


def test_a_broken_json_file_changes_nothing(locales: Path) -> None:
    before = po(locales, "fr").read_bytes()
    (locales / "en.json").write_text(json.dumps({"portal.title": "Centre"}))
    (locales / "fr.json").write_text('{"portal.title": "Centre",')
    out = tools("import-json", "--locales", locales)
    assert out.returncode == 1 and "fr.json" in out.stderr
    assert (locales / "en.json").exists() and (locales / "fr.json").exists()
    assert po(locales, "fr").read_bytes() == before


def test_pybabel_extract_with_babel_cfg_gives_the_shipped_template(tmp_path: Path) -> None:
    if not (REPO / "babel.cfg").exists():
        pytest.skip("not a source checkout")
    pot = tmp_path / "caravane.pot"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "babel.messages.frontend",
            "extract",
            "-F",
            "babel.cfg",
            "--no-location",
            "--sort-output",
            "-o",
            str(pot),
            ".",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr

    def ids(path: Path) -> dict[str, bool]:
        with path.open("rb") as f:
            return {
                str(m.id[0] if m.pluralizable else m.id): m.pluralizable for m in read_po(f) if m.id
            }

    shipped = ids(i18n.LOCALES / "caravane.pot")
    assert ids(pot) == shipped
    assert shipped["portal.files"] is True and shipped["hub.role.admin"] is False
    assert "lang.name" in shipped


def test_the_old_json_of_main_imports_as_no_change(locales: Path) -> None:
    """A branch made before the conversion brings back the JSON texts these catalogues came
    from: re-importing them changes nothing and warns of nothing (long notes wrap in .po)."""
    from caravane.i18n_tools import _remembered

    for lang in ("en", "fr"):
        with po(locales, lang).open("rb") as f:
            cat = read_po(f)
        doc = {}
        for msg in cat:
            if not msg.id:
                continue
            key = msg.id[0] if msg.pluralizable else msg.id
            text = _remembered(msg) if msg.pluralizable else msg.string
            if text:  # plural entries made after the JSON files were gone have no note
                doc[key] = text
        (locales / f"{lang}.json").write_text(json.dumps(doc, ensure_ascii=False), "utf-8")
    before = {p: p.read_bytes() for p in locales.rglob("*.po*")}
    out = tools("import-json", "--locales", locales)
    assert out.returncode == 0 and out.stderr == ""
    assert {p: p.read_bytes() for p in locales.rglob("*.po*")} == before


def test_check_refuses_plural_forms_that_do_not_parse(locales: Path) -> None:
    path = po(locales, "fr")
    text = path.read_text(encoding="utf-8")
    rule = '"Plural-Forms: nplurals=2; plural=(n > 1);\\n"'
    assert rule in text
    path.write_text(text.replace(rule, '"Plural-Forms: nplurals=2; plural=(n >);\\n"'), "utf-8")
    out = tools("check", "--locales", locales)
    assert out.returncode == 1 and "Plural-Forms" in out.stderr and "does not parse" in out.stderr
