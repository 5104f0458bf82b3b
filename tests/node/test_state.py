"""The node's own database: alembic owns its schema; backoff and report queue behave."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect

from caravane.node.state import NodeState, downgrade, upgrade

TABLES = {
    "upstream_health",
    "transfers",
    "activations",
    "holds",
    "report_queue",
    "usage",
    "events",
    "settings",
}


def test_migrates_up_and_down(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    upgrade(url)
    assert set(inspect(create_engine(url)).get_table_names()) >= TABLES
    downgrade(url)
    assert not TABLES & set(inspect(create_engine(url)).get_table_names())
    upgrade(url)
    assert set(inspect(create_engine(url)).get_table_names()) >= TABLES


def test_backoff_grows_and_clears(tmp_path: Path) -> None:
    st = NodeState(f"sqlite:///{tmp_path / 'node.db'}")
    first = st.record_failure("hub", "cut", base=10)
    second = st.record_failure("hub", "cut again", base=10)
    assert second > first and st.demoted_until("hub") is not None
    st.record_ok("hub")
    assert st.demoted_until("hub") is None


def test_a_sent_report_leaves_older_queued_ones_waiting(tmp_path: Path) -> None:
    """Issue 13: marking older reports "superseded" dropped them (and the errors they carried)
    before the hub had them; now only the hub's word marks a report delivered."""
    st = NodeState(f"sqlite:///{tmp_path / 'node.db'}")
    for _ in range(3):
        seq = st.next_seq()
        st.queue_report(seq, b"{}")
    st.mark_sent(3, "usb")
    assert [seq for seq, _ in st.unsent_reports()] == [1, 2]
    st.mark_sent(1, "network")
    st.mark_sent(2, "network")
    assert st.unsent_reports() == []


def test_schema_head_constant_matches_the_migrations() -> None:
    from alembic.script import ScriptDirectory

    from caravane import migrations
    from caravane.node.state import SCHEMA_HEAD

    script = ScriptDirectory.from_config(migrations.alembic_config("sqlite://", "node"))
    assert script.get_current_head() == SCHEMA_HEAD
