"""The field agent's pages: the plan of a route, its printable checklist, and the drive.

The plan comes from each centre's own subscriptions and last report (``plan_packs``): what
the drive must hold, how big a drive that takes, and per centre what it will apply. The
checklist prints on one sheet per route (print CSS) for the agent to tick at each centre.
When the hub machine has the agent's drive plugged in at one of hub.toml's ``usb_mounts``,
the page prepares it as a background job with progress (the same ``prepare_for_route`` as
``caravane usb prepare``); otherwise the agent downloads the plan.

Drive jobs live in memory, like publish jobs: a restart of the hub loses the progress page,
never the drive, whose preparation is resumable (packs already written and verified stay).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from caravane.i18n import Translator
from caravane.packs.bundle import MARGIN, plan_packs
from caravane.protocol.errors import CaravaneError

from .appstate import in_thread
from .errors import HubError
from .service import Hub
from .usb import prepare_for_route, route_targets
from .web import UI_KEY, error_page, lang_of, page, render

log = logging.getLogger("caravane.hub.web_routes")
FINISHED = ("done", "failed")


@dataclass
class DriveJob:
    id: str
    mount: str
    names: list[str]
    region: str
    actor: str
    state: str = "queued"  # queued | writing | done | failed
    total: int = 0
    done: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    started: float = field(default_factory=time.time)
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def percent(self) -> int:
        if self.state == "done":
            return 100
        return min(99, int(100 * self.done / self.total)) if self.total else 0


DRIVE_JOBS: web.AppKey[dict[str, DriveJob]] = web.AppKey("hub_drive_jobs", dict)


def route_plan(hub: Hub, names: list[str], region: str | None) -> dict[str, Any]:
    """The plan of a route as the page shows it and the JSON download carries it."""
    targets, chans = route_targets(hub, names, region)
    plans = plan_packs(hub.repo, targets, chans)
    by_id = {n.id: n for n in hub.find_centres()}
    titles = hub.channel_titles()
    packs: list[dict[str, Any]] = [
        {
            "channel": pl.channel,
            "title": titles.get(pl.channel, pl.channel),
            "from_version": pl.from_version,
            "to_version": pl.to_version,
            "size": pl.size,
            "path": pl.relpath,
            "for_centres": pl.for_centres,
        }
        for pl in plans
    ]
    total = sum(pl.size for pl in plans)
    return {
        "format": "caravane-route-plan",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "region": region or "",
        "channels": chans,
        "centres": [
            {
                "id": tg.name,
                "name": by_id[tg.name].name if tg.name in by_id else tg.name,
                "region": tg.region,
                "subscriptions": tg.subscriptions or [],
                "installed": tg.installed,
                "steps": [p for p in packs if tg.name in p["for_centres"]],
                "bytes": sum(p["size"] for p in packs if tg.name in p["for_centres"]),
            }
            for tg in targets
        ],
        "packs": packs,
        "total_bytes": total,
        # packs, plus the room prepare() keeps free for metadata, plans and reports
        "drive_bytes_needed": total + MARGIN if packs else 0,
    }


def mounts(hub: Hub) -> list[dict[str, Any]]:
    """hub.toml's ``usb_mounts``, each with whether a writable folder is there and its room."""
    out = []
    for i, m in enumerate(hub.config.usb_mounts):
        path = Path(m)
        present = path.is_dir() and os.access(path, os.W_OK)
        free = shutil.disk_usage(path).free if present else None
        out.append({"index": i, "path": m, "present": present, "free": free})
    return out


def _route_query(request: web.Request) -> tuple[list[str], str | None]:
    names = [c for c in request.query.getall("centre", []) if c]
    return names, request.query.get("region") or None


def _routes_page(hub: Hub, names: list[str], region: str | None) -> dict[str, Any]:
    centres = hub.fleet()
    plan = route_plan(hub, names, region) if names or region else None
    return {
        "centres": centres,
        "regions": sorted({n["region"] for n in centres if n["region"]}),
        "plan": plan,
        "names_of": {n["id"]: n["name"] for n in centres},
        "mounts": mounts(hub),
    }


@page("field_agent")
async def routes(request: web.Request) -> web.Response:
    hub = request.app[UI_KEY].hub
    names, region = _route_query(request)
    data = await in_thread(_routes_page, hub, names, region)
    running = [j for j in request.app[DRIVE_JOBS].values() if j.state not in FINISHED]
    return render(
        request,
        "routes.html",
        region=region or "",
        chosen=set(names),
        names=names,
        download_query=request.query_string,
        busy={j.mount for j in running},
        **data,
    )


@page("field_agent")
async def route_plan_download(request: web.Request) -> web.Response:
    hub = request.app[UI_KEY].hub
    names, region = _route_query(request)
    plan = await in_thread(route_plan, hub, names, region)
    return web.Response(
        body=json.dumps(plan, indent=2, ensure_ascii=False).encode(),
        content_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="route-plan.json"'},
    )


@page("field_agent", post=True)
async def prepare_drive(request: web.Request) -> web.Response:
    """Start writing the route's drive at a configured mount (by its index, never a path
    from the form: a browser may only name folders the hub's administrator listed)."""
    hub = request.app[UI_KEY].hub
    t = Translator(lang_of(request))
    form = request["ui_form"]
    names = [str(c) for c in form.getall("centre", []) if c]
    region = str(form.get("region", "")) or None
    try:
        index = int(str(form.get("mount", "")))
        mount = hub.config.usb_mounts[index]
    except (ValueError, IndexError):
        return error_page(request, 400, t("hub.drive_no_mount"))
    if not names and not region:
        return error_page(request, 400, t("hub.drive_no_route"))
    if not (Path(mount).is_dir() and os.access(mount, os.W_OK)):
        return error_page(request, 409, t("hub.drive_absent", path=mount))
    jobs = request.app[DRIVE_JOBS]
    if any(j.mount == mount and j.state not in FINISHED for j in jobs.values()):
        return error_page(request, 409, t("hub.drive_busy", path=mount))
    plan = await in_thread(route_plan, hub, names, region)
    job = DriveJob(uuid.uuid4().hex[:12], mount, names, region or "", request["ui_principal"].name)
    job.total = int(plan["total_bytes"])
    day_ago = time.time() - 86400
    for old in [j for j in jobs.values() if j.started < day_ago and j.state in FINISHED]:
        del jobs[old.id]
    jobs[job.id] = job
    job.task = asyncio.create_task(_drive_job(hub, job))
    raise web.HTTPSeeOther(f"/ui/routes/jobs/{job.id}")


async def _drive_job(hub: Hub, job: DriveJob) -> None:
    def progress(n: int) -> None:
        job.done += n

    job.state = "writing"
    try:
        res = await in_thread(
            prepare_for_route,
            hub,
            Path(job.mount),
            job.names or None,
            job.region or None,
            None,
            progress=progress,
        )
        job.result = res.to_dict()
        await in_thread(hub.record, job.actor, "usb.prepare.web", drive=job.mount)
        job.state = "done"
    except (HubError, CaravaneError, OSError) as exc:
        job.state, job.error = "failed", str(exc)
    except Exception as exc:  # the page says it failed; the log says why
        log.exception("preparing the drive at %s failed", job.mount)
        job.state, job.error = "failed", f"internal error ({type(exc).__name__})"


@page("field_agent")
async def drive_job(request: web.Request) -> web.Response:
    job = request.app[DRIVE_JOBS].get(request.match_info["jid"])
    if job is None:
        return error_page(request, 404, Translator(lang_of(request))("hub.no_job"))
    titles = await in_thread(request.app[UI_KEY].hub.channel_titles)
    names_of = {n.id: n.name for n in await in_thread(request.app[UI_KEY].hub.find_centres)}
    return render(request, "drive_job.html", job=job, titles=titles, names_of=names_of)


def add_routes(app: web.Application) -> None:
    app[DRIVE_JOBS] = {}
    r = app.router
    r.add_get("/ui/routes", routes)
    r.add_get("/ui/routes/plan.json", route_plan_download)
    r.add_post("/ui/routes/prepare", prepare_drive)
    r.add_get("/ui/routes/jobs/{jid}", drive_job)
