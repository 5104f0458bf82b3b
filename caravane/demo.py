"""The quick-start job: a curator publishes, a centre's store receives packs, both verify.

It uses only the public pieces (the same ones the CLI drives) on embedded defaults, in a
scratch folder, so a new user sees the whole flow in a few seconds.
"""

from __future__ import annotations

import filecmp
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from caravane.packs.repository import Repository
from caravane.protocol.errors import VerificationError

SAMPLE = {
    "index.html": "<!doctype html><html lang='fr'><meta charset='utf-8'><title>Caravane</title>"
    "<h1>Bienvenue / Welcome</h1><a href='Leçons/été.html'>Leçons d'été</a></html>\n",
    "Leçons/été.html": "<!doctype html><meta charset='utf-8'><h1>Leçons d'été</h1>"
    + "<p>Le soleil se lève à l'est. The sun rises in the east.</p>\n" * 200,
    "Leçons/maths/fractions.txt": "1/2 + 1/4 = 3/4\n" * 500,
    "data/notes.csv": "".join(f"{i},{i * i},{i % 7}\n" for i in range(20000)),
}


def _write_tree(folder: Path, files: Mapping[str, str | bytes]) -> None:
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


def run_demo(
    workdir: Path, echo: Callable[[str], None] | None = print, serve_seconds: float = 0
) -> dict[str, Any]:
    """A hub and a centre on embedded defaults (SQLite, folders, 127.0.0.1), end to end.

    The hub runs its real HTTP service; the curator publishes through the upload client; the
    centre enrols, syncs over HTTP, serves its portal, and reports back to the hub.
    """
    import asyncio
    import json
    import socket
    import time
    import urllib.request

    from caravane.hub.app import make_app as make_hub_app
    from caravane.hub.auth import Principal
    from caravane.hub.client import HubClient
    from caravane.hub.config import HubConfig
    from caravane.hub.db import upgrade
    from caravane.hub.service import Hub
    from caravane.node.agent import NodeAgent
    from caravane.node.serve import make_app as make_portal

    say = echo or (lambda _msg: None)
    workdir = Path(workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    content = workdir / "content"
    _write_tree(content, SAMPLE)

    def port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    hub_port, portal_port = port(), port()
    cfg = HubConfig(data_dir=workdir / "hub", port=hub_port, scheduler=False)
    cfg.data_dir.mkdir(parents=True)
    (cfg.data_dir / "hub.toml").write_text(cfg.to_toml(), encoding="utf-8")
    Repository.init(cfg.repo_dir)
    upgrade(cfg.url)
    hub = Hub(cfg)
    hub_server = ThreadedServer(make_hub_app(cfg, hub, scheduler=False), hub_port)
    say(f"1. hub running on {cfg.base_url} (SQLite and repository in {cfg.data_dir})")
    portal_server = None
    try:
        token = hub.create_token("demo-curator", "curator")
        client = HubClient(cfg.base_url, token)
        cache = workdir / "curator-cache"
        v1 = asyncio.run(client.publish("decouverte", content, title="Découverte", cache=cache))
        say(f"2. curator published 'decouverte' v{v1['version']} through the API")

        enrolment = hub.register_centre(
            Principal("demo-admin", "admin"),
            {"name": "Centre de démonstration", "region": "demo", "channels": ["decouverte"]},
        )
        enrol_file = workdir / "enrolment.json"
        enrol_file.write_text(json.dumps(enrolment, ensure_ascii=False), encoding="utf-8")
        node = NodeAgent.init(workdir / "centre", enrolment, port=portal_port)
        say(f"3. centre enrolled with its own key pair in {node.config.data_dir}")
        r1 = node.sync()
        say(
            f"4. centre synced: {r1.channels[0].status} v{r1.channels[0].active}, "
            f"{sum(r1.received.values())} bytes received"
        )

        _write_tree(
            content,
            {
                "Leçons/été.html": SAMPLE["Leçons/été.html"].replace("l'est", "l'Est")
                + "<p>+</p>\n",
                "Leçons/hiver.html": "<h1>Hiver</h1>\n",
            },
        )
        v2 = asyncio.run(client.publish("decouverte", content, cache=cache))
        r2 = node.sync()
        say(
            f"5. curator published v{v2['version']}; the centre fetched only the change: "
            f"{sum(r2.received.values())} bytes, and switched to v{r2.channels[0].active}"
        )
        live = node.releases.live_link("decouverte")
        same = _same_tree(content, live)
        if not same:
            raise VerificationError("demo: the centre serves something else than was published")

        node.make_report()
        node.send_reports()
        row = next(r for r in hub.fleet() if r["id"] == node.config.node_id)
        say(f"6. the centre reported back: the hub sees {row['installed']} by {row['last_route']}")

        portal_server = ThreadedServer(make_portal(node), portal_port)
        portal = f"http://127.0.0.1:{portal_port}/"
        with urllib.request.urlopen(portal, timeout=10) as resp:
            page_ok = resp.status == 200 and "Découverte" in resp.read().decode()
        say(f"7. the centre's portal serves it on {portal} (hub API on {cfg.base_url})")
        if serve_seconds:
            say(f"   both stay up for {serve_seconds:.0f} s: open the portal in a browser")
            time.sleep(serve_seconds)
        return {
            "ok": True,
            "channel": "decouverte",
            "versions": [int(v1["version"]), int(v2["version"])],
            "update_bytes": sum(r2.received.values()),
            "centre_identical": same,
            "portal_ok": page_ok,
            "hub_sees": row["installed"],
        }
    finally:
        if portal_server is not None:
            portal_server.stop()
        hub_server.stop()


class ThreadedServer:
    """An aiohttp app on its own loop in a thread (the demo runs hub and portal at once)."""

    def __init__(self, app: Any, port: int) -> None:
        import asyncio
        import threading

        from aiohttp import web

        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.runner = web.AppRunner(app)
            self.loop.run_until_complete(self.runner.setup())
            self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", port).start())
            ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self.runner.cleanup())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        if not ready.wait(30):
            raise RuntimeError("demo: a server did not start")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
