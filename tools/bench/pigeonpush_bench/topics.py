"""The topic scenarios (docs/audiences.rst): ``fanout``, ``catchup`` and
``connections --topics-per-client``.

``fanout``: N clients subscribed to one topic (through the notification API,
before they connect), M messages published to it; every client ACKs every
message. Then Mosquitto: as many QoS 1 subscribers of one topic, the same M
messages; with several servers, as many brokers, each with its share of the
subscribers and every message published to each (as each push server
receives each topic message once).

``catchup``: N subscribers offline while M messages go to their topic, then
all connect and read what they missed from the topic's log.

``connections --topics-per-client T``: the connections scenario twice, both
on pigeonpush, with T topic subscriptions per client and with none.

Each phase function runs one system and returns its figures; ``*_report``
builds the report from them (pure, tested without processes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.internet import defer

from pigeonpush_bench import services
from pigeonpush_bench.cluster import Generators, PigeonCluster, Run, Stats, start_pigeon
from pigeonpush_bench.measure import connections_per_process, total_rss
from pigeonpush_bench.processes import gather
from pigeonpush_bench.report import SUBJECT, Report, Target
from pigeonpush_bench.scenarios import (
    ACK_WINDOW,
    KIB,
    MOSQUITTO,
    STALL,
    ConnectionFigures,
    _cpu_each,
    _steady,
    generator_count,
)

#: The topic of the pigeon runs, and of the Mosquitto runs.
TOPIC = "bench.fanout"
MQTT_TOPIC = "bench/fanout"
#: Clients per subscribers request (the API's limit).
SUBSCRIBE_BATCH = 1000
#: The memory comparison's second system: the same pigeonpush without topics.
NO_TOPICS = "no topics"


@attrs.define(slots=True)
class FanoutFigures:
    """One system's topic deliveries."""

    subscribers: int
    published: int
    stats: Stats
    #: Subscribers that lack at least one message.
    short: int
    #: First message sent (or, for catch-up, first connect) to last receipt.
    seconds: float
    cpu_by_process: dict[str, float] = attrs.field(factory=dict)
    generator_cpu: float = 0.0
    refused: int = 0
    failed: int = 0
    #: Catch-up: seconds until every client was connected.
    connect_seconds: float | None = None
    #: Catch-up: Redis commands while draining, and the most frequent.
    redis_commands: int | None = None
    redis_top: dict[str, int] = attrs.field(factory=dict)

    @property
    def expected(self) -> int:
        """Every message to every connected subscriber (one that could not
        connect is counted apart, in ``stats.ready``)."""
        return min(self.subscribers, self.stats.ready) * self.published

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.stats.unique)

    @property
    def rate(self) -> float | None:
        return self.stats.unique / self.seconds if self.seconds > 0 else None


def _per(value: float, count: int) -> float | None:
    return value / count if count else None


# --- waiting and Redis --------------------------------------------------------------


async def _wait_deliveries(
    run: Run, generators: Generators, subscribers: int, per_client: int, label: str
) -> tuple[Stats, int]:
    """Until every connected subscriber holds ``per_client`` messages, nothing
    new came for STALL seconds, or the run's time is up: the stats, and how
    many connected subscribers hold fewer."""
    last, last_change = -1, run.reactor.seconds()
    arguments = [{"expected": per_client} for _ in generators.members]
    while True:
        answers = await generators.call_each("stats", arguments)
        stats = Stats.merge(answers)
        expected = min(subscribers, stats.ready) * per_client
        short = sum(int(answer.get("short") or 0) for answer in answers)
        now = run.reactor.seconds()
        run.progress.update(f"{label}: {stats.unique:,}/{expected:,} delivered")
        if stats.unique >= expected:
            return stats, short
        if stats.unique != last:
            last, last_change = stats.unique, now
        elif now - last_change > STALL:
            return stats, short
        if run.deadline - now <= 0.5:
            return stats, short
        await run.sleep(0.5)


class RedisInfo:
    """INFO of the run's Redis: commands processed, per command, memory."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    @classmethod
    async def open(cls, port: int) -> RedisInfo:
        import txredisapi

        connection = await txredisapi.Connection(
            services.HOST, port, reconnect=False, convertNumbers=False
        )
        return cls(connection)

    async def section(self, name: str) -> dict[str, str]:
        text = await self._connection.execute_command("INFO", name)
        return parse_info(text if isinstance(text, str) else text.decode())

    async def commands(self) -> tuple[int, dict[str, int]]:
        """Commands processed so far, and calls by command."""
        stats = await self.section("stats")
        by_command = {
            key.removeprefix("cmdstat_"): int(fields.split(",")[0].split("=")[1])
            for key, fields in (await self.section("commandstats")).items()
        }
        return int(stats["total_commands_processed"]), by_command

    async def used_memory(self) -> int:
        return int((await self.section("memory"))["used_memory"])

    async def close(self) -> None:
        await self._connection.disconnect()


def parse_info(text: str) -> dict[str, str]:
    """``INFO``'s ``key:value`` lines (comments and blank lines skipped)."""
    fields = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def command_delta(
    before: Mapping[str, int], after: Mapping[str, int], top: int = 6
) -> dict[str, int]:
    """The ``top`` commands by calls between two commandstats, most first."""
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
    ranked = sorted(((calls, name) for name, calls in delta.items() if calls > 0), reverse=True)
    return {name: calls for calls, name in ranked[:top]}


async def _subscribe(
    publisher: Generators, cluster: PigeonCluster, topics: Sequence[str], count: int
) -> None:
    assert cluster.notification is not None
    await publisher.call_each(
        "subscribe",
        [
            {
                "api": cluster.notification.url,
                "key": cluster.api_key,
                "topics": list(topics),
                "count": count,
                "batch": SUBSCRIBE_BATCH,
            }
        ],
    )


def _publish_arguments(cluster: PigeonCluster, subscribers: int, messages: int, size: int) -> Any:
    assert cluster.notification is not None
    # One request at a time: the topic's log then holds the messages in the
    # order of their ids, which is what the clients' order check reads.
    return {
        "api": cluster.notification.url,
        "key": cluster.api_key,
        "clients": subscribers,
        "messages": messages,
        "size": size,
        "batch": min(messages, 100),
        "concurrency": 1,
        "topic": TOPIC,
    }


# --- fanout ---------------------------------------------------------------------------


async def _pigeon_fanout(
    run: Run, *, subscribers: int, messages: int, size: int, servers: int
) -> FanoutFigures:
    cluster = await start_pigeon(run, servers=servers, capacity=connections_per_process())
    try:
        publisher = await run.generators(1, "api-publisher")
        run.progress.phase(f"pigeonpush: subscribing {subscribers:,} clients to {TOPIC}")
        await _subscribe(publisher, cluster, [TOPIC], subscribers)
        generators = await run.generators(generator_count(run, subscribers), "pigeon")
        run.progress.phase(f"pigeonpush: connecting {subscribers:,} subscribers through reglog")
        await generators.connect(
            "pigeon",
            subscribers,
            [{"reglog": cluster.reglog.url, "topic": TOPIC}],
            label="pigeonpush",
        )
        await run.sleep(run.settings.settle)
        await generators.reset()
        pids = cluster.system_pids
        before = _cpu_each(pids)
        generators_before = (await generators.stats()).cpu + (await publisher.stats()).cpu
        run.progress.phase(f"pigeonpush: publishing {messages:,} messages to {TOPIC}")
        (published,) = await publisher.call_each(
            "publish_api", [_publish_arguments(cluster, subscribers, messages, size)]
        )
        accepted = int(published["accepted"])
        stats, short = await _wait_deliveries(run, generators, subscribers, accepted, "pigeonpush")
        after = _cpu_each(pids)
        generators_after = stats.cpu + (await publisher.stats()).cpu
        end = stats.last_receipt if stats.last_receipt is not None else run.reactor.seconds()
        figures = FanoutFigures(
            subscribers=subscribers,
            published=accepted,
            stats=stats,
            short=short,
            seconds=end - float(published["started"]),
            cpu_by_process={name: after[name] - before[name] for name in pids},
            generator_cpu=generators_after - generators_before,
            refused=int(published["refused"]),
            failed=int(published["failed"]),
        )
        await publisher.finish()
        await generators.finish()
    finally:
        await run.stop(cluster.processes)
    return figures


async def _mqtt_fanout(
    run: Run, *, subscribers: int, messages: int, size: int, brokers: int
) -> FanoutFigures:
    started = [
        await services.start_mosquitto(
            run.processes, run.reactor, name=f"mosquitto-{index}", max_inflight=ACK_WINDOW
        )
        for index in range(brokers)
    ]
    try:
        generators = await run.generators(generator_count(run, subscribers), "mosquitto")
        run.progress.phase(f"Mosquitto: subscribing {subscribers:,} clients to {MQTT_TOPIC}")
        await generators.connect(
            "mqtt",
            subscribers,
            [{"server": broker.address, "topic": MQTT_TOPIC} for broker in started],
            label="Mosquitto",
        )
        publisher = await run.generators(1, "mqtt-publisher")
        await run.sleep(run.settings.settle)
        await generators.reset()
        pids = {broker.process.name: broker.process.pid for broker in started}
        before = _cpu_each(pids)
        generators_before = (await generators.stats()).cpu + (await publisher.stats()).cpu
        run.progress.phase(f"Mosquitto: publishing {messages:,} messages to each broker")
        (member,) = publisher.members
        answers = await gather(
            [
                defer.ensureDeferred(
                    _call(
                        member,
                        "publish_mqtt",
                        server=broker.address,
                        clients=subscribers,
                        messages=messages,
                        size=size,
                        window=ACK_WINDOW,
                        topic=MQTT_TOPIC,
                    )
                )
                for broker in started
            ]
        )
        accepted = min(int(answer["accepted"]) for answer in answers)
        stats, short = await _wait_deliveries(run, generators, subscribers, accepted, "Mosquitto")
        after = _cpu_each(pids)
        generators_after = stats.cpu + (await publisher.stats()).cpu
        first = min(float(answer["started"]) for answer in answers)
        end = stats.last_receipt if stats.last_receipt is not None else run.reactor.seconds()
        figures = FanoutFigures(
            subscribers=subscribers,
            published=accepted,
            stats=stats,
            short=short,
            seconds=end - first,
            cpu_by_process={name: after[name] - before[name] for name in pids},
            generator_cpu=generators_after - generators_before,
            failed=sum(int(answer["failed"]) for answer in answers),
        )
        await publisher.finish()
        await generators.finish()
    finally:
        await run.stop([broker.process for broker in started])
    return figures


async def _call(member: Any, command: str, **arguments: Any) -> dict[str, Any]:
    result: dict[str, Any] = await member.call(command, **arguments)
    return result


def fanout_report(
    results: Mapping[str, FanoutFigures],
    *,
    subscribers: int,
    messages: int,
    size: int,
    servers: int,
    command: str,
) -> Report:
    report = Report(
        scenario="fanout",
        title=(
            f"fanout: {messages:,} messages of {size} bytes to one topic of {subscribers:,} "
            f"subscribers over {servers} server process(es)"
        ),
        parameters={
            "subscribers": subscribers,
            "messages": messages,
            "size": size,
            "servers": servers,
            "mosquitto_brokers": servers if MOSQUITTO in results else 0,
        },
        systems=list(results),
        command=command,
    )

    def each(function: Any) -> dict[str, float | int | None]:
        return {system: function(figures) for system, figures in results.items()}

    report.add("connected", "subscribers connected", "", each(lambda f: f.stats.ready))
    report.add("published", "messages published", "", each(lambda f: f.published))
    report.add("expected", "deliveries expected", "", each(lambda f: f.expected))
    report.add("delivered", "delivered and ACKed", "", each(lambda f: f.stats.unique))
    report.add("lost", "lost deliveries", "", each(lambda f: f.lost), higher_is_better=False)
    report.add(
        "short",
        "subscribers missing a message",
        "",
        each(lambda f: f.short),
        higher_is_better=False,
    )
    report.add(
        "duplicates", "duplicates", "", each(lambda f: f.stats.duplicates), higher_is_better=False
    )
    report.add(
        "out_of_order",
        "out of order",
        "",
        each(lambda f: f.stats.out_of_order),
        higher_is_better=False,
    )
    report.add("seconds", "first send to last receipt", "s", each(lambda f: f.seconds))
    report.add("throughput", "deliveries to ACK", "/s", each(lambda f: f.rate))
    for name, fraction in (("p50", 0.50), ("p99", 0.99), ("max", 1.0)):
        report.add(
            f"latency_{name}",
            f"latency {name}, publisher send to client receipt",
            "ms",
            each(lambda f, q=fraction: _ms(f.stats.latency_send.percentile(q))),
            higher_is_better=False,
        )
    report.add(
        "server_cpu_per_delivery",
        "server-side CPU per delivery",
        "us",
        each(lambda f: _per(sum(f.cpu_by_process.values()) * 1e6, f.stats.unique)),
        higher_is_better=False,
    )
    report.add(
        "generator_cpu_per_delivery",
        "load generator CPU per delivery",
        "us",
        each(lambda f: _per(f.generator_cpu * 1e6, f.stats.unique)),
        higher_is_better=False,
    )
    _process_notes(report, results)
    report.notes.append(
        "pigeonpush path: one notification API POST per batch -> topic log and feed in Redis -> "
        "each pigeon-server reads the feed once and writes the PUSH, encoded once, to its "
        "subscribed sessions; each client ACKs each message. Mosquitto: QoS 1 PUBLISH -> "
        "broker -> every subscriber, PUBACK both ways; with several brokers every message "
        "is published to each"
    )
    pigeon = results.get(SUBJECT)
    if pigeon is None:
        return report
    report.ok = pigeon.lost == 0 and pigeon.stats.ready >= subscribers
    report.targets.append(
        Target("zero lost", pigeon.lost == 0, f"{pigeon.lost:,} lost, {pigeon.short:,} short")
    )
    if MOSQUITTO in results:
        ratio = report.metric("throughput").ratio(MOSQUITTO)
        report.targets.append(
            Target(
                "fan-out at least 0.5x Mosquitto's deliveries/s",
                None if ratio is None else ratio >= 0.5,
                "" if ratio is None else f"{ratio:.2f}x",
            )
        )
    return report


def _ms(micros: int | None) -> float | None:
    return None if micros is None else micros / 1000.0


def _process_notes(report: Report, results: Mapping[str, FanoutFigures]) -> None:
    for system, figures in results.items():
        if figures.cpu_by_process and figures.stats.unique:
            report.notes.append(
                f"{system} server-side CPU per delivery by process (us): "
                + ", ".join(
                    f"{name} {seconds * 1e6 / figures.stats.unique:.2f}"
                    for name, seconds in figures.cpu_by_process.items()
                )
            )
        if figures.refused or figures.failed:
            report.notes.append(
                f"{system}: {figures.refused} refused and {figures.failed} failed at the publisher"
            )
        if figures.stats.ready < figures.subscribers:
            report.notes.append(
                f"{system}: {figures.stats.ready:,} of {figures.subscribers:,} subscribers "
                "connected"
            )
        if figures.stats.errors:
            report.notes.append(f"{system}: client errors {figures.stats.errors}")


async def fanout(
    run: Run,
    *,
    subscribers: int,
    messages: int,
    size: int,
    servers: int,
    baselines: Sequence[str],
    command: str,
) -> Report:
    results = {
        SUBJECT: await _pigeon_fanout(
            run, subscribers=subscribers, messages=messages, size=size, servers=servers
        )
    }
    if MOSQUITTO in baselines:
        results[MOSQUITTO] = await _mqtt_fanout(
            run, subscribers=subscribers, messages=messages, size=size, brokers=servers
        )
    return fanout_report(
        results,
        subscribers=subscribers,
        messages=messages,
        size=size,
        servers=servers,
        command=command,
    )


# --- catchup --------------------------------------------------------------------------


async def _pigeon_catchup(
    run: Run, *, subscribers: int, messages: int, size: int, servers: int
) -> FanoutFigures:
    cluster = await start_pigeon(run, servers=servers, capacity=connections_per_process())
    try:
        assert cluster.redis is not None  # the topic scenarios run on one Redis
        info = await RedisInfo.open(cluster.redis.port)
        publisher = await run.generators(1, "api-publisher")
        run.progress.phase(f"subscribing {subscribers:,} offline clients to {TOPIC}")
        await _subscribe(publisher, cluster, [TOPIC], subscribers)
        run.progress.phase(f"publishing {messages:,} messages to {TOPIC} while they are offline")
        (published,) = await publisher.call_each(
            "publish_api", [_publish_arguments(cluster, subscribers, messages, size)]
        )
        accepted = int(published["accepted"])
        await publisher.finish()
        generators = await run.generators(generator_count(run, subscribers), "pigeon")
        await run.sleep(run.settings.settle)
        pids = cluster.system_pids
        before = _cpu_each(pids)
        generators_before = (await generators.stats()).cpu
        commands_before, by_command_before = await info.commands()
        run.progress.phase(f"connecting {subscribers:,} subscribers: they catch up")
        connect_started = run.reactor.seconds()
        connect_seconds, _ = await generators.connect(
            "pigeon",
            subscribers,
            [{"reglog": cluster.reglog.url, "topic": TOPIC}],
            label="pigeonpush",
        )
        stats, short = await _wait_deliveries(run, generators, subscribers, accepted, "catch-up")
        commands_after, by_command_after = await info.commands()
        after = _cpu_each(pids)
        end = stats.last_receipt if stats.last_receipt is not None else run.reactor.seconds()
        figures = FanoutFigures(
            subscribers=subscribers,
            published=accepted,
            stats=stats,
            short=short,
            seconds=end - connect_started,
            cpu_by_process={name: after[name] - before[name] for name in pids},
            generator_cpu=stats.cpu - generators_before,
            refused=int(published["refused"]),
            failed=int(published["failed"]),
            connect_seconds=connect_seconds,
            # Less the measurement's own two INFO calls before (an INFO's
            # figure counts the earlier commands, not itself); commands run
            # inside scripts count, as total_commands_processed counts them.
            redis_commands=commands_after - commands_before - 2,
            redis_top=command_delta(by_command_before, by_command_after),
        )
        await info.close()
        await generators.finish()
    finally:
        await run.stop(cluster.processes)
    return figures


def catchup_report(
    pigeon: FanoutFigures, *, messages: int, size: int, servers: int, command: str
) -> Report:
    report = Report(
        scenario="catchup",
        title=(
            f"catchup: {pigeon.subscribers:,} subscribers of one topic offline while "
            f"{messages:,} messages are published, then all connect"
        ),
        parameters={
            "subscribers": pigeon.subscribers,
            "per_subscriber": messages,
            "size": size,
            "servers": servers,
        },
        systems=[SUBJECT],
        command=command,
    )

    def one(value: float | int | None) -> dict[str, float | int | None]:
        return {SUBJECT: value}

    report.add("connected", "subscribers connected", "", one(pigeon.stats.ready))
    report.add("expected", "deliveries expected", "", one(pigeon.expected))
    report.add("delivered", "delivered and ACKed", "", one(pigeon.stats.unique))
    report.add("lost", "lost deliveries", "", one(pigeon.lost), higher_is_better=False)
    report.add(
        "short", "subscribers missing a message", "", one(pigeon.short), higher_is_better=False
    )
    report.add("duplicates", "duplicates", "", one(pigeon.stats.duplicates), higher_is_better=False)
    report.add(
        "out_of_order", "out of order", "", one(pigeon.stats.out_of_order), higher_is_better=False
    )
    report.add(
        "connect_seconds",
        "first connect to every subscriber connected",
        "s",
        one(pigeon.connect_seconds),
        higher_is_better=False,
    )
    report.add(
        "drain_seconds",
        "time to drain: first connect to last message ACKed",
        "s",
        one(pigeon.seconds),
        higher_is_better=False,
    )
    report.add("throughput", "deliveries to ACK", "/s", one(pigeon.rate))
    report.add(
        "redis_per_delivery",
        "Redis commands per delivered message",
        "",
        one(
            None
            if pigeon.redis_commands is None
            else _per(pigeon.redis_commands, pigeon.stats.unique)
        ),
        higher_is_better=False,
    )
    report.add(
        "server_cpu_per_delivery",
        "server-side CPU per delivery",
        "us",
        one(_per(sum(pigeon.cpu_by_process.values()) * 1e6, pigeon.stats.unique)),
        higher_is_better=False,
    )
    _process_notes(report, {SUBJECT: pigeon})
    if pigeon.redis_top:
        report.notes.append(
            "Redis commands while catching up (connects included), most frequent: "
            + ", ".join(f"{name} {calls:,}" for name, calls in pigeon.redis_top.items())
        )
    report.notes.append(
        "each subscriber's AUTH_OK starts its catch-up: the server reads its position, then "
        "the topic's log from there (at most 100 entries a read), and the position moves as "
        "ACKs come; the count includes what connecting costs (reglog's token, the route)"
    )
    # At-least-once: duplicates are reported, not a failure (as for unicast).
    report.ok = pigeon.lost == 0 and pigeon.stats.ready >= pigeon.subscribers
    report.targets.append(
        Target("zero lost", pigeon.lost == 0, f"{pigeon.lost:,} lost, {pigeon.short:,} short")
    )
    return report


async def catchup(
    run: Run, *, subscribers: int, messages: int, size: int, servers: int, command: str
) -> Report:
    pigeon = await _pigeon_catchup(
        run, subscribers=subscribers, messages=messages, size=size, servers=servers
    )
    return catchup_report(pigeon, messages=messages, size=size, servers=servers, command=command)


# --- memory: connections with topics ----------------------------------------------------


@attrs.define(slots=True)
class TopicMemoryFigures:
    connections: ConnectionFigures
    topics_per_client: int
    #: Redis used_memory added by the subscriptions.
    redis_added: int = 0


async def _pigeon_topic_connections(
    run: Run, *, clients: int, servers: int, topics: Sequence[str]
) -> TopicMemoryFigures:
    cluster = await start_pigeon(run, servers=servers, capacity=connections_per_process())
    try:
        pids = cluster.server_pids
        redis_added = 0
        if topics:
            assert cluster.redis is not None
            info = await RedisInfo.open(cluster.redis.port)
            publisher = await run.generators(1, "api-publisher")
            used_before = await info.used_memory()
            run.progress.phase(f"subscribing {clients:,} clients to {len(topics)} topics each")
            await _subscribe(publisher, cluster, topics, clients)
            redis_added = await info.used_memory() - used_before
            await info.close()
            await publisher.finish()
        await run.sleep(1.0)
        idle = total_rss(list(pids.values()))
        generators = await run.generators(generator_count(run, clients), "pigeon")
        label = f"pigeonpush, {len(topics)} topics a client"
        run.progress.phase(f"{label}: connecting {clients:,} clients through reglog")
        seconds, _ = await generators.connect(
            "pigeon", clients, [{"reglog": cluster.reglog.url}], label=label
        )
        figures = await _steady(run, pids, generators, idle, seconds)
        await generators.finish()
    finally:
        await run.stop(cluster.processes)
    return TopicMemoryFigures(figures, len(topics), redis_added)


def topic_names(count: int) -> list[str]:
    return [f"bench.topic-{index:02d}" for index in range(count)]


def topic_memory_report(
    with_topics: TopicMemoryFigures,
    without: TopicMemoryFigures,
    *,
    clients: int,
    servers: int,
    command: str,
) -> Report:
    per_client = with_topics.topics_per_client
    report = Report(
        scenario="connections",
        title=(
            f"connections: {clients:,} clients over {servers} server process(es), each "
            f"subscribed to {per_client} topics, against none"
        ),
        parameters={"n": clients, "servers": servers, "topics_per_client": per_client},
        systems=[SUBJECT, NO_TOPICS],
        command=command,
    )
    results = {SUBJECT: with_topics.connections, NO_TOPICS: without.connections}

    def each(function: Any) -> dict[str, float | int | None]:
        return {system: function(figures) for system, figures in results.items()}

    def added(figures: ConnectionFigures) -> float | None:
        return _per((figures.loaded_rss - figures.idle_rss) / KIB, figures.connected)

    report.add("connected", "clients connected", "", each(lambda f: f.connected))
    report.add("connect_rate", "connect + handshake rate", "/s", each(lambda f: f.rate))
    report.add(
        "rss_added_per_connection",
        "server RSS per connection, added over idle",
        "KiB",
        each(added),
        higher_is_better=False,
    )
    report.add(
        "rss_loaded",
        "server RSS with the clients",
        "MiB",
        each(lambda f: f.loaded_rss / KIB / KIB),
        higher_is_better=False,
    )
    report.add(
        "server_cpu",
        "server CPU at steady heartbeat load",
        "% of a core",
        each(lambda f: f.server_cores * 100),
        higher_is_better=False,
    )
    subscriptions = with_topics.connections.connected * per_client
    mine, theirs = added(with_topics.connections), added(without.connections)
    per_subscription = (
        None
        if mine is None or theirs is None or not per_client
        else (mine - theirs) * KIB / per_client
    )
    report.add(
        "rss_per_subscription",
        "server RSS per subscription (added per connection, less none's)",
        "bytes",
        {SUBJECT: per_subscription},
        higher_is_better=False,
    )
    report.add(
        "redis_per_subscription",
        "Redis used_memory per subscription",
        "bytes",
        {SUBJECT: _per(with_topics.redis_added, clients * per_client)},
        higher_is_better=False,
    )
    report.notes.append(
        f"both runs are pigeonpush with the notification API; {subscriptions:,} subscriptions "
        "made through POST /v1/topics/{topic}/subscribers before the clients connect, so each "
        "session loads its topics at AUTH_OK; the server's CPU at steady load includes each "
        "heartbeat's catch-up of every topic of the device"
    )
    report.ok = (
        with_topics.connections.connected == clients and without.connections.connected == clients
    )
    return report


async def topic_connections(
    run: Run, *, clients: int, servers: int, topics_per_client: int, command: str
) -> Report:
    without = await _pigeon_topic_connections(run, clients=clients, servers=servers, topics=[])
    with_topics = await _pigeon_topic_connections(
        run, clients=clients, servers=servers, topics=topic_names(topics_per_client)
    )
    return topic_memory_report(
        with_topics, without, clients=clients, servers=servers, command=command
    )
