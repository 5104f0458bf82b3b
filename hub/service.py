"""What the hub does, independent of HTTP: tokens, channels, publishing, centres, reports.

Every method is synchronous and short, or says it is long; the aiohttp layer runs them in a
thread pool. Content goes through ``packs.Repository`` (the static, signed repository);
the database records who did what and the fleet's state.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from packs.errors import StoreError
from packs.repository import Repository
from protocol.errors import CaravaneError, FormatError, SignatureError
from protocol.keys import PublicKey
from protocol.metadata import FileEntry, check_channel
from protocol.paths import check_paths
from protocol.report import Report, report_node_id, verify_report

from .config import HubConfig
from .db import Database
from .errors import Conflict, Forbidden, HubError, NotFound, Unauthorized, Unprocessable
from .models import AuditEntry, Channel, Delivery, Lease, Node, NodeReport, Release, Token, Upload
from .usage import record_usage

ROLES = ("admin", "curator", "field_agent")
MAX_FILES = 1_000_000


def now() -> datetime:
    return datetime.now(UTC)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _aware(when: datetime | None) -> datetime | None:
    if when is not None and when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when


class Principal:
    def __init__(self, name: str, role: str) -> None:
        self.name = name
        self.role = role

    def require(self, *roles: str) -> None:
        """Admins may do everything; other roles only what is listed."""
        if self.role != "admin" and self.role not in roles:
            raise Forbidden(
                f"this needs the role {' or '.join(roles) or 'admin'}; your token is {self.role}"
            )


class Hub:
    def __init__(self, config: HubConfig, db: Database | None = None) -> None:
        self.config = config
        self.repo = Repository(config.repo_dir)
        self.db = db or Database(config.url)
        self._upload_chunks: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------ audit

    def audit(self, s, actor: str, action: str, **detail: Any) -> None:
        s.add(AuditEntry(at=now(), actor=actor, action=action, detail=detail))

    def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.session() as s:
            rows = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
            return [
                {"at": r.at.isoformat(), "actor": r.actor, "action": r.action, "detail": r.detail}
                for r in rows
            ]

    # ------------------------------------------------------------------ tokens

    def create_token(self, name: str, role: str, actor: str = "cli") -> str:
        if role not in ROLES:
            raise HubError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        token = "crv_" + secrets.token_urlsafe(32)
        with self.db.session() as s:
            s.add(Token(name=name, role=role, token_hash=_hash(token), created_at=now()))
            self.audit(s, actor, "token.create", name=name, role=role)
        return token

    def authenticate(self, header: str | None) -> Principal:
        if not header or not header.startswith("Bearer "):
            raise Unauthorized("missing token: send 'Authorization: Bearer <token>'")
        with self.db.session() as s:
            row = s.scalar(select(Token).where(Token.token_hash == _hash(header[7:].strip())))
            if row is None or row.revoked:
                raise Unauthorized("unknown or revoked token")
            return Principal(row.name, row.role)

    # ------------------------------------------------------------------ channels

    def create_channel(self, p: Principal, doc: dict[str, Any]) -> dict[str, Any]:
        p.require("curator")
        cid = check_channel(str(doc.get("id", "")))
        with self.db.session() as s:
            if s.get(Channel, cid) is not None:
                raise Conflict(f"channel {cid!r} exists")
            s.add(
                Channel(
                    id=cid,
                    title=str(doc.get("title", cid))[:200],
                    language=str(doc.get("language", "fr"))[:16],
                    description=str(doc.get("description", "")),
                    keep_last=int(doc.get("keep_last", self.config.keep_last)),
                    created_at=now(),
                )
            )
            self.audit(s, p.name, "channel.create", channel=cid)
        return self.channel(cid)

    def channel(self, cid: str) -> dict[str, Any]:
        with self.db.session() as s:
            c = s.get(Channel, cid)
            if c is None:
                raise NotFound(f"no channel {cid!r}")
            releases = s.scalars(
                select(Release).where(Release.channel_id == cid).order_by(Release.version)
            ).all()
            return {
                "id": c.id,
                "title": c.title,
                "language": c.language,
                "description": c.description,
                "keep_last": c.keep_last,
                "latest": releases[-1].version if releases else None,
                "releases": [
                    {
                        "version": r.version,
                        "notes": r.notes,
                        "published_by": r.published_by,
                        "published_at": r.published_at.isoformat(),
                        "size": r.size,
                        "files": r.files,
                        "retired": r.retired,
                    }
                    for r in releases
                ],
            }

    def channels(self) -> list[dict[str, Any]]:
        with self.db.session() as s:
            ids = s.scalars(select(Channel.id).order_by(Channel.id)).all()
        return [self.channel(c) for c in ids]

    # ------------------------------------------------------------------ publishing

    def start_upload(self, p: Principal, doc: dict[str, Any]) -> dict[str, Any]:
        """Record a release to be: its file list. Answers which objects the hub lacks."""
        p.require("curator")
        cid = check_channel(str(doc.get("channel", "")))
        raw = doc.get("files")
        if not isinstance(raw, list) or len(raw) > MAX_FILES:
            raise Unprocessable("'files' must be a list of file entries")
        try:
            entries = [FileEntry.from_dict(f) for f in raw]
            check_paths(e.path for e in entries)
        except FormatError as exc:
            raise Unprocessable(str(exc)) from None
        with self.db.session() as s:
            if s.get(Channel, cid) is None:
                raise NotFound(f"no channel {cid!r}; create it first")
            uid = uuid.uuid4().hex
            s.add(
                Upload(
                    id=uid,
                    channel_id=cid,
                    created_by=p.name,
                    created_at=now(),
                    notes=str(doc.get("notes", "")),
                    files=[e.to_dict() for e in entries],
                )
            )
        chunks = {h: n for e in entries for h, n in e.chunks}
        self._upload_chunks[uid] = chunks
        return {"upload": uid, "missing": self._missing(chunks)}

    def _missing(self, chunks: dict[str, int]) -> list[str]:
        # freshened: an object the hub says it holds is spared by collection for a while
        return [h for h in chunks if not self.repo.store.freshen(h)]

    def _load_upload(self, uid: str) -> tuple[Upload, dict[str, int]]:
        with self.db.session() as s:
            up = s.get(Upload, uid)
            if up is None:
                raise NotFound(f"no upload {uid!r}")
            s.expunge(up)
        chunks = self._upload_chunks.get(uid)
        if chunks is None:
            chunks = {h: n for f in up.files for h, n in f["chunks"]}
            self._upload_chunks[uid] = chunks
        return up, chunks

    def upload_status(self, p: Principal, uid: str) -> dict[str, Any]:
        p.require("curator")
        up, chunks = self._load_upload(uid)
        return {
            "upload": uid,
            "state": up.state,
            "version": up.version,
            "missing": self._missing(chunks) if up.state == "open" else [],
        }

    def put_object(self, p: Principal, uid: str, sha: str, frame: bytes) -> bool:
        """Store one object of an open upload, verified; True if it was new."""
        p.require("curator")
        up, chunks = self._load_upload(uid)
        if up.state != "open":
            raise Conflict(f"upload {uid} is {up.state}")
        size = chunks.get(sha)
        if size is None:
            raise Unprocessable(f"object {sha[:16]} is not part of upload {uid}")
        try:
            return self.repo.store.put_compressed(sha, frame, size)
        except CaravaneError as exc:
            raise Unprocessable(str(exc)) from None

    def commit_upload(self, p: Principal, uid: str) -> dict[str, Any]:
        """Sign the release (long: runs in a worker thread). Visible only when complete."""
        p.require("curator")
        up, chunks = self._load_upload(uid)
        if up.state == "committed":
            return {"channel": up.channel_id, "version": up.version, "already": True}
        missing = self._missing(chunks)
        if missing:
            raise Conflict(
                f"{len(missing)} objects are still missing; upload them and commit again"
            )
        entries = [FileEntry.from_dict(f) for f in up.files]
        with self.db.session() as s:
            title = s.get(Channel, up.channel_id).title
        try:
            res = self.repo.commit_release(
                up.channel_id,
                entries,
                notes=up.notes,
                title=title,
                expires_days=self.config.expires_days or None,
            )
        except StoreError as exc:  # an object went missing since the check above
            raise Conflict(str(exc)) from None
        with self.db.session() as s:
            s.add(
                Release(
                    channel_id=up.channel_id,
                    version=res.version,
                    notes=up.notes,
                    published_by=p.name,
                    published_at=now(),
                    size=res.total_bytes,
                    files=res.files,
                )
            )
            row = s.get(Upload, uid)
            row.state, row.version = "committed", res.version
            self.audit(s, p.name, "release.publish", channel=up.channel_id, version=res.version)
        self._upload_chunks.pop(uid, None)
        self.apply_retention(up.channel_id)
        return dict(res.to_dict(), already=False)

    def apply_retention(self, cid: str) -> list[int]:
        with self.db.session() as s:
            keep = s.get(Channel, cid).keep_last
        dropped = self.repo.retain(cid, keep)
        if dropped:
            with self.db.session() as s:
                for r in s.scalars(
                    select(Release).where(Release.channel_id == cid, Release.version.in_(dropped))
                ):
                    r.retired = True
                self.audit(s, "hub", "release.retire", channel=cid, versions=dropped)
        return dropped

    # ------------------------------------------------------------------ centres

    def register_node(self, p: Principal, doc: dict[str, Any]) -> dict[str, Any]:
        p.require()
        name = str(doc.get("name", "")).strip()
        if not name:
            raise Unprocessable("a centre needs a name")
        subs = doc.get("channels", [])
        if isinstance(subs, str):
            subs = [c for c in subs.split(",") if c]
        subs = [check_channel(c) for c in subs]
        node_id = uuid.uuid4().hex[:16]
        code = secrets.token_urlsafe(12)
        with self.db.session() as s:
            s.add(
                Node(
                    id=node_id,
                    name=name,
                    region=str(doc.get("region", "")),
                    subscriptions=subs,
                    enrol_code_hash=_hash(code),
                    created_at=now(),
                    installed={},
                    last_seq=0,
                    stale=False,
                )
            )
            self.audit(s, p.name, "node.register", node=node_id, name=name)
        return {
            "format": "caravane-enrolment",
            "hub_url": self.config.base_url,
            "node_id": node_id,
            "name": name,
            "code": code,
            "channels": subs,
            "root": (self.repo.path / "metadata/root.json").read_text(encoding="utf-8"),
        }

    def enrol(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A centre registers the public key it made; the one-time code is then spent."""
        node_id, code = str(doc.get("node_id", "")), str(doc.get("code", ""))
        try:
            pub = PublicKey.from_dict({"keytype": "ed25519", "public": doc.get("public_key")})
        except FormatError as exc:
            raise Unprocessable(str(exc)) from None
        with self.db.session() as s:
            node = s.get(Node, node_id)
            if node is None or node.enrol_code_hash is None:
                raise Forbidden("unknown centre or enrolment code already used")
            if not secrets.compare_digest(node.enrol_code_hash, _hash(code)):
                raise Forbidden("wrong enrolment code")
            node.public_key = pub.raw.hex()
            node.enrol_code_hash = None
            node.enrolled_at = now()
            self.audit(s, f"node:{node_id}", "node.enrol", keyid=pub.keyid)
            return {"node_id": node_id, "channels": node.subscriptions, "name": node.name}

    def accept_report(self, data: bytes, route: str, node_id: str | None = None) -> dict[str, Any]:
        """Verify and store a signed report; refuse forged, replayed and older ones."""
        try:
            claimed = report_node_id(data)
        except FormatError as exc:
            raise Unprocessable(str(exc)) from None
        if node_id is not None and claimed != node_id:
            raise Forbidden(f"report is about centre {claimed}, not {node_id}")
        with self.db.session() as s:
            node = s.get(Node, claimed, with_for_update=True)
            if node is None or not node.public_key:
                raise Forbidden(f"centre {claimed} is not enrolled")
            try:
                report: Report = verify_report(
                    data, PublicKey(bytes.fromhex(node.public_key)), claimed
                )
            except SignatureError as exc:
                raise Forbidden(str(exc)) from None
            except FormatError as exc:
                raise Unprocessable(str(exc)) from None
            if report.seq <= node.last_seq:
                raise Conflict(
                    f"report {report.seq} of centre {claimed} is not newer than "
                    f"{node.last_seq} (replayed)"
                )
            route = route if route != "network" else report.route
            node.last_seq = report.seq
            node.last_contact = now()
            node.last_route = route
            node.installed = report.installed
            node.free_disk = report.free_disk
            node.last_error = report.errors[-1] if report.errors else None
            node.stale = False
            s.add(
                NodeReport(
                    node_id=claimed,
                    seq=report.seq,
                    received_at=now(),
                    route=route,
                    body=report.to_dict(),
                )
            )
            record_usage(s, claimed, node.region, report)  # once per (centre, seq)
            return {
                "accepted": True,
                "seq": report.seq,
                "node_id": claimed,
                "installed": report.installed,
            }

    def record_delivery(self, node_id: str, drive: str, applied: list) -> None:
        with self.db.session() as s:
            s.add(Delivery(node_id=node_id, drive=drive, at=now(), applied=applied))
            self.audit(s, "usb", "usb.delivery", node=node_id, drive=drive)

    def fleet(self, region: str | None = None, behind_only: bool = False) -> list[dict[str, Any]]:
        latest = {}
        for c in self.repo.channels():
            latest[c] = self.repo.channel_meta(c).version
        out = []
        with self.db.session() as s:
            q = select(Node).order_by(Node.region, Node.name)
            if region:
                q = q.where(Node.region == region)
            for n in s.scalars(q):
                behind = {
                    c: latest[c] - int(n.installed.get(c, 0))
                    for c in n.subscriptions
                    if c in latest and int(n.installed.get(c, 0)) < latest[c]
                }
                if behind_only and not behind:
                    continue
                out.append(
                    {
                        "id": n.id,
                        "name": n.name,
                        "region": n.region,
                        "channels": n.subscriptions,
                        "installed": n.installed,
                        "behind": behind,
                        "enrolled": n.public_key is not None,
                        "last_contact": _iso(n.last_contact),
                        "last_route": n.last_route,
                        "free_disk": n.free_disk,
                        "last_error": n.last_error,
                        "stale": n.stale,
                    }
                )
        return out

    def node_ids(self, names: list[str] | None = None, region: str | None = None) -> list[Node]:
        with self.db.session() as s:
            q = select(Node)
            if region:
                q = q.where(Node.region == region)
            rows = list(s.scalars(q))
            for r in rows:
                s.expunge(r)
        if names:
            wanted = set(names)
            rows = [r for r in rows if r.name in wanted or r.id in wanted]
            found = {r.name for r in rows} | {r.id for r in rows}
            unknown = wanted - found
            if unknown:
                raise NotFound(f"unknown centres: {', '.join(sorted(unknown))}")
        return rows

    # ------------------------------------------------------------------ jobs support

    def flag_stale(self, days: int | None = None) -> list[str]:
        limit = now() - timedelta(days=days or self.config.stale_after_days)
        flagged = []
        with self.db.session() as s:
            for n in s.scalars(select(Node).where(Node.public_key.is_not(None))):
                last = _aware(n.last_contact) or _aware(n.enrolled_at)
                if last is not None and last < limit and not n.stale:
                    n.stale = True
                    flagged.append(n.name)
            if flagged:
                self.audit(s, "hub", "node.stale", nodes=flagged)
        return flagged

    def take_lease(self, name: str, holder: str, seconds: int) -> bool:
        """One process among several sharing the database runs the jobs."""
        try:
            with self.db.session() as s:
                lease = s.get(Lease, name, with_for_update=True)
                t = now()
                if lease is None:
                    s.add(
                        Lease(name=name, holder=holder, expires_at=t + timedelta(seconds=seconds))
                    )
                    return True
                if lease.holder == holder or _aware(lease.expires_at) < t:
                    lease.holder = holder
                    lease.expires_at = t + timedelta(seconds=seconds)
                    return True
                return False
        except IntegrityError:  # another process created the lease at the same instant
            return False

    def counts(self) -> dict[str, int]:
        with self.db.session() as s:
            return {
                "channels": s.scalar(select(func.count()).select_from(Channel)) or 0,
                "nodes": s.scalar(select(func.count()).select_from(Node)) or 0,
                "reports": s.scalar(select(func.count()).select_from(NodeReport)) or 0,
            }


def _iso(when: datetime | None) -> str | None:
    when = _aware(when)
    return when.isoformat() if when else None
