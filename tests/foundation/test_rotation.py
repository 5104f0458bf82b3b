"""Root rotation rules: a new root needs the old keys and its own."""

from __future__ import annotations

import pytest

from caravane.protocol.errors import RollbackError, SignatureError
from caravane.protocol.keys import PrivateKey
from caravane.protocol.metadata import Root, sign_envelope
from caravane.protocol.trust import TrustedState


def _root(version: int, root_key: PrivateKey, release: PrivateKey) -> Root:
    return Root.new(version, {"root": [root_key.public], "release": [release.public]})


def test_rotation_needs_old_and_new_root_keys() -> None:
    old, new, rel = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    state = TrustedState(sign_envelope(_root(1, old, rel).to_dict(), [old]))
    v2 = _root(2, new, rel).to_dict()
    with pytest.raises(SignatureError, match="replaces"):
        state.update_root(sign_envelope(v2, [new]))
    with pytest.raises(SignatureError, match="own new root keys"):
        state.update_root(sign_envelope(v2, [old]))
    state.update_root(sign_envelope(v2, [old, new]))
    assert state.root.version == 2


def test_rotation_cannot_skip_or_go_back() -> None:
    old, rel = PrivateKey.generate(), PrivateKey.generate()
    state = TrustedState(sign_envelope(_root(1, old, rel).to_dict(), [old]))
    with pytest.raises(RollbackError):
        state.update_root(sign_envelope(_root(3, old, rel).to_dict(), [old]))
    with pytest.raises(RollbackError):
        state.update_root(sign_envelope(_root(1, old, rel).to_dict(), [old]))


def test_threshold_two_of_three() -> None:
    keys = [PrivateKey.generate() for _ in range(3)]
    rel = PrivateKey.generate()
    root = Root.new(1, {"root": [k.public for k in keys], "release": [rel.public]}, {"root": 2})
    with pytest.raises(SignatureError):
        TrustedState(sign_envelope(root.to_dict(), [keys[0]]))
    # the same key twice does not count twice
    data = sign_envelope(root.to_dict(), [keys[0], keys[0]])
    with pytest.raises(SignatureError):
        TrustedState(data)
    assert TrustedState(sign_envelope(root.to_dict(), [keys[0], keys[2]])).root.version == 1
