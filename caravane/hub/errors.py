"""Errors of the hub service; each maps to an HTTP status and a JSON body."""

from typing import Any

from caravane.protocol.errors import CaravaneError


class HubError(CaravaneError):
    status = 400

    def __init__(self, message: str, status: int | None = None, **detail: Any) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        #: more fields of the JSON answer (a refused commit's ``missing`` objects)
        self.detail = detail


class Unauthorized(HubError):
    status = 401


class Forbidden(HubError):
    status = 403


class NotFound(HubError):
    status = 404


class Conflict(HubError):
    status = 409


class Gone(HubError):
    """Something that existed and will not come back: an upload that expired."""

    status = 410


class Unprocessable(HubError):
    status = 422


class SchemaError(HubError):
    """The database's schema is not the one this version of Caravane was written for."""

    status = 503


class BackupError(HubError):
    """A backup that cannot be made or restored (damaged, incomplete, target not empty)."""


class PackBuildError(HubError):
    """A pack the hub builds ahead of time could not be built (its own process failed)."""

    status = 500
