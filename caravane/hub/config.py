"""The hub's TOML configuration (``hub.toml`` in its data folder)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from caravane.protocol.errors import FormatError

CONFIG_NAME = "hub.toml"


@dataclass
class HubConfig:
    data_dir: Path
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8470
    public_url: str = ""
    max_json_bytes: int = 8 * 1024 * 1024
    max_object_bytes: int = 2 * 1024 * 1024
    max_batch_bytes: int = 16 * 1024 * 1024  # one POST of many objects (the publish client)
    expires_days: int = 365
    refresh_before_days: int = 30
    keep_last: int = 5
    stale_after_days: int = 14
    scheduler: bool = True
    pack_pairs: int = 3
    on_demand_pack_bytes: int = 32 * 1024 * 1024
    strong_pack_bytes: int = 1024 * 1024 * 1024
    gc_grace_hours: int = 24
    # a client that has not sent a whole request head in this time is dropped (slowloris)
    header_timeout_seconds: int = 15
    # a request body that brings less than 1 KiB in this time is dropped
    body_timeout_seconds: int = 60
    # X-Forwarded-Proto is believed only from these addresses (an HTTPS reverse proxy)
    trusted_proxies: list[str] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def repo_dir(self) -> Path:
        return self.data_dir / "repo"

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'hub.db'}"

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @classmethod
    def load(cls, path: Path) -> HubConfig:
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FormatError(f"{path}: no hub configuration; run `caravane hub init`").say(
                "cli.err.hub_config_missing", path=path
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise FormatError(f"{path}: not valid TOML ({exc})") from None
        hub = doc.get("hub", {})
        known = {f for f in cls.__dataclass_fields__ if f not in ("data_dir", "extra")}
        unknown = set(hub) - known - {"data_dir"}
        if unknown:
            raise FormatError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
        data_dir = Path(hub.get("data_dir", path.parent)).expanduser()
        kwargs = {k: v for k, v in hub.items() if k in known}
        return cls(data_dir=data_dir, **kwargs)

    def to_toml(self) -> str:
        lines = ["[hub]"]
        for key, value in asdict(self).items():
            if key == "extra":
                continue
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, int):
                lines.append(f"{key} = {value}")
            elif isinstance(value, list):
                lines.append(f"{key} = {json.dumps([str(v) for v in value])}")
            else:
                lines.append(f'{key} = "{value}"')
        return "\n".join(lines) + "\n"
