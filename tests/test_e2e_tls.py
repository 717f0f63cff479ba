"""A whole cluster over TLS, with certificates made at run time.

Every daemon is ``twistd -n`` (tests/support/cluster.py) on loopback: the push
server listens with ``ssl:`` for devices and for delivery's RPC, delivery's
Pull port is ``ssl:`` too (the server pulls over TLS), reglog answers over
HTTPS, Redis speaks only TLS (``rediss://``, every daemon), and each side
verifies the other against the test's private CA (``--rpc-ca-file``,
``ssl_ca_certs``, the SDK's ``ca_file``). Then:

1. an SDK client that trusts the CA learns from reglog that the server speaks
   TLS, authenticates, and gets a notification end to end (receipt: acked);
2. an SDK client that trusts another CA never authenticates: every attempt
   ends with a plain "not signed by a trusted authority", and the message
   sent to it stays pending;
3. ``pigeonpush listen --ca-file`` prints a notification sent to it.

ROUTE holds the server's ``tls:`` RPC address while the first client is
online, and the server's conditional cleanup still recognises it as its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.web.client import Agent, HTTPConnectionPool

from pigeonpush.sdk import (
    Authenticated,
    ClientEvent,
    Disconnected,
    Message,
    PushClient,
    full_jitter,
)
from pigeonpush.store import open_store
from pigeonpush.tls import ClientTLS
from support.certs import CertificateAuthority, ServerCertificate
from support.cluster import Cluster
from support.openapi import CheckedClient, OpenAPIDocument
from support.servers import tls_redis_server
from support.waiting import wait_for

#: Real daemons or processes: run where slow tests run (docs/development.rst).
pytestmark = pytest.mark.slow

DOCUMENT = OpenAPIDocument.load(Path(__file__).parent.parent / "docs/openapi/notification.json")
BACKOFF = full_jitter(initial=0.2, maximum=1.0)


@attrs.define(eq=False)
class Device:
    received: list[Message] = attrs.Factory(list)
    events: list[ClientEvent] = attrs.Factory(list)

    def refusals(self) -> list[Disconnected]:
        return [e for e in self.events if isinstance(e, Disconnected) and not e.authenticated]


@attrs.frozen
class Pki:
    authority: CertificateAuthority
    certificate: ServerCertificate
    stranger: CertificateAuthority


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    authority = CertificateAuthority.create(tmp_path / "pki" / "ca")
    return Pki(
        authority,
        authority.issue(tmp_path / "pki" / "server"),
        CertificateAuthority.create(tmp_path / "pki" / "stranger"),
    )


@pytest.fixture
def rediss_url(tmp_path: Path, pki: Pki) -> Iterator[str]:
    """A Redis that speaks only TLS; the URL trusts the test's CA."""
    directory = tmp_path / "redis"
    directory.mkdir()
    with tls_redis_server(
        directory, pki.certificate.cert_file, pki.certificate.key_file, pki.authority.ca_file
    ) as port:
        yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={pki.authority.ca_file}"


@pytest_twisted.async_yield_fixture
async def cluster(
    tmp_path: Path, rediss_url: str, zookeeper_hosts: str, pki: Pki
) -> AsyncIterator[Cluster]:
    from twisted.internet import reactor

    built = Cluster(reactor, tmp_path, rediss_url, zookeeper_hosts, ca_file=pki.authority.ca_file)
    try:
        yield built
    finally:
        await built.close()


def _device(
    reglog_url: str, client_id: str, ca_file: Path, http_agent: Any = None
) -> tuple[Device, PushClient]:
    from twisted.internet import reactor

    device = Device()
    client = PushClient(
        reactor,
        reglog_url,
        device.received.append,
        client_id=client_id,
        ca_file=str(ca_file),
        backoff=BACKOFF,
        max_route_failures=50,
        http_agent=http_agent,
    )
    client.on_event(device.events.append)
    return device, client


async def _send(api: CheckedClient, key: str, to: str, text: str) -> str:
    body = {"to": [to], "title": "tls", "text": text}
    answer = await api.post("/v1/notifications", body, headers={"Authorization": f"Bearer {key}"})
    assert answer.status == 202, answer.json
    return str(answer.json["messageId"])


async def _receipt(api: CheckedClient, key: str, message_id: str) -> Any:
    answer = await api.get(
        f"/v1/notifications/{message_id}", headers={"Authorization": f"Bearer {key}"}
    )
    assert answer.status == 200, answer.json
    return answer.json


@pytest.mark.timeout(180)
@pytest_twisted.ensureDeferred
async def test_a_cluster_over_tls_delivers_to_a_verifying_client_only(
    cluster: Cluster, pki: Pki, tmp_path: Path
) -> None:
    from twisted.internet import reactor

    ca = str(pki.authority.ca_file)
    delivery = cluster.delivery(certificate=pki.certificate, extra=["--rpc-ca-file", ca])
    notification = cluster.notification()
    reglog = cluster.reglog(certificate=pki.certificate)
    server = cluster.server("push-tls", certificate=pki.certificate, extra=["--rpc-ca-file", ca])
    api = CheckedClient(reactor, notification.url("http"), DOCUMENT)
    key = cluster.api_key
    clients: list[PushClient] = []
    store = open_store(cluster.redis_url, reactor)
    try:
        with cluster.logs_on_failure():
            await cluster.wait_healthy(delivery, "metrics")
            await cluster.wait_healthy(notification)
            # The server pulls from delivery over TLS: it names it tls:...
            await cluster.wait_server_ready(server, delivery)
            await cluster.wait_reglog_servers(reglog, 1)
            assert reglog.url("http").startswith("https://")

            # --- 1. a client that trusts the CA: online over TLS, gets a message -----
            trusting, client = _device(reglog.url("http"), "trusting-1", pki.authority.ca_file)
            clients.append(client)
            client.start()
            online = client.when_authenticated()
            online.addTimeout(30, reactor)
            event = await online
            assert isinstance(event, Authenticated)
            assert event.server == server.address("client")
            session = client._session
            assert session is not None and session.transport is not None
            assert session.transport.getPeerCertificate() is not None  # TLS, verified
            message_id = await _send(api, key, "trusting-1", "over tls")
            await wait_for(
                lambda: [m.message_id for m in trusting.received] == [message_id],
                timeout=30,
                what="the message over TLS",
            )
            assert trusting.received[0].text == "over tls"
            # ROUTE holds the server's RPC address with its transport ...
            assert await store.route("trusting-1") == server.advertised("rpc")

            async def acked() -> bool:
                receipt = await _receipt(api, key, message_id)
                return bool(receipt["acked"] == 1 and receipt["pending"] == [])

            await wait_for(acked, timeout=20, interval=0.2, what="the receipt to say acked")
            # ... and the conditional cleanup, comparing it, clears it on disconnect.
            await client.stop()

            async def route_cleared() -> bool:
                return await store.route("trusting-1") is None

            await wait_for(route_cleared, timeout=10, what="ROUTE to be cleared")

            # --- 2. a client that trusts another CA never gets in ---------------------
            # (it reaches reglog with an agent of its own: only the push server's
            # certificate is checked against the stranger CA)
            agent = Agent(
                reactor,
                contextFactory=ClientTLS.from_options(ca).https_policy(),
                pool=HTTPConnectionPool(reactor, persistent=False),
            )
            stranger, refused = _device(
                reglog.url("http"), "stranger-1", pki.stranger.ca_file, http_agent=agent
            )
            clients.append(refused)
            refused.start()
            await wait_for(
                lambda: len(stranger.refusals()) >= 2, timeout=30, what="two refused handshakes"
            )
            for refusal in stranger.refusals():
                assert "not signed by a trusted authority" in refusal.reason, refusal
            secret_id = await _send(api, key, "stranger-1", "not for strangers")
            await wait_for(
                lambda: len(stranger.refusals()) >= 4, timeout=30, what="more refused handshakes"
            )
            assert not any(isinstance(e, Authenticated) for e in stranger.events)
            assert stranger.received == []
            assert (await _receipt(api, key, secret_id))["pending"] == ["stranger-1"]

            # --- 3. pigeonpush listen --ca-file ----------------------------------------
            await _listen_gets_a_message(api, key, reglog.url("http"), ca, tmp_path)
    finally:
        for each in clients:
            await each.stop()
        await store.close()


def _spawn_listen(
    reglog_url: str, ca_file: str, output: Path, errors: Path
) -> subprocess.Popen[bytes]:
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    with open(output, "wb") as out, open(errors, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "pigeonpush.cli", "listen", "--reglog", reglog_url,
             "--client-id", "cli-1", "--ca-file", ca_file],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=environment,
        )  # fmt: skip


async def _listen_gets_a_message(
    api: CheckedClient, key: str, reglog_url: str, ca_file: str, tmp_path: Path
) -> None:
    """``pigeonpush listen --ca-file`` over HTTPS and TLS prints what is sent to it."""
    output = tmp_path / "listen.out"
    errors = tmp_path / "listen.err"
    process = _spawn_listen(reglog_url, ca_file, output, errors)
    try:
        await wait_for(
            lambda: "authenticated on" in errors.read_text(),
            timeout=30,
            what=f"pigeonpush listen to authenticate (stderr: {errors})",
        )
        message_id = await _send(api, key, "cli-1", "to the command line")
        await wait_for(
            lambda: message_id in output.read_text(), timeout=30, what="the printed message"
        )
        line = json.loads(output.read_text().splitlines()[0])
        assert (line["messageId"], line["text"]) == (message_id, "to the command line")
    finally:
        process.terminate()
        try:
            await wait_for(lambda: process.poll() is not None, timeout=10, what="listen to exit")
        except TimeoutError:
            process.kill()
            await wait_for(lambda: process.poll() is not None, timeout=10, what="listen killed")
