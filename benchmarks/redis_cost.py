"""What one device and one message cost Redis, measured on real daemons.

Run from the repository root, in the project's virtualenv::

    python benchmarks/redis_cost.py --devices 1000 --messages 2000 --offline 500
    python benchmarks/redis_cost.py --store cluster ...

Starts Redis (``--store cluster``: a Redis Cluster of 3 masters and 3
replicas, the daemons on its ``redis+cluster://`` URL), ZooKeeper,
pigeon-delivery, one pigeon-server, pigeon-reglog and pigeon-notification on
loopback (the ``pigeonpush-bench`` launchers), then
measures Redis between phases: command calls and their time from
``INFO commandstats`` (commands that a Lua script runs count too, under their
own name, next to the ``evalsha`` that ran them: "calls" is every command
Redis executed, "script calls" how many of them were scripts), Redis CPU from
``INFO cpu``, memory from ``INFO memory`` (``used_memory``) and
``MEMORY USAGE`` of one device's keys. The phases:

connect
    ``--devices`` SDK clients ask reglog for a route and authenticate.
idle
    they stay connected, heartbeating, for ``--idle`` seconds.
unicast
    ``--messages`` notifications, each to one connected device (batch API,
    100 per request), until every one is received and ACKed (no
    ``PIGEON:WAIT_ACK`` left, queue handled).
pending
    ``--offline`` client ids that never connect get 10 notifications each;
    measured once delivery has handled the queue (the messages wait in
    ``WAIT_ACK`` and ``MSG_BODY`` for their device).

The report gives each phase's calls and bytes per device or per message, and
the calls by command. On a cluster, calls, CPU and memory are summed over the
masters; the replicas' CPU and memory are given apart.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import gatherResults

from pigeonpush.sdk import PushClient
from pigeonpush.store import keys as store_keys
from pigeonpush.store.address import parse_cluster_url
from pigeonpush.store.redis import CLUSTER_QUEUE_SHARDS
from pigeonpush.store.redis_cluster import ClusterConnection
from pigeonpush_bench import services
from pigeonpush_bench.measure import cpu_seconds
from pigeonpush_bench.processes import ProcessSet
from pigeonpush_bench.rediscluster import start_redis_cluster

API_KEY = "redis-cost-key-0123456789abcdef"
PENDING_PER_DEVICE = 10
BATCH = 100
TEXT = "x" * 100
#: Commands only this script sends (the daemons never do): left out of the counts.
MEASURING = ("info", "memory|usage", "touch", "xinfo|groups", "scan")


class Snapshot:
    """Redis's counters at one moment, summed over the masters (the replicas'
    CPU and memory apart)."""

    def __init__(self, infos: list[Mapping[str, str]]) -> None:
        self.calls: Counter[str] = Counter()
        self.cpu = self.memory = 0.0
        self.replica_cpu = self.replica_memory = 0.0
        #: CPU seconds of each master, by its port
        self.master_cpu: dict[str, float] = {}
        for info in infos:
            cpu = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
            if info.get("role") != "master":
                self.replica_cpu += cpu
                self.replica_memory += int(info["used_memory"])
                continue
            for key, value in info.items():
                if key.startswith("cmdstat_"):
                    fields = dict(part.split("=") for part in value.split(","))
                    name = key[len("cmdstat_") :]
                    self.calls[name] += int(fields["calls"])
            self.cpu += cpu
            self.master_cpu[info.get("tcp_port", "?")] = cpu
            self.memory += int(info["used_memory"])
        #: CPU seconds of each pigeon daemon (filled by Redis.snapshot)
        self.daemon_cpu: dict[str, float] = {}


def parse_info(text: str) -> dict[str, str]:
    info = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon and not line.startswith("#"):
            info[key] = value.strip()
    return info


class Redis:
    """The store's redis-servers: ``nodes`` (one connection to each, for INFO
    and SCAN), and ``keyed`` for a command about one key (sent to the node
    that serves it)."""

    def __init__(
        self,
        nodes: list[Any],
        keyed: Callable[..., Awaitable[Any]],
        daemons: Mapping[str, int],
        shards: int,
    ) -> None:
        self.nodes = nodes
        self.keyed = keyed
        self.daemons = daemons
        self.shards = shards

    async def snapshot(self) -> Snapshot:
        infos = [
            parse_info(await node.execute_command("INFO", "everything")) for node in self.nodes
        ]
        snapshot = Snapshot(infos)
        snapshot.daemon_cpu = {name: cpu_seconds(pid) for name, pid in self.daemons.items()}
        return snapshot

    async def queue_done(self) -> bool:
        """Delivery read every queued entry of every shard and settled it (XINFO GROUPS)."""
        for shard in range(self.shards):
            groups = await self.keyed("XINFO", "GROUPS", store_keys.queue(shard))
            done = False
            for group in groups:
                fields = dict(zip(group[::2], group[1::2], strict=True))
                if fields["name"] == "delivery":
                    done = int(fields["pending"]) == 0 and int(fields["lag"] or 0) == 0
            if not done:
                return False
        return True

    async def none_waiting(self, client_ids: list[str]) -> bool:
        """No ``WAIT_ACK`` key left for these clients (TOUCH counts existing keys)."""
        for client_id in client_ids:
            if int(await self.keyed("TOUCH", store_keys.wait_ack(client_id))):
                return False
        return True

    async def census(self) -> dict[str, int]:
        """How many keys of each kind (``PIGEON:<KIND>:...``) the masters hold."""
        kinds: Counter[str] = Counter()
        for node in self.nodes:
            if parse_info(await node.execute_command("INFO", "replication"))["role"] != "master":
                continue
            cursor = "0"
            while True:
                cursor, found = await node.execute_command("SCAN", cursor, "COUNT", "1000")
                kinds.update(":".join(key.split(":")[:2]) for key in found)
                if str(cursor) == "0":
                    break
        return dict(sorted(kinds.items()))

    async def memory_usage(self, key: str) -> int:
        value = await self.keyed("MEMORY", "USAGE", key, "SAMPLES", "0")
        return int(value or 0)


def cluster_keyed(reactor: Any, url: str) -> tuple[ClusterConnection, Callable[..., Any]]:
    """The store's slot router, and a ``keyed`` that sends a command to the
    master of its key (the key is the word after the command's name(s))."""
    router = ClusterConnection(
        reactor, parse_cluster_url(url), reply_timeout=10.0, connect_timeout=10.0
    )

    async def keyed(*words: str) -> Any:
        key = words[2] if words[0] in ("MEMORY", "XINFO") else words[1]
        node = await router.node_for(key)
        (reply,) = await router.connection(node).execute([words])
        if isinstance(reply, Exception):
            raise reply
        return reply

    return router, keyed


def delta(before: Snapshot, after: Snapshot, per: int) -> dict[str, Any]:
    calls = after.calls - before.calls
    for command in MEASURING:
        del calls[command]
    scripts = calls["evalsha"] + calls["eval"]
    total = sum(calls.values())
    return {
        "per": per,
        "calls": round(total / per, 2),
        "script calls": round(scripts / per, 2),
        "redis cpu usec": round((after.cpu - before.cpu) * 1e6 / per, 1),
        "memory bytes": round((after.memory - before.memory) / per, 1),
        **(
            {
                "replica cpu usec": round((after.replica_cpu - before.replica_cpu) * 1e6 / per, 1),
                "replica memory bytes": round(
                    (after.replica_memory - before.replica_memory) / per, 1
                ),
            }
            if after.replica_memory
            else {}
        ),
        "by command": {c: round(n / per, 3) for c, n in sorted(calls.items()) if n},
        "daemon cpu usec": {
            name: round((after.daemon_cpu[name] - before.daemon_cpu[name]) * 1e6 / per, 1)
            for name in after.daemon_cpu
        },
    }


async def notify_batches(http: Any, url: str, recipients: list[str], reactor: Any) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(recipients), BATCH):
        chunk = recipients[start : start + BATCH]
        body = {"notifications": [{"to": [c], "title": "cost", "text": TEXT} for c in chunk]}
        response = await http.post(
            url + "/v1/notifications/batch",
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        answer = await response.json()
        assert response.code == 200, answer
        ids += [result["messageId"] for result in answer["results"]]
    return ids


async def wait(reactor: Any, condition: Any, what: str, timeout: float = 300.0) -> None:
    deadline = reactor.seconds() + timeout
    while not await condition():
        if reactor.seconds() > deadline:
            raise TimeoutError(f"{what} within {timeout}s")
        await task.deferLater(reactor, 0.2, lambda: None)


async def run(reactor: Any, options: argparse.Namespace) -> dict[str, Any]:
    import txredisapi
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    processes = ProcessSet(reactor, Path(tempfile.mkdtemp(prefix="redis-cost-")))
    pool = HTTPConnectionPool(reactor, persistent=True)
    http = HTTPClient(Agent(reactor, pool=pool))
    devices: list[PushClient] = []
    router: ClusterConnection | None = None
    try:
        if options.store == "cluster":
            cluster = await start_redis_cluster(
                processes,
                reactor,
                binary=services.require("redis-server", "redis-server"),
                cli=services.require("redis-cli", "redis-tools"),
            )
            url, ports = cluster.url, [node.port for node in cluster.nodes]
        else:
            redis = await services.start_redis(processes, reactor)
            url, ports = redis.url, [redis.port]
        zookeeper = await services.start_zookeeper(processes, reactor)
        common = {"redis_url": url, "zookeeper": zookeeper.hosts, "log_level": "warn"}
        delivery = await services.start_delivery(processes, reactor, **common)
        server = await services.start_pigeon_server(
            processes, reactor, index=0, heartbeat=options.heartbeat,
            capacity=options.devices + 100, **common,
        )  # fmt: skip
        reglog = await services.start_reglog(
            processes, reactor, heartbeat=options.heartbeat, **common
        )
        api = await services.start_notification(
            processes, reactor, redis_url=url, api_key=API_KEY, log_level="warn"
        )

        async def reglog_sees_server() -> bool:
            try:
                body = await (await http.get(reglog.url + "/health")).json()
            except Exception:
                return False
            return bool(body.get("servers") == 1)

        await wait(reactor, reglog_sees_server, "reglog seeing the push server", 60)
        nodes = [
            await txredisapi.Connection(services.HOST, port, reconnect=False, convertNumbers=False)
            for port in ports
        ]
        if options.store == "cluster":
            router, keyed = cluster_keyed(reactor, url)
            shards = CLUSTER_QUEUE_SHARDS
        else:
            keyed, shards = nodes[0].execute_command, 1
        daemons = {
            "server": server.process.pid,
            "delivery": delivery.process.pid,
            "reglog": reglog.process.pid,
            "notification": api.process.pid,
        }
        cost = Redis(nodes, keyed, daemons, shards)
        received: Counter[str] = Counter()
        report: dict[str, Any] = {"devices": options.devices, "store": options.store}

        # --- connect ----------------------------------------------------------------
        start = await cost.snapshot()
        for n in range(options.devices):
            client = PushClient(
                reactor,
                reglog.url,
                lambda message: received.update([message.message_id]),
                client_id=f"cost-device-{n:06d}",
                heartbeat=options.heartbeat,
            )
            devices.append(client)
            client.start()
            if n % 100 == 99:
                await gatherResults([d.when_authenticated() for d in devices[-100:]])
        await gatherResults([d.when_authenticated() for d in devices])
        connected = await cost.snapshot()
        report["connect, per device"] = delta(start, connected, options.devices)
        sample = devices[0].client_id
        report["MEMORY USAGE of one connected device's keys"] = {
            key: await cost.memory_usage(key)
            for key in (store_keys.auth(sample), store_keys.route(sample))
        }

        # --- idle -----------------------------------------------------------------------
        await task.deferLater(reactor, options.idle, lambda: None)
        idle = await cost.snapshot()
        per_device = delta(connected, idle, options.devices)
        every_second = delta(connected, idle, 1)
        scale = 3600.0 / options.idle
        report[f"idle {options.idle:g} s"] = {
            "calls per second, all devices and daemons": round(
                every_second["calls"] / options.idle, 2
            ),
            "by command, per second": {
                c: round(n / options.idle, 2) for c, n in every_second["by command"].items()
            },
            "by command, per device and hour": {
                c: round(n * scale, 2) for c, n in per_device["by command"].items()
            },
            "redis cpu, % of a core": round(every_second["redis cpu usec"] / options.idle / 1e4, 2),
            "redis cpu of each master, % of a core": [
                round((idle.master_cpu[port] - connected.master_cpu[port]) / options.idle * 100, 2)
                for port in sorted(idle.master_cpu)
            ],
            "daemon cpu, % of a core": {
                name: round(usec / options.idle / 1e4, 2)
                for name, usec in every_second["daemon cpu usec"].items()
            },
            "memory bytes per device (change over the window)": per_device["memory bytes"],
        }

        # --- unicast --------------------------------------------------------------------
        ids = [d.client_id for d in devices]
        recipients = [random.choice(ids) for _ in range(options.messages)]
        sent = await notify_batches(http, api.url, recipients, reactor)

        async def all_acked() -> bool:
            if len(set(sent) - set(received)) > 0:
                return False
            return await cost.queue_done() and await cost.none_waiting(ids)

        await wait(reactor, all_acked, "every message received and ACKed")
        unicast = await cost.snapshot()
        report["unicast accept -> delivery -> ACK, per message"] = delta(
            idle, unicast, options.messages
        )
        sample_body = store_keys.msg_body(sent[0])
        report["after the ACKs"] = {
            "MEMORY USAGE of one message's body": await cost.memory_usage(sample_body),
            "PTTL of that body (ms)": await keyed("PTTL", sample_body),
            "keys": await cost.census(),
            "queue stream length": sum(
                [int(await keyed("XLEN", store_keys.queue(shard))) for shard in range(shards)]
            ),
        }

        # --- pending --------------------------------------------------------------------
        offline = [f"cost-offline-{n:06d}" for n in range(options.offline)]
        await notify_batches(
            http, api.url, [c for c in offline for _ in range(PENDING_PER_DEVICE)], reactor
        )

        async def queued() -> bool:
            return await cost.queue_done()

        await wait(reactor, queued, "the pending messages handled by delivery")
        held = await cost.snapshot()
        report[f"{PENDING_PER_DEVICE} pending messages, per offline device"] = delta(
            unicast, held, options.offline
        )
        report[
            f"MEMORY USAGE of one offline device's WAIT_ACK ({PENDING_PER_DEVICE} ids)"
        ] = await cost.memory_usage(store_keys.wait_ack(offline[0]))
        report["SCARD of that WAIT_ACK"] = await keyed("SCARD", store_keys.wait_ack(offline[0]))
        for node in nodes:
            await node.disconnect()
        if router is not None:
            await router.close()
        return report
    finally:
        await defer.DeferredList([d.stop() for d in devices], consumeErrors=True)
        await pool.closeCachedConnections()
        await processes.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--offline", type=int, default=500)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle window")
    parser.add_argument("--heartbeat", type=float, default=30.0, help="servers' --heartbeat")
    parser.add_argument(
        "--store",
        choices=["redis", "cluster"],
        default="redis",
        help="one Redis, or a Redis Cluster of 3 masters and 3 replicas (default redis)",
    )
    options = parser.parse_args()

    async def go(reactor: Any) -> None:
        print(json.dumps(await run(reactor, options), indent=2))

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))


if __name__ == "__main__":
    main()
