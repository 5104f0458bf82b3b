"""The repository commands: ``caravane keys | repo | pack | demo``.

They work on repository folders directly (no service, no database), so they run at the hub,
at a centre, or on a curator's laptop. The root command (:mod:`caravane.cli`) adds them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from caravane.packs.centre_store import CentreStore
from caravane.packs.hub_repository import HubRepository
from caravane.packs.ingest import scan_totals
from caravane.packs.packfile import DEFAULT_VOLUME_SIZE, read_entries
from caravane.packs.repository import Repository, keys_dir
from caravane.protocol.errors import CaravaneError
from caravane.protocol.keys import PrivateKey

from .demo import run_demo
from .output import EXIT_VERIFY, emit, handle_errors, json_option, progress_bar, size_text

# ---------------------------------------------------------------------------- keys


@click.group()
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


@click.group()
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
    """Create a repository in DIRECTORY (new signing keys in DIRECTORY-keys, beside it)."""
    r = Repository.init(directory, trust_root=trust)
    root = r.trusted.root
    text = (
        f"initialised store {directory}, pinned root version {root.version}"
        if trust
        else f"initialised repository {directory}; signing keys are in "
        f"{keys_dir(directory)}, outside it (back them up; move root.pem to a USB key kept "
        "in a safe: it is needed only to rotate keys)"
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
    r = HubRepository(directory)
    # a first publish reads every byte: a first pass sizes the progress bar (and checks
    # every name before any file is read). A republish reads only what changed, so the bar
    # counts bytes read without a total, and the folder is listed once.
    total = None if r.files_cache_path.exists() else scan_totals(source)[1]
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
        f"published {channel} version {res.version}: {res.files} files, "
        f"{size_text(res.total_bytes)}",
        f"new: {res.new_objects} objects, {size_text(res.new_bytes)} "
        f"({size_text(res.stored_bytes)} stored compressed)",
        f"files added {res.files_added}, changed {res.files_changed}, removed {res.files_removed}",
    ]
    for label, paths, count in (
        ("+", res.new_files, res.files_added),
        ("~", res.changed_files, res.files_changed),
        ("-", res.removed_files, res.files_removed),
    ):
        lines += [f"  {label} {p}" for p in paths[:20]]
        if count > 20:
            lines.append(f"  {label} ... and {count - 20} more")
    emit(as_json, dict(res.to_dict(), ok=True), "\n".join(lines))


@repo.command("verify")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@json_option
@handle_errors
def repo_verify(directory: Path, as_json: bool) -> None:
    """Check every signature, manifest and object of a repository."""
    r = Repository(directory)
    with progress_bar(None, "verifying", as_json) as bar:
        report = r.verify(progress=bar)
    text = (
        f"{'OK' if report.ok else 'FAILED'}: {len(report.channels)} channels, "
        f"{report.objects_checked} objects ({size_text(report.bytes_checked)}) verified, "
        f"{report.unreferenced_objects} unreferenced"
    )
    for problem in report.problems:
        text += f"\n  problem: {problem}"
    emit(as_json, report.to_dict(), text)
    if not report.ok:
        click.echo(f"error: {len(report.problems)} problems found in {directory}", err=True)
        sys.exit(EXIT_VERIFY)


@repo.command("compact")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@json_option
@handle_errors
def repo_compact(directory: Path, as_json: bool) -> None:
    """Move loose objects (stores from before segments) into segments; reclaim dead space.

    Safe while the hub or the node agent runs; collection does the same after each run.
    """
    r = Repository(directory)
    done = r.store.compact()
    emit(
        as_json,
        {
            "ok": True,
            "migrated_objects": done.migrated,
            "segments_removed": done.segments_removed,
            "bytes_reclaimed": done.bytes_reclaimed,
        },
        f"compacted {directory}: {done.migrated} loose objects moved into segments, "
        f"{done.segments_removed} segments rewritten, {size_text(done.bytes_reclaimed)} reclaimed",
    )


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
    r = Repository(directory)
    snap = r.snapshot()
    m = snap.release(channel, version or r.latest_local_version(channel, snap))
    with progress_bar(m.size, f"checking out {channel}", as_json) as bar:
        r.checkout(channel, dest, m.version, replace=replace, progress=bar, manifest=m)
    emit(
        as_json,
        {
            "ok": True,
            "channel": channel,
            "version": m.version,
            "files": m.files,
            "bytes": m.size,
            "dest": str(dest),
        },
        f"checked out {channel} version {m.version} into {dest}: {m.files} files, "
        f"{size_text(m.size)}, every file verified",
    )


@repo.command("rotate-root")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--root-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The current (offline) root key. Default: root.pem in the keys folder, if there.",
)
@click.option("--new-root-key", type=click.Path(exists=True, path_type=Path))
@click.option("--new-release-key", type=click.Path(exists=True, path_type=Path))
@json_option
@handle_errors
def repo_rotate_root(
    directory: Path,
    root_key: Path | None,
    new_root_key: Path | None,
    new_release_key: Path | None,
    as_json: bool,
) -> None:
    """Publish a new root signed by the old and the new root keys, and switch keys.

    Every channel is signed again as a new version, so centres that held metadata of a
    revoked release key move on to the new key's (docs/TRUST.md, the compromised-key drill).
    """
    r = HubRepository(directory)
    kept = r.key_path("root")
    old_root = PrivateKey.load(root_key or kept)
    new_root = PrivateKey.load(new_root_key) if new_root_key else None
    release = PrivateKey.load(new_release_key) if new_release_key else None
    result = r.rotate_keys(old_root, new_root, release)
    if new_root is not None and root_key is None:
        new_root.save(kept)  # the old root key lived beside the repository: so does the new
    emit(
        as_json,
        {"ok": True, "root_version": result.root_version, "resigned": result.channels},
        f"root version {result.root_version} published; {len(result.channels)} channels "
        "signed again as a new version; keep the root key offline and delete the old one "
        "once centres have moved",
    )


# ---------------------------------------------------------------------------- pack


@click.group()
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
        f"pack {channel} {from_version} -> {to_version}: {size_text(info.size)} in "
        f"{len(info.volumes)} volume(s), {info.new_chunks} new chunks "
        f"({size_text(info.new_bytes)} before compression)",
    )


@pack.command("apply")
@click.argument("pack_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@json_option
@handle_errors
def pack_apply(pack_file: Path, directory: Path, as_json: bool) -> None:
    """Verify PACK_FILE against DIRECTORY's pinned root and add its release to DIRECTORY."""
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


@click.command("demo")
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
    summary = run_demo(workdir, echo=None if as_json else click.echo, serve_seconds=serve_seconds)
    emit(as_json, summary, f"demo finished: everything verified (see {workdir})")
