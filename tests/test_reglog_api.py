"""reglog end to end: the twistd service tree against real Redis and ZooKeeper,
over real HTTP, every answer checked against docs/openapi/reglog.json."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest_twisted
from twisted.application.service import IService
from twisted.internet.defer import DeferredSemaphore, ensureDeferred, gatherResults
from twisted.logger import LogEvent, globalLogPublisher

from pigeonpush.discovery.interface import SERVERS, NodeRegistration
from pigeonpush.identifiers import CLIENT_ID
from pigeonpush.reglog.devices import verify_secret
from pigeonpush.reglog.tap import Options, makeService
from support.identifier_cases import BAD_CLIENT_IDS, GOOD_CLIENT_IDS
from support.openapi import Answer, CheckedClient, OpenAPIDocument
from support.servers import free_port
from support.waiting import wait_for

DOCUMENT_PATH = Path(__file__).parent.parent / "docs" / "openapi" / "reglog.json"
DOCUMENT = OpenAPIDocument.load(DOCUMENT_PATH)
TOKEN_TTL = 120


@attrs.define
class Reglog:
    service: IService
    client: CheckedClient

    async def route(self, json_body: Any = None, **kwargs: Any) -> Answer:
        return await self.client.post("/v1/route", json_body, **kwargs)

    async def register(self, json_body: Any = None, **kwargs: Any) -> Answer:
        return await self.client.post("/v1/devices", json_body, **kwargs)

    async def health(self) -> dict[str, Any]:
        answer = await self.client.get("/health")
        health: dict[str, Any] = answer.json
        return health

    async def sees(self, servers: int, what: str = "servers") -> None:
        async def seen() -> bool:
            return (await self.health())["servers"] == servers

        await wait_for(seen, timeout=15, what=f"reglog to see {servers} {what}")


StartReglog = Callable[..., Awaitable[Reglog]]


@pytest_twisted.async_yield_fixture
async def start_reglog() -> AsyncIterator[StartReglog]:
    """Start ``makeService`` with options (as twistd would) on a free loopback port."""
    from twisted.internet import reactor

    started: list[Reglog] = []

    async def start(*args: str) -> Reglog:
        port = free_port()
        config = Options()
        config.parseOptions(["--listen", f"tcp:{port}:interface=127.0.0.1", *args])
        service = makeService(config, reactor)
        service.startService()
        reglog = Reglog(service, CheckedClient(reactor, f"http://127.0.0.1:{port}", DOCUMENT))
        started.append(reglog)
        return reglog

    yield start
    for reglog in started:
        await reglog.client.close()
        await reglog.service.stopService()


@pytest_twisted.async_yield_fixture
async def reglog_zk(
    start_reglog: StartReglog, redis_url: str, zookeeper_hosts: str
) -> AsyncIterator[StartReglog]:
    """``start_reglog`` on the test's Redis and ZooKeeper."""

    async def start(*args: str) -> Reglog:
        return await start_reglog(
            "--redis",
            redis_url,
            "--zookeeper",
            zookeeper_hosts,
            "--token-ttl",
            str(TOKEN_TTL),
            *args,
        )

    yield start


@attrs.define
class PushServers:
    """Push servers faked by registering them in ZooKeeper, as a real one would."""

    discovery: Any
    registrations: dict[str, NodeRegistration] = attrs.Factory(dict)

    @staticmethod
    def address(node_id: str) -> str:
        return f"127.0.0.1:{7100 + int(node_id.lstrip('s'))}"

    async def add(
        self,
        node_id: str,
        *,
        connections: int = 0,
        capacity: int = 100,
        websocket: str | None = None,
    ) -> None:
        data: dict[str, Any] = {
            "client": self.address(node_id),
            "rpc": "127.0.0.1:7999",
            "connections": connections,
            "capacity": capacity,
        }
        if websocket is not None:
            data["websocket"] = websocket
        self.registrations[node_id] = await self.discovery.register(SERVERS, node_id, data)

    async def remove(self, node_id: str) -> None:
        await self.registrations.pop(node_id).unregister()


@pytest_twisted.async_yield_fixture
async def push_servers(zookeeper_hosts: str) -> AsyncIterator[PushServers]:
    from twisted.internet import reactor

    from pigeonpush.discovery.zookeeper import ZooKeeperDiscovery

    discovery = ZooKeeperDiscovery(zookeeper_hosts, reactor, min_update_interval=0)
    yield PushServers(discovery)
    await discovery.close()


@pytest_twisted.async_yield_fixture
async def redis(redis_url: str) -> AsyncIterator[Any]:
    """A plain txredisapi connection to look at what reglog wrote."""
    import txredisapi

    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    connection = await txredisapi.Connection(host, int(port), reconnect=False, convertNumbers=False)
    yield connection
    await connection.disconnect()


def error_of(answer: Answer) -> tuple[int, str]:
    return answer.status, answer.json["error"]


async def burst(reglog: Reglog, count: int, concurrency: int = 20) -> list[Answer]:
    """``count`` route requests, ``concurrency`` at a time, for distinct clients."""
    gate = DeferredSemaphore(concurrency)
    calls = [
        gate.run(lambda n=n: ensureDeferred(reglog.route({"clientId": f"c{n}"})))
        for n in range(count)
    ]
    return list(await gatherResults(calls, consumeErrors=True))


def test_the_openapi_document_is_valid() -> None:
    DOCUMENT.check_document()


# -- open mode: tokens and servers --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_route_gives_a_token_stored_with_its_expiry(
    reglog_zk: StartReglog, push_servers: PushServers, redis: Any
) -> None:
    await push_servers.add("s1")
    reglog = await reglog_zk()
    await reglog.sees(1)

    answer = await reglog.route({"clientId": "device-0001"})
    assert answer.status == 200
    assert answer.header("Cache-Control") == "no-store"
    assert answer.json["server"] == "127.0.0.1:7101"
    assert answer.json["transport"] == "tcp"
    assert answer.json["heartbeat"] == 30
    token = answer.json["token"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert await redis.get("PIGEON:AUTH:{device-0001}") == token
    assert TOKEN_TTL - 5 < await redis.ttl("PIGEON:AUTH:{device-0001}") <= TOKEN_TTL

    again = await reglog.route({"clientId": "device-0001"})
    assert again.json["token"] != token
    assert await redis.get("PIGEON:AUTH:{device-0001}") == again.json["token"]


@pytest_twisted.ensureDeferred
async def test_unknown_fields_are_ignored_and_a_secret_is_not_needed_in_open_mode(
    reglog_zk: StartReglog, push_servers: PushServers, redis: Any
) -> None:
    await push_servers.add("s1")
    reglog = await reglog_zk("--heartbeat", "12.5")
    await reglog.sees(1)
    answer = await reglog.route({"clientId": "a:b.c_d-e", "secret": "whatever", "sdk": "1.2"})
    assert answer.status == 200
    assert answer.json["heartbeat"] == 12.5
    assert await redis.get("PIGEON:AUTH:{a:b.c_d-e}") == answer.json["token"]
    answer = await reglog.route({"clientId": "x" * 128, "secret": None})
    assert answer.status == 200


@pytest_twisted.ensureDeferred
async def test_no_live_server_is_503_and_writes_nothing(reglog_zk: StartReglog, redis: Any) -> None:
    reglog = await reglog_zk()
    answer = await reglog.route({"clientId": "device-0001"})
    assert answer.status == 503
    assert answer.json == {"error": "no_server", "message": "no push server is alive; retry later"}
    assert await redis.dbsize() == 0
    health = await reglog.client.get("/health")
    assert health.status == 503
    assert health.json == {"status": "no_server", "servers": 0, "freeCapacity": 0}


@pytest_twisted.ensureDeferred
async def test_full_servers_are_never_chosen_and_all_full_is_503(
    reglog_zk: StartReglog, push_servers: PushServers
) -> None:
    await push_servers.add("s1", connections=100, capacity=100)
    await push_servers.add("s2", connections=0, capacity=100)
    reglog = await reglog_zk()
    await reglog.sees(2)
    answers = await burst(reglog, 30)
    assert {a.json["server"] for a in answers} == {PushServers.address("s2")}

    await push_servers.remove("s2")
    await reglog.sees(1)
    answer = await reglog.route({"clientId": "late"})
    assert error_of(answer) == (503, "no_server")
    assert answer.json["message"] == "every push server is full; retry later"
    assert (await reglog.client.get("/health")).status == 503


@pytest_twisted.ensureDeferred
async def test_a_server_that_leaves_is_never_returned_again(
    reglog_zk: StartReglog, push_servers: PushServers
) -> None:
    await push_servers.add("s1")
    reglog = await reglog_zk()
    await reglog.sees(1)
    assert (await reglog.route({"clientId": "d1"})).json["server"] == PushServers.address("s1")

    await push_servers.add("s2")
    await reglog.sees(2)
    await push_servers.remove("s1")
    await reglog.sees(1)
    answers = await burst(reglog, 40)
    assert {a.json["server"] for a in answers} == {PushServers.address("s2")}


@pytest_twisted.ensureDeferred
async def test_servers_the_client_could_not_reach_are_avoided_unless_none_is_left(
    reglog_zk: StartReglog, push_servers: PushServers
) -> None:
    await push_servers.add("s1")
    await push_servers.add("s2")
    reglog = await reglog_zk()
    await reglog.sees(2)
    s1, s2 = PushServers.address("s1"), PushServers.address("s2")
    for n in range(20):
        answer = await reglog.route({"clientId": f"d{n}", "avoid": [s1, "10.9.9.9:7100"]})
        assert answer.json["server"] == s2
    answer = await reglog.route({"clientId": "d", "avoid": [s2, s2], "secret": None})
    assert answer.json["server"] == s1
    # every server avoided: still an answer (the client's view may be stale)
    answers = [await reglog.route({"clientId": "d", "avoid": [s1, s2]}) for _ in range(20)]
    assert {a.status for a in answers} == {200}
    assert {a.json["server"] for a in answers} == {s1, s2}
    assert (await reglog.route({"clientId": "d", "avoid": None})).status == 200
    assert (await reglog.route({"clientId": "d", "avoid": []})).status == 200


@pytest_twisted.ensureDeferred
async def test_a_burst_spreads_in_proportion_to_free_capacity(
    reglog_zk: StartReglog, push_servers: PushServers
) -> None:
    # Free capacity 300, 200 and 100: a burst of 300 should split 150 / 100 / 50.
    await push_servers.add("s1", connections=700, capacity=1000)
    await push_servers.add("s2", connections=100, capacity=300)
    await push_servers.add("s3", connections=0, capacity=100)
    reglog = await reglog_zk()
    await reglog.sees(3)
    answers = await burst(reglog, 300)
    assert {a.status for a in answers} == {200}
    spread = Counter(a.json["server"] for a in answers)
    for node_id, expected in (("s1", 150), ("s2", 100), ("s3", 50)):
        # Draws without replacement from 600 free slots: a standard deviation
        # of at most 6.2 clients; 5 of them is a safe margin.
        assert abs(spread[PushServers.address(node_id)] - expected) <= 31, spread
    health = await reglog.health()
    assert health["freeCapacity"] == 300


@pytest_twisted.ensureDeferred
async def test_local_accounting_fills_servers_and_refuses_the_rest(
    reglog_zk: StartReglog, push_servers: PushServers
) -> None:
    await push_servers.add("s1", connections=95, capacity=100)
    await push_servers.add("s2", connections=197, capacity=200)
    reglog = await reglog_zk()
    await reglog.sees(2)
    answers = await burst(reglog, 10)
    outcome = Counter(a.json.get("server", a.json.get("error")) for a in answers)
    assert outcome == {PushServers.address("s1"): 5, PushServers.address("s2"): 3, "no_server": 2}


@pytest_twisted.ensureDeferred
async def test_a_published_update_makes_room_again(
    reglog_zk: StartReglog, push_servers: PushServers
) -> None:
    await push_servers.add("s1", connections=0, capacity=3)
    reglog = await reglog_zk()
    await reglog.sees(1)
    assert {a.status for a in await burst(reglog, 3)} == {200}
    assert (await reglog.route({"clientId": "fourth"})).status == 503
    # Two of the three connected, one went away: the server says so.
    push_servers.registrations["s1"].update(
        {
            "client": PushServers.address("s1"),
            "rpc": "127.0.0.1:7999",
            "connections": 2,
            "capacity": 3,
        }
    )

    async def room() -> bool:
        return (await reglog.health())["freeCapacity"] == 1

    await wait_for(room, timeout=15, what="the update to reach reglog")
    assert (await reglog.route({"clientId": "fourth"})).status == 200


# -- bad requests ---------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}

BAD_ROUTE_REQUESTS: list[tuple[str, dict[str, Any], tuple[int, str], str]] = [
    (
        "bad JSON",
        {"data": b'{"clientId": "a"', "headers": JSON},
        (400, "bad_json"),
        "not valid JSON",
    ),
    ("not UTF-8", {"data": b'{"clientId": "\xff"}', "headers": JSON}, (400, "bad_json"), "UTF-8"),
    ("empty body", {"data": b"", "headers": JSON}, (400, "bad_json"), "body is empty"),
    ("an array", {"json_body": ["a"]}, (400, "invalid"), "must be a JSON object"),
    ("no clientId", {"json_body": {"secret": "s"}}, (400, "invalid"), "clientId is required"),
    ("null clientId", {"json_body": {"clientId": None}}, (400, "invalid"), "is required"),
    (
        "numeric clientId",
        {"json_body": {"clientId": 42}},
        (400, "invalid"),
        "clientId must be a string of 1 to 128 ASCII letters, digits, '.', '_', ':' or '-'",
    ),
    ("empty clientId", {"json_body": {"clientId": ""}}, (400, "invalid"), "1 to 128"),
    ("long clientId", {"json_body": {"clientId": "x" * 129}}, (400, "invalid"), "1 to 128"),
    (
        "clientId with a slash",
        {"json_body": {"clientId": "a/b"}},
        (400, "invalid"),
        "clientId must be a string of 1 to 128 ASCII letters",
    ),
    ("clientId with a space", {"json_body": {"clientId": "a b"}}, (400, "invalid"), "ASCII"),
    ("non-ASCII clientId", {"json_body": {"clientId": "gerät"}}, (400, "invalid"), "ASCII"),
    (
        "numeric secret",
        {"json_body": {"clientId": "a", "secret": 1}},
        (400, "invalid"),
        "secret must be a string of 1 to 256 characters",
    ),
    (
        "long secret",
        {"json_body": {"clientId": "a", "secret": "s" * 257}},
        (400, "invalid"),
        "256",
    ),
    ("empty secret", {"json_body": {"clientId": "a", "secret": ""}}, (400, "invalid"), "256"),
    (
        "avoid not a list",
        {"json_body": {"clientId": "a", "avoid": "127.0.0.1:7101"}},
        (400, "invalid"),
        "avoid must be a list of at most 16 host:port strings",
    ),
    (
        "avoid too long",
        {"json_body": {"clientId": "a", "avoid": [f"h{n}:7100" for n in range(17)]}},
        (400, "invalid"),
        "at most 16",
    ),
    (
        "avoid with a number",
        {"json_body": {"clientId": "a", "avoid": [7101]}},
        (400, "invalid"),
        "of at most 262 characters",
    ),
    (
        "avoid with a long name",
        {"json_body": {"clientId": "a", "avoid": ["h" * 260 + ":7100"]}},
        (400, "invalid"),
        "of at most 262 characters",
    ),
    (
        "avoid without a port",
        {"json_body": {"clientId": "a", "avoid": ["127.0.0.1"]}},
        (400, "invalid"),
        "host:port strings, not '127.0.0.1'",
    ),
    (
        "avoid with a bad port",
        {"json_body": {"clientId": "a", "avoid": ["127.0.0.1:0"]}},
        (400, "invalid"),
        "not '127.0.0.1:0'",
    ),
    (
        "avoid with a line break in the host",
        {"json_body": {"clientId": "a", "avoid": ["push\n1:7100"]}},
        (400, "invalid"),
        "host:port strings, not",
    ),
    (
        "avoid with a port in other digits",
        {"json_body": {"clientId": "a", "avoid": ["push1:\u0667\u0661\u0660\u0660"]}},
        (400, "invalid"),
        "host:port strings, not",
    ),
    (
        "avoid with a signed port",
        {"json_body": {"clientId": "a", "avoid": ["push1:+7100"]}},
        (400, "invalid"),
        "host:port strings, not",
    ),
    (
        "too large",
        {"json_body": {"clientId": "a", "pad": "x" * 5000}},
        (413, "body_too_large"),
        "4096 bytes",
    ),
    (
        "form post",
        {"data": b"clientId=a", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        (415, "unsupported_media_type"),
        "application/json",
    ),
]


@pytest_twisted.ensureDeferred
async def test_every_malformed_route_request_is_a_4xx_json_error_and_writes_nothing(
    reglog_zk: StartReglog, push_servers: PushServers, redis: Any
) -> None:
    await push_servers.add("s1")
    reglog = await reglog_zk()
    await reglog.sees(1)
    for name, request, expected, fragment in BAD_ROUTE_REQUESTS:
        answer = await reglog.route(**request)
        assert error_of(answer) == expected, name
        assert fragment in answer.json["message"], (name, answer.json)
    assert await redis.dbsize() == 0
    assert (await reglog.health())["freeCapacity"] == 100  # nothing was counted as sent


@pytest_twisted.ensureDeferred
async def test_other_methods_and_paths_are_json_errors(reglog_zk: StartReglog) -> None:
    reglog = await reglog_zk()
    answer = await reglog.client.get("/v1/route")
    assert error_of(answer) == (405, "method_not_allowed")
    assert answer.header("Allow") == "POST"
    answer = await reglog.client.request("DELETE", "/health")
    assert answer.header("Allow") == "GET, HEAD"
    answer = await reglog.client.post("/metrics", {})
    assert error_of(answer) == (405, "method_not_allowed")
    assert answer.header("Allow") == "GET, HEAD"
    for path in ("/", "/v1", "/v1/route/extra", "/v2/route"):
        assert error_of(await reglog.client.post(path, {})) == (404, "not_found"), path


@pytest_twisted.ensureDeferred
async def test_a_smaller_body_limit_is_enforced(reglog_zk: StartReglog) -> None:
    reglog = await reglog_zk("--max-body", "64")
    answer = await reglog.route({"clientId": "a", "pad": "x" * 64})
    assert answer.json == {
        "error": "body_too_large",
        "message": "request body must not be larger than 64 bytes",
    }


# -- registration mode ------------------------------------------------------------------------

ADMIN_KEY = "admin-key-for-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest_twisted.ensureDeferred
async def test_registration_mode_end_to_end(
    reglog_zk: StartReglog, push_servers: PushServers, redis: Any, tmp_path: Path
) -> None:
    await push_servers.add("s1")
    key_file = tmp_path / "admin.key"
    key_file.write_text(ADMIN_KEY + "\n")
    reglog = await reglog_zk("--auth-mode", "registered", "--admin-key-file", str(key_file))
    await reglog.sees(1)

    # NodeRegistration needs the admin key.
    answer = await reglog.register({"clientId": "lamp-1"})
    assert error_of(answer) == (401, "bad_admin_key")
    assert answer.header("WWW-Authenticate") == 'Bearer realm="pigeonpush-reglog"'
    answer = await reglog.register({"clientId": "lamp-1"}, headers={"Authorization": "Bearer nope"})
    assert error_of(answer) == (401, "bad_admin_key")
    assert answer.json["message"] == "the admin key is wrong"
    assert await redis.dbsize() == 0

    # A chosen id, and a generated one.
    answer = await reglog.register({"clientId": "lamp-1"}, headers=ADMIN)
    assert answer.status == 201
    assert answer.json["clientId"] == "lamp-1"
    secret = answer.json["secret"]
    generated = await reglog.register(headers=ADMIN)
    assert generated.status == 201
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", generated.json["clientId"])

    # Only a salted hash is stored.
    stored = await redis.hgetall("PIGEON:DEVICE:{lamp-1}")
    assert secret not in json.dumps(stored)
    (secret_hash,) = [value for value in stored.values() if str(value).startswith("scrypt$")]
    assert verify_secret(secret, secret_hash)

    # The id is taken now.
    again = await reglog.register({"clientId": "lamp-1"}, headers=ADMIN)
    assert error_of(again) == (409, "client_exists")
    assert await redis.hgetall("PIGEON:DEVICE:{lamp-1}") == stored
    assert error_of(await reglog.register({"clientId": "a b"}, headers=ADMIN)) == (
        400,
        "invalid",
    )
    answer = await reglog.register(data=b"{", headers={**ADMIN, **JSON})
    assert error_of(answer) == (400, "bad_json")
    answer = await reglog.register({"clientId": "x", "pad": "x" * 5000}, headers=ADMIN)
    assert error_of(answer) == (413, "body_too_large")

    # A route needs the right secret; unknown devices get the same answer as wrong secrets.
    answer = await reglog.route({"clientId": "lamp-1"})
    assert error_of(answer) == (401, "secret_required")
    wrong = await reglog.route({"clientId": "lamp-1", "secret": "not-the-secret"})
    unknown = await reglog.route({"clientId": "lamp-404", "secret": secret})
    assert (
        wrong.json
        == unknown.json
        == {
            "error": "bad_secret",
            "message": "unknown clientId or wrong secret",
        }
    )
    assert await redis.get("PIGEON:AUTH:{lamp-1}") is None

    answer = await reglog.route({"clientId": "lamp-1", "secret": secret})
    assert answer.status == 200
    assert await redis.get("PIGEON:AUTH:{lamp-1}") == answer.json["token"]
    answer = await reglog.route(
        {"clientId": generated.json["clientId"], "secret": generated.json["secret"]}
    )
    assert answer.status == 200


@pytest_twisted.ensureDeferred
async def test_without_an_admin_key_registration_is_open(
    reglog_zk: StartReglog, push_servers: PushServers
) -> None:
    await push_servers.add("s1")
    reglog = await reglog_zk("--auth-mode", "registered")
    await reglog.sees(1)
    answer = await reglog.register({"clientId": "kiosk"})
    assert answer.status == 201
    # An existing device still cannot be taken over.
    assert error_of(await reglog.register({"clientId": "kiosk"})) == (409, "client_exists")
    answer = await reglog.route({"clientId": "kiosk", "secret": answer.json["secret"]})
    assert answer.status == 200


@pytest_twisted.ensureDeferred
async def test_open_mode_has_no_registration(reglog_zk: StartReglog, redis: Any) -> None:
    reglog = await reglog_zk("--admin-key", ADMIN_KEY)
    answer = await reglog.register({"clientId": "lamp-1"}, headers=ADMIN)
    assert error_of(answer) == (404, "registration_disabled")
    assert await redis.dbsize() == 0


# -- other backends and failures ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_server_that_speaks_tls_is_routed_to_with_its_transport(
    start_reglog: StartReglog,
) -> None:
    """A push server publishing ``tls:host:port`` is handed out as that
    ``server`` with ``"transport": "tls"`` (checked against the document)."""
    reglog = await start_reglog(
        "--redis",
        "memory:",
        "--zookeeper",
        "static:servers=n1@tls:127.0.0.1:7100|tls:127.0.0.1:7101",
    )
    await reglog.sees(1)
    answer = await reglog.route({"clientId": "secure-device"})
    assert answer.status == 200
    assert (answer.json["server"], answer.json["transport"]) == ("127.0.0.1:7100", "tls")


@pytest_twisted.ensureDeferred
async def test_a_websocket_request_gets_a_websocket_address(
    reglog_zk: StartReglog, push_servers: PushServers
) -> None:
    """``"transport": "websocket"``: only servers with a WebSocket listener,
    answered with that address and ``ws``/``wss`` (checked against the
    document); a TCP request still gets the TCP address."""
    reglog = await reglog_zk()
    await push_servers.add("s1")
    await reglog.sees(1)
    answer = await reglog.route({"clientId": "browser", "transport": "websocket"})
    assert (answer.status, answer.json["error"]) == (503, "no_server")
    assert "WebSocket" in answer.json["message"]

    await push_servers.add("s2", websocket="tls:push.example:443")
    await reglog.sees(2)
    for _ in range(5):
        answer = await reglog.route({"clientId": "browser", "transport": "websocket"})
        assert answer.status == 200
        assert (answer.json["server"], answer.json["transport"]) == ("push.example:443", "wss")
    await push_servers.add("s3", websocket="127.0.0.1:7203")
    await reglog.sees(3)
    answer = await reglog.route(
        {"clientId": "browser", "transport": "websocket", "avoid": ["push.example:443"]}
    )
    assert (answer.json["server"], answer.json["transport"]) == ("127.0.0.1:7203", "ws")
    answer = await reglog.route({"clientId": "device", "transport": "tcp"})
    assert answer.json["transport"] == "tcp"
    assert answer.json["server"] in {PushServers.address(n) for n in ("s1", "s2", "s3")}
    answer = await reglog.route({"clientId": "device", "transport": "carrier-pigeon"})
    assert (answer.status, answer.json["error"]) == (400, "invalid")
    assert "transport must be 'tcp' or 'websocket'" in answer.json["message"]


@pytest_twisted.ensureDeferred
async def test_memory_store_and_static_discovery(start_reglog: StartReglog) -> None:
    reglog = await start_reglog(
        "--redis",
        "memory:",
        "--zookeeper",
        "static:servers=n1@127.0.0.1:7100|127.0.0.1:7101|2",
        "--auth-mode",
        "registered",
    )
    await reglog.sees(1)
    device = await reglog.register({"clientId": "solo"})
    assert device.status == 201
    answer = await reglog.route({"clientId": "solo", "secret": device.json["secret"]})
    assert answer.status == 200
    assert answer.json["server"] == "127.0.0.1:7100"
    assert (await reglog.health())["freeCapacity"] == 1


@pytest_twisted.ensureDeferred
async def test_reglog_refuses_exactly_the_ids_the_identifiers_rule_refuses(
    start_reglog: StartReglog,
) -> None:
    reglog = await start_reglog(
        "--redis",
        "memory:",
        "--zookeeper",
        "static:servers=n1@127.0.0.1:7100|127.0.0.1:7101|200",
        "--auth-mode",
        "registered",
    )
    await reglog.sees(1)
    rule = f"clientId must be {CLIENT_ID.text}"
    for client_id in BAD_CLIENT_IDS:
        for answer in (
            await reglog.route({"clientId": client_id, "secret": "s"}),
            await reglog.register({"clientId": client_id}),
        ):
            assert answer.status == 400, client_id
            assert answer.json == {"error": "invalid", "message": rule, "field": "clientId"}
    for client_id in GOOD_CLIENT_IDS:
        assert (await reglog.register({"clientId": client_id})).status == 201, client_id


async def without_store(start_reglog: StartReglog, capacity: int, *options: str) -> Reglog:
    """A reglog whose Redis is unreachable, with one push server of
    ``capacity`` (static discovery)."""
    return await start_reglog(
        "--redis",
        f"redis://127.0.0.1:{free_port()}/0",
        "--zookeeper",
        f"static:servers=n1@127.0.0.1:7100|127.0.0.1:7101|{capacity}",
        *options,
    )


@pytest_twisted.ensureDeferred
async def test_an_unreachable_store_in_registered_mode_is_503(
    start_reglog: StartReglog,
) -> None:
    reglog = await without_store(start_reglog, 5, "--auth-mode", "registered")
    await reglog.sees(1)
    answer = await reglog.route({"clientId": "d1", "secret": "s"})
    assert answer.json == {
        "error": "store_unavailable",
        "message": "the shared state store is unreachable; retry later",
    }
    assert answer.status == 503
    assert error_of(await reglog.register({})) == (503, "store_unavailable")


@pytest_twisted.ensureDeferred
async def test_an_unreachable_store_while_issuing_gives_the_slot_back(
    start_reglog: StartReglog,
) -> None:
    reglog = await without_store(start_reglog, 5)
    await reglog.sees(1)
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for n in range(3):
            answer = await reglog.route({"clientId": f"d{n}"})
            assert error_of(answer) == (503, "store_unavailable")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert (await reglog.health())["freeCapacity"] == 5
    # One warning for the outage, not one per request.
    (warning,) = [e for e in events if e.get("what") == "issue a token"]
    assert "cannot connect to Redis" in warning["error"]


@pytest_twisted.ensureDeferred
async def test_a_burst_against_an_unreachable_store_is_503_for_each_and_gives_every_slot_back(
    start_reglog: StartReglog,
) -> None:
    # Requests that arrive together share one token write: its failure is
    # every one's.
    reglog = await without_store(start_reglog, 50)
    await reglog.sees(1)
    answers = await burst(reglog, 40)
    assert [error_of(answer) for answer in answers] == [(503, "store_unavailable")] * 40
    assert (await reglog.health())["freeCapacity"] == 50


# -- operations --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_health_and_metrics(reglog_zk: StartReglog, push_servers: PushServers) -> None:
    await push_servers.add("s1", connections=10, capacity=100)
    await push_servers.add("s2", connections=0, capacity=50)
    reglog = await reglog_zk()
    await reglog.sees(2)
    assert await reglog.health() == {"status": "ok", "servers": 2, "freeCapacity": 140}

    def count(text: str, sample: str) -> float:
        match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
        return 0.0 if match is None else float(match.group(1))

    ok = 'pigeonpush_reglog_route_requests_total{result="ok"}'
    bad = 'pigeonpush_reglog_route_requests_total{result="invalid"}'
    before = (await reglog.client.get("/metrics")).json
    await reglog.route({"clientId": "m1"})
    await reglog.route({"clientId": ""})
    metrics = await reglog.client.get("/metrics")
    assert metrics.header("Content-Type").startswith("text/plain")
    after = metrics.json
    assert count(after, ok) == count(before, ok) + 1
    assert count(after, bad) == count(before, bad) + 1
    assert count(after, "pigeonpush_reglog_live_servers") == 2
    assert count(after, "pigeonpush_reglog_published_free_capacity") == 140
    assert "pigeonpush_reglog_route_seconds_bucket" in after


@pytest_twisted.ensureDeferred
async def test_lone_surrogates_are_answered(start_reglog: StartReglog) -> None:
    """JSON may carry a lone surrogate ("\\ud800"); UTF-8 cannot. Every such
    request is answered at once (4xx, or 2xx where the field is ignored),
    never a 500 or silence until the idle timeout."""
    reglog = await start_reglog(
        "--redis",
        "memory:",
        "--zookeeper",
        "static:servers=n1@127.0.0.1:7100|127.0.0.1:7101|5",
        "--auth-mode",
        "registered",
    )
    await reglog.sees(1)
    assert (await reglog.register({"clientId": "dev"})).status == 201
    for body in (
        {"clientId": "\ud800"},
        {"clientId": "a", "secret": "\ud800"},
        {"clientId": "dev", "secret": "\ud800"},
        {"clientId": "dev", "secret": "x\udfffy" * 10},
        {"clientId": "a", "\ud800": 1, "secret": "s"},
    ):
        answer = await reglog.route(body)
        assert 400 <= answer.status < 500, (body, answer.status, answer.json)
    for body in ({"clientId": "\udfff"}, {"clientId": "b", "\ud800": 1}):
        answer = await reglog.register(body)
        assert answer.status in (201, 400), (body, answer.status, answer.json)
