"""The Redis backend (txredisapi): the production store, shared by every node.

Key layout, types and expiries: docs/data-model.rst and ``keys``. Writes that
belong together run as one Lua script (``scripts``); batches go out as one
write per batch (``RedisConnection.execute``). Blocking queue reads use
connections of their own, so a consumer waiting on the queue never delays
anybody else's commands.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail
from twisted.logger import Logger

from pigeonpush.store import checks, keys, scripts, topic_scripts
from pigeonpush.store.address import RedisAddress
from pigeonpush.store.interface import (
    DEFAULT_IDEMPOTENCY_TTL,
    DEFAULT_RECEIPT_RETENTION,
    StoreError,
)
from pigeonpush.store.model import (
    Accepted,
    CancelResult,
    DeadUplink,
    DeviceRecord,
    Message,
    Notification,
    QueueEntry,
    Receipt,
    RecipientState,
    Uplink,
    UplinkStored,
)
from pigeonpush.store.redis_codec import (
    DecodeError,
    accepted_record,
    dump_time,
    load_accepted,
    load_device,
    load_message,
    load_notification,
    load_receipt,
    load_recipients,
    message_args,
)
from pigeonpush.store.redis_connection import (
    Command,
    RedisConnection,
    Reply,
    Script,
    is_error,
    redis_endpoint,
)
from pigeonpush.store.redis_topics import RedisTopics
from pigeonpush.store.redis_uplink import dump_dead, load_dead, load_uplink, uplink_args

T = TypeVar("T")

DEFAULT_CONNECT_TIMEOUT = 5.0
#: Blocking-read connections kept open between ``consume`` calls.
IDLE_BLOCKING_CONNECTIONS = 2
#: XAUTOCLAIM rounds per ``reclaim`` (each scans up to 10 x count pending entries).
RECLAIM_ROUNDS = 4

#: Keys (a WAIT_ACK per recipient, three more per notification) in one accept
#: script: a batch of small notifications is one call, while a huge one is
#: split so that no single script holds Redis up for long.
ACCEPT_KEYS_PER_CALL = 1400
#: ACKs or drops (two keys each) in one settle script.
SETTLE_PAIRS_PER_CALL = 512

log = Logger()


class RedisStore(RedisTopics):
    """The store on Redis. Connects on first use; ``close`` releases everything.

    ``reply_timeout`` bounds each call's wait for Redis, a (re)connection
    included (default: the URL's ``?timeout=``, ``address.DEFAULT_TIMEOUT``)."""

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any,
        *,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
        receipt_retention: float = DEFAULT_RECEIPT_RETENTION,
        reply_timeout: float | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.address = address
        self._reactor = reactor
        self._idempotency_ms = checks.milliseconds(
            checks.positive_seconds(idempotency_ttl, "idempotency_ttl")
        )
        self._receipt_retention = checks.non_negative_seconds(
            receipt_retention, "receipt_retention"
        )
        self._reply_timeout = checks.positive_seconds(
            address.timeout if reply_timeout is None else reply_timeout, "reply_timeout"
        )
        self._connect_timeout = checks.positive_seconds(connect_timeout, "connect_timeout")
        self._endpoint = redis_endpoint(reactor, address, self._connect_timeout)
        self._main = self._connection(scripts.ALL + topic_scripts.ALL)
        self._idle_blocking: list[RedisConnection] = []
        self._busy_blocking: set[RedisConnection] = set()
        self._closed = False

    def _connection(self, loaded: Sequence[Script] = ()) -> RedisConnection:
        return RedisConnection(
            self._reactor,
            self.address,
            self._endpoint,
            reply_timeout=self._reply_timeout,
            connect_timeout=self._connect_timeout,
            scripts=loaded,
        )

    def _call(self, operation: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> Deferred[T]:
        if self._closed:
            return fail(StoreError("the store is closed"))
        return ensureDeferred(operation(*args))

    async def _one(self, *command: str) -> Reply:
        (reply,) = await self._main.execute([command])
        return _checked(reply, command[0])

    # -- sessions ----------------------------------------------------------------

    def issue_token(self, client_id: str, token: str, ttl: float) -> Deferred[None]:
        return self._call(self._issue_token, client_id, token, ttl)

    async def _issue_token(self, client_id: str, token: str, ttl: float) -> None:
        ms = checks.milliseconds(checks.positive_seconds(ttl, "ttl"))
        checks.issuable_token(token)
        await self._one("SET", keys.auth(client_id), token, "PX", str(ms))

    def token(self, client_id: str) -> Deferred[str | None]:
        return self._call(self._token, client_id)

    async def _token(self, client_id: str) -> str | None:
        stored = await self._one("GET", keys.auth(client_id))
        return stored.removeprefix(keys.BOUND) if stored is not None else None

    def bind_session(self, client_id: str, token: str, server: str, ttl: float) -> Deferred[bool]:
        return self._call(self._bind_session, client_id, token, server, ttl)

    async def _bind_session(self, client_id: str, token: str, server: str, ttl: float) -> bool:
        ms = checks.milliseconds(checks.positive_seconds(ttl, "ttl"))
        return await self._flag(
            scripts.BIND_SESSION,
            [keys.auth(client_id), keys.route(client_id)],
            [token, server, str(ms), keys.BOUND],
        )

    def end_session(self, client_id: str, token: str, server: str) -> Deferred[bool]:
        return self._call(self._end_session, client_id, token, server)

    async def _end_session(self, client_id: str, token: str, server: str) -> bool:
        return await self._flag(
            scripts.END_SESSION,
            [keys.auth(client_id), keys.route(client_id)],
            [token, server, keys.BOUND],
        )

    def refresh_sessions(self, client_ids: Sequence[str], ttl: float) -> Deferred[None]:
        return self._call(self._refresh_sessions, client_ids, ttl)

    async def _refresh_sessions(self, client_ids: Sequence[str], ttl: float) -> None:
        ms = str(checks.milliseconds(checks.positive_seconds(ttl, "ttl")))
        commands: list[Command] = []
        for client_id in client_ids:
            commands.append(("PEXPIRE", keys.auth(client_id), ms))
            commands.append(("PEXPIRE", keys.route(client_id), ms))
        for reply in await self._main.execute(commands):
            _checked(reply, "PEXPIRE")

    def revoke_session(self, client_id: str) -> Deferred[str | None]:
        return self._call(self._revoke_session, client_id)

    async def _revoke_session(self, client_id: str) -> str | None:
        route: str | None = await self._script(
            scripts.REVOKE_SESSION, [keys.auth(client_id), keys.route(client_id)], []
        )
        return route

    def drop_route(self, client_id: str, server: str) -> Deferred[bool]:
        return self._call(self._drop_route, client_id, server)

    async def _drop_route(self, client_id: str, server: str) -> bool:
        return await self._flag(scripts.DROP_ROUTE, [keys.route(client_id)], [server])

    def route(self, client_id: str) -> Deferred[str | None]:
        return self._call(self._one, "GET", keys.route(client_id))

    def routes(self, client_ids: Sequence[str]) -> Deferred[list[str | None]]:
        return self._call(self._routes, client_ids)

    async def _routes(self, client_ids: Sequence[str]) -> list[str | None]:
        if not client_ids:
            return []
        found = await self._one("MGET", *[keys.route(client_id) for client_id in client_ids])
        return list(found)

    # -- messages ------------------------------------------------------------------

    def accept(self, notifications: Sequence[Notification]) -> Deferred[list[Accepted]]:
        return self._call(self._accept, notifications)

    async def _accept(self, notifications: Sequence[Notification]) -> list[Accepted]:
        checked = checks.accepted_batch(notifications, self._reactor.seconds())
        calls: list[tuple[Script, list[str], list[str]]] = []
        call_keys: list[str] = []
        call_args: list[str] = []
        now = self._reactor.seconds()
        for notification, remaining in checked:
            message = notification.message
            key = notification.idempotency_key
            recipients = notification.recipients
            send_at = notification.send_at
            scheduled = send_at is not None and send_at > now
            collapse_key = notification.collapse_key or ""
            more = 1 if scheduled else (len(recipients) if collapse_key else 0)
            if call_keys and len(call_keys) + 3 + len(recipients) + more > ACCEPT_KEYS_PER_CALL:
                calls.append((scripts.ACCEPT, [keys.QUEUE, *call_keys], call_args))
                call_keys, call_args = [], []
            body = keys.msg_body(message.message_id)
            call_keys += (body, keys.idempotency(key) if key is not None else body)
            call_keys.append(keys.receipt(message.message_id))
            call_keys += [keys.wait_ack(client_id) for client_id in recipients]
            if scheduled:
                call_keys.append(keys.SCHEDULE)
            elif collapse_key:
                call_keys += [keys.collapse(client_id) for client_id in recipients]
            call_args.append(str(len(recipients)))
            call_args.append(message.message_id)
            call_args += message_args(message, recipients)
            call_args += (
                str(checks.milliseconds(remaining)),
                "0" if key is None else "1",
                str(self._idempotency_ms),
                # Only read with a key: no JSON to build for the rest.
                ""
                if key is None
                else accepted_record(Accepted(message.message_id, len(recipients))),
                key or "",
                str(checks.milliseconds(remaining + self._receipt_retention)),
                collapse_key,
                dump_time(send_at) if scheduled and send_at is not None else "",
            )
        if call_keys:
            calls.append((scripts.ACCEPT, [keys.QUEUE, *call_keys], call_args))
        replies: list[Reply] = []
        for reply in await self._main.run_scripts(calls):
            replies += _checked(reply, "accept")
        answers: list[Accepted] = []
        for (notification, _), reply in zip(checked, replies, strict=True):
            # 1: written; [0, record]: the idempotency key was used before,
            # and record is its answer.
            if reply == 1:
                answers.append(
                    Accepted(notification.message.message_id, len(notification.recipients))
                )
            else:
                answers.append(load_accepted(reply[1]))
        return answers

    # -- scheduled sends (PIGEON:SCHEDULE) -----------------------------------------

    def release_due(self, limit: int, lease: float) -> Deferred[int]:
        return self._call(self._release_due, limit, lease)

    async def _release_due(self, limit: int, lease: float) -> int:
        checks.positive_count(limit, "limit")
        lease = checks.positive_seconds(lease, "lease")
        now = self._reactor.seconds()
        claimed = await self._script(
            scripts.CLAIM_DUE, [keys.SCHEDULE], [dump_time(now), str(limit), dump_time(now + lease)]
        )
        if not claimed:
            return 0
        reads: list[Command] = []
        for message_id in claimed:
            reads.append(("HGETALL", keys.receipt(message_id)))
            reads.append(("HMGET", keys.msg_body(message_id), *keys.BODY_FIELDS))
        replies = await self._main.execute(reads)
        calls: list[tuple[Script, list[str], list[str]]] = []
        expired: list[Command] = []
        for index, message_id in enumerate(claimed):
            flat = _checked(replies[2 * index], "HGETALL")
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            message = _decoded(load_message, message_id, _checked(replies[2 * index + 1], "HMGET"))
            if keys.RECEIPT_SCHEDULED not in fields:
                continue  # cancelled, sent by another worker, or forgotten: only cleaned up
            if message is None:
                # Its TTL ran out while it waited: never sent, its receipt says expired.
                expired.append(("HDEL", keys.receipt(message_id), keys.RECEIPT_SCHEDULED))
                continue
            recipients = _decoded(
                lambda _, v: load_recipients(v), message_id, fields.get("#recipients")
            )
            collapse_key = fields.get(keys.RECEIPT_COLLAPSE_KEY, "")
            release_keys = [keys.QUEUE, keys.receipt(message_id)]
            release_keys += [keys.wait_ack(client_id) for client_id in recipients]
            if collapse_key:
                release_keys += [keys.collapse(client_id) for client_id in recipients]
            args = [message_id, *message_args(message, recipients)]
            args += (str(checks.milliseconds(message.expires_at - now)), collapse_key)
            calls.append((scripts.RELEASE, release_keys, args))
        sent = 0
        for reply in await self._main.run_scripts(calls):
            sent += int(_checked(reply, "release"))
        for reply in await self._main.execute(expired) if expired else ():
            _checked(reply, "HDEL")
        # Every claimed entry is done with: sent now, by another worker, or never.
        await self._one("ZREM", keys.SCHEDULE, *claimed)
        return sent

    def cancel(self, message_id: str) -> Deferred[CancelResult]:
        return self._call(self._cancel, message_id)

    async def _cancel(self, message_id: str) -> CancelResult:
        answer = await self._script(
            scripts.CANCEL, [keys.receipt(message_id), keys.msg_body(message_id)], []
        )
        if answer == -1:
            return CancelResult.UNKNOWN
        if answer == 0:
            return CancelResult.SENT
        if answer == 1:
            await self._one("ZREM", keys.SCHEDULE, message_id)
        return CancelResult.CANCELLED

    def pending_ids(self, client_id: str, limit: int | None = None) -> Deferred[list[str]]:
        return self._call(self._pending_ids, client_id, limit)

    async def _pending_ids(self, client_id: str, limit: int | None) -> list[str]:
        limit = checks.optional_limit(limit)
        # messageIds are ULIDs: sorting them is sorting by time.
        ids = sorted(await self._one("SMEMBERS", keys.wait_ack(client_id)))
        return ids if limit is None else ids[:limit]

    def pending_ids_many(
        self, client_ids: Sequence[str], limit: int | None = None
    ) -> Deferred[list[list[str]]]:
        return self._call(self._pending_ids_many, client_ids, limit)

    async def _pending_ids_many(
        self, client_ids: Sequence[str], limit: int | None
    ) -> list[list[str]]:
        limit = checks.optional_limit(limit)
        if not client_ids:
            return []
        replies = await self._main.execute(
            [("SMEMBERS", keys.wait_ack(client_id)) for client_id in client_ids]
        )
        found = [sorted(_checked(reply, "SMEMBERS")) for reply in replies]
        return found if limit is None else [ids[:limit] for ids in found]

    def bodies(self, message_ids: Sequence[str]) -> Deferred[list[Message | None]]:
        return self._call(self._bodies, message_ids)

    async def _bodies(self, message_ids: Sequence[str]) -> list[Message | None]:
        replies = await self._main.execute(
            [("HMGET", keys.msg_body(message_id), *keys.BODY_FIELDS) for message_id in message_ids]
        )
        return [
            _decoded(load_message, message_id, _checked(reply, "HMGET"))
            for message_id, reply in zip(message_ids, replies, strict=True)
        ]

    def ack(self, acks: Sequence[tuple[str, str]]) -> Deferred[None]:
        return self._call(
            self._settle,
            [(client_id, message_id, RecipientState.ACKED) for client_id, message_id in acks],
        )

    def drop_pending(self, drops: Sequence[tuple[str, str, str]]) -> Deferred[None]:
        return self._call(self._drop_pending, drops)

    async def _drop_pending(self, drops: Sequence[tuple[str, str, str]]) -> None:
        await self._settle(checks.dropped(drops))

    async def _settle(self, outcomes: Sequence[tuple[str, str, RecipientState]]) -> None:
        calls: list[tuple[Script, list[str], list[str]]] = []
        for start in range(0, len(outcomes), SETTLE_PAIRS_PER_CALL):
            call_keys: list[str] = []
            call_args: list[str] = []
            for client_id, message_id, state in outcomes[start : start + SETTLE_PAIRS_PER_CALL]:
                call_keys += (keys.wait_ack(client_id), keys.receipt(message_id))
                call_args += (message_id, client_id, state.value)
            calls.append((scripts.SETTLE, call_keys, call_args))
        for reply in await self._main.run_scripts(calls):
            _checked(reply, "settle")

    def add_failures(self, failures: Sequence[tuple[str, str]], ttl: float) -> Deferred[list[int]]:
        return self._call(self._add_failures, failures, ttl)

    async def _add_failures(self, failures: Sequence[tuple[str, str]], ttl: float) -> list[int]:
        ms = checks.milliseconds(checks.positive_seconds(ttl, "ttl"))
        if not failures:
            return []
        counts = await self._script(
            scripts.ADD_FAILURES,
            [keys.failed(client_id) for client_id, _ in failures],
            [str(ms), *(message_id for _, message_id in failures)],
        )
        return [int(count) for count in counts]

    def receipt(self, message_id: str) -> Deferred[Receipt | None]:
        return self._call(self._receipt, message_id)

    async def _receipt(self, message_id: str) -> Receipt | None:
        flat = await self._one("HGETALL", keys.receipt(message_id))
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        return _decoded(
            lambda key, value: load_receipt(key, value, self._reactor.seconds()),
            message_id,
            fields,
        )

    # -- devices ---------------------------------------------------------------------

    def register_device(self, record: DeviceRecord) -> Deferred[bool]:
        return self._call(self._register_device, record)

    async def _register_device(self, record: DeviceRecord) -> bool:
        return await self._flag(
            scripts.REGISTER_DEVICE,
            [keys.device(record.client_id)],
            [record.secret_hash, dump_time(record.created_at)],
        )

    def device(self, client_id: str) -> Deferred[DeviceRecord | None]:
        return self._call(self._device, client_id)

    async def _device(self, client_id: str) -> DeviceRecord | None:
        values = await self._one("HMGET", keys.device(client_id), *keys.DEVICE_FIELDS)
        return _decoded(load_device, client_id, values)

    # -- queue -----------------------------------------------------------------------

    def consume(self, consumer: str, count: int, block: float) -> Deferred[list[QueueEntry]]:
        return self._call(self._consume, consumer, count, block)

    async def _consume(self, consumer: str, count: int, block: float) -> list[QueueEntry]:
        checks.positive_count(count, "count")
        block = checks.non_negative_seconds(block, "block")
        # What is already queued comes as one JSON value (parsing a bulk
        # string per field costs more than Redis's work); only an empty queue
        # is waited on with a blocking read.
        args = [keys.GROUP, consumer, str(count)]

        async def packed() -> Reply:
            (reply,) = await self._main.run_scripts([(scripts.READ_PACKED, [keys.QUEUE], args)])
            return _checked_group(reply, "XREADGROUP")

        value = await self._with_group(packed)
        if value:
            try:
                rows = json.loads(value)
            except ValueError as e:
                raise StoreError(f"the queue read did not decode: {e}") from e
            return await self._entries([(row[0], row[1], 1) for row in rows])
        if block <= 0:
            return []
        command = ["XREADGROUP", "GROUP", keys.GROUP, consumer, "COUNT", str(count)]
        command += ["BLOCK", str(checks.milliseconds(block)), "STREAMS", keys.QUEUE, ">"]
        reply = await self._with_group(lambda: self._read(command, block))
        if reply is None:
            return []
        # [[stream, [[id, [field, value, ...]], ...]]]
        return await self._entries([(entry[0], entry[1], 1) for entry in reply[0][1]])

    async def _read(self, command: Sequence[str], block: float) -> Reply:
        connection = self._idle_blocking.pop() if self._idle_blocking else self._connection()
        self._busy_blocking.add(connection)
        try:
            (reply,) = await connection.execute(
                [command], timeout=block + self._reply_timeout, abort_on_cancel=True
            )
        finally:
            self._busy_blocking.discard(connection)
            if self._closed or len(self._idle_blocking) >= IDLE_BLOCKING_CONNECTIONS:
                connection.close()
            else:
                self._idle_blocking.append(connection)
        return _checked_group(reply, command[0])

    async def _with_group(self, operation: Callable[[], Awaitable[Reply]]) -> Reply:
        """Run ``operation``; if the group does not exist yet (first use, or the
        stream was deleted), create it (and the stream) and run it again."""
        try:
            return await operation()
        except _NoGroup:
            reply = await self._main.execute(
                [("XGROUP", "CREATE", keys.QUEUE, keys.GROUP, "0", "MKSTREAM")]
            )
            if not is_error(reply[0], "BUSYGROUP"):
                _checked(reply[0], "XGROUP CREATE")
            try:
                return await operation()
            except _NoGroup as e:
                raise StoreError(str(e)) from None

    async def _entries(self, raw: Sequence[tuple[str, Any, int]]) -> list[QueueEntry]:
        """Queue entries from (id, fields, deliveries); an entry that does not
        decode is logged and removed, so it cannot block the queue."""
        entries: list[QueueEntry] = []
        broken: list[str] = []
        for entry_id, fields, deliveries in raw:
            if fields is None:  # deleted while pending: nothing left to deliver
                broken.append(entry_id)
                continue
            try:
                entries.append(QueueEntry(entry_id, load_notification(fields), deliveries))
            except DecodeError as e:
                log.error(
                    "Dropping queue entry {entry_id} that does not decode: {error}",
                    entry_id=entry_id,
                    error=str(e),
                )
                broken.append(entry_id)
        if broken:
            await self._acknowledge(broken)
        return entries

    def acknowledge(self, entry_ids: Sequence[str]) -> Deferred[None]:
        return self._call(self._acknowledge, entry_ids)

    async def _acknowledge(self, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            await self._script(scripts.ACKNOWLEDGE, [keys.QUEUE], [keys.GROUP, *entry_ids])

    def reclaim(self, consumer: str, min_idle: float, count: int) -> Deferred[list[QueueEntry]]:
        return self._call(self._reclaim, consumer, min_idle, count)

    async def _reclaim(self, consumer: str, min_idle: float, count: int) -> list[QueueEntry]:
        idle_ms = round(checks.non_negative_seconds(min_idle, "min_idle") * 1000)
        checks.positive_count(count, "count")
        args = [keys.GROUP, consumer, str(idle_ms), str(count), str(RECLAIM_ROUNDS)]

        async def claim() -> Reply:
            (reply,) = await self._main.run_scripts([(scripts.RECLAIM, [keys.QUEUE], args)])
            return _checked_group(reply, "XAUTOCLAIM")

        claimed = await self._with_group(claim)
        return await self._entries([(item[0], item[1], int(item[2])) for item in claimed])

    def queue_lag(self) -> Deferred[int]:
        return self._call(self._one, "XLEN", keys.QUEUE)

    # -- uplinks ------------------------------------------------------------------------

    def add_uplink(
        self, uplink: Uplink, *, dedup_window: float, max_len: int
    ) -> Deferred[UplinkStored]:
        return self._call(self._add_uplink, uplink, dedup_window, max_len)

    async def _add_uplink(self, uplink: Uplink, dedup_window: float, max_len: int) -> UplinkStored:
        window_ms = checks.milliseconds(checks.positive_seconds(dedup_window, "dedup_window"))
        checks.positive_count(max_len, "max_len")
        script_keys = [keys.UPLINK, keys.uplink_seen(uplink.client_id, uplink.uplink_id)]
        args = [*uplink_args(uplink), str(window_ms), str(max_len)]
        written, entry_id = await self._script(scripts.ADD_UPLINK, script_keys, args)
        return UplinkStored(str(entry_id), duplicate=int(written) == 0)

    def uplinks(self, after: str, count: int, block: float = 0.0) -> Deferred[list[Uplink]]:
        return self._call(self._uplinks, after, count, block)

    async def _uplinks(self, after: str, count: int, block: float) -> list[Uplink]:
        checks.entry_key(after)
        checks.positive_count(count, "count")
        block = checks.non_negative_seconds(block, "block")
        command = ["XREAD", "COUNT", str(count), "STREAMS", keys.UPLINK, after]
        reply = await self._one(*command)
        if reply is None and block > 0:
            command[3:3] = ["BLOCK", str(checks.milliseconds(block))]
            reply = await self._read(command, block)
        return self._stream_uplinks(reply)

    def last_uplink_id(self) -> Deferred[str]:
        return self._call(self._last_uplink_id)

    async def _last_uplink_id(self) -> str:
        reply = await self._one("XREVRANGE", keys.UPLINK, "+", "-", "COUNT", "1")
        return str(reply[0][0]) if reply else "0"

    def claim_uplinks(self, consumer: str, count: int, block: float) -> Deferred[list[Uplink]]:
        return self._call(self._claim_uplinks, consumer, count, block)

    async def _claim_uplinks(self, consumer: str, count: int, block: float) -> list[Uplink]:
        checks.positive_count(count, "count")
        block = checks.non_negative_seconds(block, "block")
        command = ["XREADGROUP", "GROUP", keys.UPLINK_GROUP, consumer, "COUNT", str(count)]
        command += ["STREAMS", keys.UPLINK, ">"]

        async def read() -> Reply:
            return _checked_group((await self._main.execute([command]))[0], "XREADGROUP")

        reply = await self._with_uplink_group(read)
        if reply is None and block > 0:
            command[6:6] = ["BLOCK", str(checks.milliseconds(block))]
            reply = await self._with_uplink_group(lambda: self._read(command, block))
        return self._stream_uplinks(reply)

    def reclaim_uplinks(self, consumer: str, min_idle: float, count: int) -> Deferred[list[Uplink]]:
        return self._call(self._reclaim_uplinks, consumer, min_idle, count)

    async def _reclaim_uplinks(self, consumer: str, min_idle: float, count: int) -> list[Uplink]:
        idle_ms = round(checks.non_negative_seconds(min_idle, "min_idle") * 1000)
        checks.positive_count(count, "count")
        command = ["XAUTOCLAIM", keys.UPLINK, keys.UPLINK_GROUP, consumer, str(idle_ms)]
        command += ["0-0", "COUNT", str(count)]

        async def claim() -> Reply:
            return _checked_group((await self._main.execute([command]))[0], "XAUTOCLAIM")

        reply = await self._with_uplink_group(claim)
        return [self._uplink(entry[0], entry[1]) for entry in reply[1] if entry[1] is not None]

    def settle_uplinks(self, entry_ids: Sequence[str]) -> Deferred[None]:
        return self._call(self._settle_uplinks, entry_ids)

    async def _settle_uplinks(self, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            await self._one("XACK", keys.UPLINK, keys.UPLINK_GROUP, *entry_ids)

    def add_dead_uplink(self, dead: DeadUplink, max_len: int) -> Deferred[None]:
        return self._call(self._add_dead_uplink, dead, max_len)

    async def _add_dead_uplink(self, dead: DeadUplink, max_len: int) -> None:
        checks.positive_count(max_len, "max_len")
        await self._script(
            scripts.ADD_DEAD_UPLINK, [keys.UPLINK_DEAD], [dump_dead(dead), str(max_len)]
        )

    def dead_uplinks(self, count: int) -> Deferred[list[DeadUplink]]:
        return self._call(self._dead_uplinks, count)

    async def _dead_uplinks(self, count: int) -> list[DeadUplink]:
        checks.positive_count(count, "count")
        raw = await self._one("LRANGE", keys.UPLINK_DEAD, "0", str(count - 1))
        try:
            return [load_dead(item) for item in raw]
        except DecodeError as e:
            raise StoreError(str(e)) from e

    async def _with_uplink_group(self, operation: Callable[[], Awaitable[Reply]]) -> Reply:
        """``_with_group`` for the uplink stream's ``webhook`` group, created at
        the oldest kept entry: a new webhook sends what the stream still holds."""
        try:
            return await operation()
        except _NoGroup:
            reply = await self._main.execute(
                [("XGROUP", "CREATE", keys.UPLINK, keys.UPLINK_GROUP, "0", "MKSTREAM")]
            )
            if not is_error(reply[0], "BUSYGROUP"):
                _checked(reply[0], "XGROUP CREATE")
            try:
                return await operation()
            except _NoGroup as e:
                raise StoreError(str(e)) from None

    def _stream_uplinks(self, reply: Reply) -> list[Uplink]:
        """Uplinks from an XREAD(GROUP) reply ``[[stream, [[id, fields], ...]]]``."""
        if not reply:
            return []
        return [self._uplink(entry[0], entry[1]) for entry in reply[0][1]]

    @staticmethod
    def _uplink(entry_id: str, fields: Any) -> Uplink:
        return _decoded(load_uplink, entry_id, fields)

    # -- lifetime --------------------------------------------------------------------

    def ping(self) -> Deferred[None]:
        return self._call(self._ping)

    async def _ping(self) -> None:
        await self._one("PING")

    def close(self) -> Deferred[None]:
        """Close every connection; calls in flight fail with StoreError."""
        self._closed = True
        connections = [self._main, *self._idle_blocking, *self._busy_blocking]
        self._idle_blocking.clear()
        closing = DeferredList([c.close() for c in connections], consumeErrors=True)
        return closing.addCallback(lambda _: None)

    async def _flag(self, script: Script, script_keys: list[str], args: list[str]) -> bool:
        """Run a script that answers 1 (done) or 0 (condition not met)."""
        return bool(await self._script(script, script_keys, args) == 1)

    async def _script(self, script: Script, script_keys: list[str], args: list[str]) -> Reply:
        (reply,) = await self._main.run_scripts([(script, script_keys, args)])
        return _checked(reply, script.name)


class _NoGroup(StoreError):
    """The consumer group (or the stream) does not exist."""


def _checked(reply: Reply, what: str) -> Reply:
    if is_error(reply):
        raise StoreError(f"Redis refused {what}: {reply}")
    return reply


def _checked_group(reply: Reply, what: str) -> Reply:
    if is_error(reply, "NOGROUP"):
        raise _NoGroup(f"Redis refused {what}: {reply}")
    return _checked(reply, what)


def _decoded(load: Callable[[str, Any], T], key: str, value: Any) -> T:
    try:
        return load(key, value)
    except DecodeError as e:
        raise StoreError(str(e)) from e
