"""Freeze visibility: when each channel last had fresh signed word, and a warning when old.

A freeze attack (or a mirror that stopped updating) serves valid but old channel metadata;
signatures and the 365-day expiry cannot tell that from a quiet channel. So the node keeps,
per channel, two times in its state:

- ``checked``: the last time valid channel metadata came from any upstream, even unchanged
  (the node is in touch with *something*);
- ``fresh``: the last time it got word it could not have had from a frozen copy: the hub
  itself answered (an ``http`` upstream, the hub's own address), or any carrier (mirror,
  peer, rsync, drive) brought a newer signature than the node had ever seen (a higher
  version, or the same version re-signed with a later expiry; the hub re-signs metadata
  before it expires).

``node status``, the operator page, the portal and the hub's fleet view warn when ``fresh``
is older than ``freeze_warning_days`` (node.toml, default 14). Stored in the node's key/value
settings, so no schema change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from caravane.protocol.metadata import ChannelMeta, parse_time

from .state import NodeState, now

HUB_KINDS = ("http",)


def note_channel_word(
    state: NodeState,
    channel: str,
    found: list[tuple[str, ChannelMeta]],
    when: datetime | None = None,
) -> None:
    """Record what a sync pass learnt of ``channel``: (upstream kind, verified metadata) pairs."""
    if not found:
        return
    stamp = (when or now()).isoformat(timespec="seconds")
    state.set(f"word:{channel}", stamp)
    best = _best(state.get(f"best:{channel}"))
    fresh = False
    for kind, meta in found:
        key = (meta.version, _expiry(meta))
        if kind in HUB_KINDS or best is None or key > best:
            fresh = True
        if best is None or key > best:
            best = key
    if best is not None:
        state.set(f"best:{channel}", f"{best[0]}|{best[1]}")
    if fresh:
        state.set(f"fresh:{channel}", stamp)


def _expiry(meta: ChannelMeta) -> float:
    return parse_time(meta.expires, "expires").timestamp() if meta.expires else 0.0


def _best(value: str | None) -> tuple[int, float] | None:
    if not value:
        return None
    version, _, expires = value.partition("|")
    try:
        return int(version), float(expires)
    except ValueError:
        return None


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def freshness(
    state: NodeState, channel: str, warn_days: int, at: datetime | None = None
) -> dict[str, Any]:
    """What ``node status`` says of one channel's freshness (JSON-ready)."""
    at = at or now()
    checked = _parse(state.get(f"word:{channel}"))
    fresh = _parse(state.get(f"fresh:{channel}"))
    age = (at - fresh).days if fresh else None
    return {
        "last_checked": checked.isoformat(timespec="seconds") if checked else None,
        "last_fresh_word": fresh.isoformat(timespec="seconds") if fresh else None,
        "fresh_word_age_days": age,
        "stale": age is not None and age >= warn_days,
    }


def freeze_warning(channels: list[dict[str, Any]], warn_days: int) -> dict[str, str] | None:
    """One line in English and French when some channel had no fresh word for too long."""
    stale = [c for c in channels if c.get("freshness", {}).get("stale")]
    if not stale:
        return None
    days = max(int(c["freshness"]["fresh_word_age_days"]) for c in stale)
    names = ", ".join(str(c["channel"]) for c in stale)
    return {
        "en": f"Health: no fresh word from the hub for {days} days ({names}); the content "
        "may be old: connect to the hub or bring a drive prepared at the hub",
        "fr": f"Santé : aucune nouvelle fraîche du hub depuis {days} jours ({names}) ; le "
        "contenu est peut-être ancien : connectez-vous au hub ou apportez une clé préparée "
        "au hub",
        "days": str(days),
        "threshold_days": str(warn_days),
    }


__all__ = ["freeze_warning", "freshness", "note_channel_word"]
