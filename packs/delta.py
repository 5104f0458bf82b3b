"""Delta groups: new chunks of release B compressed as one stream against old content.

Measurements on real release pairs (docs/PERFORMANCE.md, and the design brief) show that one
compressed stream with a base the receiver already holds ("patch-from") beats per-chunk
compression by 1.6-2.3x and chunk dedup alone by far more, and that the base must be chosen by
content similarity, not by path: content moves between files, and bundlers rename files.

So a pack carries the chunks B has and A lacks, in B's order, in groups of bounded size; each
group is compressed at a strong zstd level with, as a raw-content dictionary, old chunks of
the files most similar to the ones the new chunks come from. Similarity is measured by shared
chunks and by a sampled sketch of small content-defined pieces, so a renamed or reshuffled
file still finds its ancestor. Bounds keep both builder and receiver memory flat: a group holds
at most GROUP_TARGET bytes of new content and GROUP_BASE bytes of base.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import zstandard as zstd
from fastcdc.fastcdc_cy import chunk_generator

from protocol.errors import VerificationError
from protocol.metadata import FileEntry, Manifest

GROUP_TARGET = 8 * 1024 * 1024
GROUP_BASE = 32 * 1024 * 1024
WHOLE_BASE_FILE = 4 * 1024 * 1024
NEIGHBOURHOOD = 1024 * 1024
SKETCH_MAX_FILE = 64 * 1024 * 1024
SKETCH_AVG = 512
SKETCH_SAMPLE = 4  # keep one small piece in SKETCH_SAMPLE
SKETCH_COMMON = 16  # ignore pieces found in more old files than this (boilerplate)
CANDIDATES = 2
LEVEL = 19
MAX_WINDOW_LOG = 27

ReadChunk = Callable[[str, int], bytes]


@dataclass
class Group:
    targets: list[tuple[str, int]] = field(default_factory=list)
    base: list[tuple[str, int]] = field(default_factory=list)
    target_bytes: int = 0
    base_bytes: int = 0
    _base_ids: set[str] = field(default_factory=set)

    def add_base(self, sha: str, size: int) -> None:
        if sha not in self._base_ids:
            self._base_ids.add(sha)
            self.base.append((sha, size))
            self.base_bytes += size


_VARIABLE = re.compile(r"[0-9a-f]{6,}|\d+", re.IGNORECASE)


def name_key(path: str) -> str:
    """A file name with versions and content hashes blanked: ``app.3f9a1c.js`` -> ``app.#.js``."""
    return _VARIABLE.sub("#", path.rsplit("/", 1)[-1].lower())


def sketch(data: bytes) -> set[int]:
    """A sample of hashes of small content-defined pieces: similar files share many."""
    if len(data) < 64:
        return set()
    view = memoryview(data)
    out: set[int] = set()
    for c in chunk_generator(view, 128, SKETCH_AVG, SKETCH_AVG * 8, False, None):
        h = hash(bytes(view[c.offset : c.offset + c.length]))
        if h % SKETCH_SAMPLE == 0:
            out.add(h)
    return out


def _file_bytes(entry: FileEntry, read_chunk: ReadChunk) -> bytes:
    return b"".join(read_chunk(h, n) for h, n in entry.chunks)


class SimilarityIndex:
    """Finds, for a file of B, the files of A it most likely evolved from."""

    def __init__(self, old: Manifest | None, read_chunk: ReadChunk) -> None:
        self.files: list[FileEntry] = list(old.files) if old else []
        self.by_chunk: dict[str, list[int]] = defaultdict(list)
        self.by_path: dict[str, int] = {}
        self.by_name: dict[str, list[int]] = defaultdict(list)
        self.by_piece: dict[int, list[int]] = defaultdict(list)
        self.read_chunk = read_chunk
        for i, f in enumerate(self.files):
            self.by_path[f.path] = i
            self.by_name[name_key(f.path)].append(i)
            for h, _ in f.chunks:
                lst = self.by_chunk[h]
                if not lst or lst[-1] != i:
                    lst.append(i)
            if 0 < f.size <= SKETCH_MAX_FILE:
                for piece in sketch(_file_bytes(f, read_chunk)):
                    lst = self.by_piece[piece]
                    if len(lst) <= SKETCH_COMMON:
                        lst.append(i)

    def candidates(self, new: FileEntry) -> list[int]:
        if not self.files:
            return []
        score: dict[int, float] = defaultdict(float)
        for h, n in new.chunks:
            for i in self.by_chunk.get(h, ()):
                score[i] += n
        if 0 < new.size <= SKETCH_MAX_FILE:
            for piece in sketch(_file_bytes(new, self.read_chunk)):
                owners = self.by_piece.get(piece)
                if owners and len(owners) <= SKETCH_COMMON:
                    for i in owners:
                        score[i] += SKETCH_AVG * SKETCH_SAMPLE
        same = self.by_path.get(new.path)
        if same is not None:
            score[same] += 1 + 0.05 * self.files[same].size
        for i in self.by_name.get(name_key(new.path), ()):
            score[i] += 1 + 0.01 * self.files[i].size
        ranked = sorted(score, key=lambda i: (-score[i], self.files[i].path))
        return ranked[:CANDIDATES]


def _base_window(
    old: FileEntry, start: int, length: int, new_size: int
) -> Iterator[tuple[str, int]]:
    """Chunks of ``old`` around the position matching ``start`` in the new file."""
    if old.size <= WHOLE_BASE_FILE:
        yield from old.chunks
        return
    centre = start * old.size // max(1, new_size)
    lo, hi = centre - NEIGHBOURHOOD, centre + length + NEIGHBOURHOOD
    pos = 0
    for h, n in old.chunks:
        if pos + n > lo and pos < hi:
            yield h, n
        pos += n


def plan_groups(old: Manifest | None, new: Manifest, read_chunk: ReadChunk) -> Iterator[Group]:
    """Group the chunks of ``new`` that ``old`` lacks, each with a base of old chunks."""
    have = set(old.chunk_sizes()) if old else set()
    index = SimilarityIndex(old, read_chunk)
    sent: set[str] = set()
    group = Group()
    for f in new.files:
        fresh = [(h, n) for h, n in f.chunks if h not in have and h not in sent]
        if not fresh:
            continue
        cands = [index.files[i] for i in index.candidates(f)]
        pos = 0
        offsets = {}
        for h, n in f.chunks:
            offsets.setdefault(h, pos)
            pos += n
        for h, n in fresh:
            if h in sent:
                continue
            sent.add(h)
            for cand in cands:
                for bh, bn in _base_window(cand, offsets[h], n, f.size):
                    if group.base_bytes + bn > GROUP_BASE:
                        break
                    group.add_base(bh, bn)
            group.targets.append((h, n))
            group.target_bytes += n
            if group.target_bytes >= GROUP_TARGET or group.base_bytes >= GROUP_BASE:
                yield group
                group = Group()
    if group.targets:
        yield group


def _params(base_len: int, target_len: int, level: int) -> zstd.ZstdCompressionParameters:
    window_log = min(MAX_WINDOW_LOG, max(20, math.ceil(math.log2(base_len + target_len + 1))))
    return zstd.ZstdCompressionParameters.from_level(
        level, window_log=window_log, write_content_size=True
    )


def compress_group(base: bytes, target: bytes, level: int = LEVEL) -> bytes:
    params = _params(len(base), len(target), level)
    if base:
        d = zstd.ZstdCompressionDict(base, dict_type=zstd.DICT_TYPE_RAWCONTENT)
        cctx = zstd.ZstdCompressor(dict_data=d, compression_params=params)
    else:
        cctx = zstd.ZstdCompressor(compression_params=params)
    return cctx.compress(target)


def decompress_group(base: bytes, payload: bytes, target_len: int, what: str) -> bytes:
    try:
        params = zstd.get_frame_parameters(payload)
    except zstd.ZstdError:
        raise VerificationError(f"{what}: not a zstd frame") from None
    if params.content_size != target_len:
        raise VerificationError(f"{what}: declares {params.content_size} bytes, not {target_len}")
    kwargs = {"max_window_size": 1 << MAX_WINDOW_LOG}
    if base:
        kwargs["dict_data"] = zstd.ZstdCompressionDict(base, dict_type=zstd.DICT_TYPE_RAWCONTENT)
    try:
        out = zstd.ZstdDecompressor(**kwargs).decompress(payload, max_output_size=target_len)
    except zstd.ZstdError as exc:
        raise VerificationError(f"{what}: cannot be decompressed ({exc})") from None
    if len(out) != target_len:
        raise VerificationError(f"{what}: {len(out)} bytes instead of {target_len}")
    return out


def split_targets(
    data: bytes, targets: list[tuple[str, int]], what: str
) -> Iterator[tuple[str, memoryview]]:
    """Cut a decompressed group into its chunks, checking each one's SHA-256."""
    view = memoryview(data)
    pos = 0
    for sha, n in targets:
        piece = view[pos : pos + n]
        pos += n
        if hashlib.sha256(piece).hexdigest() != sha:
            raise VerificationError(f"{what}: chunk {sha[:16]} does not match its SHA-256")
        yield sha, piece


def manifest_delta(old: bytes | None, new: bytes, level: int = LEVEL) -> bytes:
    return compress_group(old or b"", new, level)
