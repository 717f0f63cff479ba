"""Topic names: one grammar, checked here by every part that takes one (the
notification API, the wire codec, the store, the command line).

A topic is 1 to 128 ASCII letters, digits, ``.``, ``_``, ``~`` or ``-``. That
keeps names readable in URLs without escaping (``/v1/topics/{topic}``), and
free of the characters Redis Cluster hash tags and the store's keys give a
meaning to (``{``, ``}``, ``:``, ``*``). Broadcast is the topic every device
is implicitly subscribed to; its name, ``BROADCAST``, is outside the grammar,
so no application topic can be mistaken for it.
"""

from __future__ import annotations

import re

#: What a topic name may be.
TOPIC = re.compile(r"[A-Za-z0-9._~\-]{1,128}\Z")
TOPIC_RULE = "a string of 1 to 128 letters, digits, '.', '_', '~' or '-'"
#: The longest topic name, in bytes (ASCII: also characters).
MAX_TOPIC = 128
#: The store's name for the broadcast audience (not a valid topic name).
BROADCAST = "*"


def is_topic(name: object) -> bool:
    """Whether ``name`` is a valid topic name (broadcast is not one)."""
    return isinstance(name, str) and TOPIC.match(name) is not None


def check_topic(name: object) -> str:
    """``name`` if it is a valid topic name, else ValueError saying the rule."""
    if not is_topic(name):
        raise ValueError(f"a topic must be {TOPIC_RULE}, not {name!r}")
    assert isinstance(name, str)
    return name


def check_audience(name: object) -> str:
    """A topic name or ``BROADCAST`` (what the store's topic calls take)."""
    if name == BROADCAST:
        return BROADCAST
    return check_topic(name)
