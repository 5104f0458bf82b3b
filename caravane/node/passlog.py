"""What the last sync passes did, kept for the operator page (and ``/api/status``).

After every pass, scheduled or by hand, skipped or not, the agent writes one small record
in the state's key/value settings (no schema change): when it ran, whether it was skipped
and why, and each channel's outcome; and, per route that carried bytes (network, mirror,
peer, rsync, usb), when a pass through it last brought the centre up to date. The operator
page reads these to say when the centre last synced and why a newer release is not here.
"""

from __future__ import annotations

import json
from typing import Any

from .config import UpstreamConfig
from .state import NodeState, now
from .sync import SyncResult
from .transfer import ROUTE_OF_KIND

ROUTES = ("network", "mirror", "peer", "rsync", "usb")


def route_of(name: str, upstreams: list[UpstreamConfig]) -> str:
    """The route an upstream (by name) belongs to; a drive's name starts with ``drive:``."""
    if name.startswith("drive:"):
        return "usb"
    kinds = {u.name: u.kind for u in upstreams}
    return ROUTE_OF_KIND.get(kinds.get(name, "http"), "network")


def record_pass(
    state: NodeState, result: SyncResult, upstreams: list[UpstreamConfig], by: str
) -> None:
    at = now().isoformat(timespec="seconds")
    routes = sorted({route_of(n, upstreams) for n, b in result.received.items() if b > 0})
    doc: dict[str, Any] = {
        "at": at,
        "by": by,
        "skipped": result.skipped,
        "complete": result.complete and not result.skipped,
        "routes": routes,
        "channels": [
            {
                "channel": c.channel,
                "status": c.status,
                "active": c.active,
                "latest": c.latest,
                "missing_bytes": c.missing_bytes,
                "message": c.message[:500],
            }
            for c in result.channels
        ],
        "errors": [e[:500] for e in result.errors[:5]],
    }
    if result.skipped and not result.channels:
        # a pass skipped outside the windows learnt nothing new: keep what the last pass that
        # ran said of each channel (pieces still to come, the disk), for the operator page
        doc["channels"] = (last_pass(state) or {}).get("channels", [])
    state.set("last_pass", json.dumps(doc))
    if doc["complete"]:
        for route in routes:
            state.set(f"last_sync.{route}", at)


def last_pass(state: NodeState) -> dict[str, Any] | None:
    raw = state.get("last_pass")
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def last_syncs(state: NodeState) -> dict[str, str]:
    """Per route, when a pass through it last left the centre complete."""
    return {r: at for r in ROUTES if (at := state.get(f"last_sync.{r}"))}
