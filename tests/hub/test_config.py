"""hub.toml and node.toml read back exactly what was written, whatever the values hold.

The files were once written by hand: a `"` or `\\` in a database URL or a folder name made a
file that no longer parsed, and the hub would not start again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from caravane.hub.config import HubConfig
from caravane.node.config import NodeConfig, UpstreamConfig

# every character TOML strings must escape, and some it need not
AWKWARD = st.text(
    alphabet=st.sampled_from(list('ab"\\\'\t\n#=[]{}é漢 ') + ["\x7f", "\x01"]), max_size=12
)


def caravane(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "caravane", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"CARAVANE_LAYOUT": "local"} | env,
    )


@settings(max_examples=80, deadline=None)
@given(url=AWKWARD, public=AWKWARD, folder=AWKWARD, proxies=st.lists(AWKWARD, max_size=3))
def test_hub_config_round_trip(
    url: str, public: str, folder: str, proxies: list[str]
) -> None:
    cfg = HubConfig(
        data_dir=Path("/srv") / (folder or "x"),
        database_url=url,
        public_url=public,
        trusted_proxies=proxies,
        scheduler=False,
        port=9000,
    )
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"hub-{os.getpid()}.toml"
    try:
        path.write_text(cfg.to_toml(), encoding="utf-8")
        assert HubConfig.load(path) == cfg
    finally:
        path.unlink(missing_ok=True)


@settings(max_examples=80, deadline=None)
@given(name=AWKWARD, hub=AWKWARD, channels=st.lists(AWKWARD, max_size=3), up=AWKWARD)
def test_node_config_round_trip(name: str, hub: str, channels: list[str], up: str) -> None:
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"node-{os.getpid()}"
    base.mkdir(exist_ok=True)
    cfg = NodeConfig(
        data_dir=base,
        node_id="n-1",
        name=name,
        hub_url=hub.rstrip("/"),
        channels=channels,
        upstreams=[UpstreamConfig("usb", "folder", up.strip() or "/media/x", 5, True)],
        windows=["22:00-06:00"],
        sync_interval_minutes=12.5,
    )
    cfg.save()
    back = NodeConfig.load(base)
    assert back == cfg


def test_node_config_kept_outside_its_folder_names_the_folder(tmp_path: Path) -> None:
    data = tmp_path / 'd"a\\ta'
    data.mkdir()
    cfg = NodeConfig(data_dir=data, node_id="n-2", name='Centre "Nord"')
    etc = tmp_path / "etc" / "node.toml"
    cfg.save(etc)
    assert NodeConfig.load(etc) == cfg
    # and a node.toml inside its folder follows the folder when it is moved
    cfg.save()
    moved = tmp_path / "moved"
    data.rename(moved)
    assert NodeConfig.load(moved).data_dir == moved.resolve()


def test_a_hub_in_a_folder_with_quotes_and_backslashes_starts_again(tmp_path: Path) -> None:
    """`hub init` then any command that reads hub.toml, with a URL that needs escaping."""
    data = tmp_path / 'hub "central" \\ 1'
    db = tmp_path / 'db "x"\\y' / "hub.db"
    db.parent.mkdir()
    out = caravane(
        "hub", "init", "--data", str(data), "--database-url", f"sqlite:///{db}", "--json"
    )
    assert out.returncode == 0, out.stderr
    config = Path(json.loads(out.stdout)["config"])
    assert config.parent == data
    status = caravane("hub", "status", "--config", str(config), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["ok"] is True
    assert db.is_file()
    assert HubConfig.load(config).database_url == f"sqlite:///{db}"


def test_a_postgresql_hub_without_the_hub_extra_says_what_to_install(tmp_path: Path) -> None:
    """psycopg is in `caravane[hub]` only: a hub installed without it gets the pip command."""
    cfg = HubConfig(data_dir=tmp_path, database_url="postgresql+psycopg://caravane@127.0.0.1/x")
    path = tmp_path / "hub.toml"
    path.write_text(cfg.to_toml())
    no_driver = "import sys; sys.modules['psycopg'] = None\nfrom caravane.cli import main; main()"
    out = subprocess.run(
        [sys.executable, "-c", no_driver, "hub", "status", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "pip install 'caravane[hub]'" in out.stderr and "Traceback" not in out.stderr
