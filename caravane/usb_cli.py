"""``caravane usb``: drives for field agents, prepared at a hub or a centre, imported at centres.

The commands here work on repository folders directly, so they run anywhere: at the hub
(``--repo`` is the hub repository), at an up-to-date centre (``--repo`` is its store), and at
the centre that imports (``--store``). The hub service adds ``--nodes`` / ``--region`` from its
fleet database, and the node agent imports by itself when it sees a drive.
"""

from __future__ import annotations

from pathlib import Path

import click

from packs.bundle import Target, import_drive, prepare, read_description, verify_drive
from packs.repository import Repository
from protocol.errors import CaravaneError

from .cli import EXIT_VERIFY, emit, handle_errors, json_option, main, progress_bar


def parse_centres(values: tuple[str, ...], channels: list[str]) -> list[Target]:
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
                raise CaravaneError(f"--centre {value!r}: write versions as channel:N") from None
        targets.append(Target(name.strip(), installed))
    return targets


@main.group()
def usb() -> None:
    """Prepare, verify and import USB drives (sneakernet both ways)."""


@usb.command("prepare")
@click.argument("drive", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--repo",
    "repo_dir",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The hub repository, or an up-to-date centre's store.",
)
@click.option("--channels", required=True, help="Comma-separated channel ids.")
@click.option(
    "--centre",
    "centres",
    multiple=True,
    help="NAME or NAME=channel:version,... (what it holds; default: nothing). Repeatable.",
)
@click.option("--volume-size", type=int, default=None, help="Bytes per pack volume.")
@json_option
@handle_errors
def usb_prepare(
    drive: Path,
    repo_dir: Path,
    channels: str,
    centres: tuple[str, ...],
    volume_size: int | None,
    as_json: bool,
) -> None:
    """Fill DRIVE with what the centres lack; says what did not fit."""
    from packs.packfile import DEFAULT_VOLUME_SIZE

    chans = [c.strip() for c in channels.split(",") if c.strip()]
    targets = parse_centres(centres or ("any-centre",), chans)
    repo = Repository(repo_dir)
    with progress_bar(None, "writing drive", as_json) as bar:
        res = prepare(
            repo,
            drive,
            targets,
            chans,
            volume_size=volume_size or DEFAULT_VOLUME_SIZE,
            progress=bar,
            prepared_by="hub" if repo.is_hub else "centre",
        )
    lines = [f"drive {drive}: {len(res.written)} packs, {res.bytes_on_drive} bytes, verified"]
    for s in res.skipped:
        lines.append(
            f"  did not fit: {s['channel']} {s['from_version']}->{s['to_version']} "
            f"({s['size']} bytes) for {', '.join(s['for_centres'])}"
        )
    lines.append("the drive can be removed / le support peut etre retire")
    emit(as_json, dict(res.to_dict(), ok=True), "\n".join(lines))


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
@handle_errors
def usb_verify(drive: Path, repo_dir: Path, as_json: bool) -> None:
    """Read back every file on DRIVE and check it, before the drive leaves."""
    problems = verify_drive(drive, Repository(repo_dir))
    doc = read_description(drive) if not problems else {}
    emit(
        as_json,
        {"ok": not problems, "problems": problems, "packs": len(doc.get("packs", []))},
        "drive OK: every pack reads back and verifies"
        if not problems
        else "drive FAILED:\n" + "\n".join(f"  {p}" for p in problems),
    )
    if problems:
        raise SystemExit(EXIT_VERIFY)


@usb.command("import")
@click.argument("drive", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--store",
    "store_dir",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The centre's store (a repository that pinned the hub's root).",
)
@click.option("--channels", default=None, help="Only these channels (default: all on drive).")
@json_option
@handle_errors
def usb_import(drive: Path, store_dir: Path, channels: str | None, as_json: bool) -> None:
    """Verify and take from DRIVE what this centre needs; ignore the rest."""
    store = Repository(store_dir, durable=True)
    chans = [c.strip() for c in channels.split(",")] if channels else None
    with progress_bar(None, "importing", as_json) as bar:
        res = import_drive(store, drive, chans, progress=bar)
    lines = [f"applied {a['channel']} {a['from']} -> {a['to']}" for a in res.applied]
    lines += [f"up to date: {c}" for c in res.up_to_date]
    lines += [f"problem: {f}" for f in res.failed]
    lines.append("the drive can be removed / le support peut etre retire")
    emit(as_json, res.to_dict(), "\n".join(lines))
    if not res.ok:
        raise SystemExit(1)
