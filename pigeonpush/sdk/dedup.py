"""A bounded window of recently handled messageIds.

Delivery is at least once: a message whose ACK was lost (the connection
dropped between the callback and the ACK) comes again. Remembering the last
ids handled lets the client ACK such a repeat without running the callback a
second time, in bounded memory.
"""

from __future__ import annotations

from collections import OrderedDict


class RecentIds:
    """The last ``capacity`` ids added, oldest evicted first."""

    __slots__ = ("_capacity", "_ids")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"the duplicate window must hold at least 1 id, not {capacity!r}")
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, message_id: str) -> None:
        ids = self._ids
        if message_id in ids:
            ids.move_to_end(message_id)
            return
        ids[message_id] = None
        if len(ids) > self._capacity:
            ids.popitem(last=False)
