"""What release B holds that release A lacks: the one definition every caller shares.

A pack from A to B carries these chunks, the hub estimates a pack's size from them before
deciding to build it on demand, a field agent's drive is planned with them, and a centre
sizes its next download with them. They used to be computed in four places, each with its
own idea of "A" (nothing, a manifest, a set); a disagreement between them would make a drive
plan or an on-demand decision wrong without any test noticing, so there is one function.
"""

from __future__ import annotations

from caravane.protocol.metadata import Manifest


def missing_chunks(old: Manifest | None, new: Manifest) -> dict[str, int]:
    """Chunks of ``new`` that ``old`` does not reference, as {sha256: size}.

    Ordered by first use in ``new`` (file order, then chunk order), which is the order a pack
    sends them in; each chunk appears once however often ``new`` repeats it. ``old`` is
    ``None`` for a receiver that holds nothing of the channel yet.
    """
    have = old.chunk_sizes() if old is not None else {}
    out: dict[str, int] = {}
    for f in new.files:
        for sha, size in f.chunks:
            if sha not in have and sha not in out:
                out[sha] = size
    return out


def new_bytes(old: Manifest | None, new: Manifest) -> int:
    """Raw bytes of the chunks ``new`` has and ``old`` lacks (what a pack A->B carries)."""
    return sum(missing_chunks(old, new).values())


__all__ = ["missing_chunks", "new_bytes"]
