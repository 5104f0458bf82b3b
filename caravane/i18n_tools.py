"""``python -m caravane.i18n_tools`` (also ``caravane i18n``): look after the catalogues.

* ``import-json`` merges the old ``locales/<lang>.json`` key files into the ``.po``
  catalogues and removes them. It is idempotent: run it again after merging a branch that
  still added keys to the JSON files (new keys added, changed texts updated, fuzzy flags
  cleared; an entry that became a plural in the ``.po`` keeps its forms).
* ``extract`` rewrites ``locales/caravane.pot`` from the code and templates (the same result
  as ``pybabel extract -F babel.cfg --no-location --sort-output``).
* ``check`` fails when a key used in code or templates is missing from the English or French
  catalogue, a ``.po`` does not parse, a translation names a placeholder the English text
  does not have, or a plural entry has the wrong number of forms.
* ``init LANG`` starts a catalogue for a new language from the template.
"""

from __future__ import annotations

import gettext
import json
import os
import re
import string
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import click
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import PoFileError, read_po, write_po

from caravane import __version__, i18n
from caravane.i18n_extract import Use, jinja_uses, python_uses

PACKAGE = Path(__file__).parent
TEMPLATE = "caravane.pot"
REQUIRED = i18n.FALLBACKS  # the catalogues every used key must be in
# the extraction map of babel.cfg, relative to the package folder
METHOD_MAP = [
    ("**/templates/**.html", "caravane.i18n_extract:extract_jinja"),
    ("**.py", "caravane.i18n_extract:extract_python"),
]
JSON_NOTE = "json: "
# Babel's CLDR table gives French a third form for millions ("1 000 000 de fichiers"); the
# pages only need gettext's classic rule, where 0 and 1 take the singular
PLURAL_FORMS = {"en": "nplurals=2; plural=(n != 1);", "fr": "nplurals=2; plural=(n > 1);"}
HEADER = """\
# {lang} messages of Caravane (pages and field-agent commands).
# Message ids are keys; docs/TRANSLATING.md says how to translate them.
# This file is distributed under the same license as Caravane (AGPL-3.0-or-later).
#"""  # a plural entry remembers the JSON text it was made from


class CatalogueError(Exception):
    """A catalogue or JSON file that cannot be read; the message names the file and line."""


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.errors,
            "errors": self.errors,
            "warnings": self.warnings,
            "notes": self.notes,
        }


# ---------------------------------------------------------------------------- files


def read_catalog(path: Path) -> Catalog:
    try:
        with path.open("rb") as f:
            return read_po(f, abort_invalid=True)
    except PoFileError as exc:
        raise CatalogueError(f"{path}: {exc}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CatalogueError(f"{path}: cannot be read ({exc})") from None


_PO_STRING = r'"(?:[^"\\]|\\.)*"'
_PO_LINE = re.compile(
    rf"^(?:#.*|(?:msgctxt|msgid|msgid_plural|msgstr|msgstr\[\d+\])\s+{_PO_STRING}|{_PO_STRING})$"
)


def lint_po(path: Path) -> list[str]:
    """Lines msgfmt would refuse that Babel's lenient reader lets through (a lost quote)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return [f"{path}: not UTF-8 ({exc})"]
    problems = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not _PO_LINE.match(line):
            problems.append(f"{path}:{lineno}: syntax error: {line[:60]!r}")
    return problems


def render_catalog(cat: Catalog, template: bool = False) -> bytes:
    buf = BytesIO()
    write_po(buf, cat, sort_output=True, omit_header=False, include_lineno=False)
    text = buf.getvalue()
    if template:  # the creation date alone must not make a new file
        text = b"\n".join(
            line for line in text.split(b"\n") if not line.startswith(b'"POT-Creation-Date')
        )
    return text


def write_atomic(path: Path, data: bytes) -> bool:
    """Replace ``path`` only when its content changes; True if it did."""
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def new_catalog(lang: str, plural_forms: str | None = None) -> Catalog:
    cat = Catalog(
        locale=lang,
        domain=i18n.DOMAIN,
        project="caravane",
        version=__version__,
        copyright_holder="Caravane contributors",
        msgid_bugs_address="",
        header_comment=HEADER.format(lang=lang),
        fuzzy=False,
    )
    cat.language_team = ""
    plural_forms = plural_forms or PLURAL_FORMS.get(lang)
    if plural_forms:
        _set_plural_forms(cat, plural_forms)
    return cat


def _set_plural_forms(cat: Catalog, text: str) -> None:
    parts = dict(
        (k.strip(), v.strip()) for k, _, v in (p.partition("=") for p in text.split(";")) if k
    )
    try:
        n = int(parts["nplurals"])
        expr = parts["plural"]
        gettext.c2py(expr)
    except (KeyError, ValueError, SyntaxError) as exc:
        raise CatalogueError(
            f"plural forms {text!r}: write them as 'nplurals=2; plural=(n > 1);'"
        ) from exc
    cat.mime_headers = [("Plural-Forms", f"nplurals={n}; plural={expr};")]


def _key(msg: Message) -> str:
    return str(msg.id[0] if isinstance(msg.id, (list, tuple)) else msg.id)


# ---------------------------------------------------------------------------- import-json


def _words(text: str | None) -> str | None:
    return " ".join(text.split()) if text is not None else None


def _remembered(msg: Message) -> str | None:
    """The JSON text a plural entry was made from (its comment, wrapped over lines by Babel)."""
    comments = list(msg.user_comments)
    for i, line in enumerate(comments):
        if line.startswith(JSON_NOTE):
            return " ".join([line[len(JSON_NOTE) :], *comments[i + 1 :]])
    return None


def import_json(locales: Path) -> Report:
    """Merge each ``locales/<lang>.json`` into ``<lang>/LC_MESSAGES/caravane.po``; remove it."""
    report = Report()
    sources = sorted(locales.glob("*.json"))
    if not sources:
        report.notes.append(f"no JSON catalogue in {locales}: nothing to import")
        return report
    pending: list[tuple[Path, bytes]] = []
    for source in sources:
        lang = source.stem
        if not i18n.LANG_CODE.match(lang):
            raise CatalogueError(f"{source}: the file name must be a language code (fr.json)")
        try:
            doc = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CatalogueError(f"{source}: not a JSON catalogue ({exc})") from None
        if not isinstance(doc, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in doc.items()
        ):
            raise CatalogueError(f'{source}: expected one object of "key": "text" pairs')
        target = i18n.po_path(locales, lang)
        cat = read_catalog(target) if target.exists() else new_catalog(lang)
        added = changed = 0
        for key, text in doc.items():
            msg = cat.get(key)
            if msg is None:
                if key in cat.obsolete:
                    del cat.obsolete[key]
                cat.add(key, text)
                added += 1
                continue
            was_fuzzy = msg.fuzzy
            msg.flags.discard("fuzzy")
            if isinstance(msg.string, (list, tuple)):
                forms = [str(s) for s in msg.string]
                if text not in forms and _words(text) != _words(_remembered(msg)):
                    report.warnings.append(
                        f"{lang}: {key} has plural forms in {target.name}; its JSON text "
                        f"{text!r} was not applied: edit the forms in the .po"
                    )
                changed += was_fuzzy
            elif msg.string != text:
                msg.string = text
                changed += 1
            else:
                changed += was_fuzzy
        data = render_catalog(cat)
        pending.append((target, data))
        report.notes.append(f"{lang}: {added} new, {changed} updated, from {source.name}")
    for target, data in pending:  # every file parsed before anything is written
        write_atomic(target, data)
    for source in sources:
        source.unlink()
        report.notes.append(f"removed {source}")
    if write_template(locales, PACKAGE):
        report.notes.append(f"rewrote {locales / TEMPLATE}")
    return report


# ---------------------------------------------------------------------------- template


def build_template(source: Path, locales: Path | None = None) -> Catalog:
    """The ``.pot``: every message id the code and templates use, with en/fr texts as notes."""
    cat = Catalog(
        domain=i18n.DOMAIN,
        project="caravane",
        version=__version__,
        copyright_holder="Caravane contributors",
        msgid_bugs_address="",
        header_comment=HEADER.format(lang="Template for the"),
        fuzzy=False,
    )
    # the English and French notes come from the catalogues being worked on
    options = {pattern: {"locales": str(locales)} for pattern, _ in METHOD_MAP} if locales else {}
    found = extract_from_dir(str(source), METHOD_MAP, options)
    for _path, _lineno, message, comments, context in found:
        cat.add(message, None, auto_comments=comments, context=context)
    return cat


def write_template(locales: Path, source: Path) -> bool:
    return write_atomic(
        locales / TEMPLATE, render_catalog(build_template(source, locales), template=True)
    )


def template_is_current(locales: Path, source: Path) -> bool:
    path = locales / TEMPLATE
    return path.exists() and path.read_bytes() == render_catalog(
        build_template(source, locales), template=True
    )


# ---------------------------------------------------------------------------- check


def scan(source: Path) -> Iterator[tuple[str, Use]]:
    """(where, use) for every message id asked for under ``source``."""
    for path in sorted(source.rglob("*")):
        if path.suffix == ".py":
            finder = python_uses
        elif path.suffix == ".html" and "templates" in path.parts:
            finder = jinja_uses
        else:
            continue
        rel = path.relative_to(source.parent).as_posix()
        try:
            uses = list(finder(path.read_text(encoding="utf-8")))
        except Exception as exc:  # a file that does not parse is reported, not skipped
            yield f"{rel}: cannot be read for messages ({exc})", Use("", False, 0)
            continue
        for use in uses:
            yield f"{rel}:{use.lineno}", use


def placeholders(text: str) -> set[str]:
    """The ``{names}`` a text fills in; raises ValueError on unbalanced braces."""
    names = set()
    for _literal, name, _spec, _conv in string.Formatter().parse(text):
        if name is not None:
            names.add(name.split(".")[0].split("[")[0])
    return names


def _forms(msg: Message) -> list[str]:
    if isinstance(msg.string, (list, tuple)):
        return [str(s) for s in msg.string]
    return [str(msg.string)]


def _translated(msg: Message | None) -> bool:
    return msg is not None and not msg.fuzzy and any(_forms(msg))


def catalogue_files(locales: Path) -> Iterator[tuple[str, Path]]:
    for entry in sorted(locales.iterdir()) if locales.is_dir() else []:
        po = i18n.po_path(locales, entry.name)
        if entry.is_dir() and po.exists():
            yield entry.name, po


def check(locales: Path, source: Path) -> Report:
    report = Report()
    for stray in sorted(locales.glob("*.json")):
        report.errors.append(
            f"{stray}: JSON catalogue left over: run `python -m caravane.i18n_tools import-json`"
        )
    cats: dict[str, Catalog] = {}
    broken: set[str] = set()
    for lang, po in catalogue_files(locales):
        if not i18n.LANG_CODE.match(lang):
            report.errors.append(f"{po}: folder {lang!r} is not a language code (mos, fr, pt_BR)")
            continue
        lint = lint_po(po)
        if lint:
            report.errors += lint
            broken.add(lang)
            continue
        try:
            cats[lang] = read_catalog(po)
        except CatalogueError as exc:
            report.errors.append(f"syntax error: {exc}")
            broken.add(lang)
    for lang in REQUIRED:
        if lang not in cats and lang not in broken:
            report.errors.append(f"{i18n.po_path(locales, lang)}: missing")

    keys = sorted({_key(m) for c in cats.values() for m in c if m.id})
    uses: list[tuple[str, Use]] = []
    for where, use in scan(source):
        if use.dynamic:
            report.warnings.append(
                f"{where}: the message id is computed; write the key as a literal "
                "(or a literal prefix) so it can be extracted and checked"
            )
        elif not use.key:
            report.errors.append(where)
        elif use.prefix:
            matches = [k for k in keys if k.startswith(use.key)]
            if not matches:
                report.errors.append(f"{where}: no message id starts with {use.key!r}")
            uses += [(where, Use(k, use.plural, use.lineno)) for k in matches]
        else:
            uses.append((where, use))

    for lang in REQUIRED:
        cat = cats.get(lang)
        if cat is None:
            continue
        po = i18n.po_path(locales, lang)
        for where, use in uses:
            msg = cat.get(use.key)
            if not _translated(msg):
                state = "fuzzy" if msg is not None and msg.fuzzy else "missing"
                report.errors.append(f"{po}: {use.key!r} ({where}) is {state}")
            elif msg is not None and use.plural and not msg.pluralizable:
                report.errors.append(
                    f"{po}: {use.key!r} is counted with t.n() ({where}) but has no plural forms"
                )
            elif msg is not None and not use.plural and msg.pluralizable:
                report.warnings.append(
                    f"{use.key!r} has plural forms but {where} calls t(): use t.n(key, count)"
                )

    english = cats.get("en")
    used = {use.key for _, use in uses}
    for lang, cat in cats.items():
        po = i18n.po_path(locales, lang)
        try:
            gettext.c2py(cat.plural_expr)
        except (ValueError, SyntaxError):
            report.errors.append(
                f"{po}: Plural-Forms {cat.plural_forms!r} does not parse: write it as "
                "'nplurals=2; plural=(n > 1);' (TRANSLATING.md)"
            )
        done = 0
        for msg in cat:
            if not msg.id:
                continue
            key = _key(msg)
            done += _translated(msg)
            forms = _forms(msg)
            if msg.pluralizable and any(forms) and len(forms) != cat.num_plurals:
                report.errors.append(
                    f"{po}: {key!r} has {len(forms)} plural forms; Plural-Forms says "
                    f"{cat.num_plurals}"
                )
            base = english.get(key) if english is not None else None
            allowed = set().union(*(placeholders(f) for f in _forms(base))) if base else None
            for form in forms:
                try:
                    names = placeholders(form)
                except ValueError as exc:
                    report.errors.append(f"{po}: {key!r}: braces do not match ({exc})")
                    continue
                extra = names - (allowed or names) - ({"n"} if msg.pluralizable else set())
                if extra:
                    report.errors.append(
                        f"{po}: {key!r} names {', '.join(sorted(extra))} in {{}}, which the "
                        "English text does not have: copy the {names} exactly"
                    )
        if lang not in REQUIRED:
            missing = len(used - {_key(m) for m in cat if _translated(m)})
            report.notes.append(
                f"{lang}: {done} messages translated; {missing} in use fall back to French"
            )
    if english is not None:
        unused = sorted({_key(m) for m in english if m.id} - used - {i18n.NAME_KEY})
        if unused:
            report.notes.append(f"in the catalogues but used nowhere: {', '.join(unused)}")
    if locales.resolve() == i18n.LOCALES.resolve() and not template_is_current(locales, source):
        report.warnings.append(
            f"{locales / TEMPLATE} is out of date: run `python -m caravane.i18n_tools extract`"
        )
    return report


# ---------------------------------------------------------------------------- init


def init_language(locales: Path, lang: str, name: str | None, plural_forms: str | None) -> Path:
    if not i18n.LANG_CODE.match(lang):
        raise CatalogueError(f"{lang!r}: give an ISO 639 code such as mos, dyu or ff")
    target = i18n.po_path(locales, lang)
    if target.exists():
        raise CatalogueError(f"{target} exists already: edit it (or remove it first)")
    template = read_catalog(locales / TEMPLATE)
    cat = new_catalog(lang, plural_forms)
    for msg in template:
        if not msg.id:
            continue
        string: str | tuple[str, ...] = ("",) * cat.num_plurals if msg.pluralizable else ""
        cat.add(msg.id, string, auto_comments=msg.auto_comments)
    if name:
        if i18n.NAME_KEY in cat:
            cat[i18n.NAME_KEY].string = name
        else:
            cat.add(i18n.NAME_KEY, name)
    write_atomic(target, render_catalog(cat))
    return target


# ---------------------------------------------------------------------------- command


def _print(report: Report, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
        return
    for line in report.notes:
        click.echo(line)
    for line in report.warnings:
        click.echo(f"warning: {line}", err=True)
    for line in report.errors:
        click.echo(f"error: {line}", err=True)


locales_option = click.option(
    "--locales",
    type=click.Path(file_okay=False, path_type=Path),
    default=i18n.LOCALES,
    show_default="the package's caravane/locales",
    help="The catalogue folder to work on.",
)
json_flag = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


@click.group("i18n")
def main() -> None:
    """Translation catalogues: import the old JSON files, extract the template, check."""


@main.command("import-json")
@locales_option
@json_flag
def import_json_command(locales: Path, as_json: bool) -> None:
    """Merge locales/*.json into the .po catalogues and remove them (safe to run again)."""
    try:
        report = import_json(locales)
    except CatalogueError as exc:
        report = Report(errors=[str(exc)])
    _print(report, as_json)
    sys.exit(1 if report.errors else 0)


@main.command("extract")
@locales_option
@click.option(
    "--source",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=PACKAGE,
    show_default="the caravane package",
    help="The code and templates to read.",
)
def extract_command(locales: Path, source: Path) -> None:
    """Rewrite caravane.pot from the code and templates."""
    changed = write_template(locales, source)
    click.echo(f"{locales / TEMPLATE}: {'rewritten' if changed else 'already up to date'}")


@main.command("check")
@locales_option
@click.option(
    "--source",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=PACKAGE,
    show_default="the caravane package",
    help="The code and templates whose keys must be in the catalogues.",
)
@json_flag
def check_command(locales: Path, source: Path, as_json: bool) -> None:
    """Fail if a key in use is missing from en/fr, or a catalogue is broken."""
    report = check(locales, source)
    if not report.errors and not as_json:
        report.notes.append("catalogues OK")
    _print(report, as_json)
    sys.exit(1 if report.errors else 0)


@main.command("init")
@click.argument("lang")
@click.option("--name", default=None, help="The language's name in itself (Mooré).")
@click.option(
    "--plural-forms",
    default=None,
    help="gettext Plural-Forms, e.g. 'nplurals=1; plural=0;' (default: Babel's, else n != 1).",
)
@locales_option
def init_command(lang: str, name: str | None, plural_forms: str | None, locales: Path) -> None:
    """Start the catalogue of a new language LANG (mos, dyu, ff) from caravane.pot."""
    try:
        path = init_language(locales, lang, name, plural_forms)
    except CatalogueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{path}: created; translate each msgstr (Poedit opens it), then run check")


if __name__ == "__main__":
    main(prog_name="python -m caravane.i18n_tools")
