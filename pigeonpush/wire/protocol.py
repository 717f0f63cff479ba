"""The framing both ends of a connection share (docs/protocol.rst).

``FrameProtocol`` splits the byte stream into frames, decodes them and hands
each to ``frameReceived``; the server and the SDK subclass it with their state
machines. Whatever the peer sends, nothing raises into the reactor: a frame
over the limit, an unknown type, a malformed body, or an exception in a
subclass's handler become an ERROR frame, a structured warning and a close of
this connection only.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import IntNStringReceiver
from twisted.python.failure import Failure

from pigeonpush.logsafe import untrusted
from pigeonpush.wire.codec import (
    DEFAULT_MAX_FRAME,
    MAX_MAX_FRAME,
    MIN_MAX_FRAME,
    PREFIX_BYTES,
    DecodeError,
    EncodeError,
    decode,
    encode,
)
from pigeonpush.wire.frames import Error, ErrorCode, Frame

#: An ERROR's text is cut to this many UTF-8 bytes, so that the frame fits the
#: smallest limit a peer may have (MIN_MAX_FRAME).
MAX_ERROR_TEXT_BYTES: Final = 512

_OPEN = 0
_CLOSING = 1  # closeWith/protocolError ran: incoming data is dropped
_LOST = 2  # connectionLost ran

_unpack_prefix = struct.Struct("!I").unpack_from

_T = TypeVar("_T")


class FrameTooLarge(EncodeError):
    """A frame to send is over the connection's limit; nothing was written."""


def _check_max_frame(max_frame: int) -> int:
    if not MIN_MAX_FRAME <= max_frame <= MAX_MAX_FRAME:
        raise ValueError(f"max_frame must be {MIN_MAX_FRAME} to {MAX_MAX_FRAME}, not {max_frame}")
    return max_frame


def _cut(text: str, limit: int) -> str:
    """``text`` as it can travel in ERROR: valid UTF-8, at most ``limit`` bytes."""
    return text.encode(errors="replace")[:limit].decode(errors="ignore")


class FrameProtocol(IntNStringReceiver):
    """Frames in, frames out, and a single way to fail: ``protocolError``.

    ``MAX_LENGTH`` is the frame limit (the length prefix value: type byte plus
    body) in both directions: incoming frames over it are refused with ERROR
    TOO_LARGE, and sending one over it raises ``FrameTooLarge``. A client sets
    it from AUTH_OK.

    Give ``clock`` so that a connection closed after an error is aborted when
    the peer does not read its last frame within ``CLOSE_GRACE`` seconds;
    without it the close waits for the peer as long as the transport does.
    Subclasses that override ``connectionLost`` call this class's.
    """

    __slots__ = ("MAX_LENGTH", "_abort_call", "_state", "_unprocessed", "clock")

    structFormat = "!I"
    prefixLength = PREFIX_BYTES
    log = Logger()

    #: Seconds a closing connection may take to flush before it is aborted.
    CLOSE_GRACE: float = 5.0

    MAX_LENGTH: int
    clock: IReactorTime | None

    def __init__(
        self, max_frame: int = DEFAULT_MAX_FRAME, *, clock: IReactorTime | None = None
    ) -> None:
        self.MAX_LENGTH = _check_max_frame(max_frame)
        self.clock = clock
        self._unprocessed = b""
        self._state = _OPEN
        self._abort_call: IDelayedCall | None = None

    # --- receiving ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """IntNStringReceiver's loop, which also stops as soon as a frame's
        handling closes the connection and keeps nothing of a closing one."""
        if self._state:
            return
        buffer = self._unprocessed + data if self._unprocessed else data
        size = len(buffer)
        offset = 0
        while size - offset >= 4 and not self.paused:
            (length,) = _unpack_prefix(buffer, offset)
            if length > self.MAX_LENGTH:
                self._unprocessed = b""
                self.lengthLimitExceeded(length)
                return
            start = offset + 4
            offset = start + length
            if offset > size:
                offset = start - 4
                break
            self.stringReceived(buffer[start:offset])
            if self._state:
                self._unprocessed = b""
                return
        self._unprocessed = buffer[offset:] if offset else buffer

    def stringReceived(self, string: bytes) -> None:
        """Decode one frame and deliver it; no exception leaves this method."""
        try:
            frame = decode(string)
        except DecodeError as e:
            self.protocolError(e.code, str(e))
            return
        except Exception:
            self.log.failure("Decoding a frame from {peer} failed", peer=self._peer())
            self.protocolError(ErrorCode.INTERNAL, "internal error")
            return
        self.handle(self.frameReceived, frame, type(frame).__name__)

    def handle(self, handler: Callable[[_T], object], value: _T, frame_type: str) -> None:
        """``handler(value)`` for a frame of ``frame_type``; an exception from
        it becomes a logged failure and ERROR INTERNAL, as for every frame
        (a subclass that reads a frame its own way calls this too)."""
        try:
            handler(value)
        except Exception:
            self.log.failure(
                "Handling a {frame_type} frame from {peer} failed",
                frame_type=frame_type,
                peer=self._peer(),
            )
            self.protocolError(ErrorCode.INTERNAL, "internal error")

    def lengthLimitExceeded(self, length: int) -> None:
        self.protocolError(
            ErrorCode.TOO_LARGE,
            f"frame of {length} bytes is over the limit of {self.MAX_LENGTH}",
        )

    def frameReceived(self, frame: Frame) -> None:
        """Handle one decoded frame. Subclasses override this; the base
        expects nothing, so any frame is UNEXPECTED."""
        self.protocolError(ErrorCode.UNEXPECTED, f"{type(frame).__name__} was not expected")

    # --- sending --------------------------------------------------------------

    def sendFrame(self, frame: Frame) -> None:
        """Encode and write one frame (dropped once the connection is closing).

        Raises EncodeError for a frame the wire cannot carry, FrameTooLarge for
        one over ``MAX_LENGTH``; nothing is written then.
        """
        self.sendEncoded(encode(frame))

    def sendEncoded(self, data: bytes) -> None:
        """Write an already encoded frame (length prefix included)."""
        if self._state:
            return
        if len(data) - PREFIX_BYTES > self.MAX_LENGTH:
            raise FrameTooLarge(
                f"frame of {len(data) - PREFIX_BYTES} bytes is over the limit of {self.MAX_LENGTH}"
            )
        self.transport.write(data)  # type: ignore[union-attr]

    # --- closing --------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """True once the connection is closing or lost: frames are no longer
        delivered nor sent."""
        return self._state != _OPEN

    def protocolError(self, code: ErrorCode, text: str) -> None:
        """Send ERROR(code, text) if the peer can still read it, log it, and
        close. Idempotent: only the first call of a connection does anything."""
        if self._state:
            return
        text = _cut(text, MAX_ERROR_TEXT_BYTES)
        self.logProtocolError(code, text)
        self.closeWith(Error(code, text))

    def logProtocolError(self, code: ErrorCode, text: str) -> None:
        """Log the ERROR this side is closing with (a subclass may throttle)."""
        self.log.warn(
            "Closing connection from {peer} with ERROR {code.name}: {text}",
            peer=self._peer(),
            code=code,
            text=untrusted(text),
        )

    def closeWith(self, frame: Frame | None = None) -> None:
        """Send ``frame`` (if given) as the last frame, then close.

        For every ending: ERROR, AUTH_FAIL, KICK. Incoming data is dropped from
        now on; the transport is aborted if it has not closed after
        ``CLOSE_GRACE`` seconds (with a ``clock``). Idempotent.
        """
        if self._state:
            return
        data = encode(frame) if frame is not None else b""
        self._state = _CLOSING
        self._unprocessed = b""
        transport = self.transport
        if transport is None:
            return
        if data and not getattr(transport, "disconnecting", False):
            transport.write(data)
        transport.loseConnection()
        if self.clock is not None:
            self._abort_call = self.clock.callLater(self.CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            self.log.info(
                "Aborting connection from {peer}: not closed after {grace} s",
                peer=self._peer(),
                grace=self.CLOSE_GRACE,
            )
            abort()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._state = _LOST
        self._unprocessed = b""
        if self._abort_call is not None:
            self._abort_call.cancel()
            self._abort_call = None

    def _peer(self) -> str:
        if self.transport is None:
            return "(not connected)"
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None)
        port = getattr(peer, "port", None)
        return f"{host}:{port}" if host is not None and port is not None else str(peer)
