"""``caravane usb``: drives for field agents, prepared at a hub or a centre, imported at centres.

The commands here work on repository folders directly, so they run anywhere: at the hub
(``--repo`` is the hub repository), at an up-to-date centre (``--repo`` is its store), and at
the centre that imports (``--store``). The hub service adds ``--nodes`` / ``--region`` from its
fleet database, and the node agent imports by itself when it sees a drive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from caravane.i18n import Translator, size_text
from caravane.node.cli import disk_errors
from caravane.packs.bundle import Target, import_drive, prepare, read_description, verify_drive
from caravane.packs.centre_store import CentreStore
from caravane.packs.repository import Repository
from caravane.protocol.errors import CaravaneError

from .output import EXIT_VERIFY, emit, handle_errors, json_option, lang_option, progress_bar


def parse_centres(
    values: tuple[str, ...], channels: list[str], t: Translator | None = None
) -> list[Target]:
    """``NAME`` or ``NAME=chan:version,chan:version`` -> targets (unknown versions: 0)."""
    targets = []
    for value in values:
        name, _, spec = value.partition("=")
        installed = dict.fromkeys(channels, 0)
        for item in filter(None, spec.split(",")):
            chan, _, version = item.partition(":")
            try:
                installed[chan.strip()] = int(version)
            except ValueError:
                tr = t or Translator("en")
                raise CaravaneError(tr("cli.usb.bad_centre", value=repr(value))) from None
        targets.append(Target(name.strip(), installed))
    return targets


hub_config_option = click.option(
    "--hub-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The hub's hub.toml (default: $CARAVANE_HUB_CONFIG, else /etc/caravane/hub.toml on a "
    "system install, else caravane-hub/hub.toml).",
)


@click.group()
def usb() -> None:
    """Prepare, verify and import USB drives (sneakernet both ways)."""


@usb.command("prepare")
@click.argument("drive", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--nodes",
    default=None,
    help="Comma-separated centres (names or ids) of the route, from the hub's fleet state.",
)
@click.option("--region", default=None, help="Every centre of this region (hub's fleet state).")
@click.option(
    "--channels",
    default=None,
    help="Comma-separated channel ids (alone: a drive for centres the hub does not know).",
)
@hub_config_option
@click.option(
    "--repo",
    "repo_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Work from a repository folder instead of the hub service.",
)
@click.option(
    "--node",
    "node_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Prepare at an up-to-date centre, from what it holds (for its neighbours).",
)
@click.option(
    "--centre",
    "centres",
    multiple=True,
    help="With --repo/--node: NAME or NAME=channel:version,... (what it holds). Repeatable.",
)
@click.option("--volume-size", type=int, default=None, help="Bytes per pack volume.")
@json_option
@lang_option
@handle_errors
def usb_prepare(
    drive: Path,
    nodes: str | None,
    region: str | None,
    channels: str | None,
    hub_config: Path | None,
    repo_dir: Path | None,
    node_dir: Path | None,
    centres: tuple[str, ...],
    volume_size: int | None,
    as_json: bool,
    t: Translator,
) -> None:
    """Fill DRIVE with what a route of centres lacks, by priority; says what did not fit.

    Priority: centres furthest behind first, then small updates before large ones.
    """
    from caravane.packs.packfile import DEFAULT_VOLUME_SIZE

    chans = [c.strip() for c in (channels or "").split(",") if c.strip()]
    vsize = volume_size or DEFAULT_VOLUME_SIZE
    with progress_bar(None, t("cli.usb.writing"), as_json) as bar:
        if repo_dir is not None or node_dir is not None:
            repo = Repository(repo_dir if repo_dir is not None else Path(str(node_dir)) / "store")
            chans = chans or repo.channels()
            targets = parse_centres(centres or ("any-centre",), chans, t)
            res = prepare(
                repo,
                drive,
                targets,
                chans,
                volume_size=vsize,
                progress=bar,
                prepared_by="hub" if repo.is_hub else "centre",
            )
        else:
            from caravane.hub.cli import load
            from caravane.hub.usb import prepare_for_route

            hub = load(_hub_config(hub_config))
            names = [n.strip() for n in (nodes or "").split(",") if n.strip()]
            if not (names or region or chans):
                raise CaravaneError(t("cli.usb.need_centres"))
            res = prepare_for_route(hub, drive, names, region, chans or None, vsize, bar)
    size = size_text(res.bytes_on_drive, t.lang)
    lines = [t.n("cli.usb.prepared", len(res.written), drive=drive, size=size)]
    if not res.written and not res.skipped:
        lines = [t("cli.usb.nothing", drive=drive)]
    for s in res.skipped:
        lines.append(
            t(
                "cli.usb.did_not_fit",
                channel=s["channel"],
                old=s["from_version"],
                new=s["to_version"],
                size=size_text(s["size"], t.lang),
                centres=", ".join(s["for_centres"]),
            )
        )
    lines.append(t("cli.usb.removable"))
    emit(as_json, dict(res.to_dict(), ok=True), "\n".join(lines))


def _hub_config(path: Path | None) -> Path:
    from caravane.system_paths import hub_config

    return path or hub_config()


@usb.command("verify")
@click.argument("drive", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--repo",
    "repo_dir",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="A repository or store whose pinned root the drive must match.",
)
@json_option
@lang_option
@handle_errors
def usb_verify(drive: Path, repo_dir: Path, as_json: bool, t: Translator) -> None:
    """Read back every file on DRIVE and check it, before the drive leaves."""
    problems = verify_drive(drive, Repository(repo_dir))
    doc = read_description(drive) if not problems else {}
    emit(
        as_json,
        {"ok": not problems, "problems": problems, "packs": len(doc.get("packs", []))},
        t("cli.usb.verify_ok")
        if not problems
        else t("cli.usb.verify_failed") + "\n" + "\n".join(f"  {p}" for p in problems),
    )
    if problems:
        raise SystemExit(EXIT_VERIFY)


@usb.command("import")
@click.argument("drive", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--node",
    "-d",
    "node_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The centre's node folder or its node.toml (default: $CARAVANE_NODE_DIR, else "
    "/etc/caravane/node.toml on a system install, else caravane-node).",
)
@click.option(
    "--store",
    "store_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Import into a bare store (a repository that pinned the hub's root) instead.",
)
@click.option("--channels", default=None, help="With --store: only these channels.")
@json_option
@lang_option
@handle_errors
@disk_errors  # a full or read-only disk at the centre: one line, not a traceback
def usb_import(
    drive: Path,
    node_dir: Path | None,
    store_dir: Path | None,
    channels: str | None,
    as_json: bool,
    t: Translator,
) -> None:
    """Verify and take from DRIVE what this centre needs, activate it, write the report back."""
    if store_dir is not None:
        store = CentreStore(store_dir, durable=True)
        chans = [c.strip() for c in channels.split(",")] if channels else None
        with progress_bar(None, t("cli.usb.importing"), as_json) as bar:
            res = import_drive(store, drive, chans, progress=bar)
        lines = [
            t("cli.usb.applied", channel=a["channel"], old=a["from"], new=a["to"])
            for a in res.applied
        ]
        lines += [t("cli.usb.up_to_date", channel=c) for c in res.up_to_date]
        lines += [t("cli.usb.problem", problem=f) for f in res.failed]
        lines.append(t("cli.usb.removable"))
        emit(as_json, res.to_dict(), "\n".join(lines))
        if not res.ok:
            raise SystemExit(1)
        return
    from caravane.node.agent import NodeAgent, import_drive_into_centre
    from caravane.system_paths import node_location

    node = NodeAgent.open(node_dir or node_location())
    with progress_bar(None, t("cli.usb.importing"), as_json) as bar:
        out = import_drive_into_centre(node, drive, progress=bar)
    # the receipt on the drive is in English and French; the screen speaks the agent's language
    emit(as_json, out, "\n".join(_import_lines(out, t)))
    if not out["ok"]:
        raise SystemExit(1)


def _import_lines(out: dict[str, Any], t: Translator) -> list[str]:
    lines = []
    for c in out["channels"]:
        if c["status"] == "activated":
            lines.append(t("cli.usb.installed", channel=c["channel"], v=c["active"]))
        elif c["status"] == "up-to-date":
            lines.append(t("cli.usb.already", channel=c["channel"], v=c["active"]))
        else:
            lines.append(t("cli.usb.not_installed", channel=c["channel"], why=c["message"]))
    lines += [t("cli.usb.problem", problem=e) for e in out["errors"]]
    return [*(lines or [t("cli.usb.nothing_here")]), t("cli.usb.removable")]


@usb.command("ingest")
@click.argument("drive", type=click.Path(file_okay=False, exists=True, path_type=Path))
@hub_config_option
@json_option
@lang_option
@handle_errors
def usb_ingest(drive: Path, hub_config: Path | None, as_json: bool, t: Translator) -> None:
    """At the hub: read the reports centres wrote on a returned DRIVE into the fleet state."""
    from caravane.hub.cli import load
    from caravane.hub.usb import ingest

    out = ingest(load(_hub_config(hub_config)), drive)
    lines = [t("cli.usb.registered", name=n) for n in out["enrolled"]]
    lines += [t("cli.usb.report_recorded", name=n) for n in out["reports"]]
    lines += [t("cli.usb.already_known", name=n) for n in out["already_known"]]
    lines += [t("cli.usb.refused", reason=r) for r in out["refused"]]
    emit(as_json, out, "\n".join(lines) or t("cli.usb.no_reports"))
    if not out["ok"]:
        raise SystemExit(1)
