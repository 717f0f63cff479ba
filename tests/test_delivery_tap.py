"""pigeon-delivery's options and service tree, and real twistd runs: it
registers in ZooKeeper, answers Pull, leaves on SIGTERM; and a worker killed
mid-batch loses nothing (another one reclaims its entries)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.python import usage

from pigeonpush.delivery.service import DeliveryWorker, LagGauge, RegistrationService
from pigeonpush.delivery.tap import Options, delivery_node_id, makeService
from pigeonpush.discovery import DiscoveryService, Node, open_discovery
from pigeonpush.notification.core import Notifications, Submission
from pigeonpush.notification.validate import Limits
from pigeonpush.rpc import Pull, decode_batch
from pigeonpush.rpcpool import AmpPool
from pigeonpush.services import Closer, GcTuning, Listener
from pigeonpush.store import open_store
from pigeonpush.store.model import Accepted
from support.server_double import ServerDouble
from support.servers import free_port, pid_alive
from support.waiting import wait_for


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_defaults() -> None:
    options = parse()
    assert options["rpc"] == "tcp:7201"
    assert options["rpc-advertise"] is None
    assert options["redis"] == "redis://127.0.0.1:6379/0"
    assert options["zookeeper"] == "127.0.0.1:2181"
    assert options["node-id"] == delivery_node_id("tcp:7201")
    assert options["node-id"].endswith("-7201")
    assert options["consumer"] == options["node-id"]
    assert (options["batch"], options["block"], options["claim-idle"]) == (100, 1.0, 30.0)
    assert options["push-timeout"] == 5.0
    assert options["schedule-interval"] == 0.25
    assert options["metrics"] == "tcp:7202:interface=127.0.0.1"


def test_a_node_id_without_a_port_uses_the_pid() -> None:
    import os

    assert delivery_node_id("tcp:0").endswith(f"-{os.getpid()}")
    assert delivery_node_id("unix:/tmp/sock").endswith(f"-{os.getpid()}")
    assert delivery_node_id("tcp:port=7301:interface=127.0.0.1").endswith("-7301")
    assert socket.gethostname()[:3] in delivery_node_id("tcp:7201")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--rpc", "nonsense:1"), "--rpc"),
        (("--metrics", "tcp:x"), "--metrics"),
        (("--rpc-advertise", "no-port"), "--rpc-advertise"),
        (("--redis", "http://x"), "--redis"),
        (("--zookeeper", "redis://x"), "--zookeeper"),
        (("--batch", "0"), "--batch"),
        (("--block", "0"), "must be positive"),
        (("--block", "40"), "shorter than --claim-idle"),
        (("--push-timeout", "-1"), "must be positive"),
        (("--schedule-interval", "0"), "must be positive"),
        (("--node-id", "a/b"), "--node-id"),
    ],
)
def test_bad_options_are_usage_errors(args: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(usage.UsageError, match=fragment):
        parse(*args)


def test_the_service_tree_and_its_stop_order() -> None:
    from support.reactors import MemoryReactorClock

    reactor = MemoryReactorClock()
    config = parse(
        "--redis", "memory:", "--zookeeper", "static:", "--rpc", "tcp:7301", "--metrics", "none"
    )
    service = makeService(config, reactor)
    kinds = [type(child) for child in service]  # type: ignore[attr-defined]
    # Stopped in reverse: leave discovery, stop Pull, finish the batch, then close.
    assert kinds == [
        Closer,
        DiscoveryService,
        DeliveryWorker,
        Listener,
        RegistrationService,
        LagGauge,
        GcTuning,
    ]
    with_metrics = makeService(parse("--redis", "memory:", "--zookeeper", "static:"), reactor)
    assert len(list(with_metrics)) == 8  # type: ignore[call-overload]


def test_stopping_finishes_the_loop_before_closing_the_store() -> None:
    from pigeonpush.store.interface import StoreError
    from support.reactors import MemoryReactorClock

    reactor = MemoryReactorClock()
    config = parse("--redis", "memory:", "--zookeeper", "static:", "--metrics", "none")
    service = makeService(config, reactor)
    (worker,) = [c for c in service if isinstance(c, DeliveryWorker)]  # type: ignore[attr-defined]
    store = worker.loop._store
    service.startService()
    reactor.advance(0)
    stopped = service.stopService()
    assert not stopped.called  # the loop waits out its read (--block 1.0)
    assert store.queue_lag().result == 0  # type: ignore[attr-defined]  # still open
    reactor.advance(1.0)
    assert stopped.called
    closed: list[Any] = []
    store.queue_lag().addErrback(closed.append)
    assert closed and closed[0].check(StoreError)


def start_twistd(cwd: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``twistd -n`` from this virtualenv, logging to ``log``."""
    twistd = str(Path(sys.executable).parent / "twistd")
    return subprocess.Popen(
        [twistd, "-n", "--pidfile=", f"--logfile={log}", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


async def accept(notifications: Notifications, to: list[str]) -> str:
    (accepted,) = await notifications.submit([Submission({"to": to, "title": "t", "text": "x"})])
    assert isinstance(accepted, Accepted)
    return accepted.message_id


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_twistd_registers_answers_pull_and_leaves_on_sigterm(
    tmp_path: Path, redis_url: str, zookeeper_hosts: str
) -> None:
    from twisted.internet import reactor

    store = open_store(redis_url, reactor)
    notifications = Notifications(store, reactor, Limits())
    message_id = await accept(notifications, ["offline-client"])
    rpc_port, metrics_port = free_port(), free_port()
    log = tmp_path / "delivery.log"
    process = start_twistd(
        tmp_path, log, "pigeon-delivery",
        "--rpc", f"tcp:{rpc_port}:interface=127.0.0.1", "--redis", redis_url,
        "--zookeeper", zookeeper_hosts, "--node-id", "worker-a", "--block", "0.2",
        "--metrics", f"tcp:{metrics_port}:interface=127.0.0.1",
    )  # fmt: skip
    discovery = open_discovery(zookeeper_hosts, reactor)
    live: list[Mapping[str, Node]] = []
    pool = AmpPool(reactor)
    try:
        await discovery.watch("delivery", live.append)

        def registered() -> bool:
            assert process.poll() is None, log.read_text()
            return bool(live and "worker-a" in live[-1])

        await wait_for(registered, timeout=30, interval=0.1, what="the delivery node")
        address = live[-1]["worker-a"].data["rpc"]
        assert address == f"127.0.0.1:{rpc_port}"

        async def drained() -> bool:
            return await store.queue_lag() == 0

        await wait_for(drained, timeout=10, what="the worker to consume the queue")
        answer = await pool.call(address, Pull, clientId="offline-client", limit=5, inFlight=[])
        assert [item.message_id for item in decode_batch(answer["batch"])] == [message_id]

        process.send_signal(signal.SIGTERM)
        await wait_for(lambda: process.poll() is not None, timeout=20, what="twistd to exit")
        await wait_for(lambda: "worker-a" not in live[-1], timeout=10, what="the node to go")
        text = log.read_text()
        assert "Registered delivery node worker-a" in text
        assert "Main loop terminated" in text
    finally:
        stop(process)
        await pool.close()
        await discovery.close()
        await store.close()
    assert not pid_alive(process.pid)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_worker_killed_mid_batch_loses_nothing(
    tmp_path: Path, redis_url: str, zookeeper_hosts: str
) -> None:
    """The worker reads a batch and hangs in Push (the server holds its answer);
    it is SIGKILLed; a second worker reclaims the entries after --claim-idle and
    delivers them."""
    from twisted.internet import reactor

    from pigeonpush.delivery.gateway import AmpGateways

    store = open_store(redis_url, reactor)
    notifications = Notifications(store, reactor, Limits())
    double = ServerDouble(online=["mia"])
    double.hold()
    address = await double.listen(reactor)
    await store.issue_token("mia", "token", 60)
    await store.bind_session("mia", "token", address, 60)
    log = tmp_path / "doomed.log"
    process = start_twistd(
        tmp_path, log, "pigeon-delivery",
        "--rpc", f"tcp:{free_port()}:interface=127.0.0.1", "--redis", redis_url,
        "--zookeeper", zookeeper_hosts, "--node-id", "doomed", "--block", "0.2",
        "--claim-idle", "2", "--push-timeout", "60", "--metrics", "none",
    )  # fmt: skip
    pool = AmpPool(reactor, call_timeout=2)
    survivor: DeliveryWorker | None = None
    try:
        ids = [await accept(notifications, ["mia"]) for _ in range(3)]

        def stuck_in_push() -> bool:
            assert process.poll() is None, log.read_text()
            return len(double.items()) == 3

        await wait_for(stuck_in_push, timeout=30, interval=0.1, what="the doomed worker's push")
        process.kill()
        process.wait()
        assert await store.queue_lag() == 3  # read, never acknowledged
        double.release()
        double.batches.clear()

        survivor = DeliveryWorker(
            store, AmpGateways(pool), reactor, consumer="survivor", block=0.2, claim_idle=2
        )
        survivor.startService()

        async def delivered() -> Any:
            return await store.queue_lag() == 0 and len(double.written) == 3

        await wait_for(delivered, timeout=20, interval=0.1, what="the reclaimed entries")
        assert [message_id for _, message_id in double.written] == ids
        assert survivor.loop.handled == 3
    finally:
        stop(process)
        if survivor is not None:
            await survivor.stopService()
        await pool.close()
        await double.stop()
        await store.close()


def test_the_schedule_interval_reaches_the_due_time_poller() -> None:
    from support.reactors import MemoryReactorClock

    config = parse(
        "--redis", "memory:", "--zookeeper", "static:", "--rpc", "tcp:7301",
        "--metrics", "none", "--schedule-interval", "0.5",
    )  # fmt: skip
    service = makeService(config, MemoryReactorClock())
    (worker,) = [c for c in service if isinstance(c, DeliveryWorker)]  # type: ignore[attr-defined]
    assert worker.schedule.interval == 0.5
