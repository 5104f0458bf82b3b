"""Packs of media that do not compress: built at a fast level, still deltas, still exact."""

from __future__ import annotations

import hashlib
from pathlib import Path

from caravane.packs import delta

from .conftest import RepoSim, read_tree


def media(n: int, seed: str) -> bytes:
    """Bytes that no compressor shrinks (as PNG, video or a zip are)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def test_a_changed_video_still_travels_as_a_small_delta(sim: RepoSim, tmp_path: Path) -> None:
    video = media(3_000_000, "film")
    sim.publish({"film.mp4": video, "notes.txt": "leçon\n" * 2000})
    edited = video[:1_400_000] + media(20_000, "cut") + video[1_400_000:]
    sim.publish(
        {"film.mp4": edited, "notes.txt": "leçon\n" * 2000, "photo.png": media(400_000, "p")}
    )
    pack = sim.pack(1, 2)
    size = sum(p.stat().st_size for p in pack.parent.glob(pack.name + "*"))
    # the new photo and the inserted cut are carried; the rest of the film is matched
    assert size < 400_000 + 20_000 + 200_000
    store = sim.store()
    store.apply_pack(sim.pack(0, 1))
    store.apply_pack(pack)
    store.checkout("maths", tmp_path / "out")
    assert read_tree(tmp_path / "out")["film.mp4"] == edited


def test_a_group_that_does_not_compress_is_kept_at_its_size() -> None:
    data = media(2_000_000, "x")
    payload = delta.compress_group(b"", data)
    assert len(payload) < len(data) * 1.001
    assert delta.decompress_group(b"", payload, len(data), "group") == data
    text = ("la leçon du jour " * 100_000).encode()
    assert len(delta.compress_group(b"", text)) < len(text) // 100  # text still goes strong
