"""Rules for paths in a manifest.

A manifest comes from the network or a drive, so its paths are hostile until checked: no way
out of the destination, and nothing a FAT32/exFAT drive or a Windows laptop would mangle.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from .errors import PathError

MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
#: device names Windows reserves in every folder, whatever the extension (CON.txt too)
RESERVED_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"COM{i}" for i in range(1, 10)]
    + [f"LPT{i}" for i in range(1, 10)]
)
#: characters NTFS, FAT32 and exFAT cannot hold in a name ('/' separates, '\\' is refused)
FORBIDDEN_CHARS = frozenset('<>:"|?*')
#: control characters and lone surrogates (one regex search, not a test per character: a
#: hub checks every path of every upload, 100,000 files at a time)
_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
#: what can make an ASCII path unsafe; one without a match passes (the fast path)
_RISKY_ASCII = re.compile(
    r'[\x00-\x1f\x7f\\<>:"|?*]'  # characters refused anywhere
    r"|(?:^|/)\.{0,2}(?:/|$)"  # an empty, "." or ".." name, a leading or trailing "/"
    r"|[. ](?:/|$)"  # a name ending with a dot or a space
    r"|(?:^|/)(?:con|prn|aux|nul|com[1-9]|lpt[1-9]) *(?:[./]|$)",  # device names
    re.IGNORECASE,
)


def check_name(part: str, shown: str) -> None:
    """Refuse one path component Windows or a FAT32/exFAT drive cannot hold."""
    bad = sorted(set(part) & FORBIDDEN_CHARS)
    if bad:
        raise PathError(
            f"manifest path {shown} contains {' '.join(bad)}, which Windows and FAT32 drives "
            "cannot hold; rename it"
        )
    if part.endswith((".", " ")):
        raise PathError(
            f"manifest path {shown}: the name {part!r} ends with a dot or a space, which "
            "Windows drops; rename it"
        )
    if part.split(".")[0].rstrip(" ").upper() in RESERVED_NAMES:
        raise PathError(
            f"manifest path {shown}: {part!r} is a device name Windows reserves (CON, PRN, "
            "AUX, NUL, COM1-9, LPT1-9, with any extension); rename it"
        )


def _plainly_safe(path: str) -> bool:
    """True for an ASCII path every rule of :func:`check_path` accepts (most paths).

    It only accepts: anything it is unsure of goes through the full checks, which name the
    problem. At 100,000 files the character-by-character checks cost seconds per publish,
    and a publish checks every path more than once (scan, commit, manifest read back).
    """
    return (
        path.isascii()
        and len(path) <= MAX_PATH_BYTES
        and _RISKY_ASCII.search(path) is None
        and (
            len(path) <= MAX_COMPONENT_BYTES
            or max(map(len, path.split("/"))) <= MAX_COMPONENT_BYTES
        )
    )


def check_path(path: str) -> str:
    """Return ``path`` if it is a safe relative path, else raise PathError naming it."""
    if type(path) is str and path and _plainly_safe(path):
        return path
    if not isinstance(path, str) or not path:
        raise PathError("manifest path is empty")
    shown = repr(path)
    if unicodedata.normalize("NFC", path) != path:
        raise PathError(f"manifest path {shown} is not NFC-normalised Unicode")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise PathError(f"manifest path {shown} is longer than {MAX_PATH_BYTES} bytes")
    if _CONTROL.search(path):
        raise PathError(f"manifest path {shown} contains a control character")
    if "\\" in path:
        raise PathError(f"manifest path {shown} contains a backslash")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise PathError(f"manifest path {shown} is absolute")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise PathError(f"manifest path {shown} has an empty, '.' or '..' component")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise PathError(f"manifest path {shown} has a name longer than 255 bytes")
        check_name(part, shown)
    return path


def fold(path: str) -> str:
    """The key under which a case-insensitive file system would store ``path``."""
    return unicodedata.normalize("NFC", path.casefold())


def check_paths(paths: Iterable[str]) -> None:
    """Check every path, and that no two collide (exactly, by case, or file vs folder)."""
    files: dict[str, str] = {}
    dirs: dict[str, str] = {}
    for path in paths:
        check_path(path)
        key = path.lower() if path.isascii() else fold(path)  # casefold is lower() on ASCII
        if key in files:
            other = files[key]
            what = "twice" if other == path else f"and {other!r}, which differ only by case"
            raise PathError(f"manifest lists {path!r} {what}")
        if key in dirs:
            raise PathError(f"manifest path {path!r} is both a file and a folder")
        files[key] = path
        # folders from the deepest up, stopping at the first one already known: its parents
        # were checked with it, and a file named like any of them was refused above
        cut = key.rfind("/")
        while cut > 0:
            prefix = key[:cut]
            if prefix in dirs:
                break
            if prefix in files:
                raise PathError(f"manifest path {files[prefix]!r} is both a file and a folder")
            dirs[prefix] = path
            cut = key.rfind("/", 0, cut)
