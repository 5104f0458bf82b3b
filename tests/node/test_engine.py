"""The sync engine alone: no hub process, no socket, upstreams served from memory.

Every test publishes with the real hub code into the simulator, damages what an attacker,
a bad mirror or a bad link would, runs one or two passes and checks what the centre serves,
what it refused, and that every byte an upstream sent is counted.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import pytest

from caravane.node.errors import BudgetExceeded, PassOver
from caravane.node.sync import SyncEngine
from caravane.node.transfer import BAD_DATA
from caravane.node.upstream import RsyncUpstream
from caravane.packs.errors import PackError
from caravane.packs.layout import channel_relpath, object_relpath
from caravane.packs.store import compress
from caravane.protocol.errors import (
    BadDataError,
    ExpiredError,
    FormatError,
    RollbackError,
    SignatureError,
    VerificationError,
)
from caravane.protocol.metadata import Manifest
from tests.support.simulator import Centre, RepositorySimulator

KB = 1000


def tree(version: int, big: int = 400_000) -> dict[str, bytes]:
    """A small release: one incompressible file that grows a little, and a few texts."""
    rnd = random.Random(1)
    return {
        "media/film.bin": rnd.randbytes(big) + random.Random(version).randbytes(20_000 * version),
        "index.html": f"<h1>v{version}</h1>".encode(),
        **{f"textes/{i}.txt": (f"chapitre {i} " * 300).encode() for i in range(5)},
    }


def test_fresh_sync_takes_the_pack_and_serves_the_release(
    sim: RepositorySimulator, centre: Centre
) -> None:
    v1 = sim.publish(tree(1))
    pack = sim.build_pack(0, v1)
    up = sim.upstream("mirror")
    r = centre.sync([up])
    assert r.complete and r.channels[0].status == "activated", r.to_dict()
    assert centre.live() == sim.versions[v1]
    assert pack in up.paths()
    assert not any(p.startswith("objects/") for p in up.paths())  # the pack carried it all
    assert r.received == {"mirror": up.sent()}
    assert r.channels[0].route == "mirror"


def test_update_travels_as_the_delta_pack_only(sim: RepositorySimulator, centre: Centre) -> None:
    v1 = sim.publish(tree(1))
    sim.build_pack(0, v1)
    up = sim.upstream("mirror")
    assert centre.sync([up]).complete
    v2 = sim.publish(tree(2))
    delta = sim.build_pack(v1, v2)
    up.fetches.clear()
    r = centre.sync([up])
    assert r.complete, r.to_dict()
    assert centre.live() == sim.versions[v2]
    assert delta in up.paths() and "packs/lecons/0-2.pack" not in up.paths()
    assert up.sent() < sum(map(len, sim.versions[v2].values())) // 5
    assert r.received["mirror"] == up.sent()


def test_tampered_object_is_refused_then_fetched_from_the_next_upstream(
    sim: RepositorySimulator, centre: Centre
) -> None:
    v1 = sim.publish(tree(1))  # no pack: objects one by one
    bad, good = sim.upstream("bad", cost=1), sim.upstream("good", cost=2)
    shas = sorted(sim.repo.manifest(sim.channel, v1).chunk_sizes())
    target = object_relpath(shas[0])
    bad.replace(target, compress(b"not what was signed", 3))  # a valid frame, wrong content
    r = centre.sync([good, bad])
    assert r.complete, r.to_dict()
    assert centre.live() == sim.versions[v1]
    assert any("bad" in e and "tampered" in e for e in r.errors)
    assert centre.state.demoted_until("bad") is not None
    assert target in good.paths()
    assert r.received == {"bad": bad.sent(), "good": good.sent()}


def test_rolled_back_channel_metadata_is_refused_and_the_release_kept(
    sim: RepositorySimulator, centre: Centre
) -> None:
    sim.publish(tree(1))
    frozen = sim.snapshot()
    v2 = sim.publish(tree(2))
    up = sim.upstream("hub")
    assert centre.sync([up]).complete
    old = sim.upstream("old-mirror", cost=1)
    old.freeze(frozen)
    r = centre.sync([old], ignore_demotion=True)
    assert any("old-mirror" in e and "older than version 2" in e for e in r.errors), r.errors
    assert centre.live() == sim.versions[v2]
    assert centre.repo.known_version(sim.channel) == v2
    assert centre.repo.channel_bytes(sim.channel) == sim.files[channel_relpath(sim.channel)]


def test_available_works_before_sync(sim: RepositorySimulator, centre: Centre) -> None:
    sim.publish(tree(1))
    cheap, dear = sim.upstream("drive", cost=0), sim.upstream("satellite", cost=50)
    engine = SyncEngine(
        centre.repo, centre.releases, centre.state, [dear, cheap], centre.partial_dir
    )
    assert engine.available() == [cheap, dear]
    assert engine.received == {}
    centre.state.record_failure("drive", "earlier failure")
    assert engine.available() == [dear]


def test_budget_spent_mid_transfer_ends_the_pass_cleanly_with_bytes_counted(
    sim: RepositorySimulator, centre: Centre
) -> None:
    v1 = sim.publish(tree(1, big=600_000))
    pack = sim.build_pack(0, v1)
    sat = sim.upstream("satellite", metered=True)
    r = centre.sync([sat], daily_budget=200 * KB)
    assert not r.complete and r.channels[0].status == "waiting"
    assert any("budget" in e for e in r.errors)
    assert centre.releases.active(sim.channel) is None
    # every byte sent is counted, in the result and in the state; the pass stopped at the
    # first block past the budget, never further
    assert r.received["satellite"] == sat.sent()
    assert centre.state.metered_bytes("day") == sat.sent()
    assert 200 * KB <= sat.sent() < 200 * KB + sat.block
    kept = (centre.partial_dir / pack).stat().st_size
    assert kept == sat.sent(pack)  # what arrived is kept for the next pass
    # a later pass with budget continues the pack instead of starting over
    sat.fetches.clear()
    r2 = centre.sync([sat], daily_budget=0)
    assert r2.complete, r2.to_dict()
    assert [f.offset for f in sat.fetches if f.path == pack] == [kept]
    assert centre.live() == sim.versions[v1]


def test_budget_already_spent_reads_nothing(sim: RepositorySimulator, centre: Centre) -> None:
    sim.publish(tree(1))
    centre.state.add_transfer("satellite", True, 300 * KB)
    sat = sim.upstream("satellite", metered=True)
    r = centre.sync([sat], daily_budget=200 * KB)
    assert any("budget" in e for e in r.errors)
    assert sat.sent() == 0  # the probe costs nothing here; no block was read


def test_bad_data_is_one_base_and_one_named_tuple() -> None:
    for cls in (VerificationError, SignatureError, RollbackError, ExpiredError, FormatError):
        assert issubclass(cls, BadDataError)
    assert issubclass(SignatureError, VerificationError)  # the old bases stay
    assert (BadDataError, PackError) == BAD_DATA
    assert issubclass(BudgetExceeded, PassOver)


def test_stuck_centre_with_loose_objects_finishes_when_the_pack_appears(
    sim: RepositorySimulator, centre: Centre
) -> None:
    """Field fault (issue 13): objects of a release came one by one, then the hub built the
    pack. The pass must finish from what is missing, not cut the whole pack at a bound
    made from the missing bytes and set the hub aside, pass after pass."""
    v1 = sim.publish(tree(1, big=800_000))
    hub = sim.upstream("hub")
    shas = sorted(sim.repo.manifest(sim.channel, v1).chunk_sizes())
    hub.fail(object_relpath(shas[-1]))  # one object is cut every time in the first pass
    first = centre.sync([hub])
    assert first.channels[0].status == "waiting"
    assert first.received["hub"] == hub.sent() > 0
    pack = sim.build_pack(0, v1)  # the hub's pack job ran meanwhile
    hub.restore()
    hub.fetches.clear()
    second = centre.sync([hub], ignore_demotion=True)
    assert second.complete, second.to_dict()
    assert centre.live() == sim.versions[v1]
    assert pack not in hub.paths()  # the missing object alone came, not the whole pack again
    assert hub.sent() < 100 * KB
    assert second.received["hub"] == hub.sent()


def test_pack_longer_than_any_pack_of_the_pair_is_counted_and_objects_finish(
    sim: RepositorySimulator, centre: Centre
) -> None:
    """An upstream sending more than the pack can carry is cut and set aside; the bytes it
    sent are counted all the same, and the pass finishes from another upstream."""
    v1 = sim.publish(tree(1))
    pack = sim.build_pack(0, v1)
    endless = sim.upstream("endless", cost=1)
    endless.replace(pack, b"\0" * 20_000_000)
    good = sim.upstream("good", cost=2)
    r = centre.sync([endless, good])
    assert r.complete, r.to_dict()
    assert any("endless" in e and "more than" in e for e in r.errors)
    assert r.received["endless"] == endless.sent() > 16_000_000
    assert centre.live() == sim.versions[v1]


def test_slow_drip_peer_is_set_aside_and_the_next_upstream_finishes_in_time(
    sim: RepositorySimulator, centre: Centre
) -> None:
    """Issue 12: a peer sending a byte now and then must not hold the pass for hours."""
    v1 = sim.publish(tree(1))
    pack = sim.build_pack(0, v1)
    peer, hub = sim.upstream("peer", cost=1, kind="peer"), sim.upstream("hub", cost=2)
    peer.pace("packs/", delay=0.1, block=1)
    started = time.monotonic()
    r = centre.sync([peer, hub], min_rate=2000, rate_grace=0.5, pass_seconds=30)
    assert r.complete, r.to_dict()
    assert time.monotonic() - started < 30
    assert any("peer" in e and "too slow" in e for e in r.errors)
    assert centre.live() == sim.versions[v1]
    # the bytes the peer dripped were kept: the hub continued after them
    dripped = peer.sent(pack)
    assert dripped > 0 and [f.offset for f in hub.fetches if f.path == pack] == [dripped]
    assert r.received == {"peer": peer.sent(), "hub": hub.sent()}


def test_pass_deadline_ends_the_pass_and_keeps_what_came(
    sim: RepositorySimulator, centre: Centre
) -> None:
    v1 = sim.publish(tree(1))
    pack = sim.build_pack(0, v1)
    drip = sim.upstream("drip")
    drip.pace("packs/", delay=0.05, block=100)
    started = time.monotonic()
    r = centre.sync([drip], pass_seconds=1.5)
    assert time.monotonic() - started < 5
    assert r.channels[0].status == "waiting"
    assert any("time limit" in e for e in r.errors)
    assert (centre.partial_dir / pack).stat().st_size == drip.sent(pack) > 0


@pytest.mark.skipif(shutil.which("rsync") is None, reason="the rsync program is not installed")
def test_rsync_refuses_a_file_bigger_than_planned_before_copying_it(
    sim: RepositorySimulator, centre: Centre, tmp_path: Path
) -> None:
    v1 = sim.publish(tree(1))
    pack = sim.build_pack(0, v1)
    source = tmp_path / "rsync-source"
    shutil.copytree(sim.repo.path, source, ignore=shutil.ignore_patterns("keys"))
    (source / pack).write_bytes(b"\0" * 30_000_000)  # far more than any pack of 0-1
    cache = tmp_path / "rsync-cache"
    rs = RsyncUpstream("rsync", str(source), cache, cost=1)
    good = sim.upstream("good", cost=2)
    r = centre.sync([rs, good])
    assert r.complete, r.to_dict()
    assert any("rsync" in e and "larger than" in e for e in r.errors)
    assert not (cache / pack).exists()  # never copied
    assert r.received.get("rsync", 0) < 1_000_000


def test_an_update_learns_its_manifest_from_the_pack_not_the_whole_file_list(
    sim: RepositorySimulator, centre: Centre
) -> None:
    """Issue 10: a connected centre holding v1 downloads the pack (the new manifest inside
    as a delta against its own), never the whole manifest, whose size grows with the channel."""
    files = {f"pages/{i:04d}.html": f"<p>page {i} {'texte ' * 40}</p>".encode() for i in range(400)}
    v1 = sim.publish(files)
    up = sim.upstream("hub")
    assert centre.sync([up]).complete
    files["pages/0200.html"] += b"<p>une phrase de plus</p>"
    v2 = sim.publish(files)
    pack = sim.build_pack(v1, v2)
    up.fetches.clear()
    r = centre.sync([up])
    assert r.complete and r.channels[0].status == "activated", r.to_dict()
    assert centre.live() == sim.versions[v2]
    assert pack in up.paths()
    assert not any(p.startswith(("manifests/", "objects/")) for p in up.paths()), up.paths()
    m = sim.repo.manifest(sim.channel, v2)  # its whole file list, as one flat document
    whole = len(Manifest(m.channel, m.version, m.created, m.files, m.notes).to_bytes())
    assert up.sent() < whole // 4, (up.sent(), whole)


def test_an_update_without_a_pack_falls_back_to_the_manifest_and_objects(
    sim: RepositorySimulator, centre: Centre
) -> None:
    v1 = sim.publish(tree(1))
    up = sim.upstream("hub")
    assert centre.sync([up]).complete
    v2 = sim.publish(tree(2))  # no pack for 1->2 anywhere
    up.fetches.clear()
    r = centre.sync([up])
    assert r.complete, r.to_dict()
    assert centre.live() == sim.versions[v2]
    assert f"packs/{sim.channel}/{v1}-{v2}.pack" in up.paths()  # asked first, not there
    assert f"manifests/{sim.channel}/{v2}.json" in up.paths()
    assert any(p.startswith("objects/") for p in up.paths())
