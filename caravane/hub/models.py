"""The hub's database: channels, releases, tokens, centres, reports, audit, uploads, leases.

The repository folder is the source of truth for content (signed metadata, manifests,
objects); the database holds who did what, the fleet's state, and work in progress.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Channel(Base):
    __tablename__ = "channels"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(200), default="")
    language: Mapped[str] = mapped_column(String(16), default="fr")
    description: Mapped[str] = mapped_column(Text, default="")
    keep_last: Mapped[int] = mapped_column(Integer, default=5)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Release(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("channel_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    notes: Mapped[str] = mapped_column(Text, default="")
    published_by: Mapped[str] = mapped_column(String(100), default="")
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    files: Mapped[int] = mapped_column(Integer, default=0)
    retired: Mapped[bool] = mapped_column(Boolean, default=False)


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Centre(Base):
    """A community centre as the hub knows it: registration, enrolment, last known state.

    The table keeps its first name (``nodes``) so existing databases need no migration.
    """

    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    region: Mapped[str] = mapped_column(String(100), default="")
    subscriptions: Mapped[list[str]] = mapped_column(JSON, default=list)
    public_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    enrol_code_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    enrolled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_contact: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_route: Mapped[str | None] = mapped_column(String(100), nullable=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    installed: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    free_disk: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    stale: Mapped[bool] = mapped_column(Boolean, default=False)
    # route ("network", "usb", "peer:<centre>") -> {"at": when the centre made its newest
    # report that came that way, "seq": that report}: the fleet view's last contact per route
    contacts: Mapped[dict[str, dict[str, Any]] | None] = mapped_column(JSON, nullable=True)


class CentreReport(Base):
    """A signed report a centre sent (network, peer relay or drive), stored once per seq."""

    __tablename__ = "node_reports"
    __table_args__ = (UniqueConstraint("node_id", "seq", name="uq_node_reports_node_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    centre_id: Mapped[str] = mapped_column(
        "node_id", ForeignKey("nodes.id", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    route: Mapped[str] = mapped_column(String(100))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)


class Delivery(Base):
    """A drive that brought content to a centre (recorded when the drive comes back)."""

    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    centre_id: Mapped[str] = mapped_column(
        "node_id", ForeignKey("nodes.id", ondelete="CASCADE"), index=True
    )
    drive: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    applied: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(50))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Upload(Base):
    """A publish in progress: the file list is known, objects arrive, then it is committed.

    ``state`` is ``receiving`` (chunks declared, file list or tree to come), ``open``, then
    ``committed``, ``abandoned`` (the curator dropped it) or ``expired``: idle for
    ``upload_expiry_days`` since ``active_at`` (its creation or the last object, chunk or
    file list it received), the scheduled job drops its object rows so collection may take
    what nothing else uses, and the client is told to publish again (410).
    """

    __tablename__ = "uploads"
    # the expiry job's query: open uploads idle since before a cutoff
    __table_args__ = (Index("ix_uploads_state_active_at", "state", "active_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    notes: Mapped[str] = mapped_column(Text, default="")
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    #: a file list sent as manifest pieces (PUT .../tree): that request's body, the root's
    #: reference and the counts, ``{"tree": {"sha256", "length", "level"} | None, "files",
    #: "size"}`` (``files`` then stays empty; None otherwise), so the row stays a few
    #: hundred bytes whatever the release
    tree: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    state: Mapped[str] = mapped_column(String(20), default="open")
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    active_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class UploadObject(Base):
    """One object an open upload needs, with its raw size.

    An object PUT looks up this one row (by primary key) instead of reading the upload's
    whole file list, so its cost does not grow with the size of the release; being in the
    database, it holds for every hub process serving the same uploads.
    """

    __tablename__ = "upload_objects"
    upload_id: Mapped[str] = mapped_column(
        ForeignKey("uploads.id", ondelete="CASCADE"), primary_key=True
    )
    sha: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)


class Lease(Base):
    """Which hub process does a piece of work that must run once: the scheduled jobs
    (``jobs``), building one pack (``pack:<channel>:<from>-<to>``). Several processes may
    share one database; a lease that is not renewed expires and passes to another.
    """

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebSession(Base):
    """A person signed in to the web pages, seen by every hub process sharing the database.

    Kept by the SHA-256 of the cookie's value: a copy of the database opens no session.
    The token is asked again on every page, so revoking it ends its sessions at once.
    """

    __tablename__ = "web_sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    csrf: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class PublishJobRow(Base):
    """A publish from the web page (an archive), followed on its page from any hub process.

    The process that received the archive (``holder``) does the work and writes its
    progress here; any other process renders the job page from this row.
    """

    __tablename__ = "publish_jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    channel: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(100))
    archive: Mapped[str] = mapped_column(String(255))
    holder: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(20))
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    files: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")
    upload: Mapped[str] = mapped_column(String(40), default="", server_default="")
    latest: Mapped[int | None] = mapped_column(Integer, nullable=True)
    review: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
