"""The frame mutators: reproducible, true prefixes where promised, and every
result handled by the codec as a frame or a DecodeError (nothing else)."""

from __future__ import annotations

import contextlib
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pigeonpush.wire.codec import PREFIX_BYTES, DecodeError, decode
from pigeonpush.wire.frames import FrameType
from pigeonpush_abuse import mutate

SEEDS = mutate.seed_frames()
#: Mutators that keep the length prefix equal to the bytes behind it.
FRAMED = [m for m in mutate.MUTATORS if m is not mutate.lie_about_length]


def prefix(frame: bytes) -> int:
    return int(struct.unpack_from("!I", frame)[0])


def test_seed_frames_are_valid_and_cover_every_type() -> None:
    types = set()
    for frame in SEEDS:
        assert prefix(frame) == len(frame) - PREFIX_BYTES
        decode(frame[PREFIX_BYTES:])
        types.add(frame[PREFIX_BYTES])
    assert types == {int(t) for t in FrameType}


@pytest.mark.parametrize("mutator", mutate.MUTATORS, ids=lambda m: m.__name__)
def test_a_seed_gives_the_same_bytes(mutator: mutate.Mutator) -> None:
    for frame in SEEDS:
        assert mutator(random.Random(7), frame) == mutator(random.Random(7), frame)


@pytest.mark.parametrize("mutator", FRAMED, ids=lambda m: m.__name__)
def test_the_prefix_matches_the_mutated_bytes(mutator: mutate.Mutator) -> None:
    rng = random.Random(1)
    for _ in range(200):
        out = mutator(rng, rng.choice(SEEDS))
        assert prefix(out) == len(out) - PREFIX_BYTES >= 1


def test_lie_about_length_lies() -> None:
    rng = random.Random(2)
    for _ in range(200):
        out = mutate.lie_about_length(rng, rng.choice(SEEDS))
        assert prefix(out) != len(out) - PREFIX_BYTES


def test_truncate_and_extend_change_the_length() -> None:
    rng = random.Random(3)
    push = SEEDS[4]
    assert len(mutate.truncate_body(rng, push)) < len(push)
    assert len(mutate.extend_body(rng, push)) > len(push)


def test_bad_utf8_splices_invalid_utf8() -> None:
    rng = random.Random(4)
    out = mutate.bad_utf8(rng, SEEDS[0])
    assert len(out) == len(SEEDS[0])
    assert any(junk in out for junk in mutate.BAD_UTF8)


def test_set_type_can_name_an_unknown_type() -> None:
    rng = random.Random(5)
    types = {mutate.set_type(rng, SEEDS[1])[PREFIX_BYTES] for _ in range(300)}
    assert types >= {0, 0xFF}


def test_reframe_of_less_than_a_frame_is_an_empty_frame_of_type_0() -> None:
    assert mutate.reframe(b"\x00\x00") == b"\x00\x00\x00\x01\x00"


def test_random_frames_have_true_prefixes() -> None:
    rng = random.Random(6)
    for _ in range(100):
        frame = mutate.random_frame(rng, max_body=64)
        assert prefix(frame) == len(frame) - PREFIX_BYTES


@settings(max_examples=500, deadline=None)
@given(seed=st.integers(0, 2**32), which=st.integers(0, len(SEEDS) - 1))
def test_the_codec_decodes_or_refuses_every_mutation(seed: int, which: int) -> None:
    out = mutate.mutate(random.Random(seed), SEEDS[which])
    with contextlib.suppress(DecodeError):
        decode(out[PREFIX_BYTES:])
