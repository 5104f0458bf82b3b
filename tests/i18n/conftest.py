"""Fixtures shared with the node tests: a real hub and centres made for it."""

from tests.node.conftest import world  # noqa: F401
