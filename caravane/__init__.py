"""The ``caravane`` command and what its sub-commands share."""

__version__ = "0.1.0"
