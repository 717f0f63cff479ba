"""The Redis keys of topics and broadcast (docs/data-model.rst).

Each key carries a Redis Cluster hash tag: a topic's keys share
``{topic:<name>}`` (so its log, meta and subscriber set are one slot), a
device's subscriptions share ``{<clientId>}`` with its other keys. Every
script touches the keys of one of these slots only.
"""

from __future__ import annotations

from pigeonpush.store.keys import PREFIX

#: + {topic:name} -> hash: ``epoch`` (this life of the log), ``trimmed`` (the
#: newest offset trimmed by length). Kept without expiry: a small hash per topic.
TOPIC = PREFIX + "TOPIC:"
#: + {topic:name} -> stream: the topic's messages (TOPIC_FIELDS), trimmed by
#: length and by expiry, the key expiring with its longest-lived message.
TOPIC_LOG = PREFIX + "TOPIC_LOG:"
#: + {topic:name} -> set of subscribed clientIds (counts, DELETE).
SUBSCRIBERS = PREFIX + "SUBSCRIBERS:"
#: + {clientId} -> hash: topic (or ``*``, broadcast) -> position "<epoch> <offset>".
SUBSCRIPTIONS = PREFIX + "SUBSCRIPTIONS:"

#: stream: every topic and broadcast message once more, with its topic, epoch
#: and offset, for the push servers' live fan-out (each server reads it with
#: XREAD from its last id). Trimmed to about FEED_LENGTH entries: a server
#: that falls further behind leaves its devices to the heartbeat's catch-up.
TOPIC_FEED = PREFIX + "TOPIC_FEED"
FEED_LENGTH = 10_000

#: The fields of a log entry, in this order (the scripts read expiresAt at
#: index 12 of the field/value list).
TOPIC_FIELDS = ("messageId", "title", "text", "extras", "createdAt", "expiresAt")


#: + {messageId} -> hash: topic, targeted ('' for broadcast), createdAt,
#: expiresAt, acked; expires with the message's TTL plus the receipt retention.
TOPIC_RECEIPT = PREFIX + "TOPIC_RECEIPT:"


def topic_receipt(message_id: str) -> str:
    return TOPIC_RECEIPT + "{" + message_id + "}"


def _topic_tag(topic: str) -> str:
    return "{topic:" + topic + "}"


def topic_meta(topic: str) -> str:
    return TOPIC + _topic_tag(topic)


def topic_log(topic: str) -> str:
    return TOPIC_LOG + _topic_tag(topic)


def subscribers(topic: str) -> str:
    return SUBSCRIBERS + _topic_tag(topic)


def topic_idempotency(topic: str, key: str) -> str:
    """``PIGEON:IDEMPOTENCY:{topic:name}<key>``: in the topic's slot, so that
    ``publish`` checks and sets it in the script that appends."""
    return PREFIX + "IDEMPOTENCY:" + _topic_tag(topic) + key


def subscriptions(client_id: str) -> str:
    return SUBSCRIPTIONS + "{" + client_id + "}"
