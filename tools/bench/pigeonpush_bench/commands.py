"""The AMP commands between the benchmark and its load generators.

The benchmark (``control.LoadGenerator``) runs each generator as a child
process and speaks AMP over the child's stdin and stdout; the generator
(``loadgen.Controller``) answers on ``twisted.internet.stdio.StandardIO``.
One command per operation, with the arguments it takes; an argument left out
takes the generator's default. Commands run concurrently in the generator,
so ``Stats`` answers while a ``Connect`` is still going.

Parent to child: ``Connect``, ``Stats``, ``Reset``, ``Close``,
``Subscribe`` (topic subscriptions through the notification API) and the
publishers ``PublishApi``, ``PublishMqtt``, ``PublishAmp``. Closing the
child's stdin stops it. Child to parent, without an answer: ``Started`` once
it listens, ``Progress`` while it connects.

A command that fails in the generator answers ``CommandFailed`` with the
generator's message (``control.LoadGenError`` on the benchmark's side).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from twisted.protocols import amp


class CommandFailed(Exception):
    """A command failed in the generator; ``str()`` is the reason."""


class Json(amp.Argument):
    """Any JSON value (nested counters, histograms).

    AMP caps a value at 65,535 bytes: a longer encoding is split over the keys
    ``name``, ``name.1``, ``name.2``...
    """

    CHUNK = 0xFFFF

    def toBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any
    ) -> None:
        value = self.retrieve(objects, name.decode().replace("-", "_"), proto)
        if self.optional and value is None:
            return
        encoded = json.dumps(value, separators=(",", ":")).encode()
        strings[name] = encoded[: self.CHUNK]
        for part, offset in enumerate(range(self.CHUNK, len(encoded), self.CHUNK), start=1):
            strings[name + b".%d" % part] = encoded[offset : offset + self.CHUNK]

    def fromBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any
    ) -> None:
        key = name.decode().replace("-", "_")
        first = self.retrieve(strings, name, proto)
        if first is None:
            objects[key] = None
            return
        parts = [first]
        part = 1
        while (name + b".%d" % part) in strings:
            parts.append(strings.pop(name + b".%d" % part))
            part += 1
        objects[key] = json.loads(b"".join(parts))


class Number(amp.Float):
    """A float that also takes an int (``rate=0``, ``heartbeat=5``)."""

    def toString(self, inObject: float) -> bytes:
        if isinstance(inObject, bool) or not isinstance(inObject, int | float):
            raise ValueError(f"not a number: {inObject!r}")
        return super().toString(float(inObject))  # type: ignore[no-any-return]


class _Command(amp.Command):
    errors = {CommandFailed: b"COMMAND_FAILED"}


def _optional(argument: type[amp.Argument]) -> amp.Argument:
    return argument(optional=True)


#: What a publisher answers.
PUBLISHED = [
    (b"accepted", amp.Integer()),
    (b"refused", amp.Integer()),
    (b"failed", amp.Integer()),
    (b"errors", Json()),
    (b"started", Number()),
    (b"last_accept", Number()),
    (b"seconds", Number()),
]


class Connect(_Command):
    """Connect ``count`` clients (ids ``<prefix><start + k>``) and answer once
    every one is ready or has failed its attempts.

    ``protocol``: ``pigeon`` (through the reglog at ``reglog``), ``framing`` or
    ``mqtt`` (straight to ``server`` ``host:port``). ``source``: the local
    address to connect from. ``reconnect``: come back after a loss.
    """

    arguments = [
        (b"protocol", amp.Unicode()),
        (b"count", amp.Integer()),
        (b"prefix", _optional(amp.Unicode)),
        (b"start", _optional(amp.Integer)),
        (b"source", _optional(amp.Unicode)),
        (b"concurrency", _optional(amp.Integer)),
        (b"heartbeat", _optional(Number)),
        (b"reconnect", _optional(amp.Boolean)),
        (b"reglog", _optional(amp.Unicode)),
        (b"server", _optional(amp.Unicode)),
        (b"seed", _optional(amp.Integer)),
        (b"topic", _optional(amp.Unicode)),
    ]
    response = [
        (b"ready", amp.Integer()),
        (b"failed", amp.Integer()),
        (b"seconds", Number()),
        (b"errors", Json()),
    ]


class Stats(_Command):
    """What the generator's clients saw since the last ``Reset``, and its CPU.
    With ``expected``: ``short``, how many of its clients hold fewer than that
    many distinct messages (clients of a topic)."""

    arguments = [(b"expected", _optional(amp.Integer))]
    response = [
        (b"received", amp.Integer()),
        (b"unique", amp.Integer()),
        (b"duplicates", amp.Integer()),
        (b"out_of_order", amp.Integer()),
        (b"frames", amp.Integer()),
        (b"first_receipt", _optional(Number)),
        (b"last_receipt", _optional(Number)),
        (b"latency", Json()),
        (b"latency_send", Json()),
        (b"ready", amp.Integer()),
        (b"failed", amp.Integer()),
        (b"reconnects", amp.Integer()),
        (b"pings", amp.Integer()),
        (b"last_ready", _optional(Number)),
        (b"errors", Json()),
        (b"cpu", Number()),
        (b"now", Number()),
        (b"short", _optional(amp.Integer)),
    ]


class Reset(_Command):
    """Zero the message counters."""

    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


class Close(_Command):
    """Close every connection (no reconnect)."""

    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response = [(b"fleets", amp.Integer())]


class PublishApi(_Command):
    """``messages`` notifications through ``POST /v1/notifications/batch``,
    each to one client of ``<prefix>0 .. clients-1`` (``spread``: ``random``
    or ``round_robin``), or each to ``topic``."""

    arguments = [
        (b"api", amp.Unicode()),
        (b"key", amp.Unicode()),
        (b"clients", amp.Integer()),
        (b"messages", amp.Integer()),
        (b"prefix", _optional(amp.Unicode)),
        (b"size", _optional(amp.Integer)),
        (b"batch", _optional(amp.Integer)),
        (b"concurrency", _optional(amp.Integer)),
        (b"rate", _optional(Number)),
        (b"seed", _optional(amp.Integer)),
        (b"spread", _optional(amp.Unicode)),
        (b"topic", _optional(amp.Unicode)),
    ]
    response = PUBLISHED


class PublishMqtt(_Command):
    """QoS 1 PUBLISHes to random clients' topics, or each to ``topic``,
    through the broker at ``server``."""

    arguments = [
        (b"server", amp.Unicode()),
        (b"clients", amp.Integer()),
        (b"messages", amp.Integer()),
        (b"prefix", _optional(amp.Unicode)),
        (b"size", _optional(amp.Integer)),
        (b"rate", _optional(Number)),
        (b"seed", _optional(amp.Integer)),
        (b"window", _optional(amp.Integer)),
        (b"topic", _optional(amp.Unicode)),
    ]
    response = PUBLISHED


class Subscribe(_Command):
    """Subscribe clients ``<prefix><start + k>`` (``k`` < ``count``) to each of
    ``topics`` through the notification API at ``api``, ``batch`` clientIds
    a request."""

    arguments = [
        (b"api", amp.Unicode()),
        (b"key", amp.Unicode()),
        (b"topics", amp.ListOf(amp.Unicode())),
        (b"count", amp.Integer()),
        (b"prefix", _optional(amp.Unicode)),
        (b"start", _optional(amp.Integer)),
        (b"batch", _optional(amp.Integer)),
        (b"concurrency", _optional(amp.Integer)),
    ]
    response = [(b"subscriptions", amp.Integer()), (b"seconds", Number())]


class PublishAmp(_Command):
    """AMP ``Push`` batches straight to a pigeon-server's RPC endpoint ``rpc``."""

    arguments = [
        (b"rpc", amp.Unicode()),
        (b"clients", amp.Integer()),
        (b"messages", amp.Integer()),
        (b"prefix", _optional(amp.Unicode)),
        (b"size", _optional(amp.Integer)),
        (b"batch", _optional(amp.Integer)),
        (b"concurrency", _optional(amp.Integer)),
        (b"burst", _optional(amp.Integer)),
    ]
    response = PUBLISHED


class Started(amp.Command):
    """Child to parent: the generator listens for commands."""

    arguments = [(b"pid", amp.Integer())]
    requiresAnswer = False


class Progress(amp.Command):
    """Child to parent, every half second of a ``Connect``: its clients so far."""

    arguments = [(b"ready", amp.Integer()), (b"failed", amp.Integer())]
    requiresAnswer = False


#: The parent's names for the commands (``LoadGenerator.call``).
COMMANDS: dict[str, type[amp.Command]] = {
    "connect": Connect,
    "stats": Stats,
    "reset": Reset,
    "close": Close,
    "publish_api": PublishApi,
    "publish_mqtt": PublishMqtt,
    "publish_amp": PublishAmp,
    "subscribe": Subscribe,
}
