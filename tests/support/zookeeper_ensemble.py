"""A throwaway ZooKeeper ensemble (quorum peers) on loopback, for failover tests.

Each node is Debian's ``QuorumPeerMain`` in a directory of its own (``zoo.cfg``,
``data/myid``, ``zookeeper.log``) on three free ports (client, peer, election),
started in its own session and stopped by its pid: SIGTERM, a bounded wait,
then SIGKILL. ``kill`` is the crash of one node (SIGKILL), ``start`` brings it
back on the same data directory and ports.

A node's role comes from the ``srvr`` four-letter word: ``leader``,
``follower``, or None while it does not serve (no quorum, still electing,
down). The blocking helpers here (``mode``, ``wait_serving``...) run outside
the reactor: tests call them through ``deferToThread``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from pigeonpush_bench import processes
from pigeonpush_bench import services as launch
from support.servers import (
    JAVA_BINARY,
    ZOOKEEPER_JARS,
    MissingServerBinary,
    _require,
    free_port,
    pid_alive,
    send_line,
)

HOST = "127.0.0.1"
#: ZooKeeper's tick (ms): elections and session bounds are multiples of it.
TICK_MS = 500
#: Sessions may ask between these bounds (ms); kazoo's asked timeout is clamped to them.
MIN_SESSION_MS = 2 * TICK_MS
MAX_SESSION_MS = 60_000
#: Seconds a node (or the ensemble) has to start serving on a shared, slow machine.
START_TIMEOUT = 45.0
#: Seconds a SIGTERMed node has to exit before it is SIGKILLed.
STOP_TIMEOUT = 10.0
SERVING_MODES = ("leader", "follower", "standalone")


def ensemble_config(node: EnsembleNode, peers: Sequence[EnsembleNode]) -> str:
    """zoo.cfg of one quorum peer."""
    lines = [
        f"tickTime={TICK_MS}",
        "initLimit=10",
        "syncLimit=5",
        f"minSessionTimeout={MIN_SESSION_MS}",
        f"maxSessionTimeout={MAX_SESSION_MS}",
        f"dataDir={node.data}",
        f"clientPort={node.client_port}",
        f"clientPortAddress={HOST}",
        "admin.enableServer=false",
        "4lw.commands.whitelist=ruok,srvr,stat,mntr,cons",
        "maxClientCnxns=0",
        # A restarted peer must be able to rejoin at once.
        "cnxTimeout=2000",
    ]
    lines += [f"server.{peer.myid}={HOST}:{peer.peer_port}:{peer.election_port}" for peer in peers]
    return "\n".join(lines) + "\n"


@attrs.define(eq=False)
class EnsembleNode:
    """One quorum peer."""

    myid: int
    directory: Path
    client_port: int = attrs.field(factory=free_port)
    peer_port: int = attrs.field(factory=free_port)
    election_port: int = attrs.field(factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and pid_alive(self.process.pid)

    def four_letters(self, word: bytes) -> str | None:
        """The answer to a four-letter word, or None when the node does not answer."""
        try:
            return send_line(HOST, self.client_port, word, timeout=2.0).decode("utf-8", "replace")
        except OSError:
            return None

    def mode(self) -> str | None:
        """``leader``, ``follower`` or None (down, electing, no quorum)."""
        answer = self.four_letters(b"srvr")
        if answer is None:
            return None
        for line in answer.splitlines():
            if line.startswith("Mode: "):
                return line[len("Mode: ") :].strip()
        return None  # "This ZooKeeper instance is not currently serving requests"

    def serves_session(self, session_id: int) -> bool:
        """Whether ``session_id``'s client is connected to this node (``cons``)."""
        answer = self.four_letters(b"cons")
        return answer is not None and f"sid=0x{session_id:x}" in answer

    def start(self, peers: Sequence[EnsembleNode]) -> None:
        if self.running:
            raise RuntimeError(f"ZooKeeper node {self.myid} is running already")
        java = _require(JAVA_BINARY, "default-jre-headless")
        if not os.path.exists(ZOOKEEPER_JARS[0]):
            raise MissingServerBinary(
                f"{ZOOKEEPER_JARS[0]} is missing: run 'apt-get install -y zookeeper'"
            )
        self.data.mkdir(parents=True, exist_ok=True)
        (self.data / "myid").write_text(f"{self.myid}\n")
        config = self.directory / "zoo.cfg"
        config.write_text(ensemble_config(self, peers))
        classpath = ":".join(jar for jar in ZOOKEEPER_JARS if os.path.exists(jar))
        argv = launch.zookeeper_argv(java, classpath, self.directory, config)
        main = argv.index("org.apache.zookeeper.server.ZooKeeperServerMain")
        argv[main] = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
        self.process = processes.popen(argv, output=self.directory / "zookeeper.log")

    def kill(self) -> None:
        """Crash the node (SIGKILL) and reap it."""
        if self.process is not None:
            processes.stop_popen(self.process, STOP_TIMEOUT, signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL."""
        if self.process is not None:
            processes.stop_popen(self.process, STOP_TIMEOUT)

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "zookeeper.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@attrs.define(eq=False)
class ZooKeeperEnsemble:
    """``size`` quorum peers on loopback; ``hosts`` is their connection string."""

    directory: Path
    size: int = 3
    nodes: list[EnsembleNode] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.nodes = [
            EnsembleNode(myid, self.directory / f"node{myid}") for myid in range(1, self.size + 1)
        ]

    @property
    def hosts(self) -> str:
        """The kazoo connection string ``h1:p1,h2:p2,h3:p3``."""
        return ",".join(node.address for node in self.nodes)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start every peer that is not running; wait until all of them serve."""
        for node in self.nodes:
            if not node.running:
                node.start(self.nodes)
        self.wait_serving(self.nodes, timeout)

    def start_node(self, node: EnsembleNode) -> None:
        node.start(self.nodes)

    def modes(self) -> dict[int, str | None]:
        return {node.myid: node.mode() for node in self.nodes}

    def leader(self) -> EnsembleNode | None:
        found = [node for node in self.nodes if node.mode() == "leader"]
        return found[0] if len(found) == 1 else None

    def followers(self) -> list[EnsembleNode]:
        return [node for node in self.nodes if node.mode() == "follower"]

    def wait_serving(self, nodes: Sequence[EnsembleNode], timeout: float = START_TIMEOUT) -> None:
        """Until each of ``nodes`` is a leader or a follower and one leader is
        among the running peers (blocking: call it in a thread)."""
        deadline = time.monotonic() + timeout
        while True:
            modes = {node.myid: node.mode() for node in nodes}
            if all(mode in SERVING_MODES for mode in modes.values()) and self.leader():
                return
            for node in nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(
                        f"ZooKeeper node {node.myid} exited {node.process.returncode}:\n"
                        f"{node.log_tail()}"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"ZooKeeper ensemble not serving within {timeout}s: modes {modes}\n"
                    + "\n".join(f"node {n.myid}:\n{n.log_tail()}" for n in nodes)
                )
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextlib.contextmanager
def running_ensemble(directory: Path, size: int = 3) -> Iterator[ZooKeeperEnsemble]:
    """An ensemble that serves, stopped by pid whatever happens inside."""
    ensemble = ZooKeeperEnsemble(directory, size)
    try:
        ensemble.start()
        yield ensemble
    finally:
        ensemble.stop()
