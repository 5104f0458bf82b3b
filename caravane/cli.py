"""The ``caravane`` command: one entry point, a sub-command per job.

Every command prints what it did in plain words, or one JSON object with ``--json``; every
refusal is one line starting with ``error:`` and a non-zero exit status, so scripts and field
agents can both act on it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from protocol.errors import CaravaneError
from protocol.keys import PrivateKey

from . import __version__

EXIT_ERROR = 1
EXIT_VERIFY = 3


def emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True))
    else:
        click.echo(text)


def fail(message: str, as_json: bool = False, code: int = EXIT_ERROR) -> None:
    if as_json:
        click.echo(json.dumps({"ok": False, "error": message}, ensure_ascii=False))
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every Caravane error into one ``error:`` line and a non-zero exit."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CaravaneError as exc:
            fail(str(exc), bool(kwargs.get("as_json")))
        except OSError as exc:
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            fail(f"{exc.strerror or exc}{where}", bool(kwargs.get("as_json")))

    return wrapper


@contextmanager
def progress_bar(total: int | None, desc: str, quiet: bool):
    """A byte progress bar on stderr, shown only on a terminal and never in --json mode."""
    bar = tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=True if quiet else None,
        file=sys.stderr,
        leave=False,
    )
    try:
        yield bar.update
    finally:
        bar.close()


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="caravane")
def main() -> None:
    """Caravane: signed, delta-compressed content from a hub to offline centres."""


# ---------------------------------------------------------------------------- keys


@main.group()
def keys() -> None:
    """Make and inspect Ed25519 signing keys."""


@keys.command("generate")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@handle_errors
def keys_generate(out: Path, as_json: bool) -> None:
    """Write a new private key to OUT (mode 0600) and its public key to OUT.pub."""
    if out.exists():
        raise CaravaneError(f"{out} exists; refusing to overwrite a key")
    key = PrivateKey.generate()
    key.save(out)
    pub = out.with_name(out.name + ".pub")
    pub.write_text(json.dumps(key.public.to_dict()) + "\n")
    emit(
        as_json,
        {"ok": True, "private": str(out), "public": str(pub), "keyid": key.keyid},
        f"wrote private key {out} (keep it offline) and public key {pub}\nkey id {key.keyid}",
    )


# ---------------------------------------------------------------------------- repo


@main.group()
def repo() -> None:
    """Create, publish into, verify and check out a repository folder."""


@repo.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--trust",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Pin this root.json instead of making keys: a store that receives a hub's content.",
)
@json_option
@handle_errors
def repo_init(directory: Path, trust: Path | None, as_json: bool) -> None:
    """Create a repository in DIRECTORY (new signing keys under DIRECTORY/keys)."""
    from packs.repository import Repository

    r = Repository.init(directory, trust_root=trust)
    root = r.trusted.root
    text = (
        f"initialised store {directory}, pinned root version {root.version}"
        if trust
        else f"initialised repository {directory}; signing keys are in {directory / 'keys'} "
        "(back them up, keep them off any mirror)"
    )
    emit(as_json, {"ok": True, "path": str(directory), "root_version": root.version}, text)


@repo.command("publish")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("channel")
@click.argument("source", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--notes", default="", help="Release notes.")
@click.option("--title", default=None, help="Channel title.")
@click.option("--expires-days", type=int, default=None, help="Sign metadata with an expiry.")
@click.option("--avg-chunk", type=int, default=64 * 1024, show_default=True)
@json_option
@handle_errors
def repo_publish(
    directory: Path,
    channel: str,
    source: Path,
    notes: str,
    title: str | None,
    expires_days: int | None,
    avg_chunk: int,
    as_json: bool,
) -> None:
    """Publish SOURCE as the next signed release of CHANNEL."""
    from packs.hub_repository import HubRepository
    from packs.repository import scan_source

    r = HubRepository(directory)
    total = sum(p.stat().st_size for _, p in scan_source(source))
    with progress_bar(total, f"publishing {channel}", as_json) as bar:
        res = r.publish(
            channel,
            source,
            notes=notes,
            title=title,
            expires_days=expires_days,
            avg_chunk=avg_chunk,
            progress=bar,
        )
    lines = [
        f"published {channel} version {res.version}: {res.files} files, {_size(res.total_bytes)}",
        f"new: {res.new_objects} objects, {_size(res.new_bytes)} "
        f"({_size(res.stored_bytes)} stored compressed)",
        f"files added {len(res.new_files)}, changed {len(res.changed_files)}, "
        f"removed {len(res.removed_files)}",
    ]
    for label, paths in (("+", res.new_files), ("~", res.changed_files), ("-", res.removed_files)):
        lines += [f"  {label} {p}" for p in paths[:20]]
        if len(paths) > 20:
            lines.append(f"  {label} ... and {len(paths) - 20} more")
    emit(as_json, dict(res.to_dict(), ok=True), "\n".join(lines))


@repo.command("verify")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@json_option
@handle_errors
def repo_verify(directory: Path, as_json: bool) -> None:
    """Check every signature, manifest and object of a repository."""
    from packs.repository import Repository

    r = Repository(directory)
    with progress_bar(None, "verifying", as_json) as bar:
        report = r.verify(progress=bar)
    text = (
        f"{'OK' if report.ok else 'FAILED'}: {len(report.channels)} channels, "
        f"{report.objects_checked} objects ({_size(report.bytes_checked)}) verified, "
        f"{report.unreferenced_objects} unreferenced"
    )
    for problem in report.problems:
        text += f"\n  problem: {problem}"
    emit(as_json, report.to_dict(), text)
    if not report.ok:
        click.echo(f"error: {len(report.problems)} problems found in {directory}", err=True)
        sys.exit(EXIT_VERIFY)


@repo.command("checkout")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("channel")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--version", "version", type=int, default=None, help="Default: the latest.")
@click.option("--replace", is_flag=True, help="Replace DEST if it exists.")
@json_option
@handle_errors
def repo_checkout(
    directory: Path, channel: str, dest: Path, version: int | None, replace: bool, as_json: bool
) -> None:
    """Write a verified release of CHANNEL into DEST (all or nothing)."""
    from packs.repository import Repository

    r = Repository(directory)
    m = r.manifest(channel, version)
    with progress_bar(m.total_size, f"checking out {channel}", as_json) as bar:
        r.checkout(channel, dest, m.version, replace=replace, progress=bar)
    emit(
        as_json,
        {
            "ok": True,
            "channel": channel,
            "version": m.version,
            "files": len(m.files),
            "bytes": m.total_size,
            "dest": str(dest),
        },
        f"checked out {channel} version {m.version} into {dest}: {len(m.files)} files, "
        f"{_size(m.total_size)}, every file verified",
    )


@repo.command("rotate-root")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--new-root-key", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--new-release-key", type=click.Path(exists=True, path_type=Path))
@json_option
@handle_errors
def repo_rotate_root(
    directory: Path, new_root_key: Path, new_release_key: Path | None, as_json: bool
) -> None:
    """Publish a new root signed by the old and the new root keys, and switch keys."""
    from packs.hub_repository import HubRepository

    r = HubRepository(directory)
    old_root = PrivateKey.load(directory / "keys/root.pem")
    new_root = PrivateKey.load(new_root_key)
    release = PrivateKey.load(new_release_key or directory / "keys/release.pem")
    version = r.rotate_root(
        {"root": [new_root.public], "release": [release.public]}, [old_root, new_root], release
    )
    new_root.save(directory / "keys/root.pem")
    release.save(directory / "keys/release.pem")
    emit(
        as_json,
        {"ok": True, "root_version": version, "resigned": r.channels()},
        f"root version {version} published; {len(r.channels())} channels re-signed; "
        f"keep {new_root_key} offline and delete the old root key once centres have moved",
    )


# ---------------------------------------------------------------------------- pack


@main.group()
def pack() -> None:
    """Build, verify and apply packs: one resumable file from release A to B."""


@pack.command("build")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("channel")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "from_version", type=int, default=0, show_default=True)
@click.option("--to", "to_version", type=int, default=None, help="Default: the latest.")
@click.option("--volume-size", type=int, default=None, help="Bytes per volume (FAT32: 4 GiB).")
@click.option("--level", type=click.IntRange(1, 22), default=19, show_default=True)
@json_option
@handle_errors
def pack_build(
    directory: Path,
    channel: str,
    out: Path,
    from_version: int,
    to_version: int | None,
    volume_size: int | None,
    level: int,
    as_json: bool,
) -> None:
    """Build the pack that takes a holder of --from to --to."""
    from packs.packfile import DEFAULT_VOLUME_SIZE
    from packs.repository import Repository

    r = Repository(directory)
    to_version = to_version or r.channel_meta(channel).version
    with progress_bar(None, "building pack", as_json) as bar:
        info = r.build_pack(
            channel,
            from_version,
            to_version,
            out,
            volume_size or DEFAULT_VOLUME_SIZE,
            level=level,
            progress=bar,
        )
    emit(
        as_json,
        dict(info.to_dict(), ok=True),
        f"pack {channel} {from_version} -> {to_version}: {_size(info.size)} in "
        f"{len(info.volumes)} volume(s), {info.new_chunks} new chunks "
        f"({_size(info.new_bytes)} before compression)",
    )


@pack.command("apply")
@click.argument("pack_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@json_option
@handle_errors
def pack_apply(pack_file: Path, directory: Path, as_json: bool) -> None:
    """Verify PACK_FILE against DIRECTORY's pinned root and add its release to DIRECTORY."""
    from packs.centre_store import CentreStore

    r = CentreStore(directory, durable=True)
    with progress_bar(None, "applying pack", as_json) as bar:
        res = r.apply_pack(pack_file, progress=bar)
    emit(
        as_json,
        dict(res.to_dict(), ok=True),
        f"applied: {res.channel} version {res.version} is complete in {directory} "
        f"({res.objects_added} objects added)",
    )


@pack.command("verify")
@click.argument("pack_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--repo",
    "directory",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Also check signatures and content against this repository or store.",
)
@json_option
@handle_errors
def pack_verify(pack_file: Path, directory: Path | None, as_json: bool) -> None:
    """Check a pack's entries (and, with --repo, its signatures and every chunk)."""
    from packs.packfile import read_entries
    from packs.repository import Repository

    counts: dict[str, int] = {}
    summary: dict[str, Any] = {}
    for entry in read_entries(pack_file):
        counts[entry.kind] = counts.get(entry.kind, 0) + 1
        if entry.kind == "end":
            summary = entry.header.get("summary", {})
    result: dict[str, Any] = {"ok": True, "entries": counts, "summary": summary}
    text = f"pack {pack_file}: {sum(counts.values())} entries intact"
    if directory is not None:
        r = Repository(directory)
        res = r.verify_pack(pack_file)
        result["release"] = {"channel": res.channel, "version": res.version}
        text += f"; signatures and content verified for {res.channel} version {res.version}"
    emit(as_json, result, text)


# ---------------------------------------------------------------------------- demo


@main.command("demo")
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo"),
    show_default=True,
)
@click.option(
    "--serve",
    "serve_seconds",
    type=float,
    default=0,
    help="Keep the hub and the portal up this many seconds at the end, to browse them.",
)
@json_option
@handle_errors
def demo(workdir: Path, serve_seconds: float, as_json: bool) -> None:
    """Run the main job end to end on embedded defaults: a hub and a centre, on 127.0.0.1."""
    from .demo import run_demo

    summary = run_demo(workdir, echo=None if as_json else click.echo, serve_seconds=serve_seconds)
    emit(as_json, summary, f"demo finished: everything verified (see {workdir})")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _register_optional() -> None:
    """Sub-command groups that live with the service they drive (hub/, node/, ...)."""
    import importlib

    for module, names in (
        ("hub.cli", ("hub", "publish")),
        ("node.cli", ("node",)),
    ):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for name in names:
            cmd = getattr(mod, name, None) or getattr(mod, f"{name}_cmd", None)
            if isinstance(cmd, click.Command) and name not in main.commands:
                main.add_command(cmd, name)


from . import usb_cli as _usb_cli  # noqa: E402,F401  (registers `caravane usb`)

_register_optional()
