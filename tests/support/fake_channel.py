"""The hub without a transport: a ``Channel`` that records what the hub
writes, a device that hands the hub its frames as a transport would, and a
``MetricsSink`` that counts.

The device plays only the frames a transport passes on (AUTH before
AUTH_OK; ACK, NACK, UPLINK, PING after it, answering PING with PONG as the TCP
transport does); what a transport refuses on its own (a second AUTH, NACK in
protocol version 1, garbage) is tested on the TCP transport in
test_server_protocol.py, and the fake fails the test loudly instead.
"""

from __future__ import annotations

import struct
from collections import Counter

from pigeonpush.rpc import PushStatus
from pigeonpush.server.session import Session, SessionEvents, State
from pigeonpush.wire.codec import DEFAULT_MAX_FRAME, ENCODED_PONG, PREFIX_BYTES, decode, encode
from pigeonpush.wire.frames import (
    NACK_VERSION,
    TOPIC_VERSION,
    UPLINK_VERSION,
    Ack,
    Auth,
    AuthFailCode,
    Frame,
    KickReason,
    Nack,
    Ping,
    Subscribe,
    Unsubscribe,
    Uplink,
)
from pigeonpush.wire.protocol import FrameTooLarge

_PREFIX = struct.Struct("!I")


class FakeChannel:
    """A ``Channel``: the encoded frames the hub sent, and how it closed."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, peer: str = "192.0.2.1:40000") -> None:
        self.max_frame = max_frame
        self._peer = peer
        #: encoded frames written and not yet read by ``frames()``
        self.written: list[bytes] = []
        self.activated = False
        #: close() or abort() ran: nothing more is written
        self.closing = False
        self.aborted = False
        #: the session this channel carries (set by ``FakeDevice``)
        self.session: Session | None = None

    @property
    def peer(self) -> str:
        return self._peer

    def send(self, data: bytes) -> None:
        if self.closing:
            return
        if len(data) - PREFIX_BYTES > self.max_frame:
            raise FrameTooLarge(f"frame of {len(data) - PREFIX_BYTES} bytes is over the limit")
        self.written.append(data)

    def send_frames(self, frames: list[bytes]) -> None:
        for data in frames:
            self.send(data)

    def activate(self, auth_ok: bytes) -> None:
        self.activated = True
        self.send(auth_ok)

    def close(self, frame: Frame | None = None) -> None:
        if self.closing:
            return
        if frame is not None:
            self.written.append(encode(frame))
        self._closing()

    def abort(self) -> None:
        self.aborted = True
        self._closing()

    def _closing(self) -> None:
        self.closing = True
        session = self.session
        if session is not None and session.state < State.CLOSING:
            session.state = State.CLOSING

    def frames(self) -> list[Frame]:
        """The frames written since the last call, decoded."""
        written, self.written = self.written, []
        frames = []
        for data in written:
            (length,) = _PREFIX.unpack_from(data)
            assert len(data) == 4 + length, data
            frames.append(decode(data[4:]))
        return frames


class FakeDevice:
    """One connection as its client sees it, over a ``FakeChannel``: the
    same calls as the harness's TCP ``Device``."""

    def __init__(self, hub: SessionEvents, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.hub = hub
        self.channel = FakeChannel(max_frame)
        self.session = hub.connected(self.channel)
        self.channel.session = self.session
        self.lost = False

    def send(self, frame: Frame) -> None:
        """``frame`` from the client, as a transport hands it to the hub."""
        session = self.session
        if self.channel.closing or self.lost:
            return  # a closing transport reads nothing more
        if session.state == State.ACTIVE:
            if isinstance(frame, Ack):
                self.hub.acked(session, frame.message_id)
                return
            if isinstance(frame, Ping):
                self.channel.send(ENCODED_PONG)
                self.hub.pinged(session)
                return
            if isinstance(frame, Nack) and session.version >= NACK_VERSION:
                self.hub.nacked(session, frame.message_id, frame.retry_after)
                return
            if isinstance(frame, Uplink) and session.version >= UPLINK_VERSION:
                self.hub.uplinked(session, frame)
                return
            if isinstance(frame, Subscribe | Unsubscribe) and session.version >= TOPIC_VERSION:
                self.hub.subscription_requested(session, frame)
                return
        elif isinstance(frame, Auth) and session.state == State.AWAITING_AUTH:
            self.hub.authenticate(session, frame)
            return
        raise AssertionError(f"a transport does not pass {frame!r} on in {session.state.name}")

    def received(self) -> list[Frame]:
        """The frames written to this client since the last call."""
        return self.channel.frames()

    @property
    def closing(self) -> bool:
        """The server closed (or is closing) this connection."""
        return self.channel.closing

    @property
    def aborted(self) -> bool:
        return self.channel.aborted

    def pause(self) -> None:
        """The client's socket is full (the transport paused its producer)."""
        self.session.write_paused = True

    def resume(self) -> None:
        """The client's socket drained."""
        session = self.session
        session.write_paused = False
        if session.state == State.ACTIVE:
            self.hub.writable(session)

    def lose(self) -> None:
        """The connection is gone (the client left, or the server's close completed)."""
        if self.lost:
            return
        self.lost = True
        self.channel.closing = True
        self.session.state = State.CLOSED
        self.hub.disconnected(self.session)


class RecordingMetrics:
    """A ``MetricsSink`` that counts each event in ``counts`` under a short
    name (``pushes.offline``, ``auth.ok``, ``pulls.failed``, ...)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        #: the last size of the session table reported
        self.session_count = 0
        #: the PUSH-to-ACK times reported
        self.ack_times: list[float] = []

    def sessions(self, count: int) -> None:
        self.session_count = count

    def authenticated(self) -> None:
        self.counts["auth.ok"] += 1

    def refused(self, code: AuthFailCode) -> None:
        self.counts[f"auth.{code.name.lower()}"] += 1

    def pushed(self, status: PushStatus, count: int) -> None:
        self.counts[f"pushes.{status.name.lower()}"] += count

    def acked(self, seconds: float) -> None:
        self.ack_times.append(seconds)

    def kicked(self, reason: KickReason) -> None:
        self.counts[f"kicks.{reason.name.lower()}"] += 1

    def nacked(self) -> None:
        self.counts["nacks"] += 1

    def uplinked(self, outcome: str) -> None:
        self.counts[f"uplinks.{outcome}"] += 1

    def ack_timed_out(self, count: int) -> None:
        self.counts["ack_timeouts"] += count

    def redelivered(self, count: int) -> None:
        self.counts["redeliveries"] += count

    def gave_up(self, count: int) -> None:
        self.counts["failed"] += count

    def pulled(self, count: int) -> None:
        self.counts["pulls.ok"] += 1
        self.counts["pulled"] += count

    def pull_failed(self) -> None:
        self.counts["pulls.failed"] += 1

    def rate_limited(self, action: str) -> None:
        self.counts[f"rate_limited.{action}"] += 1

    def acks_received(self, count: int) -> None:
        self.counts["acks"] += count

    def ack_store_failed(self) -> None:
        self.counts["ack_store_failures"] += 1
