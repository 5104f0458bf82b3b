"""Errors of the packs layer; all are CaravaneErrors so the CLI reports them the same way."""

from caravane.protocol.errors import CaravaneError, FormatError, VerificationError


class StoreError(CaravaneError):
    """The object store cannot do what was asked (missing object, unwritable folder)."""


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
    "PackError",
    "StoreError",
    "TruncatedPackError",
    "VerificationError",
]
