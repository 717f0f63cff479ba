"""messageIds: time-ordered, unique across threads and processes, URL-safe."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from pigeonpush import ids
from pigeonpush.ids import ID_LENGTH, MessageIdGenerator, is_message_id, timestamp_ms


class WallClock:
    """The real time, as a reactor would give it (usable from any thread)."""

    def seconds(self) -> float:
        return time.time()


def _strictly_increasing(values: list[str]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


#: Run by each of several processes at once: print 5,000 ids, one a line.
GENERATE = """
import sys, time
from pigeonpush.ids import MessageIdGenerator

class WallClock:
    def seconds(self):
        return time.time()

sys.stdin.readline()  # start together
generator = MessageIdGenerator(WallClock())
print("\\n".join(generator() for _ in range(5_000)))
"""


def test_ids_are_26_url_safe_characters_with_the_time_in_front() -> None:
    clock = Clock()
    clock.advance(1_700_000_000.123)
    message_id = MessageIdGenerator(clock)()
    assert len(message_id) == ID_LENGTH == 26
    assert quote(message_id, safe="") == message_id
    assert is_message_id(message_id)
    assert timestamp_ms(message_id) == 1_700_000_000_123


@pytest.mark.parametrize(
    "text",
    ["", "01ARZ3NDEKTSV4RRFFQ69G5FA", "01ARZ3NDEKTSV4RRFFQ69G5FAVX", "01arz3ndektsv4rrffq69g5fav",
     "01ARZ3NDEKTSV4RRFFQ69G5FAU", "81ARZ3NDEKTSV4RRFFQ69G5FAV", "01ARZ3NDEKTSV4RRFFQ69G5FA/"],
)  # fmt: skip
def test_is_message_id_refuses_what_no_generator_makes(text: str) -> None:
    assert not is_message_id(text)


def test_ids_sort_by_time() -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    first, second = MessageIdGenerator(clock), MessageIdGenerator(clock)
    made = []
    for step in range(50):
        made.append((clock.seconds(), (first if step % 2 else second)()))
        clock.advance(0.001 * (1 + step % 3))
    assert sorted(made, key=lambda pair: pair[1]) == made


def test_ids_within_one_millisecond_keep_increasing() -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    generator = MessageIdGenerator(clock)
    made = [generator() for _ in range(10_000)]
    assert _strictly_increasing(made)
    assert {timestamp_ms(m) for m in made} == {1_700_000_000_000}


def test_ids_keep_increasing_when_the_clock_steps_back() -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    generator = MessageIdGenerator(clock)
    before = generator()
    clock.rightNow -= 5  # an NTP step backwards
    after = [generator() for _ in range(3)]
    assert _strictly_increasing([before, *after])


def test_exhausted_millisecond_moves_to_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    generator = MessageIdGenerator(clock)
    monkeypatch.setattr(ids.secrets, "randbits", lambda bits: (1 << 80) - 1)
    last_of_millisecond = generator()
    monkeypatch.setattr(ids.secrets, "randbits", lambda bits: 0)
    overflowed = generator()
    assert overflowed > last_of_millisecond
    assert timestamp_ms(overflowed) == timestamp_ms(last_of_millisecond) + 1


def test_unique_and_ordered_across_threads() -> None:
    """Each thread its own generator, plus one generator shared by all."""
    shared = MessageIdGenerator(WallClock())  # type: ignore[arg-type]
    own: dict[int, list[str]] = {}
    from_shared: dict[int, list[str]] = {}
    start = threading.Barrier(4)

    def work(n: int) -> None:
        generator = MessageIdGenerator(WallClock())  # type: ignore[arg-type]
        start.wait()
        own[n] = [generator() for _ in range(5000)]
        from_shared[n] = [shared() for _ in range(5000)]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(own) == len(from_shared) == 4
    everything = [i for made in (*own.values(), *from_shared.values()) for i in made]
    assert len(set(everything)) == len(everything) == 40_000
    assert all(_strictly_increasing(made) for made in own.values())
    assert all(_strictly_increasing(made) for made in from_shared.values())


def test_unique_and_ordered_across_processes() -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", GENERATE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    before_ms = int(time.time() * 1000)
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    runs = [process.communicate(timeout=120)[0].split() for process in processes]
    after_ms = int(time.time() * 1000)
    assert [process.returncode for process in processes] == [0, 0, 0]
    everything = [i for made in runs for i in made]
    assert len(set(everything)) == len(everything) == 15_000
    assert all(_strictly_increasing(made) for made in runs)
    # Ids sort by the time they were made at, whichever process made them.
    assert all(before_ms <= timestamp_ms(i) <= after_ms + 1 for i in everything)
    by_id = sorted(everything)
    assert [timestamp_ms(i) for i in by_id] == sorted(timestamp_ms(i) for i in everything)


@pytest.mark.parametrize(
    "text", ["", "01ARZ3NDE", "01ARZ3NDEI", "01arz3ndek", "01ARZ_NDEK", "01ARZ 3NDEK"]
)
def test_the_timestamp_of_what_is_not_a_message_id_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        timestamp_ms(text)


def _ulid_by_the_definition(value: int) -> str:
    """Base32, five bits a character, most significant first."""
    return "".join(ids.ALPHABET[value >> (5 * shift) & 31] for shift in reversed(range(26)))


@given(st.integers(min_value=0, max_value=(1 << 128) - 1))
def test_encode_ulid_writes_every_128_bit_value_as_base32(value: int) -> None:
    encoded = ids.encode_ulid(value)
    assert encoded == _ulid_by_the_definition(value)
    assert is_message_id(encoded) and timestamp_ms(encoded) == value >> 80
