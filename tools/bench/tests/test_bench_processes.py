"""The benchmark's process harness: children start in their own groups, become
ready within a bound, and are all stopped, escalating to SIGKILL if need be."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from pigeonpush_bench import services
from pigeonpush_bench.processes import (
    DEFAULT_EPHEMERAL,
    LOWEST_PORT,
    ManagedProcess,
    ProcessSet,
    StartError,
    ephemeral_range,
    free_port,
    marked_pids,
    popen,
    port_candidates,
    port_open,
    stop_popen,
    wait_port,
    wait_until,
)
from support.servers import pid_alive
from support.waiting import wait_for

# Starts daemons or many processes: tox runs it in fewer environments.
pytestmark = pytest.mark.slow


def _reactor():  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    return reactor


@pytest_twisted.ensureDeferred
async def test_stop_all_ends_every_child_and_its_group(tmp_path: Path) -> None:
    reactor = _reactor()
    processes = ProcessSet(reactor, tmp_path)
    sleeper = processes.spawn("sleeper", ["sleep", "60"])
    forker = processes.spawn(
        "forker", ["sh", "-c", "sleep 60 & echo $! > grandchild.pid; wait"], cwd=tmp_path
    )
    pid_file = tmp_path / "grandchild.pid"
    await wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), what="grandchild")
    grandchild = int(pid_file.read_text())

    # Each child makes its own group once its launcher runs, which on a busy
    # machine can be after the other child has already forked.
    await wait_for(lambda: os.getpgid(sleeper.pid) == sleeper.pid, what="sleeper's own group")
    assert sleeper.pid != os.getpgid(0)
    assert os.getpgid(grandchild) == forker.pid
    # A process in the middle of exec (the launcher becoming ``sleep``) shows
    # an empty environment for an instant, so look until all three show.
    expected = sorted([sleeper.pid, forker.pid, grandchild])
    await wait_for(lambda: sorted(marked_pids(tmp_path)) == expected, what="all three marked")

    await processes.stop_all()

    assert sleeper.exit_code == -signal.SIGTERM
    assert forker.exit_code == -signal.SIGTERM
    await wait_for(lambda: not pid_alive(grandchild), what="grandchild gone")
    assert not any(pid_alive(pid) for pid in (sleeper.pid, forker.pid))
    assert marked_pids(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_a_child_ignoring_sigterm_is_killed_after_the_bound(tmp_path: Path) -> None:
    reactor = _reactor()
    processes = ProcessSet(reactor, tmp_path)
    stubborn = processes.spawn(
        "stubborn",
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)",
        ],
    )
    await wait_for(lambda: "ready" in stubborn.log_path.read_text(), what="stubborn ready")

    code = await processes.stop(stubborn, timeout=0.5)

    assert code == -signal.SIGKILL
    assert not pid_alive(stubborn.pid)


def test_a_child_still_in_our_group_is_signalled_itself(tmp_path: Path) -> None:
    """A stop that comes before the launcher made the child's group still ends it."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert os.getpgid(child.pid) != child.pid
        process = ManagedProcess(
            name="early",
            argv=["sleep", "60"],
            log_path=tmp_path / "early.log",
            pid=child.pid,
            ended=Deferred(),
        )

        assert process.signal(signal.SIGTERM)

        assert child.wait(timeout=10) == -signal.SIGTERM
        assert not process.signal(signal.SIGTERM)
    finally:
        child.kill()
        child.wait()


@pytest_twisted.ensureDeferred
async def test_a_child_that_exits_while_awaited_fails_the_wait_with_its_log(
    tmp_path: Path,
) -> None:
    reactor = _reactor()
    processes = ProcessSet(reactor, tmp_path)
    failing = processes.spawn("failing", ["sh", "-c", "echo 'cannot bind port'; exit 3"])

    with pytest.raises(StartError) as caught:
        await wait_until(reactor, lambda: False, timeout=30, what="the port", watch=[failing])

    assert "failing exited with 3" in str(caught.value)
    assert "cannot bind port" in str(caught.value)
    await processes.stop_all()


@pytest_twisted.ensureDeferred
async def test_a_condition_that_never_holds_fails_at_the_bound(tmp_path: Path) -> None:
    reactor = _reactor()
    with pytest.raises(StartError, match=r"the moon did not happen within 0\.2s"):
        await wait_until(reactor, lambda: False, timeout=0.2, what="the moon", interval=0.05)


def test_a_child_dies_with_the_benchmark() -> None:
    """Even a SIGKILLed benchmark leaves nothing running (parent-death signal)."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-m', 'pigeonpush_bench.launch',"
            " str(os.getpid()), 'sleep', '60'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 10
        # Until the wrapper has become ``sleep`` (its death signal is armed by then).
        while b"sleep" not in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0]:
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.02)
        assert os.getpgid(child) == child
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while pid_alive(child):
            assert time.monotonic() < deadline, "the child outlived its parent"
            time.sleep(0.02)
    finally:
        parent.kill()
        parent.wait(timeout=10)


def test_the_launcher_explains_its_usage() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pigeonpush_bench.launch"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "usage: python -m pigeonpush_bench.launch PARENT_PID COMMAND" in result.stderr


@pytest_twisted.ensureDeferred
async def test_redis_and_mosquitto_start_answer_and_stop(tmp_path: Path) -> None:
    reactor = _reactor()
    processes = ProcessSet(reactor, tmp_path)
    redis = await services.start_redis(processes, reactor)
    broker = await services.start_mosquitto(processes, reactor, max_inflight=32)
    assert await port_open(reactor, services.HOST, redis.port)
    assert await port_open(reactor, services.HOST, broker.port)

    await processes.stop_all()

    assert not await port_open(reactor, services.HOST, redis.port)
    assert not await port_open(reactor, services.HOST, broker.port)
    assert redis.process.exit_code == 0 and broker.process.exit_code == 0


@pytest_twisted.ensureDeferred
async def test_zookeeper_starts_answers_ruok_and_stops(tmp_path: Path) -> None:
    reactor = _reactor()
    processes = ProcessSet(reactor, tmp_path)
    zookeeper = await services.start_zookeeper(processes, reactor)
    assert zookeeper.hosts == f"127.0.0.1:{zookeeper.port}"

    await processes.stop_all()

    assert not pid_alive(zookeeper.process.pid)
    assert not await port_open(reactor, services.HOST, zookeeper.port)


def test_mosquitto_is_configured_like_the_pigeon_server(tmp_path: Path) -> None:
    config = services.mosquitto_config(1883, tmp_path / "m.log", 32).splitlines()
    for line in (
        "listener 1883 127.0.0.1",
        "set_tcp_nodelay true",
        "max_connections -1",
        "persistence false",
        f"log_dest file {tmp_path / 'm.log'}",
        "max_inflight_messages 32",
        "max_queued_messages 0",
    ):
        assert line in config


def test_a_missing_program_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(services.MissingProgram, match="apt-get install -y mosquitto"):
        services.require("mosquitto", "mosquitto")


# --- outside the reactor (the test suite's session fixtures) -------------------------

_LISTENER = (
    "import socket, subprocess, sys, time\n"
    "grandchild = subprocess.Popen(['sleep', '60'])\n"
    "print(grandchild.pid, flush=True)\n"
    "server = socket.socket()\n"
    "server.bind(('127.0.0.1', int(sys.argv[1])))\n"
    "server.listen()\n"
    "time.sleep(60)\n"
)


def test_popen_waits_for_the_port_and_stops_the_whole_group(tmp_path: Path) -> None:
    port = free_port()
    output = tmp_path / "listener.out"
    child = popen([sys.executable, "-c", _LISTENER, str(port)], output=output, cwd=tmp_path)
    try:
        wait_port(child, "127.0.0.1", port, timeout=30, what="the listener", output=output)
        assert os.getpgid(child.pid) == child.pid
        grandchild = int(output.read_text().split()[0])
        assert os.getpgid(grandchild) == child.pid
    finally:
        code = stop_popen(child, timeout=10)
    assert code == -signal.SIGTERM
    deadline = time.monotonic() + 10
    while pid_alive(grandchild):
        assert time.monotonic() < deadline, "the grandchild outlived the stop"
        time.sleep(0.02)
    # Stopped before: the status again, and no signal to a pid that may be reused.
    assert stop_popen(child) == -signal.SIGTERM


def test_wait_port_quotes_the_output_of_a_child_that_exits(tmp_path: Path) -> None:
    output = tmp_path / "failing.out"
    child = popen([sys.executable, "-c", "import sys; sys.exit('cannot bind port')"], output=output)
    with pytest.raises(StartError, match="the server exited with 1 before listening") as caught:
        wait_port(child, "127.0.0.1", free_port(), timeout=30, what="the server", output=output)
    assert "cannot bind port" in str(caught.value)
    assert stop_popen(child) == 1


def test_wait_port_gives_up_at_the_bound(tmp_path: Path) -> None:
    child = popen(["sleep", "60"], output=tmp_path / "sleep.out")
    try:
        with pytest.raises(StartError, match=r"did not listen on 127\.0\.0\.1:\d+ within 0\.3s"):
            wait_port(child, "127.0.0.1", free_port(), timeout=0.3, what="sleep")
    finally:
        assert stop_popen(child) == -signal.SIGTERM


def test_free_ports_are_outside_the_ephemeral_range_and_never_repeat() -> None:
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(200)]

    assert len(set(ports)) == len(ports)
    assert all(not low <= port <= high for port in ports)
    assert all(port >= LOWEST_PORT for port in ports)


def test_a_free_port_is_not_one_that_a_listener_holds() -> None:
    import socket

    held = []
    try:
        for port in port_candidates(ephemeral_range())[:50]:
            listener = socket.socket()
            try:
                listener.bind(("127.0.0.1", port))
            except OSError:
                listener.close()
                continue
            listener.listen()
            held.append(listener)
        taken = {listener.getsockname()[1] for listener in held}

        assert free_port(candidates=range(LOWEST_PORT, LOWEST_PORT + 60)) not in taken
    finally:
        for listener in held:
            listener.close()


def test_the_kernels_range_is_read_and_a_missing_one_has_the_default(tmp_path: Path) -> None:
    table = tmp_path / "range"
    table.write_text("40000\t50000\n")

    assert ephemeral_range(table) == (40000, 50000)
    assert ephemeral_range(tmp_path / "absent") == DEFAULT_EPHEMERAL


def test_ports_are_looked_for_above_an_ephemeral_range_that_starts_low() -> None:
    assert port_candidates((32768, 60999)) == range(LOWEST_PORT, 32768)
    assert port_candidates((1024, 60999)) == range(61000, 65536)


def test_no_free_port_is_a_start_error() -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        with pytest.raises(StartError, match="no free port"):
            free_port(candidates=range(port, port + 1))
