"""From what was sent, what the clients saw and when the faults were, the verdict.

Definitions (docs/reliability.rst repeats them):

accepted
    a notification the batch API answered with a messageId. Its *accept
    time* A is the time in its messageId (a ULID: the notification API's
    clock, in milliseconds, when it created the message).
delivered
    an accepted message that reached its recipient's application callback
    (by the end of the drain period). *lost*: accepted and not delivered.
duplicate
    a second (third...) call of the callback with the same messageId on the
    same client.
latency
    R - A, where R is the time of the first callback call for the message.
reconnect time
    for each fault, each client whose authenticated session ended between
    the fault's start and the next fault's start: the time from that first
    disconnection to its next AUTH_OK. A client with no AUTH_OK after it by
    the end of the run is *not back*.
delay
    R - max(A, S, F), where S is the time the client's session that received
    the message reached AUTH_OK (a message cannot arrive before its client is
    connected), and F is the latest recovery time among the *global* faults
    (Redis restart, ZooKeeper expiry, delivery worker kill) whose window
    [start, recovered] overlaps [A, R] (nothing can be expected to move
    while the store or discovery is away). A push server's fault excuses
    nothing by itself: its clients' own reconnection (S) does. A message is
    *delayed* when its delay exceeds two heartbeats. It is attributed to the
    last fault that started before it was late (before max(A, S, F) plus
    two heartbeats).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from pigeonpush_chaos.records import Event, EventKind, Journal
from pigeonpush_chaos.schedule import FaultKind


@attrs.frozen(slots=True)
class Accepted:
    client: str
    #: The accept time: seconds since the epoch, from the messageId.
    time: float


@attrs.frozen(slots=True)
class FaultWindow:
    kind: FaultKind
    #: What was hit (a daemon's name).
    target: str
    start: float
    #: When the system was whole again (None: it never was within the run).
    recovered: float | None


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of sorted ``values`` (None when empty)."""
    if not values:
        return None
    rank = max(1, math.ceil(fraction * len(values)))
    return values[min(rank, len(values)) - 1]


@attrs.frozen(slots=True)
class Delayed:
    message_id: str
    client: str
    accepted: float
    arrived: float
    ready: float
    #: The last fault started before the message was late (ready + two
    #: heartbeats): the one that held it up (None: none had started).
    fault: int | None

    @property
    def delay(self) -> float:
        return self.arrived - self.ready


@attrs.define(slots=True)
class FaultOutcome:
    window: FaultWindow
    #: clientId -> seconds from its disconnection to its next AUTH_OK (None: not back).
    reconnects: dict[str, float | None] = attrs.field(factory=dict)
    #: Seconds from the fault's start to the last of its clients' AUTH_OK.
    all_back_after: float | None = None
    delayed: int = 0
    #: Failed connection attempts between this fault's start and the next's.
    connect_failures: int = 0
    #: What the slowest client went through, from its disconnection to its return.
    slowest_trail: list[str] = attrs.field(factory=list)

    def back_times(self) -> list[float]:
        return sorted(value for value in self.reconnects.values() if value is not None)

    @property
    def not_back(self) -> list[str]:
        return sorted(client for client, value in self.reconnects.items() if value is None)


@attrs.define(slots=True)
class TransportFigures:
    """The figures of the clients of one transport (``tcp``, ``websocket``)."""

    clients: int = 0
    accepted: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    delayed: int = 0
    #: R - A of the messages delivered to these clients, sorted
    latencies: list[float] = attrs.field(factory=list)
    #: seconds from a disconnection to the next AUTH_OK, every fault, sorted
    reconnects: list[float] = attrs.field(factory=list)
    #: (fault, client) pairs where the client never came back
    not_back: int = 0
    uplinks_acked: int = 0
    uplinks_lost: int = 0

    def to_json(self) -> dict[str, Any]:
        def seconds(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "clients": self.clients,
            "accepted": self.accepted,
            "delivered": self.delivered,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "delayed": self.delayed,
            "latencyP50": seconds(percentile(self.latencies, 0.50)),
            "latencyP99": seconds(percentile(self.latencies, 0.99)),
            "reconnections": len(self.reconnects),
            "reconnectP50": seconds(percentile(self.reconnects, 0.50)),
            "reconnectMax": seconds(self.reconnects[-1] if self.reconnects else None),
            "notBack": self.not_back,
            "uplinksAcked": self.uplinks_acked,
            "uplinksLost": self.uplinks_lost,
        }


@attrs.define(slots=True)
class ChaosReport:
    clients: int
    heartbeat: float
    reconnect_bound: float
    #: When sending started (all relative times in the output count from it).
    origin: float
    messages: int
    accepted: int
    refused: int
    unsent: int
    delivered: int
    lost: list[str]
    lost_to_gave_up: int
    duplicates: int
    unexpected: int
    misdelivered: int
    latencies: list[float]
    delayed: list[Delayed]
    faults: list[FaultOutcome]
    gave_up: dict[str, int]
    disconnects_before_faults: int
    tracebacks: dict[str, list[str]]
    bad_lines: int
    #: Daemons found not running after the drain (not stopped by a fault): exit codes.
    exited: dict[str, int] = attrs.field(factory=dict)
    #: uplinks the server acknowledged (UPLINK_ACK) to the clients
    uplinks_acked: int = 0
    #: acknowledged uplinks missing from GET /v1/uplinks ("clientId uplinkId")
    uplinks_lost: list[str] = attrs.field(factory=list)
    #: uplinks stored more than once (a resend the de-duplication missed)
    uplinks_duplicated: int = 0
    settings: dict[str, Any] = attrs.field(factory=dict)
    #: transport -> the figures of its clients
    transports: dict[str, TransportFigures] = attrs.field(factory=dict)

    @property
    def delay_bound(self) -> float:
        return 2 * self.heartbeat

    def failures(self) -> list[str]:
        """The assertions of the suite that do not hold, one sentence each."""
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} accepted message(s) lost")
        if self.duplicates:
            found.append(f"{self.duplicates} duplicate(s) at the callback")
        if self.delayed:
            found.append(
                f"{len(self.delayed)} message(s) delayed beyond two heartbeats "
                f"({self.delay_bound:g}s)"
            )
        for index, outcome in enumerate(self.faults):
            late = [t for t in outcome.back_times() if t > self.reconnect_bound]
            name = f"fault {index + 1} ({outcome.window.kind.value} {outcome.window.target})"
            if outcome.not_back:
                found.append(f"{name}: {len(outcome.not_back)} client(s) never came back")
            if late:
                found.append(
                    f"{name}: {len(late)} client(s) back after more than "
                    f"{self.reconnect_bound:g}s (max {max(late):.1f}s)"
                )
            if outcome.window.recovered is None:
                found.append(f"{name}: the system did not recover")
        for name, code in sorted(self.exited.items()):
            found.append(f"{name} exited by itself (status {code})")
        if self.refused or self.unsent:
            found.append(f"{self.refused} notification(s) refused, {self.unsent} never accepted")
        if self.uplinks_lost:
            found.append(f"{len(self.uplinks_lost)} acknowledged uplink(s) lost")
        if self.uplinks_duplicated:
            found.append(f"{self.uplinks_duplicated} uplink(s) stored more than once")
        return found

    def to_json(self) -> dict[str, Any]:
        def rel(value: float | None) -> float | None:
            return None if value is None else round(value - self.origin, 3)

        def seconds(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "settings": self.settings,
            "clients": self.clients,
            "messages": {
                "sent": self.messages,
                "accepted": self.accepted,
                "refused": self.refused,
                "unsent": self.unsent,
                "delivered": self.delivered,
                "lost": len(self.lost),
                "lostToClientsThatGaveUp": self.lost_to_gave_up,
                "lostIds": self.lost[:50],
                "duplicates": self.duplicates,
                "unexpected": self.unexpected,
                "misdelivered": self.misdelivered,
            },
            "latency": {
                "p50": seconds(percentile(self.latencies, 0.50)),
                "p99": seconds(percentile(self.latencies, 0.99)),
                "max": seconds(self.latencies[-1] if self.latencies else None),
            },
            "delayed": {
                "bound": self.delay_bound,
                "count": len(self.delayed),
                "max": seconds(max((d.delay for d in self.delayed), default=None)),
                "byFault": dict(Counter(_fault_label(self, d.fault) for d in self.delayed)),
                "examples": [
                    {
                        "messageId": d.message_id,
                        "client": d.client,
                        "accepted": rel(d.accepted),
                        "arrived": rel(d.arrived),
                        "ready": rel(d.ready),
                        "delay": seconds(d.delay),
                    }
                    for d in sorted(self.delayed, key=lambda d: -d.delay)[:20]
                ],
            },
            "faults": [
                {
                    "kind": outcome.window.kind.value,
                    "target": outcome.window.target,
                    "start": rel(outcome.window.start),
                    "recovered": rel(outcome.window.recovered),
                    "clientsDisconnected": len(outcome.reconnects),
                    "notBack": len(outcome.not_back),
                    "reconnectP50": seconds(percentile(outcome.back_times(), 0.5)),
                    "reconnectMax": seconds(max(outcome.back_times(), default=None)),
                    "allBackAfter": seconds(outcome.all_back_after),
                    "delayed": outcome.delayed,
                    "connectFailures": outcome.connect_failures,
                    "slowestTrail": outcome.slowest_trail,
                }
                for outcome in self.faults
            ],
            "gaveUp": self.gave_up,
            "disconnectsBeforeFaults": self.disconnects_before_faults,
            "tracebacks": self.tracebacks,
            "exited": self.exited,
            "badRecordLines": self.bad_lines,
            "uplinks": {
                "acked": self.uplinks_acked,
                "lost": len(self.uplinks_lost),
                "lostIds": self.uplinks_lost[:50],
                "duplicated": self.uplinks_duplicated,
            },
            "transports": {name: t.to_json() for name, t in sorted(self.transports.items())},
            "failures": self.failures(),
        }


def _fault_label(report: ChaosReport, index: int | None) -> str:
    if index is None:
        return "before any fault"
    window = report.faults[index].window
    return f"{index + 1}:{window.kind.value}"


def compute(
    *,
    clients: Sequence[str],
    messages: int,
    accepted: Mapping[str, Accepted],
    refused: int,
    unsent: int,
    journal: Journal,
    faults: Sequence[FaultWindow],
    heartbeat: float,
    reconnect_bound: float,
    origin: float,
    end: float,
    tracebacks: Mapping[str, list[str]] | None = None,
    exited: Mapping[str, int] | None = None,
    settings: Mapping[str, Any] | None = None,
    uplinks_stored: Sequence[tuple[str, str]] = (),
    transports: Mapping[str, str] | None = None,
) -> ChaosReport:
    """The report of one run (``end``: when observation stopped).
    ``uplinks_stored``: (clientId, uplinkId) of every entry the pull API
    gave at the end, repeats included. ``transports``: clientId -> how it
    connects (default: every client over ``tcp``), for the figures per transport."""
    faults = sorted(faults, key=lambda window: window.start)
    authenticated_at: dict[str, list[float]] = {}
    events_of: dict[str, list[Event]] = {}
    for event in journal.events:
        events_of.setdefault(event.client, []).append(event)
        if event.kind is EventKind.AUTHENTICATED:
            authenticated_at.setdefault(event.client, []).append(event.time)
    for times in authenticated_at.values():
        times.sort()
    for events in events_of.values():
        events.sort(key=lambda event: event.time)

    first_arrival: dict[str, float] = {}
    calls: Counter[tuple[str, str]] = Counter()
    unexpected = misdelivered = 0
    for arrival in journal.arrivals:
        calls[(arrival.client, arrival.message_id)] += 1
        known = accepted.get(arrival.message_id)
        if known is None:
            unexpected += 1
            continue
        if known.client != arrival.client:
            misdelivered += 1
            continue
        previous = first_arrival.get(arrival.message_id)
        if previous is None or arrival.time < previous:
            first_arrival[arrival.message_id] = arrival.time
    duplicates = sum(count - 1 for count in calls.values())

    gave_up_clients = journal.gave_up()
    lost = sorted(set(accepted) - set(first_arrival))
    lost_to_gave_up = sum(1 for mid in lost if accepted[mid].client in gave_up_clients)

    starts = [window.start for window in faults]
    global_windows = [
        (window.start, end if window.recovered is None else window.recovered)
        for window in faults
        if window.kind.global_
    ]
    latencies = []
    delayed = []
    bound = 2 * heartbeat
    for message_id, arrived in first_arrival.items():
        message = accepted[message_id]
        latencies.append(arrived - message.time)
        sessions = authenticated_at.get(message.client, [])
        index = bisect.bisect_right(sessions, arrived)
        session_start = sessions[index - 1] if index else message.time
        fault_end = max(
            (stop for start, stop in global_windows if start <= arrived and stop >= message.time),
            default=message.time,
        )
        ready = max(message.time, session_start, fault_end)
        if arrived - ready > bound:
            # The last fault started before the message was already late.
            which = bisect.bisect_right(starts, ready + bound) - 1
            delayed.append(
                Delayed(
                    message_id,
                    message.client,
                    message.time,
                    arrived,
                    ready,
                    which if which >= 0 else None,
                )
            )
    latencies.sort()

    outcomes = [FaultOutcome(window) for window in faults]
    before_faults = 0
    for event in journal.events:
        which = bisect.bisect_right(starts, event.time) - 1
        if event.kind is EventKind.CONNECT_FAILED and which >= 0:
            outcomes[which].connect_failures += 1
        if event.kind is not EventKind.DISCONNECTED or not event.authenticated:
            continue
        if which < 0:
            before_faults += 1
            continue
        outcome = outcomes[which]
        if event.client in outcome.reconnects:
            continue  # its first disconnection in this window counts
        sessions = authenticated_at.get(event.client, [])
        index = bisect.bisect_left(sessions, event.time)
        if index < len(sessions):
            outcome.reconnects[event.client] = sessions[index] - event.time
            back_after = sessions[index] - outcome.window.start
            if outcome.all_back_after is None or back_after > outcome.all_back_after:
                outcome.all_back_after = back_after
        else:
            outcome.reconnects[event.client] = None
    for item in delayed:
        if item.fault is not None:
            outcomes[item.fault].delayed += 1
    for outcome in outcomes:
        outcome.slowest_trail = _slowest_trail(outcome, events_of)

    reasons: Counter[str] = Counter(
        event.reason for event in journal.events if event.kind is EventKind.GAVE_UP
    )
    uplinks_lost = journal.uplinks_acked - set(uplinks_stored)
    per_transport = _per_transport(
        clients,
        transports or {},
        accepted=accepted,
        first_arrival=first_arrival,
        calls=calls,
        lost=lost,
        delayed=delayed,
        outcomes=outcomes,
        uplinks_acked=journal.uplinks_acked,
        uplinks_lost=uplinks_lost,
    )
    return ChaosReport(
        clients=len(clients),
        heartbeat=heartbeat,
        reconnect_bound=reconnect_bound,
        origin=origin,
        messages=messages,
        accepted=len(accepted),
        refused=refused,
        unsent=unsent,
        delivered=len(first_arrival),
        lost=lost,
        lost_to_gave_up=lost_to_gave_up,
        duplicates=duplicates,
        unexpected=unexpected,
        misdelivered=misdelivered,
        latencies=latencies,
        delayed=delayed,
        faults=outcomes,
        gave_up=dict(reasons),
        disconnects_before_faults=before_faults,
        tracebacks=dict(tracebacks or {}),
        bad_lines=journal.bad_lines,
        exited=dict(exited or {}),
        settings=dict(settings or {}),
        uplinks_acked=len(journal.uplinks_acked),
        uplinks_lost=sorted(f"{client} {uplink}" for client, uplink in uplinks_lost),
        uplinks_duplicated=sum(n - 1 for n in Counter(uplinks_stored).values() if n > 1),
        transports=per_transport,
    )


def _per_transport(
    clients: Sequence[str],
    transports: Mapping[str, str],
    *,
    accepted: Mapping[str, Accepted],
    first_arrival: Mapping[str, float],
    calls: Mapping[tuple[str, str], int],
    lost: Iterable[str],
    delayed: Iterable[Delayed],
    outcomes: Iterable[FaultOutcome],
    uplinks_acked: Iterable[tuple[str, str]],
    uplinks_lost: Iterable[tuple[str, str]],
) -> dict[str, TransportFigures]:
    """The run's figures split by the transport of the client they concern."""

    def of(client: str) -> TransportFigures:
        return figures.setdefault(transports.get(client, "tcp"), TransportFigures())

    figures: dict[str, TransportFigures] = {}
    for client in clients:
        of(client).clients += 1
    for message in accepted.values():
        of(message.client).accepted += 1
    for message_id, arrived in first_arrival.items():
        message = accepted[message_id]
        target = of(message.client)
        target.delivered += 1
        target.latencies.append(arrived - message.time)
    for (client, _), count in calls.items():
        of(client).duplicates += count - 1
    for message_id in lost:
        of(accepted[message_id].client).lost += 1
    for item in delayed:
        of(item.client).delayed += 1
    for outcome in outcomes:
        for client, seconds in outcome.reconnects.items():
            if seconds is None:
                of(client).not_back += 1
            else:
                of(client).reconnects.append(seconds)
    for client, _ in uplinks_acked:
        of(client).uplinks_acked += 1
    for client, _ in uplinks_lost:
        of(client).uplinks_lost += 1
    for target in figures.values():
        target.latencies.sort()
        target.reconnects.sort()
    return figures


#: Most lines of a trail.
TRAIL_LINES = 30


def _slowest_trail(outcome: FaultOutcome, events_of: Mapping[str, list[Event]]) -> list[str]:
    """The events of the client slowest to come back (one that never did
    first), from its disconnection to its return, relative to the fault."""
    if not outcome.reconnects:
        return []

    def slowness(name: str) -> float:
        seconds = outcome.reconnects[name]
        return math.inf if seconds is None else seconds

    client = max(outcome.reconnects, key=slowness)
    origin = outcome.window.start
    trail = [f"client {client}"]
    began = False
    for event in events_of.get(client, []):
        if event.time < origin:
            continue
        if not began and event.kind is EventKind.DISCONNECTED and event.authenticated:
            began = True
        if not began:
            continue
        text = " ".join(part for part in (event.server, event.reason) if part)
        trail.append(f"+{event.time - origin:.2f}s {event.kind.name.lower()} {text}")
        if event.kind is EventKind.AUTHENTICATED or len(trail) > TRAIL_LINES:
            break
    return trail


def _cell(value: float | None, unit: str = "s") -> str:
    return "-" if value is None else f"{value:.2f}{unit}"


def format_table(report: ChaosReport) -> str:
    """The human summary."""
    data = report.to_json()
    m = data["messages"]
    lat = data["latency"]
    lines = [
        f"clients {report.clients}, heartbeat {report.heartbeat:g}s",
        f"messages  sent {m['sent']}  accepted {m['accepted']}  refused {m['refused']}"
        f"  unsent {m['unsent']}",
        f"          delivered {m['delivered']}  lost {m['lost']}"
        f" (to clients that gave up: {m['lostToClientsThatGaveUp']})"
        f"  duplicates {m['duplicates']}  unexpected {m['unexpected']}"
        f"  misdelivered {m['misdelivered']}",
        f"latency   p50 {_cell(lat['p50'])}  p99 {_cell(lat['p99'])}  max {_cell(lat['max'])}",
        f"delayed beyond {report.delay_bound:g}s: {len(report.delayed)}"
        + (f" (max {_cell(data['delayed']['max'])})" if report.delayed else ""),
        f"uplinks   acknowledged {report.uplinks_acked}  lost {len(report.uplinks_lost)}"
        f"  stored twice {report.uplinks_duplicated}",
        "",
        f"{'transport':<10} {'clients':>7} {'accepted':>8} {'lost':>5} {'dup.':>5} "
        f"{'delayed':>7} {'lat.p50':>7} {'lat.p99':>7} {'reconn.':>7} {'rec.p50':>7} "
        f"{'rec.max':>7} {'notback':>7} {'uplinks':>7} {'up.lost':>7}",
        *(
            f"{name:<10} {t['clients']:>7} {t['accepted']:>8} {t['lost']:>5} "
            f"{t['duplicates']:>5} {t['delayed']:>7} {_cell(t['latencyP50']):>7} "
            f"{_cell(t['latencyP99']):>7} {t['reconnections']:>7} "
            f"{_cell(t['reconnectP50']):>7} {_cell(t['reconnectMax']):>7} {t['notBack']:>7} "
            f"{t['uplinksAcked']:>7} {t['uplinksLost']:>7}"
            for name, t in data["transports"].items()
        ),
        "",
        f"{'#':>2} {'fault':<26} {'target':<18} {'start':>7} {'recovered':>9} "
        f"{'disc.':>5} {'notback':>7} {'p50':>7} {'max':>7} {'allback':>7} {'delayed':>7}",
    ]
    for index, fault in enumerate(data["faults"]):
        lines.append(
            f"{index + 1:>2} {fault['kind']:<26} {fault['target']:<18} "
            f"{_cell(fault['start']):>7} {_cell(fault['recovered']):>9} "
            f"{fault['clientsDisconnected']:>5} {fault['notBack']:>7} "
            f"{_cell(fault['reconnectP50']):>7} {_cell(fault['reconnectMax']):>7} "
            f"{_cell(fault['allBackAfter']):>7} {fault['delayed']:>7}"
        )
    for index, outcome in enumerate(report.faults):
        late = [t for t in outcome.back_times() if t > report.reconnect_bound]
        if outcome.not_back or late:
            lines.append("")
            lines.append(
                f"fault {index + 1}: {outcome.connect_failures} failed connection attempts; "
                "the slowest client's trail:"
            )
            lines.extend(f"  {line}" for line in outcome.slowest_trail)
    if report.gave_up:
        lines.append("")
        lines.append("clients that gave up:")
        lines.extend(f"  {count} x {reason}" for reason, count in report.gave_up.items())
    if report.disconnects_before_faults:
        lines.append(f"disconnections before the first fault: {report.disconnects_before_faults}")
    lines.append("")
    if report.tracebacks:
        lines.append("tracebacks in daemon logs:")
        for name, summaries in sorted(report.tracebacks.items()):
            lines.append(f"  {name}: {len(summaries)}")
            lines.extend(f"    {text}" for text in _unique(summaries)[:5])
    else:
        lines.append("tracebacks in daemon logs: none")
    failures = report.failures()
    lines.append("")
    lines.append("assertions: " + ("all hold" if not failures else "FAILED"))
    lines.extend(f"  - {failure}" for failure in failures)
    return "\n".join(lines) + "\n"


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, int] = {}
    for item in items:
        seen[item] = seen.get(item, 0) + 1
    return [f"{text} (x{count})" if count > 1 else text for text, count in seen.items()]
