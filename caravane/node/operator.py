"""The operator page: what this centre holds, what it knows of, why the rest is not here yet.

It tells the truth from the node's own state, never a guess: the release served per channel
and since when, newer releases the signed metadata names and each reason they wait (outside
the sync windows, data budget spent, disk too small, upstreams set aside, pieces still on
their way, no upstream answering), when each route (network, mirror, peer, rsync, drive) was
last in contact and last brought the centre up to date, the freeze warning, and the recent
events translated and in the centre's local time.

Two buttons start work in the portal's process (``sync now``, ``import the drive``): a POST
carrying a CSRF token (a random value in a SameSite=Strict cookie, repeated in the form:
another web site cannot read it), accepted from the loopback and private (LAN) addresses the
portal serves; the page then shows the job's progress (``/api/operator/job``, polled by a
few lines of JavaScript; reloading the page works as well) and outcome.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
import secrets
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from caravane.i18n import Translator, size_text
from caravane.protocol.errors import CaravaneError

from .errors import NodeError, disk_problem
from .passlog import last_pass, last_syncs, route_of
from .policy import in_windows
from .state import now

if TYPE_CHECKING:
    from .serve import Portal

CSRF_COOKIE = "op_csrf"


# --------------------------------------------------------------------------- time in words


def _parse(iso: str | None) -> datetime | None:
    if not iso:
        return None
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=now().tzinfo)


def local_time(iso: str | None, t: Translator) -> str:
    """An ISO instant as the centre's clock shows it (the machine's time zone)."""
    when = _parse(iso)
    if when is None:
        return t("time.never")
    return when.astimezone().strftime(t("time.format"))


def when_text(iso: str | None, t: Translator, at: datetime | None = None) -> str:
    """ "12 min ago (01/12/2026 at 14:05)": how long ago, then the local time."""
    when = _parse(iso)
    if when is None:
        return t("time.never")
    seconds = ((at or now()) - when).total_seconds()
    if seconds < 0:
        return local_time(iso, t)
    if seconds < 90:
        ago = t("time.just_now")
    elif seconds < 5400:
        ago = t("time.minutes_ago", n=round(seconds / 60))
    elif seconds < 48 * 3600:
        ago = t("time.hours_ago", n=round(seconds / 3600))
    else:
        ago = t("time.days_ago", n=int(seconds // 86400))
    return f"{ago} ({local_time(iso, t)})"


# --------------------------------------------------------------------------- events

#: the agent's event lines (English, in node.db) and the key that says them in any language
EVENT_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(
            r"^(?P<channel>.+?): version (?P<v>\d+) is now served \(was (?P<prev>[^;]+); "
            r"came by (?P<route>[\w:.-]+)\)$"
        ),
        "ev.served",
    ),
    (re.compile(r"^registered with the hub$"), "ev.registered"),
    (
        re.compile(r"^trusted root updated to version (?P<v>\d+) \(from (?P<up>.+)\)$"),
        "ev.root",
    ),
    (
        re.compile(
            r"^(?P<channel>.+?): rolled back from version (?P<a>\d+) to (?P<b>\d+) "
            r"by an operator$"
        ),
        "ev.rollback",
    ),
    (
        re.compile(
            r"^the disk at (?P<where>.+?) needs (?P<gb>[\d.]+) GB more for the next release"
        ),
        "ev.disk",
    ),
    (
        re.compile(
            r"^(?P<error>.+); upstream (?P<up>.+?) is set aside until (?P<until>\d\d:\d\d) UTC "
            r"and the next one is tried$",
            re.DOTALL,
        ),
        "ev.aside",
    ),
    (re.compile(r"^(?:.*)data budget(?:.*)$", re.IGNORECASE), "ev.budget"),
]


def event_text(
    message: str, t: Translator, titles: dict[str, str] | None = None
) -> tuple[str, bool]:
    """The event in the page's language, channels by their titles; (text, translated).
    Lines of no known shape stay as the agent wrote them."""
    for pattern, key in EVENT_PATTERNS:
        m = pattern.match(message)
        if m is None:
            continue
        args = m.groupdict()
        if "channel" in args and titles:
            args["channel"] = titles.get(args["channel"], args["channel"])
        if key == "ev.served" and args.get("prev") == "none":
            key = "ev.served_first"
        if "route" in args:
            args["route"] = t(f"route.{args['route']}") if args["route"] else ""
        if key == "ev.aside":
            args["until"] = _utc_hhmm_local(args["until"])
        return t(key, **args), True
    return message, False


def _utc_hhmm_local(hhmm: str) -> str:
    """``14:05`` (UTC, as the agent logs it) on the centre's clock."""
    try:
        h, m = (int(x) for x in hhmm.split(":"))
        when = now().replace(hour=h, minute=m, second=0, microsecond=0)
    except ValueError:
        return hhmm
    return when.astimezone().strftime("%H:%M")


# --------------------------------------------------------------------------- jobs


@dataclass
class Job:
    """One piece of work started from the page; the page shows it until the next one."""

    kind: str  # sync | import
    state: str = "running"  # running | done | failed | busy
    started: str = field(default_factory=lambda: now().isoformat(timespec="seconds"))
    finished: str | None = None
    received: int = 0
    lines: list[str] = field(default_factory=list)  # outcome, in English from the engine
    codes: list[dict[str, Any]] = field(default_factory=list)  # outcome, translatable

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _allowed(request: web.Request) -> bool:
    """From this machine or the centre's LAN: loopback, private and link-local addresses."""
    try:
        ip = ipaddress.ip_address((request.remote or "").split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d
    return ip.is_loopback or ip.is_private or ip.is_link_local


class OperatorPage:
    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self.node = portal.node
        self.job: Job | None = None
        self._job_lock = threading.Lock()

    # ------------------------------------------------------------------ the state in words

    def context(self, lang: str) -> dict[str, Any]:
        t = Translator(lang)
        node, cfg = self.node, self.node.config
        st = node.status()
        passed = last_pass(node.state)
        pass_channels = {c["channel"]: c for c in (passed or {}).get("channels", [])}
        health = {h["name"]: h for h in st["upstream_health"]}
        reasons_now = self._reasons_now(t, passed, health)

        channels = []
        behind = waiting = 0
        for c in st["channels"]:
            title = c["title"] or c["channel"]
            act = c["last_activation"]
            row: dict[str, Any] = {
                "channel": c["channel"],
                "title": title,
                "state": c["state"],
                "active": c["active"],
                "latest": c["latest_known"],
                "served_since": when_text(act["at"], t) if act else None,
                "served_by": t(f"route.{act['route']}") if act else None,
                "checked": when_text(c["freshness"]["last_checked"], t),
                "newer": None,
                "reasons": [],
            }
            newer = c["latest_known"] is not None and (c["active"] or 0) < c["latest_known"]
            if c["state"] == "held":
                row["reasons"].append(t("op.why_held", v=c["active"], latest=c["latest_known"]))
            elif newer:
                behind += 1
                row["newer"] = self._release_words(c["channel"], c["latest_known"], t)
                row["reasons"] = self._reasons(t, pass_channels.get(c["channel"]), reasons_now)
            elif c["active"] is None:
                waiting += 1
                row["reasons"] = self._reasons(t, pass_channels.get(c["channel"]), reasons_now)
            channels.append(row)

        if behind:
            summary = ("warn", t("op.summary_behind", n=behind))
        elif waiting:
            summary = ("warn", t("op.summary_waiting"))
        elif passed is None and not any(h["last_ok"] for h in st["upstream_health"]):
            summary = ("warn", t("op.summary_never"))
        else:
            checked = [c["freshness"]["last_checked"] for c in st["channels"]]
            latest_check = max((x for x in checked if x), default=None)
            summary = ("ok", t("op.summary_ok", when=when_text(latest_check, t)))

        return {
            "st": st,
            "centre": cfg.name or cfg.node_id,
            "summary": summary,
            "freeze": (st["freeze_warning"] or {}).get(lang) if st["freeze_warning"] else None,
            "channels": channels,
            "routes": self._routes(t, health),
            "last_pass": self._pass_words(t, passed),
            "next": self._next(t, st, behind or waiting),
            "events": self._events(t, st["recent_events"]),
            "disk": size_text(st["disk"]["free"], lang),
            "job": self.job_words(t),
            "mounts": ", ".join(cfg.usb_mounts),
        }

    def _events(self, t: Translator, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        titles = self.portal.channel_titles()
        out = []
        for e in events:
            text, translated = event_text(e["message"], t, titles)
            out.append(
                {
                    "at": local_time(e["at"], t),
                    "iso": e["at"],
                    "level": e["level"],
                    "text": text,
                    "translated": translated,
                }
            )
        return out

    def _release_words(self, channel: str, version: int, t: Translator) -> str:
        try:
            ref = self.node.repo.channel_meta(channel).releases.get(version)
        except Exception:
            ref = None
        if ref is None:
            return t("op.newer_plain", latest=version)
        return t(
            "op.newer",
            latest=version,
            when=local_time(ref.created, t),
            size=size_text(ref.size, t.lang),
        )

    def _reasons_now(
        self, t: Translator, passed: dict[str, Any] | None, health: dict[str, dict[str, Any]]
    ) -> list[str]:
        """Why the agent cannot fetch right now, whatever the channel."""
        cfg, state = self.node.config, self.node.state
        out = []
        if cfg.windows and not in_windows(cfg.window_list()):
            out.append(t("op.why_window", windows=", ".join(cfg.windows)))
        if cfg.daily_budget_mb and state.metered_bytes("day") >= cfg.daily_budget_mb * 1_000_000:
            out.append(
                t("op.why_budget_day", budget=size_text(cfg.daily_budget_mb * 10**6, t.lang))
            )
        monthly = cfg.monthly_budget_mb * 1_000_000
        if monthly and state.metered_bytes("month") >= monthly:
            out.append(t("op.why_budget_month", budget=size_text(monthly, t.lang)))
        short = int(state.get("disk_missing") or 0)
        if short > 0:
            out.append(t("op.why_disk", missing=size_text(short, t.lang)))
        for h in health.values():
            if h["demoted_until"] and (_parse(h["demoted_until"]) or now()) > now():
                out.append(
                    t(
                        "op.why_aside",
                        name=h["name"],
                        until=local_time(h["demoted_until"], t),
                        error=(h["last_error"] or "")[:200],
                    )
                )
        if passed and passed.get("skipped") and not passed["skipped"].startswith("outside"):
            out.append(t("op.why_offline", when=when_text(passed["at"], t)))
        return out

    def _reasons(
        self, t: Translator, outcome: dict[str, Any] | None, now_reasons: list[str]
    ) -> list[str]:
        out = list(now_reasons)
        if outcome and outcome.get("status") in ("waiting", "error"):
            missing = int(outcome.get("missing_bytes") or 0)
            message = str(outcome.get("message") or "")
            if missing and "disk" not in message:
                out.append(t("op.why_missing", size=size_text(missing, t.lang)))
            elif message and not now_reasons:
                out.append(t("op.why_said", message=message))
        if not out:
            out.append(t("op.why_next_pass"))
        return out

    def _routes(self, t: Translator, health: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        cfg = self.node.config
        syncs = last_syncs(self.node.state)
        routes: dict[str, dict[str, Any]] = {}
        names = [u.name for u in cfg.upstreams] + list(health)
        for name in dict.fromkeys(names):
            route = route_of(name, cfg.upstreams)
            r = routes.setdefault(
                route, {"route": route, "label": t(f"route.{route}"), "contact": None, "aside": []}
            )
            h = health.get(name)
            if h and h["last_ok"] and (r["contact"] is None or h["last_ok"] > r["contact"]):
                r["contact"] = h["last_ok"]
            if h and h["demoted_until"] and (_parse(h["demoted_until"]) or now()) > now():
                r["aside"].append(
                    t("op.route_aside", name=name, until=local_time(h["demoted_until"], t))
                )
        if cfg.usb_mounts or "usb" in syncs:
            routes.setdefault(
                "usb", {"route": "usb", "label": t("route.usb"), "contact": None, "aside": []}
            )
        out = []
        for route, r in routes.items():
            out.append(
                {
                    "label": r["label"],
                    "contact": when_text(r["contact"], t),
                    "sync": when_text(syncs.get(route), t),
                    "aside": r["aside"],
                }
            )
        return out

    def _pass_words(self, t: Translator, passed: dict[str, Any] | None) -> str:
        if passed is None:
            return t("op.pass_never")
        when = when_text(passed["at"], t)
        who = t("op.by_hand") if passed.get("by") == "hand" else t("op.by_agent")
        if passed.get("skipped", "").startswith("outside"):
            return t("op.pass_window", when=when, who=who)
        if passed.get("skipped"):
            return t("op.pass_offline", when=when, who=who)
        if passed.get("complete"):
            return t("op.pass_complete", when=when, who=who)
        return t("op.pass_partial", when=when, who=who)

    def _next(self, t: Translator, st: dict[str, Any], behind: int) -> list[str]:
        out = []
        for drive, state in self.portal.drive_notice.items():
            out.append(t("op.drive_done" if state == "done" else "op.drive_busy", drive=drive))
        if behind and not out:
            out.append(t("op.next_link"))
        if st["reports_waiting"]:
            out.append(t.n("op.reports_waiting", st["reports_waiting"]))
        if st["registration_waiting"]:
            out.append(t("op.registration_waiting"))
        if not out:
            out.append(t("op.next_nothing_known"))
        return out

    def job_words(self, t: Translator) -> dict[str, Any] | None:
        job = self.job
        if job is None:
            return None
        head = {
            ("sync", "running"): "op.job_sync_running",
            ("import", "running"): "op.job_import_running",
            ("sync", "done"): "op.job_sync_done",
            ("import", "done"): "op.job_import_done",
            ("sync", "busy"): "op.job_busy",
            ("import", "busy"): "op.job_busy",
        }.get((job.kind, job.state), "op.job_failed")
        titles = self.portal.channel_titles()
        lines = [t(c["key"], **_titled(c.get("args", {}), titles)) for c in job.codes]
        lines += job.lines
        return {
            "state": job.state,
            "head": t(head, when=local_time(job.started, t)),
            "progress": t("op.job_received", size=size_text(job.received, t.lang))
            if job.received
            else "",
            "lines": lines,
        }

    # ------------------------------------------------------------------ handlers

    def _csrf(self, request: web.Request) -> tuple[str, bool]:
        token = request.cookies.get(CSRF_COOKIE, "")
        if re.fullmatch(r"[A-Za-z0-9_-]{32,64}", token):
            return token, False
        return secrets.token_urlsafe(32), True

    async def view(self, request: web.Request) -> web.Response:
        lang = self.portal.lang(request)
        ctx = await asyncio.to_thread(self.context, lang)
        token, new = self._csrf(request)
        resp = self.portal.render(
            request, "operator.html", csrf=token, allowed=_allowed(request), **ctx
        )
        if new:
            resp.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="Strict", path="/")
        resp.headers["Cache-Control"] = "no-store"
        return resp

    async def act(self, request: web.Request) -> web.Response:
        """POST /operator/sync or /operator/import: start the work, then back to the page."""
        t = Translator(self.portal.lang(request))
        if not _allowed(request):
            raise web.HTTPForbidden(text=t("op.refused_remote"))
        form = await request.post()
        cookie = request.cookies.get(CSRF_COOKIE, "")
        sent = str(form.get("csrf", ""))
        if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
            raise web.HTTPForbidden(text=t("op.refused_csrf"))
        origin = request.headers.get("Origin")
        if origin and origin != "null" and origin.split("://", 1)[-1] != request.host:
            raise web.HTTPForbidden(text=t("op.refused_csrf"))
        kind = request.match_info["action"]
        if kind not in ("sync", "import"):
            raise web.HTTPNotFound()
        self.start(kind)
        raise web.HTTPSeeOther("/operator#job")

    async def job_api(self, request: web.Request) -> web.Response:
        t = Translator(self.portal.lang(request))
        words = self.job_words(t)
        return web.json_response(
            {"job": self.job.to_dict() if self.job else None, "words": words},
            headers={"Cache-Control": "no-store"},
        )

    # ------------------------------------------------------------------ the work

    def start(self, kind: str) -> Job:
        with self._job_lock:
            if self.job is not None and self.job.state == "running":
                return self.job
            job = self.job = Job(kind)
        target = self._sync if kind == "sync" else self._import
        threading.Thread(target=self._run, args=(job, target), daemon=True).start()
        return job

    def _run(self, job: Job, work: Any) -> None:
        try:
            work(job)
        except CaravaneError as exc:
            job.state, job.lines = "failed", [*job.lines, str(exc)]
        except Exception as exc:  # the page must say it ended, whatever happened
            line = disk_problem(exc, self.node.config.data_dir)
            job.state = "failed"
            job.lines.append(line or f"{type(exc).__name__}: {exc}")
        finally:
            job.finished = now().isoformat(timespec="seconds")

    def _progress(self, job: Job) -> Any:
        def tick(n: int) -> None:
            job.received += n

        return tick

    def _sync(self, job: Job) -> None:
        result = self.node.sync(ignore_demotion=True, progress=self._progress(job))
        if result.skipped == "a sync is already running":
            job.state = "busy"
            return
        for c in result.channels:
            job.codes.append(_channel_code(c.channel, c.status, c.active, c.latest, c.message))
        if result.skipped:
            job.lines.append(result.skipped)
        job.lines += result.errors[:3]
        try:
            self.node.make_report()
            sent = self.node.send_reports()
            if sent:
                job.codes.append({"key": "op.job_reports_sent", "args": {"n": sent}})
        except NodeError as exc:
            job.lines.append(str(exc))
        job.state = "done" if result.ok and not result.skipped else "failed"

    def _import(self, job: Job) -> None:
        from .agent import import_drive_into_centre
        from .service import find_drives

        mounts = self.node.config.usb_mounts
        if not mounts:
            job.state = "failed"
            job.codes.append({"key": "op.no_mounts", "args": {}})
            return
        drives = find_drives(mounts)
        if not drives:
            job.state = "failed"
            job.codes.append({"key": "op.no_drive", "args": {"mounts": ", ".join(mounts)}})
            return
        ok = True
        for drive in drives:
            self.portal.drive_notice[str(drive)] = "busy"
            try:
                out = import_drive_into_centre(self.node, Path(drive))
            finally:
                self.portal.drive_notice[str(drive)] = "done"
            for c in out["channels"]:
                job.codes.append(
                    _channel_code(c["channel"], c["status"], c["active"], c["latest"], c["message"])
                )
            job.lines += out["errors"][:3]
            ok = ok and bool(out["ok"])
            job.codes.append({"key": "op.drive_done", "args": {"drive": str(drive)}})
        job.state = "done" if ok else "failed"


def _titled(args: dict[str, Any], titles: dict[str, str]) -> dict[str, Any]:
    if "channel" not in args:
        return args
    return dict(args, channel=titles.get(args["channel"], args["channel"]))


def _channel_code(
    channel: str, status: str, active: int | None, latest: int | None, message: str
) -> dict[str, Any]:
    key = {
        "activated": "op.job_activated",
        "up-to-date": "op.job_up_to_date",
        "held": "op.job_held",
    }.get(status, "op.job_not_yet")
    return {
        "key": key,
        "args": {
            "channel": channel,
            "v": active or "-",
            "latest": latest or "?",
            "message": message,
        },
    }
