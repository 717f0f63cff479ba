"""The faults a run injects and when.

Faults are injected one at a time, in the order given, while notifications
are being sent. Fault *i* of *n* is due ``lead + i * (send - lead) / n``
seconds after the send starts (evenly over the send), but never before the
previous fault has been recovered from for ``gap`` seconds, so that each
fault's effects (reconnections, delays) are seen apart from the next one's.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs


class FaultKind(enum.Enum):
    #: SIGKILL the push server holding the most clients, start it again on its ports.
    KILL_SERVER = "kill-server"
    #: SIGKILL a delivery worker, start it again.
    KILL_DELIVERY = "kill-delivery"
    #: SIGTERM Redis (append-only file on: it is written out), start it again.
    RESTART_REDIS = "restart-redis"
    #: SIGKILL ZooKeeper, keep it away longer than the session timeout, start
    #: a fresh one on the same port: every session has expired.
    EXPIRE_ZOOKEEPER = "expire-zookeeper"
    #: SIGTERM the push server holding the most clients (graceful drain), start it again.
    TERM_SERVER = "term-server"
    #: SIGKILL ZooKeeper and the push server holding the most clients, start the
    #: server again while ZooKeeper stays away (twice the session timeout + 2 s),
    #: then ZooKeeper (issue 14's stranded-messages reproduction; not a default).
    KILL_SERVER_ZOOKEEPER_DOWN = "kill-server-zookeeper-down"

    @property
    def global_(self) -> bool:
        """Whether the fault stalls the whole system while it lasts (not just
        the clients of one server): its window excuses any message's delay."""
        return self in _GLOBAL


_GLOBAL = frozenset(
    {
        FaultKind.KILL_DELIVERY,
        FaultKind.RESTART_REDIS,
        FaultKind.EXPIRE_ZOOKEEPER,
        FaultKind.KILL_SERVER_ZOOKEEPER_DOWN,
    }
)

#: The issue's schedule, in this order.
DEFAULT_FAULTS = (
    FaultKind.KILL_SERVER,
    FaultKind.KILL_DELIVERY,
    FaultKind.RESTART_REDIS,
    FaultKind.EXPIRE_ZOOKEEPER,
    FaultKind.TERM_SERVER,
)


def parse_faults(text: str) -> list[FaultKind]:
    """``"kill-server,restart-redis"`` -> kinds (repeats allowed, ``""`` for none)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    kinds = []
    for name in names:
        try:
            kinds.append(FaultKind(name))
        except ValueError:
            known = ", ".join(kind.value for kind in FaultKind)
            raise ValueError(f"unknown fault {name!r}; known: {known}") from None
    return kinds


@attrs.frozen(slots=True)
class Planned:
    kind: FaultKind
    #: Seconds after the send starts at which the fault is due.
    due: float


def plan(kinds: Sequence[FaultKind], send_seconds: float, lead: float) -> list[Planned]:
    """Fault *i* of *n* due at ``lead + i * (send_seconds - lead) / n``."""
    if send_seconds < 0 or lead < 0:
        raise ValueError("send_seconds and lead must not be negative")
    if not kinds:
        return []
    step = max(0.0, send_seconds - lead) / len(kinds)
    return [Planned(kind, lead + index * step) for index, kind in enumerate(kinds)]


def start_time(due: float, previous_recovered: float | None, gap: float) -> float:
    """When a fault due at ``due`` starts: not before ``gap`` seconds after the
    previous fault was recovered from (all times on one clock)."""
    if previous_recovered is None:
        return due
    return max(due, previous_recovered + gap)
