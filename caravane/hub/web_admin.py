"""The admin's and programme operator's pages: registering a centre, the fleet, one centre.

Registering ends on a page that says what happened and what to do next at the centre, with
the enrolment file to download from that page (it holds a one-time code, so the page is
never cached and the file is not kept at the hub). A second centre with the same name is
refused unless the admin confirms it is a different place. The fleet page counts who is up
to date, sorts by how far behind, shows times relative to now, fits a phone, and exports
what it shows as CSV.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import unicodedata
from typing import Any

from aiohttp import web

from caravane.i18n import Translator

from .appstate import in_thread
from .auth import ANY_ROLE
from .service import Hub
from .web import UI_KEY, lang_of, page, render

SORTS = ("behind", "name", "contact", "region")


def name_key(name: str) -> str:
    """Names compared as people read them: case, accents and spacing do not make a new one."""
    folded = unicodedata.normalize("NFKD", name.casefold())
    return " ".join("".join(ch for ch in folded if not unicodedata.combining(ch)).split())


def _register_ctx(hub: Hub) -> dict[str, Any]:
    return {"channels": [(c, t) for c, t in sorted(hub.channel_titles().items())]}


@page("admin")
async def register_form(request: web.Request) -> web.Response:
    hub = request.app[UI_KEY].hub
    ctx = await in_thread(_register_ctx, hub)
    return render(request, "register.html", form={}, chosen=None, error="", duplicate=None, **ctx)


def _register(hub: Hub, p: Any, doc: dict[str, Any], confirmed: bool) -> dict[str, Any]:
    """Register, or say which centre already has that name (when not confirmed)."""
    if not confirmed:
        key = name_key(str(doc["name"]))
        same = [c for c in hub.find_centres() if name_key(c.name) == key]
        if same:
            return {"duplicate": {"id": same[0].id, "name": same[0].name, "region": same[0].region}}
    return {"enrolment": hub.register_centre(p, doc)}


@page("admin", post=True)
async def register(request: web.Request) -> web.Response:
    hub = request.app[UI_KEY].hub
    t = Translator(lang_of(request))
    form = request["ui_form"]
    doc = {
        "name": " ".join(str(form.get("name", "")).split()),
        "region": str(form.get("region", "")).strip(),
        "channels": [str(c) for c in form.getall("channels", [])],
    }
    kept = {"name": doc["name"], "region": doc["region"]}
    if not doc["name"]:
        ctx = await in_thread(_register_ctx, hub)
        return render(
            request,
            "register.html",
            status=422,
            form=kept,
            chosen=set(doc["channels"]),
            error=t("hub.register_no_name"),
            duplicate=None,
            **ctx,
        )
    out = await in_thread(
        _register, hub, request["ui_principal"], doc, form.get("confirm_duplicate") == "1"
    )
    if "duplicate" in out:
        ctx = await in_thread(_register_ctx, hub)
        return render(
            request,
            "register.html",
            status=409,
            form=kept,
            chosen=set(doc["channels"]),
            error="",
            duplicate=out["duplicate"],
            **ctx,
        )
    enrolment = out["enrolment"]
    titles = await in_thread(hub.channel_titles)
    body = json.dumps(enrolment, indent=2, ensure_ascii=False).encode()
    return render(
        request,
        "registered.html",
        enrolment=enrolment,
        region=doc["region"],
        titles=titles,
        filename=f"enrolment-{enrolment['node_id']}.json",
        data_url="data:application/json;base64," + base64.b64encode(body).decode(),
    )


# --------------------------------------------------------------------------- fleet


def behind_total(row: dict[str, Any]) -> int:
    return sum(int(v) for v in row["behind"].values())


def sort_rows(rows: list[dict[str, Any]], how: str) -> list[dict[str, Any]]:
    """Furthest behind first (then never heard from, then oldest contact), or by name..."""
    if how == "name":
        return sorted(rows, key=lambda r: name_key(r["name"]))
    if how == "region":
        return sorted(rows, key=lambda r: (name_key(r["region"] or "~"), name_key(r["name"])))
    if how == "contact":  # the longest silent first; never heard from before everyone
        return sorted(rows, key=lambda r: (r["last_contact"] or "", name_key(r["name"])))
    return sorted(
        rows, key=lambda r: (-behind_total(r), r["last_contact"] or "", name_key(r["name"]))
    )


def fleet_totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "centres": len(rows),
        "up_to_date": sum(1 for r in rows if r["enrolled"] and not r["behind"]),
        "behind": sum(1 for r in rows if r["behind"]),
        "not_enrolled": sum(1 for r in rows if not r["enrolled"]),
        "stale": sum(1 for r in rows if r["stale"]),
        "frozen": sum(1 for r in rows if r.get("frozen")),
    }


def _fleet_data(hub: Hub, region: str | None, behind: bool, how: str) -> dict[str, Any]:
    every = hub.fleet()
    rows = [r for r in every if not region or r["region"] == region]
    shown = [r for r in rows if r["behind"]] if behind else rows
    return {
        "centres": sort_rows(shown, how),
        "totals": fleet_totals(rows),
        "regions": sorted({n["region"] for n in every if n["region"]}),
        "latest": hub.latest_versions(),
        "titles": hub.channel_titles(),
    }


def _fleet_query(request: web.Request) -> tuple[str | None, bool, str]:
    region = request.query.get("region") or None
    behind = request.query.get("behind") in ("1", "on", "true")
    how = request.query.get("sort", "behind")
    return region, behind, how if how in SORTS else "behind"


@page(*ANY_ROLE)
async def fleet(request: web.Request) -> web.Response:
    hub = request.app[UI_KEY].hub
    region, behind, how = _fleet_query(request)
    data = await in_thread(_fleet_data, hub, region, behind, how)
    return render(
        request,
        "fleet.html",
        region=region or "",
        behind_only=behind,
        sort=how,
        query={k: v for k, v in request.query.items() if k not in ("sort", "lang")},
        **data,
    )


def _csv_cell(value: Any) -> str:
    """A cell a spreadsheet shows as text: a leading = + - @ would be run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def fleet_csv(data: dict[str, Any]) -> str:
    """One line per centre and channel: what a programme's spreadsheet wants to pivot."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(
        [
            "centre_id",
            "centre",
            "region",
            "channel",
            "channel_title",
            "installed",
            "latest",
            "behind",
            "enrolled",
            "last_contact",
            "last_route",
            "free_disk",
            "last_error",
        ]
    )
    for r in data["centres"]:
        for c in r["channels"] or [""]:
            w.writerow(
                [
                    _csv_cell(v)
                    for v in (
                        r["id"],
                        r["name"],
                        r["region"],
                        c,
                        data["titles"].get(c, c),
                        r["installed"].get(c, 0) if c else "",
                        data["latest"].get(c, "") if c else "",
                        r["behind"].get(c, 0) if c else "",
                        "yes" if r["enrolled"] else "no",
                        r["last_contact"] or "",
                        r["last_route"] or "",
                        r["free_disk"] if r["free_disk"] is not None else "",
                        r["last_error"] or "",
                    )
                ]
            )
    return out.getvalue()


@page(*ANY_ROLE)
async def fleet_export(request: web.Request) -> web.Response:
    hub = request.app[UI_KEY].hub
    region, behind, how = _fleet_query(request)
    data = await in_thread(_fleet_data, hub, region, behind, how)
    return web.Response(
        body=fleet_csv(data).encode("utf-8-sig"),  # the BOM: spreadsheets then read UTF-8
        content_type="text/csv",
        charset="utf-8",
        headers={
            "Content-Disposition": 'attachment; filename="fleet.csv"',
            "Cache-Control": "no-store",
        },
    )


@page(*ANY_ROLE)
async def centre(request: web.Request) -> web.Response:
    hub = request.app[UI_KEY].hub
    info = await in_thread(hub.centre_detail, request.match_info["nid"])
    titles = await in_thread(hub.channel_titles)
    return render(request, "centre.html", titles=titles, **info)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/ui/fleet", fleet)
    r.add_get("/ui/fleet.csv", fleet_export)
    r.add_get("/ui/fleet/{nid}", centre)
    r.add_get("/ui/register", register_form)
    r.add_post("/ui/register", register)
