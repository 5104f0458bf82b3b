"""A centre's signed report: what it holds and how it is doing, for the hub's fleet view.

Reports travel by any route (HTTP, a drive carried back, a peer), so they are signed by the
centre's own key (made at enrolment) and numbered: the hub refuses a forged report and
stores each (centre, seq) once, in whatever order the routes bring them; the centre's current
state is the report with the highest seq.

The hub answers a drive's reports with an acknowledgement (``make_ack``) signed by its release
key, which the centre checks against its pinned root before it marks those reports delivered:
a forged acknowledgement could otherwise make a centre stop re-sending reports the hub never
got.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import FormatError, SignatureError
from .keys import PrivateKey, PublicKey
from .metadata import Envelope, Root, sign_envelope

MAX_REPORT_BYTES = 4 * 1024 * 1024
ROUTES = ("network", "peer", "usb", "rsync", "mirror")
MAX_ACK_BYTES = 1024 * 1024


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


def report_ids(data: bytes) -> tuple[str, int]:
    """The (centre, seq) a report claims (unverified: to name files, dedup and find keys)."""
    env = Envelope.from_bytes(data, "report", MAX_REPORT_BYTES)
    node, seq = env.signed.get("node_id"), env.signed.get("seq")
    if not isinstance(node, str) or not isinstance(seq, int) or isinstance(seq, bool):
        raise FormatError("report: no node_id or seq")
    return node, seq


def make_ack(node_id: str, seqs: list[int], at: str, key: PrivateKey) -> bytes:
    """The hub's signed word that it holds these reports of a centre (written onto a drive)."""
    doc = {"_type": "report-ack", "node_id": node_id, "seqs": sorted(set(seqs)), "at": at}
    return sign_envelope(doc, [key])


def verify_ack(data: bytes, root: Root, node_id: str) -> list[int]:
    """The seqs a hub acknowledgement marks delivered for ``node_id``.

    Refused unless signed by the release role of the centre's pinned root and about that
    centre; the caller only ever marks reports delivered with it (never deletes one).
    """
    env = Envelope.from_bytes(data, "report acknowledgement", MAX_ACK_BYTES)
    if not root.satisfied(env, "release"):
        raise SignatureError(
            "report acknowledgement: not signed by the hub's release key; the reports stay "
            "queued and go out again with the next drive"
        )
    doc = env.signed
    if doc.get("_type") != "report-ack" or doc.get("node_id") != node_id:
        raise FormatError(f"report acknowledgement: not about centre {node_id}")
    seqs = doc.get("seqs")
    if not isinstance(seqs, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in seqs
    ):
        raise FormatError("report acknowledgement: malformed seqs")
    return [int(x) for x in seqs]
