"""kill -9 of `caravane node sync` at seeded random instants, during download and activation.

After every kill the served tree must be exactly the old release or exactly the new one,
never a mix; a restart must finish on the new release with a store whose objects verify.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from caravane.node.agent import NodeAgent
from caravane.node.upstream import HttpUpstream
from tests.foundation.conftest import read_tree
from tests.node.conftest import World, random_bytes

KILLS = 20


def release(version: int) -> dict[str, bytes]:
    tree = {f"pages/p{i:03d}.html": f"<p>page {i} v{version}</p>".encode() * 40 for i in range(150)}
    tree["video.mp4"] = random_bytes(1_500_000, 1) + random_bytes(1_500_000, version + 10)
    return tree


def _sync_cmd(node_dir: Path) -> list[str]:
    return [sys.executable, "-m", "caravane", "node", "sync", "-d", str(node_dir), "--no-report"]


def test_kill_9_at_random_points_never_serves_a_mix(world: World, tmp_path: Path) -> None:
    world.publish(release(1))
    n = world.node("snapshot", bandwidth_kbit=24_000)  # ~3 MB/s: downloads take a while
    assert world.sync(n).complete
    n.close()
    snapshot = world.tmp / "snapshot"
    world.publish(release(2))
    HttpUpstream("warm", world.rh.url + "/repo").read("packs/lecons/1-2.pack", 64 << 20)
    old, new = world.versions[1], world.versions[2]

    def fresh(i: int) -> Path:
        d = tmp_path / f"run-{i}"
        shutil.copytree(snapshot, d, symlinks=True)
        return d

    # how long a whole sync takes here, to spread the kills over all of it
    start = time.monotonic()
    subprocess.run(_sync_cmd(fresh(-1)), check=False, capture_output=True, timeout=120)
    span = time.monotonic() - start

    rng = random.Random(20261125)
    outcomes = {"old": 0, "new": 0}
    for i in range(KILLS):
        d = fresh(i)
        proc = subprocess.Popen(_sync_cmd(d), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.1, span))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        served = read_tree(d / "live" / "lecons")
        assert served in (old, new), f"kill {i}: the served tree is a mix"
        outcomes["old" if served == old else "new"] += 1
        done = subprocess.run(_sync_cmd(d), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert read_tree(d / "live" / "lecons") == new
        node = NodeAgent.open(d)
        report = node.repo.verify()
        node.close()
        assert [p for p in report.problems if "missing" not in p] == []
    print(f"span={span:.2f}s outcomes={outcomes}")
    assert outcomes["old"] > 0  # the kills did land before the switch
