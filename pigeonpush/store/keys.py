"""The Redis key layout (docs/data-model.rst). The seed's four tables keep
their names as the visible prefix; the queue, device and idempotency keys are
additions.

Every key carries a Redis Cluster hash tag (the part in braces decides the
slot), so that what one script touches lives in one slot: a client's AUTH,
ROUTE, WAIT_ACK, FAILED, DEVICE and COLLAPSE share ``{clientId}``; a
message's MSG_BODY and RECEIPT share ``{messageId}``; each queue shard is a
slot of its own, and so are SCHEDULE (``{SCHEDULE}``) and the uplink keys
(``{UPLINK}``). The single Redis uses the same names."""

from __future__ import annotations

PREFIX = "PIGEON:"
AUTH = PREFIX + "AUTH:"  #: + clientId -> string: the token reglog issued
#: AUTH holds this followed by the token once a session used the token: the
#: token stays the session's (for the conditional cleanup) but binds no other
#: session. Tokens that start with it are refused by ``issue_token``.
BOUND = "bound:"
ROUTE = PREFIX + "ROUTE:"  #: + clientId -> string: RPC address of the push server
WAIT_ACK = PREFIX + "WAIT_ACK:"  #: + clientId -> set of messageIds not yet ACKed
MSG_BODY = PREFIX + "MSG_BODY:"  #: + messageId -> hash (see BODY_FIELDS)
FAILED = PREFIX + "FAILED:"  #: + clientId -> hash: messageId -> failed deliveries
#: + messageId -> hash: RECEIPT_META fields, then clientId -> outcome (a state)
RECEIPT = PREFIX + "RECEIPT:"
DEVICE = PREFIX + "DEVICE:"  #: + clientId -> hash (secretHash, createdAt)
IDEMPOTENCY = PREFIX + "IDEMPOTENCY:"  #: + key -> string: JSON of the first acceptance
QUEUE = PREFIX + "QUEUE:"  #: + {shard} -> stream of accepted notifications
GROUP = "delivery"  #: the consumer group of every QUEUE shard
#: sorted set: messageIds of scheduled messages, scored by their send time
#: (seconds since the epoch; a worker that claims one pushes it a lease ahead).
#: One key with a slot of its own (hash tag ``{SCHEDULE}``).
SCHEDULE = PREFIX + "{SCHEDULE}"
#: + {clientId} -> hash: collapseKey -> the latest messageId sent with it (the
#: client's slot, next to its WAIT_ACK)
COLLAPSE = PREFIX + "COLLAPSE:"

#: MSG_BODY fields (the recipients are in RECEIPT: only the receipt needs them).
BODY_FIELDS = ("title", "text", "extras", "createdAt", "expiresAt")
#: RECEIPT fields that are not outcomes; no clientId starts with ``#``, and
#: outcomes are written with HSETNX, so an outcome never replaces one of these.
RECEIPT_META = ("#recipients", "#createdAt", "#expiresAt")
#: RECEIPT fields of a scheduled message: its send time and collapse key
#: (kept), and the mark that it still waits for its send time (deleted when
#: it is sent or cancelled: whoever deletes it decides the message's fate).
RECEIPT_SEND_AT = "#sendAt"
RECEIPT_COLLAPSE_KEY = "#collapseKey"
RECEIPT_SCHEDULED = "#scheduled"
#: On a Redis Cluster, set while a worker releases a scheduled message in
#: steps (before its first one): a cancel then answers that it is sent.
RECEIPT_RELEASING = "#releasing"
DEVICE_FIELDS = ("secretHash", "createdAt")


def tagged(prefix: str, tag: str) -> str:
    """``prefix{tag}``: the slot is the tag's. Client ids and message ids hold
    no braces; an idempotency key may, and is still one key of one slot."""
    return f"{prefix}{{{tag}}}"


def auth(client_id: str) -> str:
    return tagged(AUTH, client_id)


def route(client_id: str) -> str:
    return tagged(ROUTE, client_id)


def wait_ack(client_id: str) -> str:
    return tagged(WAIT_ACK, client_id)


def msg_body(message_id: str) -> str:
    return tagged(MSG_BODY, message_id)


def receipt(message_id: str) -> str:
    return tagged(RECEIPT, message_id)


def device(client_id: str) -> str:
    return tagged(DEVICE, client_id)


def idempotency(key: str) -> str:
    return tagged(IDEMPOTENCY, key)


def failed(client_id: str) -> str:
    return tagged(FAILED, client_id)


def queue(shard: int) -> str:
    """The stream of queue shard ``shard`` (0 .. shards - 1)."""
    return tagged(QUEUE, str(shard))


def collapse(client_id: str) -> str:
    return tagged(COLLAPSE, client_id)


# -- uplinks (docs/uplink.rst). All uplink keys share the hash tag {UPLINK}: one
# Redis Cluster slot, so the de-duplication and the XADD run in one script.
UPLINK = PREFIX + "{UPLINK}"  #: stream of uplinks (fields: UPLINK_FIELDS)
#: + <len(clientId)>:<clientId>:<uplinkId> -> string: the entry id of the first copy
UPLINK_SEEN = UPLINK + ":SEEN:"
#: list of JSON records of uplinks a webhook gave up on, newest first
UPLINK_DEAD = UPLINK + ":DEAD"
#: the consumer group of UPLINK that webhook senders share
UPLINK_GROUP = "webhook"
UPLINK_FIELDS = ("clientId", "uplinkId", "data", "receivedAt")


def uplink_seen(client_id: str, uplink_id: str) -> str:
    """The de-duplication key; the length prefix keeps ``a:b`` + ``c`` apart
    from ``a`` + ``b:c`` (both ids may hold colons)."""
    return f"{UPLINK_SEEN}{len(client_id)}:{client_id}:{uplink_id}"
