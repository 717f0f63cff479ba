"""One chaos run: cluster up, clients online, send under faults, drain, report."""

from __future__ import annotations

import json
import math
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import attrs
from twisted.internet import defer
from twisted.internet.task import LoopingCall, deferLater

from pigeonpush_bench.processes import ManagedProcess, ProcessSet, StartError, wait_until
from pigeonpush_chaos import logscan
from pigeonpush_chaos.cluster import Cluster, Daemon
from pigeonpush_chaos.cluster import Settings as ClusterSettings
from pigeonpush_chaos.records import Journal, Tail
from pigeonpush_chaos.report import ChaosReport, FaultWindow, compute
from pigeonpush_chaos.schedule import FaultKind, plan, start_time
from pigeonpush_chaos.sender import Sender, batches
from pigeonpush_chaos.worker import client_id, transport_of

#: Seconds the coordinator waits between two reads of the client records.
READ_INTERVAL = 0.25


@attrs.define(slots=True)
class Options:
    clients: int = 300
    messages: int = 5_000
    per_process: int = 250
    send_seconds: float = 90.0
    batch: int = 100
    concurrency: int = 8
    faults: list[FaultKind] = attrs.field(factory=list)
    heartbeat: float = 5.0
    zookeeper_timeout: float = 3.0
    drain_period: float = 5.0
    #: Seconds between the start of the send and the first fault.
    lead: float = 10.0
    #: Seconds after a fault's recovery before the next may start.
    gap: float = 10.0
    restart_delay: float = 1.0
    #: Seconds, after the send and the last recovery, to wait for stragglers.
    drain: float = 30.0
    reconnect_bound: float = 10.0
    timeout: float = 900.0
    connect_rate: float = 200.0
    ttl: int = 3600
    log_level: str = "warn"
    #: uplinks each client sends (kept across reconnections until acknowledged)
    uplinks: int = 3
    uplink_interval: float = 20.0
    #: share of the clients that connect over WebSocket (see ``worker.transport_of``)
    websocket_share: float = 0.2
    #: the daemons' store URL asks for direct streams (unicasts to online
    #: devices go to the owning server's stream, not through delivery)
    direct_streams: bool = False

    def settings(self) -> dict[str, Any]:
        """What the JSON report repeats of the run's settings."""
        return {
            "clients": self.clients,
            "messages": self.messages,
            "perProcess": self.per_process,
            "sendSeconds": self.send_seconds,
            "batch": self.batch,
            "faults": [kind.value for kind in self.faults],
            "heartbeat": self.heartbeat,
            "zookeeperTimeout": self.zookeeper_timeout,
            "drainPeriod": self.drain_period,
            "restartDelay": self.restart_delay,
            "gap": self.gap,
            "drain": self.drain,
            "reconnectBound": self.reconnect_bound,
            "ttl": self.ttl,
            "uplinks": self.uplinks,
            "uplinkInterval": self.uplink_interval,
            "websocketShare": self.websocket_share,
            "directStreams": self.direct_streams,
        }


class RunTimeout(RuntimeError):
    """The run's --timeout ran out."""


class Chaos:
    def __init__(self, reactor: Any, options: Options, directory: Path, out: IO[str]) -> None:
        self.reactor = reactor
        self.options = options
        self.directory = directory
        self._out = out
        self._started = reactor.seconds()
        self.deadline = self._started + options.timeout
        self.processes = ProcessSet(reactor, directory)
        self.cluster = Cluster(
            reactor,
            self.processes,
            ClusterSettings(
                heartbeat=options.heartbeat,
                zookeeper_timeout=options.zookeeper_timeout,
                drain_period=options.drain_period,
                log_level=options.log_level,
                direct_streams=options.direct_streams,
            ),
        )
        self.journal = Journal()
        self.tails: list[Tail] = []
        self.workers: list[ManagedProcess] = []
        self.clients = [client_id(index) for index in range(options.clients)]
        self.windows: list[FaultWindow] = []

    def say(self, text: str) -> None:
        self._out.write(f"[{self.reactor.seconds() - self._started:6.1f}s] {text}\n")
        self._out.flush()

    def left(self) -> float:
        left: float = self.deadline - self.reactor.seconds()
        if left <= 0:
            raise RunTimeout(f"the run exceeded --timeout {self.options.timeout:g}s")
        return left

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            await deferLater(self.reactor, min(seconds, self.left()), lambda: None)

    async def until(self, condition: Callable[[], bool], bound: float) -> bool:
        """Polls ``condition`` (after reading the records) until true or ``bound`` s."""
        stop = self.reactor.seconds() + min(bound, self.left())
        while True:
            self.read_records()
            if condition():
                return True
            if self.reactor.seconds() >= stop:
                return False
            await deferLater(self.reactor, READ_INTERVAL, lambda: None)

    def read_records(self) -> None:
        for tail in self.tails:
            tail.read()

    # --- the run -------------------------------------------------------------------------

    async def run(self) -> ChaosReport:
        options = self.options
        try:
            self.say(f"starting the cluster in {self.directory}")
            await self.cluster.start()
            self.say(f"starting {options.clients} clients")
            await self.start_clients()
            online = await self.until(
                lambda: self.journal.online_count() == options.clients,
                60 + options.clients / options.connect_rate,
            )
            if not online:
                raise RunTimeout(
                    f"only {self.journal.online_count()} of {options.clients} clients "
                    "came online before the faults"
                )
            report = await self.send_under_faults()
        finally:
            await self.shutdown()
        report.tracebacks = logscan.scan(self.cluster.logs())
        return report

    async def start_clients(self) -> None:
        options = self.options
        count = math.ceil(options.clients / options.per_process)
        for index in range(count):
            first = index * options.per_process
            size = min(options.per_process, options.clients - first)
            out = self.directory / f"clients-{index}.records"
            argv = [
                *(sys.executable, "-m", "pigeonpush_chaos.worker"),
                *("--reglog", self.cluster.reglog.url("http")),
                *("--first", str(first), "--count", str(size), "--out", str(out)),
                *("--heartbeat", f"{options.heartbeat:g}"),
                *("--connect-rate", f"{options.connect_rate / count:g}"),
                *("--uplinks", str(options.uplinks)),
                *("--uplink-interval", f"{options.uplink_interval:g}"),
                *("--websocket-share", f"{options.websocket_share!r}"),
            ]
            self.workers.append(self.processes.spawn(f"clients-{index}", argv))
            self.tails.append(Tail(out, self.journal))

    async def send_under_faults(self) -> ChaosReport:
        options = self.options
        planned = batches(options.messages, options.batch, self.clients)
        sender = Sender(
            self.reactor,
            self.cluster.http,
            self.cluster.notification.url("http"),
            self.cluster.api_key,
            secrets.token_hex(6),
            ttl=options.ttl,
            concurrency=options.concurrency,
        )
        rate = options.messages / options.send_seconds if options.send_seconds > 0 else 1e9
        origin = self.reactor.seconds()
        self.say(
            f"sending {options.messages} notifications at {rate:.0f}/s; faults: "
            + (", ".join(kind.value for kind in options.faults) or "none")
        )
        sending = defer.ensureDeferred(sender.send(planned, rate, self.deadline))
        reader = LoopingCall(self.read_records)
        reader.clock = self.reactor
        reader.start(READ_INTERVAL)
        try:
            await self.inject_all(origin)
            outcome = await sending
        finally:
            reader.stop()
        self.say(
            f"sent: {len(outcome.accepted)} accepted, {outcome.refused} refused, "
            f"{outcome.unsent} unsent, {outcome.retries} retried batches {outcome.errors}"
        )
        expected = {(message.client, mid) for mid, message in outcome.accepted.items()}

        def settled() -> bool:
            gave_up = self.journal.gave_up()
            return expected <= self.journal.received and all(
                self.journal.online.get(client) or client in gave_up for client in self.clients
            )

        done = await self.until(settled, min(options.drain, self.left()))
        end = self.reactor.seconds()
        exited = {
            daemon.name: daemon.process.exit_code
            for daemon in self.cluster.daemons
            if daemon.process.exit_code is not None
        }
        self.say(
            "every accepted message arrived and every client is back"
            if done
            else f"drain period over: {len(expected - self.journal.received)} message(s) "
            f"missing, {self.options.clients - self.journal.online_count()} client(s) offline"
        )
        await self.stop_clients()
        self.read_records()
        uplinks_stored = await self.stored_uplinks()
        return compute(
            clients=self.clients,
            messages=options.messages,
            accepted=outcome.accepted,
            refused=outcome.refused,
            unsent=outcome.unsent,
            journal=self.journal,
            faults=self.windows,
            heartbeat=options.heartbeat,
            reconnect_bound=options.reconnect_bound,
            origin=origin,
            end=end,
            exited=exited,
            settings=options.settings(),
            uplinks_stored=uplinks_stored,
            transports={
                name: transport_of(index, options.websocket_share)
                for index, name in enumerate(self.clients)
            },
        )

    async def stored_uplinks(self) -> list[tuple[str, str]]:
        """(clientId, uplinkId) of every uplink ``GET /v1/uplinks`` gives, from
        the start of the stream, repeats included."""
        base = self.cluster.notification.url("http") + "/v1/uplinks?limit=1000&after="
        headers: dict[bytes | str, bytes | str] = {
            "Authorization": f"Bearer {self.cluster.api_key}"
        }
        stored: list[tuple[str, str]] = []
        cursor = "0"
        while True:
            response = await self.cluster.http.get(base + cursor, headers=headers, timeout=10)
            body = json.loads(await response.content())
            if response.code != 200:
                raise RuntimeError(f"GET /v1/uplinks answered {response.code}: {body}")
            stored.extend((u["clientId"], u["uplinkId"]) for u in body["uplinks"])
            if not body["uplinks"]:
                return stored
            cursor = body["next"]

    async def inject_all(self, origin: float) -> None:
        previous: float | None = None
        for item in plan(self.options.faults, self.options.send_seconds, self.options.lead):
            begin = start_time(origin + item.due, previous, self.options.gap)
            await self.sleep(begin - self.reactor.seconds())
            window = await self.inject(item.kind)
            self.windows.append(window)
            took = (
                "never" if window.recovered is None else f"{window.recovered - window.start:.1f}s"
            )
            self.say(f"{item.kind.value} on {window.target}: recovered after {took}")
            previous = window.recovered if window.recovered is not None else self.reactor.seconds()

    # --- the faults ------------------------------------------------------------------

    def busiest_server(self) -> Daemon:
        self.read_records()
        return max(
            self.cluster.servers,
            key=lambda server: (
                self.journal.clients_on(server.address("client"))
                + self.journal.clients_on(server.address("websocket"))
            ),
        )

    async def inject(self, kind: FaultKind) -> FaultWindow:
        cluster = self.cluster
        target: Daemon
        if kind in (
            FaultKind.KILL_SERVER,
            FaultKind.TERM_SERVER,
            FaultKind.KILL_SERVER_ZOOKEEPER_DOWN,
        ):
            target = self.busiest_server()
        elif kind is FaultKind.KILL_DELIVERY:
            target = cluster.deliveries[0]
        elif kind is FaultKind.RESTART_REDIS:
            target = cluster.redis
        else:
            target = cluster.zookeeper
        ephemerals = await cluster.ephemerals() if kind is FaultKind.EXPIRE_ZOOKEEPER else None
        start = self.reactor.seconds()
        name = target.name
        self.say(f"{kind.value}: {target.name} (pid {target.process.pid})")
        if kind is FaultKind.KILL_SERVER_ZOOKEEPER_DOWN:
            name = f"{target.name}+zookeeper"
            await self.processes.stop(cluster.zookeeper.process, timeout=10, signum=signal.SIGKILL)
        if kind is FaultKind.TERM_SERVER or kind is FaultKind.RESTART_REDIS:
            await self.processes.stop(target.process, timeout=self.options.drain_period + 20)
        else:
            await self.processes.stop(target.process, timeout=10, signum=signal.SIGKILL)
        try:
            if kind is FaultKind.EXPIRE_ZOOKEEPER:
                await cluster.expire_zookeeper_sessions(timeout=min(60.0, self.left()))
            await self.sleep(start + self.options.restart_delay - self.reactor.seconds())
            await cluster.restart(target)
            if kind is FaultKind.KILL_SERVER_ZOOKEEPER_DOWN:
                await self.sleep(start + self.zookeeper_outage() - self.reactor.seconds())
                await cluster.restart(cluster.zookeeper)
                await cluster.ready(cluster.zookeeper, timeout=min(60.0, self.left()))
            await cluster.ready(target, timeout=min(60.0, self.left()))
            if ephemerals is not None:
                await self._ephemerals_back(ephemerals)
            await cluster.reglog_sees(len(cluster.servers), timeout=min(60.0, self.left()))
        except StartError as e:
            self.say(f"{kind.value}: the system did not recover: {e}")
            return FaultWindow(kind, name, start, None)
        return FaultWindow(kind, name, start, self.reactor.seconds())

    def zookeeper_outage(self) -> float:
        """How long ZooKeeper stays away in kill-server-zookeeper-down."""
        return 2 * self.options.zookeeper_timeout + 2

    async def _ephemerals_back(self, count: int) -> None:
        """Until every daemon has registered again with the fresh ZooKeeper."""

        async def registered() -> bool:
            now = await self.cluster.ephemerals()
            return now is not None and now >= count

        await wait_until(
            self.reactor,
            registered,
            timeout=min(60.0, self.left()),
            what=f"{count} ephemeral nodes in ZooKeeper again",
            interval=0.1,
        )

    # --- the end ------------------------------------------------------------------------

    async def stop_clients(self) -> None:
        for worker in self.workers:
            await self.processes.stop(worker, timeout=10)

    async def shutdown(self) -> None:
        """Clients, then the daemons that serve them, then the stores they use
        (ZooKeeper and Redis last, so that no daemon logs their absence)."""
        await self.stop_clients()
        order = ["notification", "reglog", "server-", "delivery-", "zookeeper", "redis"]
        for prefix in order:
            for process in self.processes.processes:
                if process.running and process.name.startswith(prefix):
                    await self.processes.stop(process, timeout=20)
        await self.processes.stop_all(timeout=20)
        await self.cluster.close()
