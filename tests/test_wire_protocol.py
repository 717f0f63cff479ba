"""FrameProtocol: framing, the error paths, closing, and what no input can do to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim

from pigeonpush.wire.codec import (
    DEFAULT_MAX_FRAME,
    ENCODED_PING,
    ENCODED_PONG,
    MIN_MAX_FRAME,
    EncodeError,
    decode,
    encode,
    encode_push,
)
from pigeonpush.wire.frames import PING, PONG, Ack, Error, ErrorCode, Frame, Ping, Push
from pigeonpush.wire.protocol import MAX_ERROR_TEXT_BYTES, FrameProtocol, FrameTooLarge
from support.logcheck import FailureCollector
from support.wire_strategies import frames, untimed

PUSH = Push("01JDZ4Q6M8T3K9V2XNRB5W7HCF", "Title", "Text", {"k": "v"})


class Recorder(FrameProtocol):
    """Keeps what it receives; raises on a Ping whose handler is set to fail."""

    def __init__(
        self, max_frame: int = DEFAULT_MAX_FRAME, clock: IReactorTime | None = None
    ) -> None:
        super().__init__(max_frame, clock=clock)
        self.received: list[Frame] = []
        self.fail_with: Exception | None = None

    def frameReceived(self, frame: Frame) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.received.append(frame)


def connected(
    max_frame: int = DEFAULT_MAX_FRAME, clock: Clock | None = None
) -> tuple[Recorder, StringTransport]:
    protocol = Recorder(max_frame, clock)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def written(transport: StringTransport) -> list[Frame]:
    """Every frame written to the transport, decoded."""
    data = transport.value()
    out = []
    while data:
        length = int.from_bytes(data[:4], "big")
        out.append(decode(data[4 : 4 + length]))
        data = data[4 + length :]
    return out


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    """Log events emitted during the test."""
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(seen.append)


def warnings_of(events: list[LogEvent], protocol: FrameProtocol) -> list[LogEvent]:
    return [
        event
        for event in events
        if event.get("log_source") is protocol and event["log_level"] is LogLevel.warn
    ]


# --- framing -------------------------------------------------------------------


def test_frames_in_one_chunk_are_delivered_in_order() -> None:
    protocol, transport = connected()
    protocol.dataReceived(encode(PING) + encode(PUSH) + encode(Ack("a")) + encode(PONG))
    assert protocol.received == [PING, PUSH, Ack("a"), PONG]
    assert transport.value() == b""
    assert not transport.disconnecting


@untimed
@given(st.lists(frames, min_size=1, max_size=5))
def test_one_byte_chunks_decode_as_the_whole(sent: list[Frame]) -> None:
    data = b"".join(encode(frame) for frame in sent)
    whole, _ = connected()
    whole.dataReceived(data)
    bytewise, _ = connected()
    for index in range(len(data)):
        bytewise.dataReceived(data[index : index + 1])
    assert bytewise.received == whole.received == sent


@untimed
@given(st.lists(frames, min_size=1, max_size=5), st.data())
def test_frames_cut_anywhere_arrive_whole(sent: list[Frame], data: st.DataObject) -> None:
    stream = b"".join(encode(frame) for frame in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    protocol, transport = connected()
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        protocol.dataReceived(stream[start:end])
    assert protocol.received == sent
    assert transport.value() == b""


def test_a_frame_of_exactly_the_limit_is_accepted() -> None:
    protocol, _ = connected(max_frame=MIN_MAX_FRAME)
    push = Push("m", "", "x" * (MIN_MAX_FRAME - 1 - 2 - 1 - 2 - 2 - 2), {})
    data = encode(push)
    assert len(data) - 4 == MIN_MAX_FRAME
    protocol.dataReceived(data)
    assert protocol.received == [push]


def test_a_new_limit_applies_from_the_next_frame() -> None:
    """A client raises or lowers MAX_LENGTH from AUTH_OK, mid-stream."""

    class Lowering(Recorder):
        def frameReceived(self, frame: Frame) -> None:
            super().frameReceived(frame)
            self.MAX_LENGTH = MIN_MAX_FRAME

    protocol = Lowering()
    transport = StringTransport()
    protocol.makeConnection(transport)
    big = Push("m", "", "x" * 2000, {})
    protocol.dataReceived(encode(PING) + encode(big))
    assert protocol.received == [PING]
    [error] = written(transport)
    assert error == Error(ErrorCode.TOO_LARGE, "frame of 2010 bytes is over the limit of 1024")


def test_pausing_holds_frames_until_resumed() -> None:
    protocol, transport = connected()
    protocol.pauseProducing()
    protocol.dataReceived(encode(PING) + encode(PONG))
    assert protocol.received == []
    protocol.resumeProducing()
    assert protocol.received == [PING, PONG]
    assert transport.producerState == "producing"


def test_max_frame_outside_the_protocol_range_is_refused() -> None:
    with pytest.raises(ValueError, match="max_frame must be 1024 to 4294967295, not 1023"):
        FrameProtocol(max_frame=1023)
    with pytest.raises(ValueError, match="not 4294967296"):
        FrameProtocol(max_frame=2**32)


# --- what no input can do ---------------------------------------------------------


def length_prefixed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


stream_pieces = st.one_of(
    frames.map(encode),  # valid frames
    st.binary(max_size=12),  # noise
    st.binary(max_size=40).map(length_prefixed),  # plausible lengths, random bodies
    st.integers(0, 0xFFFFFFFF).map(lambda n: n.to_bytes(4, "big")),  # any length prefix
    st.just(b"\x00\x00\x0f\xff" + b"\x06" * 50),  # a big frame, never completed
)


@settings(untimed, max_examples=300)
@given(st.lists(stream_pieces, max_size=8), st.data())
def test_any_byte_stream_cut_anywhere_never_raises_nor_overbuffers(
    pieces: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    protocol, transport = connected(max_frame=MIN_MAX_FRAME)
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        protocol.dataReceived(stream[start:end])  # never raises
        assert len(protocol._unprocessed) <= protocol.MAX_LENGTH + 4
    replies = written(transport)
    # Either all went well, or exactly one ERROR was sent and the connection closes.
    assert replies == [] or (len(replies) == 1 and isinstance(replies[0], Error))
    assert transport.disconnecting == bool(replies)
    assert protocol.closing == bool(replies)


# --- error paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code", "text"),
    [
        (bytes.fromhex("00000001 2a"), ErrorCode.UNKNOWN_TYPE, "unknown frame type 0x2a"),
        (
            bytes.fromhex("00000003 07 0005"),
            ErrorCode.MALFORMED,
            "ACK: messageId is 5 bytes but only 0 remain",
        ),
        (
            bytes.fromhex("00002001 06"),
            ErrorCode.TOO_LARGE,
            "frame of 8193 bytes is over the limit of 8192",
        ),
        (
            bytes.fromhex("ffffffff"),
            ErrorCode.TOO_LARGE,
            "frame of 4294967295 bytes is over the limit of 8192",
        ),
        (
            bytes.fromhex("00000006 07 0003 61ff62"),
            ErrorCode.MALFORMED,
            "ACK: messageId is not valid UTF-8 (byte 1 of the string)",
        ),
        (
            bytes.fromhex("00000002 04 00"),
            ErrorCode.MALFORMED,
            "PING: 1 byte after the last field",
        ),
        (bytes.fromhex("00000000"), ErrorCode.MALFORMED, "empty frame: no type byte"),
    ],
    ids=["unknown type", "malformed", "oversize", "any prefix", "utf-8", "trailing", "empty"],
)
def test_bad_input_gets_error_a_close_and_a_structured_warning(
    events: list[LogEvent], data: bytes, code: ErrorCode, text: str
) -> None:
    protocol, transport = connected()
    protocol.dataReceived(encode(PING) + data + encode(PONG))
    assert protocol.received == [PING]  # nothing after the bad frame
    assert written(transport) == [Error(code, text)]
    assert transport.disconnecting
    [warning] = warnings_of(events, protocol)
    assert warning["code"] is code
    assert warning["text"] == text
    assert warning["peer"] == "192.168.1.1:54321"
    assert warning["log_namespace"] == "test_wire_protocol.Recorder"
    assert "ERROR" in warning["log_format"] and "{text}" in warning["log_format"]


def test_an_exception_in_frame_received_is_logged_and_ends_the_connection(
    events: list[LogEvent], logged_failures: FailureCollector
) -> None:
    protocol, transport = connected()
    protocol.fail_with = KeyError("boom")
    protocol.dataReceived(encode(PUSH) + encode(PING))
    [failure] = logged_failures.flush(KeyError)
    assert failure.value is protocol.fail_with
    assert written(transport) == [Error(ErrorCode.INTERNAL, "internal error")]
    assert transport.disconnecting
    [failed] = [e for e in events if e.get("log_failure") is not None]
    assert failed["frame_type"] == "Push"
    assert len(warnings_of(events, protocol)) == 1


def test_the_default_handler_refuses_every_frame() -> None:
    protocol = FrameProtocol()
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(ENCODED_PING)
    assert written(transport) == [Error(ErrorCode.UNEXPECTED, "Ping was not expected")]
    assert transport.disconnecting


def test_protocol_error_happens_once(events: list[LogEvent]) -> None:
    protocol, transport = connected()
    protocol.protocolError(ErrorCode.TIMEOUT, "no AUTH within 10 s")
    protocol.protocolError(ErrorCode.UNEXPECTED, "again")
    protocol.dataReceived(bytes.fromhex("00000001 2a"))
    assert written(transport) == [Error(ErrorCode.TIMEOUT, "no AUTH within 10 s")]
    assert len(warnings_of(events, protocol)) == 1


def test_nothing_is_delivered_or_sent_once_closing() -> None:
    protocol, transport = connected()
    protocol.protocolError(ErrorCode.TIMEOUT, "late")
    transport.clear()
    protocol.dataReceived(encode(PING))
    protocol.sendFrame(PONG)
    protocol.sendEncoded(ENCODED_PONG)
    assert protocol.received == []
    assert transport.value() == b""
    assert protocol.closing
    assert protocol._unprocessed == b""


def test_no_error_frame_is_written_to_a_transport_already_closing(
    events: list[LogEvent],
) -> None:
    protocol, transport = connected()
    transport.loseConnection()
    protocol.protocolError(ErrorCode.MALFORMED, "bad")
    assert transport.value() == b""
    assert len(warnings_of(events, protocol)) == 1


def test_protocol_error_before_connecting_is_only_logged(events: list[LogEvent]) -> None:
    protocol = Recorder()
    protocol.protocolError(ErrorCode.INTERNAL, "not connected yet")
    assert protocol.closing
    [warning] = warnings_of(events, protocol)
    assert warning["peer"] == "(not connected)"


def test_a_long_error_text_is_cut_to_fit_any_peer() -> None:
    protocol, transport = connected()
    protocol.protocolError(ErrorCode.INTERNAL, "\u00e9" * 1000)
    [error] = written(transport)
    assert isinstance(error, Error)
    assert error.text == "\u00e9" * (MAX_ERROR_TEXT_BYTES // 2)
    assert len(transport.value()) - 4 <= MIN_MAX_FRAME


def test_an_error_text_that_is_not_valid_unicode_still_goes_out() -> None:
    protocol, transport = connected()
    protocol.protocolError(ErrorCode.INTERNAL, "bad \udc80 text")
    assert written(transport) == [Error(ErrorCode.INTERNAL, "bad ? text")]
    assert transport.disconnecting


def test_close_with_sends_a_last_frame_then_closes() -> None:
    protocol, transport = connected()
    protocol.closeWith(Error(ErrorCode.UNEXPECTED, "bye"))
    protocol.closeWith(PONG)
    assert written(transport) == [Error(ErrorCode.UNEXPECTED, "bye")]
    assert transport.disconnecting


def test_close_with_a_frame_that_cannot_be_encoded_raises_and_keeps_the_connection() -> None:
    protocol, transport = connected()
    with pytest.raises(EncodeError):
        protocol.closeWith(Ack("\ud800"))
    assert not protocol.closing and not transport.disconnecting


# --- closing: the grace before abort --------------------------------------------------


def test_a_peer_that_does_not_read_is_aborted_after_the_grace() -> None:
    clock = Clock()
    protocol, transport = connected(clock=clock)
    protocol.protocolError(ErrorCode.MALFORMED, "bad")
    clock.advance(FrameProtocol.CLOSE_GRACE - 0.001)
    assert not transport.disconnected
    clock.advance(0.001)
    assert transport.disconnected  # abortConnection was called


def test_a_connection_that_closes_in_time_is_not_aborted() -> None:
    clock = Clock()
    protocol, transport = connected(clock=clock)
    protocol.protocolError(ErrorCode.MALFORMED, "bad")
    protocol.connectionLost(Failure(ConnectionError("closed")))
    assert clock.getDelayedCalls() == []
    clock.advance(FrameProtocol.CLOSE_GRACE)
    assert not transport.disconnected


def test_without_a_clock_the_close_waits_for_the_transport() -> None:
    protocol, transport = connected()
    protocol.protocolError(ErrorCode.MALFORMED, "bad")
    assert transport.disconnecting and not transport.disconnected


def test_data_after_the_connection_is_lost_is_ignored() -> None:
    protocol, _ = connected()
    protocol.dataReceived(encode(PING)[:3])
    protocol.connectionLost(Failure(ConnectionError("gone")))
    protocol.dataReceived(encode(PING)[3:] + encode(PONG))
    assert protocol.received == []
    assert protocol.closing


# --- sending -------------------------------------------------------------------------


def test_send_frame_writes_its_encoding() -> None:
    protocol, transport = connected()
    protocol.sendFrame(PUSH)
    protocol.sendEncoded(encode_push("id", "t", "x", {}))
    assert written(transport) == [PUSH, Push("id", "t", "x", {})]


def test_a_frame_over_the_limit_is_refused_before_anything_is_written() -> None:
    protocol, transport = connected(max_frame=MIN_MAX_FRAME)
    big = Push("m", "", "x" * MIN_MAX_FRAME, {})
    with pytest.raises(FrameTooLarge, match="frame of 1034 bytes is over the limit of 1024"):
        protocol.sendFrame(big)
    with pytest.raises(FrameTooLarge):
        protocol.sendEncoded(encode(big))
    assert transport.value() == b""
    assert not protocol.closing


def test_a_frame_the_wire_cannot_carry_raises_encode_error() -> None:
    protocol, transport = connected()
    with pytest.raises(EncodeError, match="messageId is not encodable"):
        protocol.sendFrame(Ack("\udc80"))
    assert transport.value() == b""


# --- two ends --------------------------------------------------------------------------


class Ponger(Recorder):
    def frameReceived(self, frame: Frame) -> None:
        super().frameReceived(frame)
        if isinstance(frame, Ping):
            self.sendEncoded(ENCODED_PONG)


def test_two_ends_talk_and_an_error_reaches_the_peer_before_the_close() -> None:
    server = Ponger()
    client = Recorder()
    _, _, pump = iosim.connectedServerAndClient(lambda: server, lambda: client)
    client.sendFrame(PING)
    pump.flush()
    assert client.received == [PONG]
    client.transport.write(bytes.fromhex("00000001 63"))  # type: ignore[union-attr]
    pump.flush()
    assert client.received == [PONG, Error(ErrorCode.UNKNOWN_TYPE, "unknown frame type 0x63")]
    assert server.closing and client.closing  # both ends saw the connection go


@pytest_twisted.ensureDeferred
async def test_over_tcp_garbage_closes_only_that_connection() -> None:
    """Real sockets: the ERROR is flushed before the close, and the other
    connection keeps working."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString

    from support.waiting import wait_for

    servers: list[Ponger] = []

    def build() -> Ponger:
        protocol = Ponger(clock=reactor)
        servers.append(protocol)
        return protocol

    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        Factory.forProtocol(build)
    )
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        good = await endpoint.connect(Factory.forProtocol(Recorder))

        class Raw(Protocol):
            received = b""
            lost = False

            def dataReceived(self, data: bytes) -> None:
                self.received += data

            def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
                self.lost = True

        raw = await endpoint.connect(Factory.forProtocol(Raw))
        raw.transport.write(b"\x7f\xff\xff\xff" + b"x" * 100)
        await wait_for(lambda: raw.lost, timeout=10, what="the server closing the bad connection")
        assert decode(raw.received[4:]) == Error(
            ErrorCode.TOO_LARGE, "frame of 2147483647 bytes is over the limit of 8192"
        )
        good.sendFrame(PING)
        await wait_for(lambda: good.received, timeout=10, what="PONG on the good connection")
        assert good.received == [PONG]
        good.transport.loseConnection()
        await wait_for(lambda: all(s.closing for s in servers), timeout=10, what="server close")
    finally:
        await port.stopListening()


def test_the_logged_error_text_is_escaped_and_cut_the_sent_one_is_not(
    events: list[LogEvent],
) -> None:
    protocol, transport = connected()
    text = "forged\n2026-01-01 line\x1b[0m" + "x" * 400

    protocol.protocolError(ErrorCode.MALFORMED, text)

    assert written(transport) == [Error(ErrorCode.MALFORMED, text)]
    [warning] = warnings_of(events, protocol)
    assert warning["text"].startswith("forged\\n2026-01-01 line\\x1b[0m")
    assert warning["text"].isprintable() and len(warning["text"]) < 200
