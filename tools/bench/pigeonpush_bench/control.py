"""The benchmark's side of a load generator process (see ``loadgen``).

``start_loadgen`` spawns ``python -m pigeonpush_bench.loadgen`` through the
run's ProcessSet and returns a ``LoadGenerator`` whose ``call`` sends one
command and fires with its result, or fails with ``LoadGenError`` (the
generator's error message) or ``LoadGenDied`` (with the tail of its log).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush_bench.processes import ManagedProcess, ProcessSet

log = Logger()

#: Seconds a generator may take to start and say so.
START_TIMEOUT = 30.0


class LoadGenError(RuntimeError):
    """A command failed in the generator; the message is the generator's."""


class LoadGenDied(RuntimeError):
    """The generator exited while commands were pending."""


ProgressCallback = Callable[["LoadGenerator", Mapping[str, Any]], None]


class LoadGenerator(ProcessProtocol):
    """JSON lines to the child's stdin, answers matched by id from its stdout."""

    def __init__(self, name: str, on_progress: ProgressCallback | None = None) -> None:
        self.name = name
        self.on_progress = on_progress
        self.started: defer.Deferred[None] = defer.Deferred()
        self.process: ManagedProcess | None = None
        self.last_progress: Mapping[str, Any] = {}
        self._buffer = b""
        self._next_id = 0
        self._pending: dict[int, defer.Deferred[dict[str, Any]]] = {}
        self._ended = False

    def call(self, command: str, **arguments: Any) -> defer.Deferred[dict[str, Any]]:
        if self._ended or self.transport is None:
            return defer.fail(LoadGenDied(f"{self.name} is not running"))
        self._next_id += 1
        ident = self._next_id
        answer: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._pending[ident] = answer
        line = json.dumps({"id": ident, "cmd": command, **arguments}, separators=(",", ":"))
        self.transport.write(line.encode() + b"\n")
        return answer

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._line(line)

    def _line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            log.warn("{name} wrote a line that is not JSON: {line!r}", name=self.name, line=line)
            return
        event = message.get("event")
        if event == "started":
            if not self.started.called:
                self.started.callback(None)
            return
        if event == "progress":
            self.last_progress = message
            if self.on_progress is not None:
                self.on_progress(self, message)
            return
        answer = self._pending.pop(message.get("id"), None)
        if answer is None:
            log.warn("{name} answered an unknown command: {line!r}", name=self.name, line=line)
            return
        if message.get("ok"):
            answer.callback(message.get("result") or {})
        else:
            answer.errback(LoadGenError(f"{self.name}: {message.get('error')}"))

    def processEnded(self, reason: Failure) -> None:
        self._ended = True
        tail = self.process.log_tail() if self.process is not None else ""
        error = LoadGenDied(f"{self.name} exited ({reason.getErrorMessage()}); log:\n{tail}")
        pending, self._pending = self._pending, {}
        for answer in pending.values():
            answer.errback(error)
        if not self.started.called:
            self.started.errback(error)

    def finish(self) -> None:
        """Close the child's stdin: it closes its connections and exits."""
        if not self._ended and self.transport is not None:
            self.transport.closeStdin()


async def start_loadgen(
    processes: ProcessSet,
    clock: IReactorTime,
    name: str,
    on_progress: ProgressCallback | None = None,
) -> LoadGenerator:
    generator = LoadGenerator(name, on_progress)
    generator.process = processes.spawn(
        name, [sys.executable, "-m", "pigeonpush_bench.loadgen"], protocol=generator
    )
    generator.started.addTimeout(START_TIMEOUT, clock)
    await generator.started
    return generator
