"""USB bundles: what a field agent's drive carries to a route of centres, and back.

A drive is an untrusted carrier. It holds a subset of the repository layout (signed metadata,
manifests, packs) plus a plan per centre; a centre verifies every pack it takes against its own
pinned root, exactly like a download. Names stay within what FAT32 and exFAT accept, and packs
are cut into volumes under 4 GiB.

Layout on the drive::

    caravane/bundle.json                 what is on the drive, for whom, in which order
    caravane/repo/metadata/...           signed root chain and channel metadata
    caravane/repo/packs/<c>/<a>-<b>.pack pack volumes (.pack, .pack.1, ...)
    caravane/plans/<centre>.json         per centre: the packs to apply, in order
    caravane/reports/<centre>.json       written by each centre: its signed report
    caravane/receipts/<centre>.txt       written by each centre: a plain-language receipt

Preparing is resumable: a pack already on the drive whose entries all verify is kept. The
bundle description is written last, so a drive pulled out mid-write is recognised as
incomplete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from caravane.protocol.canonical import load_json
from caravane.protocol.errors import (
    CaravaneError,
    FormatError,
    NotFoundError,
    SignatureError,
    VerificationError,
)
from caravane.protocol.metadata import MAX_METADATA_BYTES, check_channel, format_time, now_utc
from caravane.protocol.report import MAX_REPORT_BYTES

from . import changes
from .centre_store import CentreStore
from .drive_io import Drive, DriveError, DriveFullError
from .errors import DiskFullError, PackError, TruncatedPackError
from .layout import channel_relpath, pack_relpath, root_relpath
from .packfile import DEFAULT_VOLUME_SIZE, read_entries, volume_paths
from .repository import RepositoryBase, Snapshot

BUNDLE_DIR = "caravane"
DESCRIPTION = "bundle.json"
MARGIN = 16 * 1024 * 1024
MAX_DESCRIPTION_BYTES = 16 * 1024 * 1024
MAX_PLAN_BYTES = 16 * 1024 * 1024
MAX_ENROLMENT_BYTES = 64 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")

Progress = Callable[[int], None] | None


def safe_name(name: str) -> str:
    """A centre name as a FAT32/exFAT-safe file name."""
    cleaned = _SAFE_NAME.sub("-", name).strip("-.") or "centre"
    return cleaned[:64]


@dataclass
class Target:
    """A centre on the route and what the hub last knew it held (channel -> version, 0: none).

    ``subscriptions`` are the channels the centre takes; ``None`` means every channel of the
    drive (a centre the hub knows nothing about, or one named on the command line). A centre
    is never planned a channel outside its subscriptions: the drive's space and the
    per-centre checklist would be spent on content it would refuse.
    """

    name: str
    installed: dict[str, int]
    region: str = ""
    subscriptions: list[str] | None = None

    def wants(self, channels: list[str]) -> list[str]:
        """The channels of ``channels`` this centre subscribes to."""
        if self.subscriptions is None:
            return list(channels)
        subs = set(self.subscriptions)
        return [c for c in channels if c in subs]


@dataclass
class PackPlan:
    channel: str
    from_version: int
    to_version: int
    size: int = 0
    for_centres: list[str] = field(default_factory=list)

    @property
    def relpath(self) -> str:
        return pack_relpath(self.channel, self.from_version, self.to_version)


@dataclass
class PrepareResult:
    drive: str
    written: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    bytes_on_drive: int
    free_after: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bundle_root(drive: Path) -> Path:
    return Path(drive) / BUNDLE_DIR


def _free(path: Path) -> int:
    return shutil.disk_usage(path).free


def _check_writable(drive: Path) -> None:
    probe = f".caravane-write-test-{os.getpid()}"
    d = Drive(drive)
    try:
        d.write_bytes(probe, b"x")
        d.unlink(probe)
    except DriveFullError:
        raise DiskFullError(f"{drive}: the drive is full / le support est plein") from None


def pack_is_complete(first: Path, drive: Drive | None = None) -> bool:
    """True when every entry of a pack on the drive reads back and verifies."""
    try:
        for _ in read_entries(first, drive.open_path if drive else None):
            pass
    except (PackError, FormatError, OSError, DriveError):
        return False
    return True


def _drive_pack_size(d: Drive, rel: str) -> int:
    total, i = 0, 0
    while d.exists(name := rel if i == 0 else f"{rel}.{i}"):
        total += d.size(name)
        i += 1
    return total


def _remove_volumes(d: Drive, rel: str) -> None:
    """Remove a pack's volumes (and any link or FIFO planted in their place)."""
    i = 0
    while d.lexists(name := rel if i == 0 else f"{rel}.{i}") or i == 0:
        d.unlink(name)
        i += 1


def pack_size(first: Path) -> int:
    return sum(p.stat().st_size for p in volume_paths(first))


def plan_packs(hub: RepositoryBase, targets: list[Target], channels: list[str]) -> list[PackPlan]:
    """The deduplicated packs the route needs, in priority order.

    Priority: centres furthest behind first (most missing versions), then small updates
    before large ones, so a drive too small for everything still brings most centres forward.
    """
    snap = hub.snapshot()
    latest = {c: snap.channel(c).version for c in channels}
    plans: dict[tuple[str, int, int], PackPlan] = {}
    behind: dict[tuple[str, int, int], int] = {}
    for t in targets:
        mine = t.wants(channels)
        lag = sum(latest[c] - min(t.installed.get(c, 0), latest[c]) for c in mine)
        for c in mine:
            have = t.installed.get(c, 0)
            if have >= latest[c]:
                continue
            key = (c, have, latest[c])
            plan = plans.setdefault(key, PackPlan(c, have, latest[c]))
            plan.for_centres.append(t.name)
            behind[key] = max(behind.get(key, 0), lag)
    for key, plan in plans.items():
        existing = hub.pack_path(*key)
        plan.size = pack_size(existing) if existing.exists() else _estimate(snap, *key)
    return sorted(
        plans.values(), key=lambda p: (-behind[(p.channel, p.from_version, p.to_version)], p.size)
    )


def _estimate(snap: Snapshot, channel: str, a: int, b: int) -> int:
    """Upper bound for a pack not built yet: the new bytes of B (packs compress them)."""
    old = snap.release(channel, a) if a else None
    return changes.release_new_bytes(old, snap.release(channel, b)) + 64 * 1024


def prepare(
    hub: RepositoryBase,
    drive: Path,
    targets: list[Target],
    channels: list[str],
    *,
    volume_size: int = DEFAULT_VOLUME_SIZE,
    margin: int = MARGIN,
    progress: Progress = None,
    prepared_by: str = "hub",
) -> PrepareResult:
    """Fill ``drive`` with what the ``targets`` lack, by priority, as far as space allows."""
    drive = Path(drive)
    if not drive.is_dir():
        raise DriveError(f"{drive}: no such folder; is the drive mounted?")
    _check_writable(drive)
    for c in channels:
        check_channel(c)
    root = bundle_root(drive)
    d = Drive(drive)
    d.mkdirs(f"{BUNDLE_DIR}/repo")
    written: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    chosen: list[PackPlan] = []
    for plan in plan_packs(hub, targets, channels):
        dest = root / "repo" / plan.relpath
        rel = f"{BUNDLE_DIR}/repo/{plan.relpath}"
        if d.exists(rel) and pack_is_complete(dest, d):
            plan.size = _drive_pack_size(d, rel)
            chosen.append(plan)
            written.append(dict(asdict(plan), reused=True))
            continue
        _remove_volumes(d, rel)
        if plan.size + min(margin, shutil.disk_usage(drive).total // 20) > _free(drive):
            skipped.append(dict(asdict(plan), reason="does not fit on the drive"))
            continue
        src = hub.pack_path(plan.channel, plan.from_version, plan.to_version)
        try:
            if not src.exists():
                hub.build_pack(plan.channel, plan.from_version, plan.to_version, src, volume_size)
            _copy_volumes(src, d, rel, volume_size, progress)
        except (DiskFullError, DriveFullError):
            _remove_volumes(d, rel)
            skipped.append(dict(asdict(plan), reason="the drive filled up"))
            continue
        plan.size = _drive_pack_size(d, rel)
        chosen.append(plan)
        written.append(dict(asdict(plan), reused=False))
    _write_metadata(hub, d, channels)
    for t in targets:
        steps = [
            {"channel": p.channel, "from": p.from_version, "to": p.to_version, "pack": p.relpath}
            for p in chosen
            if t.name in p.for_centres
        ]
        missing = [
            {"channel": p["channel"], "from": p["from_version"], "to": p["to_version"]}
            for p in skipped
            if t.name in p["for_centres"]
        ]
        _write_json(
            d,
            f"{BUNDLE_DIR}/plans/{safe_name(t.name)}.json",
            {"centre": t.name, "region": t.region, "steps": steps, "not_on_drive": missing},
        )
    description = {
        "format": "caravane-bundle",
        "format_version": 1,
        "created": format_time(now_utc()),
        "prepared_by": prepared_by,
        "root_keyids": sorted(hub.trusted.root.keys),
        "channels": channels,
        "centres": [t.name for t in targets],
        "packs": [
            {
                "channel": p.channel,
                "from": p.from_version,
                "to": p.to_version,
                "path": p.relpath,
                "size": p.size,
            }
            for p in chosen
        ],
        "not_on_drive": skipped,
    }
    _write_json(d, f"{BUNDLE_DIR}/{DESCRIPTION}", description)
    problems = verify_drive(drive, hub)
    if problems:
        raise DriveError(
            "the drive did not read back correctly: "
            + "; ".join(problems)
            + " - try another drive / le support ne relit pas correctement, essayez-en un autre"
        )
    return PrepareResult(
        str(drive),
        written,
        skipped,
        sum(p.size for p in chosen),
        _free(drive),
    )


def _copy_volumes(src: Path, d: Drive, rel: str, volume_size: int, progress: Progress) -> None:
    """Copy pack volumes to the drive through temporary names, then rename."""
    vols = volume_paths(src)
    if any(v.stat().st_size > volume_size for v in vols):
        raise PackError(f"{src}: a volume is larger than {volume_size} bytes; rebuild the pack")
    for i, vol in enumerate(vols):
        target = rel if i == 0 else f"{rel}.{i}"
        with open(vol, "rb") as fin, d.writer(target) as fout:
            while block := fin.read(1024 * 1024):
                fout.write(block)
                if progress:
                    progress(len(block))


def _write_metadata(hub: RepositoryBase, d: Drive, channels: list[str]) -> None:
    repo = f"{BUNDLE_DIR}/repo"
    for v in hub.root_versions():
        d.write_bytes(f"{repo}/{root_relpath(v)}", (hub.path / root_relpath(v)).read_bytes())
    d.write_bytes(f"{repo}/{root_relpath()}", (hub.path / root_relpath()).read_bytes())
    for c in channels:
        data = hub.channel_bytes(c)
        if data is None:
            raise NotFoundError(f"channel {c!r} does not exist on this hub")
        d.write_bytes(f"{repo}/{channel_relpath(c)}", data)


def _write_json(d: Drive, rel: str, doc: dict[str, Any]) -> None:
    d.write_bytes(rel, json.dumps(doc, ensure_ascii=False, indent=2).encode() + b"\n")


def read_description(drive: Path) -> dict[str, Any]:
    path = bundle_root(drive) / DESCRIPTION
    try:
        data = Drive(drive).read_bytes(f"{BUNDLE_DIR}/{DESCRIPTION}", MAX_DESCRIPTION_BYTES)
    except FileNotFoundError:
        raise DriveError(
            f"{drive}: no Caravane bundle on this drive (or it was pulled out while being "
            "prepared) / aucun lot Caravane sur ce support"
        ) from None
    doc = load_json(data, str(path), MAX_DESCRIPTION_BYTES)
    if not isinstance(doc, dict) or doc.get("format") != "caravane-bundle":
        raise DriveError(f"{path}: not a Caravane bundle description")
    return doc


def verify_drive(drive: Path, trust: RepositoryBase) -> list[str]:
    """Read back everything on the drive and check it against ``trust``'s pinned root.

    Returns the problems found (empty: the drive is good to leave).
    """
    problems: list[str] = []
    try:
        doc = read_description(drive)
    except CaravaneError as exc:
        return [str(exc)]
    repo = bundle_root(drive) / "repo"
    d = Drive(drive)
    for c in doc.get("channels", []):
        try:
            check_channel(str(c))
            data = d.read_bytes(f"{BUNDLE_DIR}/repo/{channel_relpath(c)}", MAX_METADATA_BYTES)
            trust.trusted.verify_channel(data, c, check_expiry=False)
        except (OSError, CaravaneError) as exc:
            problems.append(f"channel metadata {c!r}: {exc}")
    for p in doc.get("packs", []):
        first = repo / str(p.get("path", ""))
        try:
            for _ in read_entries(first, d.open_path):
                pass
        except (PackError, FormatError, OSError, DriveError) as exc:
            problems.append(str(exc))
    return problems


@dataclass
class ImportResult:
    applied: list[dict[str, Any]]
    failed: list[str]
    up_to_date: list[str]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), ok=self.ok)


def import_drive(
    store: CentreStore,
    drive: Path,
    channels: list[str] | None = None,
    progress: Progress = None,
) -> ImportResult:
    """Take from the drive what ``store`` needs for ``channels`` and ignore the rest.

    Each pack is verified against the store's pinned root as it is applied. A pack that is
    truncated or tampered with is refused with a clear message; the objects it delivered
    before the bad part stay in the store, so the next drive (or the network) continues.
    """
    doc = read_description(drive)
    repo = bundle_root(drive) / "repo"
    d = Drive(drive)
    wanted = channels if channels is not None else list(doc.get("channels", []))
    wanted = [c for c in wanted if c in doc.get("channels", [])]
    _check_same_hub(store, d, wanted)
    packs = [p for p in doc.get("packs", []) if p.get("channel") in wanted]
    applied: list[dict[str, Any]] = []
    failed: list[str] = []
    up_to_date: list[str] = []
    for channel in wanted:
        try:
            have = store.latest_local_version(channel)
        except (NotFoundError, CaravaneError):
            have = 0
        chain = sorted((p for p in packs if p["channel"] == channel), key=lambda p: p["from"])
        progressed = False
        while True:
            step = next((p for p in chain if p["from"] == have and p["to"] > have), None)
            if step is None:
                break
            first = repo / str(step["path"])
            try:
                res = store.apply_pack(
                    first, progress=progress, channels=[channel], opener=d.open_path
                )
            except TruncatedPackError as exc:
                failed.append(
                    f"{channel}: the drive's pack is incomplete ({exc}); re-insert the drive or "
                    "bring another one, nothing was lost / paquet incomplet, reinserez le support"
                )
                break
            except (CaravaneError, OSError) as exc:
                failed.append(
                    f"{channel}: refused {first.name}: {exc} / paquet refuse (altere ou d'un "
                    "autre hub)"
                )
                break
            applied.append({"channel": channel, "from": have, "to": res.version})
            have = res.version
            progressed = True
        if not progressed and not any(f.startswith(f"{channel}:") for f in failed):
            up_to_date.append(channel)
    return ImportResult(applied, failed, up_to_date)


def _check_same_hub(store: RepositoryBase, d: Drive, channels: list[str]) -> None:
    """Refuse at once a drive whose metadata another hub signed (clear message, no work)."""
    state = store.trusted.copy()  # with the roots it replaced: a revoked key is named
    repo = f"{BUNDLE_DIR}/repo"
    names = d.files(f"{repo}/metadata/root", ".json")
    for v in sorted(int(n[:-5]) for n in names if n[:-5].isdigit()):
        if v > state.root.version:
            try:
                data = d.read_bytes(f"{repo}/{root_relpath(v)}", MAX_METADATA_BYTES)
                state.update_root(data, f"drive root v{v}")
            except CaravaneError:
                break
    for c in channels:
        try:
            check_channel(c)
            data = d.read_bytes(f"{repo}/{channel_relpath(c)}", MAX_METADATA_BYTES)
            state.verify_channel(data, c, check_expiry=False)
        except SignatureError as exc:
            if "revoked" in str(exc):
                raise DriveError(
                    f"this drive was prepared before the hub changed its keys: {exc}; nothing "
                    "was taken from it / support préparé avant le changement de clés du hub"
                ) from None
            raise DriveError(
                "this drive was prepared by another hub (its signatures do not match this "
                "centre's keys); nothing was taken from it / ce support vient d'un autre hub, "
                "rien n'a ete importe"
            ) from None
        except (OSError, CaravaneError) as exc:
            raise DriveError(f"the drive's metadata for {c!r} is unusable: {exc}") from None


def write_return(drive: Path, centre: str, report: bytes, receipt: str) -> Path:
    """Write a centre's signed report and plain-language receipt onto the drive.

    Only inside the drive's own ``caravane/reports`` and ``caravane/receipts`` folders: a
    folder that is a link (into the centre's disk, say) is refused, never written through.
    """
    name = safe_name(centre)
    d = Drive(drive)
    d.write_bytes(f"{BUNDLE_DIR}/reports/{name}.json", report)
    d.write_bytes(f"{BUNDLE_DIR}/receipts/{name}.txt", receipt.encode())
    return bundle_root(drive) / "reports" / f"{name}.json"


def write_enrolment(drive: Path, centre: str, request: bytes) -> None:
    """Write a centre's pending registration onto the drive (same rules as reports)."""
    Drive(drive).write_bytes(f"{BUNDLE_DIR}/enrolments/{safe_name(centre)}.json", request)


def _read_folder(drive: Path, folder: str, limit: int) -> tuple[list[tuple[str, bytes]], list[str]]:
    d = Drive(drive)
    good: list[tuple[str, bytes]] = []
    refused: list[str] = []
    try:
        names = d.files(f"{BUNDLE_DIR}/{folder}", ".json")
    except DriveError as exc:
        return [], [str(exc)]
    for n in names:
        try:
            good.append((n[: -len(".json")], d.read_bytes(f"{BUNDLE_DIR}/{folder}/{n}", limit)))
        except (OSError, DriveError) as exc:
            refused.append(f"{n}: {exc}")
    return good, refused


def read_returns(drive: Path) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The centres' reports on a returned drive, and the files refused (links, too large)."""
    return _read_folder(drive, "reports", MAX_REPORT_BYTES)


def read_enrolments(drive: Path) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The registrations of never-online centres on a returned drive, and the files refused."""
    return _read_folder(drive, "enrolments", MAX_ENROLMENT_BYTES)


def read_reports(drive: Path) -> list[tuple[str, bytes]]:
    """The readable reports on a drive (``read_returns`` also says which were refused)."""
    return read_returns(drive)[0]


def plan_for(drive: Path, centre: str) -> dict[str, Any]:
    rel = f"{BUNDLE_DIR}/plans/{safe_name(centre)}.json"
    try:
        data = Drive(drive).read_bytes(rel, MAX_PLAN_BYTES)
    except FileNotFoundError:
        raise VerificationError(f"{drive}: no plan for centre {centre!r} on this drive") from None
    doc = load_json(data, str(Path(drive) / rel))
    if not isinstance(doc, dict):
        raise DriveError(f"{Path(drive) / rel}: not a plan; prepare the drive again at the hub")
    return doc


__all__ = [
    "DriveError",
    "ImportResult",
    "PrepareResult",
    "Target",
    "import_drive",
    "plan_for",
    "prepare",
    "read_description",
    "read_enrolments",
    "read_reports",
    "read_returns",
    "verify_drive",
    "write_enrolment",
    "write_return",
]
