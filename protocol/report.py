"""A centre's signed report: what it holds and how it is doing, for the hub's fleet view.

Reports travel by any route (HTTP, a drive carried back, a peer), so they are signed by the
centre's own key (made at enrolment) and numbered: the hub refuses a forged report, and a
replayed or older one (its sequence number is not above the last accepted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import FormatError, SignatureError
from .keys import PrivateKey, PublicKey
from .metadata import Envelope, sign_envelope

MAX_REPORT_BYTES = 4 * 1024 * 1024
ROUTES = ("network", "peer", "usb", "rsync", "mirror")


@dataclass
class Report:
    node_id: str
    seq: int
    sent_at: str
    installed: dict[str, int] = field(default_factory=dict)
    free_disk: int | None = None
    errors: list[str] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    route: str = "network"
    # channel -> when the centre last had fresh signed word of it (freeze visibility)
    fresh: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": "report",
            "node_id": self.node_id,
            "seq": self.seq,
            "sent_at": self.sent_at,
            "installed": self.installed,
            "free_disk": self.free_disk,
            "errors": self.errors[-20:],
            "usage": self.usage,
            "route": self.route,
            "fresh": self.fresh,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        try:
            if d.get("_type") != "report":
                raise ValueError("not a report")
            installed = {str(k): int(v) for k, v in dict(d.get("installed", {})).items()}
            usage = {str(k): int(v) for k, v in dict(d.get("usage", {})).items()}
            route = str(d.get("route", "network"))
            if route not in ROUTES:
                raise ValueError(f"unknown route {route!r}")
            free = d.get("free_disk")
            fresh = {str(k): str(v)[:40] for k, v in dict(d.get("fresh", {})).items()}
            return cls(
                node_id=str(d["node_id"]),
                seq=int(d["seq"]),
                sent_at=str(d["sent_at"]),
                installed=installed,
                free_disk=None if free is None else int(free),
                errors=[str(e) for e in d.get("errors", [])][-20:],
                usage=usage,
                route=route,
                fresh=fresh,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FormatError(f"report: malformed ({exc})") from None

    def sign(self, key: PrivateKey) -> bytes:
        return sign_envelope(self.to_dict(), [key])


def verify_report(data: bytes, public_key: PublicKey, node_id: str) -> Report:
    """Check a report's signature by the centre's key and that it is about that centre."""
    env = Envelope.from_bytes(data, "report", MAX_REPORT_BYTES)
    if env.count_valid({public_key.keyid: public_key}, [public_key.keyid]) < 1:
        raise SignatureError(f"report for centre {node_id}: not signed by that centre's key")
    report = Report.from_dict(env.signed)
    if report.node_id != node_id:
        raise SignatureError(f"report for centre {node_id} is about centre {report.node_id}")
    return report


def report_node_id(data: bytes) -> str:
    """The centre a report claims to come from (before verification, to find its key)."""
    env = Envelope.from_bytes(data, "report", MAX_REPORT_BYTES)
    node = env.signed.get("node_id")
    if not isinstance(node, str):
        raise FormatError("report: no node_id")
    return node
