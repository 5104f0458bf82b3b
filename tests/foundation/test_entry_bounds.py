"""A pack entry is bounded by the signed sizes before any byte of its payload is read.

A forged entry header declaring 1 GiB used to cost 1 GB of memory before its checksum
failed; now it is refused from its header alone (against the targets the verified manifest
gives), and a length longer than what is left in the volume is a cut pack, found without
reading.
"""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import pytest

from caravane.packs.errors import PackError, TruncatedPackError
from caravane.packs.packfile import ENTRY_MAGIC, MAGIC, encode_entry, read_entries
from caravane.packs.repository import Repository
from caravane.protocol.canonical import canonical_bytes

GIB = 1024**3


def _forged_pack(tmp_path: Path, sparse_tail: bool) -> tuple[Repository, Path]:
    hub = Repository.init(tmp_path / "hub")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(bytes(range(256)) * 4000)
    hub.publish("lecons", src)
    pack = hub.pack_path("lecons", 0, 1)
    hub.build_pack("lecons", 0, 1, pack)
    entries = list(read_entries(pack))
    delta = next(e for e in entries if e.kind == "delta")
    forged = tmp_path / "forged.pack"
    with open(forged, "wb") as fh:
        fh.write(MAGIC)
        for e in entries:
            if e.kind in ("metadata", "manifest", "tree"):
                hdr = {k: v for k, v in e.header.items() if k not in ("kind", "length")}
                fh.write(encode_entry(e.kind, hdr, e.payload))
        header = dict(delta.header, length=GIB)
        hb = canonical_bytes(header)
        fh.write(ENTRY_MAGIC + struct.pack(">I", len(hb)) + hb)
        if sparse_tail:
            fh.truncate(fh.tell() + GIB + 32)  # a hole: the 1 GiB "is there", costs no disk
    store = Repository.init(tmp_path / "store", trust_root=hub.path / "metadata/root.json")
    return store, forged


def _peak(fn: object) -> int:
    tracemalloc.start()
    try:
        fn()  # type: ignore[operator]
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_entry_declaring_a_gib_is_refused_from_its_header(tmp_path: Path) -> None:
    store, forged = _forged_pack(tmp_path, sparse_tail=True)

    def apply() -> None:
        with pytest.raises(PackError, match="signed sizes allow"):
            store.apply_pack(forged)

    assert _peak(apply) < 64 * 1024 * 1024


def test_entry_longer_than_its_volume_is_a_cut_pack_without_reading(tmp_path: Path) -> None:
    store, forged = _forged_pack(tmp_path, sparse_tail=False)

    def read() -> None:
        with pytest.raises(TruncatedPackError):
            for _ in read_entries(forged):
                pass

    assert _peak(read) < 64 * 1024 * 1024
