"""Where the hub and the node look for their files: a checkout, or a system install.

From a checkout (quickstart, demo, tests) everything lives in a folder of the current
directory (``caravane-hub/``, ``caravane-node/``), as before. On a server or a centre installed
from the Debian package (or any system service) the defaults follow the FHS: configuration in
``/etc/caravane``, state in ``/var/lib/caravane``, logs to stderr, which systemd sends to the
journal. A system install is recognised by ``/etc/caravane`` existing (the package makes it)
or by ``CARAVANE_LAYOUT=system`` (the units set it); ``CARAVANE_LAYOUT=local`` forces the
checkout layout. Explicit flags, ``$CARAVANE_HUB_CONFIG`` and ``$CARAVANE_NODE_DIR`` always win.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import click

SYSTEM_CONFIG_DIR: Final = Path("/etc/caravane")
SYSTEM_STATE_DIR: Final = Path("/var/lib/caravane")
LOCAL_HUB_DIR: Final = Path("caravane-hub")
LOCAL_NODE_DIR: Final = Path("caravane-node")
LAYOUT_ENV: Final = "CARAVANE_LAYOUT"


class LayoutError(click.ClickException):
    """``$CARAVANE_LAYOUT`` holds something other than ``system`` or ``local``.

    A ClickException: it is raised while a command's defaults are worked out, before the
    command's own error handling runs, and must still end in one line and exit status 1.
    """


def system_layout() -> bool:
    """True when the defaults are the FHS ones (see the module's docstring)."""
    mode = os.environ.get(LAYOUT_ENV, "").strip().lower()
    if mode == "system":
        return True
    if mode == "local":
        return False
    if mode:
        raise LayoutError(f"${LAYOUT_ENV}={mode!r}: write system, local, or leave it unset")
    return SYSTEM_CONFIG_DIR.is_dir()


def hub_data_dir() -> Path:
    """Where `caravane hub init` makes a hub unless told otherwise."""
    return SYSTEM_STATE_DIR / "hub" if system_layout() else LOCAL_HUB_DIR


def hub_config() -> Path:
    """The hub.toml a hub command reads unless told otherwise."""
    env = os.environ.get("CARAVANE_HUB_CONFIG")
    if env:
        return Path(env)
    if system_layout():
        return SYSTEM_CONFIG_DIR / "hub.toml"
    return LOCAL_HUB_DIR / "hub.toml"


def hub_init_config(data_dir: Path) -> Path:
    """Where `caravane hub init` writes hub.toml for a hub in ``data_dir``."""
    return SYSTEM_CONFIG_DIR / "hub.toml" if system_layout() else data_dir / "hub.toml"


def node_data_dir() -> Path:
    """Where `caravane node init` sets a centre up unless told otherwise."""
    env = os.environ.get("CARAVANE_NODE_DIR")
    if env:
        return Path(env)
    return SYSTEM_STATE_DIR / "node" if system_layout() else LOCAL_NODE_DIR


def node_init_config(data_dir: Path) -> Path:
    """Where `caravane node init` writes node.toml for a node in ``data_dir``."""
    return SYSTEM_CONFIG_DIR / "node.toml" if system_layout() else data_dir / "node.toml"


def node_location() -> Path:
    """What node commands open unless told otherwise: a data folder or a node.toml."""
    env = os.environ.get("CARAVANE_NODE_DIR")
    if env:
        return Path(env)
    if system_layout():
        return SYSTEM_CONFIG_DIR / "node.toml"
    return LOCAL_NODE_DIR


def layout_name() -> str:
    return "system" if system_layout() else "local"


def refuse_root_for_service_data(data_dir: Path, command: str) -> None:
    """Stop `init` run as root into the service user's folder.

    The units run as the ``caravane`` user; files root made there (keys, database) would
    stop the service at its first write. The package makes /var/lib/caravane the service
    user's, so root initialising a hub or node inside it is refused with the command to run.
    """
    if os.geteuid() != 0:
        return
    try:
        target = Path(data_dir).resolve()
        owner = SYSTEM_STATE_DIR.stat().st_uid
    except OSError:
        return
    if owner != 0 and target.is_relative_to(SYSTEM_STATE_DIR):
        import pwd

        try:
            user = pwd.getpwuid(owner).pw_name
        except KeyError:
            user = str(owner)
        raise click.ClickException(
            f"{target} belongs to the service user {user!r}: run this as that user, "
            f"`sudo -u {user} caravane {command} ...`, so the service can write what it makes"
        )
