"""Rules for paths in a manifest.

A manifest comes from the network or a drive, so its paths are hostile until checked: no way
out of the destination, and nothing a FAT32/exFAT drive or a Windows laptop would mangle.
"""

from __future__ import annotations

import re
import tempfile
import unicodedata
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import IO

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


class SortedPathChecker:
    """:func:`check_paths` for paths given one at a time in ascending order.

    :func:`check_paths` keeps every path it has seen (about 200 bytes a file: 200 MB at a
    million files). In ascending order the paths under a folder are contiguous, so two names
    that collide (by case, or a file and a folder) are children of one folder while that
    folder is open: only the folders on the current path are kept, each with the folded
    names of its children so far.

    Two sibling folders that differ only by case are allowed (a case-insensitive drive merges
    them), and their subtrees are not contiguous; for them, each file's folded path is also
    kept as a 64-bit hash and, only when such folders were seen, compared at :meth:`finish`.
    Past ``HELD`` paths those hashes go to a temporary file, ``HELD`` at a time: 8 bytes a
    file in memory was 8 MB at a million files (16 with the array's growth), in every walk
    of a release (a pack build, a checkout, a hub's commit), and 80 at ten million.
    """

    #: path hashes kept in memory before they are written out
    HELD = 1 << 16

    def __init__(self) -> None:
        # (folder prefix with its trailing "/", {folded child name: (name, is_folder)})
        self._open: list[tuple[str, dict[str, tuple[str, bool]]]] = [("", {})]
        self._last: str | None = None
        self._hashes = array("q")
        self._spill: IO[bytes] | None = None  # the hashes written out, HELD at a time
        self._folders: dict[str, str] = {}  # folded folder path: its first spelling
        self._merged: list[tuple[str, str]] = []
        self.count = 0

    def add(self, path: str) -> None:
        check_path(path)
        last = self._last
        if last is not None and not last < path:
            if last == path:
                raise PathError(f"manifest lists {path!r} twice")
            raise PathError(f"manifest: paths out of order at {path!r} (after {last!r})")
        self._last = path
        self.count += 1
        stack = self._open
        while len(stack) > 1 and not path.startswith(stack[-1][0]):
            stack.pop()
        prefix, children = stack[-1]
        parts = path[len(prefix) :].split("/")
        for name in parts[:-1]:
            self._name(prefix, children, name, True)
            prefix = prefix + name + "/"
            folder = prefix[:-1]
            key = _fold(folder)
            first = self._folders.setdefault(key, folder)
            if first != folder:
                self._merged.append((first, folder))
            children = {}
            stack.append((prefix, children))
        self._name(prefix, children, parts[-1], False)
        self._hashes.append(hash(_fold(path)))
        if len(self._hashes) >= self.HELD:
            self._write_out()

    def _write_out(self) -> None:
        try:
            if self._spill is None:
                self._spill = tempfile.TemporaryFile(prefix="caravane-paths-")
            self._hashes.tofile(self._spill)
        except OSError:  # no room for a temporary file: they stay in memory
            self.HELD = len(self._hashes) * 2
            return
        self._hashes = array("q")

    def _all_hashes(self) -> Iterator[int]:
        if self._spill is not None:
            self._spill.seek(0)
            while True:
                block = array("q")
                block.frombytes(self._spill.read(self.HELD * block.itemsize))
                if not block:
                    break
                yield from block
        yield from self._hashes

    @staticmethod
    def _name(prefix: str, children: dict[str, tuple[str, bool]], name: str, folder: bool) -> None:
        key = _fold(name)
        seen = children.get(key)
        if seen is None:
            children[key] = (name, folder)
            return
        # paths come strictly ascending: never the same name twice here; two spellings of
        # one folder pass, their files are compared at finish
        _clash(prefix, name, folder, *seen)

    def finish(self) -> None:
        """The checks across folders that differ only by case (nothing to do without them)."""
        try:
            if self._merged:
                self._compare()
        finally:
            if self._spill is not None:
                self._spill.close()
                self._spill = None

    def _compare(self) -> None:
        first, other = self._merged[0]
        seen: set[int] = set()
        for h in self._all_hashes():
            if h in seen:
                raise PathError(
                    f"manifest lists two files under {first!r} and {other!r} whose paths "
                    "differ only by case"
                )
            seen.add(h)
        for folded, folder in self._folders.items():
            if hash(folded) in seen:
                raise PathError(f"manifest path {folder!r} is both a file and a folder")


class ListingChecker:
    """:func:`check_paths` for a folder walked one listing at a time (a publish's scan).

    A scan holds each folder's whole listing: the names in it are checked once each (not
    every path again from the top, as :class:`SortedPathChecker` must, about 10 us a file),
    and two names can collide only within one listing. Sibling folders that differ only by
    case are allowed (a case-insensitive drive merges them); the listing says so, and the
    scan walks their subtrees as *merged*: each path there is kept folded, to compare with
    the other spellings' (only there: nothing is kept for ordinary folders).
    """

    def __init__(self) -> None:
        #: folded path: (path, is a folder), for paths under folders merged by case
        self._region: dict[str, tuple[str, bool]] = {}

    def listing(self, prefix: str, names: list[str], folders: list[bool], merged: bool) -> set[str]:
        """Check a folder's entries: NFC names, and whether each is a folder; ``prefix`` is
        the folder's checked path with its trailing "/" ("" at the top), ``merged`` whether
        it lies under folders merged by case. Returns its subfolders merged with a sibling.

        The usual listing (ASCII names, none risky, no two alike by case) is checked whole:
        its names joined by "/" are a path :func:`_plainly_safe`'s rules read component by
        component, so one regex search and one set answer for the folder (a name at a time
        was a fifth of a republish at a million files)."""
        room = MAX_PATH_BYTES - (len(prefix) if prefix.isascii() else len(prefix.encode()))
        if not merged and names:
            joined = "/".join(names)
            if (
                joined.isascii()
                and _RISKY_ASCII.search(joined) is None
                and max(map(len, names)) <= min(room, MAX_COMPONENT_BYTES)
                and len(set(joined.lower().split("/"))) == len(names)
            ):
                return set()
        seen: dict[str, tuple[str, bool]] = {}
        out: set[str] = set()
        for name, folder in sorted(zip(names, folders, strict=True)):
            if not (len(name) <= room and _plainly_safe(name)):
                try:
                    check_path(name)
                    if len(name.encode("utf-8", "surrogatepass")) > room:
                        raise PathError(name)
                except PathError:
                    check_path(prefix + name)  # the message, naming the whole path
                    raise
            key = name.lower() if name.isascii() else fold(name)
            other = seen.get(key)
            if other is None:
                seen[key] = (name, folder)
            else:
                if name in out:  # a third spelling: compared with the second too
                    other = (name, True)
                _clash(prefix, name, folder, *other)
                out.update((name, other[0]))
            if merged:
                path = prefix + name
                folded = path.lower() if path.isascii() else fold(path)
                was = self._region.get(folded)
                if was is None:
                    self._region[folded] = (path, folder)
                elif not (folder and was[1]):
                    _clash("", path, folder, *was)
        return out


def _clash(prefix: str, name: str, folder: bool, other: str, other_folder: bool) -> None:
    """Refuse two entries of one folder that a case-insensitive drive would mix up (two
    spellings of one folder pass: the caller compares what is under them)."""
    if name == other:  # two Unicode spellings of one name, as NFC makes them
        what = "folder" if folder and other_folder else "name"
        raise PathError(
            f"manifest lists the {what} {prefix + name!r} twice (two Unicode spellings "
            "of one name on disk); rename or merge one"
        )
    if folder and other_folder:
        return  # two spellings of one folder: their subtrees are walked as merged
    if folder or other_folder:
        shown = prefix + (other if other_folder else name)
        raise PathError(f"manifest path {shown!r} is both a file and a folder")
    raise PathError(
        f"manifest lists {prefix + name!r} and {prefix + other!r}, which differ only by case"
    )


def _fold(name: str) -> str:
    return name.lower() if name.isascii() else fold(name)


#: a folder's direct entries: (name, is a folder), each name once
Listing = Callable[[str], Iterable[tuple[str, bool]]]


def check_added(added: Iterable[str], listing: Listing) -> None:
    """:func:`check_paths` of a release B made of a release that passed it and ``added``,
    given ``listing`` (the entries of a folder of B; "" is the top, a folder's prefix ends
    with "/"): the check of an update, which must not read all of B.

    A collision in B the earlier release did not have involves an added path, so each is
    followed down from the top through every spelling of each of its folders (sibling
    folders that differ only by case are allowed, and a case-insensitive drive merges
    them): at each level, the entries of those folders whose name folds like the path's.
    A file must be the only entry folding to its path, a folder must not fold like a file.
    What is read: the listings of the folders the added paths are in and above (cached),
    not the release.
    """
    listings: dict[str, dict[str, list[tuple[str, bool]]]] = {}

    def named(prefix: str, key: str) -> list[tuple[str, bool]]:
        got = listings.get(prefix)
        if got is None:
            got = listings[prefix] = {}
            for name, is_folder in listing(prefix):
                got.setdefault(_fold(name), []).append((prefix + name, is_folder))
        return got.get(key, [])

    for path in added:
        check_path(path)
        parts = path.split("/")
        variants = [""]
        for depth, name in enumerate(parts):
            key = _fold(name)
            found = [hit for v in variants for hit in named(v, key)]
            if depth == len(parts) - 1:
                for other, is_folder in found:
                    if is_folder:
                        raise PathError(f"manifest path {path!r} is both a file and a folder")
                    if other != path:
                        raise PathError(
                            f"manifest lists {path!r} and {other!r}, which differ only by case"
                        )
            else:
                for other, is_folder in found:
                    if not is_folder:
                        raise PathError(f"manifest path {other!r} is both a file and a folder")
                variants = [other + "/" for other, _ in found]


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
