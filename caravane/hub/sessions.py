"""Web sign-in sessions, kept in the database so every hub process knows them.

Several ``hub serve`` processes behind one address take turns answering one browser: a
session held in one process's memory would send a curator back to the sign-in page on the
next request. The cookie carries a random id; the database keeps only its SHA-256, with the
token's hash (asked again on every page, so revoking a token ends its sessions), the CSRF
token of the session's forms and when it ends. Every method is short and blocking: the web
layer runs them in the thread pool.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete

from .auth import Principal, hash_secret
from .db import Database
from .models import WebSession

SESSION_SECONDS = 8 * 3600


@dataclass
class Session:
    """What a page needs of its session (the templates read ``csrf``)."""

    token_hash: str
    name: str
    role: str
    csrf: str
    expires: float  # seconds since the epoch


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class SessionStore:
    def __init__(self, db: Database, seconds: int = SESSION_SECONDS) -> None:
        self.db = db
        self.seconds = seconds

    def create(self, token_hash: str, p: Principal) -> str:
        """A new session for the holder of a token; the cookie's value (shown once)."""
        sid = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self.db.session() as s:
            s.execute(delete(WebSession).where(WebSession.expires_at < now))
            s.add(
                WebSession(
                    id_hash=hash_secret(sid),
                    token_hash=token_hash,
                    name=p.name,
                    role=p.role,
                    csrf=secrets.token_urlsafe(24),
                    expires_at=now + timedelta(seconds=self.seconds),
                )
            )
        return sid

    def get(self, sid: str) -> Session | None:
        """The live session of a cookie's value, None when unknown or ended."""
        if not sid:
            return None
        with self.db.session() as s:
            row = s.get(WebSession, hash_secret(sid))
            if row is None:
                return None
            expires = _aware(row.expires_at)
            if expires < datetime.now(UTC):
                return None
            return Session(row.token_hash, row.name, row.role, row.csrf, expires.timestamp())

    def end(self, sid: str) -> None:
        """Sign out: the session ends on every process at once."""
        if not sid:
            return
        with self.db.session() as s:
            s.execute(delete(WebSession).where(WebSession.id_hash == hash_secret(sid)))
