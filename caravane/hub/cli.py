"""``caravane hub ...`` and ``caravane publish``: run a hub, and publish to one.

Each command imports the parts it drives (web server, database, scheduler, HTTP client) when
it runs, not when ``caravane`` starts: every ``caravane`` invocation loads this module to
list its commands, and a centre's ``caravane node ...`` should not pay a second of start-up
for the hub's stack. None of these imports is there to break a cycle: ``hub.cli`` sits on
top of ``hub`` and imports only :mod:`caravane.output` from the command line package.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

from caravane import logs, system_paths
from caravane.output import EXIT_VERIFY, emit, fail, handle_errors, json_option, progress_bar

if TYPE_CHECKING:
    from .service import Hub

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_DATA = system_paths.LOCAL_HUB_DIR


def config_option(func: Callable[P, R]) -> Callable[P, R]:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=lambda: str(system_paths.hub_config()),
        show_default="$CARAVANE_HUB_CONFIG, else /etc/caravane/hub.toml on a system install, "
        "else caravane-hub/hub.toml",
        help="The hub's TOML configuration.",
    )(func)


def load(config_path: Path) -> Hub:
    """The hub of a configuration file; refused unless its database has this code's schema.

    Nothing migrates here: with several hub processes on one database the schema changes
    once, when an operator runs `caravane hub migrate`, never as a side effect.
    """
    from .config import HubConfig
    from .db import check_schema, require_driver
    from .service import Hub

    cfg = HubConfig.load(config_path)
    require_driver(cfg.url)  # the missing extra first: it is what the operator must fix
    h = Hub(cfg)
    try:
        check_schema(h.db.engine, config_path)
    except BaseException:
        h.close()
        raise
    return h


@click.group()
def hub() -> None:
    """Run the national hub: repository, API, fleet, mirrors."""


@hub.command("init")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: str(system_paths.hub_data_dir()),
    show_default="/var/lib/caravane/hub on a system install, else caravane-hub",
    help="The hub's data folder: repository, keys, SQLite database.",
)
@click.option(
    "--config",
    "config_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write hub.toml (default: /etc/caravane/hub.toml on a system install, "
    "else DATA/hub.toml).",
)
@click.option("--database-url", default="", help="Default: SQLite in the data folder.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8470, show_default=True)
@click.option("--public-url", default="", help="URL centres use to reach this hub.")
@click.option(
    "--root-key-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the root key, once (default: DATA/offline-root-key.pem); move it "
    "to a USB key kept in a safe, the hub runs without it.",
)
@json_option
@handle_errors
def hub_init(
    data_dir: Path,
    config_out: Path | None,
    database_url: str,
    host: str,
    port: int,
    public_url: str,
    root_key_out: Path | None,
    as_json: bool,
) -> None:
    """Create a hub: configuration, signed repository, database, first admin token.

    The repository (DATA/repo) is what the hub serves and mirrors; the release key goes to
    DATA/repo-keys beside it and the root key to ``--root-key-out``, never inside it.
    """
    from caravane.packs.hub_repository import HubRepository

    from .config import HubConfig
    from .db import migrate
    from .service import Hub

    system_paths.refuse_root_for_service_data(data_dir, "hub init")
    data_dir.mkdir(parents=True, exist_ok=True)
    cfg = HubConfig(
        data_dir=data_dir.resolve(),
        database_url=database_url,
        host=host,
        port=port,
        public_url=public_url,
    )
    path = config_out or system_paths.hub_init_config(data_dir)
    if path.exists():
        raise click.ClickException(f"{path} exists: a hub is already configured there")
    path.parent.mkdir(parents=True, exist_ok=True)
    root_out = (root_key_out or cfg.data_dir / "offline-root-key.pem").absolute()
    made = not (cfg.repo_dir / "repo.json").exists()
    if made:
        HubRepository.init(cfg.repo_dir, root_key_out=root_out)
    migrate(cfg.url)  # a new hub is ready to serve: its database has the current schema
    path.write_text(cfg.to_toml(), encoding="utf-8")
    os.chmod(path, 0o640)  # a database URL may carry a password
    token = Hub(cfg).create_token("admin", "admin", "init")
    root_line = (
        f"root key: {root_out}; move it NOW to a USB key kept in a safe (needed only for "
        "`caravane hub rotate-keys`), and delete it here\n"
        if made
        else ""
    )
    emit(
        as_json,
        {
            "ok": True,
            "config": str(path),
            "admin_token": token,
            "url": cfg.base_url,
            "root_key": str(root_out) if made else None,
        },
        f"hub created in {data_dir}\nconfiguration: {path}\n"
        f"admin token (shown once, keep it safe): {token}\n{root_line}"
        f"next: caravane hub serve --config {path}",
    )


@hub.command("migrate")
@config_option
@json_option
@handle_errors
def hub_migrate(config_path: Path, as_json: bool) -> None:
    """Bring the database's schema to this version of Caravane (run after each upgrade).

    Locked (an advisory lock on PostgreSQL, a file lock beside a SQLite database), so two
    at once are safe: the second waits and finds nothing left to do. Other hub commands
    refuse a database whose schema is older than the code until this has run.
    """
    from .config import HubConfig
    from .db import migrate

    cfg = HubConfig.load(config_path)

    def waiting() -> None:
        click.echo("waiting for another `caravane hub migrate` to finish...", err=True)

    before, after = migrate(cfg.url, on_wait=waiting)
    changed = before != after
    emit(
        as_json,
        {"ok": True, "from": before, "to": after, "changed": changed},
        f"database migrated from revision {before or 'none (empty)'} to {after}"
        if changed
        else f"database already at revision {after}; nothing to do",
    )


@hub.command("rotate-keys")
@config_option
@click.option(
    "--root-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="The current root key (from the USB key in the safe).",
)
@click.option(
    "--new-root-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Replace the root key with this one (`caravane keys generate`); keep it offline.",
)
@click.option(
    "--new-release-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Replace the release key (after a compromise) with this one.",
)
@json_option
@handle_errors
def hub_rotate_keys(
    config_path: Path,
    root_key: Path,
    new_root_key: Path | None,
    new_release_key: Path | None,
    as_json: bool,
) -> None:
    """Rotate the root key, the release key or both, and sign every channel again.

    Publishes root N+1 signed by the current root key (and the new one), installs the new
    release key, and signs each channel's latest files as a new version with it: centres
    follow from any carrier, and those holding a revoked key's versions move forward
    (docs/TRUST.md, "compromised-key drill"). Stop `hub serve` first or restart it after.
    """
    from caravane.protocol.keys import PrivateKey

    h = load(config_path)
    try:
        result = h.repo.rotate_keys(
            PrivateKey.load(root_key),
            PrivateKey.load(new_root_key) if new_root_key else None,
            PrivateKey.load(new_release_key) if new_release_key else None,
        )
        record_rotation(h, result.root_version, result.channels)
    finally:
        h.close()
    emit(
        as_json,
        {"ok": True, **result.to_dict()},
        f"root version {result.root_version} published; "
        + ", ".join(f"{c} now v{v}" for c, v in sorted(result.channels.items()))
        + "\nnext: `caravane hub mirror` and `caravane usb prepare` so every carrier has the "
        "new root; destroy the old keys",
    )


def record_rotation(h: Hub, root_version: int, channels: dict[str, int]) -> None:
    """Record the re-signed versions as releases, so the hub's pages and fleet see them."""
    from .models import Channel, Release
    from .service import now

    with h.db.session() as s:
        for channel, version in channels.items():
            if s.get(Channel, channel) is None:
                continue  # published with `repo publish`, not through the hub
            meta = h.repo.channel_meta(channel).releases[version]
            s.add(
                Release(
                    channel_id=channel,
                    version=version,
                    notes=f"signed again after key rotation (root version {root_version})",
                    published_by="rotate-keys",
                    published_at=now(),
                    size=meta.size,
                    files=meta.files,
                )
            )
        h.audit(s, "cli", "keys.rotate", root_version=root_version, channels=channels)


@hub.command("serve")
@config_option
@click.option("--no-scheduler", is_flag=True, help="Do not run scheduled jobs here.")
@click.option(
    "--access-log/--no-access-log",
    default=False,
    help="Log every request (costs about a third of the request rate; off by default).",
)
@click.option(
    "--port",
    type=int,
    default=None,
    help="Listen on this port instead of hub.toml's (several processes on one host).",
)
@logs.options
@handle_errors
def hub_serve(
    config_path: Path,
    no_scheduler: bool,
    access_log: bool,
    port: int | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Serve the API and the repository (Ctrl-C to stop).

    Several processes, on one host or several, may serve one database and data folder
    behind one address (docs/OPERATIONS.md): sessions, publish jobs and pack builds are
    shared through the database.
    """
    from aiohttp import web

    from .app import make_app, server_options

    h = load(config_path)  # before logging is set up: a refusal is its one error line
    logs.setup(log_level or h.config.log_level, log_format or h.config.log_format)
    if port is not None:
        h.config.port = port
    app = make_app(h.config, h, scheduler=False if no_scheduler else None)
    logging.getLogger("caravane.hub").info(
        "hub serving on %s (repository under /repo/, metrics at /metrics)", h.config.base_url
    )
    web.run_app(
        app,
        host=h.config.host,
        port=h.config.port,
        print=None,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
        **server_options(h.config),
    )


@hub.command("backup")
@config_option
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--copy",
    "copy_all",
    is_flag=True,
    help="Copy every file, even on the hub's own file system (default: hard-link the "
    "files that never change, which costs no space there).",
)
@json_option
@handle_errors
def hub_backup(config_path: Path, dest: Path, copy_all: bool, as_json: bool) -> None:
    """Back up the database, the release key and the repository into DEST, as one snapshot.

    Safe while `hub serve` runs: publishing waits for the backup (it takes the
    repository's writer lock), uploads and centres' reports go on. The root key is not in
    a backup; keep it on its USB key. Restore with `caravane hub restore DEST --data DIR`.
    """
    from .backup import backup

    h = load(config_path)
    try:
        res = backup(h, dest, config_path, link=not copy_all)
    finally:
        h.close()
    rows = sum(res.tables.values())
    emit(
        as_json,
        {"ok": True, **res.to_dict()},
        f"backup written to {res.path}: {rows} database rows in {len(res.tables)} tables, "
        f"{res.files} files ({res.bytes / 1e6:.1f} MB of repository, {res.linked} hard-linked)"
        f"\ncheck it any time with `sha256sum -c SHA256SUMS` in {res.path}",
    )


@hub.command("restore")
@click.argument("src", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The hub's new data folder (empty); hub.toml is written there.",
)
@click.option("--database-url", default="", help="Default: SQLite in the data folder.")
@click.option("--force", is_flag=True, help="Replace the hub already in the data folder/database.")
@json_option
@handle_errors
def hub_restore(src: Path, data_dir: Path, database_url: str, force: bool, as_json: bool) -> None:
    """Restore a backup made by `caravane hub backup` into a data folder and a database.

    Every checksum is verified before anything is written; the restored repository is then
    verified like `caravane repo verify` (exit 3 if it finds problems). The database may
    be another engine than the backed-up one (SQLite to PostgreSQL, or back).
    """
    from .backup import restore

    res = restore(src, data_dir, database_url, force)
    if res.verify_problems:
        emit(as_json, {"ok": False, **res.to_dict()}, "\n".join(res.verify_problems))
        fail(
            f"restored, but `repo verify` found {len(res.verify_problems)} problems in "
            f"{data_dir / 'repo'}",
            False,
            EXIT_VERIFY,
        )
    rows = sum(res.tables.values())
    emit(
        as_json,
        {"ok": True, **res.to_dict()},
        f"hub restored into {res.data_dir}: {rows} database rows, {res.files} files, "
        f"repository verified\nnext: caravane hub serve --config {res.config}",
    )


@hub.group("token")
def token() -> None:
    """API tokens (stored hashed)."""


@token.command("create")
@config_option
@click.option("--name", required=True)
@click.option("--role", type=click.Choice(["admin", "curator", "field_agent"]), required=True)
@json_option
@handle_errors
def token_create(config_path: Path, name: str, role: str, as_json: bool) -> None:
    """Make a token for a person or a script (shown once)."""
    t = load(config_path).create_token(name, role)
    emit(as_json, {"ok": True, "token": t, "role": role}, t)


@token.command("list")
@config_option
@json_option
@handle_errors
def token_list(config_path: Path, as_json: bool) -> None:
    """Every token: id, name, role, when made, revoked or not (never the secret)."""
    rows = load(config_path).list_tokens()
    lines = [f"{'id':>5} {'name':24} {'role':12} {'created':26} state"]
    for r in rows:
        lines.append(
            f"{r['id']:>5} {r['name'][:24]:24} {r['role']:12} {(r['created'] or '-')[:26]:26} "
            + ("revoked" if r["revoked"] else "active")
        )
    emit(as_json, {"ok": True, "tokens": rows}, "\n".join(lines))


@token.command("revoke")
@config_option
@click.argument("which", metavar="NAME|ID")
@click.option("--all", "every", is_flag=True, help="Revoke every active token of that name.")
@json_option
@handle_errors
def token_revoke(config_path: Path, which: str, every: bool, as_json: bool) -> None:
    """Revoke a token by its id or name: the API answers 401 to it and its sessions end."""
    ids = load(config_path).revoke_token(which, "cli", every)
    emit(
        as_json,
        {"ok": True, "revoked": ids},
        f"revoked token {', '.join(map(str, ids))}; it no longer opens the API or the pages",
    )


@hub.group("channel")
def channel() -> None:
    """Channels of content."""


@channel.command("add")
@config_option
@click.argument("channel_id")
@click.option("--title", default=None)
@click.option("--language", default="fr", show_default=True)
@click.option("--description", default="")
@click.option("--keep-last", type=int, default=None, help="Releases kept (retention).")
@json_option
@handle_errors
def channel_add(
    config_path: Path,
    channel_id: str,
    title: str | None,
    language: str,
    description: str,
    keep_last: int | None,
    as_json: bool,
) -> None:
    """Create a channel."""
    from .auth import Principal

    h = load(config_path)
    doc: dict[str, Any] = {
        "id": channel_id,
        "title": title or channel_id,
        "language": language,
        "description": description,
    }
    if keep_last:
        doc["keep_last"] = keep_last
    out = h.create_channel(Principal("cli", "admin"), doc)
    emit(as_json, dict(out, ok=True), f"channel {channel_id} created")


@hub.group("centre")
def centre_group() -> None:
    """Centres: register them (their state: `caravane hub status`)."""


@centre_group.command("add")
@config_option
@click.argument("name")
@click.option("--region", default="")
@click.option("--channels", default="", help="Comma-separated subscriptions.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the enrolment file for the centre.",
)
@json_option
@handle_errors
def centre_add(
    config_path: Path, name: str, region: str, channels: str, out: Path, as_json: bool
) -> None:
    """Register a centre and write its enrolment file (contains a one-time code)."""
    from .auth import Principal

    h = load(config_path)
    doc = h.register_centre(
        Principal("cli", "admin"), {"name": name, "region": region, "channels": channels}
    )
    out.write_text(json.dumps(doc, ensure_ascii=False, indent=2), encoding="utf-8")
    os.chmod(out, 0o600)
    emit(
        as_json,
        {"ok": True, "node_id": doc["node_id"], "enrolment": str(out)},
        f"centre {name} registered as {doc['node_id']}; give {out} to its operator "
        f"(`caravane node init --enrol {out.name}`)",
    )


# `caravane hub node add` was the first name: kept, hidden, for scripts that still use it
hub.add_command(
    click.Group(
        "node",
        commands={"add": centre_add},
        help="Deprecated: use `caravane hub centre`.",
        hidden=True,
        deprecated=True,
    )
)


@hub.command("status")
@config_option
@click.option("--region", default=None)
@click.option("--behind", is_flag=True, help="Only centres behind the latest releases.")
@json_option
@handle_errors
def hub_status(config_path: Path, region: str | None, behind: bool, as_json: bool) -> None:
    """The fleet: one line per centre."""
    h = load(config_path)
    rows = h.fleet(region, behind)
    lines = [f"{'centre':24} {'region':12} {'installed':24} {'behind':12} {'route':8} last contact"]
    for r in rows:
        inst = ",".join(f"{c}:{v}" for c, v in sorted(r["installed"].items())) or "-"
        beh = ",".join(f"{c}+{v}" for c, v in sorted(r["behind"].items())) or "up to date"
        lines.append(
            f"{r['name'][:24]:24} {r['region'][:12]:12} {inst[:24]:24} {beh[:12]:12} "
            f"{(r['last_route'] or '-'):8} {r['last_contact'] or 'never'}"
        )
    emit(as_json, {"ok": True, "nodes": rows}, "\n".join(lines))


def _span(seconds: int) -> str:
    """A duration as an operator reads it: 40 s, 12 min, 5 h 12 min, 3 d 4 h."""
    if seconds < 60:
        return f"{max(seconds, 0)} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours < 1:
        return f"{minutes} min"
    if days < 1:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


@hub.command("uploads")
@config_option
@json_option
@handle_errors
def hub_uploads(config_path: Path, as_json: bool) -> None:
    """Uploads still open (publishes in progress), least recently active first.

    Each keeps its objects from collection until it is committed, or until it has been
    idle for `upload_expiry_days` (hub.toml) and the `uploads` job expires it.
    """
    h = load(config_path)
    try:
        rows = h.open_uploads()
        days = h.config.upload_expiry_days
    finally:
        h.close()
    lines = [
        f"{'upload':32} {'channel':16} {'by':16} {'age':>11} {'idle':>11} {'objects':>8} expires"
    ]
    for r in rows:
        left = days * 86400 - r["idle_seconds"]
        expires = f"in {_span(left)}" if left > 0 else "at the next uploads job"
        if not days:
            expires = "never"
        lines.append(
            f"{r['upload']:32} {r['channel'][:16]:16} {r['by'][:16]:16} "
            f"{_span(r['age_seconds']):>11} {_span(r['idle_seconds']):>11} {r['objects']:>8} "
            f"{expires}"
        )
    rule = (
        f"an upload idle for {days} days expires (upload_expiry_days)"
        if days
        else "uploads never expire (upload_expiry_days = 0)"
    )
    lines.append(f"{len(rows)} open uploads; {rule}")
    emit(as_json, {"ok": True, "upload_expiry_days": days, "uploads": rows}, "\n".join(lines))


@hub.group("mirror")
def mirror() -> None:
    """Copy the static repository to mirrors."""


@mirror.command("push")
@config_option
@click.argument("dest")
@click.option("--delete", is_flag=True, help="Remove files the hub no longer has.")
@json_option
@handle_errors
def mirror_push(config_path: Path, dest: str, delete: bool, as_json: bool) -> None:
    """Copy the repository to DEST (folder, host:path or rsync://), metadata last."""
    from .config import HubConfig
    from .mirror import push

    cfg = HubConfig.load(config_path)
    done = push(cfg.repo_dir, dest, delete)
    emit(
        as_json,
        {"ok": True, "dest": dest, "copied": done},
        f"mirror {dest} updated ({', '.join(done)}); metadata copied last",
    )


@hub.command("jobs")
@config_option
@click.argument("names", nargs=-1)
@json_option
@logs.options
@handle_errors
def hub_jobs(
    config_path: Path,
    names: tuple[str, ...],
    as_json: bool,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Run scheduled jobs once now (all, or those named); they log as under `hub serve`."""
    from .jobs import JobRunner

    h = load(config_path)
    logs.setup(log_level or h.config.log_level, log_format or h.config.log_format)
    runner = JobRunner(h)
    jobs: dict[str, Callable[[], object]] = {
        "packs": runner.build_recent_packs,
        "uploads": runner.expire_uploads,
        "gc": runner.collect_garbage,
        "expiry": runner.refresh_expiring,
        "stale": runner.flag_stale_centres,
    }
    out: dict[str, object] = {}
    for name in names or tuple(jobs):
        if name not in jobs:
            raise click.ClickException(f"unknown job {name}; use {', '.join(jobs)}")
        out[name] = jobs[name]()
    emit(as_json, {"ok": True, "results": out}, "\n".join(f"{k}: {v}" for k, v in out.items()))


@click.command("publish")
@click.argument("channel_id")
@click.argument("folder", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--hub", "hub_url", envvar="CARAVANE_HUB", required=True, help="Hub URL (or $CARAVANE_HUB)."
)
@click.option("--token", envvar="CARAVANE_TOKEN", required=True, help="Or $CARAVANE_TOKEN.")
@click.option("--notes", default="")
@click.option("--title", default=None)
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Local cache of what the folder's files were made of (default ~/.cache/caravane/publish).",
)
@json_option
@handle_errors
def publish(
    channel_id: str,
    folder: Path,
    hub_url: str,
    token: str,
    notes: str,
    title: str | None,
    cache: Path | None,
    as_json: bool,
) -> None:
    """Publish FOLDER as the next release of CHANNEL on a hub (resumable upload)."""
    from .client import HubClient

    with progress_bar(None, "uploading", as_json) as bar:
        out = asyncio.run(
            HubClient(hub_url, token).publish(
                channel_id, folder, notes=notes, title=title, cache=cache, progress=bar
            )
        )
    emit(
        as_json,
        dict(out, ok=True),
        f"published {channel_id} version {out.get('version')} on {hub_url}: "
        f"{out['sent_objects']} objects uploaded, the rest the hub had already",
    )
