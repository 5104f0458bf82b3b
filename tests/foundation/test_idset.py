"""The compact id set that collection and verification remember objects in: every id added
is found (a missing "yes" would let collection delete a live object), across the merges of
its pending ids into the sorted buckets, and ids never added are not."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from caravane.packs import idset
from caravane.packs.idset import IdSet


def _id(n: int) -> str:
    return hashlib.sha256(n.to_bytes(8, "big")).hexdigest()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5000), max_size=600), st.integers(1, 64))
def test_every_id_added_is_found_and_others_are_not(adds: list[int], pending: int) -> None:
    saved = idset._PENDING
    idset._PENDING = pending  # merges happen every few adds
    try:
        ids = IdSet()
        for n in adds:
            ids.add(_id(n))
        assert all(_id(n) in ids for n in adds)
        assert not any(_id(n) in ids for n in range(5001, 5301))
        assert len(ids) == len(set(adds))
    finally:
        idset._PENDING = saved
