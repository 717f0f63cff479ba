"""The default clientId: the machine's MAC address, as the seed chose.

``uuid.getnode()`` returns the MAC of one network interface as a 48-bit
integer. When it finds none (containers without a network device, some
sandboxes) it returns a random number with the multicast bit set instead: a
clientId made from it changes every time the process starts, so the device
looks new to the server and misses what was queued for its previous id. The
multicast bit gives that case away, and a warning says so.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from twisted.logger import Logger

log = Logger()

#: The multicast bit of the first octet; never set in a real interface's MAC.
_MULTICAST_BIT = 1 << 40


def is_random_node(node: int) -> bool:
    """True when ``node`` is not a real MAC but ``uuid.getnode()``'s random fallback."""
    return bool(node & _MULTICAST_BIT)


def mac_client_id(getnode: Callable[[], int] = uuid.getnode) -> str:
    """The clientId derived from this machine's MAC: 12 lowercase hex digits.

    Logs a warning when no MAC was found and the id is therefore random for
    this process only; pass an explicit clientId (or use registration mode) on
    such machines.
    """
    node = getnode()
    client_id = f"{node:012x}"
    if is_random_node(node):
        log.warn(
            "No MAC address found: the clientId {client_id} is random and will change "
            "when the process restarts; pass an explicit clientId to keep one",
            client_id=client_id,
        )
    return client_id
