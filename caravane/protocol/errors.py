"""One exception hierarchy for everything a reader of untrusted bytes can refuse.

Messages name the file and the problem in words a field agent can act on; the CLI prints
them as they are and exits non-zero.
"""

from typing import Self


class CaravaneError(Exception):
    """Base of every error Caravane raises on purpose.

    ``str()`` is the English message (logs, the API, ``--json``). A raiser may also name a
    message id of the translation catalogues with :meth:`say`, so that a command prints the
    message in the field agent's language (``caravane.output.handle_errors``).
    """

    message_id: str | None = None
    message_args: dict[str, object] = {}  # replaced by say(), never mutated

    def say(self, message_id: str, **args: object) -> Self:
        self.message_id, self.message_args = message_id, args
        return self


class BadDataError(CaravaneError):
    """Bytes from a carrier that fail a check: whoever sent them is not to be trusted now.

    A reader that fetches from untrusted carriers (the node's sync engine) catches this one
    base to set the carrier aside, instead of listing every kind of refusal at each use.
    """


class FormatError(BadDataError):
    """Bytes that do not parse as the document they claim to be."""


class PathError(FormatError):
    """A path in a manifest that is unsafe or not portable."""


class VerificationError(BadDataError):
    """Content whose hash, size or length does not match what was signed."""


class SignatureError(VerificationError):
    """Metadata not signed by enough trusted keys."""


class RollbackError(VerificationError):
    """Metadata older than what this reader already accepted."""


class ExpiredError(VerificationError):
    """Metadata past its expiry date (freeze attack protection)."""


class NotFoundError(CaravaneError):
    """Something the reader needs is not where it should be."""
