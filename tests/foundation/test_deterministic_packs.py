"""The same repository builds the same pack bytes in any process.

A centre resumes a pack by byte range, possibly from a pack the hub rebuilt after a restart
or from a mirror's copy; that only works if building is a function of the repository alone.
Python's ``hash()`` of bytes changes with each process's PYTHONHASHSEED, so nothing that
chooses a pack's content may depend on it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from .conftest import RepoSim

SKETCH = """
import hashlib, sys
from caravane.packs.delta import sketch
data = b"".join(hashlib.sha256(b"%d" % i).digest() * (1 + i % 7) for i in range(4000))
print(sorted(sketch(data)))
"""

BUILD = """
import sys
from pathlib import Path
from caravane.packs.hub_repository import HubRepository
HubRepository(Path(sys.argv[1])).build_pack("maths", 1, 2, Path(sys.argv[2]))
"""


def _run(code: str, *args: str, seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    r = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_similarity_sketch_does_not_depend_on_the_hash_seed() -> None:
    first = _run(SKETCH, seed="1")
    assert first.strip() != "[]"
    assert _run(SKETCH, seed="2") == first


def test_a_pack_built_twice_in_different_processes_is_the_same_bytes(sim: RepoSim) -> None:
    text = [hashlib.sha256(b"%d" % i).hexdigest() for i in range(3000)]
    sim.publish({"a.txt": "\n".join(text), "b.txt": "\n".join(reversed(text))})
    text[1500:1510] = ["changed"] * 10
    sim.publish({"a.txt": "\n".join(text), "c.txt": "\n".join(reversed(text))})
    out: list[bytes] = []
    for seed in ("1", "2"):
        pack = sim.tmp / f"seed-{seed}.pack"
        _run(BUILD, str(sim.hub.path), str(pack), seed=seed)
        out.append(Path(pack).read_bytes())
    assert out[0] == out[1]
