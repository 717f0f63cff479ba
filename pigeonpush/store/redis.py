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

import attrs
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from pigeonpush.store import checks, direct, keys, scripts, topic_scripts
from pigeonpush.store.address import ClusterAddress, RedisAddress
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
from pigeonpush.store.redis_cluster import ClusterConnection, key_slot
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
#: Queue shards (streams) on a Redis Cluster unless the URL says
#: ``?queue_shards=``: enough for the shards to spread over the masters.
CLUSTER_QUEUE_SHARDS = 8
#: On a cluster, an accept is answered once its writes reached this many
#: replicas of each master, or after CLUSTER_REPLICA_WAIT seconds (a replica
#: that is down delays accepts by that much; it does not stop them).
CLUSTER_REPLICAS = 1
CLUSTER_REPLICA_WAIT = 0.25
#: Separates an entry id's shard from its stream id (``3/1700000000000-0``).
SHARD_SEPARATOR = "/"

log = Logger()


class RedisStore(RedisTopics):
    """The store on Redis. Connects on first use; ``close`` releases everything.

    ``reply_timeout`` bounds each call's wait for Redis, a (re)connection
    included (default: the URL's ``?timeout=``, ``address.DEFAULT_TIMEOUT``).
    With a ``ClusterAddress`` the calls go through a slot router, and what
    spans slots is split per slot (docs/data-model.rst)."""

    def __init__(
        self,
        address: RedisAddress | ClusterAddress,
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
        self._main: RedisConnection | ClusterConnection
        self._cluster: ClusterConnection | None = None
        if isinstance(address, ClusterAddress):
            self._cluster = self._main = ClusterConnection(
                reactor,
                address,
                reply_timeout=self._reply_timeout,
                connect_timeout=self._connect_timeout,
                scripts=scripts.ALL + topic_scripts.ALL,
            )
            self._shards = address.queue_shards or CLUSTER_QUEUE_SHARDS
        else:
            self._single = address
            self._endpoint = redis_endpoint(reactor, address, self._connect_timeout)
            self._main = self._connection(scripts.ALL + topic_scripts.ALL)
            self._shards = address.queue_shards or 1
        self._next_shard = 0
        #: blocking-read connections by node (None: the single Redis)
        self._idle_blocking: dict[tuple[str, int] | None, list[RedisConnection]] = {}
        self._busy_blocking: set[RedisConnection] = set()
        #: sharded queue: blocking reads under way and what they brought
        #: (per consumer), handed out by the next ``consume``
        self._reads: dict[tuple[str, int], Deferred[None]] = {}
        self._stash: dict[str, list[QueueEntry]] = {}
        self._wakers: dict[str, list[Callable[[Failure | None], None]]] = {}
        self._closed = False
        self._accept_script = scripts.ACCEPT
        if isinstance(address, RedisAddress) and address.direct_streams:
            self._accept_script = direct.ACCEPT_DIRECT

    @property
    def queue_shards(self) -> int:
        return self._shards

    @property
    def direct_streams(self) -> bool:
        """Whether unicasts to online devices go to their server's stream."""
        return self._accept_script is direct.ACCEPT_DIRECT

    def _connection(self, loaded: Sequence[Script] = ()) -> RedisConnection:
        return RedisConnection(
            self._reactor,
            self._single,
            self._endpoint,
            reply_timeout=self._reply_timeout,
            connect_timeout=self._connect_timeout,
            scripts=loaded,
        )

    def _shard(self) -> int:
        """The next queue shard, in turn."""
        shard = self._next_shard
        self._next_shard = (shard + 1) % self._shards
        return shard

    def _slot_groups(self, slot_keys: Sequence[str]) -> list[list[int]]:
        """Indexes of ``slot_keys`` grouped by slot, in order within each group
        (one group on a single Redis, where every key shares the server)."""
        if self._cluster is None:
            return [list(range(len(slot_keys)))] if slot_keys else []
        groups: dict[int, list[int]] = {}
        for index, key in enumerate(slot_keys):
            groups.setdefault(key_slot(key), []).append(index)
        return list(groups.values())

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

    def issue_tokens(self, tokens: Sequence[tuple[str, str]], ttl: float) -> Deferred[None]:
        return self._call(self._issue_tokens, tokens, ttl)

    async def _issue_tokens(self, tokens: Sequence[tuple[str, str]], ttl: float) -> None:
        ms = str(checks.milliseconds(checks.positive_seconds(ttl, "ttl")))
        commands = [
            ("SET", keys.auth(client_id), checks.issuable_token(token), "PX", ms)
            for client_id, token in tokens
        ]
        if commands:
            for reply in await self._main.execute(commands):
                _checked(reply, "SET")

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
        for client_id in client_ids:  # a client's two keys share its slot
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
        route_keys = [keys.route(client_id) for client_id in client_ids]
        groups = self._slot_groups(route_keys)
        replies = await self._main.execute(
            [("MGET", *[route_keys[i] for i in group]) for group in groups]
        )
        found: list[str | None] = [None] * len(client_ids)
        for group, reply in zip(groups, replies, strict=True):
            for index, value in zip(group, _checked(reply, "MGET"), strict=True):
                found[index] = value
        return found

    # -- messages ------------------------------------------------------------------

    def accept(self, notifications: Sequence[Notification]) -> Deferred[list[Accepted]]:
        return self._call(self._accept, notifications)

    async def _accept(self, notifications: Sequence[Notification]) -> list[Accepted]:
        checked = checks.accepted_batch(notifications, self._reactor.seconds())
        queue = keys.queue(self._shard())
        if self._cluster is not None:
            return await self._accept_in_steps(checked, queue)
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
                calls.append((self._accept_script, [queue, *call_keys], call_args))
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
            calls.append((self._accept_script, [queue, *call_keys], call_args))
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

    async def _accept_in_steps(
        self, checked: Sequence[tuple[Notification, float]], queue: str
    ) -> list[Accepted]:
        """Accept across slots (a cluster), each step atomic on its slot and
        the batch's notifications together per step:

        1. CLAIM each idempotency key (with the messageId): a key already
           answered is a duplicate; a claim under way (an earlier attempt
           stopped before its answer) is resumed with the claimed messageId;
        2. WRITE_MESSAGE: body and receipt (left alone when resumed);
        3. ADD_PENDING: WAIT_ACK, one call per client slot (recipients with
           an outcome in the receipt are skipped when resumed);
        4. XADD to the queue shard, then WAIT until the replicas have it all
           (a master that crashes now does not take the acceptance with it);
        5. the idempotency record replaces the claim.

        A reference to a message (WAIT_ACK, a queue entry) is written only
        after its body, and the caller hears "accepted" only after step 5, so
        an interrupted accept loses nothing that was answered, and its retry
        (with the same key) writes the same messageId: what a device got
        early is de-duplicated by the SDK, never a second message."""
        idempotency_ms = str(self._idempotency_ms)
        items: list[tuple[Notification, float]] = list(checked)
        answers: list[Accepted | None] = [None] * len(items)
        claims: list[tuple[int, str]] = []
        #: a key repeated within the batch: index -> the index of its first use
        repeats: dict[int, int] = {}
        first_use: dict[str, int] = {}
        for i, (notification, _) in enumerate(items):
            key = notification.idempotency_key
            if key is None:
                continue
            if key in first_use:
                repeats[i] = first_use[key]
                answers[i] = Accepted("", 0)  # filled in once the first is answered
            else:
                first_use[key] = i
                claims.append((i, key))
        replies = await self._main.run_scripts(
            [
                (
                    scripts.CLAIM,
                    [keys.idempotency(key)],
                    [scripts.CLAIM_MARK + items[i][0].message.message_id, idempotency_ms],
                )
                for i, key in claims
            ]
        )
        for (i, _), reply in zip(claims, replies, strict=True):
            stored = _checked(reply, "claim")
            if stored is None:
                continue
            if not stored.startswith(scripts.CLAIM_MARK):
                answers[i] = load_accepted(stored)
                continue
            notification, remaining = items[i]
            message = attrs.evolve(
                notification.message, message_id=stored.removeprefix(scripts.CLAIM_MARK)
            )
            items[i] = (attrs.evolve(notification, message=message), remaining)
        todo = [i for i in range(len(items)) if answers[i] is None]
        now = self._reactor.seconds()
        send_times: dict[int, str] = {}
        for i in todo:
            send_at = items[i][0].send_at
            if send_at is not None and send_at > now:
                send_times[i] = dump_time(send_at)
        calls: list[tuple[Script, list[str], list[str]]] = []
        for i in todo:
            notification, remaining = items[i]
            message = notification.message
            calls.append(
                (
                    scripts.WRITE_MESSAGE,
                    [keys.msg_body(message.message_id), keys.receipt(message.message_id)],
                    [
                        *message_args(message, notification.recipients),
                        str(checks.milliseconds(remaining)),
                        str(checks.milliseconds(remaining + self._receipt_retention)),
                        send_times.get(i, ""),
                        notification.collapse_key or "",
                    ],
                )
            )
        settled = [set(_checked(reply, "write_message")) for reply in
                   await self._main.run_scripts(calls)]  # fmt: skip
        pending: list[tuple[str, Sequence[str], float, str]] = []
        for i, done in zip(todo, settled, strict=True):
            notification, remaining = items[i]
            if i in send_times:
                continue  # RELEASE's work, once the time came
            recipients = [c for c in notification.recipients if c not in done]
            message_id = notification.message.message_id
            pending.append((message_id, recipients, remaining, notification.collapse_key or ""))
        await self._add_pending_in_steps(pending)
        appends: list[Command] = []
        for i in todo:
            notification, _ = items[i]
            message = notification.message
            if i in send_times:
                # NX: a resumed accept leaves a claimed entry's lease alone.
                appends.append(("ZADD", keys.SCHEDULE, "NX", send_times[i], message.message_id))
                continue
            entry = _queue_entry(message, notification.recipients, notification.collapse_key)
            if notification.idempotency_key is not None:
                entry += ["idempotencyKey", notification.idempotency_key]
            appends.append(("XADD", queue, "*", *entry))
        for reply in await self._main.execute(appends):
            _checked(reply, appends[0][0] if appends else "XADD")
        if self._cluster is not None:
            await self._cluster.wait_replicas(CLUSTER_REPLICAS, CLUSTER_REPLICA_WAIT)
        records: list[Command] = []
        for i in todo:
            notification, _ = items[i]
            accepted = Accepted(notification.message.message_id, len(notification.recipients))
            answers[i] = accepted
            if notification.idempotency_key is not None:
                records.append(
                    (
                        "SET",
                        keys.idempotency(notification.idempotency_key),
                        accepted_record(accepted),
                        "PX",
                        idempotency_ms,
                    )
                )
        for reply in await self._main.execute(records):
            _checked(reply, "SET")
        for i, first in repeats.items():
            answer = answers[first]
            assert answer is not None
            answers[i] = attrs.evolve(answer, duplicate=True)
        return [answer for answer in answers if answer is not None]

    async def _add_pending_in_steps(
        self, pending: Sequence[tuple[str, Sequence[str], float, str]]
    ) -> None:
        """(messageId, recipients, TTL, collapse key): ADD_PENDING per client
        slot (WAIT_ACK and, with a collapse key, COLLAPSE), then ``replaced``
        in the receipt of each older message the collapse took out of a
        WAIT_ACK, on that message's slot (as SETTLE's two halves on a
        cluster: a stop between the two leaves that outcome unrecorded, the
        older message still out of the WAIT_ACK)."""
        calls: list[tuple[Script, list[str], list[str]]] = []
        for message_id, recipients, remaining, collapse_key in pending:
            waiting = [keys.wait_ack(c) for c in recipients]
            for group in self._slot_groups(waiting):
                call_keys = [waiting[g] for g in group]
                args = [message_id, str(checks.milliseconds(remaining)), collapse_key]
                if collapse_key:
                    call_keys += [keys.collapse(recipients[g]) for g in group]
                    args += [recipients[g] for g in group]
                calls.append((scripts.ADD_PENDING, call_keys, args))
        replaced: list[tuple[Script, list[str], list[str]]] = []
        for reply in await self._main.run_scripts(calls) if calls else ():
            pairs = _checked(reply, "add_pending")
            for client_id, older in zip(pairs[::2], pairs[1::2], strict=True):
                replaced.append(
                    (
                        scripts.RECORD_OUTCOME,
                        [keys.receipt(older)],
                        [client_id, RecipientState.REPLACED.value],
                    )
                )
        for reply in await self._main.run_scripts(replaced) if replaced else ():
            _checked(reply, "record_outcome")

    # -- scheduled sends (PIGEON:{SCHEDULE}) -----------------------------------------

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
        queue = keys.queue(self._shard())
        #: on a cluster: (message, recipients, collapse key) to release in steps
        due: list[tuple[Message, Sequence[str], str]] = []
        for index, message_id in enumerate(claimed):
            flat = _checked(replies[2 * index], "HGETALL")
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            message = _decoded(load_message, message_id, _checked(replies[2 * index + 1], "HMGET"))
            if keys.RECEIPT_SCHEDULED not in fields:
                continue  # cancelled, sent by another worker, or forgotten: only cleaned up
            if message is None:
                # Its TTL ran out while it waited: never sent, its receipt says expired.
                expired.append(
                    (
                        "HDEL",
                        keys.receipt(message_id),
                        keys.RECEIPT_SCHEDULED,
                        keys.RECEIPT_RELEASING,
                    )
                )
                continue
            recipients = _decoded(
                lambda _, v: load_recipients(v), message_id, fields.get("#recipients")
            )
            collapse_key = fields.get(keys.RECEIPT_COLLAPSE_KEY, "")
            if self._cluster is not None:
                due.append((message, recipients, collapse_key))
                continue
            release_keys = [queue, keys.receipt(message_id)]
            release_keys += [keys.wait_ack(client_id) for client_id in recipients]
            if collapse_key:
                release_keys += [keys.collapse(client_id) for client_id in recipients]
            args = [message_id, *message_args(message, recipients)]
            args += (str(checks.milliseconds(message.expires_at - now)), collapse_key)
            calls.append((scripts.RELEASE, release_keys, args))
        sent = 0
        for reply in await self._main.run_scripts(calls) if calls else ():
            sent += int(_checked(reply, "release"))
        if due:
            sent += await self._release_in_steps(due, queue, now)
        for reply in await self._main.execute(expired) if expired else ():
            _checked(reply, "HDEL")
        # Every claimed entry is done with: sent now, by another worker, or never.
        await self._one("ZREM", keys.SCHEDULE, *claimed)
        return sent

    async def _release_in_steps(
        self, due: Sequence[tuple[Message, Sequence[str], str]], queue: str, now: float
    ) -> int:
        """Release claimed messages across slots (a cluster), in order:

        1. RELEASE_BEGIN on the message's slot: still scheduled? then it is
           ``#releasing`` (no cancel from now on);
        2. ADD_PENDING per client slot (WAIT_ACK, the collapse), then the
           replaced messages' outcomes;
        3. XADD to a queue shard, then WAIT for the replicas;
        4. RELEASE_END: ``#scheduled`` goes, the message is sent.

        A worker that stops in between leaves the SCHEDULE entry (removed
        only after step 4), which the next claim after the lease resumes from
        step 1: each step is safe to repeat (a repeated XADD is a repeated
        delivery of one messageId, which the SDK de-duplicates)."""
        begun = await self._main.run_scripts(
            [(scripts.RELEASE_BEGIN, [keys.receipt(m.message_id)], []) for m, _, _ in due]
        )
        going = [
            item for item, reply in zip(due, begun, strict=True)
            if _checked(reply, "release_begin") == 1
        ]  # fmt: skip
        if not going:
            return 0
        await self._add_pending_in_steps(
            [(m.message_id, recipients, m.expires_at - now, ck) for m, recipients, ck in going]
        )
        appends: list[Command] = [
            ("XADD", queue, "*", *_queue_entry(m, recipients, ck)) for m, recipients, ck in going
        ]
        for reply in await self._main.execute(appends):
            _checked(reply, "XADD")
        if self._cluster is not None:
            await self._cluster.wait_replicas(CLUSTER_REPLICAS, CLUSTER_REPLICA_WAIT)
        ended = await self._main.run_scripts(
            [(scripts.RELEASE_END, [keys.receipt(m.message_id)], []) for m, _, _ in going]
        )
        return sum(int(_checked(reply, "release_end")) for reply in ended)

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
        if self._cluster is None:
            return self._call(self._settle_acks, acks)
        return self._call(
            self._settle,
            [(client_id, message_id, RecipientState.ACKED) for client_id, message_id in acks],
        )

    async def _settle_acks(self, acks: Sequence[tuple[str, str]]) -> None:
        """SETTLE_ACKS: a client's consecutive ACKs (a burst it read and
        ACKed at once) carry its WAIT_ACK key and clientId once; two words
        per ACK on the wire rather than five."""
        calls: list[tuple[Script, list[str], list[str]]] = []
        acked = RecipientState.ACKED.value
        wait_ack, receipt = keys.wait_ack, keys.receipt
        for start in range(0, len(acks), SETTLE_PAIRS_PER_CALL):
            call_keys: list[str] = []
            call_args = [acked]
            client: str | None = None
            count = count_at = 0
            for client_id, message_id in acks[start : start + SETTLE_PAIRS_PER_CALL]:
                if client_id != client:
                    if client is not None:
                        call_args[count_at] = str(count)
                    client, count = client_id, 0
                    call_keys.append(wait_ack(client_id))
                    call_args += (client_id, "")
                    count_at = len(call_args) - 1
                call_keys.append(receipt(message_id))
                call_args.append(message_id)
                count += 1
            call_args[count_at] = str(count)
            calls.append((scripts.SETTLE_ACKS, call_keys, call_args))
        for reply in await self._main.run_scripts(calls):
            _checked(reply, "settle_acks")

    def drop_pending(self, drops: Sequence[tuple[str, str, str]]) -> Deferred[None]:
        return self._call(self._drop_pending, drops)

    async def _drop_pending(self, drops: Sequence[tuple[str, str, str]]) -> None:
        await self._settle(checks.dropped(drops))

    async def _settle(self, outcomes: Sequence[tuple[str, str, RecipientState]]) -> None:
        if self._cluster is not None:
            # A client's WAIT_ACK and a message's RECEIPT are two slots: SREM
            # first, then the outcome where SREM removed the id.
            removed = await self._main.execute(
                [("SREM", keys.wait_ack(c), m) for c, m, _ in outcomes]
            )
            record = [
                (scripts.RECORD_OUTCOME, [keys.receipt(m)], [c, state.value])
                for (c, m, state), reply in zip(outcomes, removed, strict=True)
                if _checked(reply, "SREM") == 1
            ]
            for reply in await self._main.run_scripts(record):
                _checked(reply, "record_outcome")
            return
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
        failed_keys = [keys.failed(client_id) for client_id, _ in failures]
        groups = self._slot_groups(failed_keys)
        replies = await self._main.run_scripts(
            [
                (
                    scripts.ADD_FAILURES,
                    [failed_keys[i] for i in group],
                    [str(ms), *(failures[i][1] for i in group)],
                )
                for group in groups
            ]
        )
        counts = [0] * len(failures)
        for group, reply in zip(groups, replies, strict=True):
            for index, count in zip(group, _checked(reply, "add_failures"), strict=True):
                counts[index] = int(count)
        return counts

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
    # The queue is ``queue_shards`` streams (keys.queue), each its own slot on
    # a cluster. An accept call appends to one shard, in turn; consumers read,
    # acknowledge and reclaim from all of them. Entry ids name their shard:
    # ``<shard>/<stream id>``.

    def consume(self, consumer: str, count: int, block: float) -> Deferred[list[QueueEntry]]:
        return self._call(self._consume, consumer, count, block)

    async def _consume(self, consumer: str, count: int, block: float) -> list[QueueEntry]:
        checks.positive_count(count, "count")
        block = checks.non_negative_seconds(block, "block")
        entries = self._unstash(consumer, count)
        if entries:
            return entries
        # What is already queued comes as one JSON value (parsing a bulk
        # string per field costs more than Redis's work); only an empty queue
        # is waited on with a blocking read.
        entries = await self._read_shards(consumer, count)
        if len(entries) > count:
            # Every shard was read at once, for up to ``count`` each: what is
            # over is this consumer's (pending with it) and comes next time.
            self._stash.setdefault(consumer, []).extend(entries[count:])
            del entries[count:]
        if entries or block <= 0:
            return entries
        if self._shards == 1:
            return await self._read(0, consumer, count, block, abort_on_cancel=True)
        return await self._wait_any(consumer, count, block)

    async def _read_shards(self, consumer: str, count: int) -> list[QueueEntry]:
        """Up to ``count`` entries of each shard, all shards in one pipeline
        (one round trip per node), starting with the next shard in turn."""
        start = self._shard()
        shards = [(start + turn) % self._shards for turn in range(self._shards)]
        args = [keys.GROUP, consumer, str(count)]
        replies = await self._main.run_scripts(
            [(scripts.READ_PACKED, [keys.queue(shard)], args) for shard in shards]
        )
        missing = [i for i, reply in enumerate(replies) if is_error(reply, "NOGROUP")]
        if missing:
            # First use, or the stream was deleted: create the group (and the
            # stream), then read those shards again.
            created = await self._main.execute(
                [
                    ("XGROUP", "CREATE", keys.queue(shards[i]), keys.GROUP, "0", "MKSTREAM")
                    for i in missing
                ]
            )
            for reply in created:
                if not is_error(reply, "BUSYGROUP"):
                    _checked(reply, "XGROUP CREATE")
            again = await self._main.run_scripts(
                [(scripts.READ_PACKED, [keys.queue(shards[i])], args) for i in missing]
            )
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        raw: list[tuple[str, Any, int]] = []
        for shard, reply in zip(shards, replies, strict=True):
            value = _checked(reply, "XREADGROUP")
            if not value:
                continue
            try:
                rows = json.loads(value)
            except ValueError as e:
                raise StoreError(f"the queue read did not decode: {e}") from e
            raw += [(_entry_id(shard, row[0]), row[1], 1) for row in rows]
        return await self._entries(raw)

    async def _read(
        self, shard: int, consumer: str, count: int, block: float, *, abort_on_cancel: bool
    ) -> list[QueueEntry]:
        """A blocking XREADGROUP of one shard, on a connection of its own."""
        queue = keys.queue(shard)
        command = ["XREADGROUP", "GROUP", keys.GROUP, consumer, "COUNT", str(count)]
        command += ["BLOCK", str(checks.milliseconds(block)), "STREAMS", queue, ">"]

        async def blocking() -> Reply:
            return await self._blocking(queue, command, block, abort_on_cancel=abort_on_cancel)

        reply = await self._with_group(shard, blocking)
        if reply is None:
            return []
        # [[stream, [[id, [field, value, ...]], ...]]]
        return await self._entries([(_entry_id(shard, e[0]), e[1], 1) for e in reply[0][1]])

    async def _blocking(
        self, key: str, command: Sequence[str], block: float, *, abort_on_cancel: bool = True
    ) -> Reply:
        """A blocking read of ``key`` on a connection of its own (of the node
        that serves ``key`` on a cluster), so that nobody else's commands wait
        behind it; kept for the next one while few are idle."""
        node = None if self._cluster is None else await self._cluster.node_for(key)
        idle = self._idle_blocking.setdefault(node, [])
        if idle:
            connection = idle.pop()
        elif node is None or self._cluster is None:
            connection = self._connection()
        else:
            connection = self._cluster.new_connection(node, scripts=False)
        self._busy_blocking.add(connection)
        try:
            (reply,) = await connection.execute(
                [command], timeout=block + self._reply_timeout, abort_on_cancel=abort_on_cancel
            )
        except StoreError:
            if self._cluster is not None:
                self._cluster.note_trouble()
            raise
        finally:
            self._busy_blocking.discard(connection)
            if self._closed or len(idle) >= IDLE_BLOCKING_CONNECTIONS:
                connection.close()
            else:
                idle.append(connection)
        if self._cluster is not None and (is_error(reply, "MOVED") or is_error(reply, "ASK")):
            self._cluster.note_trouble()
            raise StoreError(f"{key} moved: {reply}")
        return _checked_group(reply, command[0])

    # -- direct streams (``?direct_streams=1``; pigeonpush.store.direct) ----------------

    def clear_direct(self, address: str) -> Deferred[None]:
        """Empty the stream of the push server at ``address`` (at its start:
        what is there was for an earlier process, and is in WAIT_ACK)."""
        return self._call(self._clear_direct, address)

    async def _clear_direct(self, address: str) -> None:
        (reply,) = await self._main.execute([("DEL", direct.direct(address))])
        _checked(reply, "DEL")

    def read_direct(
        self, address: str, after: str, count: int, block: float, *, trim: bool = True
    ) -> Deferred[tuple[str, list[Notification]]]:
        """The entries of ``address``'s stream after entry ``after`` (at most
        ``count``, waiting up to ``block`` seconds on a connection of its own),
        and the id to read after next. With ``trim``, the entries before
        ``after`` are trimmed at the same time: they were handled. One that does not decode is
        logged and skipped (its message stays in WAIT_ACK)."""
        return self._call(self._read_direct, address, after, count, block, trim)

    async def _read_direct(
        self, address: str, after: str, count: int, block: float, trim: bool
    ) -> tuple[str, list[Notification]]:
        stream = direct.direct(address)
        command = ["XREAD", "COUNT", str(count), "BLOCK", str(int(block * 1000))]
        command += ["STREAMS", stream, after]
        trimming = None
        if trim and after != "0-0":
            trimming = self._main.execute([("XTRIM", stream, "MINID", after)])
        reply = await self._blocking(stream, command, block)
        if trimming is not None:
            _checked((await trimming)[0], "XTRIM")
        if reply is None:
            return after, []
        notifications: list[Notification] = []
        for entry_id, fields in reply[0][1]:
            after = entry_id
            try:
                notifications.append(load_notification(fields))
            except DecodeError as e:
                log.error(
                    "Skipping direct entry {entry_id} that does not decode: {error}",
                    entry_id=entry_id,
                    error=str(e),
                )
        return after, notifications

    async def _wait_any(self, consumer: str, count: int, block: float) -> list[QueueEntry]:
        """Wait on every shard at once (one blocking read each, at most one per
        shard and consumer); the first entries to come are answered, and what
        other shards bring meanwhile waits for this consumer's next call."""
        for shard in range(self._shards):
            if (consumer, shard) not in self._reads:
                reading = ensureDeferred(
                    self._read(shard, consumer, count, block, abort_on_cancel=False)
                )
                self._reads[(consumer, shard)] = reading.addBoth(self._read_done, consumer, shard)
        wakers = self._wakers.setdefault(consumer, [])

        def stop(_: Deferred[None]) -> None:
            if wake in wakers:
                wakers.remove(wake)

        woken: Deferred[None] = Deferred(stop)

        def wake(failure: Failure | None) -> None:
            if wake in wakers:
                wakers.remove(wake)
            if not woken.called:
                woken.errback(failure) if failure is not None else woken.callback(None)

        wakers.append(wake)
        timer = self._reactor.callLater(block, wake, None)
        try:
            await woken
        finally:
            if timer.active():
                timer.cancel()
        return self._unstash(consumer, count)

    def _read_done(self, result: list[QueueEntry] | Failure, consumer: str, shard: int) -> None:
        del self._reads[(consumer, shard)]
        failure = result if isinstance(result, Failure) else None
        if isinstance(result, list):
            if not result:
                return
            self._stash.setdefault(consumer, []).extend(result)
        wakers = list(self._wakers.get(consumer, ()))
        if failure is not None and not wakers:
            log.info(
                "A blocking read of queue shard {shard} failed: {error}",
                shard=shard,
                error=failure.getErrorMessage(),
            )
        for wake in wakers:
            wake(failure)

    def _unstash(self, consumer: str, count: int) -> list[QueueEntry]:
        stash = self._stash.get(consumer)
        if not stash:
            return []
        taken, self._stash[consumer] = stash[:count], stash[count:]
        return taken

    async def _with_group(self, shard: int, operation: Callable[[], Awaitable[Reply]]) -> Reply:
        """Run ``operation``; if the group does not exist yet (first use, or the
        stream was deleted), create it (and the stream) and run it again."""
        try:
            return await operation()
        except _NoGroup:
            reply = await self._main.execute(
                [("XGROUP", "CREATE", keys.queue(shard), keys.GROUP, "0", "MKSTREAM")]
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
        by_shard: dict[int, list[str]] = {}
        for entry_id in entry_ids:
            named = _parse_entry_id(entry_id, self._shards)
            if named is not None:  # not one of ours: unknown, ignored
                by_shard.setdefault(named[0], []).append(named[1])
        if by_shard:
            calls: list[tuple[Script, list[str], list[str]]] = [
                (scripts.ACKNOWLEDGE, [keys.queue(shard)], [keys.GROUP, *ids])
                for shard, ids in by_shard.items()
            ]
            for reply in await self._main.run_scripts(calls):
                _checked(reply, "acknowledge")

    def reclaim(self, consumer: str, min_idle: float, count: int) -> Deferred[list[QueueEntry]]:
        return self._call(self._reclaim, consumer, min_idle, count)

    async def _reclaim(self, consumer: str, min_idle: float, count: int) -> list[QueueEntry]:
        idle_ms = round(checks.non_negative_seconds(min_idle, "min_idle") * 1000)
        checks.positive_count(count, "count")
        entries: list[QueueEntry] = []
        start = self._shard()
        for turn in range(self._shards):
            shard = (start + turn) % self._shards
            entries += await self._reclaim_shard(shard, consumer, idle_ms, count - len(entries))
            if len(entries) >= count:
                break
        return entries

    async def _reclaim_shard(
        self, shard: int, consumer: str, idle_ms: int, count: int
    ) -> list[QueueEntry]:
        args = [keys.GROUP, consumer, str(idle_ms), str(count), str(RECLAIM_ROUNDS)]

        async def claim() -> Reply:
            (reply,) = await self._main.run_scripts([(scripts.RECLAIM, [keys.queue(shard)], args)])
            return _checked_group(reply, "XAUTOCLAIM")

        claimed = await self._with_group(shard, claim)
        return await self._entries(
            [(_entry_id(shard, item[0]), item[1], int(item[2])) for item in claimed]
        )

    def queue_lag(self) -> Deferred[int]:
        return self._call(self._queue_lag)

    async def _queue_lag(self) -> int:
        replies = await self._main.execute(
            [("XLEN", keys.queue(shard)) for shard in range(self._shards)]
        )
        return sum(int(_checked(reply, "XLEN")) for reply in replies)

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
            reply = await self._blocking(keys.UPLINK, command, block)
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
            reply = await self._with_uplink_group(
                lambda: self._blocking(keys.UPLINK, command, block)
            )
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
        idle = [c for connections in self._idle_blocking.values() for c in connections]
        connections = [self._main, *idle, *self._busy_blocking]
        self._idle_blocking.clear()
        closing = DeferredList([c.close() for c in connections], consumeErrors=True)
        return closing.addCallback(lambda _: None)

    async def _flag(self, script: Script, script_keys: list[str], args: list[str]) -> bool:
        """Run a script that answers 1 (done) or 0 (condition not met)."""
        return bool(await self._script(script, script_keys, args) == 1)

    async def _script(self, script: Script, script_keys: list[str], args: list[str]) -> Reply:
        (reply,) = await self._main.run_scripts([(script, script_keys, args)])
        return _checked(reply, script.name)


_ENTRY_FIELDS = ("title", "text", "extras", "createdAt", "expiresAt", "recipients")


def _queue_entry(
    message: Message, recipients: Sequence[str], collapse_key: str | None
) -> list[str]:
    """The fields of a queue entry (ACCEPT's and RELEASE's, but the
    idempotency key), for an XADD of a step on a cluster."""
    fields = message_args(message, recipients)
    entry = ["messageId", message.message_id]
    entry += [word for pair in zip(_ENTRY_FIELDS, fields, strict=True) for word in pair]
    if collapse_key:
        entry += ["collapseKey", collapse_key]
    return entry


def _entry_id(shard: int, stream_id: str) -> str:
    return f"{shard}{SHARD_SEPARATOR}{stream_id}"


def _parse_entry_id(entry_id: str, shards: int) -> tuple[int, str] | None:
    """(shard, stream id) of an entry id of this store, else None."""
    shard, sep, stream_id = entry_id.partition(SHARD_SEPARATOR)
    if not (sep and shard.isdigit() and shard.isascii() and int(shard) < shards and stream_id):
        return None
    return int(shard), stream_id


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
