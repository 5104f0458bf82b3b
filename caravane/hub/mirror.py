"""Mirror push: copy the static repository somewhere any web server can serve it.

Objects, manifests and packs go first, metadata last: a mirror read at any instant is either
the old release or the new one, never metadata pointing at objects not there yet. Private keys
and lock files never leave the hub.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .errors import HubError

CONTENT = ("objects", "manifests", "packs")
EXCLUDES = ("--exclude=.*", "--exclude=*.part", "--exclude=*.tmp")


def _is_remote(dest: str) -> bool:
    return (
        dest.startswith("rsync://")
        or ("::" in dest)
        or (":" in dest and not Path(dest).exists() and not dest.startswith("/"))
    )


def push(repo: Path, dest: str, delete: bool = False) -> list[str]:
    """Copy ``repo`` to ``dest`` (a folder, ``host:path`` or ``rsync://``) with rsync."""
    if shutil.which("rsync") is None:
        raise HubError("rsync is not installed; install it (apt-get install rsync)")
    repo = Path(repo)
    if not _is_remote(dest):
        Path(dest).mkdir(parents=True, exist_ok=True)
    target = dest.rstrip("/") + "/"
    steps = [
        [*(f"{repo / d}" for d in CONTENT if (repo / d).exists())],
        [str(repo / "metadata"), str(repo / "repo.json")],
    ]
    done: list[str] = []
    for sources in steps:
        cmd = ["rsync", "-rt", "--partial", *EXCLUDES]
        if delete and sources is steps[0]:
            cmd.append("--delete-after")
        if sources is steps[1]:
            # metadata files keep their name and often their size, and two versions can be
            # written within one second: compare contents, or a mirror may keep stale ones
            cmd.append("--checksum")
        cmd += [*sources, target]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise HubError(f"rsync to {dest} failed ({r.returncode}): {r.stderr.strip()}")
        done.extend(Path(s).name for s in sources)
    return done
