"""The hub's TOML configuration (``hub.toml`` in its data folder)."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomli_w

from caravane import logs
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
    # a release a centre reported installed within this many days is kept (with the
    # packs from it to the latest), however far behind keep_last it falls
    hold_days: int = 365
    on_demand_pack_bytes: int = 32 * 1024 * 1024
    strong_pack_bytes: int = 1024 * 1024 * 1024
    gc_grace_hours: int = 24
    # an upload (publish in progress) that received nothing for this many days expires:
    # collection may then take its objects, and its curator must publish again; 0: never
    upload_expiry_days: int = 7
    # a client that has not sent a whole request head in this time is dropped (slowloris)
    header_timeout_seconds: int = 15
    # a request body that brings less than 1 KiB in this time is dropped
    body_timeout_seconds: int = 60
    # X-Forwarded-Proto is believed only from these addresses (an HTTPS reverse proxy)
    trusted_proxies: list[str] = field(default_factory=list)
    # who may read /metrics: addresses or networks ("10.0.0.0/8"); empty: anyone
    metrics_allow: list[str] = field(default_factory=list)
    # `hub serve` logs: debug | info | warning | error, text | json (caravane.logs)
    log_level: str = "info"
    log_format: str = "text"
    # where a drive shows up when plugged into the hub machine: the route page offers
    # "prepare the drive" for each of these folders that is mounted
    usb_mounts: list[str] = field(default_factory=list)
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
        cfg = cls(data_dir=data_dir, **kwargs)
        days = cfg.upload_expiry_days
        if not isinstance(days, int) or isinstance(days, bool) or days < 0:
            raise FormatError(
                f"{path}: upload_expiry_days must be a whole number of days, 0 for never "
                f"(not {days!r})"
            )
        try:
            logs.check(cfg.log_level, cfg.log_format)
        except logs.LogSetupError as exc:
            raise FormatError(f"{path}: {exc}") from None
        return cfg

    def to_toml(self) -> str:
        """The ``[hub]`` table, written by tomli-w so any URL or path reads back as written.

        Hand-written quoting broke on a ``"`` or ``\\`` in a database URL or a Windows-style
        path; tomli-w is the writer half of the standard library's ``tomllib``.
        """
        table: dict[str, object] = {}
        for key, value in asdict(self).items():
            if key == "extra":
                continue
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, list):
                value = [str(v) for v in value]
            table[key] = value
        return tomli_w.dumps({"hub": table})


#: One line per ``[hub]`` setting, for docs/CONFIGURATION.md (``python -m caravane.config_doc``)
#: and the example files of the Debian package; a test fails when a setting has none.
HUB_HELP: dict[str, str] = {
    "data_dir": "Folder holding the repository (repo/), the release key and the SQLite "
    "database. Default: the folder of hub.toml.",
    "database_url": "SQLAlchemy URL of the database, e.g. "
    "`postgresql+psycopg://caravane@db/caravane` (needs the `hub` extra). Empty: SQLite in "
    "data_dir.",
    "host": "Address `hub serve` listens on; 0.0.0.0 for every interface.",
    "port": "TCP port `hub serve` listens on.",
    "public_url": "URL centres and curators use to reach this hub (behind a reverse proxy). "
    "Empty: http://host:port.",
    "max_json_bytes": "Largest JSON request body (API calls, node reports).",
    "max_object_bytes": "Largest single object a publish client may upload.",
    "max_batch_bytes": "Largest batch of objects in one upload request.",
    "expires_days": "Lifetime of signed channel metadata; centres refuse expired metadata "
    "(freeze attacks). 0: never expires.",
    "refresh_before_days": "The scheduler signs metadata again this many days before it expires.",
    "keep_last": "Releases kept per channel (a channel may set its own); older ones are collected.",
    "stale_after_days": "A centre with no news for this long is flagged in the fleet view.",
    "scheduler": "Run the scheduled jobs (packs, expiry refresh, idle uploads, collection) in "
    "`hub serve`; turn off on all but one process.",
    "pack_pairs": "Packs pre-built from each of this many previous releases to the latest "
    "(and from nothing).",
    "on_demand_pack_bytes": "A pack asked for and not yet built is built while the centre "
    "waits only up to this size; larger ones are queued.",
    "strong_pack_bytes": "Packs of more new bytes than this are compressed at a faster "
    "zstd level (9 instead of 19).",
    "gc_grace_hours": "Unused objects younger than this are kept (an upload may still "
    "refer to them).",
    "upload_expiry_days": "An upload (a publish in progress) that received nothing for this "
    "many days expires: its curator is told to publish again, and collection may take the "
    "objects only it used. 0: uploads never expire.",
    "header_timeout_seconds": "A client that has not sent a whole request head in this "
    "time is dropped (slowloris).",
    "body_timeout_seconds": "A request body that brings less than 1 KiB in this time is dropped.",
    "trusted_proxies": "Addresses of HTTPS reverse proxies whose X-Forwarded-Proto is believed.",
    "hold_days": "A release a centre reported installed within this many days is kept, with "
    "a direct pack from it to the latest, however far behind keep_last it is.",
    "metrics_allow": "Addresses or networks (10.0.0.0/8) that may read /metrics; empty: anyone.",
    "log_level": "`hub serve` log level: debug, info, warning or error.",
    "log_format": "`hub serve` log lines: text, or json (one object a line).",
    "usb_mounts": "Folders where a drive shows up on the hub machine: the route page offers "
    '"prepare the drive" for each one that is mounted.',
}
