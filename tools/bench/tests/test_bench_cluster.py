"""The run's context: its time bound, and what it asks Redis about what is left."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from pigeonpush_bench.cluster import RedisProbe, Run, RunTimeout, Settings
from pigeonpush_bench.processes import ProcessSet
from pigeonpush_bench.report import Progress
from support.servers import RedisServer


def test_the_run_bound_cuts_every_wait(tmp_path: Path) -> None:
    clock = Clock()
    run = Run(
        clock,
        ProcessSet(clock, tmp_path),
        Progress(io.StringIO(), clock, enabled=False),
        Settings(timeout=30),
    )
    assert run.left() == 30
    clock.advance(29.5)
    assert run.left() == 0.5
    clock.advance(0.5)
    with pytest.raises(RunTimeout, match="exceeded --timeout 30s"):
        run.left()


@pytest_twisted.ensureDeferred
async def test_the_probe_counts_what_waits_for_an_ack_and_what_the_queue_holds(
    redis_server: RedisServer, redis_url: str
) -> None:
    probe = await RedisProbe.open(redis_server.port)
    try:
        assert await probe.wait_ack_total() == 0
        assert await probe.queue_state() == (0, 0, 0)
        redis_server.command("SADD", "PIGEON:WAIT_ACK:{a}", "m1", "m2")
        redis_server.command("SADD", "PIGEON:WAIT_ACK:{b}", "m3")
        redis_server.command("SADD", "PIGEON:OTHER:c", "m4")
        for index in range(3):
            redis_server.command("XADD", "PIGEON:QUEUE:{0}", "*", "id", str(index))
        redis_server.command("XGROUP", "CREATE", "PIGEON:QUEUE:{0}", "delivery", "0")
        redis_server.command(
            "XREADGROUP", "GROUP", "delivery", "w", "COUNT", "2", "STREAMS", "PIGEON:QUEUE:{0}", ">"
        )

        assert await probe.wait_ack_total() == 3
        # Three entries, two read by delivery and not yet acknowledged.
        assert await probe.queue_state() == (3, 2, 2)
    finally:
        await probe.close()
