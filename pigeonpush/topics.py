"""The broadcast audience beside topic names.

A topic name's grammar is in :mod:`pigeonpush.identifiers` (``TOPIC``).
Broadcast is the topic every device is implicitly subscribed to; its name,
``BROADCAST``, is outside that grammar, so no application topic can be
mistaken for it.
"""

from __future__ import annotations

from pigeonpush.identifiers import check_topic

#: The store's name for the broadcast audience (not a valid topic name).
BROADCAST = "*"


def check_audience(name: object) -> str:
    """A topic name or ``BROADCAST`` (what the store's topic calls take)."""
    if name == BROADCAST:
        return BROADCAST
    return check_topic(name)
