"""The centre's portal over real HTTP: catalogue, browsing, Range, languages, safety."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from tests.node.conftest import World, content


def _get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def portal(world: World) -> str:
    world.publish(content(1))
    n = world.node("centre-a")
    world.sync(n)
    return world.serve_node(n)


def test_catalogue_in_english_and_french(portal: str) -> None:
    status, headers, body = _get(portal + "/", {"Accept-Language": "en-GB,en;q=0.9"})
    assert status == 200 and b"Collections" in body and b"lecons" in body
    assert b"15 files" in body
    status, headers, body = _get(portal + "/", {"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.5"})
    assert headers["Content-Language"] == "fr"
    assert b"Bienvenue" in body and b"15 fichiers" in body
    _, headers, body = _get(portal + "/?lang=en", {"Accept-Language": "fr"})
    assert b"Welcome" in body and "lang=en" in headers.get("Set-Cookie", "")


def test_browse_and_open_a_site_as_it_is(portal: str) -> None:
    status, _, body = _get(portal + "/c/lecons/")
    assert status == 200 and b"site/" in body and b"videos/" in body
    status, headers, body = _get(portal + "/c/lecons/site/index.html")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "Leçons v1".encode() in body
    status, _, body = _get(portal + "/c/lecons/textes/")
    assert "été-00.txt".encode() in body


def test_video_seeks_with_range(portal: str, world: World) -> None:
    whole = world.versions[1]["videos/lecon-1.mp4"]
    status, headers, body = _get(
        portal + "/c/lecons/videos/lecon-1.mp4", {"Range": "bytes=1000000-1000099"}
    )
    assert status == 206 and body == whole[1000000:1000100]
    assert headers["Content-Range"] == f"bytes 1000000-1000099/{len(whole)}"


def test_search_titles_names_and_text(portal: str) -> None:
    _, _, body = _get(portal + "/search?q=CHAPITRE+7")  # inside the texts, any case
    assert "été-07.txt".encode() in body and b"<mark>chapitre</mark>" in body
    _, _, body = _get(portal + "/search?q=ete+01")  # file names, accents folded
    assert "été-01.txt".encode() in body
    _, _, body = _get(portal + "/search?q=zzzz")
    assert b"Nothing found" in body


def test_operator_page_in_plain_words(portal: str) -> None:
    _, _, body = _get(portal + "/operator", {"Accept-Language": "fr"})
    assert b"La version 1 est servie" in body
    assert "Tout ce que ce centre connaît est servi".encode() in body
    assert "à la main : complet".encode() in body
    status, headers, body = _get(portal + "/api/status")
    assert status == 200 and b'"active": 1' in body


@pytest.mark.parametrize(
    "path",
    [
        "/c/lecons/../../node.toml",
        "/c/lecons/%2e%2e/%2e%2e/node.toml",
        "/c/lecons/..%2f..%2fnode.toml",
        "/c/nope/",
        "/c/lecons/absent.txt",
    ],
)
def test_paths_outside_a_release_are_refused(portal: str, path: str) -> None:
    status, _, body = _get(portal + path)
    assert status in (400, 404)
    assert b"BEGIN" not in body and b"[node]" not in body


def test_escapes_names_in_pages(world: World) -> None:
    # '<' and '>' can no longer be published (Windows-safe names): the name carries what a
    # page must still escape, '&' and quotes
    world.publish({"&lt;script&gt;alert('1')&lt;/script&gt;.txt": b"x"})
    n = world.node("centre-b")
    world.sync(n)
    url = world.serve_node(n)
    _, _, body = _get(url + "/c/lecons/")
    assert b"&lt;script&gt;alert('1')" not in body
    assert b"&amp;lt;script&amp;gt;alert(&#39;1&#39;)" in body


def test_pages_opened_as_pages_get_the_way_back(portal: str, world: World) -> None:
    page = {"Sec-Fetch-Dest": "document", "Accept-Language": "fr"}
    status, headers, body = _get(portal + "/c/lecons/site/index.html", page)
    assert status == 200 and b'id="caravane-bar"' in body
    assert b"Retour &#224; lecons" in body and "Leçons v1".encode() in body
    # the bar goes right after <body> or, without one, first: the page itself is unchanged
    assert (
        body.replace(body[: body.index(b"</div>") + 6], b"") == world.versions[1]["site/index.html"]
    )
    assert headers["Vary"] == "Sec-Fetch-Dest"
    # what the site's own scripts and frames fetch, and download tools, get the file as it is
    for headers_ in ({"Sec-Fetch-Dest": "iframe"}, {"Sec-Fetch-Dest": "empty"}, {}):
        _, _, raw = _get(portal + "/c/lecons/site/index.html", headers_)
        assert raw == world.versions[1]["site/index.html"]
    # a video opened as a page: a page with a player and the way back; the file itself raw
    status, headers, body = _get(portal + "/c/lecons/videos/lecon-1.mp4", page)
    assert headers["Content-Type"].startswith("text/html")
    assert b'<video controls preload="metadata" src="lecon-1.mp4?raw=1"' in body
    _, headers, raw = _get(portal + "/c/lecons/videos/lecon-1.mp4?raw=1", page)
    assert headers["Content-Type"] == "video/mp4"
    assert raw == world.versions[1]["videos/lecon-1.mp4"]


def test_suggestions_as_json(portal: str) -> None:
    import json

    _, headers, body = _get(portal + "/api/suggest?q=ete+0")  # titles, as the box is typed
    assert headers["Content-Type"].startswith("application/json")
    titles = [s["title"] for s in json.loads(body)["suggestions"]]
    assert len(titles) == 8 and all(t.startswith("été 0") for t in titles)  # names of texts
    _, _, body = _get(portal + "/api/suggest?q=chapitre")  # words inside texts are no titles
    assert json.loads(body)["suggestions"] == []
    _, _, body = _get(portal + "/api/suggest?q=%22%29%28*")  # no FTS syntax gets through
    assert json.loads(body)["suggestions"] == []
