"""The pure-Python FastCDC copy cuts where fastcdc's compiled module cuts.

The repository format depends on it: a Raspberry Pi (no fastcdc wheel) and the hub (x86_64,
compiled) must chunk a file into the same chunks, or the centre fetches again what it holds.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caravane.packs import cdc
from caravane.packs.chunker import chunk_limits

needs_compiled = pytest.mark.skipif(
    not cdc.COMPILED, reason="fastcdc's compiled module is not installed here (no wheel)"
)


def data_strategy() -> st.SearchStrategy[bytes]:
    rand = st.builds(
        lambda seed, n: random.Random(seed).randbytes(n),
        st.integers(0, 2**32),
        st.integers(0, 100_000),
    )
    # long runs of one byte reach the max-size cut; mixed with random parts, both masks
    runs = st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=3), st.integers(1, 40_000))
    return st.lists(st.one_of(rand, runs, st.binary(max_size=3000)), max_size=4).map(b"".join)


@needs_compiled
@settings(max_examples=40, deadline=None)
@given(data=data_strategy(), avg=st.sampled_from([256, 512, 1000, 4096, 8192, 65536]))
def test_pure_and_compiled_cut_at_the_same_offsets(data: bytes, avg: int) -> None:
    lo, mid, hi = chunk_limits(avg)
    pure = list(cdc.pure_spans(data, lo, mid, hi))
    assert pure == list(cdc.compiled_spans(data, lo, mid, hi))
    assert sum(n for _, n in pure) == len(data)


@needs_compiled
@settings(max_examples=20, deadline=None)
@given(data=data_strategy())
def test_delta_sketch_sizes_agree(data: bytes) -> None:
    """The delta planner's small pieces (min 128, avg 512, max 4096) agree as well."""
    assert list(cdc.pure_spans(data, 128, 512, 4096)) == list(
        cdc.compiled_spans(data, 128, 512, 4096)
    )


# what a machine without the wheel sees: `import fastcdc` raises ImportError
BLOCK_FASTCDC = "import sys; sys.modules['fastcdc'] = sys.modules['fastcdc.fastcdc_cy'] = None\n"


def test_a_machine_without_fastcdc_chunks_a_file_like_the_hub(tmp_path: Path) -> None:
    """Without the compiled module (a Pi), caravane imports and cuts the same chunks."""
    data = random.Random(7).randbytes(900_000) + b"\0" * 300_000
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    script = (
        "import hashlib, json, sys\n"
        "from caravane.packs import cdc\n"
        "from caravane.packs.chunker import iter_chunks\n"
        "import caravane.packs.delta, caravane.node.agent\n"
        f"with open({str(src)!r}, 'rb') as fh:\n"
        "    sums = [hashlib.sha256(c).hexdigest() for c in iter_chunks(fh, 16384)]\n"
        "print(json.dumps({'compiled': cdc.COMPILED, 'chunks': sums}))\n"
    )

    def run(prefix: str) -> dict[str, object]:
        out = subprocess.run(
            [sys.executable, "-c", prefix + script], capture_output=True, text=True, check=True
        )
        return dict(json.loads(out.stdout))

    without = run(BLOCK_FASTCDC)
    assert without["compiled"] is False
    with_default = run("")
    assert with_default["chunks"] == without["chunks"]
    assert len(without["chunks"]) > 10  # type: ignore[arg-type]
