"""Uplinks through real daemons on real Redis and ZooKeeper: SDK devices send
uplinks to a ``pigeon-server``; two ``pigeon-notification`` processes with the
same ``--uplink-webhook`` share one position, so each uplink is POSTed once;
the pull API sees every uplink once, however often the devices resent."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults

from pigeonpush.notification.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from pigeonpush.sdk import PushClient, full_jitter
from support.cluster import Cluster
from support.openapi import CheckedClient, OpenAPIDocument
from support.waiting import wait_for
from support.webhook_receiver import WebhookReceiver

#: Real daemons or processes: run where slow tests run (docs/development.rst).
pytestmark = pytest.mark.slow

DOCUMENT = OpenAPIDocument.load(Path(__file__).parent.parent / "docs/openapi/notification.json")
SECRET = "cluster-webhook-secret-0123456789"
DEVICES = 20
UPLINKS_EACH = 3


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path: Path, redis_url: str, zookeeper_hosts: str) -> AsyncIterator[Cluster]:
    from twisted.internet import reactor

    built = Cluster(reactor, tmp_path, redis_url, zookeeper_hosts)
    try:
        yield built
    finally:
        await built.close()


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_uplinks_reach_the_pull_api_and_the_webhook_once_each(
    cluster: Cluster, tmp_path: Path
) -> None:
    from twisted.internet import reactor

    receiver = WebhookReceiver(reactor)
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(SECRET + "\n")
    webhook = ["--uplink-webhook", receiver.url, "--uplink-webhook-secret-file", str(secret_file)]
    delivery = cluster.delivery()
    notifications = [cluster.notification(f"notification-{n}", extra=webhook) for n in (1, 2)]
    reglog = cluster.reglog()
    server = cluster.server("push-a")
    api = CheckedClient(reactor, notifications[0].url("http"), DOCUMENT)
    auth = {"Authorization": f"Bearer {cluster.api_key}"}
    clients = [
        PushClient(
            reactor,
            reglog.url("http"),
            lambda message: None,
            client_id=f"sensor-{n:02d}",
            backoff=full_jitter(initial=0.2, maximum=2.0),
        )
        for n in range(DEVICES)
    ]
    try:
        with cluster.logs_on_failure():
            for daemon in notifications:
                await cluster.wait_healthy(daemon)
            await cluster.wait_server_ready(server, delivery)
            await cluster.wait_reglog_servers(reglog, 1)
            for client in clients:
                client.start()
            online = gatherResults([c.when_authenticated() for c in clients])
            online.addTimeout(60, reactor)
            await online

            # Every uplink sent twice (as after a lost UPLINK_ACK): stored once.
            for _round in range(2):
                acked = gatherResults(
                    [
                        client.send_uplink(
                            {"n": str(n)}, uplink_id=f"r-{n}", resend_on_reconnect=True
                        )
                        for client in clients
                        for n in range(UPLINKS_EACH)
                    ]
                )
                acked.addTimeout(30, reactor)
                await acked
            expected = {
                (client.client_id, f"r-{n}") for client in clients for n in range(UPLINKS_EACH)
            }

            answer = await api.get("/v1/uplinks?after=0&limit=1000", headers=auth)
            assert answer.status == 200, answer.json
            pulled = [(u["clientId"], u["uplinkId"]) for u in answer.json["uplinks"]]
            assert sorted(pulled) == sorted(expected)

            await wait_for(
                lambda: len(receiver.received) >= len(expected),
                timeout=30,
                what="every uplink at the webhook",
            )
            posted: Counter[tuple[str, str]] = Counter()
            for hook in receiver.received:
                assert verify(
                    SECRET.encode(),
                    hook.body,
                    hook.header(TIMESTAMP_HEADER),
                    hook.header(SIGNATURE_HEADER),
                    reactor.seconds(),
                )
                for uplink in json.loads(hook.body)["uplinks"]:
                    posted[(uplink["clientId"], uplink["uplinkId"])] += 1
            assert set(posted) == expected
            assert set(posted.values()) == {1}, "an uplink was POSTed twice"
    finally:
        stopping = gatherResults([client.stop() for client in clients])
        stopping.addTimeout(20, reactor)
        await stopping
        await api.close()
        await receiver.stop()
