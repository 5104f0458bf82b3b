"""The hub pages' forms and the page uploader's endpoints against bad input, over HTTP.

No browser here: the same requests a hostile or confused client would send (a wrong offset,
a piece past the announced size, someone else's upload, no CSRF header, an unfinished
upload posted, a formula in a centre's name), each answered with a clear refusal that loses
nothing.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

from caravane.hub.auth import Principal
from caravane.hub.web import ago_text
from caravane.hub.web_curator import slug_of
from tests.hub.conftest import RunningHub, sqlite_hub  # noqa: F401
from tests.web.test_safety import Browser, _post_multipart

CURATOR = Principal("curator", "curator")


def api(b: Browser, method: str, path: str, csrf: str | None, body: bytes = b"", **headers):
    h = dict(headers)
    if csrf is not None:
        h["X-CSRF-Token"] = csrf
    req = urllib.request.Request(b.base + path, body or None, h, method=method)
    try:
        with b.opener.open(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_times_read_as_people_say_them() -> None:
    at = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    three_days = (at - timedelta(days=3)).isoformat()
    assert ago_text(three_days, "fr", at) == "il y a 3 jours"
    assert ago_text(three_days, "en", at) == "3 days ago"
    assert ago_text(at - timedelta(seconds=20), "fr", at) == "à l'instant"
    assert ago_text(None, "en", at) == "—" and ago_text("not a time", "en", at) == "—"


def test_slugs_from_titles() -> None:
    assert slug_of("Santé de l'enfant") == "sante-de-l-enfant"
    assert slug_of("  Éducation   civique ") == "education-civique"
    assert slug_of("Leçons — niveau 2 !") == "lecons-niveau-2"
    assert slug_of("?!") == ""
    assert len(slug_of("a" * 100)) == 64


def test_uploader_refuses_bad_pieces_and_resumes_from_its_offset(
    sqlite_hub: RunningHub,  # noqa: F811
) -> None:
    b = Browser(sqlite_hub.url)
    csrf = b.sign_in(sqlite_hub.token("curator"))
    start = json.dumps({"name": "site.zip", "size": 10}).encode()
    json_type = {"Content-Type": "application/json"}
    assert api(b, "POST", "/ui/uploads", None, start, **json_type)[0] == 403  # no CSRF header
    status, doc = api(b, "POST", "/ui/uploads", csrf, b'{"name": "a.exe", "size": 3}', **json_type)
    assert status == 415 and "a.exe" in doc["error"]
    status, doc = api(b, "POST", "/ui/uploads", csrf, start, **json_type)
    assert status == 201 and doc["offset"] == 0
    uid = doc["id"]

    def put(offset: int, data: bytes):
        return api(b, "PUT", f"/ui/uploads/{uid}", csrf, data, **{"Upload-Offset": str(offset)})

    assert put(0, b"PK\x03\x04") == (200, {"offset": 4, "size": 10})
    # a piece sent twice (the answer was lost): the hub says where it is, nothing doubled
    assert put(0, b"PK\x03\x04") == (409, {"offset": 4, "size": 10})
    status, doc = put(4, b"x" * 20)  # more than announced
    assert status == 413 and "more bytes" in doc["error"]
    assert api(b, "GET", f"/ui/uploads/{uid}", csrf)[1]["offset"] == 4
    # another curator cannot see or extend it
    other = Browser(sqlite_hub.url)
    ocsrf = other.sign_in(sqlite_hub.hub.create_token("other-curator", "curator"))
    assert api(other, "GET", f"/ui/uploads/{uid}", ocsrf)[0] == 404
    assert api(other, "PUT", f"/ui/uploads/{uid}", ocsrf, b"y", **{"Upload-Offset": "4"})[0] == 404
    assert api(b, "GET", "/ui/uploads/..%2f..%2fhub.db", csrf)[0] == 404
    # posting the form with an unfinished upload gives the form back, the notes kept
    sqlite_hub.hub.create_channel(CURATOR, {"id": "lecons", "title": "Leçons"})
    status, body = b.call(
        "/ui/publish", {"csrf": csrf, "channel": "lecons", "notes": "à garder", "upload": uid}
    )
    assert status == 409 and "not finished (4 of 10 bytes)" in body and "à garder" in body
    assert put(4, b"123456") == (200, {"offset": 10, "size": 10})
    # finished, but not a zip inside: refused before any work, form kept
    status, body = b.call(
        "/ui/publish?lang=en", {"csrf": csrf, "channel": "lecons", "notes": "n", "upload": uid}
    )
    assert status == 415 and "is not a .zip or .tar.gz archive" in body
    # the same without the page's script (the file in the form): the form comes back too
    fields = {"csrf": csrf, "channel": "lecons", "notes": "gardée"}
    status, body = _post_multipart(
        b, f"/ui/publish?lang=en&csrf={csrf}", fields, {"archive": ("x.tgz", b"not gzip")}
    )
    assert status == 415 and '"x.tgz" is not a .zip' in body.replace("&#34;", '"')
    assert "gardée" in body and 'id="publish-form"' in body
    status, body = _post_multipart(
        b, f"/ui/publish?lang=en&csrf={csrf}", dict(fields, channel="nowhere"),
        {"archive": ("x.zip", b"PK")},
    )
    assert status == 422 and "Choose one of the channels" in body
    assert sqlite_hub.hub.channel("lecons")["latest"] is None


def test_new_channel_form_and_fleet_export(sqlite_hub: RunningHub) -> None:  # noqa: F811
    b = Browser(sqlite_hub.url)
    csrf = b.sign_in(sqlite_hub.token("curator"))
    # the id left empty comes from the title
    status, _ = b.call("/ui/channels/new", {"csrf": csrf, "title": "Santé de l'enfant", "id": ""})
    assert status == 200
    assert sqlite_hub.hub.channel("sante-de-l-enfant")["title"] == "Santé de l'enfant"
    status, body = b.call(
        "/ui/channels/new?lang=en", {"csrf": csrf, "title": "Santé de l'enfant", "id": ""}
    )
    assert status == 422 and "exists already" in body and 'aria-invalid="true"' in body
    status, body = b.call("/ui/channels/new?lang=en", {"csrf": csrf, "title": "", "id": "x"})
    assert status == 422 and "Give the channel a title" in body

    # a centre named like a spreadsheet formula is exported as text
    admin = Principal("admin", "admin")
    sqlite_hub.hub.register_centre(
        admin, {"name": "=HYPERLINK(\"http://x\")", "channels": ["sante-de-l-enfant"]}
    )
    a = Browser(sqlite_hub.url)
    acsrf = a.sign_in(sqlite_hub.admin)
    status, text = a.call("/ui/fleet.csv")
    rows = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
    assert status == 200 and rows[0]["centre"] == "'=HYPERLINK(\"http://x\")"
    assert rows[0]["channel_title"] == "Santé de l'enfant" and rows[0]["behind"] == "0"
    # the registration form refuses an empty name and keeps the region
    status, body = a.call("/ui/register?lang=en", {"csrf": acsrf, "name": " ", "region": "Kayes"})
    assert status == 422 and "Give the centre a name" in body and 'value="Kayes"' in body
