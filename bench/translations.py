"""What reading the gettext catalogues at run time costs (``caravane/i18n.py``).

The ``.po`` files are parsed by Babel when a process first needs a language, instead of being
compiled to ``.mo``; this measures that choice against the compiled alternative, and what a
page pays per request once the catalogues are loaded:

1. parsing ``en`` and ``fr`` ``.po`` with Babel (cold, the once-per-process cost) next to
   loading the same catalogue compiled to ``.mo`` with the standard library's ``gettext``;
2. ``Translator(lang)`` per request (a scan of the language folders and a stat of each
   catalogue, to pick up a new or edited catalogue without a restart);
3. one ``t(key, **kw)`` and one ``t.n(key, count)``;
4. a fresh ``python -c`` that translates one string, against a bare ``python -c pass``.

    python -m bench.translations [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import gettext
import io
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from caravane import i18n

from .common import table


def per_call(fn: Callable[[], Any], runs: int) -> float:
    """Median microseconds of ``fn`` over ``runs`` batches of 100 calls."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(100):
            fn()
        samples.append((time.perf_counter() - start) / 100 * 1e6)
    return statistics.median(samples)


def cold_ms(fn: Callable[[], Any], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def process_ms(code: str, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    runs = 5 if args.quick else 25

    rows: list[list[Any]] = []
    for lang in ("en", "fr"):
        path = i18n.po_path(i18n.LOCALES, lang)
        with path.open("rb") as f:
            cat = read_po(f)
        mo = io.BytesIO()
        write_mo(mo, cat)
        mo_bytes = mo.getvalue()
        po_ms = cold_ms(lambda p=path, code=lang: i18n.parse(p, code), runs)  # type: ignore[misc]
        mo_ms = cold_ms(lambda b=mo_bytes: gettext.GNUTranslations(io.BytesIO(b)), runs)  # type: ignore[misc]
        rows.append([lang, len(cat) - 1, path.stat().st_size, po_ms, mo_ms])
    print(table("Loading one catalogue (ms, median)", ["lang", "messages", "po bytes",
                "Babel .po ms", "gettext .mo ms"], rows))  # fmt: skip

    i18n.Translator("fr")("portal.title")  # warm the cache
    t = i18n.Translator("fr")
    request = [
        ["Translator('fr') per request", per_call(lambda: i18n.Translator("fr"), runs)],
        ["negotiate(Accept-Language)", per_call(
            lambda: i18n.negotiate(None, None, "fr-FR,fr;q=0.9,en;q=0.5"), runs)],
        ["t('op.channel_ok', ...)", per_call(
            lambda: t("op.channel_ok", channel="lecons", v=3), runs)],
        ["t.n('portal.files', 15)", per_call(lambda: t.n("portal.files", 15), runs)],
        ["t('hub.title')", per_call(lambda: t("hub.title"), runs)],
    ]  # fmt: skip
    print(table("\nPer request, catalogues loaded (µs, median)", ["step", "µs"], request))

    bare = process_ms("pass", max(3, runs // 5))
    one = process_ms(
        "from caravane.i18n import Translator; Translator('fr')('portal.title')",
        max(3, runs // 5),
    )
    proc = [["python -c pass", bare], ["import + first French string", one],
            ["difference", one - bare]]  # fmt: skip
    print(table("\nA fresh process (ms, median)", ["run", "ms"], proc))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"load": rows, "request": request, "process": proc}, fh, indent=2)


if __name__ == "__main__":
    main()
