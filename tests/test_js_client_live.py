"""The JavaScript client (clients/js) against a live ``pigeon-standalone
--websocket``: Node's test runner runs clients/js/test-live/ with the
standalone's addresses in its environment (real sockets, no fakes)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from test_standalone_e2e import Spawner
from twisted.internet.utils import getProcessOutputAndValue

from support.servers import free_port

#: Real daemons or processes: run where slow tests run (docs/development.rst).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
API_KEY = "live-test-key-0123456789"
#: Seconds Node may take for the whole live suite.
NODE_TIMEOUT = 90


@pytest_twisted.async_yield_fixture
async def spawner(tmp_path: Path) -> AsyncIterator[Spawner]:
    from twisted.internet import reactor

    spawner = Spawner(reactor, tmp_path)
    try:
        yield spawner
    finally:
        await spawner.close()


@pytest_twisted.ensureDeferred
async def test_the_js_client_receives_acks_and_sends_uplinks_over_websocket(
    spawner: Spawner,
) -> None:
    from twisted.internet import reactor

    node = shutil.which("node")
    assert node is not None, "Debian's nodejs package is needed (scripts/test installs it)"
    ports = {**spawner.ports(), "websocket": free_port()}
    standalone = await spawner.start(f"--api-key={API_KEY}", ports=ports)
    env = {
        **os.environ,
        "PIGEONPUSH_REGLOG_URL": standalone.reglog_url,
        "PIGEONPUSH_API_URL": standalone.api_url,
        "PIGEONPUSH_API_KEY": API_KEY,
    }
    version, _, _ = await getProcessOutputAndValue(
        node, ["-e", "process.stdout.write(process.versions.node)"], reactor=reactor
    )
    major, minor = (int(part) for part in version.decode().split(".")[:2])
    # Node 22 has a global WebSocket, Node 20.10+ behind a flag; older ones
    # use the ws package (the test imports it then).
    flags = ["--experimental-websocket"] if (20, 10) <= (major, minor) < (22, 0) else []
    running = getProcessOutputAndValue(
        node,
        [*flags, "--test", "test-live/"],
        env=env,
        path=str(ROOT / "clients" / "js"),
        reactor=reactor,
    )
    running.addTimeout(NODE_TIMEOUT, reactor)
    out, err, code = await running
    assert code == 0, (out + err).decode(errors="replace") + standalone.daemon.report()
    assert b"# pass 3" in out, out.decode(errors="replace")
    standalone.check_clean_log()
