"""Valid frames built with the project's codec, and ways to break them.

A frame is ``length prefix (4 bytes, big-endian) | type byte | body``. The
mutators take a whole frame and a ``random.Random`` and return new bytes; the
same seed gives the same bytes, so a run that found something can be replayed
(``--seed``). Most mutations keep the prefix true to the new length
(``reframe``), so that the server decodes the damaged body instead of waiting
for bytes that never come; a few lie about the length on purpose.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence

from pigeonpush.wire.codec import MAX_MAX_FRAME, PREFIX_BYTES, encode
from pigeonpush.wire.frames import (
    PING,
    PONG,
    Ack,
    Auth,
    AuthFail,
    AuthFailCode,
    AuthOk,
    Error,
    ErrorCode,
    Frame,
    FrameType,
    Kick,
    KickReason,
    Missed,
    Nack,
    Push,
    Subscribe,
    Subscription,
    SubscriptionCode,
    Unsubscribe,
    Uplink,
    UplinkAck,
)

Mutator = Callable[[random.Random, bytes], bytes]

#: Byte sequences that are not valid UTF-8 (a lone surrogate's encoding
#: among them), spliced into strings.
BAD_UTF8: tuple[bytes, ...] = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf")
#: Length prefixes that claim more than any sane frame limit allows.
OVERSIZED_PREFIXES: tuple[int, ...] = (8193, 65536, 1 << 20, 1 << 31, MAX_MAX_FRAME)


def frame_bytes(frame_type: int, body: bytes) -> bytes:
    """``body`` with the given type byte and a length prefix that matches."""
    return struct.pack("!IB", 1 + len(body), frame_type) + body


def reframe(data: bytes) -> bytes:
    """``data`` (a frame whose prefix may now be wrong) with its prefix fixed.

    Anything shorter than a prefix and a type byte becomes a frame of type 0
    with no body (itself invalid: no frame type is 0).
    """
    if len(data) <= PREFIX_BYTES:
        return frame_bytes(0, b"")
    payload = data[PREFIX_BYTES:]
    return struct.pack("!I", len(payload)) + payload


def seed_frames(client_id: str = "abuse-0", token: str = "t" * 22) -> list[bytes]:
    """One valid frame of every type (client-sent and server-sent alike)."""
    frames: list[Frame] = [
        Auth(client_id, token),
        PING,
        PONG,
        Ack("01J8Z0000000000000000000AA"),
        Push("01J8Z0000000000000000000AA", "title", "text", {"k": "v", "url": "app://x"}),
        AuthOk(30.0, 8192, 32),
        AuthFail(AuthFailCode.BAD_TOKEN, "no"),
        Kick(KickReason.REPLACED, "again"),
        Error(ErrorCode.MALFORMED, "bad"),
        Nack("01J8Z0000000000000000000AA", 2.0),
        Uplink("up-1", {"k": "v"}),
        UplinkAck("up-1"),
        Subscribe(1, "public.news"),
        Unsubscribe(2, "public.news"),
        Subscription(1, SubscriptionCode.OK),
        Missed("public.news"),
    ]
    return [encode(frame) for frame in frames]


def random_frame(rng: random.Random, max_body: int = 512) -> bytes:
    """Random bytes behind a true prefix and a random (often valid) type byte."""
    frame_type = rng.choice([*(int(t) for t in FrameType), rng.randrange(256)])
    body = rng.randbytes(rng.randrange(max_body + 1))
    return frame_bytes(frame_type, body)


# --- the mutators -------------------------------------------------------------


def flip_bits(rng: random.Random, frame: bytes) -> bytes:
    """1 to 8 random bits of the type byte or body flipped (prefix fixed)."""
    data = bytearray(frame)
    if len(data) <= PREFIX_BYTES:
        return reframe(bytes(data))
    for _ in range(rng.randint(1, 8)):
        index = rng.randrange(PREFIX_BYTES, len(data))
        data[index] ^= 1 << rng.randrange(8)
    return reframe(bytes(data))


def set_type(rng: random.Random, frame: bytes) -> bytes:
    """Another type byte: a known type with the wrong body, or an unknown one."""
    data = bytearray(reframe(frame))
    data[PREFIX_BYTES] = rng.choice([*(int(t) for t in FrameType), 0, 0x0A, 0x7F, 0xFF])
    return bytes(data)


def truncate_body(rng: random.Random, frame: bytes) -> bytes:
    """The body cut short (prefix fixed): fields end early."""
    cut = rng.randrange(PREFIX_BYTES + 1, max(len(frame), PREFIX_BYTES + 2))
    return reframe(frame[:cut])


def extend_body(rng: random.Random, frame: bytes) -> bytes:
    """Random bytes after the body (prefix fixed): trailing garbage."""
    return reframe(frame + rng.randbytes(rng.randint(1, 64)))


def insert_bytes(rng: random.Random, frame: bytes) -> bytes:
    """Random bytes inserted inside the body (prefix fixed)."""
    at = rng.randrange(PREFIX_BYTES + 1, len(frame) + 1) if len(frame) > PREFIX_BYTES else 0
    return reframe(frame[:at] + rng.randbytes(rng.randint(1, 16)) + frame[at:])


def duplicate_slice(rng: random.Random, frame: bytes) -> bytes:
    """A slice of the body repeated (prefix fixed): fields read out of step."""
    if len(frame) <= PREFIX_BYTES + 1:
        return reframe(frame)
    start = rng.randrange(PREFIX_BYTES + 1, len(frame))
    end = rng.randrange(start, len(frame)) + 1
    return reframe(frame[:end] + frame[start:end] + frame[end:])


def string_length(rng: random.Random, frame: bytes) -> bytes:
    """A uint16 string length (the first field after the type byte) set to a
    random value: past the end, zero or the maximum."""
    data = bytearray(reframe(frame))
    if len(data) < PREFIX_BYTES + 3:
        return extend_body(rng, frame)
    at = PREFIX_BYTES + 1
    value = rng.choice([0, 1, 0xFFFF, rng.randrange(0x10000), len(data)])
    data[at : at + 2] = struct.pack("!H", value)
    return bytes(data)


def bad_utf8(rng: random.Random, frame: bytes) -> bytes:
    """Invalid UTF-8 (a lone surrogate among them) over part of the body,
    keeping its length so that string lengths still add up."""
    data = bytearray(reframe(frame))
    junk = rng.choice(BAD_UTF8)
    if len(data) < PREFIX_BYTES + 1 + len(junk):
        return reframe(bytes(data) + junk)
    at = rng.randrange(PREFIX_BYTES + 1, len(data) - len(junk) + 1)
    data[at : at + len(junk)] = junk
    return bytes(data)


def lie_about_length(rng: random.Random, frame: bytes) -> bytes:
    """A prefix that does not match the bytes behind it: shorter (the rest is
    read as the next frame), longer (the server waits for more) or far over
    any limit."""
    payload = frame[PREFIX_BYTES:]
    claim = rng.choice(
        [
            0,
            rng.randrange(max(len(payload), 1)),
            len(payload) + rng.randint(1, 64),
            rng.choice(OVERSIZED_PREFIXES),
        ]
    )
    return struct.pack("!I", claim) + payload


#: Every mutator; ``mutate`` picks among them.
MUTATORS: tuple[Mutator, ...] = (
    flip_bits,
    set_type,
    truncate_body,
    extend_body,
    insert_bytes,
    duplicate_slice,
    string_length,
    bad_utf8,
    lie_about_length,
)


def mutate(
    rng: random.Random, frame: bytes, mutators: Sequence[Mutator] = MUTATORS, rounds: int = 3
) -> bytes:
    """``frame`` after 1 to ``rounds`` mutators picked at random."""
    for _ in range(rng.randint(1, rounds)):
        frame = rng.choice(mutators)(rng, frame)
    return frame
