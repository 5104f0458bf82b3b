"""The ``caravane`` command: one entry point, a sub-command group per job.

Every command prints what it did in plain words, or one JSON object with ``--json``; every
refusal is one line starting with ``error:`` and a non-zero exit status, so scripts and field
agents can both act on it.

The root group is assembled in one place, :func:`register_commands`, from the table
:data:`COMMANDS`: each group lives with the code it drives (``hub/cli.py``, ``node/cli.py``,
``caravane/usb_cli.py``, ``caravane/repo_cli.py``) and shares only :mod:`caravane.output`,
which imports none of them. A group whose module fails to import stops ``caravane`` with an
``error:`` line naming the module and the cause: a broken installation is never a command
that silently went missing.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Final

import click

from . import __version__, memory

# The shared helpers, importable from here for sub-command modules written against the
# older layout (node/cli.py); new code imports them from caravane.output.
from .output import (  # noqa: F401  (re-exported)
    EXIT_ERROR,
    EXIT_VERIFY,
    emit,
    fail,
    handle_errors,
    json_option,
    progress_bar,
    size_text,
)

# (module, attribute, command name), in the order ``caravane --help`` lists them
COMMANDS: Final[tuple[tuple[str, str, str], ...]] = (
    ("caravane.repo_cli", "keys", "keys"),
    ("caravane.repo_cli", "repo", "repo"),
    ("caravane.repo_cli", "pack", "pack"),
    ("caravane.repo_cli", "demo", "demo"),
    ("caravane.hub.cli", "hub", "hub"),
    ("caravane.hub.cli", "publish", "publish"),
    ("caravane.node.cli", "node", "node"),
    ("caravane.usb_cli", "usb", "usb"),
    ("caravane.i18n_tools", "main", "i18n"),
)


class CommandsBroken(click.ClickException):
    """A sub-command group could not be loaded: the installation is incomplete."""


def register_commands(
    root: click.Group, table: Sequence[tuple[str, str, str]] | None = None
) -> click.Group:
    """Add every sub-command group of ``table`` (default :data:`COMMANDS`) to ``root``.

    Idempotent; raises :class:`CommandsBroken` naming the group and the module that failed.
    """
    for module_name, attr, name in COMMANDS if table is None else table:
        if name in root.commands:
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise CommandsBroken(
                f"the `caravane {name}` commands cannot be loaded: importing {module_name} "
                f"failed ({type(exc).__name__}: {exc}); the installation is incomplete or "
                "damaged: reinstall caravane (pip install -e .) and run again"
            ) from exc
        cmd = getattr(module, attr, None)
        if not isinstance(cmd, click.Command):
            raise CommandsBroken(
                f"the `caravane {name}` commands cannot be loaded: {module_name} has no "
                f"command {attr!r}"
            )
        root.add_command(cmd, name)
    return root


class Caravane(click.Group):
    """The root group: sub-commands are registered before the command line is read."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        memory.tune()  # before any thread allocates: see memory.py
        try:
            register_commands(self)
        except CommandsBroken as exc:
            fail(exc.message)
        return super().main(*args, **kwargs)


@click.group(cls=Caravane, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="caravane")
def main() -> None:
    """Caravane: signed, delta-compressed content from a hub to offline centres."""
