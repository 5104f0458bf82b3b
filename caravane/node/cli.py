"""``caravane node ...``: set up a centre, sync it, serve it, and look after it."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from caravane import logs, system_paths
from caravane.i18n import FALLBACKS, Translator, size_text
from caravane.output import emit, fail, handle_errors, json_option, lang_option, progress_bar

from .config import UPSTREAM_KINDS, UpstreamConfig

if TYPE_CHECKING:
    from .agent import NodeAgent
    from .sync import ChannelResult

DEFAULT_DIR = str(system_paths.LOCAL_NODE_DIR)
F = TypeVar("F", bound=Callable[..., Any])


def dir_option(func: F) -> F:
    return click.option(
        "--dir",
        "-d",
        "data_dir",
        type=click.Path(path_type=Path),
        default=lambda: str(system_paths.node_location()),
        show_default="$CARAVANE_NODE_DIR, else /etc/caravane/node.toml on a system install, "
        "else caravane-node",
        help="The node's data folder (holds node.toml), or its node.toml.",
    )(func)


def _parse_upstream(text: str, i: int) -> UpstreamConfig:
    kind, sep, url = text.partition("=")
    if not sep or kind not in UPSTREAM_KINDS:
        raise click.BadParameter(
            f"{text!r}: write KIND=URL with KIND one of {', '.join(UPSTREAM_KINDS)}"
        )
    return UpstreamConfig(f"{kind}{i + 1}", kind, url, cost=(i + 1) * 10)


def disk_errors(func: F) -> F:
    """A full or read-only disk ends the command in one line and a non-zero exit.

    Placed under ``handle_errors``: SQLAlchemy/sqlite3 errors are not Caravane errors and
    would otherwise end in a traceback; ENOSPC/EROFS get the next step added.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .errors import DiskProblem, disk_problem

        try:
            return func(*args, **kwargs)
        except Exception as exc:
            line = disk_problem(exc, kwargs.get("data_dir") or "the node's data folder")
            if line is None:
                raise
            raise DiskProblem(line) from None

    return wrapper  # type: ignore[return-value]


def _open(data_dir: Path) -> NodeAgent:
    from .agent import NodeAgent

    return NodeAgent.open(data_dir)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group()
def node() -> None:
    """Run a community centre's node: pull releases, serve them, report back."""


@node.command("init")
@click.argument("data_dir", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.option(
    "--config",
    "config_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write node.toml (default: /etc/caravane/node.toml on a system install, "
    "else DATA_DIR/node.toml).",
)
@click.option(
    "--enrolment",
    "--enrol",
    "enrolment",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The enrolment file the hub's admin made for this centre.",
)
@click.option("--code", help="The one-time code, if not in the enrolment file.")
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    help="KIND=URL, cheapest first (http=hub URL, mirror=, peer=, rsync=, folder=). "
    "Default: the hub named in the enrolment file.",
)
@click.option("--offline", is_flag=True, help="Register later (by drive or when online).")
@click.option("--port", type=int, default=8480, show_default=True, help="Portal port.")
@json_option
@handle_errors
@disk_errors
def node_init(
    data_dir: Path | None,
    config_out: Path | None,
    enrolment: Path | None,
    code: str | None,
    upstreams: tuple[str, ...],
    offline: bool,
    port: int,
    as_json: bool,
) -> None:
    """Set up a node in DATA_DIR: pin the hub's keys, make this centre's key pair.

    DATA_DIR defaults to $CARAVANE_NODE_DIR, else /var/lib/caravane/node on a system install,
    else caravane-node.
    """
    from .agent import NodeAgent, read_enrolment

    if enrolment is None:
        fail("give the enrolment file with --enrolment (the hub admin makes it)", as_json)
        return
    doc = read_enrolment(enrolment)
    ups = [_parse_upstream(u, i) for i, u in enumerate(upstreams)] or None
    data_dir = data_dir or system_paths.node_data_dir()
    system_paths.refuse_root_for_service_data(data_dir, "node init")
    config_path = config_out or system_paths.node_init_config(data_dir)
    n = NodeAgent.init(
        data_dir,
        doc,
        code=code,
        upstreams=ups,
        offline=offline,
        port=port,
        config_path=config_path,
    )
    # the -d a later command needs: the folder, or node.toml where it lives outside it
    handle = n.config.data_dir if config_path.parent == data_dir else config_path.absolute()
    waiting = n.state.get("enrol_request")
    emit(
        as_json,
        {
            "ok": True,
            "node_id": n.config.node_id,
            "data_dir": str(n.config.data_dir),
            "config": str(config_path.absolute()),
            "channels": n.config.channels,
            "registered": not waiting,
        },
        f"node {n.config.node_id} ({n.config.name or 'unnamed'}) set up in {n.config.data_dir}\n"
        + (
            "registered with the hub\n"
            if not waiting
            else "registration waits: it goes with the first report (network or drive)\n"
        )
        + f"next: caravane node sync -d {handle}",
    )


@node.command("sync")
@dir_option
@click.option("--from", "sources", multiple=True, help="Extra upstream KIND=URL, tried first.")
@click.option("--force", is_flag=True, help="Also try upstreams set aside after failures.")
@click.option("--report/--no-report", default=True, help="Queue and send a report after.")
@click.option("-v", "--verbose", is_flag=True)
@json_option
@handle_errors
@disk_errors
def node_sync(
    data_dir: Path,
    sources: tuple[str, ...],
    force: bool,
    report: bool,
    verbose: bool,
    as_json: bool,
) -> None:
    """One sync pass now (ignores the sync windows; the agent honours them)."""
    from .upstream import make_upstream

    _setup_logging(verbose)
    n = _open(data_dir)
    extra = [
        make_upstream(_parse_upstream(s, i), n.config.partial_dir, n.config.timeout_seconds)
        for i, s in enumerate(sources)
    ]
    for up in extra:
        up.cost = -1
    with progress_bar(None, "sync", as_json) as bar:
        result = n.sync(extra=extra, ignore_demotion=force, progress=bar)
    sent_note, disk_line = "", None
    if report:
        from .errors import disk_problem

        try:
            n.make_report()
            sent = n.send_reports()
            sent_note = f"{sent} report(s) sent to the hub" if sent else ""
        except Exception as exc:  # an unreachable hub: the report waits in the queue
            disk_line = disk_problem(exc, data_dir)
            sent_note = f"report not made: {disk_line}" if disk_line else f"report queued ({exc})"
    lines = [_describe(c) for c in result.channels]
    if result.skipped:
        lines.append(f"nothing done: {result.skipped}")
    for name, n_bytes in result.received.items():
        lines.append(f"received {size_text(n_bytes, 'en')} from {name}")
    lines += [f"problem: {e}" for e in result.errors]
    if sent_note:
        lines.append(sent_note)
    emit(as_json, result.to_dict() | {"report": sent_note}, "\n".join(lines))
    if disk_line:
        sys.exit(1)
    if not result.complete:
        sys.exit(2 if result.ok else 1)


def _describe(c: ChannelResult) -> str:
    if c.status == "activated":
        return f"{c.channel}: version {c.active} is now served (came by {c.route})"
    if c.status == "up-to-date":
        return f"{c.channel}: up to date (version {c.active})"
    if c.status == "held":
        return f"{c.channel}: {c.message}"
    return f"{c.channel}: {c.status}: {c.message} (serving version {c.active})"


@node.command("status")
@dir_option
@json_option
@lang_option
@handle_errors
@disk_errors
def node_status(data_dir: Path, as_json: bool, t: Translator) -> None:
    """What this centre serves, what it waits for, and what to do next."""
    n = _open(data_dir)
    st = n.status()
    lines = [t("cli.status.node", id=st["node_id"], name=st["name"] or "").rstrip()]
    warning = st.get("freeze_warning")
    if warning:  # written in English and French by the agent; other languages read French
        lang = next(c for c in (t.lang, *FALLBACKS) if c in warning)
        lines.append(f"  {warning[lang]}")
    for c in st["channels"]:
        fresh = c["freshness"]["last_fresh_word"]
        lines.append(
            t(
                "cli.status.channel",
                channel=c["channel"],
                active=c["active"] if c["active"] is not None else "—",
                latest=c["latest_known"] if c["latest_known"] is not None else "—",
                state=t("cli.state." + c["state"]),
                fresh=fresh or t("cli.status.never"),
            )
        )
    lines.append(t("cli.status.disk", free=size_text(st["disk"]["free"], t.lang)))
    if st["reports_waiting"]:
        lines.append(t.n("cli.status.reports", st["reports_waiting"]))
    for h in st["upstream_health"]:
        if h["demoted_until"]:
            lines.append(
                t(
                    "cli.status.aside",
                    name=h["name"],
                    until=h["demoted_until"],
                    error=h["last_error"],
                )
            )
    emit(as_json, st, "\n".join(lines))


@node.command("rollback")
@click.argument("channel")
@dir_option
@json_option
@handle_errors
@disk_errors
def node_rollback(channel: str, data_dir: Path, as_json: bool) -> None:
    """Serve CHANNEL's previous release again; the newer one stays off until a newer one."""
    n = _open(data_dir)
    version = n.rollback(channel)
    emit(
        as_json,
        {"ok": True, "channel": channel, "active": version},
        f"{channel}: version {version} is served again",
    )


@node.command("report")
@dir_option
@click.option("--send/--no-send", default=True)
@json_option
@handle_errors
@disk_errors
def node_report(data_dir: Path, send: bool, as_json: bool) -> None:
    """Sign a report of this centre's state and send it (or queue it)."""
    n = _open(data_dir)
    seq, _ = n.make_report()
    sent = n.send_reports() if send else 0
    emit(
        as_json,
        {"ok": True, "seq": seq, "sent": sent},
        f"report {seq} " + ("sent" if sent else "queued"),
    )


@node.command("serve")
@dir_option
@click.option("--host", default=None, help="Default: from node.toml.")
@click.option("--port", type=int, default=None, help="Default: from node.toml.")
@logs.options
@handle_errors
@disk_errors
def node_serve(
    data_dir: Path,
    host: str | None,
    port: int | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Serve the centre's portal and the read-only store for peer centres."""
    from .books import kiwix_running
    from .config import NodeConfig
    from .serve import serve
    from .state import upgrade_apart

    upgrade_apart(NodeConfig.load(data_dir).db_url)  # long-running: alembic stays out
    n = _open(data_dir)
    logs.setup(log_level or n.config.log_level, log_format or n.config.log_format)
    with kiwix_running(n.config.data_dir, host or n.config.host, n.config.kiwix_port):
        serve(n, host or n.config.host, port or n.config.port, agent=False)


@node.command("run")
@dir_option
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option("--no-serve", is_flag=True, help="Only the agent, no portal.")
@logs.options
@handle_errors
@disk_errors
def node_run(
    data_dir: Path,
    host: str | None,
    port: int | None,
    no_serve: bool,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """The long-running agent: syncs in its windows, watches drives, serves the portal."""
    from .books import kiwix_running
    from .config import NodeConfig
    from .serve import serve
    from .service import run_agent
    from .state import upgrade_apart

    upgrade_apart(NodeConfig.load(data_dir).db_url)  # alembic stays out of this process
    n = _open(data_dir)
    logs.setup(log_level or n.config.log_level, log_format or n.config.log_format)
    if no_serve:
        run_agent(n)
    else:
        with kiwix_running(n.config.data_dir, host or n.config.host, n.config.kiwix_port):
            serve(n, host or n.config.host, port or n.config.port, agent=True)


@node.command("kiwix")
@dir_option
@click.option("--host", default=None, help="Default: from node.toml.")
@click.option("--port", type=int, default=None, help="Default: kiwix_port in node.toml, or 8481.")
@handle_errors
def node_kiwix(data_dir: Path, host: str | None, port: int | None) -> None:
    """Run kiwix-serve over the centre's ZIM books (in the foreground, for a service unit).

    The node rewrites kiwix/library.xml on every switch and kiwix-serve follows it without
    a restart (--monitorLibrary).
    """
    from .books import kiwix_command

    n = _open(data_dir)
    port = port or n.config.kiwix_port or 8481
    cmd = kiwix_command(n.config.data_dir, host or n.config.host, port)
    n.close()
    os.execv(cmd[0], cmd)


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False)
