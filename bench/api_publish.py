"""Publishing through the hub's API against publishing into a repository folder.

The same generated folder (about 128 MB in some 3,000 files: text, HTML, compressible data,
random media, a few large files) is published twice, each time into an empty hub:

* ``caravane repo publish REPO lecons FOLDER`` (local: chunk, compress, sign), and
* ``caravane publish lecons FOLDER --hub URL`` against ``caravane hub serve`` (the curator's
  client chunks and compresses each new chunk once, asks which objects the hub lacks while
  it still reads the folder, sends those from memory in parallel batches, and the hub
  decodes and hashes each, then signs as it takes the file list),

on SQLite and, when reachable, on PostgreSQL (``CARAVANE_TEST_POSTGRES``). Both commands run
as child processes with a cold local cache, and the table gives the ratio of wall times and,
since a shared machine's load weighs on the two unevenly (one process against two), of the
CPU seconds spent (client and hub, including the sketching of the release for the similarity
index that the hub does just after it answers; the load average is printed beside). Issue 10
measured 478 s against 8.8 s (55x) before the upload's file list stopped being reloaded per
object.

Run alone: ``python -m bench.api_publish [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench.common import free_port, run_measured

PG_URL = os.environ.get(
    "CARAVANE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
CARAVANE = [sys.executable, "-m", "caravane"]


def make_folder(folder: Path, total: int, files: int, seed: int = 10) -> tuple[int, int]:
    """Mixed content: 55 % small text/HTML, 25 % compressible data, 20 % random media."""
    rnd = random.Random(seed)
    words = [
        "leçon",
        "école",
        "calcul",
        "lecture",
        "science",
        "village",
        "eau",
        "soleil",
        "the",
        "and",
    ]
    big = max(1, files // 300)  # a few large media files hold a good part of the bytes
    budget_big = total * 35 // 100
    written = 0
    count = 0
    for i in range(big):
        path = folder / "media" / f"video-{i:02d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        n = budget_big // big
        path.write_bytes(rnd.randbytes(n))
        written += n
        count += 1
    small = files - big
    per = (total - written) // small
    for i in range(small):
        kind = i % 4
        d = folder / ("site", "textes", "data", "images")[kind] / f"d{i % 40:02d}"
        d.mkdir(parents=True, exist_ok=True)
        n = max(200, int(rnd.expovariate(1 / per)))
        if kind == 3:
            data = rnd.randbytes(n)
            name = f"img-{i:05d}.png"
        elif kind == 2:
            data = "".join(f"{j},{rnd.randint(0, 999)},{j % 7}\n" for j in range(n // 10)).encode()
            name = f"table-{i:05d}.csv"
        else:
            data = " ".join(rnd.choice(words) for _ in range(n // 6)).encode()
            name = f"page-{i:05d}.html" if kind == 0 else f"texte-{i:05d}.txt"
        (d / name).write_bytes(data)
        written += len(data)
        count += 1
    return count, written


def _pg_database() -> str | None:
    try:
        admin = create_engine(
            PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
        )
        name = f"caravane_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception:
        return None
    return PG_URL.rsplit("/", 1)[0] + f"/{name}"


def _drop_pg(url: str) -> None:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def _wait_port(port: int, seconds: float = 30) -> None:
    import socket

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"hub did not start on port {port}")


#: peak RSS (MiB) of the last command :func:`run_timed` ran, and of the last hub served
LAST_RSS: dict[str, float] = {}


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Run a command; return (wall seconds, CPU seconds of it and its children, exit code).

    Its own peak RSS goes into ``LAST_RSS["command"]`` (:func:`bench.common.run_measured`:
    a child forked straight from this process, which holds a million-file tree's listing,
    reported this process's RSS).
    """
    seconds, rss, code, cpu, err = run_measured(cmd, env)
    LAST_RSS["command"] = rss / 2**20
    if code:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        LAST_RSS["error"] = " / ".join(tail)  # type: ignore[assignment]
    return seconds, cpu, code


def peak_rss(pid: int) -> float:
    """A running process's peak RSS so far, in MiB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def process_cpu(pid: int) -> float:
    """CPU seconds a running process has used so far (user + system, from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_sketched(repo: Path, seconds: float = 120) -> None:
    """Until the repository's similarity index records a whole release (``complete``)."""
    import sqlite3

    path = repo / "index" / "similarity.sqlite"
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.is_file():
            try:
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
                    if db.execute("SELECT 1 FROM complete LIMIT 1").fetchone():
                        return
            except sqlite3.Error:
                pass  # not created yet
        time.sleep(0.01)
    raise RuntimeError(f"{path}: the release was not sketched within {seconds} s")


def via_repo(folder: Path, tmp: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of ``caravane repo publish``."""
    repo = tmp / "repo"
    subprocess.run([*CARAVANE, "repo", "init", str(repo)], check=True, capture_output=True)
    seconds, cpu, code = run_timed([*CARAVANE, "repo", "publish", str(repo), "lecons", str(folder)])
    if code:
        raise RuntimeError(f"repo publish failed: {LAST_RSS.get('error')}")
    return seconds, cpu


def via_hub(
    folder: Path, tmp: Path, database_url: str, change: Path | None = None
) -> tuple[float, float]:
    """(wall, CPU) seconds of ``caravane publish --hub``; CPU is the client's and the hub's
    (PostgreSQL's own server processes are not counted). ``change``: a file of ``folder``
    rewritten after the publish, then published again with the same cache (its wall
    seconds and the client's peak RSS go into ``LAST_RSS`` as ``republish_s``,
    ``republish_client``)."""
    data, port = tmp / "hub", free_port()
    init = subprocess.run(
        [
            *CARAVANE,
            "hub",
            "init",
            "--data",
            str(data),
            "--port",
            str(port),
            "--database-url",
            database_url,
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    token = json.loads(init.stdout)["admin_token"]
    server = subprocess.Popen(
        [*CARAVANE, "hub", "serve", "--config", str(data / "hub.toml"), "--no-scheduler"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        hub_before = process_cpu(server.pid)
        publish = [
            *CARAVANE,
            "publish",
            "lecons",
            str(folder),
            "--hub",
            f"http://127.0.0.1:{port}",
            "--token",
            token,
            "--cache",
            str(tmp / "curator-cache"),
        ]
        seconds, cpu, code = run_timed(publish, env=env)
        LAST_RSS["client"] = LAST_RSS["command"]
        # the hub's peak while it took the upload, before its pack worker starts on the
        # release (the first pack, at level 19, is bench.packs' and bench.scale's to measure)
        LAST_RSS["hub_upload"] = peak_rss(server.pid)
        if code:
            raise RuntimeError(f"publish --hub failed: {LAST_RSS.get('error')}")
        # the hub sketches the release for its similarity index after it answers (then builds
        # packs, not counted): that CPU is the publish's too, so it is waited for and counted
        # a million files take minutes to sketch (read back from the store)
        _wait_sketched(data / "repo", 120 + sum(1 for _ in folder.rglob("*")) / 1000)
        hub_cpu = process_cpu(server.pid) - hub_before
        LAST_RSS["hub"] = peak_rss(server.pid)
        if change is not None:
            change.write_bytes(change.read_bytes() + b"<!-- one more line -->\n")
            again, _, code = run_timed(publish, env=env)
            if code:
                raise RuntimeError(f"republish --hub failed: {LAST_RSS.get('error')}")
            LAST_RSS["republish_s"] = again
            LAST_RSS["republish_client"] = LAST_RSS["command"]
            LAST_RSS["republish_hub"] = peak_rss(server.pid)
        return seconds, cpu + hub_cpu
    finally:
        # killed, not stopped: after the commit the hub builds the release's packs (minutes
        # at level 19 for 128 MB), and a graceful stop would wait for that, not measured here
        server.kill()
        server.wait()


def run(
    quick: bool,
    repeat: int,
    small: int | None = None,
    databases: tuple[str, ...] = ("SQLite", "PostgreSQL"),
) -> dict[str, Any]:
    """Each database: ``repeat`` rounds of (repo publish, publish --hub), medians compared.

    The two commands alternate within a round, so a neighbour's load on a shared machine
    weighs on both sides alike; the median of the rounds drops the outliers. ``small``:
    that many small pages instead of the mixed folder (``bench.scale``'s tree: a library's
    size, where the file list itself is the load).
    """
    total, files = (32_000_000, 800) if quick else (128_000_000, 3000)
    out: dict[str, Any] = {"rows": [], "repeat": repeat}
    with tempfile.TemporaryDirectory(prefix="caravane-bench-publish-") as t:
        tmp = Path(t)
        folder = tmp / "content"
        if small:
            from bench.scale import make_tree

            make_tree(folder, small)
            i = small // 2  # the page bench.scale changes
            change = folder / f"d{i // 1_000_000:02d}" / f"d{(i // 1000) % 1000:03d}"
            change = change / f"page-{i:07d}.html"
            count = small
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        else:
            change = None
            count, size = make_folder(folder, total, files)
        out.update(files=count, bytes=size)
        for label in databases:
            local_runs: list[float] = []
            api_runs: list[float] = []
            local_cpu: list[float] = []
            api_cpu: list[float] = []
            rss: dict[str, list[float]] = {
                "repo": [],
                "client": [],
                "hub": [],
                "hub_upload": [],
                "republish_s": [],
                "republish_client": [],
            }
            failed = ""
            for i in range(repeat):
                url = "" if label == "SQLite" else _pg_database()
                if url is None:
                    break
                work = tmp / f"{label}-{i}"
                work.mkdir()
                try:
                    wall, cpu = via_repo(folder, work)
                    local_runs.append(wall)
                    local_cpu.append(cpu)
                    rss["repo"].append(LAST_RSS["command"])
                    try:
                        wall, cpu = via_hub(folder, work, url, change)
                    except RuntimeError as exc:  # recorded: a hub that cannot take the size
                        failed = str(exc)
                        break
                    api_runs.append(wall)
                    api_cpu.append(cpu)
                    rss["client"].append(LAST_RSS["client"])
                    rss["hub"].append(LAST_RSS["hub"])
                    rss["hub_upload"].append(LAST_RSS["hub_upload"])
                    if change is not None:
                        rss["republish_s"].append(LAST_RSS["republish_s"])
                        rss["republish_client"].append(LAST_RSS["republish_client"])
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                    if url:
                        _drop_pg(url)
            if failed:
                out["rows"].append({"database": label, "failed": failed})
                continue
            if not api_runs:
                out["rows"].append({"database": label, "skipped": "PostgreSQL not reachable"})
                continue
            local, api = statistics.median(local_runs), statistics.median(api_runs)
            out["rows"].append(
                {
                    "database": label,
                    "repo_publish_s": local,
                    "api_publish_s": api,
                    "ratio": api / local,
                    "repo_runs": local_runs,
                    "api_runs": api_runs,
                    "repo_cpu_s": statistics.median(local_cpu),
                    "api_cpu_s": statistics.median(api_cpu),
                    "cpu_ratio": statistics.median(api_cpu) / statistics.median(local_cpu),
                    "repo_rss_mib": max(rss["repo"]),
                    "client_rss_mib": max(rss["client"]),
                    "hub_rss_mib": max(rss["hub"]),
                    "hub_upload_rss_mib": max(rss["hub_upload"]),
                    "republish_s": statistics.median(rss["republish_s"])
                    if rss["republish_s"]
                    else None,
                    "republish_client_rss_mib": max(rss["republish_client"], default=None),
                    "load": os.getloadavg()[0],
                }
            )
    return out


def table(res: dict[str, Any]) -> str:
    lines = [
        f"publish {res['files']} files, {res['bytes'] / 1e6:.0f} MB (cold caches, empty hub; "
        f"median of {res['repeat']}; peak RSS in MiB, the hub's as it took the upload / "
        "after sketching it)",
        f"{'database':12} {'repo publish':>13} {'publish --hub':>14} {'ratio':>6} "
        f"{'CPU ratio':>9} {'RSS repo':>9} {'client':>7} {'hub':>9} {'load':>5} "
        f"{'1-file republish --hub':>22}",
    ]
    for r in res["rows"]:
        if "skipped" in r:
            lines.append(f"{r['database']:12} skipped: {r['skipped']}")
            continue
        if "failed" in r:
            lines.append(f"{r['database']:12} FAILED: {r['failed']}")
            continue
        lines.append(
            f"{r['database']:12} {r['repo_publish_s']:>12.1f}s {r['api_publish_s']:>13.1f}s "
            f"{r['ratio']:>5.2f}x {r['cpu_ratio']:>8.2f}x {r['repo_rss_mib']:>9.0f} "
            f"{r['client_rss_mib']:>7.0f} {r['hub_upload_rss_mib']:>4.0f}/{r['hub_rss_mib']:<4.0f} "
            f"{r['load']:>5.1f} "
            + (
                f"{r['republish_s']:>12.1f}s, {r['republish_client_rss_mib']:.0f} MiB"
                if r.get("republish_s") is not None
                else f"{'':>22}"
            )
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 MB in 800 files")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--repeat", type=int, default=None, help="rounds (default 3, quick 1)")
    ap.add_argument(
        "--small", type=int, default=None, metavar="N", help="N small pages instead (a library)"
    )
    ap.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    args = ap.parse_args()
    dbs = ("SQLite",) if args.sqlite_only else ("SQLite", "PostgreSQL")
    res = run(args.quick, args.repeat or (1 if args.quick else 3), args.small, dbs)
    print(table(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
