"""Errors of the packs layer; all are CaravaneErrors so the CLI reports them the same way."""

from caravane.protocol.errors import CaravaneError, FormatError, VerificationError


class StoreError(CaravaneError):
    """The object store cannot do what was asked (missing object, unwritable folder)."""


class MissingObjects(StoreError):
    """Objects a release names are not in the store; ``missing`` names them (as many as
    were found before the check gave up), so an uploader can send exactly those."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


class PackError(FormatError):
    """A pack file that is not a valid pack."""


class TruncatedPackError(PackError):
    """A pack that ends before its last entry: every complete entry before the cut is usable."""


class DiskFullError(StoreError):
    """The disk filled up; nothing half-written was kept."""


__all__ = [
    "CaravaneError",
    "DiskFullError",
    "FormatError",
    "MissingObjects",
    "PackError",
    "StoreError",
    "TruncatedPackError",
    "VerificationError",
]
