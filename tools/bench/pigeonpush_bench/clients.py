"""The client protocols a load generator runs, one per connection.

Three kinds, as cheap as their protocol allows, so that the generator spends
its CPU on the protocol and not on itself: ``PigeonClient`` (the pigeon wire
protocol: AUTH, PUSH -> ACK, PING), ``FramingClient`` (only Int32 framing: the
bare Twisted baseline) and ``MqttClient`` (MQTT 3.1.1: CONNECT, SUBSCRIBE QoS 1,
PUBLISH -> PUBACK, PINGREQ). A connection holds a reference to its ``Fleet``
(the per-process owner of all of them) and reports to it; heartbeats come from
one ``HeartbeatWheel`` per process, not from a timer per connection.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from pigeonpush.ids import timestamp_ms
from pigeonpush.wire.codec import ENCODED_PING, encode, encode_ack
from pigeonpush.wire.frames import (
    PROTOCOL_VERSION,
    Ack,
    Auth,
    AuthFail,
    AuthOk,
    Error,
    FrameType,
    Kick,
    Push,
)
from pigeonpush.wire.protocol import FrameProtocol
from pigeonpush_bench import mqtt

#: Frame payloads (after the length prefix) of the bare framing baseline.
FRAME_PING = bytes((FrameType.PING,))
FRAME_PONG = bytes((FrameType.PONG,))
FRAME_PUSH = FrameType.PUSH
#: The baseline client's ACK: the size of a pigeon ACK (a 26-character messageId).
FRAME_ACK = encode(Ack("0" * 26))[4:]


class Fleet(TypingProtocol):
    """What a connection reports to (implemented by ``loadgen.Fleet``)."""

    def ready(self, client: BenchClient, heartbeat: float | None) -> None:
        """The connection may be used: authenticated, subscribed or just open."""

    def refused(self, client: BenchClient, reason: str) -> None:
        """The handshake failed (AUTH_FAIL, CONNACK refused, ...)."""

    def lost(self, client: BenchClient, reason: str) -> None:
        """The connection closed."""

    def pushed(self, client: BenchClient, key: str, text: str, accepted_ms: int | None) -> None:
        """A message arrived (already acknowledged)."""

    def framed(self) -> None:
        """A baseline frame arrived (already acknowledged)."""


class BenchClient(TypingProtocol):
    index: int
    fleet: Fleet

    def ping(self) -> None: ...

    def close(self) -> None: ...


def accepted_ms_of(message_id: str) -> int | None:
    """The millisecond timestamp of a ULID messageId (see pigeonpush.ids)."""
    try:
        return timestamp_ms(message_id)
    except ValueError:
        return None


class PigeonClient(FrameProtocol):
    """A raw pigeon wire client: AUTH with a reglog token, ACK every PUSH."""

    def __init__(
        self, fleet: Fleet, index: int, client_id: str, token: str, clock: IReactorTime
    ) -> None:
        super().__init__(clock=clock)
        self.fleet = fleet
        self.index = index
        self.client_id = client_id
        self.token = token
        self.is_ready = False
        self.reason = "closed"

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        self.sendFrame(Auth(self.client_id, self.token, PROTOCOL_VERSION))

    def frameReceived(self, frame: object) -> None:
        kind = type(frame)
        if kind is Push:
            assert isinstance(frame, Push)
            message_id = frame.message_id
            self.sendEncoded(encode_ack(message_id))
            self.fleet.pushed(self, message_id, frame.text, accepted_ms_of(message_id))
        elif kind is AuthOk:
            assert isinstance(frame, AuthOk)
            self.MAX_LENGTH = max(self.MAX_LENGTH, frame.max_frame)
            self.is_ready = True
            self.fleet.ready(self, frame.heartbeat)
        elif kind is AuthFail:
            assert isinstance(frame, AuthFail)
            self.reason = f"auth_fail_{frame.code.name.lower()}"
            self.fleet.refused(self, self.reason)
            self.closeWith()
        elif kind is Kick:
            assert isinstance(frame, Kick)
            self.reason = f"kick_{frame.reason.name.lower()}"
            self.closeWith()
        elif kind is Error:
            assert isinstance(frame, Error)
            self.reason = f"error_{frame.code.name.lower()}"
            self.closeWith()
        # PONG: nothing to do.

    def ping(self) -> None:
        if self.transport is not None:
            self.transport.write(ENCODED_PING)

    def close(self) -> None:
        self.reason = "closed"
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.fleet.lost(self, self.reason)


class FramingClient(Int32StringReceiver):
    """The baseline's client: framing only. Answers each PUSH-typed frame with
    an ACK-sized frame and pings with a one-byte frame."""

    MAX_LENGTH = 1 << 20

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.index = index

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        self.fleet.ready(self, None)

    def stringReceived(self, string: bytes) -> None:
        if string and string[0] == FRAME_PUSH:
            self.sendString(FRAME_ACK)
            self.fleet.framed()

    def ping(self) -> None:
        self.sendString(FRAME_PING)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.fleet.lost(self, "closed")


def mqtt_topic(client_id: str) -> str:
    """The topic a benchmark MQTT client subscribes to: one per client (unicast)."""
    return f"bench/{client_id}"


class MqttClient(Protocol):
    """An MQTT 3.1.1 subscriber at QoS 1 on its own topic, or on ``topic``
    (one topic shared by every client: fan-out)."""

    def __init__(
        self, fleet: Fleet, index: int, client_id: str, keepalive: int, topic: str | None = None
    ) -> None:
        self.fleet = fleet
        self.index = index
        self.client_id = client_id
        self.keepalive = keepalive
        self.topic = topic or mqtt_topic(client_id)
        self.reader = mqtt.PacketReader()
        self.is_ready = False
        self.reason = "closed"

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        self.transport.write(mqtt.connect(self.client_id, self.keepalive))

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            packets = self.reader.feed(data)
        except mqtt.MqttError:
            self.reason = "mqtt_malformed"
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        for first, body in packets:
            kind = first >> 4
            if kind == mqtt.PUBLISH:
                _topic, packet_id, payload = mqtt.parse_publish(first, body)
                if packet_id:
                    self.transport.write(mqtt.puback(packet_id))
                key, _, rest = payload.partition(b"|")
                self.fleet.pushed(self, key.decode(), rest.decode(errors="replace"), None)
            elif kind == mqtt.CONNACK:
                code = mqtt.parse_connack(body)
                if code:
                    self.reason = f"connack_{code}"
                    self.fleet.refused(self, self.reason)
                    self.transport.loseConnection()
                    return
                self.transport.write(mqtt.subscribe(1, self.topic, 1))
            elif kind == mqtt.SUBACK:
                _packet_id, codes = mqtt.parse_suback(body)
                if codes[:1] == b"\x80":
                    self.reason = "suback_refused"
                    self.fleet.refused(self, self.reason)
                    self.transport.loseConnection()
                    return
                self.is_ready = True
                self.fleet.ready(self, float(self.keepalive))
            # PINGRESP and anything else: nothing to do.

    def ping(self) -> None:
        if self.transport is not None:
            self.transport.write(mqtt.PINGREQ_PACKET)

    def close(self) -> None:
        self.reason = "closed"
        if self.transport is not None:
            self.transport.write(mqtt.DISCONNECT_PACKET)
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.fleet.lost(self, self.reason)


class HeartbeatWheel:
    """Pings every registered connection once per ``interval`` from one timer.

    Connections are spread over slots ticked in turn, so N connections cost one
    DelayedCall and N/slots pings per tick instead of N timers. Ticks are due
    at fixed times: a generator busy connecting thousands of clients catches up
    on the slots it fell behind on, so a connection's heartbeats never drift
    past the peer's keep-alive limit.
    """

    TICK = 0.25

    def __init__(self, clock: IReactorTime, interval: float) -> None:
        self._clock = clock
        self.interval = interval
        count = max(1, round(interval / self.TICK))
        self._slots: list[set[BenchClient]] = [set() for _ in range(count)]
        self._step = interval / count
        self._next_slot = 0
        self._current = 0
        self._due = 0.0
        self._call: IDelayedCall | None = None
        self.pings = 0

    def add(self, client: BenchClient) -> None:
        self._slots[self._next_slot].add(client)
        self._next_slot = (self._next_slot + 1) % len(self._slots)
        if self._call is None:
            self._due = self._clock.seconds() + self._step
            self._call = self._clock.callLater(self._step, self._tick)

    def discard(self, client: BenchClient) -> None:
        for slot in self._slots:
            slot.discard(client)

    def _tick(self) -> None:
        now = self._clock.seconds()
        ticked = 0
        while self._due <= now and ticked < len(self._slots):
            slot = self._slots[self._current]
            self._current = (self._current + 1) % len(self._slots)
            for client in slot:
                client.ping()
            self.pings += len(slot)
            self._due += self._step
            ticked += 1
        if self._due <= now:
            # More than a whole round behind: every slot was just pinged.
            self._due = now + self._step
        self._call = self._clock.callLater(max(0.0, self._due - now), self._tick)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
