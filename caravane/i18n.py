"""Translation catalogues for every page people read (French and English).

All user-facing text lives in ``locales/<lang>.json``; code and templates refer to keys. The
language comes from ``?lang=`` (remembered in a cookie), else the browser's
Accept-Language, else English.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

LANGUAGES = ("en", "fr")
DEFAULT = "en"
LOCALES = Path(__file__).parent / "locales"


@cache
def catalogue(lang: str) -> dict[str, str]:
    doc: dict[str, str] = json.loads((LOCALES / f"{lang}.json").read_text(encoding="utf-8"))
    return doc


def negotiate(query_lang: str | None, cookie_lang: str | None, accept: str | None) -> str:
    for choice in (query_lang, cookie_lang):
        if choice in LANGUAGES:
            return choice
    best, best_q = DEFAULT, -1.0
    for part in (accept or "").split(","):
        tag, _, params = part.strip().partition(";")
        lang = tag.strip().lower().split("-")[0]
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if lang in LANGUAGES and q > best_q:
            best, best_q = lang, q
    return best


class Translator:
    def __init__(self, lang: str) -> None:
        self.lang = lang if lang in LANGUAGES else DEFAULT
        self.strings = catalogue(self.lang)
        self.fallback = catalogue(DEFAULT)

    def __call__(self, key: str, **kwargs: Any) -> str:
        text = self.strings.get(key) or self.fallback.get(key) or key
        return text.format(**kwargs) if kwargs else text


def size_text(n: int | None, lang: str) -> str:
    if n is None:
        return "?"
    units = ("o", "Ko", "Mo", "Go") if lang == "fr" else ("B", "KB", "MB", "GB")
    value = float(n)
    for unit in units:
        if value < 1000 or unit == units[-1]:
            text = f"{value:.0f} {unit}" if unit == units[0] else f"{value:.1f} {unit}"
            return text.replace(".", ",") if lang == "fr" else text
        value /= 1000
    return str(n)
