"""The sync engine: bring each subscribed channel to its newest signed release.

``SyncEngine`` reads as the protocol, in the order python-tuf's updater reads its roles;
every step verifies before it keeps anything:

1. ``_load_root``: root metadata N+1, N+2 ... (each signed by the old and the new keys);
2. ``_load_channel``: channel metadata from every upstream; the newest valid one wins, a
   forged, rolled-back or expired copy is discarded and its upstream set aside;
3. ``_load_manifest``: the release manifest, checked against the length and SHA-256 in the
   channel metadata (or, where a drive or a mirror carries only a pack, out of the pack);
4. ``_fetch_content``: the missing chunks, as a delta pack (resumed by byte range into
   ``partial/``) when that is the cheaper route, then one by one as objects;
5. ``_activate``: a release folder built beside the active one, switched in with a rename.

How bytes move (which upstream, retries, budgets, deadlines, counting) is not here: it is
``node.transfer.Transfer``. Every verified byte stays on disk, so a cut link, a kill -9 or
a reboot costs at most the block in flight (packs) or one object.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from caravane.packs.centre_store import CentreStore
from caravane.packs.errors import DiskFullError, PackError, StoreError, TruncatedPackError
from caravane.packs.layout import (
    channel_relpath,
    manifest_relpath,
    object_relpath,
    pack_relpath,
    root_relpath,
)
from caravane.packs.packfile import MAGIC, read_entries
from caravane.protocol import tree
from caravane.protocol.errors import CaravaneError, NotFoundError
from caravane.protocol.metadata import MAX_METADATA_BYTES, ChannelMeta, FileEntry, ReleaseRef
from caravane.protocol.release import Release
from caravane.protocol.trust import MAX_ROOT_ROTATIONS, too_many_roots

from . import search
from .activate import Releases
from .errors import DiskSpaceError, PassOver, TooMuchData, UpstreamError, UpstreamNotFound
from .freeze import note_channel_word
from .policy import RateLimiter
from .state import NodeState
from .transfer import BAD_DATA, RATE_GRACE_SECONDS, ROUTE_OF_KIND, Transfer, is_disk_full
from .upstream import HttpUpstream, Upstream

__all__ = [
    "BAD_DATA",
    "ROUTE_OF_KIND",
    "ChannelResult",
    "SyncEngine",
    "SyncResult",
    "frame_bound",
]

OBJECT_WORKERS = 4
#: room for what a pack carries besides chunks: root and channel metadata, entry headers
PACK_OVERHEAD = 16 * 1024 * 1024


def frame_bound(size: int) -> int:
    """The most bytes a zstd frame of ``size`` raw bytes can take (zstd's compress bound)."""
    return size + (size >> 7) + 4096


def pack_bound(carried: int, manifest_length: int = 0, ref: ReleaseRef | None = None) -> int:
    """The most bytes a pack carrying ``carried`` raw chunk bytes may take on the wire.

    The bound depends on what the pack carries (fixed by the two releases), never on what
    this centre still lacks: a hub serves the whole pack whatever the centre holds. A format
    2 release's pieces come with it: at most its whole tree, bounded from the signed file
    count and size (``tree.wire_bound``).
    """
    pieces = tree.wire_bound(ref.files, ref.size) if ref is not None else 0
    return carried + carried // 16 + manifest_length + pieces + PACK_OVERHEAD


@dataclass
class ChannelResult:
    channel: str
    status: str  # up-to-date | activated | waiting | held | error
    active: int | None = None
    latest: int | None = None
    message: str = ""
    route: str | None = None
    missing_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SyncResult:
    channels: list[ChannelResult] = field(default_factory=list)
    received: dict[str, int] = field(default_factory=dict)
    by_route: dict[str, int] = field(default_factory=dict)  # usb, network, peer ... (metrics)
    errors: list[str] = field(default_factory=list)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors and all(c.status != "error" for c in self.channels)

    @property
    def complete(self) -> bool:
        return all(c.status in ("up-to-date", "activated", "held") for c in self.channels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "complete": self.complete,
            "channels": [c.to_dict() for c in self.channels],
            "received": self.received,
            "errors": self.errors,
            "skipped": self.skipped,
        }


class SyncEngine:
    """One sync pass over a node's store and releases, reading through a ``Transfer``."""

    def __init__(
        self,
        repo: CentreStore,
        releases: Releases,
        state: NodeState,
        upstreams: list[Upstream],
        partial_dir: Path,
        *,
        limiter: RateLimiter | None = None,
        daily_budget: int = 0,
        monthly_budget: int = 0,
        margin: int = 64 * 1024 * 1024,
        retries: int = 4,
        retry_base: float = 1.0,
        ignore_demotion: bool = False,
        on_event: Callable[[str, str], None] | None = None,
        progress: Callable[[int], Any] | None = None,
        route: str | None = None,
        pass_seconds: float = 0.0,
        fetch_seconds: float = 0.0,
        min_rate: int = 0,
        rate_grace: float = RATE_GRACE_SECONDS,
    ) -> None:
        self.repo = repo
        self.releases = releases
        self.state = state
        self.partial_dir = Path(partial_dir)
        self.margin = margin
        self.route = route
        self.transfer = Transfer(
            state,
            upstreams,
            limiter=limiter,
            daily_budget=daily_budget,
            monthly_budget=monthly_budget,
            retries=retries,
            retry_base=retry_base,
            ignore_demotion=ignore_demotion,
            on_event=on_event,
            progress=progress,
            pass_seconds=pass_seconds,
            fetch_seconds=fetch_seconds,
            min_rate=min_rate,
            rate_grace=rate_grace,
        )

    @property
    def upstreams(self) -> list[Upstream]:
        return self.transfer.upstreams

    @property
    def received(self) -> dict[str, int]:
        return self.transfer.received

    def available(self) -> list[Upstream]:
        """Upstreams the next fetch would try, cheapest first (works before ``sync()``)."""
        return self.transfer.available()

    # ------------------------------------------------------------------ the pass

    def sync(self, channels: list[str]) -> SyncResult:
        """One pass: root first, then each channel in turn; never raises for a bad upstream."""
        result = SyncResult()
        online = self.transfer.open()
        try:
            if online:
                self._load_root()
            for channel in channels:
                result.channels.append(self._sync_channel(channel, online))
        except PassOver as exc:  # budget or time spent: the rest waits for the next pass
            self.transfer.event("warning", str(exc))
            result.errors.append(str(exc))
            done = {c.channel for c in result.channels}
            result.channels += [
                ChannelResult(
                    channel,
                    "waiting",
                    active=self.releases.active(channel),
                    latest=self.repo.known_version(channel),
                    message=str(exc),
                )
                for channel in channels
                if channel not in done
            ]
        finally:
            self.transfer.close()
        if not online:
            result.skipped = self._offline_reason()
        result.received = dict(self.transfer.received)
        result.by_route = dict(self.transfer.by_route)
        result.errors = list(dict.fromkeys(result.errors + self.transfer.errors))
        return result

    def _offline_reason(self) -> str:
        """Why no upstream answered, in words that say what to do next.

        An upstream set aside after an error is not "unreachable": the operator needs to know
        it waits for its backoff (and that ``--force`` tries it now), not to check a cable.
        """
        ups = self.transfer.upstreams
        if not ups:
            return (
                "no upstream is configured; add the hub or a peer to node.toml, or insert a "
                "drive with the latest releases"
            )
        aside = []
        for up in ups:
            until = self.state.demoted_until(up.name)
            if until is not None and up.name not in self.transfer.set_aside_now:
                health = {h["name"]: h for h in self.state.upstream_health()}.get(up.name, {})
                error = health.get("last_error") or "an error"
                aside.append(f"{up.name} until {until:%H:%M} UTC after: {error}")
        if aside and len(aside) == len(ups):
            return (
                "every upstream is set aside after recent errors ("
                + "; ".join(aside)
                + "); it is tried again then, or now with `caravane node sync --force`"
            )
        down = ", ".join(sorted(self.transfer.set_aside_now)) or "the upstreams"
        return (
            f"no upstream is reachable now ({down} did not answer: link down, no drive "
            "inserted); check the link or insert a drive, the next pass tries again"
        )

    def _sync_channel(self, channel: str, online: bool) -> ChannelResult:
        res = ChannelResult(channel, "up-to-date", active=self.releases.active(channel))
        try:
            self._update_channel(res, online)
        except PassOver:
            raise  # ends the whole pass, not just this channel
        except DiskSpaceError as exc:
            res.status, res.message = "waiting", str(exc)
            res.missing_bytes = exc.missing
            self.state.set("disk_missing", str(exc.missing))
            self.transfer.event("error", str(exc))
        except (OSError, CaravaneError) as exc:
            res.status, res.message = "error", _describe_failure(exc)
            self.transfer.event("error", f"{channel}: {res.message}")
        return res

    def _update_channel(self, res: ChannelResult, online: bool) -> None:
        """The protocol for one channel, steps 2 to 5; fills ``res`` as it goes."""
        channel = res.channel
        if online:
            self._load_channel(channel)
        known = res.latest = self.repo.known_version(channel)
        if known is None:
            res.status = "waiting"
            res.message = f"no release of {channel!r} found yet on any upstream"
            return
        held = self.state.held(channel)
        if held is not None and known <= held:
            res.status = "held"
            res.message = f"rolled back by an operator; version {known} stays off until a newer one"
            return
        if res.active == known:
            return
        release = self._stored_release(channel, known)
        tried_pack = False
        if release is None:
            # the pack carries the manifest: for an update as a delta against the one this
            # centre holds (its metadata costs what changed, where the whole file list grows
            # with the channel), for a first sync with every piece of its tree in one stream
            # (instead of one object request per piece)
            tried_pack = True
            release = self._release_from_pack(
                channel, res.active, known, update=res.active is not None, soft=True
            )
        if release is None:
            release = self._load_release(channel, known)
        if release is None and not tried_pack:
            release = self._release_from_pack(channel, res.active, known)
        if release is None:
            res.status = "waiting"
            res.message = f"the manifest of version {known} is not on any upstream yet"
            return
        missing = self._fetch_content(release, res.active)
        if missing:
            res.status = "waiting"
            res.missing_bytes = sum(missing.values())
            res.message = (
                f"{len(missing)} pieces ({res.missing_bytes / 1e6:.1f} MB) of version {known} "
                "are still missing; they will come with the next sync or drive"
            )
            return
        res.route = self._activate(release)
        res.status, res.active = "activated", known
        if held is not None:
            self.state.hold(channel, None)

    # ------------------------------------------------------------------ 1. root

    def _load_root(self) -> None:
        """Every newer root version any upstream holds, one at a time, each verified."""
        self.transfer.every("root metadata", self._roots_from)

    def _roots_from(self, up: Upstream) -> int:
        accepted = 0
        while True:
            if accepted >= MAX_ROOT_ROTATIONS:  # a carrier cannot walk us forever
                raise too_many_roots(up.name)
            v = self.repo.trusted.root.version + 1
            try:
                data = self.transfer.read(up, root_relpath(v), MAX_METADATA_BYTES)
            except UpstreamNotFound:
                return accepted
            self.repo.accept_root(data, f"root v{v} from {up.name}")
            self.transfer.event("info", f"trusted root updated to version {v} (from {up.name})")
            accepted += 1

    # ------------------------------------------------------------------ 2. channel

    def _load_channel(self, channel: str) -> ChannelMeta | None:
        """The newest channel metadata that verifies, from all upstreams (freeze defence)."""

        # the copy held here: the hub sends the new one as a delta from it (packs/compact.py)
        held = self.repo.snapshot().channel_bytes(channel)

        def from_up(up: Upstream) -> tuple[ChannelMeta, bytes]:
            data = self.transfer.read(up, channel_relpath(channel), MAX_METADATA_BYTES, held)
            what = f"channel metadata for {channel!r} from {up.name}"
            return self.repo.check_channel_bytes(channel, data, what), data

        found = self.transfer.every(f"channel metadata for {channel!r}", from_up)
        if not found:
            return None
        _, (meta, data) = max(found, key=lambda f: f[1][0].version)
        self.repo.accept_channel(channel, data, f"channel metadata for {channel!r}")
        # freeze visibility (node/freeze.py): when this channel last had fresh signed word
        note_channel_word(self.state, channel, [(up.kind, m) for up, (m, _) in found])
        return meta

    # ------------------------------------------------------------------ 3. manifest

    def _stored_release(self, channel: str, version: int) -> Release | None:
        """The release if this store already holds its manifest (verified), else None."""
        try:
            return self.repo.release(channel, version)
        except NotFoundError:
            return None

    def _readable_release(self, channel: str, version: int) -> Release | None:
        """The stored release, or None if it is absent or unreadable (the search index then
        rebuilds from the release folder instead of comparing with it)."""
        try:
            return self.repo.release(channel, version)
        except (CaravaneError, OSError):
            return None

    def _load_release(self, channel: str, version: int) -> Release | None:
        """The manifest from the store, else from the first upstream whose copy verifies."""
        stored = self._stored_release(channel, version)
        if stored is not None:
            return stored
        ref = self.repo.channel_meta(channel).releases[version]
        path = manifest_relpath(channel, version)

        def from_up(up: Upstream) -> Release:
            data = self.transfer.retrying(
                lambda: self.transfer.read(up, path, ref.manifest_length), lambda: 0
            )
            return self.repo.accept_manifest(channel, version, data, self._fetch_objects)

        return self.transfer.first(f"the manifest of {channel} version {version}", from_up)

    def _release_from_pack(
        self,
        channel: str,
        base: int | None,
        target: int,
        update: bool = False,
        soft: bool = False,
    ) -> Release | None:
        """The release through the pack from ``base``: its manifest and its content at once.

        A drive or a static mirror may carry the manifest only inside the pack; for an
        ``update`` (a release is installed here) the pack is also the cheapest way to learn
        the new manifest. Before an update's pack the size of what changed is not known yet,
        so only the margin is checked here: a pack that does not fit stops on a full disk,
        keeps what arrived, and the manifest route that follows says how much space it needs.
        """
        ref = self.repo.channel_meta(channel).releases[target]
        where = self.partial_dir.parent
        needed = self.margin if update else 2 * ref.size + self.margin
        free = shutil.disk_usage(where).free
        if free < needed:
            if update or soft:  # the manifest route says exactly how much space it needs
                return None
            raise DiskSpaceError(needed, free, str(where))
        self._fetch_pack(channel, base or 0, target, pack_bound(ref.size, ref.manifest_length, ref))
        try:
            return self.repo.release(channel, target)
        except NotFoundError:
            return None

    # ------------------------------------------------------------------ 4. content

    def _missing(self, sizes: dict[str, int]) -> dict[str, int]:
        return {s: n for s, n in sizes.items() if not self.repo.store.has(s)}

    def _fetch_content(self, release: Release, active: int | None) -> dict[str, int]:
        """Fetch what the store lacks for ``release``; returns what is still missing."""
        plan = self._plan(release, active)
        need = plan.need
        if not need:
            return need
        self._check_space(need, plan.written)
        bound = self._pack_plan(release, plan)
        if bound is not None:
            self._fetch_pack(release.channel, plan.base, release.version, bound)
            need = self._missing(need)
        if need:
            self._fetch_objects(need)
            need = self._missing(need)
        return need

    def _plan(self, release: Release, active: int | None) -> _Plan:
        """What ``release`` needs that this store lacks, from what changed since ``active``.

        With the active release readable, only the files the tree diff names are looked at
        (the active release's objects are all here: it was activated, and collection keeps
        them); otherwise every file, walked from the pieces. Holds the missing objects only.
        """
        old = self._readable_release(release.channel, active) if active is not None else None
        # -1: the active release cannot be read, so no pack from it can be applied
        plan = _Plan(0 if active is None else active if old is not None else -1)
        if old is not None:
            try:
                for a, b in release.changes_from(old):
                    if b is not None:
                        plan.add(b, a, self.repo.store.has)
                return plan
            except CaravaneError:
                plan = _Plan(-1)  # the active release cannot be read: look at every file
        for f in release.iter_files():
            plan.add(f, None, self.repo.store.has)
        return plan

    def _pack_plan(self, release: Release, plan: _Plan) -> int | None:
        """The wire bound of the pack base->target, or None when objects cost less.

        A pack carries every chunk the base release lacks, whatever this centre already
        holds. When most of that is here (an earlier object transfer, a pack cut short
        whose entries were applied), fetching the pack would send it all again, so the
        missing objects come one by one instead.
        """
        if plan.base < 0 or (
            plan.base and plan.base not in self.repo.channel_meta(release.channel).releases
        ):
            return None  # the base left the signed metadata: objects it is
        carried = plan.carried
        if carried and sum(plan.need.values()) < carried // 2:
            return None
        ref = self.repo.channel_meta(release.channel).releases[release.version]
        return pack_bound(carried, ref.manifest_length, ref)

    def _check_space(self, need: dict[str, int], written: int) -> None:
        needed = sum(need.values()) + written + self.margin
        where = self.partial_dir.parent
        free = shutil.disk_usage(where).free
        if free < needed:
            raise DiskSpaceError(needed, free, str(where))

    def _fetch_pack(self, channel: str, base: int, target: int, bound: int) -> None:
        """The pack ``base``->``target`` into ``partial/`` (resumed by range), then applied."""
        rel = pack_relpath(channel, base, target)
        partial = self.partial_dir / rel
        partial.parent.mkdir(parents=True, exist_ok=True)

        def size() -> int:
            return partial.stat().st_size if partial.exists() else 0

        if size() >= bound:
            partial.unlink()  # longer than any pack of this pair can be: not a pack of it

        def from_up(up: Upstream) -> None:
            def download() -> None:
                offset = size()
                with open(partial, "ab", buffering=0) as fh:
                    self.transfer.copy(up, rel, offset, max(0, bound - offset), fh.write)
                    os.fsync(fh.fileno())

            try:
                self.transfer.retrying(download, size)
            except TooMuchData:  # what it sent is suspect: keep only entries that verify
                _truncate(partial, _valid_prefix(partial))
                raise
            self._apply_pack(up, partial, channel)
            self.transfer.succeeded(up)

        self.transfer.first("a damaged pack", from_up)

    def _apply_pack(self, up: Upstream, partial: Path, channel: str) -> None:
        """Apply a downloaded pack; what verified is kept even when the rest is refused.

        Only a pack of ``channel`` is taken: one served at its path for another channel is
        refused before anything from it is written.
        """
        try:
            self.repo.apply_pack(partial, channels=[channel])
        except TruncatedPackError as exc:
            raise UpstreamError(up.name, f"the pack ends early ({exc})") from None
        except DiskFullError:
            raise  # not the upstream's fault: stop cleanly, keep what arrived
        except StoreError as exc:
            raise UpstreamError(up.name, f"the pack could not be applied: {exc}") from None
        except BAD_DATA:  # a damaged entry: keep the entries before it, for a resume
            _truncate(partial, _valid_prefix(partial))
            raise
        partial.unlink(missing_ok=True)

    def _fetch_objects(self, need: dict[str, int]) -> None:
        todo = sorted(need)
        for up in self.transfer.available():
            if not todo:
                return
            try:
                up.prefetch(
                    [object_relpath(s) for s in todo], max(frame_bound(need[s]) for s in todo)
                )
            except UpstreamError as exc:
                self.transfer.set_aside(up, str(exc))
                continue
            remaining, failure = self._objects_from(up, todo, need)
            if failure is not None:
                self.transfer.set_aside(up, failure)
            elif len(remaining) < len(todo):
                self.transfer.succeeded(up)
            todo = remaining

    def _objects_from(
        self, up: Upstream, todo: list[str], need: dict[str, int]
    ) -> tuple[list[str], str | None]:
        """Fetch and verify objects from one upstream; a few connections at once over HTTP.

        Returns what it did not get and, if the upstream misbehaved, why. Each worker holds
        at most one object in flight, so an interruption costs at most ``OBJECT_WORKERS``
        small objects (well under 1 MiB).
        """
        workers = OBJECT_WORKERS if isinstance(up, HttpUpstream) and len(todo) > 16 else 1
        queue = iter(todo)
        qlock = threading.Lock()
        remaining: list[str] = []
        failure: list[str] = []

        def fetch_one(conn: Upstream, sha: str) -> None:
            path = object_relpath(sha)
            try:
                frame = self.transfer.retrying(
                    lambda: self.transfer.read(conn, path, frame_bound(need[sha])), lambda: 0
                )
                self.repo.store.put_compressed(sha, frame, need[sha])
            except UpstreamNotFound:
                with qlock:
                    remaining.append(sha)
            except UpstreamError as exc:
                with qlock:
                    remaining.append(sha)
                    failure.append(str(exc))
            except BAD_DATA as exc:
                with qlock:
                    remaining.append(sha)
                    failure.append(f"discarded a tampered object from {up.name}: {exc}")
            finally:
                conn.done_with(path)

        def work(conn: Upstream) -> None:
            try:
                while not failure:
                    with qlock:
                        sha = next(queue, None)
                    if sha is None:
                        return
                    fetch_one(conn, sha)
            finally:
                if conn is not up:
                    conn.close()

        if workers == 1:
            work(up)
        else:
            assert isinstance(up, HttpUpstream)
            conns: list[Upstream] = [up, *(up.clone() for _ in range(workers - 1))]
            with ThreadPoolExecutor(workers) as pool:
                for f in [pool.submit(work, c) for c in conns]:
                    f.result()  # DiskFullError, PassOver and the like surface here
        remaining.extend(queue)  # what nobody started after a failure
        return sorted(set(remaining)), (failure[0] if failure else None)

    # ------------------------------------------------------------------ 5. activation

    def _activate(self, release: Release) -> str:
        """Switch to ``release``, then collect what no kept release needs."""
        route = self.route or self.transfer.route()
        channel = release.channel
        keep = self.activate(release, route)
        self.collect(channel, keep)
        self.state.set("disk_missing", "0")
        return route

    def activate(self, release: Release, route: str) -> set[int]:
        """Build and switch to ``release``; returns the versions to keep."""
        channel, version = release.channel, release.version
        previous = self.releases.active(channel)
        folder = self.releases.build(self.repo, release)
        # indexed before the switch: the new rows are searched from the instant it is served
        index = search.for_releases(self.releases.releases_dir)
        search.index_release(index, release, folder, lambda v: self._readable_release(channel, v))
        self.releases.switch(channel, version)
        self.state.record_activation(channel, version, previous, route)
        self.transfer.event(
            "info",
            f"{channel}: version {version} is now served (was "
            f"{previous if previous is not None else 'none'}; came by {route})",
        )
        keep = {version} | ({previous} if previous is not None else set())
        self.releases.prune(channel, keep)
        with contextlib.suppress(search.SearchIndexError, OSError):
            index.forget(channel, keep)
        shutil.rmtree(self.partial_dir / "packs" / channel, ignore_errors=True)
        return keep

    def collect(self, channel: str, keep_versions: set[int]) -> None:
        """Drop manifests older than the kept releases, then objects no manifest left needs.

        Manifests still on disk (kept releases, and newer ones of other channels whose
        transfer is under way) keep what they name. The store counts what each names
        (``packs/refcount.py``), so this costs what changed since the last collection, not
        the channel.
        """
        folder = self.repo.path / "manifests" / channel
        if folder.is_dir():
            for p in folder.glob("*.json"):
                old = p.stem.isdigit() and int(p.stem) < max(keep_versions)
                if old and int(p.stem) not in keep_versions:
                    p.unlink(missing_ok=True)
        report = self.repo.collect()
        if report.skipped:
            self.transfer.event(
                "warning",
                f"collection skipped: {report.skipped}; nothing was removed, the next "
                "activation tries again",
            )
        elif report.rebuilt or report.removed:
            logging.getLogger("caravane.node").info(
                f"collection removed {report.removed} objects ({report.freed} bytes)"
                + ("; the counts of what manifests name were rebuilt" if report.rebuilt else ""),
            )


class _Plan:
    """What a release needs fetched, from the files looked at (changed ones, or all)."""

    def __init__(self, base: int) -> None:
        self.base = base  # the release a pack would start from (0: none, -1: no pack)
        self.need: dict[str, int] = {}  # objects missing here
        self.written = 0  # bytes of files the new release folder writes (not linked)
        self.carried = 0  # at most what a pack base->target carries of chunks

    def add(self, f: FileEntry, old: FileEntry | None, has: Callable[[str], bool]) -> None:
        if old is not None and old.sha256 == f.sha256 and old.chunks == f.chunks:
            return  # only its mode changed
        kept = {h for h, _ in old.chunks} if old is not None else set()
        self.written += f.size
        for h, n in f.chunks:
            if h not in kept:
                self.carried += n
            if h not in self.need and not has(h):
                self.need[h] = n


def _valid_prefix(first: Path) -> int:
    """Bytes at the start of a (single-volume) pack made of entries that verify."""
    end = len(MAGIC)
    try:
        with open(first, "rb") as fh:
            if fh.read(len(MAGIC)) != MAGIC:
                return 0
        for entry in read_entries(first):
            end = len(MAGIC) + entry.offset + entry.length
    except (PackError, TruncatedPackError, OSError):
        pass
    return end if first.exists() and first.stat().st_size >= end else 0


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)


def _describe_failure(exc: OSError | CaravaneError) -> str:
    """What the operator reads when a channel's pass failed for a reason of this centre."""
    if isinstance(exc, DiskFullError):
        if "nothing was lost" in str(exc):  # the store already said what to do
            return str(exc)
        return f"{exc}; nothing was lost, free space and sync again"
    if is_disk_full(exc):
        return "the disk filled up; nothing was lost, free space and sync again"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc}"
    return str(exc)
