"""A long command gives freed memory back to the system (caravane.memory, glibc only)."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
import textwrap

import pytest

GLIBC = ctypes.util.find_library("c") is not None and os.uname().sysname == "Linux"

# 120 MB of 4 KB blocks freed but one, which stays at the top of the heap: glibc gives
# back only the heap's top by itself, so without trimming the freed region stays resident
SCRIPT = textwrap.dedent(
    """
    import time
    from caravane import memory

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024

    tuned = memory.tune(trim_every=0.1)
    blocks = [bytes(4000) + bytes([i % 251]) for i in range(30_000)]
    full = rss()
    top = blocks[-1]
    del blocks
    time.sleep(1.0)
    print(tuned, full, rss())
    """
)


def _run(env: dict[str, str]) -> tuple[bool, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc_trim")
def test_memory_freed_in_the_middle_of_the_heap_goes_back_to_the_system() -> None:
    tuned, full, after = _run({})
    assert tuned
    assert full - after > 80  # MiB given back of the ~120 freed
    untouched, full, kept = _run({"CARAVANE_MALLOC": "default"})
    assert not untouched
    assert full - kept < 40  # the comparison: glibc alone keeps the freed region


def test_tuning_starts_one_trimming_thread_however_often_it_is_called() -> None:
    """``caravane`` calls it before any sub-command, and so may a command it runs."""
    code = (
        "import threading; from caravane import memory; "
        "a = memory.tune(); b = memory.tune(); "
        "print(a, b, sum(t.name == 'caravane-malloc-trim' for t in threading.enumerate()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    if GLIBC:
        assert out == ["True", "True", "1"]
    else:
        assert out == ["False", "False", "0"]
