"""How the long-running services (``hub serve``, ``node run``, ``node serve``) write their logs.

One set-up for both, so an operator reads the same line shape at the hub and at a centre:
a time, a level and the logger's name on every line (``caravane.hub.jobs.gc`` says which
scheduled job spoke), or one JSON object per line for a log collector (journald's JSON
export, Loki, Elasticsearch) with ``--log-format json``.

The JSON formatter is a dozen lines over :mod:`logging` rather than a dependency
(python-json-logger): a Raspberry Pi centre installs one package less, and the fields are
the few a collector needs.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, TextIO, TypeVar

LEVELS: Final = ("debug", "info", "warning", "error", "critical")
FORMATS: Final = ("text", "json")
F = TypeVar("F", bound=Callable[..., Any])
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# attributes every LogRecord has; anything else was passed with ``extra=`` and is kept
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class LogSetupError(ValueError):
    """A log level or format the services do not know (from the command line or config)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, exception."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value if isinstance(value, str | int | float | bool) else str(value)
        return json.dumps(doc, ensure_ascii=False)


def options(func: F) -> F:
    """``--log-level`` and ``--log-format`` for a service command (default: its config)."""
    import click

    wrapped = click.option(
        "--log-format",
        type=click.Choice(FORMATS, case_sensitive=False),
        default=None,
        help="text (default) or json: one JSON object per line. Default: from the config.",
    )(func)
    return click.option(
        "--log-level",
        type=click.Choice(LEVELS, case_sensitive=False),
        default=None,
        help="Least severe level written. Default: from the config (info).",
    )(wrapped)


def check(level: str, fmt: str) -> None:
    """Refuse an unknown level or format with the values allowed."""
    if level.lower() not in LEVELS:
        raise LogSetupError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    if fmt.lower() not in FORMATS:
        raise LogSetupError(f"unknown log format {fmt!r}; use one of {', '.join(FORMATS)}")


def setup(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) in ``fmt``.

    Replaces handlers set before (``logging.basicConfig`` would keep the first set-up), so
    the level given on the command line wins over anything a library configured.
    """
    check(level, fmt)
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt.lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # APScheduler says "Running job ..." at INFO for every run: only at debug
    logging.getLogger("apscheduler").setLevel(
        logging.DEBUG if level.lower() == "debug" else logging.WARNING
    )
