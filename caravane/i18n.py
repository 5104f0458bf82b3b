"""Translation catalogues for every page people read and every line a field agent reads.

Text lives in gettext catalogues, ``locales/<lang>/LC_MESSAGES/caravane.po``; code and templates
refer to key-style message ids (``portal.files``) through :class:`Translator`. The languages are
the catalogues present: dropping a ``mos/LC_MESSAGES/caravane.po`` next to the others (or into
a folder named by ``$CARAVANE_LOCALES``) makes ``?lang=mos`` work, with no code change. A string
missing from a catalogue falls back to French, then English (the two complete catalogues that
``python -m caravane.i18n_tools check`` holds to every key in use), then to the key itself.

The ``.po`` files are read at run time with Babel's ``pofile`` reader instead of being compiled
to ``.mo``: one file is both what translators edit and what runs, an editable install or a
centre's copy needs no build step, and a catalogue added or edited in place is served within
:data:`RECHECK` seconds, without a restart (the folders are looked at again at most that often;
a file is re-read only when its size or mtime changes). Parsing costs 20-30 ms per catalogue,
once per process, against under 1 ms for a ``.mo`` (``python -m bench.translations``).
"""

from __future__ import annotations

import contextlib
import gettext
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.messages.pofile import PoFileError, read_po

DEFAULT = "en"
FALLBACKS = ("fr", "en")  # every language falls back to these, in this order
DOMAIN = "caravane"
LOCALES = Path(__file__).parent / "locales"
ENV_LOCALES = "CARAVANE_LOCALES"
# a language folder's name: ISO 639 code, optionally a territory (pt_BR); anything else is
# never looked up, so a ``?lang=`` value cannot name a path
LANG_CODE = re.compile(r"^[a-z]{2,3}(?:_[A-Z]{2})?$")

log = logging.getLogger(__name__)


def N_(key: str) -> str:
    """Mark a message id for extraction where it is looked up without ``t()`` (gettext_noop)."""
    return key


# i18n: The name of this language, written in it (Mooré, Dioula, Fulfulde).
NAME_KEY = N_("lang.name")

Entry = str | tuple[str, ...]
RECHECK = 2.0  # seconds a scan of the catalogue folders is trusted: new files show up after it
_languages: tuple[str, float, tuple[str, ...]] | None = None


@dataclass(frozen=True)
class Catalogue:
    """One language's translated messages (fuzzy and empty entries are left out, as msgfmt does)."""

    lang: str
    messages: dict[str, Entry]
    plural: Callable[[int], int]
    nplurals: int
    path: Path | None = None
    problems: tuple[str, ...] = field(default=())

    def form(self, key: str, count: int | None) -> str | None:
        entry = self.messages.get(key)
        if entry is None or isinstance(entry, str):
            return entry
        if count is None:
            text = entry[-1]
        else:
            try:
                index = self.plural(count)
            except (TypeError, ValueError):  # not a whole number: the general form
                index = len(entry) - 1
            text = entry[index] if 0 <= index < len(entry) else entry[-1]
        return text or None


def locale_dirs() -> list[Path]:
    """Folders searched for catalogues: ``$CARAVANE_LOCALES`` (``:``-separated) first."""
    extra = [Path(p) for p in os.environ.get(ENV_LOCALES, "").split(os.pathsep) if p]
    return [*extra, LOCALES]


def po_path(base: Path, lang: str) -> Path:
    return base / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


def languages() -> list[str]:
    """Every language with a catalogue, English and French first, then by code.

    The folders are scanned again at most every :data:`RECHECK` seconds (and whenever
    ``$CARAVANE_LOCALES`` changes): a page pays no file-system walk on each request.
    """
    global _languages
    key = os.environ.get(ENV_LOCALES, "")
    now = time.monotonic()
    hit = _languages
    if hit is not None and hit[0] == key and now - hit[1] < RECHECK:
        return list(hit[2])
    found = _scan_languages()
    _languages = (key, now, tuple(found))
    return found


def _scan_languages() -> list[str]:
    found: set[str] = set()
    for base in locale_dirs():
        try:
            entries = list(os.scandir(base))
        except OSError:
            continue
        for entry in entries:
            if LANG_CODE.match(entry.name) and po_path(base, entry.name).is_file():
                found.add(entry.name)
    order = {code: i for i, code in enumerate(("en", "fr"))}
    return sorted(found, key=lambda c: (order.get(c, len(order)), c))


def _compile_plural(expr: str) -> Callable[[int], int]:
    try:
        return gettext.c2py(expr)
    except (ValueError, SyntaxError):
        return gettext.c2py("(n != 1)")


def parse(path: Path, lang: str) -> Catalogue:
    """Read one ``.po``; raises :class:`PoFileError` naming the line of a syntax error."""
    with path.open("rb") as f:
        cat = read_po(f, abort_invalid=True)
    messages: dict[str, Entry] = {}
    for msg in cat:
        if not msg.id or msg.fuzzy:
            continue
        key = msg.id[0] if isinstance(msg.id, (list, tuple)) else msg.id
        if isinstance(msg.string, (list, tuple)):
            forms = tuple(s or "" for s in msg.string)
            if any(forms):
                messages[key] = forms
        elif msg.string:
            messages[key] = msg.string
    return Catalogue(lang, messages, _compile_plural(cat.plural_expr), cat.num_plurals, path)


# path -> (mtime and size, when last checked, catalogue or None when absent)
_cache: dict[Path, tuple[tuple[int, int], float, Catalogue | None]] = {}
_lock = threading.Lock()


def _load(path: Path, lang: str) -> Catalogue | None:
    now = time.monotonic()
    with _lock:
        hit = _cache.get(path)
    if hit is not None and now - hit[1] < RECHECK:
        return hit[2]
    try:
        st = path.stat()
    except OSError:
        with _lock:
            _cache[path] = ((0, -1), now, None)
        return None
    stamp = (st.st_mtime_ns, st.st_size)
    if hit is not None and hit[0] == stamp and hit[2] is not None:
        with _lock:
            _cache[path] = (stamp, now, hit[2])
        return hit[2]
    try:
        cat = parse(path, lang)
    except (PoFileError, OSError, ValueError, UnicodeDecodeError) as exc:
        # a broken catalogue must not take the pages down: its language falls back
        log.warning("translation catalogue %s is unreadable and is skipped: %s", path, exc)
        cat = Catalogue(lang, {}, _compile_plural("(n != 1)"), 2, path, (str(exc),))
    with _lock:
        _cache[path] = (stamp, now, cat)
    return cat


_paths: dict[tuple[str, str], list[Path]] = {}


def catalogues(lang: str) -> list[Catalogue]:
    """Every catalogue of ``lang`` on the search path, the first one found winning per key."""
    if not LANG_CODE.match(lang):
        return []
    key = (os.environ.get(ENV_LOCALES, ""), lang)
    paths = _paths.get(key)
    if paths is None:  # Path arithmetic is most of a request's cost: done once per language
        paths = _paths[key] = [po_path(base, lang) for base in locale_dirs()]
    found = (_load(path, lang) for path in paths)
    return [c for c in found if c is not None]


def catalogue(lang: str) -> dict[str, Entry]:
    """The messages of ``lang`` alone (no fallback), merged over the search path."""
    merged: dict[str, Entry] = {}
    for cat in reversed(catalogues(lang)):
        merged.update(cat.messages)
    return merged


def language_name(code: str) -> str:
    """A language's name in itself: its catalogue's ``lang.name``, else Babel's CLDR name."""
    for cat in catalogues(code):
        name = cat.messages.get(NAME_KEY)
        if isinstance(name, str) and name:
            return name
    try:
        display = Locale.parse(code).get_display_name(code)
    except (UnknownLocaleError, ValueError):
        display = None
    return display[:1].upper() + display[1:] if display else code


def switcher(current: str) -> list[tuple[str, str]]:
    """(code, own name) of every other language, for the language links of a page."""
    return [(code, language_name(code)) for code in languages() if code != current]


def _match(tag: str | None, available: Iterable[str]) -> str | None:
    """``fr-FR``, ``fr_FR.UTF-8`` or ``fr`` -> the best catalogue present, or None."""
    if not tag:
        return None
    tag = tag.strip().split(".")[0].split("@")[0].replace("-", "_")
    lang, _, territory = tag.partition("_")
    lang = lang.lower()
    have = set(available)
    for candidate in (f"{lang}_{territory.upper()}" if territory else None, lang):
        if candidate and candidate in have:
            return candidate
    return None


def negotiate(query_lang: str | None, cookie_lang: str | None, accept: str | None) -> str:
    """The page's language: ``?lang=``, else the cookie, else Accept-Language, else English."""
    available = languages()
    for choice in (query_lang, cookie_lang):
        found = _match(choice, available)
        if found:
            return found
    best, best_q = DEFAULT, -1.0
    for part in (accept or "").split(","):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        found = _match(tag, available)
        if found and q > best_q:
            best, best_q = found, q
    return best


def cli_language(option: str | None = None, environ: dict[str, str] | None = None) -> str:
    """The language of a command's messages: ``--lang``, else the locale, as gettext reads it.

    The environment is read in gettext's order (``LANGUAGE``, a ``:`` list, then ``LC_ALL``,
    ``LC_MESSAGES``, ``LANG``); ``C``/``POSIX`` and unknown languages mean English.
    """
    available = languages()
    found = _match(option, available)
    if found:
        return found
    env = os.environ if environ is None else environ
    for var in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(var)
        if not value:
            continue
        for tag in value.split(":"):
            found = _match(tag, available)
            if found:
                return found
        return DEFAULT
    return DEFAULT


class Translator:
    """``t(key, **kw)`` and ``t.n(key, count, **kw)``, in one language with its fallbacks."""

    def __init__(self, lang: str) -> None:
        self.lang = lang if lang in languages() else DEFAULT
        chain = [self.lang, *(f for f in FALLBACKS if f != self.lang)]
        self.chain = [cat for code in chain for cat in catalogues(code)]

    def _lookup(self, key: str, count: int | None, kwargs: dict[str, Any]) -> str:
        for cat in self.chain:
            text = cat.form(key, count)
            if not text:
                continue
            if not kwargs:
                return text
            try:
                return text.format(**kwargs)
            except (KeyError, IndexError, ValueError, AttributeError) as exc:
                # a translator's typo in a placeholder: say so, and use the next language
                log.warning("message %s in %s cannot be filled in: %s", key, cat.path, exc)
        return key

    def __call__(self, key: str, **kwargs: Any) -> str:
        count = kwargs.get("n")
        return self._lookup(key, count if isinstance(count, int) else None, kwargs)

    def n(self, key: str, count: int, **kwargs: Any) -> str:
        """The plural form for ``count`` (the catalogue's Plural-Forms); ``{n}`` is the count."""
        kwargs.setdefault("n", count)
        return self._lookup(key, count, kwargs)

    @property
    def strings(self) -> dict[str, Entry]:
        return catalogue(self.lang)


_SIZE_UNITS = {"en": ("B", "KB", "MB", "GB"), "fr": ("o", "Ko", "Mo", "Go")}


def size_text(n: int | None, lang: str) -> str:
    """Bytes in the units and decimal mark of the reader's language (French ones by default)."""
    if n is None:
        return "?"
    units = _SIZE_UNITS.get(lang.split("_")[0], _SIZE_UNITS["fr"])
    decimal = "." if units is _SIZE_UNITS["en"] else ","
    with contextlib.suppress(UnknownLocaleError, ValueError, KeyError):
        decimal = Locale.parse(lang).number_symbols["latn"]["decimal"]
    value = float(n)
    for unit in units:
        if value < 1000 or unit == units[-1]:
            text = f"{value:.0f} {unit}" if unit == units[0] else f"{value:.1f} {unit}"
            return text.replace(".", decimal)
        value /= 1000
    return str(n)
