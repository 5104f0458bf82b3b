"""Mirror push: copy the static repository somewhere any web server can serve it.

Objects, manifests and packs go first, metadata last: a mirror read at any instant is either
the old release or the new one, never metadata pointing at objects not there yet. Private keys
and lock files never leave the hub.

The hub keeps its objects in segment files; a mirror gets them as loose files
(``objects/<aa>/<sha>``, one zstd frame each), the layout nginx, a CDN, an rsync module or a
folder upstream serve without knowing Caravane. Only objects this destination has not been
sent are written out (to a temporary folder, then rsync), and the hub remembers what each
destination holds (``.mirror-sent.sqlite``, never served), so ``--delete`` removes there
exactly the objects the hub collected since.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

from caravane.packs.layout import object_relpath
from caravane.packs.store import ObjectStore

from .errors import HubError

CONTENT = ("manifests", "packs")
SENT_DB = ".mirror-sent.sqlite"
STAGE_BATCH = 256 * 1024 * 1024
EXCLUDES = ("--exclude=.*", "--exclude=*.part", "--exclude=*.tmp")


def _is_remote(dest: str) -> bool:
    return (
        dest.startswith("rsync://")
        or ("::" in dest)
        or (":" in dest and not Path(dest).exists() and not dest.startswith("/"))
    )


def _rsync(cmd: list[str], dest: str, vanished_ok: bool = False) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 and not (vanished_ok and r.returncode == 24):
        raise HubError(f"rsync to {dest} failed ({r.returncode}): {r.stderr.strip()}")


def _sent_db(repo: Path) -> sqlite3.Connection:
    db = sqlite3.connect(repo / SENT_DB, isolation_level=None)
    db.execute(
        "CREATE TABLE IF NOT EXISTS sent (dest TEXT, sha TEXT, PRIMARY KEY (dest, sha)) "
        "WITHOUT ROWID"
    )
    return db


def _unsent(store: ObjectStore, db: sqlite3.Connection, dest: str) -> Iterator[str]:
    for sha in store.iter_ids():
        if db.execute("SELECT 1 FROM sent WHERE dest = ? AND sha = ?", (dest, sha)).fetchone():
            continue
        yield sha


def _push_objects(repo: Path, dest: str, target: str, delete: bool) -> None:
    """Loose copies of the objects ``dest`` lacks, in batches; then, with ``delete``,
    removal there of the objects the hub no longer has."""
    store = ObjectStore(repo)
    with closing(_sent_db(repo)) as db, tempfile.TemporaryDirectory(prefix="caravane-mirror-") as t:
        stage = Path(t)
        (stage / "objects").mkdir()
        todo = _unsent(store, db, dest)
        while True:
            batch: list[str] = []
            size = 0
            for sha in todo:
                path = stage / object_relpath(sha)
                path.parent.mkdir(exist_ok=True)
                frame = store.read_frame(sha)
                path.write_bytes(frame)
                batch.append(sha)
                size += len(frame)
                if size >= STAGE_BATCH:
                    break
            _rsync(["rsync", "-rt", "--partial", *EXCLUDES, str(stage / "objects"), target], dest)
            with db:
                db.execute("BEGIN")
                db.executemany(
                    "INSERT OR IGNORE INTO sent VALUES (?, ?)", [(dest, s) for s in batch]
                )
            if size < STAGE_BATCH:
                break
            shutil.rmtree(stage / "objects")
            (stage / "objects").mkdir()
        if not delete:
            return
        gone = [
            sha
            for (sha,) in db.execute("SELECT sha FROM sent WHERE dest = ?", (dest,)).fetchall()
            if not store.has(sha)
        ]
        if gone:
            shutil.rmtree(stage / "objects")
            for sha in gone:  # only the files are missing, never their folders
                (stage / object_relpath(sha)).parent.mkdir(parents=True, exist_ok=True)
            listing = stage / "gone.txt"
            listing.write_text("".join(f"{object_relpath(s)}\n" for s in gone))
            # listed paths missing from the (empty) source are deleted at the destination
            _rsync(
                [
                    "rsync",
                    "-rt",
                    "--delete-missing-args",
                    f"--files-from={listing}",
                    f"{stage}/",
                    target,
                ],
                dest,
                vanished_ok=True,
            )
            with db:
                db.execute("BEGIN")
                db.executemany(
                    "DELETE FROM sent WHERE dest = ? AND sha = ?", [(dest, s) for s in gone]
                )


def push(repo: Path, dest: str, delete: bool = False) -> list[str]:
    """Copy ``repo`` to ``dest`` (a folder, ``host:path`` or ``rsync://``) with rsync."""
    if shutil.which("rsync") is None:
        raise HubError("rsync is not installed; install it (apt-get install rsync)")
    repo = Path(repo)
    if not _is_remote(dest):
        Path(dest).mkdir(parents=True, exist_ok=True)
    target = dest.rstrip("/") + "/"
    _push_objects(repo, dest, target, delete)
    done = ["objects"]
    steps = [
        [*(f"{repo / d}" for d in CONTENT if (repo / d).exists())],
        [str(repo / "metadata"), str(repo / "repo.json")],
    ]
    for sources in steps:
        cmd = ["rsync", "-rt", "--partial", *EXCLUDES]
        if delete and sources is steps[0]:
            cmd.append("--delete-after")
        if sources is steps[1]:
            # metadata files keep their name and often their size, and two versions can be
            # written within one second: compare contents, or a mirror may keep stale ones
            cmd.append("--checksum")
        cmd += [*sources, target]
        _rsync(cmd, dest)
        done.extend(Path(s).name for s in sources)
    return done
