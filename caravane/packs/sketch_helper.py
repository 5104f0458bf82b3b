"""A helper process that sketches a publish's contents and writes them into the index.

Why a process: every line of Python of a publish shares one interpreter lock with its reading
and compressing threads, so a file's sketch cost 35 us there against 14 us alone, a quarter
of a first publish of small files. The helper takes batches of (sha, bytes) on its standard
input and answers each once sketched, one batch in flight, and writes the sketches in
transactions of ``WRITE_BATCH`` rows (and when told to, before the commit reads the index);
the publish reads on meanwhile. A plain child process
(``python -m caravane.packs.sketch_helper INDEX``), not ``multiprocessing``: its ``spawn``
start imports the parent's main script again, which runs whatever a caller's script does at
its top level.

The wire is private to the two ends of one publish: an 8-byte length, then a pickle (the
parent started the child, and nothing else writes to its pipes).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

_LEN = struct.Struct("<Q")


class HelperError(Exception):
    """The helper is gone or answered an error: the caller sketches in its own process."""


def _send(out: IO[bytes], obj: Any) -> None:
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_LEN.pack(len(blob)))
    out.write(blob)
    out.flush()


def _receive(inp: IO[bytes]) -> Any:
    head = inp.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError
    (n,) = _LEN.unpack(head)
    blob = inp.read(n)
    if len(blob) < n:
        raise EOFError
    return pickle.loads(blob)


class SketchHelper:
    """The parent's end: start the child, send batches, read each answer."""

    def __init__(self, index: Path) -> None:
        import caravane

        top = str(Path(caravane.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (top, env.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "caravane.packs.sketch_helper", str(index)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            raise HelperError(f"cannot start ({exc})") from None
        self._busy = False

    def submit(self, rows: list[tuple[str, bytes]] | None) -> None:
        """A batch to sketch, or None: write everything held (answered once written)."""
        assert not self._busy and self._proc.stdin is not None
        try:
            _send(self._proc.stdin, rows)
        except (OSError, ValueError) as exc:
            raise HelperError(f"stopped ({exc})") from None
        self._busy = True

    def result(self) -> int:
        """The answer to the batch in flight (0 when none is)."""
        if not self._busy:
            return 0
        self._busy = False
        assert self._proc.stdout is not None
        try:
            answer = _receive(self._proc.stdout)
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            raise HelperError(f"stopped (exit {self._proc.poll()}, {exc!r})") from None
        if isinstance(answer, str):
            raise HelperError(answer)
        return int(answer)

    def close(self) -> None:
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def main(argv: list[str]) -> int:
    """The child: batches in on stdin until it closes, a count (or an error) out for each."""
    from .similarity import WRITE_BATCH, SketchIndex, sketched_rows

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    index = SketchIndex(Path(argv[0]))
    held: list[tuple[str, set[int]]] = []
    try:
        while True:
            try:
                rows = _receive(inp)
            except EOFError:
                return 0
            try:
                if rows is not None:
                    # the sketches are small: they wait here for a transaction of
                    # WRITE_BATCH rows, the contents do not
                    held.extend(sketched_rows(rows))
                if rows is None or len(held) >= WRITE_BATCH:
                    held.sort()
                    index.put_many(held)
                    held.clear()
                _send(out, 0 if rows is None else len(rows))
            except Exception as exc:  # said to the parent, which warns and goes on alone
                held.clear()
                _send(out, f"{type(exc).__name__}: {exc}")
    finally:
        index.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
