"""Keeping a long command's memory near what it holds, with glibc's allocator.

A publish, a pack build or a sync holds a bounded working set (a window of files, a batch
of frames, a leaf of the file list), yet its resident size grew with the run, beyond what
it held. Two habits of glibc are part of that gap (a curator's ``publish --hub`` of
300,000 pages: 223 MiB with glibc's defaults, 176 MiB with two arenas; docs/PERFORMANCE.md
gives the other causes):

* every thread that allocates gets an arena of its own (up to eight per core), and memory
  freed in one arena is never reused by another: frames compressed in the worker threads
  and freed in the event loop's leave their arenas half empty;
* freed memory inside a heap is handed back to the system only from its top, so one live
  block above a large freed region keeps the region resident.

:func:`tune` caps the arenas at two (``MALLOC_ARENA_MAX``, as many Python services set)
and starts a thread that asks glibc to return free pages (``malloc_trim``) every few
seconds, which costs a few milliseconds each time. Elsewhere (musl, macOS) both are left
alone. Nothing here changes what a command holds, only what stays resident after it is
freed; the figures are in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from typing import Final

#: glibc's mallopt parameter for the arena cap (malloc.h)
M_ARENA_MAX: Final = -8
ARENAS: Final = 2
#: seconds between two trims
TRIM_EVERY: Final = 2.0

_lock = threading.Lock()
_started = False


def _libc() -> ctypes.CDLL | None:
    """glibc, or None on another C library (no mallopt / malloc_trim to call)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None
    return libc


def tune(trim_every: float = TRIM_EVERY) -> bool:
    """Cap the arenas and start the trimming thread, once per process; True if glibc
    took it. Call it early, before the threads that allocate start (their arenas are
    made when they first allocate). ``CARAVANE_MALLOC=default`` leaves glibc alone (to
    compare)."""
    global _started
    if os.environ.get("CARAVANE_MALLOC") == "default":
        return False
    with _lock:
        if _started:
            return True
        libc = _libc()
        if libc is None:
            return False
        if "MALLOC_ARENA_MAX" not in os.environ:  # an operator's own setting stands
            libc.mallopt(M_ARENA_MAX, ARENAS)
        trim = libc.malloc_trim
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int

        def run() -> None:
            while True:
                time.sleep(trim_every)
                trim(0)

        threading.Thread(target=run, name="caravane-malloc-trim", daemon=True).start()
        _started = True
        return True
