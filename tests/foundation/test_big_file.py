"""A 2 GiB file publishes and checks out with flat memory (no timing asserted)."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SIZE = 2 * 1024**3
LIMIT_KB = 200 * 1024

MEASURE = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(r.returncode)\n"
)


def _peak_kb(*args: object) -> int:
    """Run `caravane ARGS` in a fresh process and return its peak resident memory (KiB)."""
    r = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable, "-m", "caravane", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip().splitlines()[-1])


def _write_big(path: Path) -> None:
    """2 GiB of text-like data (compressible, like documents) in which every chunk is unique."""
    rnd = random.Random(2)
    words = [
        bytes(rnd.choices(b"abcdefghijklmnopqrstuvwxyz", k=rnd.randint(2, 9))) for _ in range(3000)
    ]
    block = bytearray(b" ".join(rnd.choices(words, k=250_000))[: 1 << 20])
    with open(path, "wb") as fh:
        for k in range(SIZE >> 20):
            for off in range(0, 1 << 20, 8192):
                block[off : off + 12] = b"%012d" % (k * 128 + off // 8192)
            fh.write(block)


@pytest.mark.slow
def test_two_gib_file_publishes_and_checks_out_with_flat_memory(tmp_path: Path) -> None:
    if shutil.disk_usage(tmp_path).free < 10 * 1024**3:
        pytest.skip("needs 10 GB free on the temporary folder's disk")
    src = tmp_path / "src"
    src.mkdir()
    _write_big(src / "cours.mp4")
    repo, out = tmp_path / "repo", tmp_path / "out"
    assert _peak_kb("repo", "init", repo) < LIMIT_KB
    publish_kb = _peak_kb("repo", "publish", repo, "videos", src)
    checkout_kb = _peak_kb("repo", "checkout", repo, "videos", out)
    assert publish_kb < LIMIT_KB, f"publish peaked at {publish_kb // 1024} MiB"
    assert checkout_kb < LIMIT_KB, f"checkout peaked at {checkout_kb // 1024} MiB"
    assert (out / "cours.mp4").stat().st_size == SIZE
    r = subprocess.run(["cmp", str(src / "cours.mp4"), str(out / "cours.mp4")])
    assert r.returncode == 0
