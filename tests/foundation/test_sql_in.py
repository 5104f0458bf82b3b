"""Key lists for ``IN (...)`` come in a few sizes, and lookups through them stay exact."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from caravane.packs import sql_in
from caravane.packs.store import ObjectStore


@given(st.lists(st.integers(), max_size=300), st.integers(min_value=0, max_value=9))
def test_padded_parts_keep_every_key_in_power_of_two_sizes(items: list[int], log: int) -> None:
    size = 1 << log
    got = list(sql_in.parts(items, size))
    assert [k for part in got for k in dict.fromkeys(part)] == [
        k for i in range(0, len(items), size) for k in dict.fromkeys(items[i : i + size])
    ]
    for part in got:
        assert len(part) <= size and len(part) & (len(part) - 1) == 0
    # at most log2(size) + 1 statement sizes, whatever the batch lengths
    assert len({len(p) for p in got}) <= log + 1


def test_store_lookups_of_any_batch_length_find_exactly_what_is_there(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "store")
    held = [store.put_raw(f"objet {i}".encode())[0] for i in range(700)]
    absent = [hashlib.sha256(f"absent {i}".encode()).hexdigest() for i in range(700)]
    for n in (1, 2, 3, 5, 511, 512, 513, 700):
        wanted = held[:n] + absent[:n]
        assert store.present(wanted) == set(held[:n])
        assert store.missing(wanted) == set(absent[:n])
        assert store.freshen_many(wanted) == set(held[:n])
