"""The benchmark's side of a load generator process (see ``loadgen``).

``start_loadgen`` spawns ``python -m pigeonpush_bench.loadgen`` through the
run's ProcessSet and returns a ``LoadGenerator``: AMP (``commands``) over the
child's stdin and stdout. Its ``call`` sends one command and fires with the
answer, or fails with ``LoadGenError`` (the generator's error message) or
``LoadGenDied`` (with the tail of its log: a child that exits fails every
command still waiting for its answer).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IProcessTransport, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from pigeonpush_bench.commands import COMMANDS, CommandFailed, Progress, Started
from pigeonpush_bench.processes import ManagedProcess, ProcessSet

log = Logger()

#: Seconds a generator may take to start and say so.
START_TIMEOUT = 30.0


class LoadGenError(RuntimeError):
    """A command failed in the generator; the message is the generator's."""


class LoadGenDied(RuntimeError):
    """The generator exited while commands were pending."""


ProgressCallback = Callable[["LoadGenerator", Mapping[str, Any]], None]


@implementer(IAddress)
@attrs.frozen
class ChildAddress:
    """Either end of the pipes to a child (a process transport has no address)."""

    name: str


class _ChildStdin:
    """The transport the parent's AMP writes to: the child's stdin."""

    def __init__(self, process: IProcessTransport, name: str) -> None:
        self._process = process
        self._address = ChildAddress(name)

    def write(self, data: bytes) -> None:
        self._process.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self._process.writeSequence(list(data))

    def loseConnection(self) -> None:
        self._process.closeStdin()

    def getPeer(self) -> IAddress:
        return self._address

    def getHost(self) -> IAddress:
        return self._address


class _ParentAMP(amp.AMP):
    """Answers what the child says on its own: that it started, its progress."""

    def __init__(self, generator: LoadGenerator) -> None:
        super().__init__()
        self._generator = generator

    @Started.responder
    def started(self, pid: int) -> dict[str, Any]:
        self._generator.child_started(pid)
        return {}

    @Progress.responder
    def progress(self, ready: int, failed: int) -> dict[str, Any]:
        self._generator.progress({"ready": ready, "failed": failed})
        return {}


class LoadGenerator(ProcessProtocol):
    """A ProcessProtocol carrying AMP: the child's stdout feeds the parent's
    AMP, which writes to the child's stdin."""

    def __init__(self, name: str, on_progress: ProgressCallback | None = None) -> None:
        self.name = name
        self.on_progress = on_progress
        self.started: defer.Deferred[None] = defer.Deferred()
        self.process: ManagedProcess | None = None
        self.pid: int | None = None
        self.last_progress: Mapping[str, Any] = {}
        self.amp = _ParentAMP(self)
        self._ended = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.amp.makeConnection(_ChildStdin(self.transport, self.name))

    def call(self, command: str, **arguments: Any) -> defer.Deferred[dict[str, Any]]:
        """Run ``command`` (a name of ``commands.COMMANDS``) in the generator."""
        if self._ended or self.transport is None:
            return defer.fail(LoadGenDied(f"{self.name} is not running"))
        kind = COMMANDS.get(command)
        if kind is None:
            return defer.fail(LoadGenError(f"{self.name}: unknown command {command!r}"))
        try:
            answer: defer.Deferred[dict[str, Any]] = self.amp.callRemote(kind, **arguments)
        except (amp.InvalidSignature, KeyError, ValueError, TypeError) as e:
            # Left out, unknown or of the wrong type: refused before it is sent.
            return defer.fail(LoadGenError(f"{self.name}: {command}: {type(e).__name__}: {e}"))

        def failed(reason: Failure) -> Failure:
            # Its own reason, AMP's for a command it does not know, or the
            # arguments this side refused to send.
            reason.trap(
                CommandFailed, amp.RemoteAmpError, amp.UnhandledCommand, amp.InvalidSignature
            )
            if reason.check(amp.InvalidSignature):
                raise LoadGenError(f"{self.name}: {command}: {reason.getErrorMessage()}")
            raise LoadGenError(f"{self.name}: {reason.getErrorMessage()}")

        answer.addErrback(failed)
        return answer

    def child_started(self, pid: int) -> None:
        self.pid = pid
        if not self.started.called:
            self.started.callback(None)

    def progress(self, message: Mapping[str, Any]) -> None:
        self.last_progress = message
        if self.on_progress is not None:
            self.on_progress(self, message)

    def outReceived(self, data: bytes) -> None:
        self.amp.dataReceived(data)

    def processEnded(self, reason: Failure) -> None:
        self._ended = True
        tail = self.process.log_tail() if self.process is not None else ""
        error = LoadGenDied(f"{self.name} exited ({reason.getErrorMessage()}); log:\n{tail}")
        self.amp.connectionLost(Failure(error))
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
