"""What the hub does, independent of HTTP: tokens, channels, publishing, centres, reports.

Every method is synchronous and short, or says it is long; the aiohttp layer runs them in a
thread pool. Content goes through ``HubRepository`` (the static, signed repository);
the database records who did what and the fleet's state.
"""

from __future__ import annotations

import logging
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Row,
    String,
    bindparam,
    delete,
    func,
    insert,
    inspect,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from caravane.packs.errors import MissingObjects, StoreError
from caravane.packs.hub_repository import HubRepository
from caravane.packs.idset import IdSet
from caravane.packs.repository import PublishResult
from caravane.protocol.errors import CaravaneError, FormatError, SignatureError
from caravane.protocol.keys import PublicKey
from caravane.protocol.metadata import HEX64, FileEntry, check_channel
from caravane.protocol.paths import check_paths
from caravane.protocol.report import Report, report_node_id, verify_report
from caravane.protocol.tree import MAX_FILES as MAX_TREE_FILES
from caravane.protocol.tree import MAX_LEVELS, PieceRef, root_ref

from .auth import ROLES, Principal, hash_secret
from .config import HubConfig
from .db import Database, insert_or_ignore, values_by_key
from .errors import Conflict, Forbidden, Gone, HubError, NotFound, Unauthorized, Unprocessable
from .locks import REPOSITORY, advisory_lock, is_postgresql
from .models import (
    AuditEntry,
    Centre,
    CentreReport,
    Channel,
    Delivery,
    Lease,
    Release,
    Token,
    Upload,
    UploadObject,
)
from .usage import record_usage

__all__ = ["ROLES", "Hub", "Principal", "now"]  # Principal and ROLES: from hub.auth

log = logging.getLogger("caravane.hub.service")

MAX_FILES = 1_000_000  # a file list sent whole (set_files); a tree takes MAX_TREE_FILES
MAX_DECLARED = 100_000  # chunks declared in one request
CHECK_DECLARED = 20_000  # open uploads' declared objects read per batch (for collection)
MAX_CHUNK = 64 * 1024 * 1024
#: an upload whose chunks are being declared and sent, its file list still to come
RECEIVING = "receiving"
#: the states of an upload that can still receive objects and be committed
STILL_OPEN = ("open", RECEIVING)
#: an upload idle for ``upload_expiry_days``: refused with 410, its objects not kept for it
EXPIRED = "expired"
#: an upload's last activity is written at most this often: expiry counts in days, and a
#: publish sending thousands of batches should not rewrite its upload's row for each one
ACTIVE_EVERY = timedelta(minutes=1)
#: the fleet view flags a centre whose last fresh signed word is older than this (a freeze)
FREEZE_WARNING_DAYS = 14


def now() -> datetime:
    return datetime.now(UTC)


def _aware(when: datetime | None) -> datetime | None:
    if when is not None and when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when


class Hub:
    def __init__(self, config: HubConfig, db: Database | None = None) -> None:
        self.config = config
        self.repo = HubRepository(config.repo_dir)
        self.db = db or Database(config.url)
        if is_postgresql(self.db.engine):
            # hub processes on other hosts share this repository: the folder's flock is not
            # enough there, the database's advisory lock is
            engine = self.db.engine
            self.repo.shared_lock = lambda: advisory_lock(engine, REPOSITORY)
        #: told the channel of each release this process signs (hub/metrics.py counts them)
        self.on_publish: Callable[[str], None] | None = None
        #: files of releases signed through the API whose similarity sketches are not yet
        #: indexed (the latest per channel): :meth:`sketch_pending`, after the answer
        #: per channel, what indexes the sketches of the release last signed through the API
        #: (the files of a listed upload, or the commit's own feeding for a tree upload)
        self._unsketched: dict[str, Callable[[], int]] = {}
        self._unsketched_lock = threading.Lock()

    # ------------------------------------------------------------------ audit

    def audit(self, s: Session, actor: str, action: str, **detail: Any) -> None:
        """Add an audit entry in the caller's transaction (it lands only if the change does)."""
        s.add(AuditEntry(at=now(), actor=actor, action=action, detail=detail))

    def record(self, actor: str, action: str, **detail: Any) -> None:
        """An audit entry on its own (for work done outside the database, e.g. a drive)."""
        with self.db.session() as s:
            self.audit(s, actor, action, **detail)

    def close(self) -> None:
        """Release the database connections (the service stops)."""
        self.db.dispose()

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
            s.add(Token(name=name, role=role, token_hash=hash_secret(token), created_at=now()))
            self.audit(s, actor, "token.create", name=name, role=role)
        return token

    def list_tokens(self) -> list[dict[str, Any]]:
        """Every token ever made, oldest first: who, which role, when, revoked or not.

        The secret is never stored (only its hash), so it cannot be shown; neither is the hash.
        """
        with self.db.session() as s:
            return [
                {
                    "id": t.id,
                    "name": t.name,
                    "role": t.role,
                    "created": _iso(t.created_at),
                    "revoked": bool(t.revoked),
                }
                for t in s.scalars(select(Token).order_by(Token.id))
            ]

    def revoke_token(self, which: str, actor: str = "cli", every: bool = False) -> list[int]:
        """Revoke the token with id ``which``, or the one still active named ``which``.

        A name held by several active tokens is refused unless ``every``: revoking the wrong
        person's access is worse than asking for the id. Sessions on the pages end at once
        (they re-read the token on every page). Returns the ids revoked.
        """
        with self.db.session() as s:
            rows: list[Token] = []
            if which.isdigit():
                row = s.get(Token, int(which))
                rows = [row] if row is not None else []
            if not rows:
                rows = list(s.scalars(select(Token).where(Token.name == which).order_by(Token.id)))
            if not rows:
                raise NotFound(f"no token with id or name {which!r}; see `caravane hub token list`")
            active = [t for t in rows if not t.revoked]
            if not active:
                raise Conflict(f"token {which!r} is already revoked")
            if len(active) > 1 and not every:
                ids = ", ".join(str(t.id) for t in active)
                raise Conflict(
                    f"{len(active)} active tokens are named {which!r} (ids {ids}): revoke one "
                    "by its id, or all of them with --all"
                )
            for t in active:
                t.revoked = True
            ids_revoked = [t.id for t in active]
            self.audit(s, actor, "token.revoke", ids=ids_revoked, name=active[0].name)
        return ids_revoked

    def authenticate(self, header: str | None) -> Principal:
        """The holder of the ``Authorization: Bearer`` token, or Unauthorized."""
        if not header or not header.startswith("Bearer "):
            raise Unauthorized("missing token: send 'Authorization: Bearer <token>'")
        p = self.principal_for_token_hash(hash_secret(header[7:].strip()))
        if p is None:
            raise Unauthorized("unknown or revoked token")
        return p

    def principal_for_token_hash(self, token_hash: str) -> Principal | None:
        """Who holds the token with this hash now; None once it is revoked or unknown.

        Web sessions keep only the hash and ask again on every page, so revoking a token
        ends its sessions at once.
        """
        with self.db.session() as s:
            row = s.scalar(select(Token).where(Token.token_hash == token_hash))
            if row is None or row.revoked:
                return None
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

    @staticmethod
    def _channel_row(s: Session, cid: str) -> Channel:
        c = s.get(Channel, cid)
        if c is None:
            raise NotFound(f"no channel {cid!r}")
        return c

    def channel_titles(self) -> dict[str, str]:
        """Every channel's title by id (one query): pages name channels, not ids."""
        with self.db.session() as s:
            return {
                cid: title or cid for cid, title in s.execute(select(Channel.id, Channel.title))
            }

    def channels(self) -> list[dict[str, Any]]:
        with self.db.session() as s:
            ids = s.scalars(select(Channel.id).order_by(Channel.id)).all()
        return [self.channel(c) for c in ids]

    # ------------------------------------------------------------------ publishing

    def start_upload(self, p: Principal, doc: dict[str, Any]) -> dict[str, Any]:
        """Record a release to be: its file list. Answers which objects the hub lacks.

        ``{"stream": true}`` without ``files`` opens a *receiving* upload instead: the
        client declares chunks as it makes them (:meth:`declare_chunks`), uploads the ones
        the hub lacks while it is still reading the folder, and sends the file list last
        (:meth:`set_files`), so a curator's upload overlaps its local work.
        """
        p.require("curator")
        cid = check_channel(str(doc.get("channel", "")))
        raw = doc.get("files")
        streaming = raw is None and doc.get("stream") is True
        if streaming:
            raw = []
        entries = _file_entries(raw)
        chunks = {h: n for e in entries for h, n in e.chunks}
        with self.db.session() as s:
            if s.get(Channel, cid) is None:
                raise NotFound(f"no channel {cid!r}; create it first")
            uid = uuid.uuid4().hex
            t = now()
            s.add(
                Upload(
                    id=uid,
                    channel_id=cid,
                    created_by=p.name,
                    created_at=t,
                    active_at=t,
                    notes=str(doc.get("notes", "")),
                    files=[e.to_dict() for e in entries],
                    state=RECEIVING if streaming else "open",
                )
            )
            s.flush()
            if chunks:
                s.execute(
                    insert(UploadObject),
                    [{"upload_id": uid, "sha": h, "size": n} for h, n in chunks.items()],
                )
        out: dict[str, Any] = {"upload": uid, "missing": self._missing(chunks)}
        if streaming:
            # this hub takes the file list as manifest pieces (set_tree): a client that asks
            # for it (``"tree": true``) and sees this sends no list at all; the root of the
            # latest release tells it whether the pieces it last sent are still the hub's
            out["tree"] = True
            out["latest_root"] = self._latest_root(cid)
        return out

    def _latest_root(self, cid: str) -> str | None:
        """The SHA-256 of the root piece of the channel's latest release (None: none, or a
        format 1 release)."""
        snap = self.repo.snapshot()
        meta = snap.channel_or_none(cid)
        if meta is None:
            return None
        doc = snap.release(cid, meta.version).doc
        return doc.root.sha256 if doc is not None and doc.root is not None else None

    def declare_chunks(self, p: Principal, uid: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Chunks a receiving (or open) upload will need (``[[sha, size], ...]``); which
        the hub lacks."""
        p.require("curator")
        raw = doc.get("chunks")
        if not isinstance(raw, list) or len(raw) > MAX_DECLARED:
            raise Unprocessable(f"'chunks' must be a list of at most {MAX_DECLARED} [sha, size]")
        chunks: dict[str, int] = {}
        for item in raw:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not isinstance(item[0], str)
                or not HEX64.match(item[0])
                or not isinstance(item[1], int)
                or isinstance(item[1], bool)
                or not 0 <= item[1] <= MAX_CHUNK
            ):
                raise Unprocessable("each chunk must be [sha256 hex, size in bytes]")
            chunks[item[0]] = item[1]
        with self.db.session() as s:
            # open too: a client re-sending objects the commit named missing declares them
            head = self._activity(s, uid, STILL_OPEN)
            if head.state not in STILL_OPEN:
                raise Conflict(f"upload {uid} is {head.state}, not receiving chunks")
            if chunks:
                self._declare(s, uid, chunks)
        return {"upload": uid, "missing": self._missing(chunks)}

    def _declare(self, s: Session, uid: str, chunks: dict[str, int]) -> None:
        """Record the upload's objects. Those declared before (a resumed upload, a second
        pass) are kept as they are: one INSERT, no lookup first (looking them up was most
        of a declaration's time on PostgreSQL).

        On PostgreSQL the keys and sizes go as two arrays in one statement: rows of
        parameters (at most 1,000 a statement) cost the server a third more and the hub
        three times as much per object. Elsewhere, into the table itself: the ORM's bulk
        insert cost a third more per row.
        """
        if is_postgresql(self.db.engine):
            given = (
                func.unnest(
                    bindparam("shas", list(chunks), type_=ARRAY(String)),
                    bindparam("sizes", list(chunks.values()), type_=ARRAY(BigInteger)),
                )
                .table_valued("sha", "size")
                .render_derived()
            )
            stmt = insert_or_ignore(s, UploadObject.__table__).from_select(
                ["upload_id", "sha", "size"], select(literal(uid), given.c.sha, given.c.size)
            )
            s.execute(stmt.on_conflict_do_nothing(index_elements=["upload_id", "sha"]))
            return
        s.execute(
            insert_or_ignore(s, UploadObject.__table__).on_conflict_do_nothing(
                index_elements=["upload_id", "sha"]
            ),
            [{"upload_id": uid, "sha": h, "size": n} for h, n in chunks.items()],
        )

    def declare_stored(self, p: Principal, uid: str, chunks: dict[str, int]) -> None:
        """Record objects this hub just stored as a receiving upload's (the web page's
        publish, which writes into the store itself): collection keeps them while the
        upload is open, as it keeps a client's declared chunks. Nothing is asked back."""
        p.require("curator")
        if not chunks:
            return
        with self.db.session() as s:
            head = self._activity(s, uid, STILL_OPEN)
            if head.state not in STILL_OPEN:
                raise Conflict(f"upload {uid} is {head.state}, not receiving chunks")
            self._declare(s, uid, chunks)

    def set_files(self, p: Principal, uid: str, doc: dict[str, Any]) -> dict[str, Any]:
        """The file list of a receiving upload, every chunk of it declared before; the upload
        is then open as any other (objects still missing are named, commit follows).

        With ``"commit": true`` and no object missing, the release is signed at once and
        the answer is :meth:`commit_upload`'s under ``"committed"``: the end of a publish
        is then one request, and the file list is parsed and checked once, not twice.
        """
        p.require("curator")
        raw = doc.get("files")
        entries = _file_entries(raw)
        chunks = {h: n for e in entries for h, n in e.chunks}
        with self.db.session() as s:
            up = self._receiving(s, uid)
            declared: dict[str, int] = {
                sha: size
                for sha, size in s.execute(
                    select(UploadObject.sha, UploadObject.size).where(UploadObject.upload_id == uid)
                )
            }
            wrong = [h for h, n in chunks.items() if declared.get(h) != n]
            if wrong:
                raise Unprocessable(
                    f"object {wrong[0][:16]} of the file list was not declared with that size"
                )
            up.files = [e.to_dict() for e in entries]
            up.state = "open"
            up.active_at = now()
            channel, notes = up.channel_id, up.notes
        # every chunk was declared (freshened then, kept since as an open upload's object):
        # presence is enough here, without rewriting thousands of index rows
        missing = self._missing(chunks, freshen=False)
        out: dict[str, Any] = {"upload": uid, "missing": missing}
        if doc.get("commit") is True and not missing:
            out["committed"] = self._commit(p, uid, channel, notes, entries)
        return out

    def set_tree(self, p: Principal, uid: str, doc: dict[str, Any]) -> dict[str, Any]:
        """The file list of a receiving upload as manifest pieces the client uploaded like
        chunks (declared, then sent when missing): ``{"tree": {"sha256", "length",
        "level"} | null, "files": N, "size": BYTES}``, the root and the counts a signed
        document would carry. The upload is then open; with ``"commit": true`` the release
        is signed at once when nothing is missing (answered under ``"committed"``), and
        otherwise the answer names the objects still to send (``"missing"``).

        The request is a few hundred bytes whatever the size of the release, and the hub
        checks the pieces from its store (:meth:`HubRepository.commit_uploaded_tree`); a
        list sent whole (:meth:`set_files`) passed the JSON limit near 35,000 files.
        """
        p.require("curator")
        root, files, size = _tree_ref(doc)
        with self.db.session() as s:
            up = self._receiving(s, uid)
            up.tree = tree_ref = {"tree": root_ref(root), "files": files, "size": size}
            up.state = "open"
            up.active_at = now()
            channel, notes = up.channel_id, up.notes
        out: dict[str, Any] = {"upload": uid, "missing": []}
        if doc.get("commit") is True:
            try:
                out["committed"] = self._commit_tree_upload(p, uid, channel, notes, tree_ref)
            except MissingObjects as exc:
                out["missing"] = exc.missing
        return out

    def _receiving(self, s: Session, uid: str) -> Upload:
        """A receiving upload about to take its file list, its row locked (PostgreSQL: the
        expiry job cannot expire it while the list lands)."""
        up = s.get(Upload, uid, with_for_update=True)
        if up is None:
            raise NotFound(f"no upload {uid!r}")
        if up.state == EXPIRED:
            raise self._gone(uid, up.active_at, up.expired_at)
        if up.state != RECEIVING:
            raise Conflict(f"upload {uid} is {up.state}; its file list is already known")
        return up

    def _missing(self, chunks: Iterable[str], freshen: bool = True) -> list[str]:
        """Which of these objects the hub lacks.

        Freshened by default: an object the hub says it holds is spared by collection for a
        while (``freshen=False`` for objects an open upload already declared, which
        collection keeps anyway).
        """
        chunks = list(chunks)
        store = self.repo.store
        present = store.freshen_many(chunks) if freshen else store.present(chunks)
        return [h for h in chunks if h not in present]

    def _upload_objects(self, uid: str) -> list[str]:
        with self.db.session() as s:
            return list(s.scalars(select(UploadObject.sha).where(UploadObject.upload_id == uid)))

    def open_upload_objects(self) -> IdSet:
        """Objects of every upload still open: collection keeps them (asked under its lock).

        Read in batches into an :class:`IdSet` (8 bytes an id): a curator's million-file
        upload declares a million chunks, which a set of strings held at 120 MB. An id
        taken for another (one chance in 2^64) only keeps an object one collection longer.
        """
        keep = IdSet()
        with self.db.session() as s:
            rows = s.scalars(
                select(UploadObject.sha)
                .join(Upload, Upload.id == UploadObject.upload_id)
                .where(Upload.state.in_(STILL_OPEN))
                .execution_options(yield_per=CHECK_DECLARED)
            )
            for batch in rows.partitions(CHECK_DECLARED):
                keep.update(batch)
        return keep

    def _upload_head(self, uid: str) -> tuple[str, str, int | None]:
        """(channel, state, version) of an upload, without its file list."""
        with self.db.session() as s:
            row = s.execute(
                select(Upload.channel_id, Upload.state, Upload.version).where(Upload.id == uid)
            ).first()
        if row is None:
            raise NotFound(f"no upload {uid!r}")
        return row[0], row[1], row[2]

    def _received(self, uid: str, state: str, active_at: datetime | None) -> None:
        """An upload about to store objects: refused unless still open, its activity
        recorded first (at most every ACTIVE_EVERY), so expiry never takes an upload
        between the check and the store."""
        if state == EXPIRED:
            with self.db.session() as s:
                raise self._expired(s, uid)
        if state not in STILL_OPEN:
            raise Conflict(f"upload {uid} is {state}")
        last = _aware(active_at)
        if last is None or now() - last >= ACTIVE_EVERY:
            with self.db.session() as s:
                self._activity(s, uid, STILL_OPEN, force=True)

    def _activity(
        self, s: Session, uid: str, states: tuple[str, ...], force: bool = False
    ) -> Row[str, datetime, datetime | None]:
        """The upload's (state, active_at, expired_at), its activity set to now if it is in
        one of ``states`` (and ``force``, or last written ACTIVE_EVERY ago).

        One conditional UPDATE, which on PostgreSQL also locks the row until the caller's
        transaction ends: the expiry job's own conditional UPDATE then finds it active.
        Raises NotFound, or Gone for an upload that expired.
        """
        head = s.execute(
            select(Upload.state, Upload.active_at, Upload.expired_at).where(Upload.id == uid)
        ).first()
        if head is None:
            raise NotFound(f"no upload {uid!r}")
        last = _aware(head.active_at)
        if head.state in states and (force or last is None or now() - last >= ACTIVE_EVERY):
            done = s.execute(
                update(Upload)
                .where(Upload.id == uid, Upload.state.in_(states))
                .values(active_at=now())
                .execution_options(synchronize_session=False)
            )
            if not done.rowcount:  # type: ignore[attr-defined]  # expired meanwhile
                raise self._expired(s, uid)
        elif head.state == EXPIRED:
            raise self._gone(uid, head.active_at, head.expired_at)
        return head

    def _expired(self, s: Session, uid: str) -> HubError:
        """The error for a request on an upload that is no longer open (read again)."""
        head = s.execute(
            select(Upload.state, Upload.active_at, Upload.expired_at).where(Upload.id == uid)
        ).first()
        if head is None:
            return NotFound(f"no upload {uid!r}")
        if head.state != EXPIRED:
            return Conflict(f"upload {uid} is {head.state}")
        return self._gone(uid, head.active_at, head.expired_at)

    def _gone(self, uid: str, active_at: datetime | None, expired_at: datetime | None) -> Gone:
        """What a curator's client is told about an expired upload: why, and what to do."""
        active, expired = _aware(active_at), _aware(expired_at)
        if active is not None and expired is not None:
            days = (expired - active).days
        else:
            days = self.config.upload_expiry_days
        return Gone(
            f"upload {uid} expired after {days} days without activity; publish again "
            "(a new publish sends what the hub no longer holds)"
        )

    def upload_status(self, p: Principal, uid: str) -> dict[str, Any]:
        p.require("curator")
        _, state, version = self._upload_head(uid)
        if state == EXPIRED:
            with self.db.session() as s:
                raise self._expired(s, uid)
        return {
            "upload": uid,
            "state": state,
            "version": version,
            "missing": self._missing(self._upload_objects(uid)) if state in STILL_OPEN else [],
        }

    def put_object(self, p: Principal, uid: str, sha: str, frame: bytes) -> bool:
        """Store one object of an open upload, verified; True if it was new.

        One indexed lookup (the upload's state and this object's size), whatever the size
        of the release: the per-object cost of a publish stays flat.
        """
        p.require("curator")
        with self.db.session() as s:
            row = s.execute(
                select(Upload.state, Upload.active_at, UploadObject.size)
                .select_from(Upload)
                .outerjoin(
                    UploadObject, (UploadObject.upload_id == Upload.id) & (UploadObject.sha == sha)
                )
                .where(Upload.id == uid)
            ).first()
        if row is None:
            raise NotFound(f"no upload {uid!r}")
        state, active_at, size = row
        self._received(uid, state, active_at)
        if size is None:
            raise Unprocessable(f"object {sha[:16]} is not part of upload {uid}")
        try:
            return self.repo.store.put_compressed(sha, frame, size)
        except CaravaneError as exc:
            raise Unprocessable(str(exc)) from None

    def put_objects(
        self, p: Principal, uid: str, records: list[tuple[str, bytes | memoryview]]
    ) -> int:
        """Store many objects of an open upload (one batch), each verified; how many were new.

        Two indexed queries for the whole batch. Every object must belong to the upload
        (checked before any is stored); each is verified against its hash on its own, so a
        bad one refuses the batch from that object on and the good ones before it stay.
        """
        p.require("curator")
        shas = [sha for sha, _ in records]
        with self.db.session() as s:
            head = s.execute(select(Upload.state, Upload.active_at).where(Upload.id == uid)).first()
            sizes = self._declared_sizes(s, uid, shas)
        if head is None:
            raise NotFound(f"no upload {uid!r}")
        self._received(uid, head.state, head.active_at)
        stray = [sha for sha in shas if sha not in sizes]
        if stray:
            raise Unprocessable(f"object {stray[0][:16]} is not part of upload {uid}")
        try:
            # one append and one index commit for the batch
            return self.repo.store.put_compressed_many(
                (sha, frame, sizes[sha]) for sha, frame in records
            )
        except CaravaneError as exc:
            raise Unprocessable(str(exc)) from None

    def _declared_sizes(self, s: Session, uid: str, shas: list[str]) -> dict[str, int]:
        """The declared sizes of those of ``shas`` the upload declared (on PostgreSQL
        whatever the table's statistics say: :func:`values_by_key`)."""
        return dict(
            values_by_key(
                s, UploadObject.sha, shas, UploadObject.size, UploadObject.upload_id == uid
            )
        )

    def abandon_upload(self, p: Principal, uid: str) -> None:
        """Drop an open upload (the curator decided not to publish it): collection may then
        take its objects once no release uses them. A committed upload stays as it is."""
        p.require("curator")
        with self.db.session() as s:
            up = s.get(Upload, uid)
            if up is None:
                raise NotFound(f"no upload {uid!r}")
            if up.state == "open":
                up.state = "abandoned"
                self.audit(s, p.name, "upload.abandon", channel=up.channel_id, upload=uid)

    def expire_uploads(self, days: int | None = None) -> list[dict[str, Any]]:
        """Expire every upload still open that received nothing for ``days``
        (``upload_expiry_days``; 0: none expires). Returns what was expired.

        Each one is marked ``expired``, its object rows are deleted (so collection keeps
        its objects no longer, and takes those nothing else uses) and its file list is
        dropped; the row stays, so the curator's client is told why (410) instead of
        "no such upload". One conditional UPDATE each: an upload that received something
        meanwhile, or that another hub process expired first, is left alone, so any
        number of processes may run this at once and each upload expires, and is
        audited, once.
        """
        days = self.config.upload_expiry_days if days is None else days
        if days <= 0:
            return []
        t = now()
        cutoff = t - timedelta(days=days)
        with self.db.session() as s:
            idle = list(
                s.scalars(
                    select(Upload.id)
                    .where(Upload.state.in_(STILL_OPEN), Upload.active_at < cutoff)
                    .order_by(Upload.active_at)
                )
            )
        out: list[dict[str, Any]] = []
        for uid in idle:
            with self.db.session() as s:
                done = s.execute(
                    update(Upload)
                    .where(
                        Upload.id == uid,
                        Upload.state.in_(STILL_OPEN),
                        Upload.active_at < cutoff,
                    )
                    .values(state=EXPIRED, expired_at=t, files=[])
                    .execution_options(synchronize_session=False)
                )
                if not done.rowcount:  # type: ignore[attr-defined]
                    continue  # resumed, committed or expired elsewhere since the query
                row = s.execute(
                    select(
                        Upload.channel_id, Upload.created_by, Upload.created_at, Upload.active_at
                    ).where(Upload.id == uid)
                ).one()
                dropped = s.execute(delete(UploadObject).where(UploadObject.upload_id == uid))
                active = _aware(row.active_at) or t
                item = {
                    "upload": uid,
                    "channel": row.channel_id,
                    "by": row.created_by,
                    "created": _iso(row.created_at),
                    "active": _iso(active),
                    "idle_days": (t - active).days,
                    "objects": int(dropped.rowcount or 0),  # type: ignore[attr-defined]
                }
                self.audit(s, "hub", "upload.expire", **item)
            out.append(item)
        return out

    def open_uploads(self) -> list[dict[str, Any]]:
        """Every upload still open, least recently active first: who opened it, when, its
        last activity, how many objects it keeps from collection, when it will expire."""
        days = self.config.upload_expiry_days
        t = now()
        with self.db.session() as s:
            counts: dict[str, int] = {
                uid: int(n)
                for uid, n in s.execute(
                    select(UploadObject.upload_id, func.count())
                    .join(Upload, Upload.id == UploadObject.upload_id)
                    .where(Upload.state.in_(STILL_OPEN))
                    .group_by(UploadObject.upload_id)
                )
            }
            rows = s.execute(
                select(
                    Upload.id,
                    Upload.channel_id,
                    Upload.state,
                    Upload.created_by,
                    Upload.created_at,
                    Upload.active_at,
                )
                .where(Upload.state.in_(STILL_OPEN))
                .order_by(Upload.active_at, Upload.id)
            ).all()
        out = []
        for r in rows:
            created, active = _aware(r.created_at) or t, _aware(r.active_at) or t
            out.append(
                {
                    "upload": r.id,
                    "channel": r.channel_id,
                    "state": r.state,
                    "by": r.created_by,
                    "created": _iso(created),
                    "active": _iso(active),
                    "age_seconds": int((t - created).total_seconds()),
                    "idle_seconds": int((t - active).total_seconds()),
                    "objects": counts.get(r.id, 0),
                    "expires": _iso(active + timedelta(days=days)) if days else None,
                }
            )
        return out

    def commit_upload(self, p: Principal, uid: str) -> dict[str, Any]:
        """Sign the release (long: runs in a worker thread). Visible only when complete."""
        p.require("curator")
        with self.db.session() as s:
            up = s.get(Upload, uid)
            if up is None:
                raise NotFound(f"no upload {uid!r}")
            s.expunge(up)
        if up.state == "committed":
            return {"channel": up.channel_id, "version": up.version, "already": True}
        if up.state == EXPIRED:
            raise self._gone(uid, up.active_at, up.expired_at)
        if up.state == RECEIVING:
            raise Conflict(f"upload {uid} has no file list yet; send it (PUT .../files) first")
        with self.db.session() as s:
            # active now: the expiry job cannot take it while it is being signed
            self._activity(s, uid, ("open",), force=True)
        if up.tree is not None:
            try:
                return self._commit_tree_upload(p, uid, up.channel_id, up.notes, up.tree)
            except MissingObjects as exc:
                raise Conflict(
                    f"{len(exc.missing)} objects are still missing (first "
                    f"{exc.missing[0][:16]}); upload them and commit again",
                    missing=exc.missing,
                ) from None
        missing = self._missing(self._upload_objects(uid), freshen=False)
        if missing:
            raise Conflict(
                f"{len(missing)} objects are still missing; upload them and commit again"
            )
        entries = [FileEntry.from_dict(f) for f in up.files]
        return self._commit(p, uid, up.channel_id, up.notes, entries)

    def _commit(
        self, p: Principal, uid: str, channel: str, notes: str, entries: list[FileEntry]
    ) -> dict[str, Any]:
        """Sign an open upload's release (every object checked present under the lock)."""
        with self.db.session() as s:
            title = self._channel_row(s, channel).title
        try:
            res = self.repo.commit_release(
                channel,
                entries,
                notes=notes,
                title=title,
                expires_days=self.config.expires_days or None,
                # the similarity index is a cache for later pack builds: reading the release
                # back to sketch it was most of the curator's wait for this answer, so it is
                # done after it, by the pack worker (sketch_pending)
                sketch=False,
            )
        except StoreError as exc:  # an object went missing since the check above
            raise Conflict(str(exc)) from None
        return self._committed(
            p, uid, channel, notes, res, lambda: self.repo.index_sketches(entries)
        )

    def _commit_tree_upload(
        self, p: Principal, uid: str, channel: str, notes: str, ref: dict[str, Any]
    ) -> dict[str, Any]:
        """Sign an upload whose file list came as pieces (checked by the repository first:
        a first tree whole, an update by its diff). :class:`MissingObjects` names what the
        client must still send."""
        root, files, size = _tree_ref(ref)
        with self.db.session() as s:
            title = self._channel_row(s, channel).title
        try:
            res, feed = self.repo.commit_uploaded_tree(
                channel,
                root,
                files,
                size,
                notes=notes,
                title=title,
                expires_days=self.config.expires_days or None,
            )
        except MissingObjects:
            raise
        except StoreError as exc:
            raise Conflict(str(exc)) from None
        except CaravaneError as exc:  # a piece, entry, path or count the checks refuse
            raise Unprocessable(f"the uploaded file list is refused: {exc}") from None
        return self._committed(p, uid, channel, notes, res, feed)

    def _committed(
        self,
        p: Principal,
        uid: str,
        channel: str,
        notes: str,
        res: PublishResult,
        unsketched: Callable[[], int],
    ) -> dict[str, Any]:
        """Record a release just signed from an upload; its sketches follow the answer
        (``unsketched`` indexes them, and says how many files it sketched)."""
        with self._unsketched_lock:
            self._unsketched[channel] = unsketched
        with self.db.session() as s:
            s.add(
                Release(
                    channel_id=channel,
                    version=res.version,
                    notes=notes,
                    published_by=p.name,
                    published_at=now(),
                    size=res.total_bytes,
                    files=res.files,
                )
            )
            row = s.get(Upload, uid)
            if row is None:  # deleted while signing: the release stands, say so in the log
                raise NotFound(f"upload {uid} vanished while it was being committed")
            row.state, row.version = "committed", res.version
            self.audit(s, p.name, "release.publish", channel=channel, version=res.version)
        self.apply_retention(channel)
        if self.on_publish is not None:
            self.on_publish(channel)
        return dict(res.to_dict(), already=False)

    def sketch_pending(self, channel: str) -> int:
        """Index the sketches of the release last signed in ``channel`` through the API
        (:meth:`_commit` leaves them for after its answer); returns how many files were
        sketched. Run by the pack worker before it builds the release's packs; if the hub
        stops first, the next pack build from that release sketches what it lacks."""
        with self._unsketched_lock:
            pending = self._unsketched.pop(channel, None)
        return 0 if pending is None else pending()

    def held_versions(self, cid: str) -> set[int]:
        """Releases of ``cid`` that centres heard from within ``hold_days`` have installed.

        The hub keeps them, and packs from them to the latest, so a centre months behind
        still gets one direct pack instead of a chain or a whole copy.
        """
        cutoff = now() - timedelta(days=self.config.hold_days)
        held: set[int] = set()
        with self.db.session() as s:
            for installed, contact in s.execute(select(Centre.installed, Centre.last_contact)):
                version = (installed or {}).get(cid)
                when = _aware(contact)
                if isinstance(version, int) and version > 0 and when and when >= cutoff:
                    held.add(version)
        return held

    def apply_retention(self, cid: str) -> list[int]:
        with self.db.session() as s:
            keep = self._channel_row(s, cid).keep_last
        dropped = self.repo.retain(cid, keep, also_keep=self.held_versions(cid))
        if dropped:
            with self.db.session() as s:
                for r in s.scalars(
                    select(Release).where(Release.channel_id == cid, Release.version.in_(dropped))
                ):
                    r.retired = True
                self.audit(s, "hub", "release.retire", channel=cid, versions=dropped)
        return dropped

    # ------------------------------------------------------------------ centres

    def register_centre(self, p: Principal, doc: dict[str, Any]) -> dict[str, Any]:
        """Record a centre and make its enrolment document (with a one-time code).

        The document's keys (``node_id``...) are read by the node agent at the centre:
        they stay as they are for agents already in the field.
        """
        p.require("admin")
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
                Centre(
                    id=node_id,
                    name=name,
                    region=str(doc.get("region", "")),
                    subscriptions=subs,
                    enrol_code_hash=hash_secret(code),
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
            centre = s.get(Centre, node_id)
            if centre is None or centre.enrol_code_hash is None:
                raise Forbidden("unknown centre or enrolment code already used")
            if not secrets.compare_digest(centre.enrol_code_hash, hash_secret(code)):
                raise Forbidden("wrong enrolment code")
            centre.public_key = pub.raw.hex()
            centre.enrol_code_hash = None
            centre.enrolled_at = now()
            self.audit(s, f"node:{node_id}", "node.enrol", keyid=pub.keyid)
            return {"node_id": node_id, "channels": centre.subscriptions, "name": centre.name}

    def accept_report(
        self,
        data: bytes,
        route: str,
        centre_id: str | None = None,
        via: str | None = None,
    ) -> dict[str, Any]:
        """Verify a signed report and store it once per (centre, seq), in any order.

        Reports come by network, through a peer centre (``via``: the relaying centre) and on
        drives, so an older report may arrive after a newer one: it is stored (its usage
        counts and errors are history too) but the centre's current state comes from the
        highest seq. A report already held is a Conflict ("replayed"), which a sender takes
        as "the hub has it". Each route keeps its own last contact for the fleet view.
        """
        try:
            claimed = report_node_id(data)
        except FormatError as exc:
            raise Unprocessable(str(exc)) from None
        if centre_id is not None and claimed != centre_id:
            raise Forbidden(f"report is about centre {claimed}, not {centre_id}")
        with self.db.session() as s:
            centre = s.get(Centre, claimed, with_for_update=True)
            if centre is None or not centre.public_key:
                raise Forbidden(f"centre {claimed} is not enrolled")
            try:
                report: Report = verify_report(
                    data, PublicKey(bytes.fromhex(centre.public_key)), claimed
                )
            except SignatureError as exc:
                raise Forbidden(str(exc)) from None
            except FormatError as exc:
                raise Unprocessable(str(exc)) from None
            held = s.scalar(
                select(CentreReport.id).where(
                    CentreReport.centre_id == claimed, CentreReport.seq == report.seq
                )
            )
            if held is not None:
                raise Conflict(
                    f"report {report.seq} of centre {claimed} is already held by the hub "
                    "(replayed); nothing to do"
                )
            if via:
                route = f"peer:{via}"[:100]
            elif route == "network":
                route = report.route
            contacts = dict(centre.contacts or {})
            seen = contacts.get(route) or {}
            if report.seq > int(seen.get("seq", 0)):
                contacts[route] = {"at": report.sent_at, "seq": report.seq}
                centre.contacts = contacts
            centre.last_contact = now()
            centre.stale = False
            if report.seq > centre.last_seq:  # the newest report tells the current state
                centre.last_seq = report.seq
                centre.last_route = route
                centre.installed = report.installed
                centre.free_disk = report.free_disk
                centre.last_error = report.errors[-1] if report.errors else None
            s.add(
                CentreReport(
                    centre_id=claimed,
                    seq=report.seq,
                    received_at=now(),
                    route=route,
                    body=report.to_dict(),
                )
            )
            record_usage(s, claimed, centre.region, report)  # once per (centre, seq)
            return {
                "accepted": True,
                "seq": report.seq,
                "node_id": claimed,
                "installed": report.installed,
            }

    def held_report_seqs(self, centre_id: str, seqs: Iterable[int]) -> list[int]:
        """Which of these reports of a centre the hub holds (for a drive's acknowledgement)."""
        wanted = sorted(set(seqs))
        if not wanted:
            return []
        with self.db.session() as s:
            return sorted(
                s.scalars(
                    select(CentreReport.seq).where(
                        CentreReport.centre_id == centre_id, CentreReport.seq.in_(wanted)
                    )
                )
            )

    def record_delivery(self, centre_id: str, drive: str, applied: list[dict[str, Any]]) -> None:
        """A returned drive brought ``applied`` (channel, version) to a centre."""
        with self.db.session() as s:
            s.add(Delivery(centre_id=centre_id, drive=drive, at=now(), applied=applied))
            self.audit(s, "usb", "usb.delivery", node=centre_id, drive=drive)

    def latest_versions(self) -> dict[str, int]:
        """Each channel's latest published version, from the signed repository."""
        return {c: self.repo.channel_meta(c).version for c in self.repo.channels()}

    def pack_new_bytes(self, channel: str, a: int, b: int) -> int:
        """Raw bytes of release ``b`` that release ``a`` lacks (what a pack a->b carries)."""
        return self.repo.new_bytes(channel, a, b)

    def fleet(self, region: str | None = None, behind_only: bool = False) -> list[dict[str, Any]]:
        latest = self.latest_versions()
        out = []
        with self.db.session() as s:
            q = select(Centre).order_by(Centre.region, Centre.name)
            if region:
                q = q.where(Centre.region == region)
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
                        "contacts": dict(n.contacts or {}),
                        "stale": n.stale,
                    }
                )
            self._add_freshness(s, out)
        return out

    def _add_freshness(self, s: Session, rows: list[dict[str, Any]]) -> None:
        """Each row's oldest last fresh word over its channels, from its latest report.

        A centre fed only by a frozen mirror keeps saying "up to date"; its own report says
        when it last had fresh signed word, and the fleet view warns after
        FREEZE_WARNING_DAYS (one query for the page: the latest report of each centre).
        """
        ids = [r["id"] for r in rows]
        if not ids:
            return
        latest = (
            select(CentreReport.centre_id.label("cid"), func.max(CentreReport.seq).label("seq"))
            .where(CentreReport.centre_id.in_(ids))
            .group_by(CentreReport.centre_id)
            .subquery()
        )
        q = select(CentreReport.centre_id, CentreReport.body).join(
            latest,
            (CentreReport.centre_id == latest.c.cid) & (CentreReport.seq == latest.c.seq),
        )
        bodies = {cid: body or {} for cid, body in s.execute(q)}
        at = datetime.now(UTC)
        for r in rows:
            fresh = dict(bodies.get(r["id"], {}).get("fresh") or {})
            times = [_parse_iso(v) for c, v in fresh.items() if c in r["channels"]]
            known = [t for t in times if t is not None]
            oldest = min(known) if known else None
            r["fresh_word"] = _iso(oldest) if oldest else None
            r["fresh_word_days"] = (at - oldest).days if oldest else None
            r["frozen"] = oldest is not None and (at - oldest).days >= FREEZE_WARNING_DAYS

    def centre_detail(self, centre_id: str) -> dict[str, Any]:
        """One centre for its page: fleet row, last 100 reports, drive deliveries."""
        rows = [n for n in self.fleet() if n["id"] == centre_id]
        if not rows:
            raise NotFound(f"no centre {centre_id!r}")
        with self.db.session() as s:
            reports = [
                {
                    "seq": r.seq,
                    "received_at": r.received_at,
                    "route": r.route,
                    "installed": (r.body or {}).get("installed", {}),
                    "free_disk": (r.body or {}).get("free_disk"),
                    "errors": (r.body or {}).get("errors", []),
                }
                for r in s.scalars(
                    select(CentreReport)
                    .where(CentreReport.centre_id == centre_id)
                    .order_by(CentreReport.id.desc())
                    .limit(100)
                )
            ]
            deliveries = [
                {"drive": d.drive, "at": d.at, "applied": d.applied}
                for d in s.scalars(
                    select(Delivery)
                    .where(Delivery.centre_id == centre_id)
                    .order_by(Delivery.id.desc())
                )
            ]
            row = s.get(Centre, centre_id)
            created = row.created_at if row is not None else None
        return {
            "centre": rows[0],
            "reports": reports,
            "deliveries": deliveries,
            "created": created,
        }

    def find_centres(
        self, names: list[str] | None = None, region: str | None = None
    ) -> list[Centre]:
        """The centre rows (detached) of a region and/or named by name or id; all if neither.

        Raises NotFound naming every name that matches no centre.
        """
        with self.db.session() as s:
            q = select(Centre)
            if region:
                q = q.where(Centre.region == region)
            rows = list(s.scalars(q))
            for r in rows:
                s.expunge(r)
        if names:
            wanted = set(names)
            rows = [r for r in rows if r.name in wanted or r.id in wanted]
            found = {r.name for r in rows} | {r.id for r in rows}
            unknown = wanted - found
            if unknown:
                missing = ", ".join(sorted(unknown))
                raise NotFound(f"unknown centres: {missing}").say(
                    "cli.err.unknown_centres", names=missing
                )
        return rows

    # ------------------------------------------------------------------ jobs support

    def flag_stale(self, days: int | None = None) -> list[str]:
        limit = now() - timedelta(days=days or self.config.stale_after_days)
        flagged = []
        with self.db.session() as s:
            for n in s.scalars(select(Centre).where(Centre.public_key.is_not(None))):
                last = _aware(n.last_contact) or _aware(n.enrolled_at)
                if last is not None and last < limit and not n.stale:
                    n.stale = True
                    flagged.append(n.name)
            if flagged:
                self.audit(s, "hub", "node.stale", nodes=flagged)
        return flagged

    def take_lease(self, name: str, holder: str, seconds: int) -> bool:
        """Take or renew the lease ``name`` for ``seconds``; False while another holds it.

        One conditional UPDATE (or an INSERT for a lease never taken): atomic on both
        engines, so two processes asking at the same instant never both get it.
        """
        t = now()
        until = t + timedelta(seconds=seconds)
        try:
            with self.db.session() as s:
                taken = s.execute(
                    update(Lease)
                    .where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at < t))
                    .values(holder=holder, expires_at=until)
                    .execution_options(synchronize_session=False)
                )
                if taken.rowcount:  # type: ignore[attr-defined]
                    return True
                if s.get(Lease, name) is not None:
                    return False
                s.add(Lease(name=name, holder=holder, expires_at=until))
            return True
        except IntegrityError:  # another process created the lease at the same instant
            return False

    def release_lease(self, name: str, holder: str) -> None:
        """Give a lease back before it expires (only its holder can)."""
        with self.db.session() as s:
            s.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))

    @contextmanager
    def lease(self, name: str, holder: str, seconds: int) -> Iterator[bool]:
        """Hold the lease ``name`` while the block runs (True), or not at all (False).

        A thread renews it every third of ``seconds``, so work longer than the lease (a
        strong pack of a large channel) keeps it, and a process that dies loses it within
        ``seconds``. Given back at the end.
        """
        if not self.take_lease(name, holder, seconds):
            yield False
            return
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(seconds / 3):
                if not self.take_lease(name, holder, seconds):
                    log.warning("lost the lease %s to another process", name)
                    return

        keeper = threading.Thread(target=renew, name=f"lease {name}", daemon=True)
        keeper.start()
        try:
            yield True
        finally:
            stop.set()
            keeper.join()
            self.release_lease(name, holder)

    def lease_holder(self, name: str) -> str | None:
        """Who holds the lease now (None when nobody does, or it expired)."""
        with self.db.session() as s:
            row = s.get(Lease, name)
            if row is None:
                return None
            expires = _aware(row.expires_at)
            return row.holder if expires is not None and expires >= now() else None

    def operations_counts(self) -> dict[str, dict[str, int]]:
        """What /metrics reads from the database: centres by state, releases per channel.

        The same on every hub process sharing the database (a dashboard takes ``max``, not
        ``sum``, over processes). A centre is ``not_enrolled``, ``stale`` (silent for
        ``stale_after_days``), ``behind`` (a subscribed channel has a newer release) or
        ``up_to_date``.
        """
        latest: dict[str, int] = {}
        for c in self.repo.channels():
            try:
                latest[c] = self.repo.channel_meta(c).version
            except CaravaneError:  # one damaged channel must not hide the whole fleet
                continue
        states = dict.fromkeys(("not_enrolled", "stale", "behind", "up_to_date"), 0)
        with self.db.session() as s:
            for n in s.scalars(select(Centre)):
                if n.public_key is None:
                    state = "not_enrolled"
                elif n.stale:
                    state = "stale"
                elif any(int(n.installed.get(c, 0)) < latest.get(c, 0) for c in n.subscriptions):
                    state = "behind"
                else:
                    state = "up_to_date"
                states[state] += 1
            releases = {
                channel: int(n)
                for channel, n in s.execute(
                    select(Release.channel_id, func.count()).group_by(Release.channel_id)
                )
            }
            tokens = s.scalar(select(func.count()).select_from(Token).where(~Token.revoked)) or 0
        return {"centres": states, "releases": releases, "tokens": {"active": tokens}}

    def record_missing_releases(self, actor: str) -> dict[str, list[int]]:
        """Releases the repository holds that the releases table lacks, recorded now.

        A publish signs under the repository lock and records its row just after; a backup
        taken in between holds the release but not the row. A restore calls this so the
        pages and the fleet view see every release the repository serves.
        """
        added: dict[str, list[int]] = {}
        with self.db.session() as s:
            for cid in s.scalars(select(Channel.id)).all():
                try:
                    meta = self.repo.channel_meta(cid)
                except CaravaneError:
                    continue  # not published yet
                held = set(
                    s.scalars(select(Release.version).where(Release.channel_id == cid)).all()
                )
                for version in sorted(set(meta.releases) - held):
                    ref = meta.releases[version]
                    s.add(
                        Release(
                            channel_id=cid,
                            version=version,
                            notes="found in the repository by a restore",
                            published_by=actor,
                            published_at=now(),
                            size=ref.size,
                            files=ref.files,
                        )
                    )
                    added.setdefault(cid, []).append(version)
            if added:
                self.audit(s, actor, "release.recorded", channels=added)
        return added

    def database_revision(self) -> str | None:
        """The schema revision the database is at (raises when it cannot be reached)."""
        with self.db.session() as s:
            s.execute(text("SELECT 1"))
            if not inspect(s.connection()).has_table("alembic_version"):
                return None
            return s.execute(text("SELECT version_num FROM alembic_version")).scalar()

    def counts(self) -> dict[str, int]:
        with self.db.session() as s:
            return {
                "channels": s.scalar(select(func.count()).select_from(Channel)) or 0,
                # "nodes": the key the health check has always answered (monitoring reads it)
                "nodes": s.scalar(select(func.count()).select_from(Centre)) or 0,
                "reports": s.scalar(select(func.count()).select_from(CentreReport)) or 0,
            }


def _tree_ref(doc: dict[str, Any]) -> tuple[PieceRef | None, int, int]:
    """The root and counts of a ``PUT .../tree`` body, their shapes checked (the pieces
    themselves are checked when the release is committed)."""
    files, size, raw = doc.get("files"), doc.get("size"), doc.get("tree")
    for name, value in (("files", files), ("size", size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise Unprocessable(f"{name!r} must be a count")
    assert isinstance(files, int) and isinstance(size, int)
    if files > MAX_TREE_FILES:
        raise Unprocessable(f"{files} files: a release holds at most {MAX_TREE_FILES}")
    if raw is None:
        if files or size:
            raise Unprocessable("'tree' is null but 'files' or 'size' is not 0")
        return None, 0, 0
    if not isinstance(raw, dict) or not files:
        raise Unprocessable("'tree' must be {sha256, length, level} naming at least one file")
    level = raw.get("level")
    if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= MAX_LEVELS:
        raise Unprocessable(f"'tree' level must be 0 to {MAX_LEVELS}")
    try:
        root = PieceRef.from_dict(
            {"sha256": raw.get("sha256"), "length": raw.get("length"), "first": ""}
            | {"files": files, "size": size},
            level,
            "the uploaded tree",
        )
    except CaravaneError as exc:
        raise Unprocessable(str(exc)) from None
    return root, files, size


def _file_entries(raw: object) -> list[FileEntry]:
    """An upload's file list from a client, checked as a manifest's would be."""
    if not isinstance(raw, list) or len(raw) > MAX_FILES:
        raise Unprocessable("'files' must be a list of file entries")
    try:
        entries = [FileEntry.from_dict(f) for f in raw]
        check_paths(e.path for e in entries)
    except FormatError as exc:
        raise Unprocessable(str(exc)) from None
    return entries


def _parse_iso(value: object) -> datetime | None:
    """A time from a centre's report (ISO 8601), None when unreadable."""
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _iso(when: datetime | None) -> str | None:
    when = _aware(when)
    return when.isoformat() if when else None
