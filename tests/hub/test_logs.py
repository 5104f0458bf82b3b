"""Log lines of `hub serve` and `node serve`: a level on every line, JSON on request,
the level chosen on the command line or in the configuration."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.hub.conftest import free_port
from tests.hub.util import CARAVANE, cli, http
from tests.node.conftest import World, env_without_proxy, world  # noqa: F401 (fixture)

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: "
)


def run_service(args: list[str], url: str) -> list[str]:
    """Start a service, make one request, stop it with Ctrl-C; its stderr lines."""
    proc = subprocess.Popen(
        [CARAVANE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_without_proxy(),
    )
    try:
        end = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if http("GET", url + "/healthz").status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < end, "the service did not start"
            time.sleep(0.2)
        assert http("GET", url + "/api/v1/channels").status in (401, 404)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    return [line for line in err.splitlines() if line.strip()]


def init_hub(tmp_path: Path) -> tuple[Path, str]:
    port = free_port()
    r = cli("hub", "init", "--data", str(tmp_path / "hub"), "--port", str(port), "--json")
    assert r.returncode == 0, r.stderr
    return tmp_path / "hub" / "hub.toml", f"http://127.0.0.1:{port}"


def test_hub_serve_json_and_text_logs_with_levels(tmp_path: Path) -> None:
    config, url = init_hub(tmp_path)
    lines = run_service(
        ["hub", "serve", "--config", str(config), "--log-format", "json", "--log-level", "debug"],
        url,
    )
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(d) for d in docs)
    assert any(d["level"] == "debug" for d in docs)
    start = next(d for d in docs if "hub serving on" in d["message"])
    assert start["level"] == "info" and start["logger"] == "caravane.hub"

    # text, level from hub.toml: every line has its level; below it nothing is written
    config.write_text(config.read_text().replace('log_level = "info"', 'log_level = "warning"'))
    lines = run_service(["hub", "serve", "--config", str(config)], url)
    assert all(TEXT_LINE.match(line) for line in lines), lines
    assert not any(" INFO " in line or " DEBUG " in line for line in lines)
    lines = run_service(["hub", "serve", "--config", str(config), "--log-level", "info"], url)
    assert any(" INFO caravane.hub: hub serving on" in line for line in lines), lines


def test_a_bad_log_setting_is_refused(tmp_path: Path) -> None:
    config, _ = init_hub(tmp_path)
    config.write_text(config.read_text().replace('log_level = "info"', 'log_level = "loud"'))
    r = cli("hub", "serve", "--config", str(config))
    assert r.returncode == 1 and "unknown log level 'loud'" in r.stderr
    assert "debug, info, warning, error" in r.stderr
    r = cli("hub", "serve", "--config", str(config), "--log-format", "xml")
    assert r.returncode == 2 and "xml" in r.stderr


def test_node_serve_json_logs(world: World) -> None:  # noqa: F811
    kita = world.node("kita")
    port = free_port()
    lines = run_service(
        [
            "node",
            "serve",
            "-d",
            str(kita.config.data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-format",
            "json",
        ],
        f"http://127.0.0.1:{port}",
    )
    docs = [json.loads(line) for line in lines]
    assert any(d["logger"] == "caravane.node.serve" and "portal on" in d["message"] for d in docs)
    assert all(d["level"] in ("info", "warning", "error", "critical") for d in docs)
