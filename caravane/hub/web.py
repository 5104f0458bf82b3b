"""The hub's web pages for people (``/ui/``): sign-in, channels, publishing, centres, routes.

Pages are rendered on the server (Jinja2, autoescaped) in French or English (the same
catalogues and rules as the centre's portal: ``?lang=``, remembered in a cookie, else the
browser's Accept-Language). Signing in takes an API token once; the hub then keeps a
server-side session (8 hours, HttpOnly, SameSite=Lax cookie) and re-checks the token's role
and revocation on every page. Every POST form carries the session's CSRF token.

Publishing from the browser takes a .zip or .tar.gz archive, unpacks it into a temporary
folder (refusing absolute paths, ``..``, links and devices), stores its chunks straight into
the hub's repository and then records and signs the release through the same upload and
commit steps as the API (``Hub.start_upload`` / ``Hub.commit_upload``), so the releases table,
the audit log, retention and the pack queue behave exactly as for ``caravane publish``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import stat
import tarfile
import tempfile
import time
import unicodedata
import urllib.parse
import uuid
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import BodyPartReader, web

from caravane.i18n import Translator, negotiate, size_text, switcher
from caravane.packs.bundle import plan_packs
from caravane.packs.chunker import DEFAULT_AVG
from caravane.packs.repository import ingest_files, scan_source
from caravane.protocol.errors import CaravaneError, PathError
from caravane.protocol.metadata import check_channel
from caravane.protocol.paths import check_path

from .appstate import HUB_KEY, in_thread, queue_packs
from .auth import ANY_ROLE, Principal, Role, hash_secret, may
from .errors import HubError, NotFound
from .service import Hub
from .usb import route_targets

log = logging.getLogger("caravane.hub.web")

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
SESSION_COOKIE = "caravane_hub_session"
LOGIN_CSRF_COOKIE = "caravane_hub_login"
SESSION_SECONDS = 8 * 3600
MAX_ARCHIVE_BYTES = 8 * 1024**3
MAX_ARCHIVE_MEMBERS = 200_000
UPLOAD_PIECE = 1024 * 1024
FINISHED = ("done", "failed")


@dataclass
class Session:
    token_hash: str
    name: str
    role: str
    csrf: str
    expires: float


@dataclass
class PublishJob:
    id: str
    channel: str
    actor: str
    archive: str
    state: str = "queued"  # queued | unpacking | storing | signing | done | failed
    total: int = 0
    done: int = 0
    version: int | None = None
    files: int = 0
    error: str = ""
    started: float = field(default_factory=time.time)
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def percent(self) -> int:
        if self.state == "done":
            return 100
        return int(100 * self.done / self.total) if self.total else 0


class WebUI:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)),
            autoescape=jinja2.select_autoescape(["html"]),
        )
        self.env.filters["when"] = when_text
        self.sessions: dict[str, Session] = {}
        self.jobs: dict[str, PublishJob] = {}

    # ------------------------------------------------------------------ sessions

    def new_session(self, token_hash: str, p: Principal) -> str:
        t = time.time()
        for sid in [k for k, s in self.sessions.items() if s.expires < t]:
            del self.sessions[sid]
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = Session(
            token_hash, p.name, p.role, secrets.token_urlsafe(24), t + SESSION_SECONDS
        )
        return sid

    def session(self, request: web.Request) -> Session | None:
        s = self.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if s is None or s.expires < time.time():
            return None
        return s

    def principal_of(self, s: Session) -> Principal | None:
        """The session's token, read again: a revoked token ends its sessions at once."""
        return self.hub.principal_for_token_hash(s.token_hash)


UI_KEY: web.AppKey[WebUI] = web.AppKey("hub_web", WebUI)


def when_text(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if not isinstance(value, datetime):
        return str(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return str(value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"))


def lang_of(request: web.Request) -> str:
    return negotiate(
        request.query.get("lang"),
        request.cookies.get("lang"),
        request.headers.get("Accept-Language"),
    )


def lang_href(request: web.Request, code: str) -> str:
    query = [(k, v) for k, v in request.query.items() if k != "lang"] + [("lang", code)]
    return request.path + "?" + urllib.parse.urlencode(query)


def render(request: web.Request, name: str, status: int = 200, **ctx: Any) -> web.Response:
    ui = request.app[UI_KEY]
    lang = lang_of(request)
    t = Translator(lang)
    s = request.get("ui_session")
    p = request.get("ui_principal")
    html = ui.env.get_template(name).render(
        lang=lang,
        t=t,
        size=lambda n: size_text(n, lang),
        session=s,
        user=p,
        can=lambda *roles: p is not None and may(p.role, roles),
        languages=[(code, name, lang_href(request, code)) for code, name in switcher(lang)],
        path=request.path,
        **ctx,
    )
    resp = web.Response(text=html, content_type="text/html", status=status)
    resp.headers["Content-Language"] = lang
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Cache-Control"] = "no-store"
    if request.query.get("lang") == lang:
        resp.set_cookie("lang", lang, max_age=365 * 86400, samesite="Lax")
    return resp


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "error.html", status=status, status_code=status, message=message)


Page = Callable[[web.Request], Awaitable[web.StreamResponse]]


def page(*roles: Role, post: bool = False, multipart: bool = False) -> Callable[[Page], Page]:
    """A signed-in page: session, role check, CSRF on POST, errors as HTML.

    CSRF is checked on every POST whatever its encoding, before the handler runs: a
    urlencoded (or text/plain, or empty) body must carry the session's token in its ``csrf``
    field; a multipart body is refused unless the page takes uploads (``multipart=True``),
    and then the token travels in the form's action URL (``?csrf=``), so it is checked
    before a byte of the upload is read.

    The roles that may see the page are always named (``page(*ANY_ROLE)`` for every
    signed-in person); the check is :func:`hub.auth.may`, the same rule as the API's.
    """
    if not roles:
        raise ValueError("page() needs the roles that may see it")

    def wrap(fn: Page) -> Page:
        @wraps(fn)
        async def handler(request: web.Request) -> web.StreamResponse:
            ui = request.app[UI_KEY]
            s = ui.session(request)
            p = await in_thread(ui.principal_of, s) if s else None
            if s is None or p is None:
                ui.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)  # revoked token
                if post:
                    return error_page(request, 401, Translator(lang_of(request))("hub.signed_out"))
                nxt = urllib.parse.quote(request.path_qs, safe="")
                raise web.HTTPFound(f"/ui/login?next={nxt}")
            request["ui_session"], request["ui_principal"] = s, p
            if not may(p.role, roles):
                t = Translator(lang_of(request))
                return error_page(request, 403, t("hub.forbidden", role=p.role))
            if post and request.content_type == "multipart/form-data":
                token = request.query.get("csrf", "")
                if not multipart or not secrets.compare_digest(token, s.csrf):
                    return error_page(request, 403, Translator(lang_of(request))("hub.bad_csrf"))
            elif post:
                form = await request.post()
                if not secrets.compare_digest(str(form.get("csrf", "")), s.csrf):
                    return error_page(request, 403, Translator(lang_of(request))("hub.bad_csrf"))
                request["ui_form"] = form
            try:
                return await fn(request)
            except (HubError, CaravaneError) as exc:
                status = getattr(exc, "status", 422)
                return error_page(request, status, str(exc))

        return handler

    return wrap


# --------------------------------------------------------------------------- sign-in


def came_over_https(request: web.Request) -> bool:
    """True when the browser's request was HTTPS: TLS here, or an HTTPS reverse proxy.

    ``X-Forwarded-Proto`` is believed only from an address in hub.toml's
    ``trusted_proxies``: anyone else could send it. Session cookies get ``Secure`` then.
    """
    if request.secure:
        return True
    trusted = request.app[UI_KEY].hub.config.trusted_proxies
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return proto == "https" and bool(request.remote) and request.remote in trusted


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/fleet"


async def login_form(request: web.Request) -> web.Response:
    ui = request.app[UI_KEY]
    if ui.session(request) is not None:
        raise web.HTTPFound(_safe_next(request.query.get("next")))
    return _login_page(request, 200, "")


def _login_page(request: web.Request, status: int, error: str) -> web.Response:
    csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    resp = render(
        request,
        "login.html",
        status=status,
        csrf=csrf,
        next=_safe_next(request.query.get("next")),
        error=error,
    )
    resp.set_cookie(
        LOGIN_CSRF_COOKIE,
        csrf,
        path="/ui/",
        httponly=True,
        samesite="Lax",
        secure=came_over_https(request),
    )
    return resp


async def login(request: web.Request) -> web.Response:
    ui = request.app[UI_KEY]
    t = Translator(lang_of(request))
    form = await request.post()
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not secrets.compare_digest(str(form.get("csrf", "")), cookie):
        return _login_page(request, 403, t("hub.bad_csrf"))
    token = str(form.get("token", "")).strip()
    try:
        p = await in_thread(ui.hub.authenticate, f"Bearer {token}")
    except HubError:
        return _login_page(request, 401, t("hub.login_failed"))
    sid = ui.new_session(hash_secret(token), p)
    resp = web.HTTPFound(_safe_next(str(form.get("next", ""))))
    resp.set_cookie(
        SESSION_COOKIE,
        sid,
        path="/ui/",
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="Lax",
        secure=came_over_https(request),
    )
    resp.del_cookie(LOGIN_CSRF_COOKIE, path="/ui/")
    raise resp


@page(*ANY_ROLE, post=True)
async def logout(request: web.Request) -> web.Response:
    ui = request.app[UI_KEY]
    ui.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
    resp = web.HTTPFound("/ui/login")
    resp.del_cookie(SESSION_COOKIE, path="/ui/")
    raise resp


async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/fleet")


# --------------------------------------------------------------------------- channels


@page(*ANY_ROLE)
async def channels(request: web.Request) -> web.Response:
    hub = request.app[UI_KEY].hub
    return render(request, "channels.html", channels=await in_thread(hub.channels))


@page("curator")
async def publish_form(request: web.Request) -> web.Response:
    hub = request.app[UI_KEY].hub
    ids = [c["id"] for c in await in_thread(hub.channels)]
    return render(
        request, "publish.html", channel_ids=ids, channel=request.query.get("channel", "")
    )


@page("curator", post=True, multipart=True)
async def publish(request: web.Request) -> web.Response:
    ui = request.app[UI_KEY]
    t = Translator(lang_of(request))
    s: Session = request["ui_session"]
    p: Principal = request["ui_principal"]
    if request.content_type != "multipart/form-data":
        return error_page(request, 400, t("hub.publish_no_file"))
    work = Path(tempfile.mkdtemp(prefix="caravane-web-"))
    try:
        fields, archive, filename = await _read_multipart(request, work)
        if not secrets.compare_digest(fields.get("csrf", ""), s.csrf):
            shutil.rmtree(work, ignore_errors=True)
            return error_page(request, 403, t("hub.bad_csrf"))
        channel = check_channel(fields.get("channel", "").strip())
        kind = archive_kind(filename)
        if archive is None or kind is None:
            shutil.rmtree(work, ignore_errors=True)
            return error_page(request, 400, t("hub.publish_no_file"))
    except (HubError, CaravaneError):
        shutil.rmtree(work, ignore_errors=True)
        raise
    job = PublishJob(uuid.uuid4().hex[:12], channel, p.name, filename)
    day_ago = time.time() - 86400
    for old in [j for j in ui.jobs.values() if j.started < day_ago and j.state in FINISHED]:
        del ui.jobs[old.id]
    ui.jobs[job.id] = job
    job.task = asyncio.create_task(_publish_job(request.app, job, p, work, archive, kind, fields))
    raise web.HTTPSeeOther(f"/ui/jobs/{job.id}")


async def _read_multipart(
    request: web.Request, work: Path
) -> tuple[dict[str, str], Path | None, str]:
    fields: dict[str, str] = {}
    archive, filename = None, ""
    reader = await request.multipart()
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):  # nested multipart: not something we send
            raise HubError("unexpected nested multipart body", 400)
        if part.name == "archive" and part.filename:
            filename = Path(part.filename).name
            archive = work / "upload.bin"
            written = 0
            with open(archive, "wb") as fh:
                while chunk := await part.read_chunk(UPLOAD_PIECE):
                    written += len(chunk)
                    if written > MAX_ARCHIVE_BYTES:
                        raise HubError(f"archive larger than {MAX_ARCHIVE_BYTES} bytes", 413)
                    fh.write(chunk)
        elif part.name in ("csrf", "channel", "notes", "title"):
            fields[part.name] = (await part.read(decode=True)).decode("utf-8", "replace")[:10000]
        else:
            await part.release()
    return fields, archive, filename


def archive_kind(filename: str) -> str | None:
    name = filename.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz")):
        return "tar"
    return None


def _member_path(name: str) -> str:
    """An archive member's path, checked like a manifest path (no '..', not absolute)."""
    name = unicodedata.normalize("NFC", name.rstrip("/"))
    while name.startswith("./"):
        name = name[2:]
    if name.startswith("/") or "\\" in name:
        raise PathError(f"archive member {name!r} has an absolute or Windows path")
    return check_path(name)


def unpack_archive(archive: Path, kind: str, dest: Path) -> Path:
    """Unpack into ``dest`` refusing traversal, links and special files; the content root.

    When everything sits in one top-level folder (a zipped folder), that folder is the root.
    """
    dest.mkdir(parents=True, exist_ok=True)
    real_dest = Path(os.path.realpath(dest))
    count = 0

    def target(rel: str) -> Path:
        out = real_dest / rel
        parent = Path(os.path.realpath(out.parent))
        if parent != real_dest and real_dest not in parent.parents:
            raise PathError(f"archive member {rel!r} leaves the unpack folder")
        return out

    if kind == "zip":
        try:
            zf = zipfile.ZipFile(archive)
        except zipfile.BadZipFile:
            raise PathError("the file is not a valid .zip archive") from None
        with zf:
            for info in zf.infolist():
                count += 1
                if count > MAX_ARCHIVE_MEMBERS:
                    raise PathError(f"archive has more than {MAX_ARCHIVE_MEMBERS} members")
                rel = _member_path(info.filename)
                kind_bits = stat.S_IFMT(info.external_attr >> 16)  # 0: not recorded
                if kind_bits not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise PathError(f"archive member {rel!r} is a link or a special file")
                if info.is_dir():
                    (real_dest / rel).mkdir(parents=True, exist_ok=True)
                    continue
                (real_dest / rel).parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target(rel), "xb") as out:
                    shutil.copyfileobj(src, out, UPLOAD_PIECE)
    else:
        try:
            tf = tarfile.open(archive, "r:*")
        except tarfile.TarError:
            raise PathError("the file is not a valid .tar.gz archive") from None
        with tf:
            for member in tf:
                count += 1
                if count > MAX_ARCHIVE_MEMBERS:
                    raise PathError(f"archive has more than {MAX_ARCHIVE_MEMBERS} members")
                if member.name in (".", "./"):
                    continue
                rel = _member_path(member.name)
                if member.isdir():
                    (real_dest / rel).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isreg():
                    raise PathError(f"archive member {rel!r} is a link or a special file")
                (real_dest / rel).parent.mkdir(parents=True, exist_ok=True)
                member_data = tf.extractfile(member)
                if member_data is None:
                    raise PathError(f"archive member {rel!r} cannot be read")
                with member_data, open(target(rel), "xb") as out:
                    shutil.copyfileobj(member_data, out, UPLOAD_PIECE)
                if member.mode & 0o111:
                    os.chmod(out.name, 0o755)
    entries = [p for p in real_dest.iterdir()]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return real_dest


def _publish_blocking(
    hub: Hub,
    job: PublishJob,
    p: Principal,
    work: Path,
    archive: Path,
    kind: str,
    fields: dict[str, str],
) -> None:
    job.state = "unpacking"
    root = unpack_archive(archive, kind, work / "content")
    archive.unlink()
    files = scan_source(root)
    if not files:
        raise HubError("the archive holds no files", 422)
    job.total = sum(real.stat().st_size for _, real in files)
    job.state = "storing"

    def progress(n: int) -> None:
        job.done += n

    entries, *_ = ingest_files(hub.repo.store, files, DEFAULT_AVG, progress)
    job.state = "signing"
    try:
        hub.channel(job.channel)
    except NotFound:
        title = fields.get("title", "").strip() or job.channel
        hub.create_channel(p, {"id": job.channel, "title": title})
    doc = {
        "channel": job.channel,
        "notes": fields.get("notes", ""),
        "files": [e.to_dict() for e in entries],
    }
    up = hub.start_upload(p, doc)
    out = hub.commit_upload(p, up["upload"])
    job.version, job.files = int(out["version"]), len(entries)


async def _publish_job(
    app: web.Application,
    job: PublishJob,
    p: Principal,
    work: Path,
    archive: Path,
    kind: str,
    fields: dict[str, str],
) -> None:
    hub = app[UI_KEY].hub
    try:
        await in_thread(_publish_blocking, hub, job, p, work, archive, kind, fields)
        job.state = "done"
        queue_packs(app, job.channel)
    except (HubError, CaravaneError, OSError) as exc:
        job.state, job.error = "failed", str(exc)
    except Exception as exc:  # the page says it failed; the log says why
        log.exception("publishing %s from the web failed", job.archive)
        job.state, job.error = "failed", f"internal error ({type(exc).__name__})"
    finally:
        await in_thread(shutil.rmtree, work, True)


@page("curator")
async def job_status(request: web.Request) -> web.Response:
    job = request.app[UI_KEY].jobs.get(request.match_info["jid"])
    if job is None:
        return error_page(request, 404, Translator(lang_of(request))("hub.no_job"))
    return render(request, "job.html", job=job)


# --------------------------------------------------------------------------- centres


@page("admin")
async def register_form(request: web.Request) -> web.Response:
    hub = request.app[UI_KEY].hub
    ids = [c["id"] for c in await in_thread(hub.channels)]
    return render(request, "register.html", channel_ids=ids)


@page("admin", post=True)
async def register(request: web.Request) -> web.Response:
    hub = request.app[UI_KEY].hub
    form = request["ui_form"]
    doc = {
        "name": str(form.get("name", "")),
        "region": str(form.get("region", "")).strip(),
        "channels": [str(c) for c in form.getall("channels", [])],
    }
    out = await in_thread(hub.register_centre, request["ui_principal"], doc)
    filename = f"enrolment-{out['node_id']}.json"
    return web.Response(
        body=json.dumps(out, indent=2, ensure_ascii=False).encode(),
        content_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )


def _fleet_rows(
    hub: Hub, region: str | None, behind: bool
) -> tuple[list[dict[str, Any]], list[str], dict[str, int]]:
    rows = hub.fleet(region, behind)
    regions = sorted({n["region"] for n in hub.fleet() if n["region"]})
    latest = hub.latest_versions()
    return rows, regions, latest


@page(*ANY_ROLE)
async def fleet(request: web.Request) -> web.Response:
    hub = request.app[UI_KEY].hub
    region = request.query.get("region") or None
    behind = request.query.get("behind") in ("1", "on", "true")
    rows, regions, latest = await in_thread(_fleet_rows, hub, region, behind)
    return render(
        request,
        "fleet.html",
        centres=rows,
        regions=regions,
        latest=latest,
        region=region or "",
        behind_only=behind,
    )


@page(*ANY_ROLE)
async def centre(request: web.Request) -> web.Response:
    hub = request.app[UI_KEY].hub
    info = await in_thread(hub.centre_detail, request.match_info["nid"])
    return render(request, "centre.html", **info)


# --------------------------------------------------------------------------- routes (drives)


def route_plan(hub: Hub, names: list[str], region: str | None) -> dict[str, Any]:
    targets, chans = route_targets(hub, names, region)
    plans = plan_packs(hub.repo, targets, chans)
    by_id = {n.id: n for n in hub.find_centres()}
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
                "installed": tg.installed,
            }
            for tg in targets
        ],
        "packs": [
            {
                "channel": pl.channel,
                "from_version": pl.from_version,
                "to_version": pl.to_version,
                "size": pl.size,
                "path": pl.relpath,
                "for_centres": pl.for_centres,
            }
            for pl in plans
        ],
        "total_bytes": sum(pl.size for pl in plans),
    }


def _route_query(request: web.Request) -> tuple[list[str], str | None]:
    names = [c for c in request.query.getall("centre", []) if c]
    return names, request.query.get("region") or None


@page("field_agent")
async def routes(request: web.Request) -> web.Response:
    hub = request.app[UI_KEY].hub
    names, region = _route_query(request)
    centres = await in_thread(hub.fleet)
    regions = sorted({n["region"] for n in centres if n["region"]})
    plan = None
    if names or region:
        plan = await in_thread(route_plan, hub, names, region)
    names_of = {n["id"]: n["name"] for n in centres}
    return render(
        request,
        "routes.html",
        centres=centres,
        regions=regions,
        region=region or "",
        chosen=set(names),
        plan=plan,
        names_of=names_of,
        download_query=request.query_string,
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


# --------------------------------------------------------------------------- wiring


def add_routes(app: web.Application) -> None:
    """The pages under /ui/ (called by hub.app.make_app)."""
    app[UI_KEY] = WebUI(app[HUB_KEY])
    r = app.router
    r.add_get("/ui", index)
    r.add_get("/ui/", index)
    r.add_get("/ui/login", login_form)
    r.add_post("/ui/login", login)
    r.add_post("/ui/logout", logout)
    r.add_get("/ui/channels", channels)
    r.add_get("/ui/publish", publish_form)
    r.add_post("/ui/publish", publish)
    r.add_get("/ui/jobs/{jid}", job_status)
    r.add_get("/ui/fleet", fleet)
    r.add_get("/ui/fleet/{nid}", centre)
    r.add_get("/ui/register", register_form)
    r.add_post("/ui/register", register)
    r.add_get("/ui/routes", routes)
    r.add_get("/ui/routes/plan.json", route_plan_download)
    r.add_static("/ui/static/", STATIC)
