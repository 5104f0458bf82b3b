"""The node's own database: alembic owns its schema; backoff and report queue behave."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
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
    for _ in range(50):  # whatever the jitter draws, each failure waits longer
        st.record_ok("hub")
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


def test_an_older_database_is_migrated_when_the_node_opens_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    upgrade(url, "n0001")  # a centre installed before relayed reports existed
    st = NodeState(url)
    assert st.revision() == "n0002"
    assert st.queue_relayed("peer", 1, b"{}") is True
    assert st.unsent_relayed() == [("peer", 1, b"{}")]


def test_a_node_at_the_head_revision_runs_without_sqlalchemy_or_alembic(tmp_path: Path) -> None:
    """Issue 14: SQLAlchemy and alembic cost the node about 17 MB resident at rest; the
    agent, its portal and its state must not load them once the schema is current."""
    url = f"sqlite:///{tmp_path / 'node.db'}"
    upgrade(url)
    script = (
        "import sys\n"
        "from caravane import cli\n"
        "cli.register_commands(cli.main)\n"
        "import caravane.node.serve, caravane.node.service\n"
        "from caravane.node.state import NodeState\n"
        f"st = NodeState({url!r})\n"
        "st.event('info', 'started'); st.add_counts({'passes': 1})\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'alembic'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


def test_dates_written_by_earlier_releases_read_back(tmp_path: Path) -> None:
    """Centres upgraded in place keep their database: SQLAlchemy wrote UTC date-times as
    text without an offset, and they read back as the same instants."""
    url = f"sqlite:///{tmp_path / 'node.db'}"
    upgrade(url)
    with closing(sqlite3.connect(tmp_path / "node.db")) as db, db:
        db.execute(
            "INSERT INTO activations (channel, version, previous, route, at) "
            "VALUES ('lecons', 3, 2, 'usb', '2026-11-25 10:00:00.250000')"
        )
        db.execute(
            "INSERT INTO upstream_health (name, failures, demoted_until, last_ok) "
            "VALUES ('hub', 2, '2099-01-01 00:00:00.000000', '2026-11-25 09:00:00.000000')"
        )
    st = NodeState(url)
    assert st.last_activation("lecons") == {
        "version": 3,
        "route": "usb",
        "at": "2026-11-25T10:00:00+00:00",
    }
    assert st.demoted_until("hub") == datetime(2099, 1, 1, tzinfo=UTC)
    assert st.upstream_health()[0]["last_ok"] == "2026-11-25T09:00:00+00:00"
    st.record_activation("lecons", 4, 3, "network")
    assert st.last_activation("lecons")["version"] == 4  # type: ignore[index]


def test_a_refused_write_leaves_nothing_behind_and_the_state_usable(tmp_path: Path) -> None:
    st = NodeState(f"sqlite:///{tmp_path / 'node.db'}")
    st.MAX_RELAYED = 1
    assert st.queue_relayed("peer", 1, b"one")
    with pytest.raises(OverflowError, match="relayed reports already wait"):
        st.queue_relayed("peer", 2, b"two")
    st.queue_report(st.next_seq(), b"{}")
    with pytest.raises(sqlite3.IntegrityError):
        st.queue_report(1, b"again")  # seq 1 is taken: that transaction is rolled back
    assert [seq for seq, _ in st.unsent_reports()] == [1]
    assert st.unsent_relayed() == [("peer", 1, b"one")]


WRITER = """
import sys
from caravane.node.state import NodeState
st = NodeState(sys.argv[1])
print("ready", flush=True)
while True:
    st.add_counts({"a": 1, "b": 1})
"""


def test_a_killed_writer_leaves_a_whole_database(tmp_path: Path) -> None:
    """Power cut or SIGKILL in the middle of a write: each transaction is all or nothing
    (two counters written together stay equal) and the database opens intact."""
    url = f"sqlite:///{tmp_path / 'node.db'}"
    NodeState(url).close()
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for w in writers:
        assert w.stdout is not None and w.stdout.readline().strip() == "ready"
    st = NodeState(url)
    for _ in range(50):  # this process writes too, between the two others
        st.add_counts({"a": 1, "b": 1})
    time.sleep(0.5)
    for w in writers:
        w.send_signal(signal.SIGKILL)
        w.wait()
    counts = NodeState(url).counts("")
    assert counts["a"] == counts["b"] >= 50
    with closing(sqlite3.connect(tmp_path / "node.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_the_agent_migrates_an_old_database_in_a_child_process(tmp_path: Path) -> None:
    """`caravane node run` migrates apart: alembic never loads into the long-lived agent."""
    from caravane.node.state import upgrade_apart

    url = f"sqlite:///{tmp_path / 'node.db'}"
    upgrade(url, "n0001")
    assert upgrade_apart(url) is True
    assert NodeState(url, migrate=False).revision() == "n0002"
    assert upgrade_apart(url) is False  # at the head: no child at all


def test_a_failed_migration_says_what_to_do(tmp_path: Path) -> None:
    from caravane.node.state import StateError, upgrade_apart

    url = f"sqlite:///{tmp_path / 'node.db'}"
    upgrade(url)
    with closing(sqlite3.connect(tmp_path / "node.db")) as db, db:
        db.execute("UPDATE alembic_version SET version_num = 'n9999'")  # a newer release's
    with pytest.raises(StateError, match="migrating the node's state database to n0002"):
        upgrade_apart(url)


def test_reads_go_on_while_a_write_waits_for_another_process(tmp_path: Path) -> None:
    """`caravane node sync` from cron holds the write lock: the agent's next write waits
    its turn, but the portal's reads of the state (operator page, /metrics) still answer."""
    import threading

    st = NodeState(f"sqlite:///{tmp_path / 'node.db'}")
    st.event("info", "before")
    other = sqlite3.connect(tmp_path / "node.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing
    writer = threading.Thread(target=st.event, args=("info", "after"))
    writer.start()
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(e["message"] for e in st.recent_events()))
    reader.start()
    reader.join(timeout=10)
    assert seen == ["before"] and writer.is_alive()  # the read answered; the write waits
    other.execute("COMMIT")
    other.close()
    writer.join(timeout=30)
    assert [e["message"] for e in st.recent_events()] == ["after", "before"]
