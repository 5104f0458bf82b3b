"""Repository-relative paths of the static layout (see docs/FORMAT.md).

Every transport (HTTP, mirror, peer, rsync, drive) addresses files by these paths.
"""

from __future__ import annotations

from caravane.protocol.metadata import HEX64, check_channel

REPO_MARKER = "repo.json"
ROOT = "metadata/root.json"


def root_relpath(version: int | None = None) -> str:
    return ROOT if version is None else f"metadata/root/{int(version)}.json"


def channel_relpath(channel: str) -> str:
    return f"metadata/channels/{check_channel(channel)}.json"


def manifest_relpath(channel: str, version: int) -> str:
    return f"manifests/{check_channel(channel)}/{int(version)}.json"


def object_relpath(sha: str) -> str:
    if not HEX64.match(sha):
        raise ValueError(f"not an object id: {sha!r}")
    return f"objects/{sha[:2]}/{sha}"


def pack_relpath(channel: str, from_version: int, to_version: int) -> str:
    return f"packs/{check_channel(channel)}/{int(from_version)}-{int(to_version)}.pack"
