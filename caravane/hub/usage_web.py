"""Usage pages for curators and programme operators, a CSV export and a JSON API.

Pages (``/ui/usage`` for content, ``/ui/usage/centres`` for centres and regions) follow the
rest of the dashboard: server-rendered, French or English, curators and admins only (field
agents do not see usage). The trend chart is an SVG drawn on the server from the same numbers
as the table beside it, so there is no front-end build and the table is the chart's text.

The JSON API (``/api/v1/usage/{files,never-used,trend,centres,regions}``, bearer token, role
curator or admin) and the CSV export (``?format=csv`` on the API, or ``/ui/usage/export/...``
from a signed-in page) answer from the same :class:`hub.usage.UsageService` calls as the
pages, so all three show the same numbers with the same privacy threshold applied.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Any

from aiohttp import web

from caravane.i18n import Translator

from .errors import HubError, NotFound
from .usage import Period, UsageService, min_count_setting
from .web import UI_KEY, lang_of, page, render

USAGE_KEY: web.AppKey[UsageService] = web.AppKey("usage", UsageService)
KINDS = ("files", "never-used", "trend", "centres", "regions")
MAX_WEEKS = 520
PALETTE = ("#0b5394", "#e69138", "#6aa84f", "#a64d79", "#45818e", "#b45f06")
OTHER_COLOUR = "#999999"


# --------------------------------------------------------------------------- query


class Query:
    """The filters every usage answer takes, read from a query string and checked."""

    def __init__(self, q: Any, channels: list[str]) -> None:
        self.channel = str(q.get("channel", "")).strip()
        if not self.channel and channels:
            self.channel = channels[0]
        self.region = str(q.get("region", "")).strip() or None
        self.by = str(q.get("by", "week"))
        if self.by not in ("week", "month"):
            raise HubError("by: use 'week' or 'month'", 400)
        raw_weeks = str(q.get("weeks", "12")).strip() or "12"
        try:
            self.weeks = int(raw_weeks)
        except ValueError:
            raise HubError(f"weeks: {raw_weeks!r} is not a number of weeks", 400) from None
        if not 0 <= self.weeks <= MAX_WEEKS:
            raise HubError(f"weeks: give 0 (all) to {MAX_WEEKS}", 400)
        period = Period.last_weeks(self.weeks)
        since, until = _date(q, "since"), _date(q, "until")
        self.period = Period(since or period.since, until or period.until)
        if self.period.since > self.period.until:
            raise HubError("since: must not be after until", 400)
        if self.period.until - self.period.since > timedelta(weeks=MAX_WEEKS):
            self.period.since = self.period.until - timedelta(weeks=MAX_WEEKS)

    def need_channel(self, channels: list[str]) -> str:
        if not self.channel:
            raise HubError("channel: say which channel (?channel=...)", 400)
        if self.channel not in channels:
            raise NotFound(f"no channel {self.channel!r}")
        return self.channel


def _date(q: Any, name: str) -> date | None:
    raw = str(q.get(name, "")).strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise HubError(f"{name}: {raw!r} is not a date (YYYY-MM-DD)", 400) from None


def answer(svc: UsageService, kind: str, q: Any) -> dict[str, Any]:
    """One usage answer (blocking: runs in a worker thread)."""
    channels = svc.channels()
    f = Query(q, channels)
    if kind == "files":
        return svc.files(f.need_channel(channels), f.period, f.region, limit=500)
    if kind == "never-used":
        return svc.never_used(f.need_channel(channels), f.period, f.region, limit=10_000)
    if kind == "trend":
        return svc.trend(f.need_channel(channels), f.period, f.region, f.by)
    if kind == "centres":
        return svc.centres(f.period, f.region, str(q.get("channel", "")).strip() or None)
    if kind == "regions":
        return svc.by_region(f.period, str(q.get("channel", "")).strip() or None)
    raise NotFound(f"no usage answer {kind!r}; use one of {', '.join(KINDS)}")


# --------------------------------------------------------------------------- CSV


def _count(row: dict[str, Any] | None, min_count: int) -> str:
    if row is None:
        return ""
    return f"<{min_count}" if row.get("suppressed") else str(row["count"])


def to_csv(kind: str, doc: dict[str, Any]) -> str:
    """The answer as CSV: a header row, one row per shown cell, small counts as ``<5``."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    m = int(doc.get("min_count", 0))
    period = doc.get("period", {})
    since, until = period.get("since", ""), period.get("until", "")
    if kind == "files":
        w.writerow(["channel", "region", "since", "until", "kind", "path", "items", "count"])
        for r in doc["files"]:
            w.writerow(
                [doc["channel"], doc["region"], since, until, "file", r["path"], 1, _count(r, m)]
            )
        if doc["other"]:
            o = doc["other"]
            w.writerow(
                [doc["channel"], doc["region"], since, until, "other", "", o["items"], _count(o, m)]
            )
    elif kind == "never-used":
        w.writerow(["channel", "version", "region", "since", "until", "path"])
        for p in doc["never_used"]:
            w.writerow([doc["channel"], doc["version"], doc["region"], since, until, p])
    elif kind == "trend":
        w.writerow(["channel", "region", "by", "start", "version", "items", "count"])
        for pt in doc["points"]:
            for r in pt["versions"]:
                w.writerow(
                    [
                        doc["channel"],
                        doc["region"],
                        doc["by"],
                        pt["start"],
                        r["version"],
                        1,
                        _count(r, m),
                    ]
                )
            if pt["other"]:
                o = pt["other"]
                w.writerow(
                    [
                        doc["channel"],
                        doc["region"],
                        doc["by"],
                        pt["start"],
                        "other",
                        o["items"],
                        _count(o, m),
                    ]
                )
    elif kind == "centres":
        w.writerow(
            [
                "since",
                "until",
                "kind",
                "centre_id",
                "name",
                "region",
                "items",
                "count",
                "last_contact",
            ]
        )
        for r in doc["centres"]:
            w.writerow(
                [since, until, "centre", r["id"], r["name"], r["region"], 1, _count(r, m), ""]
            )
        if doc["other"]:
            o = doc["other"]
            w.writerow([since, until, "other", "", "", "", o["items"], _count(o, m), ""])
        for key in ("nobody_opened", "no_report"):
            for r in doc[key]:
                w.writerow(
                    [
                        since,
                        until,
                        key,
                        r["id"],
                        r["name"],
                        r["region"],
                        1,
                        0 if key == "nobody_opened" else "",
                        r["last_contact"] or "",
                    ]
                )
    elif kind == "regions":
        w.writerow(["channel", "since", "until", "kind", "region", "items", "count"])
        for r in doc["regions"]:
            w.writerow([doc["channel"], since, until, "region", r["region"], 1, _count(r, m)])
        if doc["other"]:
            o = doc["other"]
            w.writerow([doc["channel"], since, until, "other", "", o["items"], _count(o, m)])
    return out.getvalue()


def csv_response(kind: str, doc: dict[str, Any]) -> web.Response:
    name = f"usage-{kind}" + (f"-{doc['channel']}" if doc.get("channel") else "") + ".csv"
    return web.Response(
        body=to_csv(kind, doc).encode("utf-8"),
        content_type="text/csv",
        charset="utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        },
    )


# --------------------------------------------------------------------------- API


async def api_usage(request: web.Request) -> web.Response:
    """``GET /api/v1/usage/{kind}``: JSON, or CSV with ``?format=csv``."""
    svc = request.app[USAGE_KEY]
    hub = request.app[UI_KEY].hub
    p = await asyncio.to_thread(hub.authenticate, request.headers.get("Authorization"))
    p.require("curator")
    kind = request.match_info["kind"]
    fmt = request.query.get("format", "json")
    if kind.endswith(".csv"):
        kind, fmt = kind[: -len(".csv")], "csv"
    if fmt not in ("json", "csv"):
        raise HubError("format: use 'json' or 'csv'", 400)
    doc = await asyncio.to_thread(answer, svc, kind, request.query)
    if fmt == "csv":
        return csv_response(kind, doc)
    return web.Response(
        text=json.dumps(doc, ensure_ascii=False),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


# --------------------------------------------------------------------------- chart


def chart(trend: dict[str, Any], width: int = 760, height: int = 260) -> dict[str, Any]:
    """Stacked bars per release for each week or month, with the releases marked.

    Only shown counts are drawn (suppressed ones are not), so the picture never tells more
    than the table.
    """
    points = trend["points"]
    monthly = trend["by"] == "month"
    left, right, top, bottom = 48, 10, 14, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(1, len(points))
    step = plot_w / n
    peak = max([p["total"] for p in points] + [1])
    scale = 4 * _nice(peak / 4)  # four grid steps of a round size
    versions = sorted({r["version"] for p in points for r in p["versions"]})
    colour = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(versions)}
    bars = []
    for i, p in enumerate(points):
        y = top + plot_h
        parts = [(f"v{r['version']}", r["count"], colour[r["version"]]) for r in p["versions"]]
        if p["other"] and not p["other"]["suppressed"]:
            parts.append(("other", p["other"]["count"], OTHER_COLOUR))
        for label, count, fill in parts:
            h = plot_h * count / scale
            y -= h
            bars.append(
                {
                    "x": round(left + i * step + step * 0.15, 1),
                    "y": round(y, 1),
                    "w": round(max(1.0, step * 0.7), 1),
                    "h": round(h, 1),
                    "fill": fill,
                    "title": f"{p['start']} {label}: {count}",
                }
            )
    grid = [
        {"y": round(top + plot_h - plot_h * k / 4, 1), "label": int(scale * k / 4)}
        for k in range(5)
    ]
    every = -(-n // 6)  # at most six labels: they must not overlap
    labels = [
        {"x": round(left + i * step + step / 2, 1), "text": p["start"][: 7 if monthly else 10]}
        for i, p in enumerate(points)
        if i % every == 0
    ]
    starts = [date.fromisoformat(p["start"]) for p in points]
    marks: list[dict[str, Any]] = []
    for rel in trend["releases"]:
        if not rel["published"] or not starts:
            continue
        day = date.fromisoformat(rel["published"])
        idx = max((i for i, s in enumerate(starts) if s <= day), default=None)
        if idx is None or day > starts[-1] + timedelta(days=31):
            continue
        x = round(left + idx * step + step / 2, 1)
        if marks and marks[-1]["x"] == x:  # two releases in one bar: one mark, both names
            marks[-1]["label"] += f", v{rel['version']}"
        else:
            marks.append({"x": x, "label": f"v{rel['version']}"})
    return {
        "width": width,
        "height": height,
        "left": left,
        "top": top,
        "plot_w": plot_w,
        "plot_h": plot_h,
        "bars": bars,
        "grid": grid,
        "labels": labels,
        "marks": marks,
        "legend": [{"label": f"v{v}", "fill": colour[v]} for v in versions],
        "empty": not bars,
    }


def _nice(peak: float) -> int:
    """A round number at or above ``peak`` (1, 2, 5 x a power of ten)."""
    base = 1
    while True:
        for k in (1, 2, 5):
            if k * base >= peak:
                return k * base
        base *= 10


# --------------------------------------------------------------------------- pages


def _content_page(svc: UsageService, q: Any) -> dict[str, Any]:
    channels = svc.channels()
    f = Query(q, channels)
    ctx: dict[str, Any] = {
        "channels": channels,
        "regions": svc.regions(),
        "f": f,
        "min_count": svc.min_count,
    }
    if f.channel and f.channel in channels:
        content = svc.content(f.channel, f.period, f.region, f.by)
        ctx.update(content, chart=chart(content["trend"]))
    return ctx


def _centres_page(svc: UsageService, q: Any) -> dict[str, Any]:
    channels = svc.channels()
    f = Query(q, channels)
    channel = str(q.get("channel", "")).strip() or None
    return {
        "channels": channels,
        "regions": svc.regions(),
        "f": f,
        "channel": channel or "",
        "min_count": svc.min_count,
        "centres": svc.centres(f.period, f.region, channel),
        "by_region": svc.by_region(f.period, channel),
    }


def _export_query(request: web.Request) -> str:
    return request.query_string


@page("curator")
async def usage_page(request: web.Request) -> web.Response:
    svc = request.app[USAGE_KEY]
    ctx = await asyncio.to_thread(_content_page, svc, request.query)
    titles = await asyncio.to_thread(request.app[UI_KEY].hub.channel_titles)
    return render(request, "usage.html", query=_export_query(request), titles=titles, **ctx)


@page("curator")
async def usage_centres_page(request: web.Request) -> web.Response:
    svc = request.app[USAGE_KEY]
    ctx = await asyncio.to_thread(_centres_page, svc, request.query)
    titles = await asyncio.to_thread(request.app[UI_KEY].hub.channel_titles)
    return render(request, "usage_centres.html", query=_export_query(request), titles=titles, **ctx)


@page("curator")
async def usage_export(request: web.Request) -> web.Response:
    """The CSV of one answer, for a signed-in person (the same numbers as the page)."""
    svc = request.app[USAGE_KEY]
    kind = request.match_info["kind"]
    if kind not in KINDS:
        t = Translator(lang_of(request))
        raise NotFound(t("hub.usage_no_export", kind=kind))
    doc = await asyncio.to_thread(answer, svc, kind, request.query)
    return csv_response(kind, doc)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_usage_routes(app: web.Application, min_count: int | None = None) -> None:
    """Register the usage pages, export and API (after ``hub.web.add_routes``).

    The privacy threshold is ``min_count`` if given, else the ``CARAVANE_USAGE_MIN_COUNT``
    environment variable, else the hub config's ``extra["usage_min_count"]``, else 5.
    """
    hub = app[UI_KEY].hub
    threshold = min_count if min_count is not None else min_count_setting(hub.config)
    app[USAGE_KEY] = UsageService(hub.db, hub.repo, threshold)
    r = app.router
    r.add_get("/ui/usage", usage_page)
    r.add_get("/ui/usage/centres", usage_centres_page)
    r.add_get("/ui/usage/export/{kind}.csv", usage_export)
    r.add_get("/api/v1/usage/{kind}", api_usage)
