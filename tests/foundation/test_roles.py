"""The repository split by role: what only the hub may do, what a centre does, and that one
operation verifies each piece of metadata once."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from caravane.packs.centre_store import CentreStore
from caravane.packs.hub_repository import HubRepository
from caravane.packs.repository import Repository, RepositoryBase, open_repository
from caravane.protocol.errors import CaravaneError, FormatError, NotFoundError
from caravane.protocol.trust import TrustedState

from .conftest import RepoSim, read_tree, write_tree

HUB_ONLY = (
    "publish",
    "ingest",
    "commit_release",
    "refresh_expiry",
    "rotate_root",
    "retain",
    "referenced_objects",
    "collect_garbage",
)
CENTRE_ONLY = ("accept_root", "accept_channel", "accept_manifest", "apply_pack")


def test_a_centre_store_has_no_way_to_sign_or_publish(sim: RepoSim) -> None:
    sim.publish({"a.txt": "un"})
    store = sim.store()
    assert isinstance(store, CentreStore)
    for name in HUB_ONLY:
        assert hasattr(HubRepository, name), name
        assert not hasattr(CentreStore, name), f"a centre's store must not have {name}"
        assert not hasattr(store, name), name
    for name in CENTRE_ONLY:
        assert hasattr(CentreStore, name), name
        assert not hasattr(HubRepository, name), f"the hub does not take {name}"
    assert not (store.path / "keys").exists()


def test_opening_a_store_as_the_hub_says_only_the_hub_can_publish(sim: RepoSim) -> None:
    store = sim.store()
    with pytest.raises(NotFoundError, match="only the hub repository can publish"):
        HubRepository(store.path)
    with pytest.raises(FormatError, match="hub's repository"):
        CentreStore(sim.hub.path)


def test_the_folder_decides_the_role_when_opened(sim: RepoSim) -> None:
    store = sim.store()
    for opener in (open_repository, Repository, Repository.open):
        assert type(opener(sim.hub.path)) is HubRepository
        assert type(opener(store.path)) is CentreStore
    assert sim.hub.role == "hub" and store.role == "centre"
    assert sim.hub.is_hub and not store.is_hub
    assert isinstance(sim.hub, RepositoryBase) and isinstance(store, RepositoryBase)
    with pytest.raises(NotFoundError, match="not a Caravane repository"):
        open_repository(sim.tmp / "nowhere")


def test_publishing_into_a_store_from_the_command_line_is_refused(sim: RepoSim) -> None:
    store = sim.store()
    src = write_tree(sim.tmp / "src", {"a.txt": "un"})
    r = subprocess.run(
        [sys.executable, "-m", "caravane", "repo", "publish", str(store.path), "maths", str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "only the hub repository can publish" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (store.path / "manifests" / "maths").exists()


def test_a_hub_checks_a_pack_without_taking_it(sim: RepoSim) -> None:
    sim.publish({"a.txt": "un", "b.txt": "deux" * 500})
    sim.publish({"a.txt": "un", "b.txt": "trois" * 500})
    pack = sim.pack(1, 2)
    before = read_tree(sim.hub.path)
    res = sim.hub.verify_pack(pack)
    assert (res.channel, res.version) == ("maths", 2)
    assert read_tree(sim.hub.path) == before


# --------------------------------------------------------------------------- verified once


class VerificationCounter:
    """Counts verifications on a repository's trust state, by what was verified."""

    def __init__(self, state: TrustedState) -> None:
        self.calls: Counter[tuple[str, ...]] = Counter()
        channel: Callable[..., Any] = state.verify_channel
        manifest: Callable[..., Any] = state.verify_manifest

        def verify_channel(data: bytes, name: str, *args: Any, **kw: Any) -> Any:
            self.calls[("channel", name, hashlib.sha256(data).hexdigest())] += 1
            return channel(data, name, *args, **kw)

        def verify_manifest(data: bytes, ref: Any, name: str, *args: Any) -> Any:
            self.calls[("manifest", name, str(ref.version))] += 1
            return manifest(data, ref, name, *args)

        state.verify_channel = verify_channel  # type: ignore[method-assign]
        state.verify_manifest = verify_manifest  # type: ignore[method-assign]

    @contextmanager
    def operation(self, label: str) -> Iterator[None]:
        """Nothing verified twice in the block, and something verified at all."""
        self.calls.clear()
        yield
        assert self.calls, f"{label}: verified nothing (the counter is not wired)"
        twice = {k: n for k, n in self.calls.items() if n > 1}
        assert not twice, f"{label} verified the same metadata more than once: {twice}"


def test_hub_operations_verify_each_piece_of_metadata_once(
    sim: RepoSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(4):
        sim.publish({"a.txt": f"version {n}", "b.bin": bytes(range(256)) * (20 + n)})
    hub = sim.hub
    count = VerificationCounter(hub.trusted)
    # the readers that walk a release from its pieces open it (its document checked
    # against the signed ref) instead of verifying a whole manifest: counted the same way
    from caravane.protocol.release import Release

    real_open = Release.open.__func__  # type: ignore[attr-defined]

    def counting_open(cls: type[Release], data: bytes, ref: Any, channel: str, read: Any) -> Any:
        count.calls[("manifest", channel, str(ref.version))] += 1
        return real_open(cls, data, ref, channel, read)

    monkeypatch.setattr(Release, "open", classmethod(counting_open))
    with count.operation("publish"):
        sim.publish({"a.txt": "version 4", "c.txt": "new"})
    with count.operation("checkout"):
        hub.checkout("maths", sim.tmp / "out")
    with count.operation("build_pack"):
        hub.build_pack("maths", 3, 5, sim.tmp / "3-5.pack")
    with count.operation("new_bytes"):
        assert hub.new_bytes("maths", 3, 5) > 0
    with count.operation("verify"):
        assert hub.verify().ok
    with count.operation("latest_local_version"):
        assert hub.latest_local_version("maths") == 5
    with count.operation("collect_garbage"):
        hub.collect_garbage()
    with count.operation("retain"):
        assert hub.retain("maths", 3) == [1, 2]
    with count.operation("refresh_expiry"):
        hub.refresh_expiry("maths", 30)
    with count.operation("collect_garbage after retain"):
        removed, _ = hub.collect_garbage()
    assert removed > 0
    # the counter counts the very calls an operation makes: collection walks 3 manifests
    assert sum(1 for k in count.calls if k[0] == "manifest") == 3


def test_centre_operations_verify_each_piece_of_metadata_once(sim: RepoSim) -> None:
    for n in range(3):
        sim.publish({"a.txt": f"version {n}", "b.bin": bytes(range(256)) * (20 + n)})
    store = sim.store()
    assert isinstance(store, CentreStore)
    count = VerificationCounter(store.trusted)
    with count.operation("apply_pack 0-2"):
        store.apply_pack(sim.pack(0, 2))
    with count.operation("apply_pack 2-3"):
        store.apply_pack(sim.pack(2, 3))
    with count.operation("checkout"):
        store.checkout("maths", sim.tmp / "out")
    assert read_tree(sim.tmp / "out")["a.txt"] == b"version 2"
    channel = (sim.hub.path / "metadata/channels/maths.json").read_bytes()
    with count.operation("accept_channel"):
        store.accept_channel("maths", channel, "test")
    with count.operation("latest_local_version"):
        assert store.latest_local_version("maths") == 3


def test_a_snapshot_drops_what_it_verified_when_the_root_changes(sim: RepoSim) -> None:
    from caravane.protocol.keys import PrivateKey

    sim.publish({"a.txt": "un"})
    snap = sim.hub.snapshot()
    snap.channel("maths")
    count = VerificationCounter(sim.hub.trusted)
    snap.channel("maths")
    assert not count.calls  # held
    new_root = PrivateKey.generate()
    old_root = PrivateKey.load(sim.hub.key_path("root"))
    sim.hub.rotate_root(
        {"root": [new_root.public], "release": [sim.release_key.public]},
        [old_root, new_root],
    )
    count.calls.clear()
    snap.channel("maths")
    assert count.calls  # verified again, under the new root


def test_a_hub_operation_on_a_missing_channel_still_says_so(sim: RepoSim) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        sim.hub.build_pack("nothing", 0, 1, sim.tmp / "x.pack")
    with pytest.raises(CaravaneError):
        sim.hub.new_bytes("maths", 0, 1)
