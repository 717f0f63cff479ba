"""AMP between the benchmark and its load generators (``commands``,
``control``, ``loadgen.Controller``): in memory, then with a real child."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols import amp
from twisted.test import iosim

from pigeonpush_bench import commands
from pigeonpush_bench.control import LoadGenDied, LoadGenerator, LoadGenError, start_loadgen
from pigeonpush_bench.loadgen import Controller
from pigeonpush_bench.processes import ProcessSet


class _Blob(amp.Command):
    arguments = [(b"value", commands.Json())]
    response = [(b"value", commands.Json()), (b"none", commands.Json(optional=True))]


def test_a_json_value_past_amps_value_limit_is_split_over_keys() -> None:
    value = {"text": "x" * 200_000, "nested": [1, {"a": None}]}
    box = _Blob.makeArguments({"value": value}, None)
    assert set(box) == {b"value", b"value.1", b"value.2", b"value.3"}
    assert all(len(part) <= 0xFFFF for part in box.values())
    assert _Blob.parseArguments(box, None) == {"value": value}
    answer = _Blob.makeResponse({"value": [], "none": None}, None)
    assert answer == {b"value": b"[]"}
    assert _Blob.parseResponse(answer, None) == {"value": [], "none": None}


def _connected(child: amp.AMP, parent: amp.AMP) -> iosim.IOPump:
    _server, _client, pump = iosim.connectedServerAndClient(lambda: child, lambda: parent)
    return pump


def _result(answer: defer.Deferred[Any], pump: iosim.IOPump) -> Any:
    results: list[Any] = []
    answer.addBoth(results.append)
    pump.flush()
    assert results, "no answer"
    return results[0]


@pytest_twisted.ensureDeferred
async def test_the_generator_answers_every_command_or_says_why_not() -> None:
    from twisted.internet import reactor

    controller = Controller(reactor)
    parent = amp.AMP()
    pump = _connected(controller, parent)

    refused = _result(parent.callRemote(commands.Connect, protocol="smtp", count=1), pump)
    assert refused.check(commands.CommandFailed)
    assert "protocol must be one of" in refused.getErrorMessage()
    no_reglog = _result(parent.callRemote(commands.Connect, protocol="pigeon", count=1), pump)
    assert "needs reglog" in no_reglog.getErrorMessage()
    bad = _result(
        parent.callRemote(commands.PublishApi, api="x", key="k", clients=0, messages=1), pump
    )
    assert "clients must be positive" in bad.getErrorMessage()

    stats = _result(parent.callRemote(commands.Stats), pump)
    assert stats["ready"] == 0 and stats["received"] == 0
    assert stats["first_receipt"] is None and stats["latency"]["count"] == 0
    assert _result(parent.callRemote(commands.Reset), pump) == {}
    assert _result(parent.callRemote(commands.Close), pump) == {"fleets": 0}

    assert not controller.finished.called
    controller.connectionLost()
    assert controller.finished.called


def test_the_parent_hears_started_and_progress_and_names_its_errors() -> None:
    heard: list[tuple[str, dict[str, Any]]] = []
    generator = LoadGenerator("gen-1", lambda g, message: heard.append((g.name, dict(message))))
    child = amp.AMP()
    pump = _connected(child, generator.amp)
    # Not spawned: ``call`` needs a process transport.
    generator.transport = object()  # type: ignore[assignment]

    child.callRemote(commands.Started, pid=1234)
    child.callRemote(commands.Progress, ready=3, failed=1)
    pump.flush()
    assert generator.started.called and generator.pid == 1234
    assert heard == [("gen-1", {"ready": 3, "failed": 1})]
    assert generator.last_progress == {"ready": 3, "failed": 1}

    unknown = _result(generator.call("dance"), pump)
    assert unknown.check(LoadGenError)
    assert unknown.getErrorMessage() == "gen-1: unknown command 'dance'"
    wrong = _result(generator.call("stats", colour="blue"), pump)
    assert wrong.check(LoadGenError) and "colour" in wrong.getErrorMessage()
    missing = _result(generator.call("connect", protocol="mqtt"), pump)
    assert missing.check(LoadGenError) and "count" in missing.getErrorMessage()
    typed = _result(generator.call("connect", protocol="mqtt", count=1, heartbeat="5"), pump)
    assert typed.check(LoadGenError) and "not a number: '5'" in typed.getErrorMessage()
    # A command the child cannot run: its reason, named after the generator.
    failed = _result(generator.call("reset"), pump)
    assert failed.check(LoadGenError)
    assert failed.getErrorMessage().startswith("gen-1: ")


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_real_generator_is_driven_over_its_stdio(tmp_path: Path) -> None:
    from twisted.internet import reactor

    processes = ProcessSet(reactor, tmp_path)
    try:
        generator = await start_loadgen(processes, reactor, "gen")
        assert generator.process is not None and generator.pid == generator.process.pid
        stats = await generator.call("stats")
        assert stats["ready"] == 0 and stats["cpu"] > 0
        with pytest.raises(LoadGenError, match=r"^gen: ValueError: protocol must be one of"):
            await generator.call("connect", protocol="smtp", count=1)
        # Concurrent commands are matched to their answers.
        answers = await defer.gatherResults(
            [generator.call("stats"), generator.call("reset"), generator.call("close")]
        )
        assert answers[1:] == [{}, {"fleets": 0}]
        generator.finish()
        assert await generator.process.ended == 0
    finally:
        await processes.stop_all()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_generator_that_dies_fails_every_waiting_command(tmp_path: Path) -> None:
    from twisted.internet import reactor

    # A reglog that accepts and never answers: the connect waits on it.
    silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    processes = ProcessSet(reactor, tmp_path)
    try:
        generator = await start_loadgen(processes, reactor, "doomed")
        reglog = f"http://127.0.0.1:{silent.getHost().port}"
        waiting = [
            generator.call("connect", protocol="pigeon", count=2, reglog=reglog),
            generator.call("connect", protocol="pigeon", count=1, reglog=reglog, start=2),
        ]
        await generator.call("stats")
        assert generator.process is not None
        await processes.stop(generator.process, signum=9)
        for answer in waiting:
            with pytest.raises(LoadGenDied, match=r"^doomed exited"):
                await answer
        with pytest.raises(LoadGenDied, match="doomed is not running"):
            await generator.call("stats")
    finally:
        await processes.stop_all()
        await silent.stopListening()
