"""Lookups by key under a prefix (``db.values_by_key``), on both engines.

An upload's objects (upload, sha) and the usage file ids (channel, path) are looked up a
batch of keys at a time. On PostgreSQL, before the table's statistics know rows just
written (a new hub's first publish), ``key IN (...)`` was planned as a scan of every row
under the prefix, each batch: the lookup must read the keys' rows only.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import event, insert, text

from caravane.hub.db import IN_KEYS, values_by_key
from caravane.hub.service import Hub
from caravane.hub.usage import usage_files


def _rows_read(plan: dict[str, Any]) -> int:
    """Rows every node of an EXPLAIN ANALYZE plan produced or threw away by a filter."""
    own = plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1)
    own += plan.get("Rows Removed by Filter", 0) + plan.get("Rows Removed by Index Recheck", 0)
    return int(own) + sum(_rows_read(p) for p in plan.get("Plans", []))


def test_values_by_key_finds_exactly_the_keys_rows_under_the_prefix(hub: Hub) -> None:
    paths = [f"d{i % 7}/page-{i:05d}.html" for i in range(3000)]
    with hub.db.session() as s:
        for channel in ("a", "b"):
            s.execute(insert(usage_files), [{"channel": channel, "path": p} for p in paths])
    with hub.db.session() as s:
        ids = dict(s.execute(text("SELECT path, id FROM usage_files WHERE channel = 'a'")).all())
    # more keys than one IN list holds, repeats, and paths no row has
    keys = paths[:1500] + paths[:10] + ["absent.html", "d1/nothing"]
    seen: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, params, context, executemany) -> None:  # noqa: ANN001
        seen.append((statement, params))

    event.listen(hub.db.engine, "before_cursor_execute", record)
    try:
        with hub.db.session() as s:
            found = list(
                values_by_key(
                    s, usage_files.c.path, keys, usage_files.c.id, usage_files.c.channel == "a"
                )
            )
    finally:
        event.remove(hub.db.engine, "before_cursor_execute", record)
    assert dict(found) == {p: ids[p] for p in paths[:1500]}
    assert len(keys) > IN_KEYS  # on SQLite, more than one IN list
    if hub.db.engine.dialect.name != "postgresql":
        return
    # statistics do not know these rows yet: the plans still read only the keys' rows
    read = 0
    with hub.db.session() as s:
        for statement, params in seen:
            raw = (
                s.connection()
                .exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params)
                .scalar_one()
            )
            read += _rows_read((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"])
    assert read <= 3 * len(keys), read
