"""Small helpers for the hub tests: HTTP over real sockets, source trees, a node-side fetch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caravane.packs.layout import channel_relpath, manifest_relpath, object_relpath
from caravane.packs.repository import Repository
from tests.foundation.conftest import read_tree, write_tree  # noqa: F401 (re-exported)

VENV_BIN = Path(sys.executable).parent
CARAVANE = str(VENV_BIN / "caravane")


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    body: bytes | dict | list | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request; HTTP errors are answers too (status, headers, body)."""
    hdrs = dict(headers or {})
    if isinstance(body, dict | list):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return Answer(r.status, r.headers, r.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.headers, exc.read())


def noise(n: int, seed: str) -> bytes:
    """Incompressible, deterministic bytes (so chunks differ and packs are not tiny)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """Run the real ``caravane`` command line in a subprocess."""
    return subprocess.run(
        [CARAVANE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def publish_cli(rh, channel: str, folder: Path, cache: Path, token: str | None = None):
    r = cli(
        "publish",
        channel,
        str(folder),
        "--hub",
        rh.url,
        "--token",
        token or rh.admin,
        "--cache",
        str(cache),
        "--json",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def node_store(path: Path, root: bytes) -> Repository:
    """A centre's store pinned to the hub's root, as a node would have after enrolment."""
    return Repository.init(path, trust_root=root)


def fetch_release(base, store: Repository, channel: str) -> int:
    """Fetch a channel's latest release into ``store``, verifying everything.

    ``base`` is an HTTP URL prefix or a function reading a repository-relative path.
    """
    if isinstance(base, str):
        url = base

        def read(rel: str) -> bytes:
            ans = http("GET", f"{url}/{rel}")
            assert ans.status == 200, (rel, ans.status)
            return ans.body
    else:
        read = base
    meta = store.accept_channel(channel, read(channel_relpath(channel)), "test fetch")
    version = meta.version

    def fetch(need: dict[str, int]) -> None:  # pieces of a format 2 file list, as objects
        for sha, size in need.items():
            store.store.put_compressed(sha, read(object_relpath(sha)), size)

    release = store.accept_manifest(
        channel, version, read(manifest_relpath(channel, version)), fetch
    )
    for f in release.iter_files():
        for sha, size in f.chunks:
            if not store.store.has(sha):
                store.store.put_compressed(sha, read(object_relpath(sha)), size)
    return version


def register_and_enrol(base: str, admin: str, name: str = "Centre A", **extra):
    """Register a centre (admin) and enrol it with a fresh key; returns (doc, key)."""
    from caravane.protocol.keys import PrivateKey

    reg = http("POST", f"{base}/api/v1/nodes", {"name": name, **extra}, admin)
    assert reg.status == 201, reg.body
    doc = reg.json()
    key = PrivateKey.generate()
    ans = http(
        "POST",
        f"{base}/api/v1/enrol",
        {"node_id": doc["node_id"], "code": doc["code"], "public_key": key.public.raw.hex()},
    )
    assert ans.status == 200, ans.body
    return doc, key


def signed_report(node_id: str, key, seq: int, **fields) -> bytes:
    from caravane.protocol.metadata import now_utc
    from caravane.protocol.report import Report

    sent = now_utc().strftime("%Y-%m-%dT%H:%M:%SZ")
    return Report(node_id=node_id, seq=seq, sent_at=sent, **fields).sign(key)


def served_manifest(url: str, channel: str, version: int):
    """A release's manifest as the hub serves it: the document, then its pieces as objects.

    Checked by hash only (each piece against its parent): a test reading what was published.
    """
    from caravane.packs.store import decode_frame
    from caravane.protocol import tree

    doc = http("GET", f"{url}/{manifest_relpath(channel, version)}")
    assert doc.status == 200, doc.status

    def read(refs):
        out = []
        for r in refs:
            ans = http("GET", f"{url}/{object_relpath(r.sha256)}")
            assert ans.status == 200, (r.sha256, ans.status)
            out.append(decode_frame(ans.body, r.length, "piece"))
        return out

    return tree.decode_manifest(doc.body, read)
