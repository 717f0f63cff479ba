"""What the client processes write, one line per observation, and its reader.

A client process appends lines to its own file; the coordinator reads every
file as it grows (``Tail``) into one ``Journal``, and the report is computed
from that journal alone. Lines are space-separated; the last field of ``D``
and ``G`` is free text (the reason). Times are seconds since the epoch, read
from the client process's clock at the moment the SDK told the application::

    M <time> <clientId> <messageId>                 the callback got a message
    C <time> <clientId> <server>                    Connected
    A <time> <clientId> <server>                    Authenticated
    D <time> <clientId> <server> <0|1> <reason>     Disconnected (1: had reached AUTH_OK)
    G <time> <clientId> <reason>                    GaveUp
    F <time> <clientId> <server> <reason>           a connection attempt failed
                                                    (no Connected event follows)
    R <time> <clientId> <outcome>                   a route lookup at reglog ended
                                                    (HTTP status, or the error)
    U <time> <clientId> <uplinkId>                  an uplink was acknowledged
                                                    (UPLINK_ACK: it is stored)
"""

from __future__ import annotations

import enum
from pathlib import Path

import attrs


class EventKind(enum.Enum):
    CONNECTED = "C"
    AUTHENTICATED = "A"
    DISCONNECTED = "D"
    GAVE_UP = "G"
    CONNECT_FAILED = "F"
    ROUTE_LOOKUP = "R"


@attrs.frozen(slots=True)
class Arrival:
    """One call of the application callback."""

    time: float
    client: str
    message_id: str


@attrs.frozen(slots=True)
class UplinkAcked:
    """``send_uplink`` fired: the server said the uplink is stored."""

    time: float
    client: str
    uplink_id: str


@attrs.frozen(slots=True)
class Event:
    """One connection event of one client."""

    time: float
    client: str
    kind: EventKind
    server: str = ""
    #: Disconnected: whether the session had reached AUTH_OK.
    authenticated: bool = False
    reason: str = ""


def _clean(text: str) -> str:
    return " ".join(text.split()) or "-"


def arrival_line(time: float, client: str, message_id: str) -> str:
    return f"M {time:.6f} {client} {message_id}\n"


def uplink_line(time: float, client: str, uplink_id: str) -> str:
    return f"U {time:.6f} {client} {uplink_id}\n"


def event_line(event: Event) -> str:
    head = f"{event.kind.value} {event.time:.6f} {event.client}"
    if event.kind in (EventKind.GAVE_UP, EventKind.ROUTE_LOOKUP):
        return f"{head} {_clean(event.reason)}\n"
    if event.kind is EventKind.DISCONNECTED:
        flag = 1 if event.authenticated else 0
        return f"{head} {event.server} {flag} {_clean(event.reason)}\n"
    if event.kind is EventKind.CONNECT_FAILED:
        return f"{head} {event.server} {_clean(event.reason)}\n"
    return f"{head} {event.server}\n"


class BadRecord(ValueError):
    """A line that is not one of the record forms."""


def parse_line(line: str) -> Arrival | Event | UplinkAcked:
    """One record; BadRecord (naming the line) if it is not one."""
    fields = line.rstrip("\n").split(" ", 5)
    try:
        tag, time_text, client = fields[0], fields[1], fields[2]
        time = float(time_text)
        if tag == "M" and len(fields) == 4:
            return Arrival(time, client, fields[3])
        if tag == "U" and len(fields) == 4:
            return UplinkAcked(time, client, fields[3])
        if tag in ("C", "A") and len(fields) == 4:
            return Event(time, client, EventKind(tag), fields[3])
        if tag == "D" and len(fields) >= 5 and fields[4] in ("0", "1"):
            reason = fields[5] if len(fields) > 5 else ""
            return Event(time, client, EventKind.DISCONNECTED, fields[3], fields[4] == "1", reason)
        if tag == "F" and len(fields) >= 5:
            reason = " ".join(fields[4:])
            return Event(time, client, EventKind.CONNECT_FAILED, fields[3], reason=reason)
        if tag in ("G", "R") and len(fields) >= 4:
            return Event(time, client, EventKind(tag), reason=" ".join(fields[3:]))
    except (IndexError, ValueError):
        pass
    raise BadRecord(f"not a chaos record: {line[:200]!r}")


@attrs.define(slots=True)
class Journal:
    """Everything the clients reported, in the order read."""

    arrivals: list[Arrival] = attrs.field(factory=list)
    events: list[Event] = attrs.field(factory=list)
    #: Lines that did not parse (a process killed mid-write leaves at most one).
    bad_lines: int = 0
    #: clientId -> whether it is online now (after the last event read).
    online: dict[str, bool] = attrs.field(factory=dict)
    #: clientId -> server of its current session.
    server_of: dict[str, str] = attrs.field(factory=dict)
    received: set[tuple[str, str]] = attrs.field(factory=set)
    #: (clientId, uplinkId) of every uplink the server acknowledged
    uplinks_acked: set[tuple[str, str]] = attrs.field(factory=set)
    _gave_up: set[str] = attrs.field(factory=set, alias="_gave_up")

    def add_line(self, line: str) -> None:
        try:
            record = parse_line(line)
        except BadRecord:
            self.bad_lines += 1
            return
        self.add(record)

    def add(self, record: Arrival | Event | UplinkAcked) -> None:
        if isinstance(record, UplinkAcked):
            self.uplinks_acked.add((record.client, record.uplink_id))
            return
        if isinstance(record, Arrival):
            self.arrivals.append(record)
            self.received.add((record.client, record.message_id))
            return
        self.events.append(record)
        if record.kind is EventKind.AUTHENTICATED:
            self.online[record.client] = True
            self.server_of[record.client] = record.server
        elif record.kind in (EventKind.DISCONNECTED, EventKind.GAVE_UP):
            self.online[record.client] = False
            self.server_of.pop(record.client, None)
            if record.kind is EventKind.GAVE_UP:
                self._gave_up.add(record.client)

    def online_count(self) -> int:
        return sum(1 for up in self.online.values() if up)

    def gave_up(self) -> set[str]:
        """The clients that gave up (and were not restarted: none is)."""
        return set(self._gave_up)

    def clients_on(self, server: str) -> int:
        return sum(1 for address in self.server_of.values() if address == server)


class Tail:
    """Reads a growing file's complete lines into a Journal."""

    def __init__(self, path: Path, journal: Journal) -> None:
        self.path = path
        self._journal = journal
        self._offset = 0
        self._partial = b""

    def read(self) -> int:
        """Reads what was appended since the last call; the number of lines."""
        try:
            with open(self.path, "rb") as source:
                source.seek(self._offset)
                data = source.read()
        except FileNotFoundError:
            return 0
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            if line:
                self._journal.add_line(line.decode("utf-8", "replace"))
        return len(lines)
