"""Property tests: for generated trees and edits, what a centre rebuilds is what was published."""

from __future__ import annotations

import io
import random
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import caravane.packs.chunker as chunker
from caravane.packs.centre_store import CentreStore
from caravane.packs.hub_repository import HubRepository
from caravane.protocol.canonical import canonical_bytes, load_json
from caravane.protocol.errors import PathError
from caravane.protocol.paths import check_path

from .conftest import read_tree, write_tree

NAME = st.text(
    alphabet=st.sampled_from(list("abcXYZ019-_ éèçàÉœ漢字")), min_size=1, max_size=10
).filter(lambda s: s.strip() == s and s not in (".", ".."))


def content() -> st.SearchStrategy[bytes]:
    small = st.binary(max_size=2000)
    repetitive = st.builds(
        lambda b, n: b * n, st.binary(min_size=1, max_size=50), st.integers(1, 4000)
    )
    rand = st.builds(
        lambda seed, n: random.Random(seed).randbytes(n),
        st.integers(0, 99),
        st.integers(0, 300_000),
    )
    return st.one_of(st.just(b""), small, repetitive, rand)


@st.composite
def trees(draw) -> dict[str, bytes]:
    n = draw(st.integers(1, 8))
    files: dict[str, bytes] = {}
    for _ in range(n):
        depth = draw(st.integers(1, 5))
        parts = [draw(NAME) for _ in range(depth)]
        path = "/".join(parts)
        folded = {p.casefold() for p in files}
        prefixes = {"/".join(p.casefold().split("/")[:i]) for p in files for i in range(1, 6)}
        if path.casefold() in folded or path.casefold() in prefixes:
            continue
        if any(path.casefold().startswith(f + "/") for f in folded):
            continue
        files[path] = draw(content())
    return files


@st.composite
def edits(draw, files: dict[str, bytes]) -> dict[str, bytes]:
    out = dict(files)
    for path in list(out):
        action = draw(st.sampled_from(["keep", "insert", "delete", "modify", "move", "remove"]))
        data = out[path]
        pos = draw(st.integers(0, len(data)))
        if action == "insert":
            out[path] = data[:pos] + draw(st.binary(min_size=1, max_size=500)) + data[pos:]
        elif action == "delete":
            out[path] = data[:pos] + data[pos + draw(st.integers(1, 5000)) :]
        elif action == "modify" and data:
            out[path] = data[:pos] + bytes([(data[pos % len(data)] + 1) % 256]) + data[pos + 1 :]
        elif action == "move":
            new = f"déplacé-{len(out)}/{path.rsplit('/', 1)[-1]}"
            if not any(
                p.casefold() == new.casefold() or p.casefold().startswith("déplacé-") for p in out
            ):
                out[new] = out.pop(path)
        elif action == "remove" and len(out) > 1:
            del out[path]
    if draw(st.booleans()):
        out[f"ajout-{len(out)}.txt"] = draw(content())
    return out


SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(trees())
def test_publish_then_checkout_gives_the_same_bytes(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        hub = HubRepository.init(t / "hub")
        hub.publish("c", write_tree(t / "src", files), avg_chunk=4096)
        hub.checkout("c", t / "out")
        assert read_tree(t / "out") == {p: files[p] for p in files}


@SETTINGS
@given(st.data())
def test_pack_a_to_b_applied_to_a_gives_b(data: st.DataObject) -> None:
    a = data.draw(trees())
    b = data.draw(edits(a))
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        hub = HubRepository.init(t / "hub")
        hub.publish("c", write_tree(t / "a", a), avg_chunk=4096)
        shutil.rmtree(t / "a")
        hub.publish("c", write_tree(t / "b", b), avg_chunk=4096)
        hub.build_pack("c", 0, 1, t / "01.pack")
        hub.build_pack("c", 1, 2, t / "12.pack")
        node = CentreStore.init(t / "node", trust_root=hub.path / "metadata/root.json")
        node.apply_pack(t / "01.pack")
        node.checkout("c", t / "out-a")
        assert read_tree(t / "out-a") == a
        node.apply_pack(t / "12.pack")
        node.checkout("c", t / "out-b")
        assert read_tree(t / "out-b") == b


@given(st.lists(NAME, min_size=1, max_size=6))
def test_valid_relative_paths_are_accepted(parts: list[str]) -> None:
    import unicodedata

    path = unicodedata.normalize("NFC", "/".join(parts))
    assert check_path(path) == path


@given(
    st.lists(NAME, max_size=3),
    st.sampled_from(["..", "/", "\x00", "\x1f", "\x7f", "\\", "."]),
    st.lists(NAME, max_size=3),
)
def test_paths_escaping_or_with_control_characters_are_refused(pre, bad, post) -> None:
    import unicodedata

    if bad == "/":
        path = "/" + "/".join(pre + ["x"] + post)
    elif bad in ("..", "."):
        path = "/".join(pre + [bad] + post)
    else:
        path = "/".join(pre + ["a" + bad + "b"] + post)
    path = unicodedata.normalize("NFC", path)
    try:
        check_path(path)
    except PathError:
        return
    raise AssertionError(f"{path!r} was accepted")


ASCII_PART = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=8),
    st.sampled_from(["CON", "con.txt", "Lpt1 .md", "COM10", "a.", "b ", ".", "..", "x" * 256]),
)


@settings(max_examples=500)
@given(st.lists(ASCII_PART, min_size=1, max_size=4))
def test_the_fast_path_check_decides_as_the_full_rules_do(parts: list[str]) -> None:
    """ASCII paths (device names, trailing dots, ':', control characters, long names): the
    fast path of ``check_path`` refuses exactly what the character-by-character rules do."""
    import caravane.protocol.paths as paths

    path = "/".join(parts)
    outcomes = []
    for fast in (True, False):
        saved = paths._plainly_safe
        if not fast:
            paths._plainly_safe = lambda p: False
        try:
            paths.check_path(path)
            outcomes.append(True)
        except PathError:
            outcomes.append(False)
        finally:
            paths._plainly_safe = saved
    assert outcomes[0] == outcomes[1], path


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(JSON)
def test_canonical_encoding_round_trips(doc) -> None:
    data = canonical_bytes(doc)
    assert load_json(data, "doc") == doc
    assert canonical_bytes(load_json(data, "doc")) == data


@given(st.dictionaries(st.text(), st.integers(), min_size=2, max_size=8))
def test_canonical_encoding_ignores_key_order(d: dict) -> None:
    assert canonical_bytes(dict(reversed(list(d.items())))) == canonical_bytes(d)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32), st.integers(70_000, 1_200_000), st.sampled_from([4096, 16384, 65536]))
def test_chunk_boundaries_do_not_depend_on_the_read_size(seed: int, size: int, avg: int) -> None:
    rnd = random.Random(seed)
    data = rnd.randbytes(size // 2) + bytes(size // 4) + rnd.randbytes(size // 4)
    original = chunker.READ_SIZE
    try:
        results = []
        for read_size in (original, 100_003, 1 << 20):
            chunker.READ_SIZE = read_size
            results.append([len(c) for c in chunker.iter_chunks(io.BytesIO(data), avg)])
    finally:
        chunker.READ_SIZE = original
    assert results[0] == results[1] == results[2]
    assert sum(results[0]) == len(data)
    assert all(n <= avg * 4 for n in results[0])


class _Trickle(io.RawIOBase):
    """A file that gives at most ``step`` bytes a read (a pipe, a slow drive, a ZIM stream)."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.at = data, step, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def, override]
        n = min(len(b), self.step, len(self.data) - self.at)
        b[:n] = self.data[self.at : self.at + n]
        self.at += n
        return n


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**32),
    st.integers(0, 600_000),
    st.sampled_from([4096, 16384]),
    st.sampled_from(["exact", "short", "long", "none"]),
    st.sampled_from([1 << 30, 65_537, 7_000]),
)
def test_chunks_are_the_same_whatever_size_the_caller_announces(
    seed: int, size: int, avg: int, hint: str, step: int
) -> None:
    """The buffer is sized from the file's expected length: a file that grew or shrank since
    it was stat'ed, or one read in short pieces, is still cut where a whole pass cuts it."""
    data = random.Random(seed).randbytes(size)
    announced = {"exact": size, "short": size // 3, "long": size * 2 + 5, "none": None}[hint]
    whole = [bytes(c) for c in chunker.iter_chunks(io.BytesIO(data), avg)]
    got = [bytes(c) for c in chunker.iter_chunks(_Trickle(data, step), avg, announced)]  # type: ignore[arg-type]
    assert got == whole
    assert b"".join(got) == data
    spans = [(o, n) for o, n in chunker.spans(memoryview(data), *chunker.chunk_limits(avg))]
    assert [len(c) for c in got] == [n for _, n in spans]
