"""Packs against the usual tools, on real releases; publish/checkout throughput and memory.

Why this exists: Caravane's claim is that a centre holding release A receives the fewest
bytes to reach release B, while the hub publishes and the centre checks out fast on a small
machine. This benchmark measures both on real content fetched at bench time.

1. Release pairs (npm ``typescript`` patch and minor, PyPI ``Django`` and ``numpy`` sdists):
   bytes a receiver holding A needs to reach B, for a Caravane pack, ``tar | zstd -19``,
   ``rsync -z`` (real wire bytes), ``zstd --patch-from``, ``xdelta3`` and ``casync``.
2. A seeded mixed folder (``CARAVANE_BENCH_MB``, default 1024; ``--quick``: 200): first
   publish and checkout+verify throughput and peak RSS, each in a child process, median of
   3, next to ``tar | zstd -3 -T0`` on the same folder.

    python -m bench.packs [--quick] [--pairs-only | --no-pairs] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import median, run_child, table

CACHE = Path(__file__).resolve().parent / ".cache"
CHANNEL = "bench"
MB = 1_000_000
MIB = 1 << 20


@dataclass(frozen=True)
class Release:
    """One downloadable release: where it comes from and how its archive is named."""

    registry: str  # "npm" or "pypi"
    name: str
    version: str


PAIRS: list[tuple[str, Release, Release]] = [
    (
        "typescript 5.6.2->5.6.3 (npm, patch)",
        Release("npm", "typescript", "5.6.2"),
        Release("npm", "typescript", "5.6.3"),
    ),
    (
        "typescript 5.5.4->5.6.2 (npm, minor)",
        Release("npm", "typescript", "5.5.4"),
        Release("npm", "typescript", "5.6.2"),
    ),
    (
        "Django 5.1.3->5.1.4 (PyPI sdist)",
        Release("pypi", "Django", "5.1.3"),
        Release("pypi", "Django", "5.1.4"),
    ),
    (
        "numpy 2.1.2->2.1.3 (PyPI sdist)",
        Release("pypi", "numpy", "2.1.2"),
        Release("pypi", "numpy", "2.1.3"),
    ),
]


# --------------------------------------------------------------------------- fetching


def _get(url: str) -> bytes:
    """Plain HTTPS GET with a User-Agent; registries refuse some default agents."""
    req = urllib.request.Request(url, headers={"User-Agent": "caravane-bench/0.1"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return resp.read()


def _url(rel: Release) -> str:
    """The archive's URL: npm tarballs have a fixed pattern, PyPI needs its JSON API."""
    if rel.registry == "npm":
        base = rel.name.rsplit("/", 1)[-1]
        return f"https://registry.npmjs.org/{rel.name}/-/{base}-{rel.version}.tgz"
    # The project-wide JSON (not /<version>/json, which some mirrors lack); its file URLs
    # may be relative to the API URL on a mirror, hence urljoin.
    api = f"https://pypi.org/pypi/{rel.name.lower()}/json"
    meta = json.loads(_get(api))
    for f in meta["releases"].get(rel.version, []):
        if f.get("packagetype") == "sdist" or f["filename"].endswith(".tar.gz"):
            return urllib.parse.urljoin(api, f["url"])
    raise RuntimeError(f"{rel.name} {rel.version}: no sdist on PyPI")


def fetch(rel: Release) -> Path:
    """Download once into bench/.cache/ so reruns are offline and compare the same bytes."""
    CACHE.mkdir(parents=True, exist_ok=True)
    safe = rel.name.replace("/", "_").replace("@", "")
    path = CACHE / f"{rel.registry}-{safe}-{rel.version}.tgz"
    if not path.exists():
        data = _get(_url(rel))
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


def unpack(archive: Path, dest: Path) -> Path:
    """Extract without the archive's top folder (it carries the version) so paths match."""
    dest.mkdir(parents=True)
    with tarfile.open(archive) as tf:
        members = [m for m in tf.getmembers() if m.isfile() or m.isdir()]
        for m in members:
            parts = m.name.split("/", 1)
            if len(parts) < 2 or not parts[1]:
                continue
            m.name = parts[1]
            tf.extract(m, dest, filter="data")
    return dest


def tree_bytes(folder: Path) -> int:
    """Sum of regular file sizes: the 'bytes of B' figures are quoted against."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- tools


def _have(tool: str) -> bool:
    return shutil.which(tool) is not None


def det_tar(folder: Path, out: Path) -> Path:
    """A byte-reproducible tar (sorted, zero mtimes/owners) so tar-based deltas are fair."""
    subprocess.run(
        [
            "tar",
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-cf",
            str(out),
            "-C",
            str(folder),
            ".",
        ],
        check=True,
    )
    return out


def tar_zstd_size(folder: Path, work: Path) -> int:
    """Full transfer baseline: what shipping B whole with strong compression costs."""
    tarball = det_tar(folder, work / "full.tar")
    out = work / "full.tar.zst"
    subprocess.run(
        ["zstd", "-q", "-f", "-19", "--long=27", "-T0", str(tarball), "-o", str(out)], check=True
    )
    size = out.stat().st_size
    tarball.unlink()
    out.unlink()
    return size


def rsync_wire(a: Path, b: Path, work: Path) -> int:
    """Real rsync delta transfer bytes (sent + received) turning a copy of A into B.

    ``--checksum``: unpacked archives share fake mtimes (npm uses 1985 for all), so rsync's
    size+mtime quick check would skip changed files and leave a wrong tree; ``-c`` makes the
    result correct at the cost of 16 bytes per file in the list. ``--no-whole-file`` forces
    the delta algorithm, which rsync disables for local copies.
    """
    dest = work / "rsync-dest"
    shutil.copytree(a, dest, symlinks=True)
    res = subprocess.run(
        ["rsync", "-a", "-z", "-c", "--no-whole-file", "--delete", "--stats", f"{b}/", f"{dest}/"],
        check=True,
        capture_output=True,
        text=True,
    )
    sent = int(re.search(r"Total bytes sent: ([\d,]+)", res.stdout).group(1).replace(",", ""))
    recv = int(re.search(r"Total bytes received: ([\d,]+)", res.stdout).group(1).replace(",", ""))
    check = subprocess.run(["diff", "-rq", str(b), str(dest)], capture_output=True)
    shutil.rmtree(dest)
    if check.returncode != 0:
        raise RuntimeError("rsync result differs from B")
    return sent + recv


def zstd_patch_size(a_tar: Path, b_tar: Path, work: Path) -> int:
    """zstd's own delta mode: B.tar compressed against A.tar as a dictionary."""
    out = work / "patch.zst"
    long = max(27, (max(a_tar.stat().st_size, b_tar.stat().st_size) - 1).bit_length())
    subprocess.run(
        [
            "zstd",
            "-q",
            "-f",
            "-19",
            f"--long={long}",
            f"--patch-from={a_tar}",
            str(b_tar),
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    size = out.stat().st_size
    out.unlink()
    return size


def xdelta_size(a_tar: Path, b_tar: Path, work: Path) -> int | None:
    """VCDIFF delta with a source window as large as A, so it can see all of A."""
    if not _have("xdelta3"):
        return None
    out = work / "patch.vcdiff"
    window = max(64 * MIB, 1 << (a_tar.stat().st_size - 1).bit_length())
    subprocess.run(
        ["xdelta3", "-9", "-e", "-f", "-B", str(window), "-s", str(a_tar), str(b_tar), str(out)],
        check=True,
    )
    size = out.stat().st_size
    out.unlink()
    return size


def _dir_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def casync_size(a: Path, b: Path, work: Path) -> int | None:
    """Chunk-store growth from adding B after A, plus B's index: what casync ships."""
    if not _have("casync"):
        return None
    store = work / "casync.castr"
    run = ["casync", "make", "--without=user-names", f"--store={store}"]
    subprocess.run([*run, str(work / "A.caidx"), str(a)], check=True, capture_output=True)
    before = _dir_size(store)
    subprocess.run([*run, str(work / "B.caidx"), str(b)], check=True, capture_output=True)
    grown = _dir_size(store) - before + (work / "B.caidx").stat().st_size
    shutil.rmtree(store)
    return grown


def caravane_pack(a: Path, b: Path, work: Path) -> tuple[int, float, dict[str, Any]]:
    """A hub publishes A then B; the pack 1->2 is what a centre holding A downloads."""
    from caravane.packs.hub_repository import HubRepository

    repo = HubRepository.init(work / "hub")
    repo.publish(CHANNEL, a)
    repo.publish(CHANNEL, b)
    start = time.monotonic()
    info = repo.build_pack(CHANNEL, 1, 2, work / "a-b.pack")
    seconds = time.monotonic() - start
    details = dict(info.to_dict(), breakdown=pack_breakdown(work / "a-b.pack"))
    _check_pack(repo, work, b)
    shutil.rmtree(work / "hub")
    return info.size, seconds, details


def pack_breakdown(pack: Path) -> dict[str, int]:
    """Bytes per entry kind: shows whether a pack is content or fixed signed overhead."""
    from caravane.packs.packfile import read_entries

    out: dict[str, int] = {}
    for entry in read_entries(pack):
        out[entry.kind] = out.get(entry.kind, 0) + entry.length
        if entry.kind == "delta":
            out["delta payload"] = out.get("delta payload", 0) + len(entry.payload)
    return out


def _check_pack(hub: Any, work: Path, b: Path) -> None:
    """A pack that does not reproduce B would win on size by cheating; apply and compare."""
    from caravane.packs.centre_store import CentreStore

    store = CentreStore.init(work / "store", trust_root=hub.path / "metadata/root.json")
    hub.build_pack(CHANNEL, 0, 1, work / "full.pack")
    store.apply_pack(work / "full.pack")
    store.apply_pack(work / "a-b.pack")
    store.checkout(CHANNEL, work / "out")
    check = subprocess.run(["diff", "-rq", str(b), str(work / "out")], capture_output=True)
    if check.returncode != 0:
        raise RuntimeError(f"pack did not reproduce B: {check.stdout.decode()[:500]}")
    for p in ("store", "out", "full.pack", "a-b.pack"):
        target = work / p
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def bench_pair(label: str, ra: Release, rb: Release, tmp: Path) -> dict[str, Any]:
    """Every method's bytes for one pair; None where a tool is missing."""
    work = tmp / re.sub(r"[^A-Za-z0-9]+", "-", label)
    work.mkdir()
    a = unpack(fetch(ra), work / "A")
    b = unpack(fetch(rb), work / "B")
    b_bytes = tree_bytes(b)
    b_files = sum(1 for p in b.rglob("*") if p.is_file())
    pack, seconds, info = caravane_pack(a, b, work)
    sizes: dict[str, int | None] = {"caravane pack": pack}
    sizes["tar | zstd -19 --long (B whole)"] = tar_zstd_size(b, work)
    sizes["rsync -z -c --no-whole-file"] = rsync_wire(a, b, work)
    a_tar, b_tar = det_tar(a, work / "A.tar"), det_tar(b, work / "B.tar")
    sizes["zstd -19 --patch-from"] = zstd_patch_size(a_tar, b_tar, work)
    sizes["xdelta3 -9"] = xdelta_size(a_tar, b_tar, work)
    sizes["casync (store growth + caidx)"] = casync_size(a, b, work)
    others = [v for k, v in sizes.items() if k != "caravane pack" and v is not None]
    best = min(others)
    shutil.rmtree(work)
    return {
        "pair": label,
        "b_bytes": b_bytes,
        "b_files": b_files,
        "sizes": sizes,
        "best_alternative": best,
        "ratio_to_best": pack / best,
        "pack_build_seconds": seconds,
        "pack_build_mb_s": b_bytes / MB / seconds if seconds else float("inf"),
        "pack_info": info,
    }


def pairs_table(r: dict[str, Any]) -> str:
    """One table per pair; ratios make the comparison readable on a noisy machine."""
    rows = []
    for name, size in r["sizes"].items():
        if size is None:
            rows.append([name, "n/a (not installed)", "", ""])
        else:
            rows.append(
                [
                    name,
                    size,
                    f"{size / r['b_bytes'] * 100:.2f}%",
                    f"{size / r['best_alternative']:.2f}x",
                ]
            )
    title = (
        f"{r['pair']}: B = {r['b_bytes']:,} bytes; pack build "
        f"{r['pack_build_seconds']:.2f} s = {r['pack_build_mb_s']:.1f} MB/s of B; "
        f"pack / smallest alternative = {r['ratio_to_best']:.2f}x"
    )
    parts = ", ".join(f"{k} {v:,}" for k, v in r["pack_info"]["breakdown"].items())
    return table(title, ["method", "bytes", "of B", "vs best alt"], rows) + (
        f"\ncaravane pack by entry kind (bytes): {parts}"
    )


# --------------------------------------------------------------------------- throughput


_ALPHABET = (
    b"eeeeeeeeeeeetttttttttaaaaaaaaooooooooiiiiiiinnnnnnnsssssshhhhhhrrrrrrdddd"
    b"lllluuucccmmmwwffggyyppbbvk   \n"
)


def _text_table() -> bytes:
    """Byte map from uniform random bytes to an English-like letter mix (~4.3 bits/byte)."""
    alpha = _ALPHABET * (256 // len(_ALPHABET) + 1)
    return bytes(alpha[:256])


def make_dataset(folder: Path, total: int, seed: int = 20241125) -> dict[str, int]:
    """A seeded mixed folder like a content channel: text, media, and repeated files.

    About 45% compressible text-like files (small to medium), 35% incompressible media
    (large files), 20% repeats of earlier files (the same PDF in two courses). Built from
    ``randbytes`` + ``translate`` so 1 GiB takes seconds in pure Python.
    """
    rnd = random.Random(seed)
    trans = _text_table()
    counts = {"text": 0, "media": 0, "repeat": 0}
    written = 0
    made: list[Path] = []
    i = 0
    share = {"text": 0.45, "media": 0.35, "repeat": 0.20}
    while written < total:
        i += 1
        # Shares are by bytes: pick the kind furthest behind its share (media files are big).
        kind = max(share, key=lambda k: share[k] * (written + 1) - counts[k])
        if kind == "repeat" and not made:
            kind = "text"
        sub = folder / f"course-{i % 37:02d}" / f"unit-{i % 11}"
        sub.mkdir(parents=True, exist_ok=True)
        if kind == "repeat":
            src = rnd.choice(made)
            dst = sub / f"copy-{i}-{src.name}"
            shutil.copyfile(src, dst)
            size = dst.stat().st_size
        elif kind == "text":
            size = min(int(rnd.lognormvariate(11.5, 1.3)), 8 * MIB)  # median ~100 KB
            dst = sub / f"page-{i}.html"
            dst.write_bytes(rnd.randbytes(size).translate(trans))
        else:
            size = rnd.randint(4 * MIB, 48 * MIB)
            dst = sub / f"video-{i}.mp4"
            with open(dst, "wb") as fh:
                left = size
                while left:
                    n = min(left, 4 * MIB)
                    fh.write(rnd.randbytes(n))
                    left -= n
        made.append(dst)
        counts[kind] += size
        written += size
    counts["files"] = len(made)
    counts["total"] = written
    return counts


def child_main(args: argparse.Namespace) -> None:
    """Runs in a child process so its peak RSS is its own, not the parent's accumulated one."""
    from caravane.packs.hub_repository import HubRepository

    start = time.monotonic()
    if args.child == "publish":
        repo = HubRepository.init(Path(args.repo))
        repo.publish(CHANNEL, Path(args.src))
    elif args.child == "checkout":
        HubRepository(Path(args.repo)).checkout(CHANNEL, Path(args.dest))
    else:
        raise SystemExit(f"unknown child job {args.child}")
    Path(args.result).write_text(json.dumps({"seconds": time.monotonic() - start}))


def _run_measured(cmd: list[str], work: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one command (see bench.common.run_child)."""
    seconds, rss, code = run_child(cmd)
    if code != 0:
        raise RuntimeError(f"{cmd[:6]} failed with status {code}")
    return seconds, rss


def _child(job: str, result: Path, **kw: str) -> tuple[float, int]:
    """Run a Caravane job in a fresh interpreter; time is measured inside (no start-up)."""
    cmd = [sys.executable, "-m", "bench.packs", "--child", job, "--result", str(result)]
    for k, v in kw.items():
        cmd += [f"--{k}", v]
    _, rss = _run_measured(cmd, result.parent)
    seconds = json.loads(result.read_text())["seconds"]
    result.unlink()
    return seconds, rss


def bench_throughput(tmp: Path, total: int, runs: int) -> dict[str, Any]:
    """Median of ``runs`` for publish, checkout+verify and tar|zstd, plus peak RSS."""
    src = tmp / "dataset"
    t0 = time.monotonic()
    counts = make_dataset(src, total)
    print(
        f"dataset: {counts['total']:,} bytes in {counts['files']} files "
        f"(text {counts['text']:,}, media {counts['media']:,}, repeats {counts['repeat']:,}),"
        f" generated in {time.monotonic() - t0:.1f} s",
        flush=True,
    )
    size = counts["total"]
    res = tmp / "child.json"
    out: dict[str, Any] = {"dataset": counts, "runs": runs}
    samples: dict[str, list[tuple[float, int]]] = {
        k: []
        for k in (
            "caravane publish",
            "caravane checkout+verify",
            "tar | zstd -3 -T0",
            "zstd -d | tar -x",
        )
    }
    repo = tmp / "repo"
    for n in range(runs):
        if repo.exists():
            shutil.rmtree(repo)
        samples["caravane publish"].append(_child("publish", res, repo=str(repo), src=str(src)))
        dest = tmp / "checkout"
        samples["caravane checkout+verify"].append(
            _child("checkout", res, repo=str(repo), dest=str(dest))
        )
        if n == 0:
            check = subprocess.run(["diff", "-rq", str(src), str(dest)], capture_output=True)
            if check.returncode:
                raise RuntimeError("checkout differs from the source folder")
            out["store_bytes"] = _dir_size(repo / "objects") + _dir_size(repo / "segments")
        shutil.rmtree(dest)
        tz = tmp / "full.tar.zst"
        samples["tar | zstd -3 -T0"].append(
            _run_measured(["bash", "-c", f"tar -cf - -C '{src}' . | zstd -q -3 -T0 -o '{tz}'"], tmp)
        )
        out["tar_zstd_bytes"] = tz.stat().st_size
        dest.mkdir()
        samples["zstd -d | tar -x"].append(
            _run_measured(["bash", "-c", f"zstd -q -d -c '{tz}' | tar -xf - -C '{dest}'"], tmp)
        )
        shutil.rmtree(dest)
        tz.unlink()
        print(f"  run {n + 1}/{runs} done", flush=True)
    shutil.rmtree(repo)
    shutil.rmtree(src)
    out["results"] = {
        name: {
            "seconds": [s for s, _ in vals],
            "mb_s": size / MB / median([s for s, _ in vals]),
            "peak_rss_mb": median([r for _, r in vals]) / MB,
            "peak_rss_max_mb": max(r for _, r in vals) / MB,
        }
        for name, vals in samples.items()
    }
    return out


def throughput_table(t: dict[str, Any]) -> str:
    """Medians of throughput and peak RSS per job, with the dataset size in the title."""
    rows = [
        [
            name,
            f"{r['mb_s']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
            " / ".join(f"{s:.1f}" for s in r["seconds"]),
        ]
        for name, r in t["results"].items()
    ]
    d = t["dataset"]
    title = (
        f"Throughput on {d['total'] / MB:,.0f} MB mixed folder ({d['files']} files), "
        f"median of {t['runs']}"
    )
    return table(title, ["job", "MB/s", "peak RSS MB", "seconds per run"], rows)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse options, run the selected parts, print tables, optionally write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 MB throughput folder")
    ap.add_argument("--json", type=Path, help="write machine-readable results here")
    ap.add_argument("--pairs-only", action="store_true", help="skip throughput")
    ap.add_argument("--no-pairs", action="store_true", help="skip release pairs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--repo", help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--dest", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_main(args)
        return {}
    results: dict[str, Any] = {"machine": _machine()}
    with tempfile.TemporaryDirectory(prefix="caravane-bench-") as tmpname:
        tmp = Path(tmpname)
        if not args.no_pairs:
            results["pairs"] = []
            for label, ra, rb in PAIRS:
                try:
                    r = bench_pair(label, ra, rb, tmp)
                except Exception as exc:  # one unreachable registry must not sink the rest
                    print(f"{label}: skipped ({type(exc).__name__}: {exc})", flush=True)
                    continue
                results["pairs"].append(r)
                print(pairs_table(r) + "\n", flush=True)
        if not args.pairs_only:
            mb = 200 if args.quick else int(os.environ.get("CARAVANE_BENCH_MB", "1024"))
            t = bench_throughput(tmp, mb * MIB, args.runs)
            results["throughput"] = t
            print(throughput_table(t) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def _machine() -> dict[str, Any]:
    """Enough context to read the figures: cores, memory, tool versions."""

    def ver(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).splitlines()[0].strip()
        except (OSError, IndexError, subprocess.SubprocessError):
            return "n/a"

    mem = Path("/proc/meminfo").read_text().split()[1] if os.path.exists("/proc/meminfo") else 0
    return {
        "cpus": os.cpu_count(),
        "mem_kb": int(mem),
        "python": sys.version.split()[0],
        "zstd": ver(["zstd", "--version"]),
        "rsync": ver(["rsync", "--version"]),
        "xdelta3": ver(["xdelta3", "-V"]),
        "casync": ver(["casync", "--version"]),
    }


if __name__ == "__main__":
    main()
