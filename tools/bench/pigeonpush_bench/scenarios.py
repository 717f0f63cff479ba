"""What each ``pigeonpush-bench SCENARIO`` does, phase by phase.

Every scenario measures the pigeon system first and then, in the same run,
with the same load generator code on the same machine, the baselines the
issue pairs with it; each phase stops what it started before the next begins,
so phases never compete for the two cores. Each returns a ``Report``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from pigeonpush_bench import services
from pigeonpush_bench.baseline import command as control
from pigeonpush_bench.cluster import (
    CLUSTER,
    REDIS,
    Generators,
    PigeonCluster,
    RedisProbe,
    Run,
    RunTimeout,
    Stats,
    start_pigeon,
)
from pigeonpush_bench.measure import (
    ProcessGone,
    connections_per_process,
    cpu_seconds,
    measure_window,
    rss_bytes,
    total_rss,
)
from pigeonpush_bench.rediscluster import RedisCost
from pigeonpush_bench.report import SUBJECT, Report, Target

TWISTED = "twisted"
MOSQUITTO = "mosquitto"
BASELINES = (TWISTED, MOSQUITTO)
#: The name of the pigeon system in a report, by the store it ran on.
PIGEON_SYSTEMS = {REDIS: SUBJECT, CLUSTER: f"{SUBJECT}-cluster"}
#: pigeonpush with its devices over WebSocket (``connections --websocket``)
WEBSOCKET = "websocket"
#: Seconds without a new delivery after which a wait for the rest gives up.
STALL = 30.0
#: Mosquitto's window of un-ACKed QoS 1 messages per client, as the server's --ack-window.
ACK_WINDOW = 32

KIB = 1024.0
MIB = 1024.0 * 1024.0


def generator_count(run: Run, clients: int) -> int:
    return max(1, math.ceil(clients / run.settings.per_generator))


def _per(value: float, count: int) -> float | None:
    return value / count if count else None


# --- connections ----------------------------------------------------------------------


@attrs.define(slots=True)
class ConnectionFigures:
    connected: int
    failed: int
    seconds: float
    idle_rss: int
    loaded_rss: int
    server_cores: float
    generator_cores: float
    heartbeats: float
    errors: dict[str, int]

    @property
    def rate(self) -> float | None:
        return self.connected / self.seconds if self.seconds > 0 else None


async def _steady(
    run: Run,
    pids: Mapping[str, int],
    generators: Generators,
    idle: int,
    seconds: float,
    support: dict[str, float] | None = None,
    support_pids: Mapping[str, int] | None = None,
) -> ConnectionFigures:
    """After connecting: settle, then RSS and CPU over the measuring window
    (and into ``support``, the % of a core of each of ``support_pids``)."""
    await run.sleep(run.settings.settle)
    window = run.settings.window
    run.progress.phase(f"measuring {window:g}s of steady heartbeat load")
    before = await generators.stats()
    measured = {**pids, **(support_pids or {})}
    every = await measure_window(run.reactor, measured, min(window, run.left()))
    usage = {name: every[name] for name in pids}
    if support is not None:
        for name in support_pids or {}:
            support[name] = every[name].cores * 100
    after = await generators.stats()
    spent = sum(u.seconds for u in usage.values()) / max(1, len(usage))
    return ConnectionFigures(
        connected=after.ready,
        failed=after.failed,
        seconds=seconds,
        idle_rss=idle,
        loaded_rss=sum(u.rss for u in usage.values()),
        server_cores=sum(u.cpu for u in usage.values()) / spent if spent else 0.0,
        generator_cores=(after.cpu - before.cpu) / spent if spent else 0.0,
        heartbeats=(after.pings - before.pings) / spent if spent else 0.0,
        errors=after.errors,
    )


async def _pigeon_connections(
    run: Run, clients: int, servers: int, notes: list[str], websocket: bool = False
) -> ConnectionFigures:
    """``websocket``: the servers get a WebSocket listener, the clients use it."""
    cluster = await start_pigeon(
        run,
        servers=servers,
        capacity=connections_per_process(),
        notification=False,
        websocket=websocket,
    )
    label, protocol = (
        ("pigeonpush over WebSocket", "pigeon-ws") if websocket else (SUBJECT, "pigeon")
    )
    try:
        pids = cluster.server_pids
        await run.sleep(1.0)
        idle = total_rss(list(pids.values()))
        generators = await run.generators(generator_count(run, clients), protocol)
        run.progress.phase(f"{label}: connecting {clients:,} clients through reglog")
        before = _cpu_each(cluster.system_pids)
        generators_before = (await generators.stats()).cpu
        seconds, connected = await generators.connect(
            protocol, clients, [{"reglog": cluster.reglog.url}], label=label
        )
        after = _cpu_each(cluster.system_pids)
        generators_after = (await generators.stats()).cpu
        if connected.ready:
            per_connection = {name: after[name] - before[name] for name in cluster.system_pids}
            per_connection["load generators"] = generators_after - generators_before
            notes.append(
                f"{label} CPU per connection while connecting, by process (us): "
                + ", ".join(
                    f"{name} {spent * 1e6 / connected.ready:.0f}"
                    for name, spent in per_connection.items()
                )
            )
        others = {name: pid for name, pid in cluster.system_pids.items() if name not in pids}
        steady_cpu: dict[str, float] = {}
        figures = await _steady(run, pids, generators, idle, seconds, steady_cpu, others)
        notes.append(
            "pigeonpush support processes' CPU at steady heartbeat load (% of a core): "
            + ", ".join(f"{name} {value:.1f}" for name, value in steady_cpu.items())
        )
        support = {name: rss_bytes(pid) / MIB for name, pid in others.items()}
        notes.append(
            f"{label} support processes with the clients connected (RSS MiB): "
            + ", ".join(f"{name} {value:.1f}" for name, value in support.items())
        )
        await generators.finish()
    finally:
        await run.stop(cluster.processes)
    return figures


async def _framing_connections(run: Run, clients: int, servers: int) -> ConnectionFigures:
    started = [
        await services.start_baseline(run.processes, run.reactor, name=f"baseline-{index}")
        for index in range(servers)
    ]
    return await _baseline_connections(
        run, clients, started, "twisted", "framing", "bare Twisted", "connecting"
    )


async def _mqtt_connections(run: Run, clients: int, servers: int) -> ConnectionFigures:
    started = [
        await services.start_mosquitto(
            run.processes, run.reactor, name=f"mosquitto-{index}", max_inflight=ACK_WINDOW
        )
        for index in range(servers)
    ]
    return await _baseline_connections(
        run, clients, started, "mosquitto", "mqtt", "Mosquitto", "connecting and subscribing"
    )


async def _baseline_connections(
    run: Run,
    clients: int,
    started: Sequence[services.Baseline | services.Listener],
    system: str,
    protocol: str,
    label: str,
    doing: str,
) -> ConnectionFigures:
    """Connect ``clients`` to the started baseline servers and measure them."""
    try:
        pids = {server.process.name: server.process.pid for server in started}
        await run.sleep(1.0)
        idle = total_rss(list(pids.values()))
        generators = await run.generators(generator_count(run, clients), system)
        run.progress.phase(f"{label}: {doing} {clients:,} clients")
        seconds, _ = await generators.connect(
            protocol, clients, [{"server": s.address} for s in started], label=label
        )
        figures = await _steady(run, pids, generators, idle, seconds)
        await generators.finish()
    finally:
        await run.stop([server.process for server in started])
    return figures


async def connections(
    run: Run,
    *,
    clients: int,
    servers: int,
    baselines: Sequence[str],
    command: str,
    websocket: bool = False,
) -> Report:
    """``websocket``: also pigeonpush with its clients over WebSocket (a
    column of its own, compared with TCP in the notes)."""
    settings = run.settings
    report = Report(
        scenario="connections",
        title=(
            f"connections: {clients:,} clients over {servers} server process(es), "
            f"heartbeat every {settings.heartbeat:g}s"
        ),
        parameters={
            "n": clients,
            "servers": servers,
            "heartbeat_s": settings.heartbeat,
            "window_s": settings.window,
            "generators": generator_count(run, clients),
        },
        systems=[SUBJECT, *baselines, *([WEBSOCKET] if websocket else [])],
        command=command,
    )
    results: dict[str, ConnectionFigures] = {
        SUBJECT: await _pigeon_connections(run, clients, servers, report.notes)
    }
    if websocket:
        results[WEBSOCKET] = await _pigeon_connections(
            run, clients, servers, report.notes, websocket=True
        )
    if TWISTED in baselines:
        results[TWISTED] = await _framing_connections(run, clients, servers)
    if MOSQUITTO in baselines:
        results[MOSQUITTO] = await _mqtt_connections(run, clients, servers)

    def each(function: Any) -> dict[str, float | int | None]:
        return {system: function(figures) for system, figures in results.items()}

    report.add("connected", "clients connected", "", each(lambda f: f.connected))
    report.add("connect_rate", "connect + handshake rate", "/s", each(lambda f: f.rate))
    report.add(
        "rss_per_connection",
        "server RSS per connection, total",
        "KiB",
        each(lambda f: _per(f.loaded_rss / KIB, f.connected)),
        higher_is_better=False,
    )
    report.add(
        "rss_added_per_connection",
        "server RSS per connection, added over idle",
        "KiB",
        each(lambda f: _per((f.loaded_rss - f.idle_rss) / KIB, f.connected)),
        higher_is_better=False,
    )
    report.add(
        "rss_idle",
        "server RSS idle",
        "MiB",
        each(lambda f: f.idle_rss / MIB),
        higher_is_better=False,
    )
    report.add(
        "rss_loaded",
        "server RSS with the clients",
        "MiB",
        each(lambda f: f.loaded_rss / MIB),
        higher_is_better=False,
    )
    report.add("heartbeats", "heartbeats sent", "/s", each(lambda f: f.heartbeats))
    report.add(
        "server_cpu",
        "server CPU at steady heartbeat load",
        "% of a core",
        each(lambda f: f.server_cores * 100),
        higher_is_better=False,
    )
    report.add(
        "generator_cpu",
        "load generator CPU",
        "% of a core",
        each(lambda f: f.generator_cores * 100),
        higher_is_better=False,
    )
    report.notes.append(
        "handshake: pigeonpush = POST /v1/route to reglog + TCP + AUTH/AUTH_OK; "
        "bare Twisted = TCP only; Mosquitto = TCP + CONNECT/CONNACK + SUBSCRIBE/SUBACK"
    )
    pigeon = results[SUBJECT]
    for system, figures in results.items():
        if figures.failed or figures.errors:
            report.notes.append(f"{system}: {figures.failed} failed; errors {figures.errors}")
    report.ok = pigeon.connected == clients
    if websocket:
        report.notes.append(websocket_comparison(report))
        report.ok = report.ok and results[WEBSOCKET].connected == clients
    if servers == 1 and clients >= 19_500:
        report.targets.append(
            Target(
                "one pigeon-server process holds 19,500 connections",
                pigeon.connected >= 19_500,
                f"{pigeon.connected:,} connected",
            )
        )
        if websocket:
            connected = results[WEBSOCKET].connected
            report.targets.append(
                Target(
                    "one pigeon-server process holds 19,500 WebSocket connections",
                    connected >= 19_500,
                    f"{connected:,} connected",
                )
            )
    added = report.metric("rss_added_per_connection").ratio(TWISTED)
    report.targets.append(
        Target(
            "added RSS per connection at most 2x bare Twisted's",
            None if added is None else added <= 2.0,
            "" if added is None else f"{added:.2f}x",
        )
    )
    if clients >= 75_000 and servers >= 4:
        rate = pigeon.rate or 0.0
        report.targets.append(
            Target(
                "75,000 connections over 4 server processes through reglog at >= 2,000/s",
                pigeon.connected >= 75_000 and rate >= 2_000,
                f"{pigeon.connected:,} at {rate:,.0f}/s",
            )
        )
    return report


def websocket_comparison(report: Report) -> str:
    """The note that puts the WebSocket column against TCP's (WebSocket / TCP)."""
    parts = []
    for key, label in (
        ("connect_rate", "connect rate"),
        ("rss_added_per_connection", "added RSS per connection"),
        ("server_cpu", "server CPU at steady heartbeat"),
    ):
        ratio = report.metric(key).ratio(SUBJECT, subject=WEBSOCKET)
        parts.append(f"{label} {'-' if ratio is None else f'{ratio:.2f}x'}")
    return "pigeonpush over WebSocket against TCP (WebSocket / TCP): " + ", ".join(parts)


# --- unicast ----------------------------------------------------------------------------


@attrs.define(slots=True)
class DeliveryFigures:
    accepted: int
    refused: int
    failed: int
    stats: Stats
    seconds: float
    server_cpu: float
    generator_cpu: float
    wait_ack_left: int | None = None
    publish_seconds: float = 0.0
    cpu_by_process: dict[str, float] = attrs.field(factory=dict)
    #: what the store's redis-servers spent while the messages went through
    redis_cost: RedisCost | None = None

    @property
    def lost(self) -> int:
        return max(0, self.accepted - self.stats.unique)

    @property
    def throughput(self) -> float | None:
        return self.stats.unique / self.seconds if self.seconds > 0 else None


async def _wait_delivered(
    run: Run, generators: Generators, expected: int, label: str, *, frames: bool = False
) -> Stats:
    """Until the clients hold ``expected`` distinct messages (or baseline
    ``frames``), or nothing new came for STALL seconds (the rest is then lost),
    or the run's time is up."""
    last_count = -1
    last_change = run.reactor.seconds()
    while True:
        stats = await generators.stats()
        now = run.reactor.seconds()
        count = stats.frames if frames else stats.unique
        run.progress.update(f"{label}: {count:,}/{expected:,} delivered")
        if count >= expected:
            return stats
        if count != last_count:
            last_count, last_change = count, now
        elif now - last_change > STALL:
            return stats
        try:
            await run.sleep(0.5)
        except RunTimeout:
            return stats


def _cpu_each(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process (one that exited counts 0)."""
    used = {}
    for name, pid in pids.items():
        try:
            used[name] = cpu_seconds(pid)
        except ProcessGone:
            used[name] = 0.0
    return used


def _cpu(pids: Mapping[str, int]) -> float:
    return sum(_cpu_each(pids).values())


async def _publish_and_wait(
    run: Run,
    *,
    label: str,
    generators: Generators,
    publisher: Generators,
    command: str,
    arguments: Mapping[str, Any],
    server_pids: Mapping[str, int],
) -> DeliveryFigures:
    await generators.reset()
    server_before = _cpu_each(server_pids)
    clients_before = (await generators.stats()).cpu
    publisher_before = (await publisher.stats()).cpu
    run.progress.phase(f"{label}: publishing {arguments['messages']:,} messages")
    (published,) = await publisher.call_each(command, [arguments])
    accepted = int(published["accepted"])
    stats = await _wait_delivered(run, generators, accepted, label)
    server_after = _cpu_each(server_pids)
    by_process = {name: server_after[name] - server_before[name] for name in server_pids}
    generator_cpu = stats.cpu - clients_before + (await publisher.stats()).cpu - publisher_before
    end = stats.last_receipt if stats.last_receipt is not None else run.reactor.seconds()
    return DeliveryFigures(
        accepted=accepted,
        refused=int(published["refused"]),
        failed=int(published["failed"]),
        stats=stats,
        seconds=end - float(published["started"]),
        server_cpu=sum(by_process.values()),
        generator_cpu=generator_cpu,
        publish_seconds=float(published["seconds"]),
        cpu_by_process=by_process,
    )


async def _pigeon_deliveries(
    run: Run,
    *,
    clients: int,
    messages: int,
    size: int,
    rate: float,
    servers: int,
    batch: int,
    concurrency: int,
    store: str = REDIS,
    direct_streams: bool = False,
) -> DeliveryFigures:
    label = PIGEON_SYSTEMS[store]
    cluster = await start_pigeon(
        run,
        servers=servers,
        capacity=connections_per_process(),
        store=store,
        direct_streams=direct_streams,
    )
    try:
        generators = await run.generators(generator_count(run, clients), label)
        run.progress.phase(f"{label}: connecting {clients:,} clients through reglog")
        await generators.connect("pigeon", clients, [{"reglog": cluster.reglog.url}], label=label)
        publisher = await run.generators(1, f"api-publisher-{label}")
        assert cluster.notification is not None
        redis_before = await cluster.redis_nodes.read()
        figures = await _publish_and_wait(
            run,
            label=label,
            generators=generators,
            publisher=publisher,
            command="publish_api",
            arguments={
                "api": cluster.notification.url,
                "key": cluster.api_key,
                "clients": clients,
                "messages": messages,
                "size": size,
                "rate": rate,
                "batch": batch,
                "concurrency": concurrency,
            },
            server_pids=cluster.system_pids,
        )
        figures.redis_cost = RedisCost.between(redis_before, await cluster.redis_nodes.read())
        figures.wait_ack_left = await _wait_ack_left(run, cluster)
        await publisher.finish()
        await generators.finish()
    finally:
        await run.stop(cluster.processes)
    return figures


async def _wait_ack_left(run: Run, cluster: PigeonCluster) -> int:
    """Ids still in WAIT_ACK once the server's batched ACK writes had time to
    land (summed over the masters of a cluster)."""
    await run.sleep(1.0)
    readings = await cluster.redis_nodes.read()
    total = 0
    for port in sorted(port for port, reading in readings.items() if reading.master):
        probe = await RedisProbe.open(port)
        try:
            total += await probe.wait_ack_total()
        finally:
            await probe.close()
    return total


async def _mqtt_deliveries(
    run: Run, *, clients: int, messages: int, size: int, rate: float, window: int
) -> DeliveryFigures:
    broker = await services.start_mosquitto(run.processes, run.reactor, max_inflight=ACK_WINDOW)
    try:
        generators = await run.generators(generator_count(run, clients), "mosquitto")
        run.progress.phase(f"Mosquitto: connecting and subscribing {clients:,} clients")
        await generators.connect("mqtt", clients, [{"server": broker.address}], label="Mosquitto")
        publisher = await run.generators(1, "mqtt-publisher")
        figures = await _publish_and_wait(
            run,
            label="Mosquitto",
            generators=generators,
            publisher=publisher,
            command="publish_mqtt",
            arguments={
                "server": broker.address,
                "clients": clients,
                "messages": messages,
                "size": size,
                "rate": rate,
                "window": window,
            },
            server_pids={"mosquitto": broker.process.pid},
        )
        await publisher.finish()
        await generators.finish()
    finally:
        await run.stop([broker.process])
    return figures


def _latency_metrics(report: Report, results: Mapping[str, DeliveryFigures]) -> None:
    for name, fraction in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)):
        report.add(
            f"latency_{name}",
            f"latency {name}, publisher send to client receipt",
            "ms",
            {
                system: _ms(figures.stats.latency_send.percentile(fraction))
                for system, figures in results.items()
            },
            higher_is_better=False,
        )
    pigeons = _pigeons(results)
    if pigeons:
        for name, fraction in (("p50", 0.50), ("p99", 0.99), ("max", 1.0)):
            report.add(
                f"latency_accept_{name}",
                f"latency {name}, API accept to client receipt",
                "ms",
                {
                    system: _ms(results[system].stats.latency.percentile(fraction))
                    for system in pigeons
                },
                higher_is_better=False,
            )


def _pigeons(results: Mapping[str, DeliveryFigures]) -> list[str]:
    """The pigeon systems among ``results`` (one per store), in their order."""
    return [system for system in results if system in PIGEON_SYSTEMS.values()]


def _ms(micros: int | None) -> float | None:
    return None if micros is None else micros / 1000.0


def _delivery_metrics(report: Report, results: Mapping[str, DeliveryFigures]) -> None:
    def each(function: Any) -> dict[str, float | int | None]:
        return {system: function(figures) for system, figures in results.items()}

    report.add("accepted", "messages accepted", "", each(lambda f: f.accepted))
    report.add("delivered", "delivered and ACKed", "", each(lambda f: f.stats.unique))
    report.add("lost", "lost", "", each(lambda f: f.lost), higher_is_better=False)
    report.add(
        "duplicates", "duplicates", "", each(lambda f: f.stats.duplicates), higher_is_better=False
    )
    report.add("throughput", "delivered and ACKed", "msg/s", each(lambda f: f.throughput))
    _latency_metrics(report, results)
    report.add(
        "server_cpu_per_message",
        "server-side CPU per message",
        "us",
        each(lambda f: _per(f.server_cpu * 1e6, f.stats.unique)),
        higher_is_better=False,
    )
    report.add(
        "generator_cpu_per_message",
        "load generator CPU per message",
        "us",
        each(lambda f: _per(f.generator_cpu * 1e6, f.stats.unique)),
        higher_is_better=False,
    )
    if _pigeons(results):
        report.add(
            "wait_ack_left",
            "ids left in WAIT_ACK",
            "",
            {system: results[system].wait_ack_left for system in _pigeons(results)},
            higher_is_better=False,
        )
    redis_metrics(report, results)
    for system, figures in results.items():
        if len(figures.cpu_by_process) > 1 and figures.stats.unique:
            report.notes.append(
                f"{system} server-side CPU per message by process (us): "
                + ", ".join(
                    f"{name} {seconds * 1e6 / figures.stats.unique:.1f}"
                    for name, seconds in figures.cpu_by_process.items()
                )
            )
        if figures.refused or figures.failed:
            report.notes.append(
                f"{system}: {figures.refused} refused and {figures.failed} failed at the publisher"
            )
        if figures.stats.errors:
            report.notes.append(f"{system}: client errors {figures.stats.errors}")


def redis_metrics(report: Report, results: Mapping[str, DeliveryFigures]) -> None:
    """Per delivered message, what the store's redis-servers spent: commands
    processed (INFO stats ``total_commands_processed``, which counts the
    commands a script runs too) and CPU seconds, masters and replicas apart.
    Nothing when no result measured its Redis."""
    costs = {
        system: (figures.redis_cost, figures.stats.unique)
        for system, figures in results.items()
        if figures.redis_cost is not None
    }
    if not costs:
        return

    def each(function: Any, *, replicas: bool = False) -> dict[str, float | int | None]:
        values: dict[str, float | int | None] = {system: None for system in results}
        for system, (cost, delivered) in costs.items():
            if replicas and cost.replicas == 0:
                continue  # none to measure: "-", not 0
            values[system] = _per(function(cost), delivered)
        return values

    report.add(
        "redis_commands_per_message",
        "Redis commands per message, masters",
        "",
        each(lambda c: c.master_commands),
        higher_is_better=False,
    )
    report.add(
        "redis_replica_commands_per_message",
        "Redis commands per message, replicas",
        "",
        each(lambda c: c.replica_commands, replicas=True),
        higher_is_better=False,
    )
    report.add(
        "redis_cpu_per_message",
        "Redis CPU per message, masters",
        "us",
        each(lambda c: c.master_cpu * 1e6),
        higher_is_better=False,
    )
    report.add(
        "redis_replica_cpu_per_message",
        "Redis CPU per message, replicas",
        "us",
        each(lambda c: c.replica_cpu * 1e6, replicas=True),
        higher_is_better=False,
    )
    report.add(
        "redis_total_cpu_per_message",
        "Redis CPU per message, all nodes",
        "us",
        each(lambda c: (c.master_cpu + c.replica_cpu) * 1e6),
        higher_is_better=False,
    )
    report.notes.append(
        "Redis: "
        + "; ".join(
            f"{system} on {cost.masters} master(s) and {cost.replicas} replica(s)"
            for system, (cost, _) in costs.items()
        )
        + ". Commands are INFO stats total_commands_processed deltas (a script's own "
        "commands count), CPU is each redis-server's user+system time, both over the "
        "publishing and delivery window (periodic work such as heartbeats included)"
    )


def unicast_systems(stores: Sequence[str], baselines: Sequence[str]) -> list[str]:
    """The report's columns: the pigeon system on each store, then Mosquitto."""
    return [PIGEON_SYSTEMS[store] for store in stores] + [b for b in baselines if b == MOSQUITTO]


def unicast_comparisons(systems: Sequence[str]) -> list[tuple[str, str]]:
    """The ratio columns: each pigeon system over Mosquitto, then the cluster
    over one Redis when both ran."""
    pigeons = [system for system in systems if system in PIGEON_SYSTEMS.values()]
    pairs = [(pigeon, MOSQUITTO) for pigeon in pigeons if MOSQUITTO in systems]
    single, cluster = PIGEON_SYSTEMS[REDIS], PIGEON_SYSTEMS[CLUSTER]
    if single in pigeons and cluster in pigeons:
        pairs.append((cluster, single))
    return pairs


async def unicast(
    run: Run,
    *,
    clients: int,
    messages: int,
    size: int,
    rate: float,
    servers: int,
    batch: int,
    concurrency: int,
    baselines: Sequence[str],
    command: str,
    stores: Sequence[str] = (REDIS,),
    direct_streams: bool = False,
) -> Report:
    """M notifications to random online clients, on each of ``stores`` in
    turn (REDIS, CLUSTER), then through Mosquitto; ``direct_streams``: the
    pigeon daemons run with ``?direct_streams=1`` (one Redis only)."""
    if direct_streams and CLUSTER in stores:
        raise ValueError("direct streams are for one Redis, not a Redis Cluster")
    stores = list(stores)
    if not stores or any(store not in PIGEON_SYSTEMS for store in stores):
        raise ValueError(f"stores must be some of {', '.join(PIGEON_SYSTEMS)}, not {stores!r}")
    systems = unicast_systems(stores, baselines)
    pace = f"at {rate:,.0f} msg/s" if rate > 0 else "as fast as accepted"
    report = Report(
        scenario="unicast",
        title=(
            f"unicast: {messages:,} messages of {size} bytes to random clients of {clients:,}, "
            f"{pace}"
        ),
        parameters={
            "clients": clients,
            "messages": messages,
            "size": size,
            "rate": rate,
            "servers": servers,
            "batch": batch,
            "api_concurrency": concurrency,
            "mqtt_window": batch * concurrency,
            "store": stores[0] if len(stores) == 1 else "both",
            "direct_streams": direct_streams,
        },
        systems=systems,
        command=command,
        comparisons=unicast_comparisons(systems),
    )
    results = {}
    for store in stores:
        results[PIGEON_SYSTEMS[store]] = await _pigeon_deliveries(
            run,
            clients=clients,
            messages=messages,
            size=size,
            rate=rate,
            servers=servers,
            batch=batch,
            concurrency=concurrency,
            store=store,
            direct_streams=direct_streams,
        )
    if MOSQUITTO in systems:
        results[MOSQUITTO] = await _mqtt_deliveries(
            run,
            clients=clients,
            messages=messages,
            size=size,
            rate=rate,
            window=batch * concurrency,
        )
    _delivery_metrics(report, results)
    hops = (
        "Redis (the server's own stream) -> pigeon-server"
        if direct_streams
        else "Redis -> delivery -> AMP Push -> pigeon-server"
    )
    report.notes.append(
        f"pigeonpush path: notification API batch POST -> {hops} -> client, "
        "ACK back to the server and WAIT_ACK; Mosquitto: QoS 1 "
        "PUBLISH -> broker -> subscriber, PUBACK both ways. Server-side CPU sums every "
        "pigeonpush process (servers, delivery, notification, reglog, Redis)"
    )
    report.notes.append(
        "latency from send starts when the publisher builds the request (a batch shares one "
        "timestamp); from accept uses the messageId's millisecond timestamp"
    )
    unicast_targets(report, results, rate)
    return report


def unicast_targets(report: Report, results: Mapping[str, DeliveryFigures], rate: float) -> None:
    """Zero lost on every store; the first pigeon system against Mosquitto."""
    pigeons = _pigeons(results)
    report.ok = all(results[system].lost == 0 for system in pigeons)
    for system in pigeons:
        lost = results[system].lost
        name = "zero lost" if system == SUBJECT else f"zero lost ({system})"
        report.targets.append(Target(name, lost == 0, f"{lost:,} lost"))
    first = pigeons[0]
    if MOSQUITTO in results and rate <= 0:
        ratio = report.metric("throughput").ratio(MOSQUITTO, first)
        report.targets.append(
            Target(
                "unicast throughput at least half of Mosquitto's QoS 1",
                None if ratio is None else ratio >= 0.5,
                "" if ratio is None else f"{ratio:.2f}x",
            )
        )
    if MOSQUITTO in results and rate > 0:
        ratio = report.metric("latency_p99").ratio(MOSQUITTO, first)
        report.targets.append(
            Target(
                "p99 latency at a fixed rate within 20x of Mosquitto's",
                None if ratio is None else ratio <= 20.0,
                "" if ratio is None else f"{ratio:.2f}x",
            )
        )


# --- backlog ----------------------------------------------------------------------------


async def backlog(
    run: Run,
    *,
    clients: int,
    per_client: int,
    size: int,
    servers: int,
    batch: int,
    concurrency: int,
    command: str,
) -> Report:
    total = clients * per_client
    report = Report(
        scenario="backlog",
        title=(
            f"backlog: {per_client:,} messages queued for each of {clients:,} offline clients, "
            "then all connect"
        ),
        parameters={
            "clients": clients,
            "per_client": per_client,
            "size": size,
            "servers": servers,
            "batch": batch,
            "api_concurrency": concurrency,
        },
        systems=[SUBJECT],
        command=command,
    )
    cluster = await start_pigeon(run, servers=servers, capacity=connections_per_process())
    try:
        assert cluster.redis is not None  # one Redis: its queue is one stream
        probe = await RedisProbe.open(cluster.redis.port)
        publisher = await run.generators(1, "api-publisher")
        assert cluster.notification is not None
        run.progress.phase(f"queueing {total:,} messages for {clients:,} offline clients")
        (published,) = await publisher.call_each(
            "publish_api",
            [
                {
                    "api": cluster.notification.url,
                    "key": cluster.api_key,
                    "clients": clients,
                    "messages": total,
                    "size": size,
                    "batch": batch,
                    "concurrency": concurrency,
                    "spread": "round_robin",
                }
            ],
        )
        accepted = int(published["accepted"])

        async def queue_handled() -> bool:
            length, read, pending = await probe.queue_state()
            run.progress.update(f"delivery: {read:,}/{length:,} queue entries read")
            return read >= length and pending == 0

        await run.wait(queue_handled, "delivery handling the queue", watch=cluster.processes)
        waiting = await probe.wait_ack_total()
        await publisher.finish()
        generators = await run.generators(generator_count(run, clients), "pigeon")
        system_before = _cpu(cluster.system_pids)
        run.progress.phase(f"connecting {clients:,} clients and draining their backlog")
        started = run.reactor.seconds()
        connect_seconds, _ = await generators.connect(
            "pigeon", clients, [{"reglog": cluster.reglog.url}], label="pigeonpush"
        )
        stats = await _wait_delivered(run, generators, accepted, "backlog")
        system_cpu = _cpu(cluster.system_pids) - system_before
        await run.sleep(1.0)
        left = await probe.wait_ack_total()
        await probe.close()
        await generators.finish()
    finally:
        await run.stop(cluster.processes)
    end = stats.last_receipt if stats.last_receipt is not None else run.reactor.seconds()
    drain = end - started
    lost = max(0, accepted - stats.unique)
    pigeon = {
        "accepted": accepted,
        "waiting": waiting,
        "accept_rate": accepted / float(published["seconds"]) if published["seconds"] else None,
        "connect": connect_seconds,
        "drain": drain,
        "drain_rate": stats.unique / drain if drain > 0 else None,
        "lost": lost,
        "duplicates": stats.duplicates,
        "out_of_order": stats.out_of_order,
        "left": left,
        "cpu": _per(system_cpu * 1e6, stats.unique),
    }
    for key, label, unit, better in (
        ("accepted", "messages queued", "", True),
        ("waiting", "pending in WAIT_ACK before connecting", "", True),
        ("accept_rate", "queueing rate through the API", "msg/s", True),
        ("connect", "connect + auth of all clients", "s", False),
        ("drain", "connect start to last message delivered", "s", False),
        ("drain_rate", "backlog delivered and ACKed", "msg/s", True),
        ("lost", "lost", "", False),
        ("duplicates", "duplicates", "", False),
        ("out_of_order", "delivered out of order (per client)", "", False),
        ("left", "ids left in WAIT_ACK", "", False),
        ("cpu", "server-side CPU per message while draining", "us", False),
    ):
        report.add(key, label, unit, {SUBJECT: pigeon[key]}, higher_is_better=better)
    if stats.errors:
        report.notes.append(f"client errors: {stats.errors}")
    report.ok = lost == 0
    report.targets.append(Target("zero lost", lost == 0, f"{lost:,} lost"))
    return report


# --- reconnect --------------------------------------------------------------------------


async def reconnect(
    run: Run,
    *,
    clients: int,
    messages: int,
    size: int,
    servers: int,
    batch: int,
    concurrency: int,
    command: str,
) -> Report:
    report = Report(
        scenario="reconnect",
        title=(
            f"reconnect: SIGKILL one of {servers} servers holding {clients:,} clients; "
            f"{messages:,} messages sent meanwhile"
        ),
        parameters={
            "clients": clients,
            "servers": servers,
            "messages": messages,
            "size": size,
            "heartbeat_s": run.settings.heartbeat,
        },
        systems=[SUBJECT],
        command=command,
    )
    cluster = await start_pigeon(run, servers=servers, capacity=connections_per_process())
    try:
        generators = await run.generators(generator_count(run, clients), "pigeon")
        run.progress.phase(f"connecting {clients:,} clients through reglog")
        await generators.connect(
            "pigeon", clients, [{"reglog": cluster.reglog.url}], label="pigeonpush", reconnect=True
        )
        publisher = await run.generators(1, "api-publisher")
        victim = cluster.servers[0]
        run.progress.phase(f"SIGKILL {victim.node_id}; sending {messages:,} messages")
        killed_at = run.reactor.seconds()
        await run.processes.stop(victim.process, signum=9)
        assert cluster.notification is not None
        (published,) = await publisher.call_each(
            "publish_api",
            [
                {
                    "api": cluster.notification.url,
                    "key": cluster.api_key,
                    "clients": clients,
                    "messages": messages,
                    "size": size,
                    "batch": batch,
                    "concurrency": concurrency,
                    "spread": "round_robin",
                }
            ],
        )
        accepted = int(published["accepted"])

        async def everyone_back() -> Stats | None:
            stats = await generators.stats()
            run.progress.update(
                f"{stats.ready:,}/{clients:,} authenticated, {stats.reconnects:,} reconnects"
            )
            back = stats.ready >= clients and stats.reconnects > 0
            return stats if back else None

        back: Stats = await run.wait(everyone_back, "every client back", interval=0.25)
        stats = await _wait_delivered(run, generators, accepted, "reconnect")
        left = await _wait_ack_left(run, cluster)
        await publisher.finish()
        await generators.finish()
    finally:
        await run.stop(cluster.processes)
    recovered = (back.last_ready or killed_at) - killed_at
    lost = max(0, accepted - stats.unique)
    values: dict[str, float | int | None] = {
        "affected": back.reconnects,
        "recovery": recovered,
        "accepted": accepted,
        "delivered": stats.unique,
        "lost": lost,
        "duplicates": stats.duplicates,
        "left": left,
    }
    for key, label, unit, better in (
        ("affected", "clients that lost their server", "", False),
        ("recovery", "SIGKILL to every client authenticated again", "s", False),
        ("accepted", "messages accepted meanwhile", "", True),
        ("delivered", "delivered and ACKed", "", True),
        ("lost", "lost", "", False),
        ("duplicates", "duplicates", "", False),
        ("left", "ids left in WAIT_ACK", "", False),
    ):
        report.add(key, label, unit, {SUBJECT: values[key]}, higher_is_better=better)
    report.notes.append(
        "a killed server's ZooKeeper node lives until its session expires, so reglog may "
        "route clients to it meanwhile; they retry with jittered backoff"
    )
    if stats.errors:
        report.notes.append(f"client errors: {stats.errors}")
    report.ok = lost == 0
    report.targets.append(Target("nothing queued meanwhile is lost", lost == 0, f"{lost:,} lost"))
    return report


# --- push: the server's write path against bare Twisted's --------------------------------


async def _pigeon_push_path(
    run: Run,
    *,
    clients: int,
    messages: int,
    size: int,
    burst: int,
    batch: int,
    concurrency: int,
) -> DeliveryFigures:
    cluster = await start_pigeon(
        run, servers=1, capacity=connections_per_process(), notification=False
    )
    try:
        generators = await run.generators(generator_count(run, clients), "pigeon")
        run.progress.phase(f"pigeonpush: connecting {clients:,} clients through reglog")
        await generators.connect(
            "pigeon", clients, [{"reglog": cluster.reglog.url}], label="pigeonpush"
        )
        publisher = await run.generators(1, "amp-pusher")
        figures = await _publish_and_wait(
            run,
            label="pigeonpush",
            generators=generators,
            publisher=publisher,
            command="publish_amp",
            arguments={
                "rpc": cluster.servers[0].rpc_address,
                "clients": clients,
                "messages": messages,
                "size": size,
                "batch": batch,
                "concurrency": concurrency,
                "burst": burst,
            },
            server_pids=cluster.server_pids,
        )
        await publisher.finish()
        await generators.finish()
    finally:
        await run.stop(cluster.processes)
    return figures


async def _framing_push_path(
    run: Run, *, clients: int, messages: int, size: int, burst: int
) -> DeliveryFigures:
    server = await services.start_baseline(run.processes, run.reactor)
    try:
        generators = await run.generators(generator_count(run, clients), "twisted")
        run.progress.phase(f"bare Twisted: connecting {clients:,} clients")
        await generators.connect("framing", clients, [{"server": server.address}], label="twisted")
        await generators.reset()
        server_before = cpu_seconds(server.process.pid)
        clients_before = (await generators.stats()).cpu
        run.progress.phase(f"bare Twisted: writing {messages:,} frames")
        started = run.reactor.seconds()
        answer = await control(
            run.reactor,
            services.HOST,
            server.control_port,
            f"push {messages} {size} {burst}",
            run.left(),
        )
        if not answer.startswith("pushed "):
            raise RuntimeError(f"the baseline refused to push: {answer}")
        stats = await _wait_delivered(run, generators, messages, "bare Twisted", frames=True)
        figures = DeliveryFigures(
            accepted=messages,
            refused=0,
            failed=0,
            stats=stats,
            seconds=(stats.last_receipt or run.reactor.seconds()) - started,
            server_cpu=cpu_seconds(server.process.pid) - server_before,
            generator_cpu=stats.cpu - clients_before,
            publish_seconds=float(answer.split()[2]),
        )
        await generators.finish()
    finally:
        await run.stop([server.process])
    return figures


def push_frame_length(size: int) -> int:
    """The length prefix value of a pigeon PUSH with ``size`` bytes of text (the
    bare baseline writes frames of the same length)."""
    from pigeonpush.wire.codec import encode_push

    return len(encode_push("0" * 26, "bench", "x" * size, {})) - 4


async def push(
    run: Run,
    *,
    clients: int,
    messages: int,
    size: int,
    burst: int,
    batch: int,
    concurrency: int,
    baselines: Sequence[str],
    command: str,
) -> Report:
    systems = [SUBJECT] + [b for b in baselines if b == TWISTED]
    report = Report(
        scenario="push",
        title=(
            f"push: {messages:,} PUSH frames of {push_frame_length(size)} bytes written by one "
            f"server to {clients:,} clients"
        ),
        parameters={
            "clients": clients,
            "messages": messages,
            "size": size,
            "frame_bytes": push_frame_length(size),
            "burst": burst,
            "batch": batch,
            "amp_concurrency": concurrency,
        },
        systems=systems,
        command=command,
    )
    results = {
        SUBJECT: await _pigeon_push_path(
            run,
            clients=clients,
            messages=messages,
            size=size,
            burst=burst,
            batch=batch,
            concurrency=concurrency,
        )
    }
    if TWISTED in systems:
        results[TWISTED] = await _framing_push_path(
            run, clients=clients, messages=messages, size=push_frame_length(size), burst=burst
        )

    def each(function: Any) -> dict[str, float | int | None]:
        return {system: function(figures) for system, figures in results.items()}

    def delivered(figures: DeliveryFigures) -> int:
        return max(figures.stats.unique, figures.stats.frames)

    report.add("written", "frames written", "", each(lambda f: f.accepted))
    report.add("delivered", "received and ACKed", "", each(delivered))
    report.add(
        "frames_per_second",
        "frames received and ACKed",
        "/s",
        each(lambda f: delivered(f) / f.seconds if f.seconds > 0 else None),
    )
    report.add(
        "server_cpu_per_frame",
        "server CPU per frame",
        "us",
        each(lambda f: _per(f.server_cpu * 1e6, delivered(f))),
        higher_is_better=False,
    )
    report.add(
        "generator_cpu_per_frame",
        "load generator CPU per frame",
        "us",
        each(lambda f: _per(f.generator_cpu * 1e6, delivered(f))),
        higher_is_better=False,
    )
    report.notes.append(
        "pigeonpush: AMP Push batches (as delivery sends them) -> pigeon-server -> PUSH frames, "
        "window of un-ACKed frames per client, ACKs batched to Redis; bare Twisted: the same "
        "number and length of frames written round-robin as fast as the transports take them; "
        f"both: {burst} consecutive frames to each client"
    )
    pigeon = results[SUBJECT]
    lost = max(0, pigeon.accepted - pigeon.stats.unique)
    report.ok = lost == 0 and pigeon.failed == 0
    ratio = report.metric("frames_per_second").ratio(TWISTED)
    report.targets.append(
        Target(
            "push write path at least 0.7x bare Twisted frames/s",
            None if ratio is None else ratio >= 0.7,
            "" if ratio is None else f"{ratio:.2f}x",
        )
    )
    if pigeon.stats.errors:
        report.notes.append(f"client errors: {pigeon.stats.errors}")
    return report
