"""The benchmark's tests run from the repository: they share the main suite's
helpers (``tests/support``: bounded waits, throwaway Redis), its Redis
fixtures and its check that no test leaves an unhandled Failure in the log."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))

from support.logcheck import FailureCollector, collect_garbage
from support.servers import RedisServer


@pytest.fixture(autouse=True)
def logged_failures() -> Iterator[FailureCollector]:
    """Fail any test during which an unhandled Failure was logged."""
    collector = FailureCollector()
    collector.start()
    try:
        yield collector
        collect_garbage()
    finally:
        collector.stop()
    if collector.events:
        pytest.fail("unhandled failures were logged:\n" + collector.report())


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One throwaway redis-server for the session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    redis_server.flush()
    return redis_server.url
