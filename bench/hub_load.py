"""Hub under load: check-ins per second and object throughput for 1, 100 and 1,000 nodes.

Simulated nodes (one asyncio client process, one keep-alive connection each) hammer one
``caravane hub serve`` process on loopback: a check-in is the GET of a channel's signed
metadata a node makes on every sync; object throughput is GETs of random objects. The same
files served by nginx (Debian's package) are the comparison. The hub's peak memory (VmHWM)
is read from /proc at the end.

    python -m bench.hub_load [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import free_port, table, write_random_files

NODE_COUNTS = (1, 100, 1000)


async def _load(base: str, paths: list[str], nodes: int, seconds: float) -> dict[str, float]:
    import aiohttp

    conn = aiohttp.TCPConnector(limit=nodes, force_close=False)
    done = 0
    received = 0
    errors = 0
    stop = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=conn) as s:

        async def node(i: int) -> None:
            nonlocal done, received, errors
            rnd = random.Random(i)
            while time.monotonic() < stop:
                path = paths[rnd.randrange(len(paths))]
                try:
                    async with s.get(base + path) as r:
                        body = await r.read()
                        if r.status == 200:
                            done += 1
                            received += len(body)
                        else:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1

        start = time.monotonic()
        await asyncio.gather(*(node(i) for i in range(nodes)))
        took = time.monotonic() - start
    return {"requests_s": done / took, "mb_s": received / took / 1e6, "errors": errors}


def client_main() -> None:
    """Run in a separate process: python -m bench.hub_load --client BASE PATHS N SECONDS."""
    base, paths_file, nodes, seconds = (
        sys.argv[2],
        sys.argv[3],
        int(sys.argv[4]),
        float(sys.argv[5]),
    )
    paths = Path(paths_file).read_text().split()
    print(json.dumps(asyncio.run(_load(base, paths, nodes, seconds))))


def _client(base: str, paths: list[str], nodes: int, seconds: float, tmp: Path) -> dict:
    f = tmp / "paths.txt"
    f.write_text("\n".join(paths))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.hub_load",
            "--client",
            base,
            str(f),
            str(nodes),
            str(seconds),
        ],
        capture_output=True,
        text=True,
        timeout=seconds * 4 + 60,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0


def _wait_port(port: int, timeout: float = 20) -> None:
    import socket

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def _measure(
    port: int, checkin: list[str], objects: list[str], seconds: float, tmp: Path
) -> dict[int, dict[str, Any]]:
    """Check-ins and object reads at each node count against the server on ``port``."""
    _wait_port(port)
    base = f"http://127.0.0.1:{port}/repo/"
    return {
        n: {
            "checkin": _client(base, checkin, n, seconds, tmp),
            "objects": _client(base, objects, n, seconds, tmp),
        }
        for n in NODE_COUNTS
    }


def run(quick: bool) -> dict[str, Any]:
    from caravane.hub.config import HubConfig
    from caravane.hub.db import upgrade
    from caravane.packs.repository import Repository

    seconds = 3.0 if quick else 8.0
    results: dict[str, Any] = {"hub": {}, "nginx": {}}
    with tempfile.TemporaryDirectory(prefix="caravane-bench-hub-") as t:
        tmp = Path(t)
        port = free_port()
        cfg = HubConfig(data_dir=tmp / "hub", port=port, scheduler=False)
        cfg.data_dir.mkdir()
        (cfg.data_dir / "hub.toml").write_text(cfg.to_toml())
        repo = Repository.init(cfg.repo_dir)
        upgrade(cfg.url)
        repo.publish("bench", write_random_files(tmp / "src", 64_000_000, 4, seed=3))
        objects = [f"objects/{s[:2]}/{s}" for s in repo.store.iter_ids()]
        checkin = ["metadata/channels/bench.json"]
        hub = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "caravane",
                "hub",
                "serve",
                "--config",
                str(cfg.data_dir / "hub.toml"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            results["hub"] = _measure(port, checkin, objects, seconds, tmp)
            results["hub_peak_rss"] = _vm_hwm(hub.pid)
        finally:
            hub.terminate()
            hub.wait()
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if Path(nginx).exists():
            nport = free_port()
            conf = tmp / "nginx.conf"
            conf.write_text(
                f"""worker_processes 2; daemon off; pid {tmp}/nginx.pid; user root;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; keepalive_requests 100000;
  client_body_temp_path {tmp}/nb; proxy_temp_path {tmp}/np; fastcgi_temp_path {tmp}/nf;
  uwsgi_temp_path {tmp}/nu; scgi_temp_path {tmp}/ns;
  server {{ listen 127.0.0.1:{nport}; root {cfg.repo_dir};
    location /repo/ {{ alias {cfg.repo_dir}/; }} }} }}
"""
            )
            ng = subprocess.Popen(
                [nginx, "-c", str(conf), "-p", str(tmp)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                results["nginx"] = _measure(nport, checkin, objects, seconds, tmp)
            finally:
                ng.terminate()
                ng.wait()
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    res = run(args.quick)
    rows = []
    for n in NODE_COUNTS:
        h, g = res["hub"][n], res["nginx"].get(n)
        rows.append(
            [
                n,
                f"{h['checkin']['requests_s']:,.0f}",
                f"{g['checkin']['requests_s']:,.0f}" if g else "n/a",
                f"{h['objects']['mb_s']:,.0f}",
                f"{g['objects']['mb_s']:,.0f}" if g else "n/a",
                f"{g['objects']['mb_s'] / h['objects']['mb_s']:.2f}x" if g else "n/a",
                h["checkin"]["errors"] + h["objects"]["errors"],
            ]
        )
    print(
        table(
            "Hub on loopback vs nginx (same files, same client)",
            [
                "nodes",
                "hub check-ins/s",
                "nginx req/s",
                "hub objects MB/s",
                "nginx MB/s",
                "nginx/hub",
                "hub errors",
            ],
            rows,
        )
    )
    print(f"hub peak memory: {res['hub_peak_rss'] / 2**20:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main()
    else:
        main()
