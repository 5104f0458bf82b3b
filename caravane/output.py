"""What every ``caravane`` sub-command shares: printing results, errors, progress, --json.

This module imports nothing of the project's sub-commands, so any of them (``hub``,
``node``, ``usb``, the repository commands) can use it without an import loop through the
root command that assembles them (:mod:`caravane.cli`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import click
from tqdm import tqdm

from caravane.protocol.errors import CaravaneError

if TYPE_CHECKING:
    from caravane.i18n import Translator

EXIT_ERROR = 1
EXIT_VERIFY = 3

P = ParamSpec("P")
R = TypeVar("R")


def emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    """Print one JSON object (``--json``) or the plain-words summary."""
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True))
    else:
        click.echo(text)


def fail(
    message: str, as_json: bool = False, code: int = EXIT_ERROR, local: str | None = None
) -> NoReturn:
    """One ``error: ...`` line on stderr (and ``{"ok": false}`` with --json), then exit.

    ``local`` is the same message in the reader's language, for the line a person reads;
    the JSON keeps the English one, and the ``error:`` prefix stays for scripts.
    """
    if as_json:
        click.echo(json.dumps({"ok": False, "error": message}, ensure_ascii=False))
    click.echo(f"error: {local or message}", err=True)
    sys.exit(code)


def _in_language(exc: CaravaneError, translator: Translator | None) -> str | None:
    if translator is None or exc.message_id is None:
        return None
    text = translator(exc.message_id, **exc.message_args)
    return None if text == exc.message_id else text


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn every Caravane error into one ``error:`` line and a non-zero exit."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except CaravaneError as exc:
            from caravane.i18n import Translator

            t = kwargs.get("t")  # the command's --lang translator, if it has one
            local = _in_language(exc, t if isinstance(t, Translator) else None)
            fail(str(exc), bool(kwargs.get("as_json")), local=local)
        except OSError as exc:
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            fail(f"{exc.strerror or exc}{where}", bool(kwargs.get("as_json")))

    return wrapper


@contextmanager
def progress_bar(total: int | None, desc: str, quiet: bool) -> Iterator[Callable[[int], Any]]:
    """A byte progress bar on stderr, shown only on a terminal and never in --json mode."""
    bar = tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=True if quiet else None,
        file=sys.stderr,
        leave=False,
    )
    try:
        yield bar.update
    finally:
        bar.close()


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


def _translator(ctx: click.Context, param: click.Parameter, value: str | None) -> Translator:
    from caravane.i18n import Translator, cli_language

    return Translator(cli_language(value))


# the messages a field agent reads, in their language: the command receives ``t``
lang_option = click.option(
    "--lang",
    "t",
    metavar="LANG",
    default=None,
    callback=_translator,
    help="Language of the messages (en, fr, or any catalogue present); "
    "default: $LANGUAGE, $LC_ALL, $LC_MESSAGES or $LANG.",
)


def size_text(n: int) -> str:
    """Bytes in the unit a person reads at a glance (B, KiB, MiB, GiB)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
