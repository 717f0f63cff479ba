"""The store contract: every test runs against the memory, the Redis and the Redis
Cluster backend."""

from __future__ import annotations

import random

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, gatherResults

from pigeonpush.store import (
    Accepted,
    CancelResult,
    DeviceRecord,
    DropReason,
    Message,
    Notification,
    RecipientState,
    StoreError,
    keys,
)
from support.stores import StoreCase

# -- sessions: tokens and routes ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_issued_token_is_read_back_and_replaced(store_case: StoreCase) -> None:
    store = store_case.store
    assert await store.token("alice") is None
    await store.issue_token("alice", "token-1", 60)
    assert await store.token("alice") == "token-1"
    await store.issue_token("alice", "token-2", 60)
    assert await store.token("alice") == "token-2"
    assert await store.token("bob") is None


@pytest_twisted.ensureDeferred
async def test_token_expires_after_its_ttl(store_case: StoreCase) -> None:
    store = store_case.store
    await store.issue_token("alice", "token-1", store_case.ttl)
    assert await store.token("alice") == "token-1"
    if store_case.clock is not None:
        store_case.clock.advance(store_case.ttl - 0.01)
        assert await store.token("alice") == "token-1"

    async def gone() -> bool:
        return await store.token("alice") is None

    await store_case.eventually(gone, within=store_case.ttl, what="AUTH expired")


@pytest_twisted.ensureDeferred
async def test_bind_session_needs_the_current_token(store_case: StoreCase) -> None:
    store = store_case.store
    await store.issue_token("alice", "token-2", 60)
    for wrong in ("token-1", "token-", "token-22", "", "TOKEN-2"):
        assert await store.bind_session("alice", wrong, "10.0.0.1:7101", 60) is False
    assert await store.route("alice") is None
    assert await store.bind_session("nobody", "token-1", "10.0.0.1:7101", 60) is False
    assert await store.route("nobody") is None
    assert await store.bind_session("alice", "token-2", "10.0.0.1:7101", 60) is True
    assert await store.route("alice") == "10.0.0.1:7101"
    assert await store.token("alice") == "token-2"
    # Used: the same token binds no second session.
    assert await store.bind_session("alice", "token-2", "10.0.0.2:7101", 60) is False
    assert await store.route("alice") == "10.0.0.1:7101"


@pytest_twisted.ensureDeferred
async def test_bind_session_gives_auth_and_route_the_session_ttl(store_case: StoreCase) -> None:
    store = store_case.store
    await store.issue_token("alice", "token-1", 1000 * store_case.ttl)
    assert await store.bind_session("alice", "token-1", "server-a", store_case.ttl)

    async def both_gone() -> bool:
        return await store.token("alice") is None and await store.route("alice") is None

    await store_case.eventually(both_gone, within=store_case.ttl, what="AUTH and ROUTE expired")


@pytest_twisted.ensureDeferred
async def test_refresh_sessions_extends_live_sessions_only(store_case: StoreCase) -> None:
    store = store_case.store
    ttl = store_case.ttl
    for client in ("alice", "bob"):
        await store.issue_token(client, f"{client}-token", ttl)
        assert await store.bind_session(client, f"{client}-token", "server-a", ttl)
    await store.refresh_sessions(["alice", "bob", "carol"], 10 * ttl)
    await store_case.advance(1.5 * ttl)
    assert await store.token("alice") == "alice-token"
    assert await store.routes(["alice", "bob", "carol"]) == ["server-a", "server-a", None]
    # A refresh never creates a session.
    assert await store.token("carol") is None
    # A shorter refresh shortens it again.
    await store.refresh_sessions(["alice"], ttl)

    async def alice_gone() -> bool:
        return await store.route("alice") is None and await store.token("alice") is None

    await store_case.eventually(alice_gone, within=ttl, what="refreshed session expired")
    assert await store.route("bob") == "server-a"


@pytest_twisted.ensureDeferred
async def test_end_session_deletes_its_own_session(store_case: StoreCase) -> None:
    store = store_case.store
    await store.issue_token("alice", "token-1", 60)
    await store.bind_session("alice", "token-1", "server-a", 60)
    assert await store.end_session("alice", "token-1", "server-a") is True
    assert await store.token("alice") is None
    assert await store.route("alice") is None
    assert await store.end_session("alice", "token-1", "server-a") is False


@pytest_twisted.ensureDeferred
async def test_end_session_before_bind_deletes_the_token(store_case: StoreCase) -> None:
    store = store_case.store
    await store.issue_token("alice", "token-1", 60)
    assert await store.end_session("alice", "token-1", "server-a") is True
    assert await store.token("alice") is None


@pytest_twisted.ensureDeferred
async def test_stale_cleanup_after_a_newer_login_leaves_the_newer_session(
    store_case: StoreCase,
) -> None:
    """The race: session 1 closes late, after the client logged in again."""
    store = store_case.store
    await store.issue_token("alice", "token-1", 60)
    assert await store.bind_session("alice", "token-1", "server-a", 60)
    # The client went back to reglog and connected to another server.
    await store.issue_token("alice", "token-2", 60)
    assert await store.bind_session("alice", "token-2", "server-b", 60)
    # Server A only now notices that session 1 is gone.
    assert await store.end_session("alice", "token-1", "server-a") is False
    assert await store.token("alice") == "token-2"
    assert await store.route("alice") == "server-b"
    assert await store.end_session("alice", "token-2", "server-b") is True
    assert await store.route("alice") is None


@pytest_twisted.ensureDeferred
async def test_a_used_token_binds_no_second_session(store_case: StoreCase) -> None:
    """Tokens are single-use: a replay of a live session's token, on this
    server or another, binds nothing, and the session keeps its cleanup and
    its refreshes."""
    store = store_case.store
    ttl = store_case.ttl
    await store.issue_token("alice", "token-1", 60)
    assert await store.bind_session("alice", "token-1", "server-a", ttl)
    assert await store.bind_session("alice", "token-1", "server-b", 60) is False
    assert await store.bind_session("alice", "token-1", "server-a", 60) is False
    # Nor does the used token's stored spelling bind.
    assert await store.bind_session("alice", keys.BOUND + "token-1", "server-b", 60) is False
    assert await store.route("alice") == "server-a"
    assert await store.token("alice") == "token-1"
    # A stale cleanup from elsewhere leaves the session alone.
    assert await store.end_session("alice", "token-1", "server-b") is False
    await store.refresh_sessions(["alice"], 10 * ttl)
    await store_case.advance(1.5 * ttl)
    assert await store.route("alice") == "server-a"
    assert await store.bind_session("alice", "token-1", "server-b", 60) is False
    assert await store.end_session("alice", "token-1", "server-a") is True
    assert await store.token("alice") is None
    assert await store.route("alice") is None
    # Gone: the token does not come back to life either.
    assert await store.bind_session("alice", "token-1", "server-a", 60) is False
    # A new token from reglog binds a new session.
    await store.issue_token("alice", "token-2", 60)
    assert await store.bind_session("alice", "token-2", "server-b", 60)
    assert await store.route("alice") == "server-b"


@pytest.mark.parametrize("token", ["", keys.BOUND, keys.BOUND + "token-1"])
@pytest_twisted.ensureDeferred
async def test_issue_token_refuses_a_token_spelled_as_used(
    store_case: StoreCase, token: str
) -> None:
    store = store_case.store
    with pytest.raises(ValueError, match="a token must not be empty nor start with"):
        await store.issue_token("alice", token, 60)
    assert await store.token("alice") is None


@pytest_twisted.ensureDeferred
async def test_issue_tokens_writes_a_batch_like_issue_token_each(store_case: StoreCase) -> None:
    store = store_case.store
    await store.issue_token("alice", "old", 60)
    clients = [f"client-{i}" for i in range(500)]  # many slots on a cluster
    await store.issue_tokens(
        [(client, f"{client}-token") for client in clients] + [("alice", "new")],
        store_case.ttl,
    )
    assert [await store.token(client) for client in clients] == [f"{c}-token" for c in clients]
    assert await store.token("alice") == "new"
    # A token of the batch binds a session once, like one from issue_token.
    assert await store.bind_session("client-7", "client-7-token", "server-a", 60)
    assert not await store.bind_session("client-7", "client-7-token", "server-b", 60)
    await store.issue_tokens([("bob", "first"), ("bob", "last")], 60)
    assert await store.token("bob") == "last"
    await store.issue_tokens([], 60)

    async def expired() -> bool:
        return await store.token("client-0") is None and await store.token("alice") is None

    await store_case.eventually(expired, within=store_case.ttl, what="the batch's tokens expire")


@pytest.mark.parametrize("token", ["", keys.BOUND + "token-1"])
@pytest_twisted.ensureDeferred
async def test_issue_tokens_refuses_a_bad_token_and_writes_nothing(
    store_case: StoreCase, token: str
) -> None:
    store = store_case.store
    with pytest.raises(ValueError, match="a token must not be empty nor start with"):
        await store.issue_tokens([("alice", "token-1"), ("bob", token)], 60)
    with pytest.raises(ValueError, match="ttl must be a positive number of seconds"):
        await store.issue_tokens([("alice", "token-1")], 0)
    assert await store.token("alice") is None
    assert await store.token("bob") is None


@pytest_twisted.ensureDeferred
async def test_revoke_session_deletes_the_token_and_answers_the_route(
    store_case: StoreCase,
) -> None:
    store = store_case.store
    await store.issue_token("alice", "token-1", 60)
    assert await store.bind_session("alice", "token-1", "server-a", 60)
    assert await store.revoke_session("alice") == "server-a"
    assert await store.token("alice") is None
    # The token no longer binds a session, anywhere.
    assert not await store.bind_session("alice", "token-1", "server-b", 60)
    # ROUTE stays for the server's stale-route cleanup; revoking again is harmless.
    assert await store.route("alice") == "server-a"
    assert await store.revoke_session("alice") == "server-a"
    # A token that was never bound: revoked, no route to answer.
    await store.issue_token("bob", "token-2", 60)
    assert await store.revoke_session("bob") is None
    assert await store.token("bob") is None
    assert await store.revoke_session("nobody") is None


@pytest_twisted.ensureDeferred
async def test_drop_route_only_while_it_points_to_the_server(store_case: StoreCase) -> None:
    store = store_case.store
    await store.issue_token("alice", "token-1", 60)
    await store.bind_session("alice", "token-1", "server-b", 60)
    assert await store.drop_route("alice", "server-a") is False
    assert await store.route("alice") == "server-b"
    assert await store.drop_route("alice", "server-b") is True
    assert await store.route("alice") is None
    assert await store.token("alice") == "token-1"
    assert await store.drop_route("alice", "server-b") is False


@pytest_twisted.ensureDeferred
async def test_routes_of_thousands_of_clients_in_order(store_case: StoreCase) -> None:
    store = store_case.store
    clients = [f"client-{i}" for i in range(3000)]
    bound = clients[::3]
    for client in bound:
        await store.issue_token(client, "t", 60)
    assert all(
        [await store.bind_session(client, "t", f"server-{client[-1]}", 60) for client in bound]
    )
    found = await store.routes(clients)
    assert found == [f"server-{c[-1]}" if i % 3 == 0 else None for i, c in enumerate(clients)]
    assert await store.routes([]) == []
    await store.refresh_sessions(clients, 60)
    assert await store.routes(clients) == found


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf")])
@pytest_twisted.ensureDeferred
async def test_session_ttls_must_be_positive(store_case: StoreCase, ttl: float) -> None:
    store = store_case.store
    with pytest.raises(ValueError, match="ttl must be a positive number of seconds"):
        await store.issue_token("alice", "token-1", ttl)
    assert await store.token("alice") is None
    await store.issue_token("alice", "token-1", 60)
    with pytest.raises(ValueError, match="ttl must be a positive"):
        await store.bind_session("alice", "token-1", "server-a", ttl)
    with pytest.raises(ValueError, match="ttl must be a positive"):
        await store.refresh_sessions(["alice"], ttl)
    assert await store.route("alice") is None


# -- messages ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_accept_stores_body_pending_ids_and_queue_entry(store_case: StoreCase) -> None:
    store = store_case.store
    note = store_case.notification(
        ["alice", "bob", "alice"], title="Hi ☃", text="two\nlines", extras={"k": "v", "é": "ü"}
    )
    message_id = note.message.message_id
    assert await store.accept([note]) == [Accepted(message_id, 2)]
    assert await store.bodies([message_id]) == [note.message]
    assert await store.pending_ids("alice") == [message_id]
    assert await store.pending_ids("bob") == [message_id]
    assert await store.pending_ids("carol") == []
    assert await store.queue_lag() == 1
    (entry,) = await store.consume("worker-1", 10, 0)
    assert entry.deliveries == 1
    # The queue carries the whole message: delivery needs no MSG_BODY read.
    assert entry.notification == Notification(note.message, ("alice", "bob"))


@pytest_twisted.ensureDeferred
async def test_accept_a_batch_answers_in_order(store_case: StoreCase) -> None:
    store = store_case.store
    notes = [store_case.notification([f"client-{i % 7}"]) for i in range(500)]
    answers = await store.accept(notes)
    assert [a.message_id for a in answers] == [n.message.message_id for n in notes]
    assert all(a.recipients == 1 and not a.duplicate for a in answers)
    assert await store.queue_lag() == 500
    entries = await store.consume("worker-1", 1000, 0)
    assert [e.notification.message.message_id for e in entries] == [
        n.message.message_id for n in notes
    ]
    assert len(await store.pending_ids("client-3")) == len(notes[3::7])


@pytest_twisted.ensureDeferred
async def test_accept_with_thousands_of_recipients(store_case: StoreCase) -> None:
    store = store_case.store
    recipients = [f"device-{i:05d}" for i in range(5000)]
    note = store_case.notification(recipients)
    message_id = note.message.message_id
    assert await store.accept([note]) == [Accepted(message_id, 5000)]
    for client in (recipients[0], recipients[2500], recipients[-1]):
        assert await store.pending_ids(client) == [message_id]
    receipt = await store.receipt(message_id)
    assert receipt is not None
    assert receipt.recipients == tuple(recipients)
    assert receipt.pending == tuple(recipients)
    await store.ack([(client, message_id) for client in recipients[:4000]])
    receipt = await store.receipt(message_id)
    assert receipt is not None
    assert receipt.acked == 4000
    assert receipt.pending == tuple(recipients[4000:])
    (entry,) = await store.consume("worker-1", 10, 0)
    assert entry.notification.recipients == tuple(recipients)


@pytest_twisted.ensureDeferred
async def test_accept_a_batch_of_small_and_huge_notifications(store_case: StoreCase) -> None:
    """A batch that Redis takes in several script calls still answers in order,
    keeps queue order, and sees an idempotency key used earlier in the batch."""
    store = store_case.store
    crowd = [f"device-{i:04d}" for i in range(1500)]
    notes = [
        store_case.notification(["alice"]),
        store_case.notification(crowd),
        store_case.notification(["bob"], key="app:1"),
        store_case.notification(crowd[:900]),
        store_case.notification(["carol"], key="app:1"),
        store_case.notification(["dave"]),
    ]
    answers = await store.accept(notes)
    first = notes[2].message.message_id
    assert answers == [
        Accepted(notes[0].message.message_id, 1),
        Accepted(notes[1].message.message_id, 1500),
        Accepted(first, 1),
        Accepted(notes[3].message.message_id, 900),
        Accepted(first, 1, duplicate=True),
        Accepted(notes[5].message.message_id, 1),
    ]
    written = [notes[i].message.message_id for i in (0, 1, 2, 3, 5)]
    entries = await store.consume("worker-1", 10, 0)
    assert [e.notification.message.message_id for e in entries] == written
    assert await store.pending_ids(crowd[0]) == sorted(written[1:4:2])
    assert await store.pending_ids(crowd[-1]) == [written[1]]
    assert await store.pending_ids("carol") == []


@pytest_twisted.ensureDeferred
async def test_accept_refuses_a_bad_batch_and_writes_nothing(store_case: StoreCase) -> None:
    store = store_case.store
    good = store_case.notification(["alice"])
    expired = store_case.notification(["alice"], ttl=-1)
    nobody = store_case.notification([])
    with pytest.raises(ValueError, match=f"message {expired.message.message_id} expired"):
        await store.accept([good, expired])
    with pytest.raises(ValueError, match="has no recipients"):
        await store.accept([good, nobody])
    with pytest.raises(ValueError, match="recipients must be non-empty strings"):
        await store.accept([store_case.notification(["alice", ""])])
    assert await store.queue_lag() == 0
    assert await store.pending_ids("alice") == []
    assert await store.bodies([good.message.message_id]) == [None]
    assert await store.accept([]) == []


@pytest_twisted.ensureDeferred
async def test_message_body_expires_with_its_ttl_and_its_receipt_later(
    store_case: StoreCase,
) -> None:
    store = store_case.store
    note = store_case.notification(["alice"], ttl=store_case.ttl)
    message_id = note.message.message_id
    await store.accept([note])
    assert await store.bodies([message_id]) == [note.message]
    assert await store.receipt(message_id) is not None

    async def body_gone() -> bool:
        return await store.bodies([message_id]) == [None]

    await store_case.eventually(body_gone, within=store_case.ttl, what="MSG_BODY expired")

    async def not_pending() -> bool:
        return await store.pending_ids("alice") == []

    # On a cluster the WAIT_ACK set is in alice's slot, written by another
    # script than the body: its expiry can trail the body's by milliseconds.
    await store_case.eventually(not_pending, within=0, what="WAIT_ACK expired with the body")
    receipt = await store.receipt(message_id)
    assert receipt is not None, "the receipt outlives the body"
    assert receipt.states == (RecipientState.EXPIRED,)

    async def receipt_gone() -> bool:
        return await store.receipt(message_id) is None

    await store_case.eventually(
        receipt_gone, within=store_case.retention, what="RECEIPT gone after the retention"
    )


@pytest_twisted.ensureDeferred
async def test_wait_ack_lives_as_long_as_its_longest_message(store_case: StoreCase) -> None:
    store = store_case.store
    ttl = store_case.ttl
    long = store_case.notification(["alice"], ttl=2 * ttl)
    short = store_case.notification(["alice"], ttl=ttl)
    # The longer message first: the shorter one must not cut the set's expiry.
    await store.accept([long])
    await store.accept([short])
    long_id, short_id = long.message.message_id, short.message.message_id

    async def short_gone() -> bool:
        return await store.bodies([short_id, long_id]) == [None, long.message]

    await store_case.eventually(short_gone, within=ttl, what="the short message expired")
    # Ids of expired messages stay in the set until read and cleaned.
    assert await store.pending_ids("alice") == [long_id, short_id]

    async def all_gone() -> bool:
        return await store.pending_ids("alice") == []

    await store_case.eventually(all_gone, within=ttl, what="WAIT_ACK expired")


@pytest_twisted.ensureDeferred
async def test_pending_ids_are_oldest_first(store_case: StoreCase) -> None:
    store = store_case.store
    notes = []
    for _ in range(60):
        notes.append(store_case.notification(["alice"]))
        if store_case.clock is not None:
            store_case.clock.advance(0.001)
    shuffled = notes[:]
    random.Random(4).shuffle(shuffled)
    for note in shuffled:
        await store.accept([note])
    in_order = [n.message.message_id for n in notes]
    assert await store.pending_ids("alice") == in_order
    assert await store.pending_ids("alice", limit=5) == in_order[:5]
    assert await store.pending_ids("alice", limit=0) == []
    await store.ack([("alice", in_order[0]), ("alice", in_order[3])])
    assert await store.pending_ids("alice", limit=3) == [in_order[1], in_order[2], in_order[4]]
    with pytest.raises(ValueError, match="limit"):
        await store.pending_ids("alice", limit=-1)


@pytest_twisted.ensureDeferred
async def test_pending_ids_many_reads_every_client_in_order(store_case: StoreCase) -> None:
    store = store_case.store
    notes = []
    for recipients in (["alice", "bob"], ["bob"], ["alice", "carol"], ["bob"]):
        notes.append(store_case.notification(recipients))
        if store_case.clock is not None:
            store_case.clock.advance(0.001)
    for note in reversed(notes):
        await store.accept([note])
    first, second, third, fourth = (n.message.message_id for n in notes)
    await store.ack([("bob", second)])

    assert await store.pending_ids_many(["bob", "nobody", "alice", "carol"]) == [
        [first, fourth],
        [],
        [first, third],
        [third],
    ]
    assert await store.pending_ids_many(["alice", "bob"], limit=1) == [[first], [first]]
    assert await store.pending_ids_many([]) == []
    with pytest.raises(ValueError, match="limit"):
        await store.pending_ids_many(["alice"], limit=-1)


@pytest_twisted.ensureDeferred
async def test_pending_ids_order_with_thousands_of_ids(store_case: StoreCase) -> None:
    store = store_case.store
    notes = [store_case.notification(["alice"]) for _ in range(3000)]
    reordered = notes[:]
    random.Random(7).shuffle(reordered)
    await store.accept(reordered)
    ids = await store.pending_ids("alice")
    assert ids == [n.message.message_id for n in notes]


@pytest_twisted.ensureDeferred
async def test_bodies_of_thousands_in_order(store_case: StoreCase) -> None:
    store = store_case.store
    notes = [store_case.notification(["alice"], extras={"n": str(i)}) for i in range(2000)]
    await store.accept(notes)
    ids: list[str] = []
    expected: list[Message | None] = []
    for note in notes:
        ids += [note.message.message_id, "01ZZZZZZZZZZZZZZZZZZZZZZZZ"]
        expected += [note.message, None]
    assert await store.bodies(ids) == expected
    assert await store.bodies([]) == []


@pytest_twisted.ensureDeferred
async def test_ack_removes_pending_ids_and_ignores_unknown_ones(store_case: StoreCase) -> None:
    store = store_case.store
    first = store_case.notification(["alice", "bob"])
    second = store_case.notification(["alice"])
    await store.accept([first, second])
    await store.ack(
        [
            ("alice", first.message.message_id),
            ("bob", first.message.message_id),
            ("bob", "01ZZZZZZZZZZZZZZZZZZZZZZZZ"),
            ("nobody", first.message.message_id),
        ]
    )
    assert await store.pending_ids("alice") == [second.message.message_id]
    assert await store.pending_ids("bob") == []
    await store.ack([])
    # Acking the last id leaves the client with nothing pending.
    await store.ack([("alice", second.message.message_id)])
    assert await store.pending_ids("alice") == []
    # Acking does not delete the message: the receipt still reports it.
    receipt = await store.receipt(first.message.message_id)
    assert receipt is not None and receipt.pending == () and receipt.acked == 2


@pytest_twisted.ensureDeferred
async def test_acks_in_bursts_of_interleaved_clients_settle_each_pair(
    store_case: StoreCase,
) -> None:
    """Runs of one client's ACKs (the Redis store sends its WAIT_ACK key once
    per run), interleaved with others', and runs cut by the script's batch
    size, remove exactly the ACKed ids and count each receipt."""
    store = store_case.store
    many = [store_case.notification(["alice"]) for _ in range(600)]
    shared = store_case.notification(["alice", "bob", "carol"])
    kept = store_case.notification(["alice", "bob"])
    await store.accept([*many, shared, kept])
    alice_ids = [note.message.message_id for note in many]
    shared_id, kept_id = shared.message.message_id, kept.message.message_id
    await store.ack(
        [
            ("alice", alice_ids[0]),
            ("alice", alice_ids[1]),
            ("bob", shared_id),
            ("alice", shared_id),
            ("bob", "01ZZZZZZZZZZZZZZZZZZZZZZZZ"),
            *(("alice", message_id) for message_id in alice_ids[2:]),
            ("carol", shared_id),
            ("alice", shared_id),  # again: no second count
        ]
    )
    assert await store.pending_ids("alice") == [kept_id]
    assert await store.pending_ids("bob") == [kept_id]
    assert await store.pending_ids("carol") == []
    receipt = await store.receipt(shared_id)
    assert receipt is not None and receipt.acked == 3 and receipt.pending == ()
    receipt = await store.receipt(alice_ids[-1])
    assert receipt is not None and receipt.acked == 1


@pytest_twisted.ensureDeferred
async def test_drop_pending_removes_ids_without_an_ack(store_case: StoreCase) -> None:
    store = store_case.store
    first = store_case.notification(["alice", "bob"])
    second = store_case.notification(["alice"])
    await store.accept([first, second])
    await store.drop_pending(
        [
            ("alice", first.message.message_id, DropReason.FAILED.value),
            ("nobody", first.message.message_id, DropReason.TOO_LARGE.value),
        ]
    )
    await store.drop_pending([])
    assert await store.pending_ids("alice") == [second.message.message_id]
    assert await store.pending_ids("bob") == [first.message.message_id]


@pytest_twisted.ensureDeferred
async def test_add_failures_counts_per_client_and_message(store_case: StoreCase) -> None:
    store = store_case.store
    assert await store.add_failures([], 60) == []
    assert await store.add_failures([("alice", "m1"), ("bob", "m1"), ("alice", "m1")], 60) == [
        1,
        1,
        2,
    ]
    assert await store.add_failures([("alice", "m2"), ("alice", "m1")], 60) == [1, 3]
    with pytest.raises(ValueError, match="ttl must be a positive"):
        await store.add_failures([("alice", "m1")], 0)
    assert await store.add_failures([("alice", "m1")], 60) == [4]


@pytest_twisted.ensureDeferred
async def test_failure_counts_expire_after_the_last_failure(store_case: StoreCase) -> None:
    store = store_case.store
    ttl = store_case.ttl
    await store.add_failures([("alice", "m1")], ttl)
    await store_case.advance(ttl / 2)
    assert await store.add_failures([("alice", "m1")], ttl) == [2]  # the expiry moved
    await store_case.advance(ttl / 2 + 0.05)
    assert await store.add_failures([("alice", "m1")], ttl) == [3]
    await store_case.advance(ttl + 0.05)
    assert await store.add_failures([("alice", "m1")], ttl) == [1]


@pytest_twisted.ensureDeferred
async def test_receipt_reports_who_still_waits(store_case: StoreCase) -> None:
    store = store_case.store
    note = store_case.notification(["alice", "bob", "carol"])
    message_id = note.message.message_id
    assert await store.receipt(message_id) is None
    await store.accept([note])
    await store.ack([("bob", message_id)])
    receipt = await store.receipt(message_id)
    assert receipt is not None
    assert receipt.message_id == message_id
    assert (receipt.created_at, receipt.expires_at) == (
        note.message.created_at,
        note.message.expires_at,
    )
    assert receipt.recipients == ("alice", "bob", "carol")
    assert receipt.pending == ("alice", "carol")
    assert receipt.acked == 1


@pytest_twisted.ensureDeferred
async def test_receipt_tells_acked_from_dropped(store_case: StoreCase) -> None:
    store = store_case.store
    note = store_case.notification(["alice", "bob", "carol", "dave", "erin"])
    message_id = note.message.message_id
    await store.accept([note])
    await store.ack([("bob", message_id)])
    await store.drop_pending(
        [
            ("carol", message_id, DropReason.TOO_LARGE.value),
            ("dave", message_id, DropReason.FAILED.value),
            ("erin", message_id, DropReason.EXPIRED.value),
        ]
    )
    receipt = await store.receipt(message_id)
    assert receipt is not None
    assert receipt.states == (
        RecipientState.PENDING,
        RecipientState.ACKED,
        RecipientState.TOO_LARGE,
        RecipientState.FAILED,
        RecipientState.EXPIRED,
    )
    # A dropped message is not counted as ACKed.
    assert (receipt.pending, receipt.acked) == (("alice",), 1)
    assert receipt.with_state(RecipientState.ACKED) == ("bob",)


@pytest_twisted.ensureDeferred
async def test_the_first_outcome_of_a_recipient_stays(store_case: StoreCase) -> None:
    store = store_case.store
    note = store_case.notification(["alice", "bob"])
    message_id = note.message.message_id
    await store.accept([note])
    await store.drop_pending([("alice", message_id, DropReason.FAILED.value)])
    await store.ack([("bob", message_id)])
    # A late ACK of a dropped message, a drop of an ACKed one, and an ACK
    # from a client the message was not for change nothing.
    await store.ack([("alice", message_id), ("mallory", message_id)])
    await store.drop_pending([("bob", message_id, DropReason.TOO_LARGE.value)])
    receipt = await store.receipt(message_id)
    assert receipt is not None
    assert receipt.recipients == ("alice", "bob")
    assert receipt.states == (RecipientState.FAILED, RecipientState.ACKED)


@pytest_twisted.ensureDeferred
async def test_drop_pending_refuses_an_unknown_reason_and_writes_nothing(
    store_case: StoreCase,
) -> None:
    store = store_case.store
    note = store_case.notification(["alice", "bob"])
    message_id = note.message.message_id
    await store.accept([note])
    with pytest.raises(ValueError, match="drop reason must be one of"):
        await store.drop_pending(
            [("alice", message_id, DropReason.FAILED.value), ("bob", message_id, "bored")]
        )
    assert await store.pending_ids("alice") == [message_id]
    receipt = await store.receipt(message_id)
    assert receipt is not None and receipt.pending == ("alice", "bob")


@pytest_twisted.ensureDeferred
async def test_recipients_still_pending_at_the_ttl_read_as_expired(
    store_case: StoreCase,
) -> None:
    store = store_case.store
    note = store_case.notification(["alice", "bob", "carol"], ttl=store_case.ttl)
    message_id = note.message.message_id
    await store.accept([note])
    await store.ack([("alice", message_id)])
    await store.drop_pending([("bob", message_id, DropReason.TOO_LARGE.value)])

    async def expired() -> bool:
        receipt = await store.receipt(message_id)
        return receipt is not None and receipt.states[2] is RecipientState.EXPIRED

    await store_case.eventually(expired, within=store_case.ttl, what="carol's state expired")
    receipt = await store.receipt(message_id)
    assert receipt is not None
    assert receipt.states == (
        RecipientState.ACKED,
        RecipientState.TOO_LARGE,
        RecipientState.EXPIRED,
    )
    assert (receipt.pending, receipt.acked) == ((), 1)


@pytest_twisted.ensureDeferred
async def test_a_late_ack_still_counts_while_the_id_is_pending(store_case: StoreCase) -> None:
    store = store_case.store
    short = store_case.notification(["alice", "bob"], ttl=store_case.ttl)
    # A longer message keeps alice's WAIT_ACK (and the short id in it) alive;
    # bob's goes at the short TTL, with the id.
    long = store_case.notification(["alice"], ttl=60 * store_case.retention)
    await store.accept([short, long])
    short_id = short.message.message_id

    async def expired() -> bool:
        receipt = await store.receipt(short_id)
        # (Redis drops bob's set a moment after expiresAt: wait for both.)
        gone = await store.pending_ids("bob") == []
        return gone and receipt is not None and receipt.pending == ()

    await store_case.eventually(expired, within=store_case.ttl, what="the TTL to run out")
    await store.ack([("alice", short_id), ("bob", short_id)])
    receipt = await store.receipt(short_id)
    assert receipt is not None
    assert receipt.states == (RecipientState.ACKED, RecipientState.EXPIRED)


@pytest_twisted.ensureDeferred
async def test_an_ack_after_the_receipt_retention_recreates_nothing(
    store_case: StoreCase,
) -> None:
    store = store_case.store
    short = store_case.notification(["alice"], ttl=store_case.ttl)
    # A longer message keeps alice's WAIT_ACK (and the short id in it) alive.
    long = store_case.notification(["alice"], ttl=60 * store_case.retention)
    await store.accept([short, long])
    short_id = short.message.message_id

    async def receipt_gone() -> bool:
        return await store.receipt(short_id) is None

    await store_case.eventually(
        receipt_gone,
        within=store_case.ttl + store_case.retention,
        what="the short message's receipt gone",
    )
    assert short_id in await store.pending_ids("alice")
    await store.ack([("alice", short_id)])
    await store.drop_pending([("alice", long.message.message_id, DropReason.FAILED.value)])
    assert await store.pending_ids("alice") == []
    assert await store.receipt(short_id) is None
    receipt = await store.receipt(long.message.message_id)
    assert receipt is not None and receipt.states == (RecipientState.FAILED,)


@pytest_twisted.ensureDeferred
async def test_idempotency_key_makes_a_retry_a_no_op(store_case: StoreCase) -> None:
    store = store_case.store
    first = store_case.notification(["alice", "bob"], key="app-1:request-9")
    retry = store_case.notification(["carol"], key="app-1:request-9")
    (accepted,) = await store.accept([first])
    assert accepted == Accepted(first.message.message_id, 2, duplicate=False)
    assert await store.accept([retry]) == [Accepted(first.message.message_id, 2, duplicate=True)]
    assert await store.bodies([retry.message.message_id]) == [None]
    assert await store.pending_ids("carol") == []
    assert await store.queue_lag() == 1
    (entry,) = await store.consume("worker-1", 10, 0)
    assert entry.notification.idempotency_key == "app-1:request-9"
    # Within one batch too, and other keys are independent.
    other = store_case.notification(["dave"], key="app-1:request-10")
    again = store_case.notification(["erin"], key="app-1:request-10")
    answers = await store.accept([other, again])
    assert answers == [
        Accepted(other.message.message_id, 1),
        Accepted(other.message.message_id, 1, duplicate=True),
    ]
    assert await store.queue_lag() == 2


@pytest_twisted.ensureDeferred
async def test_idempotency_key_is_forgotten_after_its_ttl(store_case: StoreCase) -> None:
    store = store_case.store
    first = store_case.notification(["alice"], key="k")
    await store.accept([first])
    later = store_case.notification(["alice"], key="k")

    async def accepted_again() -> bool:
        (answer,) = await store.accept([later])
        return not answer.duplicate

    await store_case.eventually(accepted_again, within=store_case.ttl, what="idempotency expired")
    assert await store.pending_ids("alice") == sorted(
        [first.message.message_id, later.message.message_id]
    )


# -- devices ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_device_registration_is_create_only(store_case: StoreCase) -> None:
    store = store_case.store
    record = DeviceRecord("alice", "scrypt$salt$hash", store_case.now())
    assert await store.device("alice") is None
    assert await store.register_device(record) is True
    assert await store.device("alice") == record
    assert await store.register_device(DeviceRecord("alice", "other", 1.0)) is False
    assert await store.device("alice") == record


# -- the queue -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_consume_hands_each_entry_to_one_consumer(store_case: StoreCase) -> None:
    store = store_case.store
    notes = [store_case.notification(["alice"]) for _ in range(5)]
    await store.accept(notes)
    first = await store.consume("worker-1", 3, 0)
    second = await store.consume("worker-2", 10, 0)
    assert [e.notification.message for e in first + second] == [n.message for n in notes]
    assert len(first) == 3 and len(second) == 2
    assert all(e.deliveries == 1 for e in first + second)
    assert await store.consume("worker-1", 10, 0) == []
    assert await store.queue_lag() == 5
    await store.acknowledge([e.entry_id for e in first])
    assert await store.queue_lag() == 2
    await store.acknowledge([e.entry_id for e in second] + ["1-1"])
    assert await store.queue_lag() == 0
    await store.acknowledge([])


@pytest_twisted.ensureDeferred
async def test_consume_waits_for_an_entry(store_case: StoreCase) -> None:
    store = store_case.store
    waiting = store.consume("worker-1", 10, 30)
    assert not waiting.called
    note = store_case.notification(["alice"])
    await store.accept([note])
    (entry,) = await store_case.settle(waiting)
    assert entry.notification.message == note.message


@pytest_twisted.ensureDeferred
async def test_consume_does_not_hold_up_other_calls(store_case: StoreCase) -> None:
    store = store_case.store
    waiting = store.consume("worker-1", 10, 30)
    await store.issue_token("alice", "token-1", 60)
    assert await store.token("alice") == "token-1"
    assert not waiting.called
    await store.accept([store_case.notification(["alice"])])
    assert len(await store_case.settle(waiting)) == 1


@pytest_twisted.ensureDeferred
async def test_consume_gives_up_after_block_seconds(store_case: StoreCase) -> None:
    store = store_case.store
    block = 0.3
    waiting = store.consume("worker-1", 10, block)
    assert not waiting.called
    await store_case.advance(block)
    assert await store_case.settle(waiting) == []


@pytest_twisted.ensureDeferred
async def test_two_waiting_consumers_share_new_entries(store_case: StoreCase) -> None:
    store = store_case.store
    one = store.consume("worker-1", 1, 30)
    two = store.consume("worker-2", 1, 30)
    notes = [store_case.notification(["alice"]) for _ in range(2)]
    await store.accept(notes)
    got = (await store_case.settle(one)) + (await store_case.settle(two))
    assert sorted(e.notification.message.message_id for e in got) == sorted(
        n.message.message_id for n in notes
    )


@pytest_twisted.ensureDeferred
async def test_cancelled_consume_stops_waiting(store_case: StoreCase) -> None:
    store = store_case.store
    waiting = store.consume("worker-1", 10, 30)
    waiting.cancel()
    with pytest.raises(CancelledError):
        await waiting
    await store.accept([store_case.notification(["alice"])])
    # The entry was not swallowed by the cancelled read.
    if store_case.backend == "memory":
        assert len(await store.consume("worker-2", 10, 0)) == 1
    else:
        # Redis may have handed it to the cancelled read before it closed:
        # then it is pending and comes back through reclaim.
        entries = await store.consume("worker-2", 10, 0) or await store.reclaim("worker-2", 0, 10)
        assert len(entries) == 1


@pytest_twisted.ensureDeferred
async def test_reclaim_takes_over_entries_left_idle(store_case: StoreCase) -> None:
    store = store_case.store
    notes = [store_case.notification(["alice"]) for _ in range(4)]
    await store.accept(notes)
    crashed = await store.consume("worker-1", 3, 0)
    idle = 0.5
    assert await store.reclaim("worker-2", 60 * idle, 10) == []
    await store_case.advance(idle)
    later = await store.consume("worker-1", 10, 0)  # handed out just now: not idle
    assert len(later) == 1
    await store.acknowledge([crashed[0].entry_id])
    claimed = await store.reclaim("worker-2", idle, 10)
    assert [e.entry_id for e in claimed] == [e.entry_id for e in crashed[1:]]
    assert [e.notification for e in claimed] == [e.notification for e in crashed[1:]]
    assert all(e.deliveries == 2 for e in claimed)
    # Now worker-2's, and just handed out: not idle any more.
    assert await store.reclaim("worker-3", idle, 10) == []
    await store_case.advance(idle)
    again = await store.reclaim("worker-3", idle, 1)
    assert [(e.entry_id, e.deliveries) for e in again] == [(crashed[1].entry_id, 3)]
    await store.acknowledge([e.entry_id for e in claimed + later])
    await store_case.advance(idle)
    assert await store.reclaim("worker-3", idle, 10) == []
    assert await store.queue_lag() == 0


@pytest_twisted.ensureDeferred
async def test_queue_of_thousands(store_case: StoreCase) -> None:
    store = store_case.store
    notes = [store_case.notification([f"client-{i}"]) for i in range(2000)]
    await store.accept(notes)
    entries = await store.consume("worker-1", 5000, 0)
    assert len(entries) == 2000
    await store.acknowledge([e.entry_id for e in entries])
    assert await store.queue_lag() == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.consume("w", 0, 0), "count must be a positive integer"),
        (lambda s: s.consume("w", 1, -1), "block must be zero or a positive number"),
        (lambda s: s.reclaim("w", -1, 1), "min_idle must be zero or a positive number"),
        (lambda s: s.reclaim("w", 0, 0), "count must be a positive integer"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_queue_arguments_are_checked(store_case: StoreCase, call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        await call(store_case.store)


# -- lifetime --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_close_fails_waiting_and_later_calls(store_case: StoreCase) -> None:
    store = store_case.store
    await store.ping()
    waiting = store.consume("worker-1", 10, 30)
    if store_case.backend != "memory":
        # Let the blocking read reach Redis.
        await store_case.advance(0.1)
    await store.close()
    with pytest.raises(StoreError, match="the store was closed"):
        await store_case.settle(waiting)
    with pytest.raises(StoreError, match="closed"):
        await store.token("alice")
    with pytest.raises(StoreError, match="closed"):
        await store.accept([store_case.notification(["alice"])])
    with pytest.raises(StoreError, match="closed"):
        await store.ping()
    await store.close()


# -- collapse keys (PIGEON:COLLAPSE) -------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_collapse_key_replaces_the_pending_older_message(store_case: StoreCase) -> None:
    store = store_case.store
    older = store_case.notification(["alice", "bob"], collapse_key="score")
    await store.accept([older])
    await store.ack([("bob", older.message.message_id)])
    other = store_case.notification(["alice"], collapse_key="weather")
    plain = store_case.notification(["alice"])
    newer = store_case.notification(["alice", "bob"], collapse_key="score")
    await store.accept([other, plain, newer])
    ids = (other.message.message_id, plain.message.message_id, newer.message.message_id)
    # alice (offline) gets only the newest of "score"; other keys and
    # messages without one stay.
    assert await store.pending_ids("alice") == sorted(ids)
    assert await store.pending_ids("bob") == [newer.message.message_id]
    receipt = await store.receipt(older.message.message_id)
    assert receipt is not None
    # bob ACKed it before: nothing to replace for him.
    assert receipt.states == (RecipientState.REPLACED, RecipientState.ACKED)
    assert receipt.pending == ()
    # The queue entries carry the key (delivery skips replaced recipients).
    entries = await store.consume("worker-1", 10, 0)
    assert [e.notification.collapse_key for e in entries] == ["score", "weather", None, "score"]
    # A late ACK of the replaced message changes nothing.
    await store.ack([("alice", older.message.message_id)])
    receipt = await store.receipt(older.message.message_id)
    assert receipt is not None and receipt.states[0] is RecipientState.REPLACED


@pytest_twisted.ensureDeferred
async def test_collapse_keys_are_per_recipient_and_chain(store_case: StoreCase) -> None:
    store = store_case.store
    notes = [store_case.notification(["alice"], collapse_key="k") for _ in range(3)]
    for note in notes:
        await store.accept([note])
    carol = store_case.notification(["carol"], collapse_key="k")
    await store.accept([carol])
    assert await store.pending_ids("alice") == [notes[2].message.message_id]
    assert await store.pending_ids("carol") == [carol.message.message_id]
    for note in notes[:2]:
        receipt = await store.receipt(note.message.message_id)
        assert receipt is not None and receipt.states == (RecipientState.REPLACED,)


# -- scheduled sends (PIGEON:SCHEDULE) -----------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_scheduled_message_waits_for_its_time(store_case: StoreCase) -> None:
    store = store_case.store
    delay = 1.0
    note = store_case.notification(["alice", "bob"], send_at=store_case.now() + delay)
    message_id = note.message.message_id
    assert await store.accept([note]) == [Accepted(message_id, 2)]
    assert await store.pending_ids("alice") == []
    assert await store.queue_lag() == 0
    receipt = await store.receipt(message_id)
    assert receipt is not None
    assert receipt.states == (RecipientState.SCHEDULED,) * 2
    assert receipt.send_at == note.send_at
    assert await store.release_due(10, 30.0) == 0

    async def released() -> bool:
        return await store.release_due(10, 30.0) == 1

    await store_case.eventually(released, within=delay, what="the message was released")
    assert await store.pending_ids("alice") == [message_id]
    assert await store.pending_ids("bob") == [message_id]
    (entry,) = await store.consume("worker-1", 10, 0)
    assert entry.notification.message == note.message
    receipt = await store.receipt(message_id)
    assert receipt is not None and receipt.states == (RecipientState.PENDING,) * 2
    # Released once: another call (another worker) finds nothing.
    assert await store.release_due(10, 30.0) == 0
    assert await store.queue_lag() == 1
    assert await store.cancel(message_id) is CancelResult.SENT


@pytest_twisted.ensureDeferred
async def test_due_entries_are_moved_once_by_concurrent_workers(store_case: StoreCase) -> None:
    store = store_case.store
    send_at = store_case.now() + 0.5
    notes = [store_case.notification([f"client-{i}"], send_at=send_at) for i in range(30)]
    await store.accept(notes)
    await store_case.advance(0.6)
    counts = await gatherResults([store.release_due(7, 30.0) for _ in range(6)])
    assert sum(counts) == 30
    assert await store.queue_lag() == 30
    assert await store.release_due(100, 30.0) == 0


@pytest_twisted.ensureDeferred
async def test_a_cancelled_message_is_never_sent(store_case: StoreCase) -> None:
    store = store_case.store
    note = store_case.notification(["alice"], send_at=store_case.now() + 0.5)
    message_id = note.message.message_id
    await store.accept([note])
    assert await store.cancel(message_id) is CancelResult.CANCELLED
    assert await store.cancel(message_id) is CancelResult.CANCELLED
    await store_case.advance(0.6)
    assert await store.release_due(10, 30.0) == 0
    assert await store.pending_ids("alice") == []
    assert await store.queue_lag() == 0
    assert await store.bodies([message_id]) == [None]
    receipt = await store.receipt(message_id)
    assert receipt is not None and receipt.states == (RecipientState.CANCELLED,)
    assert await store.cancel(store_case.new_id()) is CancelResult.UNKNOWN
    plain = store_case.notification(["alice"])
    past = store_case.notification(["alice"], send_at=store_case.now() - 1)
    await store.accept([plain, past])
    assert await store.cancel(plain.message.message_id) is CancelResult.SENT
    # A send time already past is now: an ordinary message.
    assert await store.cancel(past.message.message_id) is CancelResult.SENT
    assert await store.pending_ids("alice") == [plain.message.message_id, past.message.message_id]
    receipt = await store.receipt(past.message.message_id)
    assert receipt is not None
    assert (receipt.states, receipt.send_at) == ((RecipientState.PENDING,), None)


@pytest_twisted.ensureDeferred
async def test_a_scheduled_message_collapses_when_it_is_sent(store_case: StoreCase) -> None:
    store = store_case.store
    now_one = store_case.notification(["alice"], collapse_key="k")
    later = store_case.notification(["alice"], collapse_key="k", send_at=store_case.now() + 0.5)
    await store.accept([now_one, later])
    assert await store.pending_ids("alice") == [now_one.message.message_id]
    await store_case.advance(0.6)
    assert await store.release_due(10, 30.0) == 1
    assert await store.pending_ids("alice") == [later.message.message_id]
    receipt = await store.receipt(now_one.message.message_id)
    assert receipt is not None and receipt.states == (RecipientState.REPLACED,)
    entries = await store.consume("worker-1", 10, 0)
    assert [e.notification.collapse_key for e in entries] == ["k", "k"]


@pytest_twisted.ensureDeferred
async def test_release_due_checks_its_arguments(store_case: StoreCase) -> None:
    with pytest.raises(ValueError, match="limit"):
        await store_case.store.release_due(0, 30.0)
    with pytest.raises(ValueError, match="lease"):
        await store_case.store.release_due(10, 0)


@pytest_twisted.ensureDeferred
async def test_accept_refuses_a_send_time_after_the_expiry(store_case: StoreCase) -> None:
    note = store_case.notification(["alice"], ttl=10.0)
    late = attrs.evolve(note, send_at=note.message.expires_at)
    with pytest.raises(ValueError, match="sendAt"):
        await store_case.store.accept([late])


@pytest_twisted.ensureDeferred
async def test_a_scheduled_message_whose_ttl_ran_out_first_is_never_sent(
    store_case: StoreCase,
) -> None:
    store = store_case.store
    note = store_case.notification(["alice"], ttl=0.5, send_at=store_case.now() + 0.2)
    message_id = note.message.message_id
    await store.accept([note])

    async def body_gone() -> bool:
        return await store.bodies([message_id]) == [None]

    await store_case.eventually(body_gone, within=0.6, what="the body expired")
    assert await store.release_due(10, 30.0) == 0
    assert await store.pending_ids("alice") == []
    assert await store.queue_lag() == 0
    receipt = await store.receipt(message_id)
    assert receipt is not None and receipt.states == (RecipientState.EXPIRED,)
    assert await store.cancel(message_id) is CancelResult.SENT
