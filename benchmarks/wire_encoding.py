"""Encode and decode speed of a typical PUSH frame, for each candidate body encoding.

Run from the repository root (msgpack is needed only here: ``pip install msgpack``)::

    python benchmarks/wire_encoding.py

Candidates, all framed the same way (4-byte length, type byte, body), all
decoding to a validated ``Push``:

``struct``
    the project's codec (pigeonpush.wire.codec, ``encode_push`` and
    ``decode``): fixed-width big-endian integers, strings as a uint16 byte
    length then UTF-8;
``msgpack``
    the body as a msgpack array ``[messageId, title, text, {extras}]``, with
    the type checks a decoder of untrusted input needs;
``msgpack-pure``
    the same with msgpack's pure-Python fallback, which is what runs where
    its compiled extension is not available;
``json``
    the same array as compact JSON (the standard library's), for reference.

Each figure is in frames per second, the best of several repetitions (the
one least disturbed by other processes); candidates take turns within each
repetition, all in this one process.
"""

from __future__ import annotations

import argparse
import json
import platform
import struct
import sys
import timeit
from collections.abc import Callable, Mapping

from pigeonpush.wire import codec
from pigeonpush.wire.frames import FrameType, Push

#: A typical notification: a ULID, a short title, a sentence of text with a
#: non-ASCII character, two extras (an id and a deep link).
TYPICAL = Push(
    message_id="01JDZ4Q6M8T3K9V2XNRB5W7HCF",
    title="Your order has shipped",
    text=(
        "Good news: order A-10293 left our warehouse today and should reach you "
        "by Thursday. Track it in the app \u2192"
    ),
    extras={"orderId": "A-10293", "url": "https://shop.example.com/orders/A-10293"},
)

_PREFIX_TYPE = struct.Struct(">IB")


class Malformed(ValueError):
    pass


def _validated(items: object) -> Push:
    """The checks any decoder of untrusted self-describing data needs."""
    if not isinstance(items, list) or len(items) != 4:
        raise Malformed("PUSH body must be an array of 4")
    message_id, title, text, extras = items
    if not (isinstance(message_id, str) and isinstance(title, str) and isinstance(text, str)):
        raise Malformed("PUSH strings must be strings")
    if not isinstance(extras, dict) or not all(
        type(k) is str and type(v) is str for k, v in extras.items()
    ):
        raise Malformed("PUSH extras must map strings to strings")
    return Push(message_id, title, text, extras)


def struct_candidate() -> tuple[Callable[[Push], bytes], Callable[[bytes], object]]:
    def encode(frame: Push) -> bytes:
        return codec.encode_push(frame.message_id, frame.title, frame.text, frame.extras)

    return encode, codec.decode


def msgpack_candidate(
    pure_python: bool = False,
) -> tuple[Callable[[Push], bytes], Callable[[bytes], object]]:
    import msgpack
    import msgpack.fallback

    if pure_python:
        # What a platform without msgpack's compiled extension (no wheel, PyPy) runs.
        packb = msgpack.fallback.Packer().pack
        unpackb = msgpack.fallback.unpackb
    else:
        packb = msgpack.packb
        unpackb = msgpack.unpackb

    def encode(frame: Push) -> bytes:
        extras: Mapping[str, str] = frame.extras
        body: bytes = packb([frame.message_id, frame.title, frame.text, extras])
        return _PREFIX_TYPE.pack(len(body) + 1, FrameType.PUSH) + body

    def decode(payload: bytes) -> Push:
        try:
            items = unpackb(payload[1:], raw=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
            raise Malformed(str(e)) from None
        return _validated(items)

    return encode, decode


def json_candidate() -> tuple[Callable[[Push], bytes], Callable[[bytes], object]]:
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    loads = json.loads

    def encode(frame: Push) -> bytes:
        body = dumps([frame.message_id, frame.title, frame.text, frame.extras]).encode()
        return _PREFIX_TYPE.pack(len(body) + 1, FrameType.PUSH) + body

    def decode(payload: bytes) -> Push:
        try:
            items = loads(payload[1:])
        except ValueError as e:
            raise Malformed(str(e)) from None
        return _validated(items)

    return encode, decode


CANDIDATES = {
    "struct": struct_candidate,
    "msgpack": msgpack_candidate,
    "msgpack-pure": lambda: msgpack_candidate(pure_python=True),
    "json": json_candidate,
}


def rate(function: Callable[[], object], number: int) -> float:
    """Calls per second over ``number`` calls."""
    return number / timeit.timeit(function, number=number)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure (best is kept)")
    parser.add_argument("--number", type=int, default=100_000, help="frames per run")
    parser.add_argument(
        "--candidates", nargs="+", choices=sorted(CANDIDATES), default=list(CANDIDATES)
    )
    args = parser.parse_args(argv)

    prepared = {}
    for name in args.candidates:
        try:
            encode, decode = CANDIDATES[name]()
        except ImportError as e:
            print(f"{name}: skipped, {e} (pip install msgpack)", file=sys.stderr)
            continue
        frame = encode(TYPICAL)
        if decode(frame[4:]) != TYPICAL:
            raise SystemExit(f"{name}: the frame does not decode back to the original")
        prepared[name] = (encode, decode, frame)

    # Candidates take turns within each repetition, so that a burst of load
    # from another process does not favour one of them; the best run counts.
    best: dict[str, list[float]] = {name: [0.0, 0.0] for name in prepared}
    for _ in range(args.repeat):
        for name, (encode, decode, frame) in prepared.items():
            payload = frame[4:]
            rates = best[name]
            rates[0] = max(rates[0], rate(lambda: encode(TYPICAL), args.number))  # noqa: B023
            rates[1] = max(rates[1], rate(lambda: decode(payload), args.number))  # noqa: B023
    results = {name: (len(prepared[name][2]), rates[0], rates[1]) for name, rates in best.items()}

    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.machine()}, best of {args.repeat} x {args.number} frames"
    )
    if any(name.startswith("msgpack") for name in results):
        import msgpack

        print("msgpack " + ".".join(str(part) for part in msgpack.version))
    print()
    reference = results.get("struct")
    header = ("candidate", "frame bytes", "encode frames/s", "decode frames/s", "vs struct (e / d)")
    rows = []
    for name, (size, enc, dec) in results.items():
        ratio = f"{enc / reference[1]:.2f} / {dec / reference[2]:.2f}" if reference else "-"
        rows.append((name, str(size), f"{enc:,.0f}", f"{dec:,.0f}", ratio))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    rule = "  ".join("=" * width for width in widths)
    print(rule)
    print("  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)).rstrip())
    print(rule)
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    print(rule)
    return 0


if __name__ == "__main__":
    sys.exit(main())
