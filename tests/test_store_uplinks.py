"""The store contract for uplinks: every test runs against memory and Redis."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError

from pigeonpush.store import DeadUplink, StoreError, Uplink, keys
from support.stores import StoreCase

WINDOW = 3600.0
MAX_LEN = 1000


def uplink(case: StoreCase, uplink_id: str, client: str = "alice", **data: str) -> Uplink:
    return Uplink(client, uplink_id, data, received_at=case.now())


@pytest_twisted.ensureDeferred
async def test_an_uplink_is_stored_and_read_after_a_cursor(store_case: StoreCase) -> None:
    store = store_case.store
    assert await store.uplinks("0", 10) == []
    assert await store.last_uplink_id() == "0"
    first = await store.add_uplink(
        uplink(store_case, "u-1", temp="21.5", note="café"), dedup_window=WINDOW, max_len=MAX_LEN
    )
    second = await store.add_uplink(
        uplink(store_case, "u-2", client="bob"), dedup_window=WINDOW, max_len=MAX_LEN
    )
    assert not first.duplicate and not second.duplicate
    read = await store.uplinks("0", 10)
    assert [(u.client_id, u.uplink_id, u.entry_id) for u in read] == [
        ("alice", "u-1", first.entry_id),
        ("bob", "u-2", second.entry_id),
    ]
    assert read[0].data == {"temp": "21.5", "note": "café"}
    assert read[0].received_at == pytest.approx(store_case.now(), abs=5)
    assert await store.uplinks(first.entry_id, 10) == read[1:]
    assert await store.uplinks(second.entry_id, 10) == []
    assert await store.uplinks("0", 1) == read[:1]
    assert await store.last_uplink_id() == second.entry_id


@pytest_twisted.ensureDeferred
async def test_a_resent_uplink_is_stored_once_within_the_window(store_case: StoreCase) -> None:
    store = store_case.store
    window = store_case.ttl
    first = await store.add_uplink(
        uplink(store_case, "u-1", v="1"), dedup_window=window, max_len=MAX_LEN
    )
    again = await store.add_uplink(
        uplink(store_case, "u-1", v="other"), dedup_window=window, max_len=MAX_LEN
    )
    assert again.duplicate and again.entry_id == first.entry_id
    # The same id from another client, or another id, is another uplink.
    other = await store.add_uplink(
        uplink(store_case, "u-1", client="bob"), dedup_window=window, max_len=MAX_LEN
    )
    assert not other.duplicate
    # The length prefix of the key keeps "a:b" + "c" apart from "a" + "b:c".
    colon_one = await store.add_uplink(
        uplink(store_case, "c", client="a:b"), dedup_window=window, max_len=MAX_LEN
    )
    colon_two = await store.add_uplink(
        uplink(store_case, "b:c", client="a"), dedup_window=window, max_len=MAX_LEN
    )
    assert not colon_one.duplicate and not colon_two.duplicate
    assert (await store.uplinks("0", 10))[0].data == {"v": "1"}

    async def forgotten() -> bool:
        probe = await store.add_uplink(
            uplink(store_case, "u-1", v="later"), dedup_window=window, max_len=MAX_LEN
        )
        return not probe.duplicate

    await store_case.eventually(forgotten, within=window, what="the window ended")


@pytest_twisted.ensureDeferred
async def test_the_stream_keeps_about_max_len_uplinks(store_case: StoreCase) -> None:
    store = store_case.store
    for n in range(300):
        await store.add_uplink(uplink(store_case, f"u-{n}"), dedup_window=WINDOW, max_len=100)
    kept = await store.uplinks("0", 1000)
    # Redis trims by whole nodes (MAXLEN ~): about the bound, never fewer.
    assert 100 <= len(kept) <= 300
    assert kept[-1].uplink_id == "u-299"
    if store_case.backend == "memory":
        assert len(kept) == 100


@pytest_twisted.ensureDeferred
async def test_a_reader_waits_for_the_next_uplink(store_case: StoreCase) -> None:
    store = store_case.store
    cursor = await store.last_uplink_id()
    waiting = store.uplinks(cursor, 10, block=30)
    assert not waiting.called
    await store.add_uplink(uplink(store_case, "u-1"), dedup_window=WINDOW, max_len=MAX_LEN)
    (got,) = await store_case.settle(waiting)
    assert got.uplink_id == "u-1"
    # A wait gives up after ``block`` seconds.
    idle = store.uplinks(got.entry_id, 10, block=0.3)
    await store_case.advance(0.3)
    assert await store_case.settle(idle) == []


@pytest_twisted.ensureDeferred
async def test_a_cancelled_wait_stops_and_does_not_hold_up_others(store_case: StoreCase) -> None:
    store = store_case.store
    waiting = store.uplinks("0", 10, block=30)
    assert await store.token("alice") is None  # other calls go on meanwhile
    waiting.cancel()
    with pytest.raises(CancelledError):
        await waiting
    await store.add_uplink(uplink(store_case, "u-1"), dedup_window=WINDOW, max_len=MAX_LEN)
    assert len(await store.uplinks("0", 10)) == 1


@pytest.mark.parametrize("cursor", ["", "abc", "1-2-3", "-1", "1-", " 1"])
@pytest_twisted.ensureDeferred
async def test_a_bad_cursor_is_a_value_error(store_case: StoreCase, cursor: str) -> None:
    with pytest.raises(ValueError, match="a cursor must be a stream entry id"):
        await store_case.store.uplinks(cursor, 10)


@pytest_twisted.ensureDeferred
async def test_add_uplink_arguments_are_checked(store_case: StoreCase) -> None:
    store = store_case.store
    with pytest.raises(ValueError, match="dedup_window"):
        await store.add_uplink(uplink(store_case, "u"), dedup_window=0, max_len=10)
    with pytest.raises(ValueError, match="max_len"):
        await store.add_uplink(uplink(store_case, "u"), dedup_window=10, max_len=0)
    assert await store.uplinks("0", 10) == []


@pytest_twisted.ensureDeferred
async def test_webhook_senders_share_the_group_and_reclaim_idle_entries(
    store_case: StoreCase,
) -> None:
    store = store_case.store
    for n in range(3):
        await store.add_uplink(uplink(store_case, f"u-{n}"), dedup_window=WINDOW, max_len=MAX_LEN)
    one = await store.claim_uplinks("sender-1", 2, 0)
    two = await store.claim_uplinks("sender-2", 10, 0)
    assert [u.uplink_id for u in one + two] == ["u-0", "u-1", "u-2"]
    assert await store.claim_uplinks("sender-1", 10, 0) == []
    await store.settle_uplinks([u.entry_id for u in two])
    # sender-1 crashed: its entries come back to sender-2 once idle.
    await store_case.advance(0.5)
    taken = await store.reclaim_uplinks("sender-2", 0.2, 10)
    assert [u.uplink_id for u in taken] == ["u-0", "u-1"]
    await store.settle_uplinks([u.entry_id for u in taken])
    assert await store.reclaim_uplinks("sender-2", 0, 10) == []
    # Settled entries stay readable through the pull cursor.
    assert len(await store.uplinks("0", 10)) == 3
    # A waiting sender gets the next one.
    waiting = store.claim_uplinks("sender-1", 10, 30)
    await store.add_uplink(uplink(store_case, "u-3"), dedup_window=WINDOW, max_len=MAX_LEN)
    assert [u.uplink_id for u in await store_case.settle(waiting)] == ["u-3"]


@pytest_twisted.ensureDeferred
async def test_dead_uplinks_are_kept_newest_first_and_bounded(store_case: StoreCase) -> None:
    store = store_case.store
    stored = await store.add_uplink(
        uplink(store_case, "u-1", k="v"), dedup_window=WINDOW, max_len=MAX_LEN
    )
    (first,) = await store.uplinks("0", 1)
    assert first.entry_id == stored.entry_id
    for n in range(4):
        await store.add_dead_uplink(DeadUplink(first, n + 1, f"HTTP 50{n}", 1.5), max_len=3)
    dead = await store.dead_uplinks(10)
    assert [d.error for d in dead] == ["HTTP 503", "HTTP 502", "HTTP 501"]
    assert dead[0].uplink == first and dead[0].attempts == 4 and dead[0].failed_at == 1.5
    assert await store.dead_uplinks(1) == dead[:1]


@pytest_twisted.ensureDeferred
async def test_uplink_calls_fail_once_closed(store_case: StoreCase) -> None:
    store = store_case.store
    waiting = store.uplinks("0", 10, block=30)
    await store.close()
    with pytest.raises(StoreError):
        await store_case.settle(waiting)
    with pytest.raises(StoreError):
        await store.add_uplink(uplink(store_case, "u"), dedup_window=WINDOW, max_len=MAX_LEN)


def test_uplink_keys_share_one_cluster_slot() -> None:
    """The de-duplication key and the stream are written by one script."""
    for key in (keys.UPLINK, keys.uplink_seen("a:b", "c"), keys.UPLINK_DEAD):
        assert key.startswith("PIGEON:{UPLINK}")
    assert keys.uplink_seen("a:b", "c") != keys.uplink_seen("a", "b:c")
