"""A file's sketch: a sample of hashes of its small content-defined pieces.

Similar files share many, which is how a pack build finds a delta base for a new file among
the files of the old release (:mod:`.delta`, :mod:`.similarity`). Kept apart from the
delta code, with nothing but the chunker under it, so that the helper process that
sketches a publish's files (:mod:`.sketch_helper`) starts small.
"""

from __future__ import annotations

import hashlib

from .cdc import spans

SKETCH_MAX_FILE = 64 * 1024 * 1024
SKETCH_AVG = 512
SKETCH_SAMPLE = 4  # keep at least one small piece in SKETCH_SAMPLE (delta.sketch_sample)


def sketch(data: bytes, sample: int = SKETCH_SAMPLE) -> set[int]:
    """A sample of hashes of small content-defined pieces: similar files share many."""
    if len(data) < 64:
        return set()
    view = memoryview(data)
    out: set[int] = set()
    for offset, length in spans(view, 128, SKETCH_AVG, SKETCH_AVG * 8):
        # a stable hash, not hash(): that one changes with each process's PYTHONHASHSEED, so
        # the sample, the bases chosen and the pack's bytes would too (a rebuilt pack would
        # not match the one a centre is resuming by byte range, nor a mirror's copy)
        h = int.from_bytes(hashlib.blake2b(view[offset : offset + length], digest_size=8).digest())
        if h % sample == 0:
            out.add(h)
    return out


__all__ = ["SKETCH_AVG", "SKETCH_MAX_FILE", "SKETCH_SAMPLE", "sketch"]
