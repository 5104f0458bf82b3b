"""Checkout writes exactly the signed files, modes included, or nothing at all.

Small files are verified and written in batches by worker threads, big ones chunk by chunk
(``RepositoryBase.materialise``); both paths must give the same guarantees.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from caravane.packs.hub_repository import HubRepository
from caravane.packs.repository import SMALL_FILE
from caravane.protocol.errors import VerificationError

from .conftest import read_tree


def _tree(src: Path) -> Path:
    (src / "bin").mkdir(parents=True)
    (src / "pages").mkdir()
    for i in range(300):  # more than one batch of small files
        (src / "pages" / f"p{i:03d}.html").write_text(f"<p>page {i}</p>" * (i + 1))
    (src / "pages" / "empty.txt").write_bytes(b"")
    (src / "bin" / "run.sh").write_text("#!/bin/sh\necho ok\n")
    os.chmod(src / "bin" / "run.sh", 0o755)
    big = os.urandom(SMALL_FILE + 300_000)  # past the small-file size: streamed in chunks
    (src / "bin" / "tool").write_bytes(big)
    os.chmod(src / "bin" / "tool", 0o755)
    return src


def test_checkout_gives_the_same_bytes_and_modes_under_a_strict_umask(tmp_path: Path) -> None:
    repo = HubRepository.init(tmp_path / "repo")
    src = _tree(tmp_path / "src")
    repo.publish("c", src)
    old = os.umask(0o077)
    try:
        repo.checkout("c", tmp_path / "out")
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert read_tree(out) == read_tree(src)
    assert (out / "bin" / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (out / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    assert (out / "pages" / "p007.html").stat().st_mode & 0o777 == 0o644


def test_a_corrupt_small_file_object_fails_the_checkout_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    repo = HubRepository.init(tmp_path / "repo")
    src = _tree(tmp_path / "src")
    repo.publish("c", src)
    entry = next(f for f in repo.manifest("c").files if f.path == "pages/p150.html")
    loc = repo.store.index.locate(entry.chunks[0][0])
    assert loc is not None
    with open(repo.store.index.segment_path(loc.segment), "r+b") as fh:
        fh.seek(loc.offset + loc.length - 2)
        byte = fh.read(1)
        fh.seek(loc.offset + loc.length - 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(VerificationError, match="p150"):
        repo.checkout("c", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


def _flip_object(repo: HubRepository, sha: str) -> None:
    loc = repo.store.index.locate(sha)
    assert loc is not None
    with open(repo.store.index.segment_path(loc.segment), "r+b") as fh:
        fh.seek(loc.offset + loc.length - 2)
        byte = fh.read(1)
        fh.seek(loc.offset + loc.length - 2)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_a_damaged_piece_half_way_fails_the_checkout_and_keeps_the_good_one(
    tmp_path: Path,
) -> None:
    """The file list is read piece by piece while files are written: a damaged leaf far
    into the release fails the checkout after files before it were written, and the
    release checked out before stays whole in place (nothing of the failed one is left)."""
    from caravane.protocol import tree

    from .conftest import RepoSim

    files: dict[str, bytes | str] = {f"d{i // 500}/f{i:05d}.txt": f"file {i}" for i in range(3000)}
    sim = RepoSim(tmp_path, HubRepository.init(tmp_path / "repo"))
    sim.publish(files)
    repo = sim.hub
    out = tmp_path / "out"
    repo.checkout(sim.channel, out)
    assert read_tree(out) == {p: str(v).encode() for p, v in files.items()}
    files["d0/f00000.txt"] = "changed"
    sim.publish(files)
    late = sim.piece_of(2, "d5/f02999.txt")
    assert late != sim.piece_of(2, "d0/f00000.txt"), "the release spans several leaves"
    doc = tree.parse_doc(sim.hub_file(f"manifests/{sim.channel}/2.json").read_bytes())
    assert doc.root is not None and doc.root.level > 0
    _flip_object(repo, late)
    with pytest.raises(VerificationError, match=late[:12]):
        repo.checkout(sim.channel, out, 2, replace=True)
    assert read_tree(out)["d0/f00000.txt"] == b"file 0"  # the good release, whole
    assert len(read_tree(out)) == 3000
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]
