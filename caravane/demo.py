"""The quick-start job: a curator publishes, a centre's store receives packs, both verify.

It uses only the public pieces (the same ones the CLI drives) on embedded defaults, in a
scratch folder, so a new user sees the whole flow in a few seconds.
"""

from __future__ import annotations

import filecmp
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from packs.repository import Repository
from protocol.errors import VerificationError

SAMPLE = {
    "index.html": "<!doctype html><html lang='fr'><meta charset='utf-8'><title>Caravane</title>"
    "<h1>Bienvenue / Welcome</h1><a href='Leçons/été.html'>Leçons d'été</a></html>\n",
    "Leçons/été.html": "<!doctype html><meta charset='utf-8'><h1>Leçons d'été</h1>"
    + "<p>Le soleil se lève à l'est. The sun rises in the east.</p>\n" * 200,
    "Leçons/maths/fractions.txt": "1/2 + 1/4 = 3/4\n" * 500,
    "data/notes.csv": "".join(f"{i},{i * i},{i % 7}\n" for i in range(20000)),
}


def _write_tree(folder: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


def run_demo(workdir: Path, echo: Callable[[str], None] | None = print) -> dict[str, Any]:
    say = echo or (lambda _msg: None)
    workdir = Path(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    content = workdir / "content"
    _write_tree(content, SAMPLE)

    hub = Repository.init(workdir / "hub-repo")
    say(f"1. hub repository created in {hub.path}, signing keys in {hub.path / 'keys'}")
    v1 = hub.publish("decouverte", content, title="Découverte", notes="first release")
    say(f"2. published 'decouverte' v1: {v1.files} files, {v1.total_bytes} bytes")

    _write_tree(
        content,
        {
            "Leçons/été.html": SAMPLE["Leçons/été.html"].replace("l'est", "l'Est") + "<p>+</p>\n",
            "Leçons/hiver.html": "<h1>Hiver</h1>\n",
        },
    )
    v2 = hub.publish("decouverte", content, notes="a new lesson")
    say(f"3. published v2: {len(v2.new_files)} new and {len(v2.changed_files)} changed files")

    full = hub.build_pack("decouverte", 0, 1, workdir / "packs" / "decouverte-0-1.pack")
    upd = hub.build_pack("decouverte", 1, 2, workdir / "packs" / "decouverte-1-2.pack")
    say(f"4. packs built: full v1 {full.size} bytes, update v1->v2 {upd.size} bytes")

    node = Repository.init(workdir / "centre-store", trust_root=hub.path / "metadata/root.json")
    node.apply_pack(Path(full.volumes[0]))
    node.apply_pack(Path(upd.volumes[0]))
    node.checkout("decouverte", workdir / "centre-content")
    same = _same_tree(content, workdir / "centre-content")
    say(f"5. centre verified and checked out v2: identical to the curator's folder: {same}")
    if not same:
        raise VerificationError("demo: the centre's copy differs from the published folder")
    report = node.verify()
    if not report.ok:
        raise VerificationError("; ".join(report.problems))
    return {
        "ok": True,
        "channel": "decouverte",
        "versions": [v1.version, v2.version],
        "full_pack_bytes": full.size,
        "update_pack_bytes": upd.size,
        "centre_identical": same,
    }
