"""``caravane hub backup`` and ``caravane hub restore``: the hub as one consistent snapshot.

A backup is a folder::

    manifest.json      what it is: format, when, schema revision, tables and row counts,
                       the keys' file modes, and the SHA-256 of SHA256SUMS
    SHA256SUMS         one "<sha256>  <path>" line per file (``sha256sum -c SHA256SUMS``)
    hub.toml           the hub's settings (restore writes a new one from it)
    database/T.jsonl   every row of table T, one JSON object per line
    keys/              DATA/repo-keys (the release key), with its modes
    repo/              DATA/repo, whatever files it holds

Why this shape:

- **One snapshot.** Everything is read under the repository's writer lock
  (``RepositoryBase.lock()``), which every publish, retention and collection takes: no
  release is half in it. The database is read in one snapshot (a ``REPEATABLE READ``
  transaction on PostgreSQL, as pg_dump does; the SQLite backup API on SQLite).
- **Rows, not a database file.** Each table's rows in the migrated schema, typed in JSON,
  restore into SQLite or PostgreSQL alike: a hub grown out of SQLite moves to PostgreSQL
  with a backup and a restore. The schema itself comes from alembic on restore (the
  backup's revision, then head), never from the dump.
- **Any repository layout.** The repository is copied file by file whatever it holds
  (one file per object today, segment files and an SQLite index tomorrow): SQLite files
  (recognised by their header) through the sqlite3 backup API so a live index is copied
  consistent, and before the data files an index points into; everything else as bytes.
  Files that never change once written (objects named by their SHA-256, manifests, packs:
  :func:`immutable`) are hard-linked when the backup is on the same file system
  (``--copy`` to have a second copy on the same disk anyway).
- **Checked before use.** Restore verifies every checksum before it writes a byte, refuses
  a target that holds a hub unless ``--force``, and ends with ``repo verify``.

Not in a backup: the offline root key (it stays on its USB key), the files cache
(``DATA/repo-cache``, rebuilt by the next publish) and web sessions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, Table, create_engine, inspect, select, text, types
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import make_url

from caravane.packs.repository import Repository, keys_dir

from .config import CONFIG_NAME, HubConfig
from .db import upgrade
from .errors import BackupError
from .service import Hub, now

FORMAT = "caravane-hub-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")
BATCH_ROWS = 1000
PIECE = 1024 * 1024


@dataclass
class BackupResult:
    path: Path
    schema: str
    tables: dict[str, int]
    files: int
    bytes: int
    linked: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "schema": self.schema,
            "tables": self.tables,
            "files": self.files,
            "bytes": self.bytes,
            "linked": self.linked,
        }


@dataclass
class RestoreResult:
    data_dir: Path
    config: Path
    database_url: str
    schema: str
    tables: dict[str, int]
    files: int
    verify_problems: list[str] = field(default_factory=list)
    #: releases in the repository whose database row the snapshot missed, recorded now
    recorded: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recorded_releases": self.recorded,
            "data_dir": str(self.data_dir),
            "config": str(self.config),
            "database": _safe_url(self.database_url),
            "schema": self.schema,
            "tables": self.tables,
            "files": self.files,
            "verify_ok": not self.verify_problems,
            "verify_problems": self.verify_problems,
        }


# --------------------------------------------------------------------------- backup


def backup(hub: Hub, dest: Path, config_path: Path, link: bool = True) -> BackupResult:
    """Write a backup of ``hub`` to ``dest`` (a new or empty folder).

    Written to a temporary folder beside ``dest`` and renamed at the end: an interrupted
    backup leaves no folder that looks complete.
    """
    dest = Path(dest).absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} exists and is not empty: give a new folder for the backup")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        sums: list[tuple[str, str]] = []
        with hub.repo.lock():
            schema, tables = _dump_database(hub, work / "database", sums)
            key_modes = _copy_keys(keys_dir(hub.repo.path), work / "keys", sums)
            files, nbytes, linked = _copy_tree(hub.repo.path, work / "repo", "repo", link, sums)
        folders = sorted(
            p.relative_to(work / "repo").as_posix()
            for p in (work / "repo").rglob("*")
            if p.is_dir()
        )
        shutil.copy2(config_path, work / CONFIG_NAME)
        sums.append((_sha256(work / CONFIG_NAME), CONFIG_NAME))
        sums_text = "".join(f"{h}  {p}\n" for h, p in sums)
        (work / SUMS).write_text(sums_text, encoding="utf-8")
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "created": now().isoformat(),
            "schema": schema,
            "dialect": hub.db.engine.dialect.name,
            "tables": tables,
            "key_modes": key_modes,
            "repo_folders": folders,
            "files": len(sums),
            "sums_sha256": hashlib.sha256(sums_text.encode()).hexdigest(),
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.sync()  # one flush for the whole folder: an fsync per file costs minutes at 1M files
        if dest.exists():
            dest.rmdir()
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return BackupResult(dest, schema, tables, len(sums), nbytes, linked)


def _dump_database(hub: Hub, out: Path, sums: list[tuple[str, str]]) -> tuple[str, dict[str, int]]:
    out.mkdir()
    with _snapshot(hub.db.engine) as conn:
        md = MetaData()
        md.reflect(conn)
        if "alembic_version" not in md.tables:
            raise BackupError("the hub's database has no schema revision: run a hub command first")
        schema = str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar())
        tables: dict[str, int] = {}
        for table in md.sorted_tables:
            if table.name == "alembic_version":
                continue
            path = out / f"{table.name}.jsonl"
            h = hashlib.sha256()
            n = 0
            order = list(table.primary_key.columns) or list(table.columns)
            rows = conn.execution_options(stream_results=True, yield_per=BATCH_ROWS).execute(
                select(table).order_by(*order)
            )
            with open(path, "wb") as fh:
                for row in rows.mappings():
                    line = json.dumps(
                        {k: _encode(v) for k, v in row.items()}, ensure_ascii=False
                    ).encode()
                    fh.write(line + b"\n")
                    h.update(line + b"\n")
                    n += 1
            tables[table.name] = n
            sums.append((h.hexdigest(), f"database/{table.name}.jsonl"))
    return schema, tables


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection that sees the database as it was at one instant, for every table."""
    if engine.dialect.name == "sqlite":
        src = make_url(str(engine.url)).database
        if not src:
            raise BackupError("an in-memory SQLite database cannot be backed up")
        with tempfile.TemporaryDirectory(prefix="caravane-backup-") as tmp:
            copy = Path(tmp) / "snapshot.db"
            _sqlite_copy(Path(src), copy)
            snap = create_engine(f"sqlite:///{copy}")
            try:
                with snap.connect() as conn:
                    yield conn
            finally:
                snap.dispose()
        return
    with (
        engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
        conn.begin(),
    ):
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET TRANSACTION READ ONLY"))
        yield conn


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # the hub stores UTC; SQLite hands it back without a zone
            value = value.replace(tzinfo=UTC)
        return {"$datetime": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, bytes | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, dict | list):
        return {"$json": value}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        ((tag, v),) = value.items()
        if tag == "$datetime":
            return datetime.fromisoformat(v)
        if tag == "$date":
            return date.fromisoformat(v)
        if tag == "$bytes":
            return base64.b64decode(v)
        if tag == "$decimal":
            return Decimal(v)
        if tag == "$json":
            return v
    return value


def _copy_keys(src: Path, dest: Path, sums: list[tuple[str, str]]) -> dict[str, int]:
    """The keys folder, file by file, with each file's mode kept (and recorded)."""
    modes: dict[str, int] = {}
    if not src.is_dir():
        return modes
    dest.mkdir(mode=0o700)
    modes["."] = stat.S_IMODE(src.stat().st_mode)
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copyfile(path, target)
        mode = stat.S_IMODE(path.stat().st_mode)
        os.chmod(target, mode)
        modes[rel] = mode
        sums.append((_sha256(target), f"keys/{rel}"))
    return modes


def _copy_tree(
    src: Path, dest: Path, prefix: str, link: bool, sums: list[tuple[str, str]]
) -> tuple[int, int, int]:
    """Copy a repository folder; returns (files, bytes, hard links made).

    SQLite files first, then the rest: an index copied before the data files it points
    into (append-only segments, objects) never names bytes the copy lacks.
    """
    dest.mkdir()
    same_fs = link and os.stat(src).st_dev == os.stat(dest).st_dev
    databases: list[str] = []
    others: list[str] = []
    for root, dirs, names in os.walk(src):
        dirs.sort()
        rel_root = Path(root).relative_to(src)
        for d in dirs:
            (dest / rel_root / d).mkdir(exist_ok=True)
        for name in sorted(names):
            if _skipped(name, names):
                continue
            rel = (rel_root / name).as_posix()
            (databases if _is_sqlite(Path(root) / name) else others).append(rel)
    files = nbytes = linked = 0
    sqlite_files = set(databases)
    for rel in databases + others:
        source, target = src / rel, dest / rel
        if rel in sqlite_files:
            _sqlite_copy(source, target)
        elif same_fs and immutable(rel) and _link(source, target):
            linked += 1
        else:
            shutil.copy2(source, target)
        files += 1
        nbytes += target.stat().st_size
        sums.append((_sha256(target), f"{prefix}/{rel}"))
    return files, nbytes, linked


def immutable(rel: str) -> bool:
    """Files that never change once written, so a hard link is as good as a copy.

    A release's manifest and a pack from A to B are fixed by the format; under
    ``objects/`` only files named by their SHA-256 are (a segment file that grows is not).
    """
    if rel.startswith(("manifests/", "packs/")):
        return True
    name = rel.rsplit("/", 1)[-1].split(".", 1)[0]
    return (
        rel.startswith("objects/")
        and len(name) == 64
        and all(c in "0123456789abcdef" for c in name)
    )


def _link(source: Path, target: Path) -> bool:
    """A hard link, or False where the file system refuses one (then the file is copied)."""
    try:
        os.link(source, target)
    except OSError:
        return False
    return True


def _skipped(name: str, siblings: list[str]) -> bool:
    """The lock file, files being written (objects' ``.tmp``, packs' ``.part``: renamed into
    place when whole), and SQLite's own side files (the backup API copies their content)."""
    if name == ".lock" or (name.startswith(".") and name.endswith((".tmp", ".part"))):
        return True
    return any(name.endswith(side) and name[: -len(side)] in siblings for side in SQLITE_SIDECARS)


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _sqlite_copy(src: Path, dest: Path) -> None:
    """A consistent copy of a live SQLite database (its WAL included), by its backup API."""
    source = sqlite3.connect(src)
    try:
        target = sqlite3.connect(dest)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while piece := fh.read(PIECE):
            h.update(piece)
    return h.hexdigest()


# --------------------------------------------------------------------------- restore


def read_backup(src: Path) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The manifest and the checksum list of a backup, refused if they do not hold."""
    src = Path(src)
    try:
        manifest = json.loads((src / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(
            f"{src}: no {MANIFEST}; not a Caravane hub backup, or one that did not finish"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackupError(f"{src / MANIFEST}: damaged ({exc}); use another backup") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{src / MANIFEST}: not a Caravane hub backup manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise BackupError(
            f"{src}: backup format version {manifest.get('version')}, this Caravane reads "
            f"version {FORMAT_VERSION}: restore it with the Caravane that made it"
        )
    try:
        sums_bytes = (src / SUMS).read_bytes()
    except FileNotFoundError:
        raise BackupError(f"{src}: {SUMS} is missing; the backup is incomplete") from None
    if hashlib.sha256(sums_bytes).hexdigest() != manifest.get("sums_sha256"):
        raise BackupError(f"{src / SUMS}: does not match {MANIFEST}; the backup is damaged")
    sums: list[tuple[str, str]] = []
    for line in sums_bytes.decode("utf-8").splitlines():
        digest, _, rel = line.partition("  ")
        _check_rel(src, rel)
        sums.append((digest, rel))
    return manifest, sums


def _check_rel(src: Path, rel: str) -> None:
    parts = rel.split("/")
    if (
        not rel
        or rel.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or not (rel == CONFIG_NAME or parts[0] in ("database", "keys", "repo"))
    ):
        raise BackupError(f"{src / SUMS}: bad path {rel!r}; the backup is damaged or forged")


def verify_backup(src: Path) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Check every file of a backup against its checksum; the first mismatch is refused."""
    manifest, sums = read_backup(src)
    for digest, rel in sums:
        path = Path(src) / rel
        if not path.is_file():
            raise BackupError(f"backup damaged: {path} is missing; nothing was restored")
        if _sha256(path) != digest:
            raise BackupError(
                f"backup damaged: {path} does not match its checksum in {SUMS}; nothing was "
                "restored (use another backup)"
            )
    return manifest, sums


def restore(
    src: Path, data_dir: Path, database_url: str = "", force: bool = False
) -> RestoreResult:
    """Restore a backup into ``data_dir`` (and ``database_url``, default SQLite there)."""
    src = Path(src).absolute()
    data_dir = Path(data_dir).absolute()
    manifest, sums = verify_backup(src)
    cfg = HubConfig.load(src / CONFIG_NAME)
    cfg.data_dir, cfg.database_url = data_dir, database_url
    if data_dir.exists() and not data_dir.is_dir():
        raise BackupError(f"{data_dir} is a file, not a folder")
    made = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)  # an SQLite database there needs the folder
    engine = create_engine(cfg.url)
    try:
        held = _target_holds(cfg, engine)
        if held and not force:
            raise BackupError(
                f"the target already holds a hub ({'; '.join(held)}): restore into an empty "
                "folder and database, or add --force to replace it"
            )
        if held:
            _clear(cfg, engine, set(manifest.get("tables", {})) | {"alembic_version"})
    except BaseException:
        engine.dispose()
        if made:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    engine.dispose()
    schema = str(manifest["schema"])
    tables = _load_database(src, cfg.url, schema, manifest.get("tables", {}))
    for folder in manifest.get("repo_folders", []):
        _check_rel(src, f"repo/{folder}")
        (cfg.repo_dir / folder).mkdir(parents=True, exist_ok=True)
    _restore_files(src, sums, data_dir, keys_dir(cfg.repo_dir), manifest.get("key_modes", {}))
    config_path = data_dir / CONFIG_NAME
    config_path.write_text(cfg.to_toml(), encoding="utf-8")
    os.chmod(config_path, 0o600)
    report = Repository(cfg.repo_dir).verify()
    hub = Hub(cfg)
    try:
        recorded = hub.record_missing_releases("restore")
    finally:
        hub.close()
    return RestoreResult(
        data_dir,
        config_path,
        cfg.url,
        schema,
        tables,
        len(sums),
        list(report.problems),
        recorded,
    )


def _target_holds(cfg: HubConfig, engine: Engine) -> list[str]:
    """What in the target would be overwritten (empty: nothing)."""
    held = []
    if any(cfg.data_dir.iterdir()):
        held.append(f"{cfg.data_dir} is not empty")
    try:
        names = inspect(engine).get_table_names()
    except Exception as exc:
        raise BackupError(f"cannot reach the target database: {exc}") from None
    if names:
        held.append(f"database {_safe_url(cfg.url)} has {len(names)} tables")
    return held


def _clear(cfg: HubConfig, engine: Engine, tables: set[str]) -> None:
    """Remove the hub being replaced: its repository, keys, cache, config, and its tables
    (only the hub's: a PostgreSQL database shared with something else keeps the rest)."""
    for path in (cfg.repo_dir, keys_dir(cfg.repo_dir), cfg.data_dir / "repo-cache"):
        shutil.rmtree(path, ignore_errors=True)
    (cfg.data_dir / CONFIG_NAME).unlink(missing_ok=True)
    md = MetaData()
    md.reflect(engine, only=lambda name, _md: name in tables)
    md.drop_all(engine)


def _load_database(src: Path, url: str, schema: str, counts: dict[str, int]) -> dict[str, int]:
    """Rows into a database migrated to the backup's revision, then upgraded to head."""
    try:
        upgrade(url, schema)
    except Exception as exc:
        raise BackupError(
            f"cannot create the database schema at revision {schema} ({exc}); the backup "
            "may come from a newer Caravane: restore it with that version"
        ) from None
    engine = create_engine(url)
    loaded: dict[str, int] = {}
    try:
        md = MetaData()
        md.reflect(engine)
        with engine.begin() as conn:
            for table in md.sorted_tables:
                if table.name == "alembic_version" or table.name not in counts:
                    continue
                loaded[table.name] = _load_table(conn, table, src / "database")
                if loaded[table.name] != counts[table.name]:
                    raise BackupError(
                        f"database/{table.name}.jsonl holds {loaded[table.name]} rows, the "
                        f"manifest says {counts[table.name]}; the backup is damaged"
                    )
            missing = set(counts) - set(md.tables)
            if missing:
                raise BackupError(
                    f"tables {', '.join(sorted(missing))} of the backup are not in schema "
                    f"{schema}; the backup is damaged"
                )
            if engine.dialect.name == "postgresql":
                _reset_sequences(conn, md)
    finally:
        engine.dispose()
    upgrade(url)
    return loaded


def _load_table(conn: Connection, table: Table, folder: Path) -> int:
    zoned = {
        c.name
        for c in table.columns
        if isinstance(c.type, types.DateTime) and getattr(c.type, "timezone", False)
    }
    naive = {c.name for c in table.columns if isinstance(c.type, types.DateTime)} - zoned
    n = 0
    batch: list[dict[str, Any]] = []
    with open(folder / f"{table.name}.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = {k: _decode(v) for k, v in json.loads(line).items()}
            for k in naive:  # SQLite: keep UTC wall time, as the hub writes it
                if isinstance(row.get(k), datetime) and row[k].tzinfo is not None:
                    row[k] = row[k].astimezone(UTC).replace(tzinfo=None)
            batch.append(row)
            n += 1
            if len(batch) >= BATCH_ROWS:
                conn.execute(table.insert(), batch)
                batch = []
    if batch:
        conn.execute(table.insert(), batch)
    return n


def _reset_sequences(conn: Connection, md: MetaData) -> None:
    """Rows came with their ids: move each serial counter past the highest one."""
    for table in md.sorted_tables:
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or not isinstance(pk[0].type, types.Integer):
            continue
        seq = conn.execute(
            text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": pk[0].name}
        ).scalar()
        if seq:
            conn.execute(
                text(
                    f'SELECT setval(:s, COALESCE((SELECT MAX("{pk[0].name}") FROM '
                    f'"{table.name}"), 0) + 1, false)'
                ),
                {"s": seq},
            )


def _restore_files(
    src: Path,
    sums: list[tuple[str, str]],
    data_dir: Path,
    keys: Path,
    key_modes: dict[str, int],
) -> None:
    repo = data_dir / "repo"
    same_fs = os.stat(src).st_dev == os.stat(data_dir).st_dev
    for _digest, rel in sums:
        top, _, tail = rel.partition("/")
        if top == "repo":
            target = repo / tail
        elif top == "keys":
            target = keys / tail
        else:
            continue  # database rows are loaded, hub.toml is written anew
        target.parent.mkdir(parents=True, exist_ok=True)
        source = src / rel
        linkable = top == "repo" and same_fs and immutable(tail)
        if not (linkable and _link(source, target)):
            shutil.copy2(source, target)
        if top == "keys":
            os.chmod(target, int(key_modes.get(tail, 0o600)))
    if keys.is_dir():
        os.chmod(keys, int(key_modes.get(".", 0o700)))
    (repo / "objects").mkdir(parents=True, exist_ok=True)


def _safe_url(url: str) -> str:
    """A database URL without its password, for messages and --json."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
