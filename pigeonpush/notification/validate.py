"""Validation of one notification request item: pure, no I/O.

``validate(data, limits)`` takes the decoded JSON of one notification and
returns either a ``Draft`` (what to store) or the list of what is wrong with
it, each naming its field. The limits keep every accepted message small
enough for one PUSH frame (see ``Limits.frame_problem``), so a message that
got a 202 can always be delivered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

import attrs

from pigeonpush.compactjson import dumps as compact_json
from pigeonpush.http import echo
from pigeonpush.identifiers import CLIENT_ID, COLLAPSE_KEY, TOPIC, is_client_id, is_topic
from pigeonpush.topics import BROADCAST

#: The fields a notification may have; anything else is refused (a typo such
#: as "tll" must not silently become the default TTL).
FIELDS = frozenset(
    {"to", "topic", "broadcast", "title", "text", "ttl", "extras", "collapseKey", "sendAt", "delay"}
)
#: An RFC 3339 date-time (with its offset: a time without one means nothing).
RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:[Zz]|([+-])(\d{2}):(\d{2}))\Z"
)
#: The error of a notification that names no audience, or more than one.
AUDIENCE_RULE = 'a notification names exactly one audience: "to", "topic" or "broadcast": true'
#: Fields only a notification ``to`` clientIds may have: a topic or broadcast
#: message is published to its log at once and never replaces another.
TO_ONLY_FIELDS = ("collapseKey", "sendAt", "delay")
#: A messageId as the wire protocol carries it (ULID, 26 characters).
MESSAGE_ID_LENGTH = 26


@attrs.frozen(slots=True)
class Limits:
    """The options that bound one notification. Sizes are UTF-8 bytes."""

    default_ttl: int = 86_400
    max_ttl: int = 2_419_200
    max_recipients: int = 1000
    max_title: int = 256
    max_text: int = 2048
    #: bytes of the extras encoded as compact JSON (``{"k":"v"}``)
    max_extras: int = 1024

    def problems(self, max_frame: int | None = None) -> list[str]:
        """What is inconsistent about these limits (empty when they are usable)."""
        found = []
        if self.max_ttl < 1:
            found.append("the maximum TTL must be at least 1 second")
        if not 1 <= self.default_ttl <= self.max_ttl:
            found.append(
                f"the default TTL ({self.default_ttl}s) must be between 1 and the "
                f"maximum TTL ({self.max_ttl}s)"
            )
        if self.max_recipients < 1:
            found.append("the recipient limit must be at least 1")
        for name in ("max_title", "max_text", "max_extras"):
            if getattr(self, name) < 0:
                found.append(f"{name} must not be negative")
        if self.max_extras < 2:
            found.append("max_extras must be at least 2 (the size of {})")
        frame = self.frame_problem(max_frame)
        if frame:
            found.append(frame)
        return found

    def largest_push_frame(self) -> int:
        """The largest PUSH frame (length prefix value) a valid message can make.

        A PUSH is a fixed part (type byte, messageId and the length fields,
        measured on the codec with empty strings) plus the title and text bytes
        plus the extras. The extras cost less on the wire than in compact JSON
        as long as one pair costs at most 6 bytes of framing on the wire, which
        is what compact JSON spends on ``"k":"v",`` around each pair; so the
        JSON size bounds the wire size.
        """
        base, pair = push_frame_overheads()
        if pair > 6:  # pragma: no cover - a codec change that breaks the bound
            raise RuntimeError(f"a PUSH extras pair costs {pair} bytes; the bound needs <= 6")
        return base + self.max_title + self.max_text + self.max_extras

    def frame_problem(self, max_frame: int | None = None) -> str | None:
        from pigeonpush.wire.codec import DEFAULT_MAX_FRAME

        limit = DEFAULT_MAX_FRAME if max_frame is None else max_frame
        largest = self.largest_push_frame()
        if largest > limit:
            return (
                f"title, text and extras limits allow a PUSH frame of {largest} bytes, "
                f"over the {limit}-byte frame limit"
            )
        return None


def push_frame_overheads() -> tuple[int, int]:
    """(bytes of a PUSH with empty title, text and extras; bytes one extras pair adds)."""
    from pigeonpush.wire.codec import encode_push

    message_id = "0" * MESSAGE_ID_LENGTH
    empty = len(encode_push(message_id, "", "", {})) - 4
    one_pair = len(encode_push(message_id, "", "", {"": ""})) - 4
    return empty, one_pair - empty


@attrs.frozen(slots=True)
class Draft:
    """A valid notification, before it gets its messageId and timestamps."""

    recipients: tuple[str, ...]
    title: str
    text: str
    ttl: int
    extras: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    collapse_key: str | None = None
    #: ``sendAt``: seconds since the epoch (None: see ``delay``)
    send_at: float | None = None
    #: ``delay``: seconds after acceptance (None: send now, or at ``send_at``)
    delay: int | None = None
    #: the topic it goes to (``topics.BROADCAST`` for every device); then
    #: ``recipients`` is empty
    topic: str | None = None

    def send_time(self, now: float) -> float | None:
        """When to send it: None for now (a ``sendAt`` already past is now)."""
        if self.delay is not None:
            return now + self.delay
        if self.send_at is not None and self.send_at > now:
            return self.send_at
        return None


@attrs.frozen(slots=True)
class Invalid:
    """One thing wrong with a request item; ``field`` names it (``to[2]``)."""

    field: str
    message: str


def validate(data: object, limits: Limits, now: float | None = None) -> Draft | list[Invalid]:
    """Check one notification; a Draft, or every problem found (never empty).
    ``now`` (seconds since the epoch) bounds ``sendAt`` to the maximum TTL ahead."""
    if not isinstance(data, dict):
        return [Invalid("", "a notification must be a JSON object")]
    problems: list[Invalid] = []
    for name in sorted(set(data) - FIELDS):
        problems.append(Invalid(echo(name), f'unknown field "{echo(name)}"'))
    recipients: tuple[str, ...] | None = ()
    before = len(problems)
    topic = _audience(data, problems)
    if topic is None and len(problems) == before:
        recipients = _recipients(data.get("to"), limits, problems)
    title = _text(data, "title", limits.max_title, problems)
    text = _text(data, "text", limits.max_text, problems)
    ttl = _ttl(data["ttl"], limits, problems) if "ttl" in data else limits.default_ttl
    extras = _extras(data.get("extras", {}), limits, problems)
    collapse_key = _collapse_key(data["collapseKey"], problems) if "collapseKey" in data else None
    send_at, delay = _send_time(data, limits, now, problems)
    if topic is not None:
        for name in TO_ONLY_FIELDS:
            if name in data:
                problems.append(
                    Invalid(
                        name,
                        f"{name} applies only to a notification to clientIds, "
                        "not to a topic or broadcast",
                    )
                )
    if problems:
        return problems
    assert recipients is not None and title is not None and text is not None
    return Draft(recipients, title, text, ttl, extras, collapse_key, send_at, delay, topic)


def _collapse_key(value: object, problems: list[Invalid]) -> str | None:
    if not COLLAPSE_KEY.matches(value):
        problems.append(Invalid("collapseKey", f"collapseKey must be {COLLAPSE_KEY.text}"))
        return None
    return value


def _send_time(
    data: dict[str, object], limits: Limits, now: float | None, problems: list[Invalid]
) -> tuple[float | None, int | None]:
    """(``sendAt`` as seconds since the epoch, ``delay``): at most one of them."""
    if "sendAt" in data and "delay" in data:
        problems.append(Invalid("delay", "give sendAt or delay, not both"))
        return None, None
    if "delay" in data:
        value = data["delay"]
        rule = f"delay must be a whole number of seconds from 1 to {limits.max_ttl}"
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (isinstance(value, float) and not value.is_integer())
            or not 1 <= value <= limits.max_ttl
        ):
            problems.append(Invalid("delay", rule))
            return None, None
        return None, int(value)
    if "sendAt" not in data:
        return None, None
    value = data["sendAt"]
    rule = "sendAt must be an RFC 3339 date-time with its offset, e.g. 2030-01-31T12:00:00Z"
    match = RFC3339.match(value) if isinstance(value, str) else None
    if match is None:
        problems.append(Invalid("sendAt", rule))
        return None, None
    # By hand rather than datetime.fromisoformat: Python 3.10's takes neither
    # "Z" nor more than six digits of a second.
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    try:
        offset = timedelta(hours=int(off_h), minutes=int(off_m)) if sign else timedelta()
        zone = timezone(-offset if sign == "-" else offset)
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=zone
        )
    except ValueError:  # a 31st of February, an hour 25, an offset of 24:00
        problems.append(Invalid("sendAt", rule))
        return None, None
    send_at = moment.timestamp() + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)
    if now is not None and send_at - now > limits.max_ttl:
        problems.append(
            Invalid("sendAt", f"sendAt is more than the maximum TTL ({limits.max_ttl}s) ahead")
        )
        return None, None
    return send_at, None


def _audience(data: dict[str, object], problems: list[Invalid]) -> str | None:
    """The topic a notification goes to (BROADCAST for ``broadcast: true``),
    or None when it goes ``to`` clientIds (or names none: "to is required");
    a problem when it names more than one."""
    broadcast = data.get("broadcast", False)
    if not isinstance(broadcast, bool):
        problems.append(Invalid("broadcast", "broadcast must be true (or absent)"))
        return None
    named = [name for name in ("to", "topic") if name in data] + (
        ["broadcast"] if broadcast else []
    )
    if len(named) > 1:
        problems.append(Invalid(named[1], AUDIENCE_RULE))
        return None
    if broadcast:
        return BROADCAST
    if "topic" in data:
        if not is_topic(data["topic"]):
            problems.append(Invalid("topic", f"topic must be {TOPIC.text}"))
        return str(data["topic"])
    return None


def utf8_size(text: str) -> int | None:
    """Bytes of ``text`` in UTF-8, or None if it holds a lone surrogate
    (JSON allows ``"\\ud800"``; no wire frame can carry it)."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def _recipients(value: object, limits: Limits, problems: list[Invalid]) -> tuple[str, ...] | None:
    if value is None:
        problems.append(Invalid("to", "to is required: a list of clientIds"))
        return None
    if not isinstance(value, list):
        problems.append(Invalid("to", "to must be a list of clientIds"))
        return None
    if not value:
        problems.append(Invalid("to", "to must name at least one clientId"))
        return None
    if len(value) > limits.max_recipients:
        problems.append(
            Invalid("to", f"to names {len(value)} clientIds; at most {limits.max_recipients}")
        )
        return None
    for index, client_id in enumerate(value):
        if not is_client_id(client_id):
            problems.append(Invalid(f"to[{index}]", f"each clientId must be {CLIENT_ID.text}"))
            return None
    # dict keeps the first occurrence's place: duplicates are dropped in order.
    return tuple(dict.fromkeys(value))


def _text(data: dict[str, object], name: str, limit: int, problems: list[Invalid]) -> str | None:
    value = data.get(name)
    if value is None:
        problems.append(Invalid(name, f"{name} is required: a string"))
        return None
    if not isinstance(value, str):
        problems.append(Invalid(name, f"{name} must be a string"))
        return None
    size = utf8_size(value)
    if size is None:
        problems.append(Invalid(name, f"{name} must be valid Unicode (no lone surrogates)"))
        return None
    if size > limit:
        problems.append(Invalid(name, f"{name} is {size} bytes in UTF-8; at most {limit}"))
        return None
    return value


def _ttl(value: object, limits: Limits, problems: list[Invalid]) -> int:
    # Absent means the default; null is not an integer (the schema's type).
    rule = f"ttl must be a whole number of seconds from 1 to {limits.max_ttl}"
    # bool is an int in Python, but true is no TTL.
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(Invalid("ttl", rule))
        return 0
    if isinstance(value, float) and not value.is_integer():
        problems.append(Invalid("ttl", rule))
        return 0
    ttl = int(value)
    if not 1 <= ttl <= limits.max_ttl:
        problems.append(Invalid("ttl", rule))
        return 0
    return ttl


def _extras(value: object, limits: Limits, problems: list[Invalid]) -> Mapping[str, str]:
    # Absent means none; null is not an object (the schema's type) and is refused.
    if not isinstance(value, dict):
        problems.append(Invalid("extras", "extras must be an object of string values"))
        return {}
    for key, item in value.items():
        if not isinstance(item, str):
            problems.append(Invalid(f"extras.{echo(key)}", "extras values must be strings"))
            return {}
        if utf8_size(key) is None or utf8_size(item) is None:
            problems.append(
                Invalid(f"extras.{echo(key)}", "extras must be valid Unicode (no lone surrogates)")
            )
            return {}
    size = len(compact_json(value).encode("utf-8"))
    if size > limits.max_extras:
        problems.append(
            Invalid("extras", f"extras are {size} bytes as JSON; at most {limits.max_extras}")
        )
        return {}
    return dict(value)
