"""Issue 13, messages a field operator can act on: cause and next step, accents in French."""

from __future__ import annotations

from caravane.hub.usb import prepare_for_route
from caravane.node.agent import import_drive_into_centre
from caravane.node.config import UpstreamConfig
from tests.node.conftest import World, content
from tests.usb.test_route import offline_centre


def test_an_upstream_set_aside_is_not_called_unreachable(world: World) -> None:
    world.publish(content(1, big=50_000, files=1))
    n = world.node("centre-a")
    n.state.record_failure("hub", "HTTP 500 from the hub")
    result = world.sync(n)
    assert "no upstream is reachable" not in result.skipped
    assert "set aside after recent errors" in result.skipped
    assert "HTTP 500 from the hub" in result.skipped and "--force" in result.skipped
    assert world.sync(n, ignore_demotion=True).complete  # --force: the hub was fine


def test_a_link_down_says_which_upstream_and_what_to_do(world: World) -> None:
    n = world.node("centre-b", upstreams=[UpstreamConfig("hub", "http", "http://127.0.0.1:9")])
    result = world.sync(n)
    assert result.skipped.startswith("no upstream is reachable now (hub did not answer")
    assert "insert a drive" in result.skipped
    none = world.node("centre-c", upstreams=[])
    assert "no upstream is configured" in world.sync(none).skipped


def test_the_receipt_on_the_drive_is_proper_french(world: World) -> None:
    latest = world.publish(content(1, big=50_000, files=1))
    c = offline_centre(world, "centre-c")
    drive = world.tmp / "drive"
    drive.mkdir()
    prepare_for_route(world.rh.hub, drive, names=["centre-c"])
    receipt = import_drive_into_centre(c, drive)["receipt"]
    assert f"version {latest} installée" in receipt
    assert "La clé peut être retirée maintenant." in receipt
    again = import_drive_into_centre(c, drive)["receipt"]
    assert "déjà à jour" in again
