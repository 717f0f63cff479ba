"""``pigeonpush send``, ``status`` and ``kick`` as a user runs them: real
processes against a notification API served by this test (and, for kicks, a
push server stand-in answering over AMP)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred

from pigeonpush.delivery.gateway import AmpGateways
from pigeonpush.http import JsonSite
from pigeonpush.ids import is_message_id
from pigeonpush.notification.api import ApiSettings, NotificationApi
from pigeonpush.notification.auth import ApiKeys
from pigeonpush.notification.core import Notifications
from pigeonpush.notification.sessions import DeviceSessions
from pigeonpush.notification.validate import Limits
from pigeonpush.rpcpool import AmpPool
from pigeonpush.store import Store, open_store
from pigeonpush.wire.frames import KickReason
from support.server_double import ServerDouble
from support.servers import free_port

KEY = "cli-key-0123456789abcdef"


@attrs.frozen
class Run:
    code: int
    out: str
    err: str


@attrs.define
class Api:
    url: str
    store: Store
    server: ServerDouble
    server_address: str

    async def run(self, *args: str, env: dict[str, str] | None = None) -> Run:
        """``pigeonpush ARGS`` in a child process (this reactor keeps serving)."""
        from twisted.internet import reactor
        from twisted.internet.utils import getProcessOutputAndValue

        environment = {k: v for k, v in os.environ.items() if k != "PIGEONPUSH_API_KEY"}
        environment.update(env or {})
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "pigeonpush.cli", *args], env=environment, reactor=reactor
        )
        return Run(code, out.decode(), err.decode())


@pytest.fixture
def api(redis_url: str) -> Iterator[Api]:
    from twisted.internet import reactor

    store = open_store(redis_url, reactor)
    notifications = Notifications(store, reactor, Limits())
    pool = AmpPool(reactor)
    sessions = DeviceSessions(store, AmpGateways(pool))
    resource = NotificationApi(
        notifications, ApiKeys([KEY]), ApiSettings(max_body=100_000), sessions
    )
    port = reactor.listenTCP(0, JsonSite(resource.resource()), interface="127.0.0.1")
    server = ServerDouble()
    address = pytest_twisted.blockon(ensureDeferred(server.listen(reactor)))
    try:
        yield Api(f"http://127.0.0.1:{port.getHost().port}", store, server, address)
    finally:
        pytest_twisted.blockon(ensureDeferred(server.stop()))
        pytest_twisted.blockon(port.stopListening())
        pytest_twisted.blockon(pool.close())
        pytest_twisted.blockon(store.close())


@pytest_twisted.ensureDeferred
async def test_send_prints_the_message_id_and_status_the_receipt(api: Api) -> None:
    sent = await api.run(
        "send", "--api", api.url, "--key", KEY, "--to", "alice", "--to", "bob",
        "--title", "Hi", "--text", "From the CLI", "--ttl", "600", "--extra", "url=app://x",
    )  # fmt: skip
    assert (sent.code, sent.err) == (0, "")
    message_id = sent.out.strip()
    assert is_message_id(message_id)
    (body,) = await api.store.bodies([message_id])
    assert body is not None
    assert (body.title, body.text, dict(body.extras)) == ("Hi", "From the CLI", {"url": "app://x"})
    assert body.expires_at - body.created_at == pytest.approx(600)

    await api.store.ack([("alice", message_id)])
    status = await api.run("status", "--api", api.url, "--key", KEY, message_id)
    assert status.code == 0
    receipt: dict[str, Any] = json.loads(status.out)
    assert receipt["messageId"] == message_id
    assert (receipt["recipients"], receipt["pending"], receipt["acked"]) == (2, ["bob"], 1)


@pytest_twisted.ensureDeferred
async def test_the_key_can_come_from_the_environment(api: Api) -> None:
    sent = await api.run(
        "send", "--api", api.url, "--to", "a", "--title", "t", "--text", "x",
        env={"PIGEONPUSH_API_KEY": KEY},
    )  # fmt: skip
    assert sent.code == 0, sent.err


@pytest_twisted.ensureDeferred
async def test_an_idempotency_key_makes_a_resend_return_the_same_id(api: Api) -> None:
    args = ("send", "--api", api.url, "--key", KEY, "--to", "a", "--title", "t", "--text", "x")
    first = await api.run(*args, "--idempotency-key", "job-1")
    again = await api.run(*args, "--idempotency-key", "job-1")
    assert first.out == again.out
    assert await api.store.queue_lag() == 1


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--key", "wrong-key-000000000000"), "pigeonpush: unauthorized: a valid API key"),
        (("--key", KEY, "--ttl", "0"), "pigeonpush: invalid: ttl must be a whole number"),
        (("--key", KEY, "--extra", "no-equals"), "--extra 'no-equals' is not KEY=VALUE"),
        ((), "an API key is required"),
    ],
)
async def test_send_failures_exit_1_with_the_reason(
    api: Api, args: tuple[str, ...], message: str
) -> None:
    run = await api.run("send", "--api", api.url, "--to", "a", "--title", "t", "--text", "x", *args)
    assert run.code == 1
    assert run.out == ""
    assert message in run.err
    assert await api.store.queue_lag() == 0


@pytest_twisted.ensureDeferred
async def test_send_later_with_a_collapse_key_then_cancel(api: Api) -> None:
    args = ("--api", api.url, "--key", KEY)
    sent = await api.run(
        "send", *args, "--to", "a", "--title", "t", "--text", "x", "--delay", "600",
        "--collapse-key", "score",
    )  # fmt: skip
    assert sent.code == 0, sent.err
    message_id = sent.out.strip()
    receipt = await api.store.receipt(message_id)
    assert receipt is not None and receipt.send_at is not None
    assert receipt.pending == ()
    cancelled = await api.run("cancel", *args, message_id)
    assert (cancelled.code, cancelled.out.strip()) == (0, "cancelled")
    now = await api.run(
        "send", *args, "--to", "a", "--title", "t", "--text", "x", "--at", "2020-01-01T00:00:00Z"
    )
    assert now.code == 0, now.err
    assert await api.store.pending_ids("a") == [now.out.strip()]
    late = await api.run("cancel", *args, now.out.strip())
    assert late.code == 1
    assert "already_sent" in late.err
    both = await api.run(
        "send", *args, "--to", "a", "--title", "t", "--text", "x", "--delay", "5", "--at", "x"
    )
    assert both.code == 2
    assert "not allowed with argument" in both.err


@pytest_twisted.ensureDeferred
async def test_status_of_an_unknown_message_exits_1(api: Api) -> None:
    run = await api.run("status", "--api", api.url, "--key", KEY, "01HZX3JQ6Q4V8Y2N7K5M9T1B3C")
    assert run.code == 1
    assert "not_found: no such notification" in run.err


@pytest_twisted.ensureDeferred
async def test_an_unreachable_api_exits_1(api: Api) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = await api.run(
        "send", "--api", url, "--key", KEY, "--to", "a", "--title", "", "--text", ""
    )
    assert run.code == 1
    assert f"cannot reach {url}/v1/notifications" in run.err


@pytest_twisted.ensureDeferred
async def test_kick_prints_whether_the_device_was_disconnected(api: Api) -> None:
    api.server.online.add("tablet:7")
    await api.store.issue_token("tablet:7", "token-1", 60)
    assert await api.store.bind_session("tablet:7", "token-1", api.server_address, 60)

    run = await api.run("kick", "--api", api.url, "--key", KEY, "tablet:7")

    assert (run.code, run.err) == (0, "")
    assert json.loads(run.out) == {"clientId": "tablet:7", "disconnected": True}
    assert api.server.kicks == [("tablet:7", KickReason.POLICY)]
    assert await api.store.token("tablet:7") is None
    api.server.online.discard("tablet:7")  # the server closed the connection
    again = await api.run("kick", "--api", api.url, "--key", KEY, "tablet:7")
    assert json.loads(again.out) == {"clientId": "tablet:7", "disconnected": False}


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--key", KEY, "bad id"), "pigeonpush: invalid: clientId must be"),
        (("--key", "wrong-key-000000000000", "a"), "pigeonpush: unauthorized"),
        (("a",), "an API key is required"),
    ],
)
async def test_kick_failures_exit_1_with_the_reason(
    api: Api, args: tuple[str, ...], message: str
) -> None:
    run = await api.run("kick", "--api", api.url, *args)
    assert run.code == 1
    assert run.out == ""
    assert message in run.err


# -- topics and broadcast ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_topics_and_a_topic_send_from_the_command_line(api: Api) -> None:
    common = ("--api", api.url, "--key", KEY)
    added = await api.run("topics", *common, "add", "news", "alice", "bob")
    assert added.code == 0, added.err
    assert json.loads(added.out) == {"topic": "news", "added": 2, "removed": 0, "refused": []}
    await api.run("topics", *common, "add", "sport", "alice")
    listed = await api.run("topics", *common, "list", "alice")
    assert listed.out.splitlines() == ["news", "sport"]
    removed = await api.run("topics", *common, "remove", "news", "bob")
    assert json.loads(removed.out)["removed"] == 1

    sent = await api.run("send", *common, "--topic", "news", "--title", "T", "--text", "x")
    assert sent.code == 0, sent.err
    (caught,) = await api.store.catch_up("alice", 10)
    assert (caught.topic, caught.entries[0].message.message_id) == ("news", sent.out.strip())
    everyone = await api.run("send", *common, "--broadcast", "--title", "B", "--text", "")
    assert everyone.code == 0, everyone.err
    assert is_message_id(everyone.out.strip())

    deleted = await api.run("topics", *common, "delete", "news")
    assert json.loads(deleted.out) == {"topic": "news", "unsubscribed": 1}
    bad = await api.run("topics", *common, "add", "bad topic", "alice")
    assert bad.code == 1 and "invalid: topic must be" in bad.err


@pytest_twisted.ensureDeferred
async def test_send_names_exactly_one_audience(api: Api) -> None:
    both = await api.run(
        "send", "--api", api.url, "--key", KEY, "--to", "a", "--topic", "t",
        "--title", "", "--text", "",
    )  # fmt: skip
    assert both.code == 2 and "not allowed with argument" in both.err
    none = await api.run("send", "--api", api.url, "--key", KEY, "--title", "", "--text", "")
    assert none.code == 2 and "one of the arguments --to --topic --broadcast" in none.err
