"""The portal's full-text index, built at activation: titles and text, accents folded,
only changed files rewritten, switched with the release, rebuilt when damaged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from caravane.node import search
from tests.support.simulator import Centre, RepositorySimulator
from tests.web.conftest import minimal_pdf


def page(title: str, body: str) -> bytes:
    return (
        f"<!doctype html><html><head><title>{title}</title>"
        f"<script>var hidden = 'scriptword';</script></head>"
        f"<body><h1>{title}</h1><p>{body}</p></body></html>"
    ).encode()


def library(extra: dict[str, bytes] | None = None, files: int = 30) -> dict[str, bytes]:
    tree = {
        "index.html": page("Bibliothèque santé", "Guides pour les animateurs"),
        "guides/alimentation.html": page("Nutrition de l'enfant", "Les repas du jeune enfant."),
        "guides/hygiene.html": page("Hygiène", "Se laver les mains au savon."),
        "docs/paludisme.pdf": minimal_pdf("Moustiquaire impregnee"),
        "videos/lecon.mp4": b"\x00\x00\x00\x18ftypmp42" + b"x" * 1000,
    }
    for i in range(files):
        tree[f"textes/note-{i:02d}.txt"] = f"note {i} sur le puits numero {i}".encode()
    tree.update(extra or {})
    return tree


def served(centre: Centre) -> dict[str, int]:
    return {ch: v for ch in centre.releases.channels() if (v := centre.releases.active(ch))}


def find(centre: Centre, q: str) -> list[str]:
    index = search.for_releases(centre.releases.releases_dir)
    return [h.path for h in index.search(q, served(centre))]


def rows_since(centre: Centre, version: int) -> int:
    with sqlite3.connect(centre.path / "search.db") as conn:
        return conn.execute("SELECT count(*) FROM docs WHERE since = ?", (version,)).fetchone()[0]


def test_titles_text_and_pdfs_are_found_with_accents_folded(
    sim: RepositorySimulator, centre: Centre
) -> None:
    sim.publish(library())
    assert centre.sync([sim.upstream("mirror")]).complete
    assert find(centre, "nutrition de l'enfant")[0] == "guides/alimentation.html"
    assert find(centre, "Hygiène")[0] == "guides/hygiene.html"  # the file name, folded
    assert find(centre, "hygiene")[0] == "guides/hygiene.html"  # the title "Hygiène"
    assert find(centre, "HYGIÈNE savon") == ["guides/hygiene.html"]  # title and text
    assert find(centre, "moustiquaire") == ["docs/paludisme.pdf"]  # text inside the PDF
    assert find(centre, "puits numero 07") == ["textes/note-07.txt"]
    assert find(centre, "scriptword") == []  # scripts are not text
    assert find(centre, "lecon") == ["videos/lecon.mp4"]  # anything else by its name
    assert find(centre, 'nutrition" (enfant* ^') == ["guides/alimentation.html"]  # no FTS syntax
    index = search.for_releases(centre.releases.releases_dir)
    hits = index.search("savon", served(centre))
    assert "<mark>savon</mark>" in hits[0].snippet and hits[0].title == "Hygiène"
    assert [h.title for h in index.suggest("nutr", served(centre))] == ["Nutrition de l'enfant"]
    assert index.descriptions() == {"lecons": "Guides pour les animateurs"}


def test_a_one_file_change_rewrites_one_row(sim: RepositorySimulator, centre: Centre) -> None:
    sim.publish(library())
    up = sim.upstream("mirror")
    centre.sync([up])
    assert rows_since(centre, 1) == 35
    changed = {"guides/hygiene.html": page("Hygiène et eau", "Laver les mains, filtrer l'eau.")}
    sim.publish(library(changed))
    assert centre.sync([up]).channels[0].status == "activated"
    assert rows_since(centre, 2) == 1  # only the changed file was read and written
    assert find(centre, "filtrer") == ["guides/hygiene.html"]
    assert find(centre, "savon") == []  # the old text went with the old release
    # a file removed and one added: two rows written in all, none for the rest
    tree = library(changed)
    del tree["textes/note-03.txt"]
    tree["textes/nouveau.txt"] = b"forage neuf"
    sim.publish(tree)
    centre.sync([up])
    assert rows_since(centre, 3) == 1
    assert find(centre, "puits numero 03") == [] and find(centre, "forage") == [
        "textes/nouveau.txt"
    ]
    # rows only release 1 needed are gone once release 1 left the disk (keep 2 and 3)
    with sqlite3.connect(centre.path / "search.db") as conn:
        assert conn.execute("SELECT count(*) FROM docs WHERE until < 2").fetchone()[0] == 0


def test_a_rollback_searches_the_release_served_again(
    sim: RepositorySimulator, centre: Centre
) -> None:
    sim.publish(library())
    up = sim.upstream("mirror")
    centre.sync([up])
    sim.publish(library({"guides/hygiene.html": page("Hygiène", "Utiliser la cendre.")}))
    centre.sync([up])
    assert find(centre, "cendre") == ["guides/hygiene.html"] and find(centre, "savon") == []
    centre.releases.switch("lecons", 1)  # what `caravane node rollback` does to the files
    assert find(centre, "savon") == ["guides/hygiene.html"] and find(centre, "cendre") == []


def test_a_damaged_or_missing_index_is_rebuilt(sim: RepositorySimulator, centre: Centre) -> None:
    sim.publish(library())
    centre.sync([sim.upstream("mirror")])
    index = search.for_releases(centre.releases.releases_dir)

    def ensure() -> list[search.UpdateStats]:
        return search.ensure(
            index,
            served(centre),
            centre.releases.folder,
            lambda ch, v: centre.repo.release(ch, v),
            full_check=True,
        )

    assert ensure() == []  # sound: nothing to do
    # a power cut or a bad disk leaves garbage where the index was
    db = Path(index.path)
    data = bytearray(db.read_bytes())
    data[100:4000] = b"\xff" * 3900
    db.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    assert not index.check()
    rebuilt = ensure()
    assert [(s.rebuilt, s.written) for s in rebuilt] == [(True, 35)]
    assert index.check() and find(centre, "hygiene") == ["guides/hygiene.html"]
    db.unlink()
    assert [s.written for s in ensure()] == [35]
    assert find(centre, "nutrition") == ["guides/alimentation.html"]
    # an activation that meets a damaged file starts it again instead of failing
    db.write_bytes(b"not a database at all" * 100)
    sim.publish(library({"textes/note-00.txt": b"eau potable"}))
    assert centre.sync([sim.upstream("mirror-2")]).channels[0].status == "activated"
    assert find(centre, "potable") == ["textes/note-00.txt"]


def test_two_writers_index_a_release_once(sim: RepositorySimulator, centre: Centre) -> None:
    """The agent's activation and the portal's catch-up may meet: no row twice."""
    from concurrent.futures import ThreadPoolExecutor

    sim.publish(library())
    centre.sync([sim.upstream("mirror")])
    index_path = search.index_path(centre.path)
    index_path.unlink()  # as if lost: both writers set out to rebuild it
    release = centre.repo.release("lecons", 1)
    folder = centre.releases.folder("lecons", 1)

    def write(_: int) -> search.UpdateStats:
        return search.SearchIndex(index_path).update(release, folder, lambda v: None)

    with ThreadPoolExecutor(4) as pool:
        written = sum(s.written for s in pool.map(write, range(4)))
    assert written == 35 and search.SearchIndex(index_path).rows() == 35
    assert find(centre, "hygiene") == ["guides/hygiene.html"]
