"""Drives at the hub: prepared from the fleet's last known state, ingested when they return.

Preparing asks the database what each centre on the route last reported, so the drive
carries exactly the packs that take each one to the latest releases. When the drive comes
back, its centres' registrations (for centres that were never online) and signed reports
are read into the fleet state like any report over the network, and each delivery is
recorded: which drive brought what to which centre, when.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from caravane.packs.bundle import (
    BUNDLE_DIR,
    PrepareResult,
    Target,
    prepare,
    read_description,
    read_enrolments,
    read_returns,
    safe_name,
)
from caravane.packs.drive_io import Drive
from caravane.packs.packfile import DEFAULT_VOLUME_SIZE
from caravane.protocol.errors import CaravaneError
from caravane.protocol.report import make_ack, report_ids

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
        Target(
            n.id,
            {c: int((n.installed or {}).get(c, 0)) for c in n.subscriptions},
            n.region,
            list(n.subscriptions),
        )
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
    newest: dict[str, tuple[int, dict[str, int]]] = {}
    on_drive: dict[str, list[int]] = {}
    reports, bad = read_returns(drive)
    refused.extend(bad)
    for name, data in reports:
        try:
            centre_id, seq = report_ids(data)
            on_drive.setdefault(centre_id, []).append(seq)
            out = hub.accept_report(data, "usb")
        except Conflict:  # already held (the same drive ingested twice, or came by network)
            if centre_id not in stale:
                stale.append(centre_id)
            continue
        except CaravaneError as exc:
            refused.append(f"{name}: {exc}")
            continue
        if seq >= newest.get(centre_id, (0, {}))[0]:
            newest[centre_id] = (seq, out.get("installed", {}))
        if centre_id not in accepted:
            accepted.append(centre_id)
    for centre_id, (_, installed) in sorted(newest.items()):
        hub.record_delivery(
            centre_id, label, [{"channel": c, "version": v} for c, v in installed.items()]
        )
    try:
        acks = write_acks(hub, drive, on_drive)
    except (OSError, CaravaneError) as exc:  # the reports are in; they only travel again
        acks = {}
        refused.append(
            f"acknowledgements not written to the drive ({exc}); the centres send those "
            "reports again with the next drive, which is harmless"
        )
    return {
        "ok": not refused,
        "drive": label,
        "enrolled": enrolled,
        "reports": accepted,
        "already_known": stale,
        "refused": refused,
        "acknowledged": acks,
    }


def write_acks(hub: Hub, drive: Path, on_drive: dict[str, list[int]]) -> dict[str, int]:
    """Write, per centre, the hub's signed word on which of its reports it now holds.

    The next ``usb import`` at that centre (or at the peer that carried them) reads it and
    marks those reports delivered; the rest go out again. Signed by the release key, which
    every centre pins through its root, so a forged file cannot silence a centre's reports.
    """
    key = hub.repo.signing_key("release")
    d = Drive(drive)
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    written: dict[str, int] = {}
    for centre_id, seqs in sorted(on_drive.items()):
        held = hub.held_report_seqs(centre_id, seqs)
        if not held:
            continue
        data = make_ack(centre_id, held, at, key)
        d.write_bytes(f"{BUNDLE_DIR}/acks/{safe_name(centre_id)}.json", data)
        written[centre_id] = len(held)
    return written
