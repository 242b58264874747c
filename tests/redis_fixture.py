"""A real ``redis-server`` per test: own free port, own directory, AOF on, ACLs on.

``appendfsync always`` (the platform's default, docs/state.rst): a write the
server acknowledged is in the append-only file, which is what update-then-
release promises.  The server is shut down and its directory removed after
the test, also when the test fails.
"""

from __future__ import annotations

import pytest

from worker.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path):
    srv = RedisServer(tmp_path / "redis", appendfsync="always")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(remove=True)
