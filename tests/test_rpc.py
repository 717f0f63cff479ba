"""The AMP message batches: encoding, chunking at the AMP value limit, decoding errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.protocols import amp

from pigeonpush.rpc import (
    MAX_VALUE_BYTES,
    Pull,
    PullMany,
    PullRequest,
    Push,
    PushItem,
    PushStatus,
    decode_batch,
    decode_pull_requests,
    encode_batches,
    encode_pull_requests,
)


def _item(n: int, text: str = "hello") -> PushItem:
    return PushItem(f"client-{n}", f"01HZX{n:021d}", f"title {n}", text)


def _json_len(row: list[str]) -> int:
    return len(json.dumps(row, separators=(",", ":")))


def _decoded(batches: list[tuple[int, bytes]]) -> list[PushItem]:
    items: list[PushItem] = []
    for count, value in batches:
        chunk = decode_batch(value)
        assert len(chunk) == count
        items.extend(chunk)
    return items


def test_round_trip_with_and_without_bodies() -> None:
    items = [
        PushItem("c1", "m1", "Title", "Text"),
        PushItem("c2", "m2", "Ünïcødé 鸽子", "emoji 🐦", {"k": "v", "url": "https://x/y"}),
        PushItem("c3", "m3", has_body=False),
        PushItem("c4", "m4", "", ""),
    ]
    batches = list(encode_batches(items))
    assert [count for count, _ in batches] == [4]
    assert decode_batch(batches[0][1]) == items
    assert decode_batch(batches[0][1])[1].extras == {"k": "v", "url": "https://x/y"}


def test_empty_sequence_yields_no_batch() -> None:
    assert list(encode_batches([])) == []


def test_batches_fit_one_amp_value_and_keep_order() -> None:
    items = [_item(n, "x" * 500) for n in range(400)]  # about 220 kB in all
    batches = list(encode_batches(items))
    assert len(batches) > 3
    assert all(len(value) <= MAX_VALUE_BYTES for _, value in batches)
    assert _decoded(batches) == items
    # Every AMP value is accepted by AMP itself.
    for _, value in batches:
        assert amp.String().toString(value) == value


def test_a_batch_of_exactly_the_limit_is_not_split() -> None:
    first = _item(1)
    first_bytes = _json_len([first.client_id, first.message_id, first.title, first.text])
    # Pad the second item so that the whole batch is exactly max_bytes long:
    # [first,second] -> 2 brackets + first + comma + second.
    limit = 300
    second_len = limit - 3 - first_bytes
    base = _json_len(["client-2", "m", "t", ""])
    second = PushItem("client-2", "m", "t", "y" * (second_len - base))
    batches = list(encode_batches([first, second], max_bytes=limit))
    assert [(count, len(value)) for count, value in batches] == [(2, limit)]

    one_more = PushItem("client-2", "m", "t", "y" * (second_len - base + 1))
    batches = list(encode_batches([first, one_more], max_bytes=limit))
    assert [count for count, _ in batches] == [1, 1]
    assert _decoded(batches) == [first, one_more]


def test_a_single_item_of_exactly_the_limit_fits() -> None:
    base = _json_len(["c", "m", "t", ""])
    item = PushItem("c", "m", "t", "z" * (MAX_VALUE_BYTES - 2 - base))
    [(count, value)] = list(encode_batches([item]))
    assert (count, len(value)) == (1, MAX_VALUE_BYTES)
    assert decode_batch(value) == [item]


def test_an_item_over_the_limit_is_refused_with_its_id() -> None:
    base = _json_len(["c", "big-one", "t", ""])
    item = PushItem("c", "big-one", "t", "z" * (MAX_VALUE_BYTES - 1 - base))
    with pytest.raises(ValueError, match="big-one is too large"):
        list(encode_batches([_item(1), item]))


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"\xff\xfe not utf-8", "not a message batch"),
        (b"[1, 2", "not a message batch"),
        (b'{"a": 1}', "not a list"),
        (b'"text"', "not a list"),
        (b'[["only-one"]]', "item"),
        (b'[["c", "m", "t"]]', "item"),
        (b'[["c", "m", "t", "x", {}, 6]]', "item"),
        (b'[["c", 5]]', "item"),
        (b'[[1, "m"]]', "item"),
        (b'[["c", "m", 7, "x", {}]]', "item"),
        (b'[["c", "m", "t", null]]', "item"),
        (b'[["c", "m", "t", "x", ["not", "a", "map"]]]', "item"),
        (b'[["c", "m", "t", "x", {"k": 1}]]', "item"),
        (b'[["c", "m", "t", "x", "extras"]]', "item"),
        (b'["not a row"]', "item"),
        (b"[" * 60000 + b"]" * 60000, "nested too deeply"),
    ],
)
def test_decoding_errors_are_value_errors(value: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        decode_batch(value)


texts = st.text(max_size=40)


@given(
    st.lists(
        st.builds(
            PushItem,
            client_id=texts,
            message_id=texts,
            title=texts,
            text=st.text(max_size=400),
            extras=st.dictionaries(texts, texts, max_size=3),
            # (AMP carries bodies; a topic is in process only)
            has_body=st.just(True),
            topic=st.just(""),
        ),
        max_size=30,
    ),
    st.integers(min_value=600, max_value=4000),
)
def test_any_items_round_trip_in_chunks_under_the_limit(
    items: list[PushItem], max_bytes: int
) -> None:
    batches = list(encode_batches(items, max_bytes=max_bytes))
    assert all(len(value) <= max_bytes for _, value in batches)
    assert _decoded(batches) == items


def test_push_status_is_one_byte_per_item() -> None:
    statuses = [PushStatus.WRITTEN, PushStatus.OFFLINE, PushStatus.WINDOW_FULL]
    statuses += [PushStatus.NO_BODY, PushStatus.TOO_LARGE]
    results = bytes(statuses)
    assert [PushStatus(b) for b in results] == statuses


def test_commands_serialize_their_arguments() -> None:
    [(_, batch)] = list(encode_batches([_item(1)]))
    box = Push.makeArguments({"batch": batch}, None)
    assert Push.parseArguments(box, None) == {"batch": batch}
    box = Pull.makeArguments({"clientId": "c1", "limit": 5, "inFlight": ["a", "b"]}, None)
    assert Pull.parseArguments(box, None) == {"clientId": "c1", "limit": 5, "inFlight": ["a", "b"]}


# -- PullMany requests -----------------------------------------------------------------


def test_pull_requests_round_trip_and_split_at_the_value_limit() -> None:
    requests = [
        PullRequest(f"client-{n}", n % 7, tuple(f"{n:04d}-{k:026d}" for k in range(n % 50)))
        for n in range(300)
    ]
    chunks = list(encode_pull_requests(requests))
    assert len(chunks) > 1
    assert all(len(value) <= MAX_VALUE_BYTES for _, value in chunks)
    decoded = [r for count, value in chunks for r in decode_pull_requests(value)]
    assert [count for count, _ in chunks] == [
        len(decode_pull_requests(value)) for _, value in chunks
    ]
    assert decoded == requests
    assert list(encode_pull_requests([])) == []


def test_a_pull_request_too_large_for_one_value_is_refused() -> None:
    huge = PullRequest("alice", 5, tuple("x" * 100 for _ in range(700)))
    with pytest.raises(ValueError, match="alice is too large"):
        list(encode_pull_requests([huge]))


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"{}",
        b"[[1, 2, []]]",
        b'[["a", "2", []]]',
        b'[["a", true, []]]',
        b'[["a", 2, "m1"]]',
        b'[["a", 2, [1]]]',
        b'[["a", 2]]',
        b"[" * 100_000,
    ],
)
def test_malformed_pull_requests_are_a_value_error(value: bytes) -> None:
    with pytest.raises(ValueError, match="pull request"):
        decode_pull_requests(value)


def test_pull_many_travels_as_one_amp_box() -> None:
    value = next(encode_pull_requests([PullRequest("alice", 5, ("m1",))]))[1]
    box = PullMany.makeArguments({"requests": value}, None)
    assert PullMany.parseArguments(box, None) == {"requests": value}
    answer = PullMany.makeResponse({"batch": b"[]", "more": ["alice", "b\u00e9"]}, None)
    assert PullMany.parseResponse(answer, None) == {"batch": b"[]", "more": ["alice", "b\u00e9"]}
