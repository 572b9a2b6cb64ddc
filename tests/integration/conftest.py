"""Fixtures of the integration tests that run the task entry points in-process."""
from __future__ import annotations

from typing import Iterator

import pytest

from lab.services import RedisServer
from tests.conftest import require


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the in-process tests (tests/integration/inprocess)."""
    require("redis-server")
    with RedisServer() as server:
        yield server


@pytest.fixture
def r(redis_server):
    """A client of the session's redis-server, emptied first (a test file may define its own)."""
    from workers import store

    client = store.client(redis_server.url)
    client.flushdb()
    return client
