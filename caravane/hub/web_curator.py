"""The curator's pages around publishing: a new channel, resumable uploads, a release's changes.

A new channel's id is made from its title ("Santé de l'enfant" -> ``sante-de-l-enfant``) by
the same rule in the page (as the curator types) and here (when the field is left empty);
a refused id comes back in the form with a message naming the rule.

Archives travel from the browser in pieces (``/ui/uploads``, the tus protocol's idea: the
client asks for the offset the hub holds and sends from there), so a progress bar is real
and a cut connection or a closed laptop resumes instead of starting again. Pieces land in
``DATA/web-uploads/`` (one ``.part`` file and its description per upload, a day at most),
and the publish form then names the finished upload instead of carrying the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable
from functools import wraps
from pathlib import Path
from typing import Any

from aiohttp import web

from caravane.i18n import Translator
from caravane.packs.changes import FileChanges, summarise_changes
from caravane.protocol.errors import CaravaneError
from caravane.protocol.metadata import CHANNEL_RE

from .appstate import in_thread
from .auth import ANY_ROLE, Principal, may
from .errors import Conflict, HubError, NotFound
from .service import Hub
from .web import MAX_ARCHIVE_BYTES, UI_KEY, lang_of, page, render

UPLOADS = "web-uploads"
MAX_PIECE = 8 * 1024 * 1024
UPLOAD_DAYS = 1
MAX_OPEN_PER_CURATOR = 8  # unfinished uploads one curator may hold (each reserves disk)
LIST_LIMIT = 500
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def slug_of(title: str) -> str:
    """A channel id from a title: accents folded, anything else a dash ('l'enfant': l-enfant).

    The publish page's script applies the same rule as the curator types (keep both equal).
    """
    folded = unicodedata.normalize("NFKD", title.casefold())
    plain = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return _NOT_SLUG.sub("-", plain).strip("-")[:64].strip("-")


# --------------------------------------------------------------------------- new channel


@page("curator")
async def new_channel_form(request: web.Request) -> web.Response:
    return render(request, "channel_new.html", form={}, errors={})


@page("curator", post=True)
async def new_channel(request: web.Request) -> web.Response:
    hub = request.app[UI_KEY].hub
    t = Translator(lang_of(request))
    form = request["ui_form"]
    kept = {k: " ".join(str(form.get(k, "")).split()) for k in ("title", "id", "language")}
    kept["description"] = str(form.get("description", "")).strip()[:2000]
    errors: dict[str, str] = {}
    if not kept["title"]:
        errors["title"] = t("hub.channel_need_title")
    cid = kept["id"] or slug_of(kept["title"])
    if not errors and not CHANNEL_RE.match(cid):
        errors["id"] = t("hub.channel_bad_id", id=cid)
    if not errors:
        doc = {
            "id": cid,
            "title": kept["title"],
            "description": kept["description"],
            "language": kept["language"] if kept["language"] in ("fr", "en") else "fr",
        }
        try:
            await in_thread(hub.create_channel, request["ui_principal"], doc)
        except Conflict:
            errors["id"] = t("hub.channel_exists", id=cid)
    if errors:
        kept["id"] = cid if "title" not in errors else kept["id"]
        return render(request, "channel_new.html", status=422, form=kept, errors=errors)
    raise web.HTTPSeeOther(f"/ui/publish?channel={cid}&created=1")


# --------------------------------------------------------------------------- a release


def release_changes(hub: Hub, cid: str, version: int) -> dict[str, Any]:
    """A release's changes against the newest earlier release the hub still holds."""
    info = hub.channel(cid)
    rel = next((r for r in info["releases"] if r["version"] == version), None)
    if rel is None:
        raise NotFound(f"no release {version} of channel {cid!r}")
    held = set(hub.repo.channel_meta(cid).releases) if hub.repo.channels() else set()
    out: dict[str, Any] = {"channel": info, "release": rel, "held": version in held}
    if version not in held:
        return out
    snap = hub.repo.snapshot()
    new = snap.release(cid, version)
    earlier = sorted(v for v in held if v < version)
    old = snap.release(cid, earlier[-1]) if earlier else None
    out["previous"] = earlier[-1] if earlier else None
    # the diff of the two trees, a few pieces for a weekly update, never the lists whole
    ch = summarise_changes(new.changes_from(old), new.files, LIST_LIMIT)
    out["changes"] = changes_view(ch)
    return out


def changes_view(ch: FileChanges) -> dict[str, Any]:
    """What a page shows of a diff: counts, and the first paths of each list."""
    return {
        "identical": ch.identical,
        "added": ch.added[:LIST_LIMIT],
        "changed": ch.changed[:LIST_LIMIT],
        "removed": ch.removed[:LIST_LIMIT],
        "n_added": ch.n_added,
        "n_changed": ch.n_changed,
        "n_removed": ch.n_removed,
        "unchanged": ch.unchanged,
        "added_bytes": ch.added_bytes,
        "removed_bytes": ch.removed_bytes,
    }


@page(*ANY_ROLE)
async def release_page(request: web.Request) -> web.Response:
    hub = request.app[UI_KEY].hub
    try:
        version = int(request.match_info["v"])
    except ValueError:
        raise NotFound("a release is named by its number") from None
    info = await in_thread(release_changes, hub, request.match_info["cid"], version)
    return render(request, "release.html", **info)


# --------------------------------------------------------------------------- uploads

Api = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]


def upload_api(fn: Api) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A JSON endpoint of the page's uploader: the session, the curator role, and the
    session's CSRF token in ``X-CSRF-Token`` on every call (bodies here are raw bytes)."""

    @wraps(fn)
    async def handler(request: web.Request) -> web.StreamResponse:
        ui = request.app[UI_KEY]
        t = Translator(lang_of(request))
        s = await ui.session(request)
        p = await in_thread(ui.principal_of, s) if s else None
        if s is None or p is None:
            return web.json_response({"error": t("hub.signed_out")}, status=401)
        if not may(p.role, ("curator",)):
            return web.json_response({"error": t("hub.forbidden", role=p.role)}, status=403)
        if not secrets.compare_digest(request.headers.get("X-CSRF-Token", ""), s.csrf):
            return web.json_response({"error": t("hub.bad_csrf")}, status=403)
        try:
            return await fn(request, p)
        except (HubError, CaravaneError) as exc:
            return web.json_response({"error": str(exc)}, status=getattr(exc, "status", 422))

    return handler


def uploads_dir(hub: Hub) -> Path:
    d = hub.config.data_dir / UPLOADS
    d.mkdir(parents=True, exist_ok=True)
    return d


def _upload_paths(hub: Hub, uid: str) -> tuple[Path, Path]:
    if not re.fullmatch(r"[0-9a-f]{32}", uid):
        raise NotFound("no such upload")
    d = uploads_dir(hub)
    return d / f"{uid}.json", d / f"{uid}.part"


def read_upload(hub: Hub, uid: str, owner: str) -> dict[str, Any]:
    """An upload's description and its offset; only its owner may see or extend it."""
    meta_path, part = _upload_paths(hub, uid)
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        raise NotFound("no such upload (it may have expired): choose the file again") from None
    if meta.get("owner") != owner:
        raise NotFound("no such upload (it may have expired): choose the file again")
    meta["offset"] = part.stat().st_size if part.exists() else 0
    return meta


def _sweep(d: Path) -> None:
    limit = time.time() - UPLOAD_DAYS * 86400
    for p in d.iterdir():
        try:
            if p.stat().st_mtime < limit:
                p.unlink()
        except FileNotFoundError:
            pass


def create_upload(hub: Hub, owner: str, name: str, size: int, t: Translator) -> dict[str, Any]:
    d = uploads_dir(hub)
    _sweep(d)
    if size <= 0:
        raise HubError(t("hub.upload_empty"), 422)
    if size > MAX_ARCHIVE_BYTES:
        raise HubError(t("hub.upload_too_large", size=MAX_ARCHIVE_BYTES), 413)
    # the archive, and room to unpack it next to the store
    if shutil.disk_usage(d).free < 2 * size:
        raise HubError(t("hub.upload_no_room"), 507)
    uid = uuid.uuid4().hex
    meta = {
        "id": uid,
        "owner": owner,
        "name": Path(name).name[:200],
        "size": size,
        "created": time.time(),
    }
    (d / f"{uid}.json").write_text(json.dumps(meta), encoding="utf-8")
    (d / f"{uid}.part").touch()
    return dict(meta, offset=0)


@upload_api
async def upload_create(request: web.Request, p: Principal) -> web.Response:
    t = Translator(lang_of(request))
    try:
        doc = await request.json()
        name, size = str(doc["name"]), int(doc["size"])
    except (ValueError, KeyError, TypeError):
        raise HubError('send {"name": ..., "size": ...}', 400) from None
    from .web import archive_kind

    if archive_kind(name) is None:
        raise HubError(t("hub.publish_wrong_kind", name=Path(name).name), 415)
    meta = await in_thread(create_upload, request.app[UI_KEY].hub, p.name, name, size, t)
    return web.json_response({"id": meta["id"], "offset": 0, "size": size}, status=201)


@upload_api
async def upload_status(request: web.Request, p: Principal) -> web.Response:
    meta = await in_thread(read_upload, request.app[UI_KEY].hub, request.match_info["uid"], p.name)
    return web.json_response({"id": meta["id"], "offset": meta["offset"], "size": meta["size"]})


def _append(part: Path, expect: int, data: bytes, size: int) -> int:
    """Append under an exclusive lock (two requests, or two hub processes, never interleave)."""
    with open(part, "ab") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        at = fh.seek(0, os.SEEK_END)
        if at != expect:  # another request appended meanwhile
            raise Conflict(str(at))
        if expect + len(data) > size:
            raise HubError("more bytes than the upload announced", 413)
        fh.write(data)
        return fh.tell()


@upload_api
async def upload_piece(request: web.Request, p: Principal) -> web.Response:
    """Append one piece at ``Upload-Offset``; a wrong offset answers the right one (409)."""
    hub = request.app[UI_KEY].hub
    uid = request.match_info["uid"]
    meta = await in_thread(read_upload, hub, uid, p.name)
    try:
        offset = int(request.headers.get("Upload-Offset", ""))
    except ValueError:
        raise HubError("send the piece's place in the file in Upload-Offset", 400) from None
    if offset != meta["offset"]:
        return web.json_response({"offset": meta["offset"], "size": meta["size"]}, status=409)
    if (request.content_length or 0) > MAX_PIECE:
        raise HubError(f"pieces are at most {MAX_PIECE} bytes", 413)
    body = bytearray()
    while block := await request.content.read(256 * 1024):  # read() answers what has come
        body += block
        if len(body) > MAX_PIECE:
            raise HubError(f"pieces are at most {MAX_PIECE} bytes", 413)
    data = bytes(body)
    try:
        new = await in_thread(_append, _upload_paths(hub, uid)[1], offset, data, meta["size"])
    except Conflict as exc:
        return web.json_response({"offset": int(str(exc)), "size": meta["size"]}, status=409)
    except OSError as exc:
        raise HubError(
            Translator(lang_of(request))("hub.upload_no_room") + f" ({exc})", 507
        ) from None
    return web.json_response({"offset": new, "size": meta["size"]})


def take_upload(hub: Hub, uid: str, owner: str, dest: Path) -> str:
    """Move a finished upload to ``dest``; its file name. Refused while bytes are missing."""
    meta = read_upload(hub, uid, owner)
    if meta["offset"] != meta["size"]:
        raise HubError(
            f"the upload is not finished ({meta['offset']} of {meta['size']} bytes); "
            "choose the file again to resume it",
            409,
        )
    meta_path, part = _upload_paths(hub, uid)
    shutil.move(str(part), dest)
    meta_path.unlink(missing_ok=True)
    return str(meta["name"])


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/ui/channels/new", new_channel_form)
    r.add_post("/ui/channels/new", new_channel)
    r.add_get("/ui/channels/{cid}/releases/{v}", release_page)
    r.add_post("/ui/uploads", upload_create)
    r.add_get("/ui/uploads/{uid}", upload_status)
    r.add_put("/ui/uploads/{uid}", upload_piece)


__all__ = ["add_routes", "changes_view", "slug_of", "take_upload"]
