"""The node: its identity, its store, its releases, and the jobs that keep them current.

``NodeAgent`` ties together what the CLI, the portal and the scheduler need: enrolment with the
hub (pins the hub's root and makes the centre's own key pair), one sync pass over the
configured upstreams, rollback, status in plain words, and signed reports that wait in a
queue until some route (network or drive) carries them to the hub.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import httpx

from caravane.packs.centre_store import CentreStore
from caravane.protocol.canonical import load_json
from caravane.protocol.errors import CaravaneError, FormatError
from caravane.protocol.keys import PrivateKey
from caravane.protocol.report import Report

from .activate import Releases
from .config import NodeConfig, UpstreamConfig
from .errors import NodeError, NotEnrolled
from .freeze import freeze_warning, freshness
from .metrics import record_pass as count_pass
from .policy import RateLimiter, in_windows, parse_rate_kbit
from .state import NodeState, now
from .sync import SyncEngine, SyncResult
from .upstream import FolderUpstream, Upstream, http_client, make_upstream

log = logging.getLogger("caravane.node")


def read_enrolment(path: Path) -> dict[str, Any]:
    try:
        doc = load_json(Path(path).read_bytes(), f"enrolment file {path}")
    except OSError as exc:
        raise NodeError(f"{path}: cannot read the enrolment file ({exc.strerror})") from None
    if not isinstance(doc, dict) or doc.get("format") != "caravane-enrolment":
        raise FormatError(f"{path}: not a Caravane enrolment file")
    for key in ("node_id", "root"):
        if not doc.get(key):
            raise FormatError(f"{path}: enrolment file has no {key}")
    return doc


class NodeAgent:
    """The agent of one centre (the hub's own ``Node`` is the centre's row in its database)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        if not (config.store_dir / "repo.json").is_file():
            raise NotEnrolled(
                f"{config.data_dir}: this node is not set up; run `caravane node init` first"
            )
        self.repo = CentreStore(config.store_dir)
        self.state = NodeState(config.db_url)
        self.releases = Releases(config.releases_dir, config.live_dir, config.durable)
        self._sync_lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> NodeAgent:
        return cls(NodeConfig.load(path))

    # ------------------------------------------------------------------ enrolment

    @classmethod
    def init(
        cls,
        data_dir: Path,
        enrolment: dict[str, Any],
        *,
        code: str | None = None,
        upstreams: list[UpstreamConfig] | None = None,
        offline: bool = False,
        port: int = 8480,
        config_path: Path | None = None,
    ) -> NodeAgent:
        """Pin the hub's root, make this centre's key pair, and register it with the hub.

        Offline (a centre that is never online), the registration waits in the queue and
        travels with the first report, by drive or by network.
        """
        data_dir = Path(data_dir).resolve()
        config_path = Path(config_path) if config_path else data_dir / "node.toml"
        for existing in {data_dir / "node.toml", config_path}:
            if existing.exists():
                raise NodeError(f"{existing}: a node is already set up here")
        data_dir.mkdir(parents=True, exist_ok=True)
        hub_url = str(enrolment.get("hub_url", "")).rstrip("/")
        if upstreams is None:
            upstreams = [UpstreamConfig("hub", "http", hub_url, 10)] if hub_url else []
        cfg = NodeConfig(
            data_dir=data_dir,
            node_id=str(enrolment["node_id"]),
            name=str(enrolment.get("name", "")),
            hub_url=hub_url,
            channels=[str(c) for c in enrolment.get("channels", [])],
            upstreams=upstreams,
            port=port,
        )
        root = enrolment["root"]
        CentreStore.init(cfg.store_dir, root.encode() if isinstance(root, str) else root)
        key = PrivateKey.generate()
        key.save(cfg.key_path)
        cfg.save(config_path)
        node = cls(cfg)
        code = code or enrolment.get("code")
        request = {"node_id": cfg.node_id, "code": code, "public_key": key.public.raw.hex()}
        node.state.set("enrol_request", json.dumps(request))
        if not offline and hub_url:
            node.complete_enrolment()
        return node

    def complete_enrolment(self) -> bool:
        """Send the pending registration to the hub; True once the hub has our key."""
        pending = self.state.get("enrol_request")
        if not pending:
            return True
        status, body = self._post("/api/v1/enrol", pending.encode(), "application/json")
        if status == 200:
            self.state.set("enrol_request", "")
            self.state.event("info", "registered with the hub")
            return True
        if status in (401, 403, 422):
            raise NodeError(f"the hub refused the registration: {body.get('error', body)}")
        raise NodeError(f"the hub did not answer the registration (HTTP {status})")

    def enrol_request(self) -> dict[str, Any] | None:
        pending = self.state.get("enrol_request")
        return json.loads(pending) if pending else None

    @property
    def key(self) -> PrivateKey:
        return PrivateKey.load(self.config.key_path)

    # ------------------------------------------------------------------ sync

    def upstreams(self, extra: list[Upstream] | None = None) -> list[Upstream]:
        ups = []
        for u in self.config.upstreams:
            try:
                ups.append(make_upstream(u, self.config.partial_dir, self.config.timeout_seconds))
            except NodeError as exc:
                self.state.event("error", str(exc))
        return (extra or []) + ups

    def engine(
        self,
        extra: list[Upstream] | None = None,
        only: list[Upstream] | None = None,
        **kwargs: Any,
    ) -> SyncEngine:
        cfg = self.config
        return SyncEngine(
            self.repo,
            self.releases,
            self.state,
            only if only is not None else self.upstreams(extra),
            cfg.partial_dir,
            limiter=RateLimiter(parse_rate_kbit(cfg.bandwidth_kbit)),
            daily_budget=cfg.daily_budget_mb * 1_000_000,
            monthly_budget=cfg.monthly_budget_mb * 1_000_000,
            margin=cfg.margin_mb * 1024 * 1024,
            pass_seconds=cfg.pass_minutes * 60,
            fetch_seconds=cfg.fetch_minutes * 60,
            min_rate=cfg.min_rate_kbit * 1000 // 8,
            **kwargs,
        )

    def sync(
        self,
        *,
        respect_windows: bool = False,
        extra: list[Upstream] | None = None,
        only: list[Upstream] | None = None,
        wait: bool = False,
        **kwargs: Any,
    ) -> SyncResult:
        """One pass over every subscribed channel. Only one pass runs at a time.

        ``wait`` (a drive just plugged in) waits for a running pass to end instead of
        skipping.
        """
        from .passlog import record_pass

        by = "agent" if respect_windows else "hand"
        if respect_windows and not in_windows(self.config.window_list()):
            result = SyncResult(
                skipped="outside the sync windows " + ", ".join(self.config.windows)
            )
            record_pass(self.state, result, self.config.upstreams, by)
            return result
        if not self._sync_lock.acquire(blocking=wait):
            return SyncResult(skipped="a sync is already running")
        try:
            with _process_lock(self.config.data_dir / ".sync.lock", wait):
                result = self.engine(extra, only, **kwargs).sync(self.channels())
        finally:
            self._sync_lock.release()
        record_pass(self.state, result, self.config.upstreams, by)
        if result.ok and result.complete and not result.skipped:
            self.errors_resolved()
        count_pass(self.state, result)  # /metrics
        return result

    def errors_resolved(self) -> None:
        """A clean pass: the errors logged so far no longer go in reports (the hub's fleet
        view then shows no "last error" for a centre that recovered)."""
        self.state.set("errors_after_event", str(self.state.max_event_id()))

    def channels(self) -> list[str]:
        return list(self.config.channels) or self.repo.channels()

    def rollback(self, channel: str) -> int:
        """Serve the previous release again and keep the current one off until a newer one."""
        active = self.releases.active(channel)
        previous = self.releases.previous(channel)
        if active is None or previous is None:
            raise NodeError(f"{channel!r} has no previous release on this node to go back to")
        self.releases.switch(channel, previous)
        self.state.hold(channel, active)
        self.state.record_activation(channel, previous, active, "rollback")
        self.state.event(
            "warning", f"{channel}: rolled back from version {active} to {previous} by an operator"
        )
        return previous

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        channels = []
        for ch in self.channels():
            active = self.releases.active(ch)
            try:
                meta = self.repo.channel_meta(ch)
                latest, title = meta.version, meta.title
            except Exception:
                latest, title = None, ""
            if active is not None and latest is not None and active >= latest:
                state = "up-to-date"
            elif self.state.held(ch) is not None:
                state = "held"
            elif latest is None:
                state = "waiting"
            else:
                state = "behind"
            channels.append(
                {
                    "channel": ch,
                    "title": title,
                    "active": active,
                    "latest_known": latest,
                    "previous": self.releases.previous(ch),
                    "state": state,
                    "last_activation": self.state.last_activation(ch),
                    "freshness": freshness(self.state, ch, self.config.freeze_warning_days),
                }
            )
        usage = shutil.disk_usage(self.config.data_dir)
        return {
            "node_id": self.config.node_id,
            "name": self.config.name,
            "channels": channels,
            "disk": {"free": usage.free, "total": usage.total},
            "upstreams": [
                {"name": u.name, "kind": u.kind, "url": u.url, "cost": u.cost}
                for u in self.config.upstreams
            ],
            "upstream_health": self.state.upstream_health(),
            "reports_waiting": len(self.state.unsent_reports()),
            "registration_waiting": bool(self.state.get("enrol_request")),
            "recent_events": self.state.recent_events(10),
            "freeze_warning_days": self.config.freeze_warning_days,
            "freeze_warning": freeze_warning(channels, self.config.freeze_warning_days),
        }

    # ------------------------------------------------------------------ reports

    def make_report(self, route: str | None = None) -> tuple[int, bytes]:
        """Sign a report of this centre's state and queue it; it is kept until delivered.

        ``route`` is how the centre is fed (the signed claim the fleet view shows); by default
        the kind of the upstream that last served it. Errors are those logged since the last
        clean pass, so a recovered centre stops reporting old ones.
        """
        seq = self.state.next_seq()
        errors = self.state.errors_since(int(self.state.get("errors_after_event", "0") or 0))
        report = Report(
            node_id=self.config.node_id,
            seq=seq,
            sent_at=now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            installed={
                ch: v for ch in self.channels() if (v := self.releases.active(ch)) is not None
            },
            free_disk=shutil.disk_usage(self.config.data_dir).free,
            errors=errors,
            usage=self.state.usage(),
            route=route or self.feed_route(),
            fresh={
                ch: t
                for ch in self.channels()
                if (t := freshness(self.state, ch, 0)["last_fresh_word"]) is not None
            },
        )
        body = report.sign(self.key)
        self.state.queue_report(seq, body)
        return seq, body

    def feed_route(self) -> str:
        """The route of the upstream that served this centre last (network, peer, usb...)."""
        kinds = {u.name: u.kind for u in self.config.upstreams}
        best: tuple[str, str] | None = None
        for h in self.state.upstream_health():
            if h["last_ok"] and (best is None or h["last_ok"] > best[0]):
                best = (h["last_ok"], h["name"])
        if best is None:
            return "network"
        name = best[1]
        if name.startswith("drive:"):
            return "usb"
        kind = kinds.get(name, "http")
        return {"http": "network", "folder": "usb"}.get(kind, kind)

    def send_reports(self) -> int:
        """Send every queued report upstream, oldest first; returns how many the hub holds.

        Own reports and those relayed for peer centres go to the hub; a centre without a
        reachable hub hands them to a peer centre it syncs from, which keeps them and
        forwards them on its own routes. A report the hub already holds (409) is delivered.
        """
        own = self.state.unsent_reports()
        relayed = self.state.unsent_relayed()
        if not own and not relayed and not self.state.get("enrol_request"):
            return 0
        peers = [u for u in self.config.upstreams if u.kind == "peer"]
        if not self.config.hub_url and not peers:
            return 0  # a centre that is never online: its reports go out on drives
        try:
            if not self.config.hub_url:
                raise NodeError("this centre has no hub address in node.toml")
            if self.state.get("enrol_request"):
                self.complete_enrolment()
            return self._send_to(self.config.hub_url, own, relayed, "network")
        except NodeError as hub_error:
            for peer in peers:
                try:
                    return self._send_to(peer.url, own, [], f"peer:{peer.name}")
                except NodeError as exc:
                    log.info("peer %s did not take the reports: %s", peer.name, exc)
            raise hub_error

    def _send_to(
        self,
        base: str,
        own: list[tuple[int, bytes]],
        relayed: list[tuple[str, int, bytes]],
        route: str,
    ) -> int:
        """POST reports to the hub (or, route ``peer:...``, to a peer's relay)."""
        to_peer = route.startswith("peer:")
        via = f"?via={self.config.node_id}"
        sent = 0
        items = [(self.config.node_id, seq, body, "") for seq, body in own] + [
            (cid, seq, body, via) for cid, seq, body in relayed
        ]
        for centre, seq, body, query in items:
            path = "/api/v1/relay/reports" if to_peer else f"/api/v1/nodes/{centre}/reports"
            status, reply = self._post(path + query, body, "application/json", base)
            if status in (200, 409):  # 409: the hub already holds this (centre, seq)
                if centre == self.config.node_id:
                    self.state.mark_sent(seq, route)
                else:
                    self.state.mark_relayed_sent(centre, seq, route)
                sent += 1
            elif status in (403, 422) and centre != self.config.node_id:
                error = str(reply.get("error", reply))
                if "not enrolled" in error:  # its registration may still be on its way
                    continue
                # forged or malformed: the hub will never take it, so it leaves the queue
                self.state.mark_relayed_sent(centre, seq, f"refused:{status}")
                self.state.event(
                    "warning", f"the hub refused a report relayed for centre {centre}: {error}"
                )
            else:
                where = "the peer" if to_peer else "the hub"
                raise NodeError(
                    f"{where} refused report {seq} of centre {centre} (HTTP {status}: "
                    f"{reply.get('error', reply)}); it stays queued and goes with the next "
                    "pass or drive"
                )
        return sent

    def relay_report(self, body: bytes) -> dict[str, Any]:
        """A peer centre hands over a signed report: keep it until the hub holds it.

        This centre cannot check the signature (it does not know the peer's key); the hub
        does, when the report arrives. Only the shape and size are checked here.
        """
        from caravane.protocol.report import report_ids

        centre, seq = report_ids(body)
        if centre == self.config.node_id:
            raise FormatError("a report of this centre itself cannot be relayed to it")
        try:
            fresh = self.state.queue_relayed(centre, seq, body)
        except OverflowError as exc:
            raise NodeError(str(exc)) from None
        return {"queued": fresh, "centre": centre, "seq": seq, "relay": self.config.node_id}

    def _post(
        self, path: str, body: bytes, ctype: str, base: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST to the hub (or ``base``) with the sync's HTTP client (proxies, redirects)."""
        base = base or self.config.hub_url
        try:
            with http_client(self.config.timeout_seconds) as client:
                resp = client.post(
                    base.rstrip("/") + path, content=body, headers={"Content-Type": ctype}
                )
                data = resp.read()
        except httpx.HTTPError as exc:
            raise NodeError(
                f"{base} is not reachable ({exc}); the report stays queued and goes with the "
                "next pass or drive"
            ) from None
        try:
            reply = json.loads(data or b"{}")
        except ValueError:
            reply = {}
        return resp.status_code, reply if isinstance(reply, dict) else {"reply": reply}

    # ------------------------------------------------------------------ drives

    def drive_upstream(self, drive: Path) -> Upstream:
        from caravane.packs.bundle import bundle_root

        from .drive import DriveUpstream

        if (bundle_root(Path(drive)) / "repo").is_dir():
            return DriveUpstream(Path(drive), cost=0)
        return FolderUpstream(f"drive:{drive}", Path(drive), cost=0)

    def close(self) -> None:
        self.state.close()


class _process_lock:
    """One sync per data folder across processes (the agent and a hand-run `node sync`)."""

    def __init__(self, path: Path, wait: bool = False) -> None:
        self.path = path
        self.wait = wait

    def __enter__(self) -> None:
        import fcntl

        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            self.fh.close()
            raise NodeError("another sync is running on this node; wait for it to end") from None

    def __exit__(self, *exc: object) -> None:
        import fcntl

        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


# --------------------------------------------------------------------------- drives

RECEIPT = """Caravane - {name} ({node_id})
{when}

{lines_en}

{lines_fr}

The drive can be removed now. / La clé peut être retirée maintenant.
"""


def import_drive_into_centre(node: NodeAgent, drive: Path, progress: Any = None) -> dict[str, Any]:
    """Take from a drive what this centre needs, activate it, and write the report back.

    The drive's packs are applied straight from the drive (verified entry by entry); then one
    sync pass with the drive as the only upstream switches the releases in, or continues a
    transfer that an earlier drive or the network began. The centre's signed report, any
    pending registration and a plain-language receipt go back onto the drive.
    """
    from caravane.packs.bundle import DriveError, read_description, write_enrolment
    from caravane.packs.bundle import import_drive as apply_bundle

    from .drive import DriveUpstream

    drive = Path(drive)
    read_description(drive)  # refuses an incomplete or foreign bundle with a clear message
    channels = node.channels()
    applied = apply_bundle(node.repo, drive, channels, progress)
    up = DriveUpstream(drive, cost=-1)
    result = node.sync(only=[up], route="usb", ignore_demotion=True, wait=True)
    errors = list(applied.failed) + result.errors
    for e in errors:
        node.state.event("error", f"drive {drive}: {e}")
    acked = read_acks_from_drive(node, drive)
    node.make_report(route="usb")
    lines_en, lines_fr = [], []
    for c in result.channels:
        if c.status == "activated":
            lines_en.append(f"- {c.channel}: version {c.active} installed")
            lines_fr.append(f"- {c.channel} : version {c.active} installée")
        elif c.status == "up-to-date":
            lines_en.append(f"- {c.channel}: already up to date (version {c.active})")
            lines_fr.append(f"- {c.channel} : déjà à jour (version {c.active})")
        else:
            lines_en.append(f"- {c.channel}: NOT installed: {c.message}")
            lines_fr.append(f"- {c.channel} : NON installée : {c.message}")
    for e in applied.failed:
        lines_en.append(f"- problem: {e}")
        lines_fr.append(f"- problème : {e}")
    receipt = RECEIPT.format(
        name=node.config.name,
        node_id=node.config.node_id,
        when=now().strftime("%Y-%m-%d %H:%M UTC"),
        lines_en="\n".join(lines_en) or "- nothing for this centre on this drive",
        lines_fr="\n".join(lines_fr) or "- rien pour ce centre sur cette clé",
    )
    try:
        written_reports = write_reports_to_drive(node, drive, receipt)
        pending = node.state.get("enrol_request")
        if pending:
            write_enrolment(drive, node.config.node_id, pending.encode())
        written = True
    except (DriveError, OSError) as exc:
        written = False
        errors.append(f"the report could not be written to the drive ({exc})")
    return {
        "ok": not errors and result.complete,
        "channels": [c.to_dict() for c in result.channels],
        "applied": applied.applied,
        "errors": errors,
        "report_written": written,
        "reports_on_drive": written_reports if written else 0,
        "acknowledged": acked,
        "receipt": receipt,
    }


def write_reports_to_drive(node: NodeAgent, drive: Path, receipt: str) -> int:
    """Every report still waiting (this centre's and those relayed for peers) goes on the drive.

    One file per report, ``reports/<centre>.<seq>.json``: a later import never overwrites an
    earlier one (the report of a failed import reaches the hub too), and the hub stores each
    (centre, seq) once however many drives carry it. They stay queued here until the hub's
    acknowledgement comes back on a drive. Returns how many were written.
    """
    from caravane.packs.bundle import BUNDLE_DIR, safe_name
    from caravane.packs.drive_io import Drive

    # only inside the drive's own folders: a folder that is a link is refused, never followed
    d = Drive(drive)
    items = [(node.config.node_id, seq, body) for seq, body in node.state.unsent_reports()]
    items += node.state.unsent_relayed()
    for centre, seq, body in items:
        d.write_bytes(f"{BUNDLE_DIR}/reports/{safe_name(centre)}.{seq}.json", body)
    d.write_bytes(f"{BUNDLE_DIR}/receipts/{safe_name(node.config.node_id)}.txt", receipt.encode())
    return len(items)


def read_acks_from_drive(node: NodeAgent, drive: Path) -> int:
    """Mark delivered the reports the hub acknowledged on this drive; returns how many.

    An acknowledgement only counts when signed by the hub's release key (checked against
    this centre's pinned root) and about a centre whose reports wait here; a bad one is
    logged and ignored, so the reports simply travel again (the hub deduplicates).
    """
    from caravane.packs.bundle import BUNDLE_DIR, safe_name
    from caravane.packs.drive_io import Drive
    from caravane.protocol.report import MAX_REPORT_BYTES, verify_ack

    d = Drive(drive)  # no link followed, no FIFO opened, reads bounded
    if not d.is_dir(f"{BUNDLE_DIR}/acks"):
        return 0
    waiting_relayed: dict[str, set[int]] = {}
    for cid, seq, _ in node.state.unsent_relayed():
        waiting_relayed.setdefault(cid, set()).add(seq)
    own = {seq for seq, _ in node.state.unsent_reports()}
    marked = 0
    for centre in [node.config.node_id, *sorted(waiting_relayed)]:
        rel = f"{BUNDLE_DIR}/acks/{safe_name(centre)}.json"
        if not d.exists(rel):
            continue
        try:
            seqs = verify_ack(d.read_bytes(rel, MAX_REPORT_BYTES), node.repo.trusted.root, centre)
        except (CaravaneError, OSError) as exc:
            node.state.event("warning", f"drive {drive}: {rel} ignored ({exc})")
            continue
        for seq in seqs:
            if centre == node.config.node_id and seq in own:
                node.state.mark_sent(seq, "usb")
                marked += 1
            elif seq in waiting_relayed.get(centre, set()):
                node.state.mark_relayed_sent(centre, seq, "usb")
                marked += 1
    return marked
