"""The node's TOML configuration (``node.toml`` in its data folder).

Upstreams are listed in order of cost: the engine tries cheaper ones first (a drive or a
peer on the LAN before a metered satellite link).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any

import tomli_w

from caravane import logs
from caravane.protocol.errors import FormatError

CONFIG_NAME = "node.toml"
UPSTREAM_KINDS = ("http", "peer", "mirror", "rsync", "folder")
#: where the hub and peer centres serve their repository (static mirrors serve it at the
#: URL given, rsync and folders at the path given)
REPO_PREFIX = "/repo"
SERVICE_KINDS = ("http", "peer")


def repository_url(kind: str, url: str) -> str:
    """The URL of the repository layout an upstream of ``kind`` at ``url`` serves.

    The one place that knows the hub and peers serve the store under ``/repo``: a node
    names a hub or a peer by its address and never writes the prefix itself.
    """
    if kind in SERVICE_KINDS:
        return url.rstrip("/") + REPO_PREFIX
    return url


@dataclass
class UpstreamConfig:
    name: str
    kind: str
    url: str
    cost: int = 10
    metered: bool = False

    @property
    def repository_url(self) -> str:
        return repository_url(self.kind, self.url)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str, hub_url: str = "") -> UpstreamConfig:
        """One ``[[upstream]]`` table; an ``http`` upstream without a url is the hub."""
        kind = str(d.get("kind", "http"))
        if kind not in UPSTREAM_KINDS:
            raise FormatError(f"{where}: upstream kind {kind!r} is not one of {UPSTREAM_KINDS}")
        url = str(d.get("url", "")).strip() or (hub_url if kind == "http" else "")
        if not url:
            raise FormatError(f"{where}: an upstream needs a url (or a folder path)")
        return cls(
            name=str(d.get("name") or f"{kind}:{url}"),
            kind=kind,
            url=url,
            cost=int(d.get("cost", 10)),
            metered=bool(d.get("metered", False)),
        )

    def to_dict(self, hub_url: str = "") -> dict[str, Any]:
        """The TOML table; the hub's own upstream leaves its url to ``[node] hub_url``."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "url": self.url}
        if self.kind == "http" and hub_url and self.url.rstrip("/") == hub_url.rstrip("/"):
            del out["url"]
        return out | {"cost": self.cost, "metered": self.metered}


def parse_window(text: str) -> tuple[time, time]:
    """``"22:00-06:00"`` -> (22:00, 06:00); a window may wrap past midnight."""
    try:
        a, b = text.split("-")
        start = time.fromisoformat(a.strip())
        end = time.fromisoformat(b.strip())
    except ValueError:
        raise FormatError(f"sync window {text!r}: write it as HH:MM-HH:MM") from None
    return start, end


@dataclass
class NodeConfig:
    data_dir: Path
    node_id: str = ""
    name: str = ""
    hub_url: str = ""
    channels: list[str] = field(default_factory=list)
    upstreams: list[UpstreamConfig] = field(default_factory=list)
    sync_interval_minutes: float = 30.0
    windows: list[str] = field(default_factory=list)
    bandwidth_kbit: int = 0
    daily_budget_mb: int = 0
    monthly_budget_mb: int = 0
    timeout_seconds: float = 30.0
    pass_minutes: float = 0.0  # longest sync pass (0: no limit); the next pass continues
    fetch_minutes: float = 0.0  # longest single fetch before its upstream is set aside
    min_rate_kbit: int = 0  # under this rate (after a few seconds) an upstream is set aside
    margin_mb: int = 64
    # warn when a channel had no fresh signed word for this long (freeze: node/freeze.py)
    freeze_warning_days: int = 14
    # the portal drops a client that has not sent a whole request head in this time
    header_timeout_seconds: int = 15
    usb_mounts: list[str] = field(default_factory=list)
    # the agent's and portal's logs: debug | info | warning | error, text | json (caravane.logs)
    log_level: str = "info"
    log_format: str = "text"
    # kiwix-serve over the centre's ZIM books on this port, beside the portal (0: not run)
    kiwix_port: int = 0
    host: str = "0.0.0.0"
    port: int = 8480
    durable: bool = True

    # ------------------------------------------------------------------ paths

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def releases_dir(self) -> Path:
        return self.data_dir / "releases"

    @property
    def live_dir(self) -> Path:
        return self.data_dir / "live"

    @property
    def partial_dir(self) -> Path:
        return self.data_dir / "partial"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "keys" / "node.pem"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'node.db'}"

    def api_url(self, path: str) -> str:
        """The hub's API address for ``path`` (``/api/v1/...``)."""
        return self.hub_url.rstrip("/") + path

    def window_list(self) -> list[tuple[time, time]]:
        return [parse_window(w) for w in self.windows]

    # ------------------------------------------------------------------ TOML

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FormatError(f"{path}: no node configuration; run `caravane node init` first").say(
                "cli.err.node_config_missing", path=path
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise FormatError(f"{path}: not valid TOML ({exc})") from None
        node = dict(doc.get("node", {}))
        serve = doc.get("serve", {})
        known = {
            f
            for f in cls.__dataclass_fields__
            if f not in ("data_dir", "upstreams", "host", "port")
        }
        unknown = set(node) - known - {"data_dir"}
        if unknown:
            raise FormatError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
        data_dir = Path(node.pop("data_dir", ".")).expanduser()
        if not data_dir.is_absolute():
            data_dir = (path.parent / data_dir).resolve()
        hub_url = str(node.pop("hub_url", "")).rstrip("/")
        ups = [
            UpstreamConfig.from_dict(u, f"{path} [[upstream]] {i + 1}", hub_url)
            for i, u in enumerate(doc.get("upstream", []))
        ]
        if not hub_url:  # files that named the hub only as its upstream
            hub_url = next((u.url.rstrip("/") for u in ups if u.kind == "http"), "")
        cfg = cls(data_dir=data_dir, upstreams=ups, hub_url=hub_url, **node)
        cfg.host = str(serve.get("host", cfg.host))
        cfg.port = int(serve.get("port", cfg.port))
        cfg.window_list()  # fail on a bad window now, not at 22:00
        try:
            logs.check(cfg.log_level, cfg.log_format)
        except logs.LogSetupError as exc:
            raise FormatError(f"{path}: {exc}") from None
        return cfg

    def to_toml(self, with_data_dir: bool = False) -> str:
        """node.toml, written by tomli-w so any name, URL or path reads back as written.

        ``data_dir`` is written only for a file kept outside the data folder
        (``/etc/caravane/node.toml``): a node.toml inside it follows the folder if it moves.
        """
        node: dict[str, Any] = {"data_dir": str(self.data_dir)} if with_data_dir else {}
        node |= {key: getattr(self, key) for key in cls_fields()}
        doc: dict[str, Any] = {
            "node": node,
            "serve": {"host": self.host, "port": self.port},
        }
        if self.upstreams:
            doc["upstream"] = [u.to_dict(self.hub_url) for u in self.upstreams]
        return tomli_w.dumps(doc)

    def save(self, path: Path | None = None) -> Path:
        """Write node.toml (default: in the data folder) whole or not at all."""
        path = Path(path) if path is not None else self.data_dir / CONFIG_NAME
        outside = path.parent.resolve() != self.data_dir.resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_toml(with_data_dir=outside), encoding="utf-8")
        os.replace(tmp, path)
        return path


def cls_fields() -> list[str]:
    return [
        f
        for f in NodeConfig.__dataclass_fields__
        if f not in ("data_dir", "upstreams", "host", "port")
    ]


#: One line per setting, for docs/CONFIGURATION.md (``python -m caravane.config_doc``) and the
#: example files of the Debian package; a test fails when a setting has none.
NODE_HELP: dict[str, str] = {
    "data_dir": "Folder holding the store, releases, live content, keys and node.db. "
    "Default: the folder of node.toml.",
    "node_id": "This centre's identifier at the hub (from the enrolment file).",
    "name": "The centre's name, shown on its portal and in the hub's fleet.",
    "hub_url": "The hub's address; an `http` upstream without a url is this hub.",
    "channels": "Channels this centre follows.",
    "sync_interval_minutes": "Time between two sync passes of `node run`.",
    "windows": "Times of day a network sync may run, as HH:MM-HH:MM (may wrap past "
    "midnight). Empty: any time. Drives are imported at any time.",
    "bandwidth_kbit": "Download rate limit in kbit/s. 0: no limit.",
    "daily_budget_mb": "Most megabytes fetched per day from metered upstreams. 0: no limit.",
    "monthly_budget_mb": "Most megabytes fetched per month from metered upstreams. 0: no limit.",
    "timeout_seconds": "Network timeout of one request to an upstream.",
    "pass_minutes": "Longest sync pass; the next pass continues where it stopped. 0: no limit.",
    "fetch_minutes": "Longest single fetch before its upstream is set aside for this pass. "
    "0: no limit.",
    "min_rate_kbit": "An upstream slower than this (after a few seconds) is set aside for "
    "this pass. 0: never.",
    "margin_mb": "Free disk space kept in reserve; a sync that would eat into it stops first.",
    "freeze_warning_days": "Warn when a channel had no freshly signed metadata for this long "
    "(freeze attack or cut-off centre).",
    "header_timeout_seconds": "The portal drops a client that has not sent a whole request "
    "head in this time.",
    "usb_mounts": "Folders where USB drives are mounted (e.g. /media/caravane); `node run` "
    "imports a drive found there and writes the centre's report onto it.",
    "durable": "fsync staged releases before switching to them (turn off only on "
    "throw-away test machines).",
    "log_level": "The agent's and portal's log level: debug, info, warning or error.",
    "log_format": "Log lines as text, or json (one object a line).",
    "kiwix_port": "Run kiwix-serve over the centre's ZIM books on this port beside the "
    "portal (0: not run).",
}

#: the ``[serve]`` table: the LAN portal
SERVE_HELP: dict[str, str] = {
    "host": "Address the portal listens on (0.0.0.0: the whole LAN).",
    "port": "TCP port of the portal.",
}

#: one ``[[upstream]]`` table per place the node may sync from, cheapest first
UPSTREAM_HELP: dict[str, str] = {
    "name": "A name for logs and status. Default: kind:url.",
    "kind": "One of http (the hub), peer (another centre), mirror (static copy), rsync, "
    "folder (a drive or a mounted share).",
    "url": "Address or path of the upstream; an http upstream without one is hub_url.",
    "cost": "Upstreams are tried cheapest first.",
    "metered": "Bytes from this upstream count against the daily and monthly budgets.",
}
