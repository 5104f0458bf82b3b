"""Field scenarios reuse the node tests' world: a real hub on 127.0.0.1 and real centres."""

from tests.hub.conftest import pg_admin_url, pg_url  # noqa: F401
from tests.node.conftest import world, world_any_db  # noqa: F401
