"""The hub's fleet view shows a freeze: a centre's report says when it last had fresh word."""

from __future__ import annotations

from datetime import timedelta

from caravane.node.state import now
from tests.node.conftest import World, content
from tests.web.test_safety import Browser


def test_fleet_view_flags_a_centre_without_fresh_word(world: World) -> None:
    world.publish(content(1))
    n = world.node("Kita")
    n.complete_enrolment()
    assert world.sync(n).complete
    n.make_report()
    assert n.send_reports() == 1
    row = next(r for r in world.rh.hub.fleet() if r["name"] == "Kita")
    assert row["fresh_word"] and row["fresh_word_days"] == 0 and not row["frozen"]

    n.state.set(f"fresh:{world.channel}", (now() - timedelta(days=21)).isoformat())
    n.make_report()
    assert n.send_reports() == 1
    row = next(r for r in world.rh.hub.fleet() if r["name"] == "Kita")
    assert row["frozen"] and row["fresh_word_days"] == 21

    b = Browser(world.rh.url)
    b.sign_in(world.rh.token("admin"))
    status, body = b.call("/ui/fleet?lang=en")
    assert status == 200 and "no fresh word for 21 days" in body
    status, body = b.call("/ui/fleet?lang=fr")
    assert "aucune nouvelle fraîche depuis 21 jours" in body
