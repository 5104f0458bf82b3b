"""Drives at the hub: prepared from the fleet's last known state, ingested when they return.

Preparing asks the database what each centre on the route last reported, so the drive
carries exactly the packs that take each one to the latest releases. When the drive comes
back, its centres' registrations (for centres that were never online) and signed reports
are read into the fleet state like any report over the network, and each delivery is
recorded: which drive brought what to which centre, when.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from packs.bundle import (
    PrepareResult,
    Target,
    prepare,
    read_description,
    read_enrolments,
    read_returns,
)
from packs.packfile import DEFAULT_VOLUME_SIZE
from protocol.errors import CaravaneError

from .errors import Conflict, Forbidden, HubError
from .service import Hub


def route_targets(
    hub: Hub, names: list[str] | None, region: str | None
) -> tuple[list[Target], list[str]]:
    """The centres of a route and the channels they subscribe to, from the fleet state."""
    centres = hub.find_centres(names or None, region)
    if not centres:
        where = f"in region {region!r}" if region else "registered"
        raise HubError(f"no centres {where}; register them with `caravane hub centre add`")
    channels = sorted({c for n in centres for c in n.subscriptions} & set(hub.repo.channels()))
    targets = [
        Target(n.id, {c: int((n.installed or {}).get(c, 0)) for c in n.subscriptions}, n.region)
        for n in centres
    ]
    return targets, channels


def prepare_for_route(
    hub: Hub,
    drive: Path,
    names: list[str] | None = None,
    region: str | None = None,
    channels: list[str] | None = None,
    volume_size: int = DEFAULT_VOLUME_SIZE,
    progress: Any = None,
) -> PrepareResult:
    if channels and not names and not region:
        # a drive for centres the hub knows nothing about: full releases
        targets, chans = [Target("any-centre", dict.fromkeys(channels, 0))], channels
    else:
        targets, chans = route_targets(hub, names, region)
        if channels:
            chans = [c for c in chans if c in channels]
    result = prepare(hub.repo, drive, targets, chans, volume_size=volume_size, progress=progress)
    hub.record(
        "usb",
        "usb.prepare",
        drive=str(drive),
        centres=[t.name for t in targets],
        packs=len(result.written),
    )
    return result


def ingest(hub: Hub, drive: Path) -> dict[str, Any]:
    """Read the registrations and reports centres wrote onto a returned drive."""
    desc = read_description(drive)
    label = f"{Path(drive).name}@{desc.get('created', '?')}"
    enrolled, accepted, refused, stale = [], [], [], []
    # every file is read without following links, bounded (MAX_REPORT_BYTES...) and only if
    # it is a regular file: a returned drive is as hostile as an outgoing one
    enrolments, bad = read_enrolments(drive)
    refused.extend(bad)
    for name, raw in enrolments:
        try:
            doc = json.loads(raw.decode("utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            hub.enrol(doc)
            enrolled.append(doc.get("node_id"))
        except Forbidden as exc:
            if "already used" not in str(exc):
                refused.append(f"{name}.json: {exc}")
        except (ValueError, CaravaneError) as exc:
            refused.append(f"{name}.json: {exc}")
    reports, bad = read_returns(drive)
    refused.extend(bad)
    for name, data in reports:
        try:
            out = hub.accept_report(data, "usb")
        except Conflict:
            stale.append(name)  # already known (the same drive ingested twice)
            continue
        except CaravaneError as exc:
            refused.append(f"{name}: {exc}")
            continue
        centre_id = out.get("node_id", name)
        installed = out.get("installed", {})
        hub.record_delivery(
            centre_id, label, [{"channel": c, "version": v} for c, v in installed.items()]
        )
        accepted.append(centre_id)
    return {
        "ok": not refused,
        "drive": label,
        "enrolled": enrolled,
        "reports": accepted,
        "already_known": stale,
        "refused": refused,
    }
