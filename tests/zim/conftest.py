"""ZIM book tests reuse the node tests' world: a real hub on 127.0.0.1 and real centres."""

from tests.node.conftest import world  # noqa: F401
