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
import contextlib
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
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import BodyPartReader, web

from caravane.i18n import Translator, negotiate, size_text, switcher
from caravane.packs.ingest import ingest_tree, iter_source, scan_totals
from caravane.protocol.errors import CaravaneError, PathError
from caravane.protocol.paths import check_path
from caravane.protocol.tree import PieceRef, root_ref

from .appstate import HUB_KEY, in_thread, queue_packs
from .auth import ANY_ROLE, Principal, Role, hash_secret, may
from .errors import HubError
from .publish_jobs import PublishJob, PublishJobs
from .service import Hub
from .sessions import SESSION_SECONDS, Session, SessionStore

log = logging.getLogger("caravane.hub.web")

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
SESSION_COOKIE = "caravane_hub_session"
LOGIN_CSRF_COOKIE = "caravane_hub_login"
MAX_ARCHIVE_BYTES = 8 * 1024**3
MAX_ARCHIVE_MEMBERS = 200_000
UPLOAD_PIECE = 1024 * 1024


class WebUI:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)),
            autoescape=jinja2.select_autoescape(["html"]),
        )
        self.env.filters["when"] = when_text
        # in the database, so any of several hub processes answers any page (docs/OPERATIONS.md)
        self.sessions = SessionStore(hub.db, SESSION_SECONDS)
        self.jobs = PublishJobs(hub.db)
        self.running: set[asyncio.Task[None]] = set()  # held here: the loop keeps weak refs

    def start(self, job: PublishJob, work: Awaitable[None]) -> None:
        """Run a job's work in this process, holding its task until it ends."""
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        job.task = task
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    # ------------------------------------------------------------------ sessions

    async def session(self, request: web.Request) -> Session | None:
        return await in_thread(self.sessions.get, request.cookies.get(SESSION_COOKIE, ""))

    async def end_session(self, request: web.Request) -> None:
        await in_thread(self.sessions.end, request.cookies.get(SESSION_COOKIE, ""))

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


def ago_text(value: Any, lang: str, at: datetime | None = None) -> str:
    """ "3 days ago" / "il y a 3 jours" (CLDR's words and plural rules, through Babel)."""
    from babel.dates import format_timedelta

    when = _as_datetime(value)
    if when is None:
        return "—"
    delta = when - (at or datetime.now(UTC))
    if abs(delta.total_seconds()) < 60:
        return Translator(lang)("hub.just_now")
    return str(format_timedelta(delta, add_direction=True, locale=lang, threshold=1.5))


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, str) and value:
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


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
        ago=lambda v: ago_text(v, lang),
        iso=lambda v: d.isoformat() if (d := _as_datetime(v)) else "",
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
            s = await ui.session(request)
            p = await in_thread(ui.principal_of, s) if s else None
            if s is None or p is None:
                if s is not None:  # its token was revoked
                    await ui.end_session(request)
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
    if await ui.session(request) is not None:
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
    sid = await in_thread(ui.sessions.create, hash_secret(token), p)
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
    await request.app[UI_KEY].end_session(request)
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


def _publish_ctx(hub: Hub) -> dict[str, Any]:
    return {"channels": sorted(hub.channel_titles().items(), key=lambda kv: kv[1].casefold())}


def publish_page(
    request: web.Request, status: int = 200, error: str = "", **fields: str
) -> Awaitable[web.Response]:
    """The publish form, again with what the curator typed and the reason it was refused."""

    async def make() -> web.Response:
        ctx = await in_thread(_publish_ctx, request.app[UI_KEY].hub)
        return render(
            request,
            "publish.html",
            status=status,
            error=error,
            channel=fields.get("channel", request.query.get("channel", "")),
            notes=fields.get("notes", ""),
            created=request.query.get("created") == "1",
            **ctx,
        )

    return make()


@page("curator")
async def publish_form(request: web.Request) -> web.Response:
    return await publish_page(request)


def _check_archive(path: Path, kind: str) -> bool:
    """The file is the archive its name claims (its directory, or its first member, reads),
    so a wrong file is refused at once with the form, not after a job has started."""
    if kind == "zip":
        return zipfile.is_zipfile(path)
    try:
        with tarfile.open(path, "r:gz") as tf:
            tf.next()
    except (tarfile.TarError, OSError, EOFError):
        return False
    return True


@page("curator", post=True, multipart=True)
async def publish(request: web.Request) -> web.Response:
    """Take the archive (in the form, or an upload the page sent in pieces), then unpack and
    store it as a job that stops at a review of its changes: nothing is signed before the
    curator confirms. A refusal gives the form back with what was typed and why."""
    ui = request.app[UI_KEY]
    t = Translator(lang_of(request))
    s: Session = request["ui_session"]
    p: Principal = request["ui_principal"]
    work = Path(tempfile.mkdtemp(prefix="caravane-web-"))
    fields: dict[str, str] = {}
    try:
        if request.content_type == "multipart/form-data":
            fields, archive, filename = await _read_multipart(request, work)
            if not secrets.compare_digest(fields.get("csrf", ""), s.csrf):
                shutil.rmtree(work, ignore_errors=True)
                return error_page(request, 403, t("hub.bad_csrf"))
        else:
            form = request["ui_form"]
            fields = {k: str(form.get(k, "")) for k in ("channel", "notes", "upload")}
            archive, filename = None, ""
            if fields["upload"]:
                from .web_curator import take_upload

                archive = work / "upload.bin"
                filename = await in_thread(take_upload, ui.hub, fields["upload"], p.name, archive)
        fields["channel"] = fields.get("channel", "").strip()
        titles = await in_thread(ui.hub.channel_titles)
        if fields["channel"] not in titles:
            raise HubError(t("hub.publish_pick_channel"), 422)
        kind = archive_kind(filename)
        if archive is None or not filename:
            raise HubError(t("hub.publish_no_file"), 400)
        if kind is None or not await in_thread(_check_archive, archive, kind):
            raise HubError(t("hub.publish_wrong_kind", name=filename), 415)
    except (HubError, CaravaneError) as exc:
        shutil.rmtree(work, ignore_errors=True)
        return await publish_page(
            request,
            getattr(exc, "status", 422),
            str(exc),
            channel=fields.get("channel", ""),
            notes=fields.get("notes", ""),
        )
    job = PublishJob(uuid.uuid4().hex[:12], fields["channel"], p.name, filename)
    job.notes = fields.get("notes", "")
    for old in await in_thread(ui.jobs.stale_reviews, time.time() - 86400):
        if old.upload:  # never confirmed: its objects may go
            await in_thread(ui.hub.abandon_upload, Principal(old.actor, "curator"), old.upload)
        old.state = "cancelled"
        await in_thread(ui.jobs.save, old)
    await in_thread(ui.jobs.add, job)
    ui.start(job, _prepare_job(request.app, job, p, work, archive, kind))
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
                # TarFile keeps every member it has read (for getmembers): some 600 bytes
                # a file, 60 MB for an archive of 100,000 pages; nothing here reads them back
                tf.members = []  # type: ignore[attr-defined]  # (not in typeshed)
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


#: objects recorded for a web publish's upload per statement, as a client declares them
DECLARE_STORED = 2000


def _store_tree(
    hub: Hub, p: Principal, uid: str, root: Path, progress: Callable[[int], None]
) -> tuple[PieceRef | None, int, int]:
    """Read ``root`` into the hub's store as a curator's client reads a folder for it, the
    file list as manifest pieces (:func:`ingest_tree`), and record every object the release
    will name as the upload's, in batches, so that collection keeps them while the curator
    reviews. Nothing here grows with the archive: the list the web page's publish used to
    build (every entry, then their JSON in the upload's row, then the latest release
    decoded whole to compare) held some 2 KB a file."""
    pending: dict[str, int] = {}

    def record(sha: str, size: int) -> None:
        pending[sha] = size
        if len(pending) >= DECLARE_STORED:
            hub.declare_stored(p, uid, pending)
            pending.clear()

    made = ingest_tree(hub.repo.store, iter_source(root), on_object=record, progress=progress)
    hub.declare_stored(p, uid, pending)
    return made


def _prepare_blocking(
    hub: Hub,
    jobs: PublishJobs,
    job: PublishJob,
    p: Principal,
    work: Path,
    archive: Path,
    kind: str,
) -> None:
    """Unpack, store the chunks and the file list's pieces, open an upload that names the
    tree (collection keeps its objects meanwhile) and say what it changes; signing waits
    for the curator, and checks the tree as it checks a client's (``PUT .../tree``)."""
    from caravane.packs.changes import summarise_changes

    from .web_curator import LIST_LIMIT, changes_view

    job.state = "unpacking"
    jobs.save(job)
    root = unpack_archive(archive, kind, work / "content")
    archive.unlink()
    count, total = scan_totals(root)  # a stat each, no list: for the progress bar
    if not count:
        raise HubError("the archive holds no files", 422)
    job.total = total
    job.state = "storing"
    jobs.save(job)
    start = {"channel": job.channel, "notes": job.notes, "stream": True, "tree": True}
    uid = str(hub.start_upload(p, start)["upload"])
    try:
        tree, files, size = _store_tree(hub, p, uid, root, jobs.progress(job))
        # open, not signed: the curator decides
        hub.set_tree(p, uid, {"tree": root_ref(tree), "files": files, "size": size})
        latest, changed = hub.repo.tree_changes(job.channel, tree, files, size)
        job.review = changes_view(summarise_changes(changed, files, LIST_LIMIT))
    except BaseException:
        with contextlib.suppress(CaravaneError):
            hub.abandon_upload(p, uid)  # its objects are no longer kept for it
        raise
    job.latest = latest
    job.upload = uid
    job.files = files
    job.state = "review"


async def _prepare_job(
    app: web.Application, job: PublishJob, p: Principal, work: Path, archive: Path, kind: str
) -> None:
    ui = app[UI_KEY]
    alive = asyncio.create_task(ui.jobs.keep_alive(job))
    try:
        await in_thread(_prepare_blocking, ui.hub, ui.jobs, job, p, work, archive, kind)
    except (HubError, CaravaneError, OSError) as exc:
        job.state, job.error = "failed", str(exc)
    except Exception as exc:  # the page says it failed; the log says why
        log.exception("publishing %s from the web failed", job.archive)
        job.state, job.error = "failed", f"internal error ({type(exc).__name__})"
    finally:
        alive.cancel()
        await in_thread(shutil.rmtree, work, True)
        await _record_end(ui.jobs, job)


async def _record_end(jobs: PublishJobs, job: PublishJob) -> None:
    """Write where a job ended (review, done, failed) for the page on every process."""
    try:
        await in_thread(jobs.save, job)
    except Exception:  # the database is gone: the log keeps the outcome
        log.exception("could not record the end of publish job %s (%s)", job.id, job.state)


async def _sign_job(app: web.Application, job: PublishJob, p: Principal) -> None:
    ui = app[UI_KEY]
    hub = ui.hub
    job.state = "signing"
    await in_thread(ui.jobs.save, job)
    alive = asyncio.create_task(ui.jobs.keep_alive(job))
    try:
        out = await in_thread(hub.commit_upload, p, job.upload)
        job.version = int(out["version"])
        job.state = "done"
        queue_packs(app, job.channel)
    except (HubError, CaravaneError, OSError) as exc:
        job.state, job.error = "failed", str(exc)
    except Exception as exc:  # the page says it failed; the log says why
        log.exception("signing %s from the web failed", job.archive)
        job.state, job.error = "failed", f"internal error ({type(exc).__name__})"
    finally:
        alive.cancel()
        await _record_end(ui.jobs, job)


@page("curator", post=True)
async def job_decide(request: web.Request) -> web.Response:
    """The curator's word on a reviewed archive: sign it, or drop it (nothing published)."""
    ui = request.app[UI_KEY]
    t = Translator(lang_of(request))
    job = await in_thread(ui.jobs.get, request.match_info["jid"])
    if job is None:
        return error_page(request, 404, t("hub.no_job"))
    p: Principal = request["ui_principal"]
    if job.actor != p.name:
        return error_page(request, 403, t("hub.job_not_yours"))
    if job.state != "review":
        raise web.HTTPSeeOther(f"/ui/jobs/{job.id}")
    if request["ui_form"].get("decision") == "publish":
        if job.review.get("identical") and request["ui_form"].get("same") != "1":
            return error_page(request, 409, t("hub.review_identical_confirm"))
        job.state = "signing"  # at once, so a second click on any process does nothing
        await in_thread(ui.jobs.save, job)
        ui.start(job, _sign_job(request.app, job, p))
    else:
        await in_thread(ui.hub.abandon_upload, p, job.upload)
        job.state = "cancelled"
        await in_thread(ui.jobs.save, job)
    raise web.HTTPSeeOther(f"/ui/jobs/{job.id}")


@page("curator")
async def job_status(request: web.Request) -> web.Response:
    job = await in_thread(request.app[UI_KEY].jobs.get, request.match_info["jid"])
    if job is None:
        return error_page(request, 404, Translator(lang_of(request))("hub.no_job"))
    if job.interrupted:
        job.error = Translator(lang_of(request))("hub.job_interrupted")
    titles = await in_thread(request.app[UI_KEY].hub.channel_titles)
    return render(request, "job.html", job=job, title=titles.get(job.channel, job.channel))


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
    r.add_post("/ui/jobs/{jid}", job_decide)
    r.add_static("/ui/static/", STATIC)
    # the pages of each kind of user, in their own modules (they import this one)
    from . import web_admin, web_curator, web_routes

    web_admin.add_routes(app)
    web_curator.add_routes(app)
    web_routes.add_routes(app)
