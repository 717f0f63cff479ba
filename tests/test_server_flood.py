"""PING floods over real sockets: never-reading clients cannot take the
server's time from a legitimate client (the frame rate, the paused reader)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import pytest_twisted
from test_server_integration import Running
from test_server_integration import running as running  # the fixture
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from pigeonpush.rpc import PushItem, PushStatus
from pigeonpush.server.session import Session
from pigeonpush.server.settings import ServerSettings
from pigeonpush.wire.frames import Push as PushFrame
from support.waiting import wait_for

#: Real daemons or processes: run where slow tests run (docs/development.rst).
pytestmark = pytest.mark.slow

FLOODERS = 20
FLOOD_SECONDS = 4.0


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


@pytest_twisted.ensureDeferred
async def test_never_reading_pingers_leave_a_legitimate_client_its_push(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twisted.internet import reactor

    settings = ServerSettings()
    hub = running.server.hub
    frames = {"pings": 0}
    pinged = hub.pinged

    def counting(session: Session) -> None:
        frames["pings"] += 1
        pinged(session)

    monkeypatch.setattr(hub, "pinged", counting)
    pairs = []
    for n in range(FLOODERS):
        client_id = f"flooder-{n}"
        await running.store.issue_token(client_id, f"token-{n}", 600)
        pairs.append(f"{client_id}:token-{n}")
    alice = await running.login("alice")

    flooders = _Collect()
    script = str(Path(__file__).parent / "support" / "flooder.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    args = [sys.executable, script, "127.0.0.1", str(running.client_port), str(FLOOD_SECONDS)]
    started = reactor.seconds()
    reactor.spawnProcess(flooders, sys.executable, [*args, *pairs], env=env)
    try:
        await wait_for(
            lambda: sum(name.startswith("flooder-") for name in hub.sessions) == FLOODERS,
            timeout=10,
            what="the flooders' logins",
        )
        await wait_for(lambda: frames["pings"] > 1000, timeout=10, what="the flood")

        for n in range(3):  # while they flood, a legitimate client gets its PUSH at once
            sent = reactor.seconds()
            message_id = f"01HZZZZZZZZZZZZZZZZZZZZZZ{n}"
            assert await running.push(PushItem("alice", message_id, "t", "x")) == [
                PushStatus.WRITTEN
            ]
            assert await alice.next_frame(timeout=5) == PushFrame(message_id, "t", "x")
            assert reactor.seconds() - sent < 1.0
    finally:
        await flooders.ended
    elapsed = reactor.seconds() - started
    sent_bytes = [int(line) for line in flooders.out.split()]
    assert len(sent_bytes) == FLOODERS, flooders.err.decode()
    # Each flooder is read at the frame rate after its burst, whatever it sends.
    bound = FLOODERS * (settings.frame_burst + settings.frame_rate * elapsed)
    assert frames["pings"] <= bound, (frames["pings"], bound, sum(sent_bytes) // 5)
    assert sum(sent_bytes) // 5 > 10 * frames["pings"]  # they did send far more
