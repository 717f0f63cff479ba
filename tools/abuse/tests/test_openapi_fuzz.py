"""HTTP fuzzing of the route API and the notification API from their OpenAPI
documents (docs/openapi/), against real daemons on a real Redis.

schemathesis generates requests for every operation, both requests that fit
the schema and requests that do not. Each is sent to a ``pigeon-reglog`` or a
``pigeon-notification`` (with a ``pigeon-server`` registered in ZooKeeper, so
that routes can be answered). Every 5xx is a failure, and so is every 4xx
after which Redis differs from before it: a refused request writes nothing.
Every operation and mode runs to its end and the failures are reported
together. ``FUZZ_EXAMPLES`` bounds the run (per operation and mode).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection
from twisted.internet.defer import Deferred

from support.cluster import Cluster
from support.servers import RedisServer, ZooKeeperServer, free_port

ROOT = Path(__file__).resolve().parents[3]
DOCUMENTS = {
    "reglog": ROOT / "docs/openapi/reglog.json",
    "notification": ROOT / "docs/openapi/notification.json",
}
#: Requests per operation and generation mode.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
#: Seconds a request may wait for its answer (the daemons answer in milliseconds).
TIMEOUT = 10.0
#: Keys this close to their expiry (ms) are not compared: Redis removes them
#: by itself, possibly between two reads of one snapshot.
EXPIRING_MS = 2000
#: Operations that answer 200 with a result per item, refused items included.
PER_ITEM_ANSWERS = frozenset({"POST /v1/notifications/batch"})
#: Redis is emptied between requests once it holds more keys than this.
MAX_KEYS = 5000


@attrs.frozen
class Snapshot:
    """Every key's type, value and TTL (ms, -1: none) at ``taken`` (monotonic s)."""

    taken: float
    keys: dict[bytes, tuple[bytes, Any, int]]


def _read(pipe: Any, key: bytes, kind: bytes) -> None:
    """Queue the read of ``key``'s value."""
    if kind == b"string":
        pipe.get(key)
    elif kind == b"hash":
        pipe.hgetall(key)
    elif kind == b"set":
        pipe.smembers(key)
    elif kind == b"zset":
        pipe.zrange(key, 0, -1, withscores=True)
    elif kind == b"list":
        pipe.lrange(key, 0, -1)
    elif kind == b"stream":
        pipe.xinfo_stream(key)
    else:  # gone meanwhile (b"none")
        pipe.exists(key)


def _comparable(kind: bytes, data: Any) -> Any:
    """A value as data that compares equal when the data is the same (DUMP
    does not: a hash table's order moves with rehashing, even on reads)."""
    if kind == b"hash":
        return sorted(data.items())
    if kind == b"set":
        return sorted(data)
    if kind == b"stream":
        return (data["length"], data["last-generated-id"], data.get("entries-added"))
    return data


def snapshot(client: redis.Redis) -> Snapshot:
    """Every key but those within EXPIRING_MS of their expiry (a key may
    vanish between the reads of a snapshot), in three round trips."""
    taken = time.monotonic()
    keys = list(client.scan_iter(count=10000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
        pipe.pttl(key)
    answers = pipe.execute()
    kinds, ttls = answers[0::2], answers[1::2]
    pipe = client.pipeline(transaction=False)
    for key, kind in zip(keys, kinds, strict=True):
        _read(pipe, key, kind)
    values = pipe.execute(raise_on_error=False)
    found = {}
    for key, kind, ttl, data in zip(keys, kinds, ttls, values, strict=True):
        if ttl == -2 or 0 <= ttl < EXPIRING_MS or isinstance(data, Exception):
            continue
        found[key] = (kind, _comparable(kind, data), ttl)
    return Snapshot(taken, found)


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    """How Redis changed: keys added, removed (unless their TTL ran out),
    rewritten, or given a longer TTL."""
    elapsed_ms = (after.taken - before.taken) * 1000
    old, new = before.keys, after.keys
    changes = [f"added {key!r}" for key in new.keys() - old.keys()]
    changes += [
        f"removed {key!r}"
        for key in old.keys() - new.keys()
        # one whose TTL ran down to EXPIRING_MS is left out by snapshot()
        if not 0 <= old[key][2] <= elapsed_ms + EXPIRING_MS
    ]
    for key in old.keys() & new.keys():
        (*value_before, ttl_before), (*value_after, ttl_after) = old[key], new[key]
        if value_before != value_after:
            changes.append(f"rewrote {key!r}")
        elif (ttl_before < 0) != (ttl_after < 0) or ttl_after > ttl_before:
            changes.append(f"changed the TTL of {key!r} ({ttl_before} -> {ttl_after} ms)")
    return sorted(changes)


def test_differences_sees_every_kind_of_write() -> None:
    s = b"string"
    before = Snapshot(0.0, {b"a": (s, b"1", -1), b"b": (s, b"2", 5000), b"c": (s, b"3", 50000)})
    after = Snapshot(1.0, {b"a": (s, b"9", -1), b"b": (s, b"2", 9000), b"d": (s, b"4", -1)})
    # (c had 49 s left: it did not expire, it was deleted)
    assert differences(before, after) == [
        "added b'd'",
        "changed the TTL of b'b' (5000 -> 9000 ms)",
        "removed b'c'",
        "rewrote b'a'",
    ]
    # A TTL that only ran down, or ran out, is no write.
    before = Snapshot(0.0, {b"b": (s, b"2", 5000), b"e": (s, b"5", 2300)})
    assert differences(before, Snapshot(0.5, {b"b": (s, b"2", 4500)})) == []


def test_snapshots_compare_data_not_encodings(redis_server: RedisServer) -> None:
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        redis_server.flush()
        client.sadd("set", *range(1000))
        client.hset("hash", mapping={str(n): n for n in range(1000)})
        client.xadd("stream", {"a": "b"})
        client.set("soon", "gone", px=500)
        client.set("string", "x", ex=60)
        first = snapshot(client)
        assert set(first.keys) == {b"set", b"hash", b"stream", b"string"}
        assert differences(first, snapshot(client)) == []
        client.xadd("stream", {"c": "d"})
        client.srem("set", 5)
        client.expire("string", 120)
        changes = differences(first, snapshot(client))
        assert changes[0].startswith("changed the TTL of b'string' (")
        assert changes[1:] == ["rewrote b'set'", "rewrote b'stream'"]
    finally:
        client.close()


@attrs.define
class Apis:
    urls: dict[str, str]
    api_key: str
    redis: redis.Redis
    cluster: Cluster


def _block(coroutine: Any) -> Any:
    return pytest_twisted.blockon(Deferred.fromCoroutine(coroutine))


@pytest.fixture(scope="module")
def apis(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    zookeeper_server: ZooKeeperServer,
) -> Iterator[Apis]:
    """pigeon-server, pigeon-reglog and pigeon-notification on one Redis."""
    from kazoo.client import KazooClient
    from twisted.internet import reactor

    redis_server.flush()
    chroot = f"/fuzz-{uuid.uuid4().hex}"
    zookeeper = KazooClient(hosts=zookeeper_server.hosts)
    zookeeper.start(timeout=30)
    try:
        zookeeper.create(chroot)
    finally:
        zookeeper.stop()
        zookeeper.close()
    cluster = Cluster(
        reactor, tmp_path_factory.mktemp("fuzz"), redis_server.url, zookeeper_server.hosts + chroot
    )
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        # A WebSocket listener too, so that routes asking for that transport
        # can be answered (without one they get 503 no_server).
        server = cluster.server(
            "push", extra=["--websocket", f"tcp:{free_port()}:interface=127.0.0.1"]
        )
        reglog = cluster.reglog()
        notification = cluster.notification()
        _block(cluster.wait_server_ready(server))
        _block(cluster.wait_reglog_servers(reglog, 1))
        _block(cluster.wait_healthy(notification))
        yield Apis(
            {"reglog": reglog.url("http"), "notification": notification.url("http")},
            cluster.api_key,
            client,
            cluster,
        )
    finally:
        client.close()
        _block(cluster.close())


def _brief(error: BaseException) -> str:
    """The first lines of an error's message (schemathesis' run long)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: " + " / ".join(lines[:6])


def check_case(apis: Apis, api: str, case: Any) -> None:
    """Send ``case``; AssertionError (or schemathesis' failure) if it failed."""
    if apis.redis.dbsize() > MAX_KEYS:
        apis.redis.flushdb()  # accepted notifications pile up; keep snapshots quick
    _short_polls(case)
    _send_extra_parameters(case)
    before = snapshot(apis.redis)
    headers = {"Authorization": f"Bearer {apis.api_key}"}
    response = case.call(base_url=apis.urls[api], headers=headers, timeout=TIMEOUT)
    code = response.status_code
    if code >= 500:
        raise AssertionError(f"answered {code}: {response.text[:200]!r}")
    if 400 <= code < 500:
        changes = differences(before, snapshot(apis.redis))
        if changes:
            raise AssertionError(f"answered {code} and wrote to Redis: {changes[:5]}")
    # A request the document forbids is refused (schemathesis' check knows
    # when a negative case is valid after all, once serialized). A batch
    # answers 200 with a result per item, refusals included.
    # 413 (a body past the API's size limit) is a refusal too, one that
    # schemathesis does not count among them.
    if case.operation.label not in PER_ITEM_ANSWERS and code != 413:
        case.validate_response(response, checks=[negative_data_rejection])


def _describe(api: str, case: Any, mode: str, error: BaseException) -> str:
    request = f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r:.300}"
    return f"{api} {case.operation.label} ({mode}): {_brief(error)} -- {request}"


#: Longest long poll a fuzzed request may ask for (``wait`` of
#: ``GET /v1/uplinks`` goes up to 30 s: hundreds of those would take hours).
MAX_POLL_WAIT = 0.2


def _short_polls(case: Any) -> None:
    """A valid ``wait`` is kept short; an invalid one is left to be refused."""
    query = case.query if isinstance(case.query, dict) else None
    wait = query.get("wait") if query is not None else None
    if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 < wait <= 30:
        assert query is not None
        query["wait"] = min(wait, MAX_POLL_WAIT)
    elif isinstance(wait, str):
        try:
            number = float(wait)
        except ValueError:
            return
        if 0 < number <= 30:
            assert query is not None
            query["wait"] = str(MAX_POLL_WAIT)


def _send_extra_parameters(case: Any) -> None:
    """An undeclared query parameter generated as an empty list is sent with
    an empty value: an empty list never reaches the wire, and the request
    that does is valid, though schemathesis still counts it as negative."""
    query = case.query if isinstance(case.query, dict) else None
    if query is None:
        return
    for name, value in query.items():
        if name not in case.operation.query and value == []:
            query[name] = [""]


def test_an_undeclared_parameter_reaches_the_wire() -> None:
    schema = schemathesis.openapi.from_path(str(DOCUMENTS["notification"]))
    operation = schema["/v1/uplinks/dead"]["GET"]
    case = operation.Case(query={"limit": 3, "other": [], "more": ["x"]})
    _send_extra_parameters(case)
    assert case.query == {"limit": 3, "other": [""], "more": ["x"]}
    assert case.as_curl_command().endswith("/v1/uplinks/dead?limit=3&other=&more=x'")


def cover_operation(apis: Apis, api: str, schema: Any, operation: Any) -> list[str]:
    """schemathesis' coverage cases: each property missing, of another type,
    at and past its bounds (deterministic); the failures (at most 3)."""
    seen: list[str] = []
    cases = schema.iter_coverage_cases(
        operation,
        generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        generation_config=schema.config.generation_for(operation=operation),
    )
    for case in cases:
        try:
            check_case(apis, api, case)
        except BaseException as e:  # schemathesis' FailureGroup is a BaseExceptionGroup
            if isinstance(e, KeyboardInterrupt | SystemExit):
                raise
            seen.append(_describe(api, case, "coverage", e))
    return seen[:3]


def fuzz_operation(apis: Apis, api: str, operation: Any, mode: GenerationMode) -> list[str]:
    """Run ``EXAMPLES`` generated requests; the failures (at most 3)."""
    seen: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        try:
            check_case(apis, api, case)
        except BaseException as e:
            # Hypothesis may replay a failure that does not repeat (a timeout):
            # keep every one, not only what it reports.
            seen.append(_describe(api, case, mode.value, e))
            raise

    try:
        run()
    except Unsatisfiable:
        # No parameters and no body: nothing to make invalid.
        if mode is not GenerationMode.NEGATIVE:
            raise
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        if not seen:
            seen.append(f"{api} {operation.label} ({mode.value}): {_brief(e)}")
    return seen[:3]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("api", ["reglog", "notification"])
def test_fuzz_api_from_its_openapi_document(apis: Apis, api: str) -> None:
    schema = schemathesis.openapi.from_path(str(DOCUMENTS[api]))
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        failures += cover_operation(apis, api, schema, operation)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures += fuzz_operation(apis, api, operation, mode)
    for daemon in apis.cluster.started:
        daemon.check_running()
    assert not failures, "\n".join(failures)
