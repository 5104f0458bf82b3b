"""Who is asking and what they may do: tokens' hashes, roles, and the one role check.

Every door of the hub (the JSON API, the web pages, the service methods the command line
calls) asks the same question through :func:`authorize`, with the same rule: the roles that
may pass are always named, and an admin always passes. There is no "no role given" default
to get wrong: asking with no role is a programming error, refused at once.
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal, get_args

from .errors import Forbidden

Role = Literal["admin", "curator", "field_agent"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
ANY_ROLE: Final[tuple[Role, ...]] = ROLES  # "any signed-in person", said out loud


def hash_secret(secret: str) -> str:
    """SHA-256 of a token or enrolment code: the database never holds the secret itself."""
    return hashlib.sha256(secret.encode()).hexdigest()


def may(role: str, allowed: tuple[str, ...]) -> bool:
    """True if ``role`` is admin or one of ``allowed`` (which must name at least one role).

    Pages use it to show only the links a person may follow; :func:`authorize` is the check.
    """
    if not allowed:
        raise ValueError("a role check needs the roles that may pass; name them explicitly")
    return role == "admin" or role in allowed


def authorize(role: str, allowed: tuple[str, ...]) -> None:
    """Refuse unless ``role`` is admin or one of ``allowed`` (which must name at least one).

    Raises :class:`~hub.errors.Forbidden` naming the roles needed and the one presented.
    """
    if not may(role, allowed):
        raise Forbidden(f"this needs the role {' or '.join(allowed)}; your token is {role}")


class Principal:
    """A person or script, as authenticated from a token (name for the audit log, role)."""

    def __init__(self, name: str, role: str) -> None:
        self.name = name
        self.role = role

    def require(self, role: Role, *more: Role) -> None:
        """Pass if this principal is admin or holds one of the named roles."""
        authorize(self.role, (role, *more))

    def __repr__(self) -> str:
        return f"Principal({self.name!r}, {self.role!r})"
