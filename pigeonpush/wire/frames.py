"""The frames of the device <-> push server protocol (see docs/protocol.rst).

Plain immutable values; ``pigeonpush.wire.codec`` turns them into bytes and back.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

#: The protocol version this implementation speaks (sent in AUTH). Version 2
#: is version 1 plus NACK, UPLINK and UPLINK_ACK; version 3 is version 2 plus
#: the topic of a PUSH, SUBSCRIBE, UNSUBSCRIBE, SUBSCRIPTION and MISSED.
PROTOCOL_VERSION = 3
#: The first version in which a client may send NACK.
NACK_VERSION = 2
#: The first version in which a client may send UPLINK.
UPLINK_VERSION = 2
#: The first version whose PUSH may end with the topic it came through.
TOPIC_VERSION = 3
#: Longest uplinkId, in bytes of UTF-8 (an id the device chose; 1 byte at least).
MAX_UPLINK_ID_BYTES = 64
#: Most bytes of UTF-8 in an UPLINK's data: the sum over its keys and values.
#: Half the default frame limit (8192), so that an UPLINK at the limit fits in a
#: default frame with room to spare; a server configured with a smaller
#: ``--max-frame`` refuses larger frames first (ERROR TOO_LARGE).
MAX_UPLINK_DATA_BYTES = 4096
#: Most pairs in an UPLINK's data.
MAX_UPLINK_PAIRS = 64


class FrameType(enum.IntEnum):
    """The type byte that follows the length prefix."""

    AUTH = 0x01
    AUTH_OK = 0x02
    AUTH_FAIL = 0x03
    PING = 0x04
    PONG = 0x05
    PUSH = 0x06
    ACK = 0x07
    KICK = 0x08
    ERROR = 0x09
    NACK = 0x0A  #: protocol version 2 and later
    UPLINK = 0x0B  #: protocol version 2 and later
    UPLINK_ACK = 0x0C  #: protocol version 2 and later
    SUBSCRIBE = 0x0D  #: protocol version 3 and later, client to server
    UNSUBSCRIBE = 0x0E  #: protocol version 3 and later, client to server
    SUBSCRIPTION = 0x0F  #: the answer to either, server to client
    MISSED = 0x10  #: protocol version 3 and later, server to client


class AuthFailCode(enum.IntEnum):
    """Why AUTH was refused; the client goes back to reglog for every code but VERSION."""

    BAD_TOKEN = 1  #: missing, expired or wrong token
    VERSION = 2  #: protocol version not supported
    UNAVAILABLE = 3  #: the server could not check the token (store down); retry later
    FULL = 4  #: the server is at capacity


class KickReason(enum.IntEnum):
    """Why the server ends a session."""

    REPLACED = 1  #: the same clientId logged in again
    SHUTTING_DOWN = 2  #: the server is draining; reconnect through reglog
    POLICY = 3  #: an operator or policy ended the session


class SubscriptionCode(enum.IntEnum):
    """The answer to SUBSCRIBE or UNSUBSCRIBE."""

    OK = 0  #: done (also when nothing changed: it already was so)
    NOT_ALLOWED = 1  #: the operator's --device-topics does not allow this topic
    TOO_MANY = 2  #: the device already holds the most topics it may
    UNAVAILABLE = 3  #: the server could not reach the store; try again later


class ErrorCode(enum.IntEnum):
    """Protocol errors; the sender closes the connection after ERROR."""

    MALFORMED = 1  #: a body that does not decode
    UNKNOWN_TYPE = 2  #: a type byte this side does not know
    TOO_LARGE = 3  #: a length prefix over the negotiated maximum
    UNEXPECTED = 4  #: a frame not allowed in the current state (e.g. PUSH before AUTH_OK)
    TIMEOUT = 5  #: AUTH (or, after it, any frame) did not come in time
    INTERNAL = 6  #: the peer failed; nothing the sender did wrong
    RATE_LIMITED = 7  #: the client kept sending frames faster than the server's limit


@attrs.frozen(slots=True)
class Auth:
    client_id: str
    token: str
    version: int = PROTOCOL_VERSION


@attrs.frozen(slots=True)
class AuthOk:
    heartbeat: float  #: seconds between client PINGs when quiet
    max_frame: int  #: largest frame (length prefix value) either side may send
    ack_window: int  #: un-ACKed PUSHes the server keeps in flight


@attrs.frozen(slots=True)
class AuthFail:
    code: AuthFailCode
    reason: str = ""


@attrs.frozen(slots=True)
class Ping:
    pass


@attrs.frozen(slots=True)
class Pong:
    pass


@attrs.frozen(slots=True)
class Push:
    message_id: str
    title: str
    text: str
    extras: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    #: the topic it came through (version 3; "" for none: to clientIds, or
    #: a session of an older version); ``*`` for broadcast
    topic: str = ""


@attrs.frozen(slots=True)
class Ack:
    message_id: str


@attrs.frozen(slots=True)
class Nack:
    """The application could not handle the PUSH: deliver it again later."""

    message_id: str
    #: seconds the client asks the server to wait before the next attempt;
    #: 0: the server's own backoff (travels as whole milliseconds)
    retry_after: float = 0.0


@attrs.frozen(slots=True)
class Uplink:
    """Data from the device for the application servers (client -> server).

    The device chooses ``uplink_id``; sending the same id again (after a lost
    UPLINK_ACK) stores the uplink once.
    """

    uplink_id: str
    data: Mapping[str, str] = attrs.field(factory=dict, hash=False)


@attrs.frozen(slots=True)
class UplinkAck:
    """The uplink ``uplink_id`` is durable (server -> client)."""

    uplink_id: str


@attrs.frozen(slots=True)
class Kick:
    reason: KickReason
    text: str = ""


@attrs.frozen(slots=True)
class Error:
    code: ErrorCode
    text: str = ""


@attrs.frozen(slots=True)
class Missed:
    """The topic's log no longer holds everything the client has not ACKed
    (trimmed, or lost by the store): some messages of it will never come."""

    topic: str  #: the topic, or ``*`` for broadcast


@attrs.frozen(slots=True)
class Subscribe:
    """Subscribe this device to ``topic`` (answered by SUBSCRIPTION)."""

    request_id: int  #: chosen by the client, echoed in the answer
    topic: str


@attrs.frozen(slots=True)
class Unsubscribe:
    """Unsubscribe this device from ``topic`` (answered by SUBSCRIPTION)."""

    request_id: int
    topic: str


@attrs.frozen(slots=True)
class Subscription:
    """The answer to SUBSCRIBE or UNSUBSCRIBE ``request_id``."""

    request_id: int
    code: SubscriptionCode
    reason: str = ""


Frame = (
    Auth
    | AuthOk
    | AuthFail
    | Ping
    | Pong
    | Push
    | Ack
    | Kick
    | Error
    | Nack
    | Uplink
    | UplinkAck
    | Missed
    | Subscribe
    | Unsubscribe
    | Subscription
)

PING = Ping()
PONG = Pong()
