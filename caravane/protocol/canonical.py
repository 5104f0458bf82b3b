"""The one byte encoding of every document Caravane signs or hashes.

Canonical JSON: UTF-8, sorted keys, no whitespace, no floats. Two writers that agree on a
document always produce the same bytes, so signatures and hashes are stable.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import FormatError


def _check(value: Any, where: str = "$") -> None:
    if isinstance(value, float):
        raise FormatError(f"floating-point number at {where} cannot be encoded canonically")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise FormatError(f"non-string key at {where}")
            _check(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check(item, f"{where}[{i}]")


def canonical_bytes(obj: Any) -> bytes:
    """Encode ``obj`` canonically (the bytes that get signed and hashed)."""
    _check(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_json(data: bytes, what: str, max_length: int | None = None) -> Any:
    """Parse untrusted JSON bytes, bounded in length, naming ``what`` in any error."""
    if max_length is not None and len(data) > max_length:
        raise FormatError(f"{what}: {len(data)} bytes, more than the {max_length} allowed")
    try:
        return json.loads(data.decode("utf-8"), parse_float=_no_float)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise FormatError(f"{what}: not valid JSON ({exc})") from None


def _no_float(text: str) -> float:
    raise ValueError(f"floating-point number {text!r} not allowed")
