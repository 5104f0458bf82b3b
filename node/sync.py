"""The sync engine: bring each subscribed channel to its newest signed release.

Order of work for one channel (every step verifies before it keeps anything):

1. root metadata N+1, N+2 ... from the first upstream that has them (old and new keys sign);
2. channel metadata from every available upstream; the newest valid one wins, a forged,
   rolled-back or expired copy is discarded and its upstream demoted;
3. the release manifest, checked against the length and SHA-256 in the channel metadata;
4. the missing chunks: first as a delta pack (resumed by byte range into ``partial/``, from
   whichever upstream has it), then one by one as objects for anything still missing;
5. a release folder built beside the active one, then switched in with one rename.

Every verified byte stays on disk, so a cut link, a kill -9 or a reboot costs at most the
block in flight (packs) or one object.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packs.errors import DiskFullError, PackError, StoreError, TruncatedPackError
from packs.layout import (
    channel_relpath,
    manifest_relpath,
    object_relpath,
    pack_relpath,
    root_relpath,
)
from packs.packfile import MAGIC, read_entries
from packs.repository import Repository
from protocol.errors import (
    CaravaneError,
    ExpiredError,
    FormatError,
    NotFoundError,
    RollbackError,
    SignatureError,
    VerificationError,
)
from protocol.metadata import MAX_METADATA_BYTES, ChannelMeta, Manifest

from .activate import Releases
from .errors import BudgetExceeded, DiskSpaceError, UpstreamError, UpstreamNotFound
from .policy import RateLimiter
from .state import NodeState
from .upstream import HttpUpstream, Upstream

log = logging.getLogger("caravane.node")

ROUTE_OF_KIND = {
    "http": "network",
    "mirror": "mirror",
    "peer": "peer",
    "rsync": "rsync",
    "folder": "usb",
}
OBJECT_WORKERS = 4
HEX64_QUOTED = re.compile(rb'"([0-9a-f]{64})"')
BAD_DATA = (VerificationError, SignatureError, RollbackError, ExpiredError, FormatError, PackError)


def frame_bound(size: int) -> int:
    """The most bytes a zstd frame of ``size`` raw bytes can take (zstd's compress bound)."""
    return size + (size >> 7) + 4096


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
    def __init__(
        self,
        repo: Repository,
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
    ) -> None:
        self.repo = repo
        self.releases = releases
        self.state = state
        self.upstreams = sorted(upstreams, key=lambda u: u.cost)
        self.partial_dir = Path(partial_dir)
        self.limiter = limiter or RateLimiter(0)
        self.daily_budget = daily_budget
        self.monthly_budget = monthly_budget
        self.margin = margin
        self.retries = retries
        self.retry_base = retry_base
        self.ignore_demotion = ignore_demotion
        self.on_event = on_event
        self.progress = progress
        self.route = route
        self.received: dict[str, int] = defaultdict(int)
        self._unflushed: dict[str, int] = defaultdict(int)
        self._budget_used: int | None = None
        self._by_route: dict[str, int] = defaultdict(int)
        self.errors: list[str] = []
        self._count_lock = threading.RLock()

    # ------------------------------------------------------------------ bookkeeping

    def _event(self, level: str, message: str) -> None:
        getattr(log, level if level in ("info", "warning", "error") else "info")(message)
        with contextlib.suppress(Exception):  # the log line above is the record of last resort
            self.state.event(level, message)
        if self.on_event:
            self.on_event(level, message)

    def _fail(self, up: Upstream, message: str) -> None:
        until = self.state.record_failure(up.name, message)
        self.errors.append(message)
        self._event(
            "warning",
            f"{message}; upstream {up.name} is set aside until {until:%H:%M} UTC and the "
            "next one is tried",
        )
        self._demoted.add(up.name)

    def _flush_transfers(self, up: Upstream | None = None) -> None:
        for name, n in list(self._unflushed.items()):
            if n and (up is None or up.name == name):
                metered = next((u.metered for u in self.upstreams if u.name == name), False)
                self.state.add_transfer(name, metered, n)
                self._unflushed[name] = 0

    def _check_budget(self, n: int) -> None:
        if not (self.daily_budget or self.monthly_budget):
            return
        if self._budget_used is None:
            self._budget_used = 0
            self._day_used = self.state.metered_bytes("day")
            self._month_used = self.state.metered_bytes("month")
        self._budget_used += n
        if self.daily_budget and self._day_used + self._budget_used > self.daily_budget:
            raise BudgetExceeded(
                f"today's data budget on metered links ({self.daily_budget / 1e6:.0f} MB) is "
                "spent; the sync stops here and continues tomorrow (what arrived is kept)"
            )
        if self.monthly_budget and self._month_used + self._budget_used > self.monthly_budget:
            raise BudgetExceeded(
                f"this month's data budget on metered links ({self.monthly_budget / 1e6:.0f} "
                "MB) is spent; the sync continues next month, or bring a drive"
            )

    def _download(self, up: Upstream, path: str, offset: int, max_length: int) -> Iterator[bytes]:
        throttled = up.kind != "folder"
        for block in up.fetch(path, offset, max_length):
            if throttled:
                self.limiter.take(len(block))
            with self._count_lock:
                self.received[up.name] += len(block)
                self._unflushed[up.name] += len(block)
                self._by_route[ROUTE_OF_KIND.get(up.kind, "network")] += len(block)
                if self.progress:
                    self.progress(len(block))
                if self._unflushed[up.name] >= 1 << 20:
                    self._flush_transfers(up)
            yield block
            if up.metered:  # after the block is kept: bytes paid for are never thrown away
                self._check_budget(len(block))

    def _read(self, up: Upstream, path: str, max_length: int) -> bytes:
        return b"".join(self._download(up, path, 0, max_length))

    def _retrying(self, up: Upstream, fn: Callable[[], Any], progress: Callable[[], int]) -> Any:
        """Run ``fn`` again after a cut: at once while bytes keep arriving, else with backoff."""
        failures = 0
        while True:
            before = progress()
            try:
                return fn()
            except UpstreamNotFound:
                raise
            except UpstreamError as exc:
                if progress() > before:
                    failures = 0  # it moved forward: the link is up, just flaky
                    log.info("%s; resuming", exc)
                    continue
                failures += 1
                if failures > self.retries:
                    raise
                delay = self.retry_base * 2 ** (failures - 1) * random.uniform(0.5, 1.5)
                log.info("%s; retry %d in %.1fs", exc, failures, delay)
                time.sleep(delay)

    # ------------------------------------------------------------------ upstream choice

    def available(self) -> list[Upstream]:
        out = []
        for up in self.upstreams:
            if up.name in self._demoted:
                continue
            if not self.ignore_demotion and self.state.demoted_until(up.name):
                continue
            out.append(up)
        return out

    # ------------------------------------------------------------------ the pass

    def sync(self, channels: list[str]) -> SyncResult:
        self._demoted: set[str] = set()
        result = SyncResult()
        reachable = [u for u in self.available() if u.probe()]
        self._demoted |= {u.name for u in self.available() if u not in reachable}
        try:
            if reachable:
                self._update_root()
            for channel in channels:
                result.channels.append(self._sync_channel(channel, bool(reachable)))
        except BudgetExceeded as exc:
            self._event("warning", str(exc))
            result.errors.append(str(exc))
            done = {c.channel for c in result.channels}
            for channel in channels:
                if channel not in done:
                    result.channels.append(
                        ChannelResult(
                            channel,
                            "waiting",
                            active=self.releases.active(channel),
                            latest=self.repo.known_version(channel),
                            message=str(exc),
                        )
                    )
        finally:
            self._flush_transfers()
            for up in self.upstreams:
                up.close()
        if not reachable:
            result.skipped = "no upstream is reachable now (link down, no drive inserted)"
        result.received = dict(self.received)
        result.errors = list(dict.fromkeys(result.errors + self.errors))
        return result

    def _update_root(self) -> None:
        for up in self.available():
            try:
                while True:
                    v = self.repo.trusted.root.version + 1
                    data = self._read(up, root_relpath(v), MAX_METADATA_BYTES)
                    self.repo.accept_root(data, f"root v{v} from {up.name}")
                    self._event("info", f"trusted root updated to version {v} (from {up.name})")
            except UpstreamNotFound:
                continue
            except UpstreamError as exc:
                self._fail(up, str(exc))
            except BAD_DATA as exc:
                self._fail(up, f"{up.name} sent bad root metadata: {exc}")

    def _best_channel(self, channel: str) -> tuple[ChannelMeta | None, Upstream | None]:
        best: tuple[ChannelMeta | None, bytes | None, Upstream | None] = (None, None, None)
        for up in self.available():
            try:
                data = self._read(up, channel_relpath(channel), MAX_METADATA_BYTES)
                meta = self.repo.check_channel_bytes(
                    channel, data, f"channel metadata for {channel!r} from {up.name}"
                )
            except UpstreamNotFound:
                continue
            except UpstreamError as exc:
                self._fail(up, str(exc))
                continue
            except BAD_DATA as exc:
                self._fail(up, f"discarded data from {up.name}: {exc}")
                continue
            if best[0] is None or meta.version > best[0].version:
                best = (meta, data, up)
        meta, data, up = best
        if meta is not None and data is not None:
            self.repo.accept_channel(channel, data, f"channel metadata for {channel!r}")
        return meta, up

    def _sync_channel(self, channel: str, online: bool) -> ChannelResult:
        active = self.releases.active(channel)
        res = ChannelResult(channel, "up-to-date", active=active)
        try:
            if online:
                self._best_channel(channel)
            known = self.repo.known_version(channel)
            res.latest = known
            if known is None:
                res.status = "waiting"
                res.message = f"no release of {channel!r} found yet on any upstream"
                return res
            held = self.state.held(channel)
            if held is not None and known <= held:
                res.status = "held"
                res.message = (
                    f"rolled back by an operator; version {known} stays off until a newer one"
                )
                return res
            if active == known:
                return res
            manifest = self._manifest(channel, known)
            if manifest is None:
                # a drive or a static mirror may carry it only inside the pack
                ref = self.repo.channel_meta(channel).releases[known]
                where = self.partial_dir.parent
                needed, free = 2 * ref.size + self.margin, shutil.disk_usage(where).free
                if free < needed:
                    raise DiskSpaceError(needed, free, str(where))
                self._fetch_pack(channel, active, known, None, ref.size)
                manifest = self._manifest(channel, known, fetch=False)
            if manifest is None:
                res.status = "waiting"
                res.message = f"the manifest of version {known} is not on any upstream yet"
                return res
            need = {s: n for s, n in manifest.chunk_sizes().items() if not self.repo.store.has(s)}
            if need:
                self._check_space(manifest, need, active)
                self._fetch_pack(channel, active, known, need)
                need = {s: n for s, n in need.items() if not self.repo.store.has(s)}
            if need:
                self._fetch_objects(need)
                need = {s: n for s, n in need.items() if not self.repo.store.has(s)}
            if need:
                res.status = "waiting"
                res.missing_bytes = sum(need.values())
                res.message = (
                    f"{len(need)} pieces ({res.missing_bytes / 1e6:.1f} MB) of version {known} "
                    "are still missing; they will come with the next sync or drive"
                )
                return res
            route = self._route()
            keep = self.activate(manifest, route)
            del manifest, need  # the parsed manifest is the biggest object of a pass
            self.collect(channel, keep)
            res.status, res.active, res.route = "activated", known, route
            self.state.set("disk_missing", "0")
            if held is not None:
                self.state.hold(channel, None)
        except DiskSpaceError as exc:
            res.status, res.message = "waiting", str(exc)
            res.missing_bytes = exc.missing
            self.state.set("disk_missing", str(exc.missing))
            self._event("error", str(exc))
        except DiskFullError as exc:
            res.status, res.message = "error", f"{exc}; nothing was lost, free space and sync again"
            self._event("error", res.message)
        except BudgetExceeded:
            raise
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC outside the store's own checks
                res.status = "error"
                res.message = "the disk filled up; nothing was lost, free space and sync again"
            else:
                res.status, res.message = "error", f"{type(exc).__name__}: {exc}"
            self._event("error", f"{channel}: {res.message}")
        except CaravaneError as exc:
            res.status, res.message = "error", str(exc)
            self._event("error", f"{channel}: {exc}")
        return res

    def _route(self) -> str:
        if self.route:
            return self.route
        if not self._by_route:
            return "local"
        return max(self._by_route.items(), key=lambda kv: kv[1])[0]

    # ------------------------------------------------------------------ steps

    def _manifest(self, channel: str, version: int, fetch: bool = True) -> Manifest | None:
        try:
            return self.repo.manifest(channel, version)
        except NotFoundError:
            if not fetch:
                return None
        ref = self.repo.channel_meta(channel).releases[version]
        for up in self.available():
            try:
                data = self._retrying(
                    up,
                    lambda up=up: self._read(
                        up, manifest_relpath(channel, version), ref.manifest_length
                    ),
                    lambda: 0,
                )
                return self.repo.accept_manifest(channel, version, data)
            except UpstreamNotFound:
                continue
            except UpstreamError as exc:
                self._fail(up, str(exc))
            except BAD_DATA as exc:
                self._fail(up, f"discarded manifest from {up.name}: {exc}")
        return None

    def _check_space(self, manifest: Manifest, need: dict[str, int], active: int | None) -> None:
        unchanged = 0
        if active is not None:
            try:
                old = {f.path: f.sha256 for f in self.repo.manifest(manifest.channel, active).files}
                unchanged = sum(f.size for f in manifest.files if old.get(f.path) == f.sha256)
            except CaravaneError:
                unchanged = 0
        needed = sum(need.values()) + (manifest.total_size - unchanged) + self.margin
        where = self.partial_dir.parent
        free = shutil.disk_usage(where).free
        if free < needed:
            raise DiskSpaceError(needed, free, str(where))

    def _fetch_pack(
        self,
        channel: str,
        base: int | None,
        target: int,
        need: dict[str, int] | None,
        release_size: int = 0,
    ) -> None:
        base = base or 0
        budget = release_size if need is None else sum(need.values())
        if base and need is not None:
            try:
                old = self.repo.manifest(channel, base)
            except CaravaneError:
                return  # the base left the signed metadata: objects it is
            have = set(old.chunk_sizes())
            new_bytes = sum(
                n
                for s, n in self.repo.manifest(channel, target).chunk_sizes().items()
                if s not in have
            )
            if new_bytes and sum(need.values()) < new_bytes // 2:
                return  # most of it is here already (an earlier object transfer): finish that way
        rel = pack_relpath(channel, base, target)
        partial = self.partial_dir / rel
        partial.parent.mkdir(parents=True, exist_ok=True)
        bound = budget + budget // 16 + 16 * 1024 * 1024
        for up in self.available():

            def fetch(up: Upstream = up) -> None:
                offset = partial.stat().st_size if partial.exists() else 0
                with open(partial, "ab", buffering=0) as fh:
                    for block in self._download(up, rel, offset, max(0, bound - offset)):
                        fh.write(block)
                    os.fsync(fh.fileno())

            try:
                self._retrying(up, fetch, lambda: partial.stat().st_size if partial.exists() else 0)
            except UpstreamNotFound:
                continue
            except UpstreamError as exc:
                self._fail(up, str(exc))
                continue
            try:
                self.repo.apply_pack(partial)
                partial.unlink(missing_ok=True)
                self.state.record_ok(up.name)
                return
            except DiskFullError:
                raise  # not the upstream's fault: stop cleanly, keep what arrived
            except TruncatedPackError as exc:
                self._fail(up, f"the pack from {up.name} ends early ({exc})")
                continue
            except BAD_DATA as exc:
                keep = _valid_prefix(partial)
                with open(partial, "r+b") as fh:
                    fh.truncate(keep)
                self._fail(up, f"discarded a damaged pack from {up.name}: {exc}")
                continue
            except StoreError as exc:
                self._fail(up, f"pack from {up.name} could not be applied: {exc}")
                continue

    def _fetch_objects(self, need: dict[str, int]) -> None:
        todo = sorted(need)
        for up in self.available():
            if not todo:
                return
            up.prefetch([object_relpath(s) for s in todo])
            remaining, failure = self._objects_from(up, todo, need)
            if failure is not None:
                self._fail(up, failure)
            elif len(remaining) < len(todo):
                self.state.record_ok(up.name)
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

        def work(conn: Upstream) -> None:
            try:
                while not failure:
                    with qlock:
                        sha = next(queue, None)
                    if sha is None:
                        return
                    try:
                        frame = self._retrying(
                            conn,
                            lambda sha=sha: self._read(
                                conn, object_relpath(sha), frame_bound(need[sha])
                            ),
                            lambda: 0,
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
                        done = getattr(conn, "done_with", None)
                        if done:
                            done(object_relpath(sha))
            finally:
                if conn is not up:
                    conn.close()

        if workers == 1:
            work(up)
        else:
            conns = [up] + [up.clone() for _ in range(workers - 1)]  # type: ignore[attr-defined]
            with ThreadPoolExecutor(workers) as pool:
                for f in [pool.submit(work, c) for c in conns]:
                    f.result()  # DiskFullError and the like surface here
        remaining.extend(queue)  # what nobody started after a failure
        return sorted(set(remaining)), (failure[0] if failure else None)

    # ------------------------------------------------------------------ activation

    def activate(self, manifest: Manifest, route: str) -> set[int]:
        """Build and switch to ``manifest``'s release; returns the versions to keep."""
        channel = manifest.channel
        previous = self.releases.active(channel)
        self.releases.build(self.repo, manifest)
        self.releases.switch(channel, manifest.version)
        self.state.record_activation(channel, manifest.version, previous, route)
        self._event(
            "info",
            f"{channel}: version {manifest.version} is now served (was "
            f"{previous if previous is not None else 'none'}; came by {route})",
        )
        keep = {manifest.version} | ({previous} if previous is not None else set())
        self.releases.prune(channel, keep)
        shutil.rmtree(self.partial_dir / "packs" / channel, ignore_errors=True)
        return keep

    def collect(self, channel: str, keep_versions: set[int]) -> None:
        """Drop manifests older than the kept releases, then objects no manifest left needs.

        Manifests still on disk (kept releases, and newer ones of other channels whose
        transfer is under way) are read one at a time, so a channel of hundreds of thousands
        of objects is collected without holding several parsed manifests at once.
        """
        folder = self.repo.path / "manifests" / channel
        if folder.is_dir():
            for p in folder.glob("*.json"):
                old = p.stem.isdigit() and int(p.stem) < max(keep_versions)
                if old and int(p.stem) not in keep_versions:
                    p.unlink(missing_ok=True)
        with self.repo.lock():
            keep: set[str] = set()
            for path in (self.repo.path / "manifests").glob("*/*.json"):
                try:
                    data = path.read_bytes()
                except OSError:
                    return  # unsure what is needed: collect nothing this time
                # every object id in a manifest, without building its objects: file hashes
                # come along too, which only means keeping nothing extra
                keep.update(m.decode() for m in HEX64_QUOTED.findall(data))
                del data
            for sha in self.repo.store.iter_ids():
                if sha not in keep:
                    self.repo.store.remove(sha)


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
