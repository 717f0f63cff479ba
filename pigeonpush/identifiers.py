"""The grammar of every name a device or an application server gives us.

One rule per kind of identifier, checked here by every part that takes one:
the SDK (at construction), reglog, the notification API (bodies, paths and
headers), delivery's AMP responder, the push server's AUTH check, the wire
codec (topics) and the store (topics). docs/protocol.rst, the OpenAPI
documents and the JavaScript client (``clients/js``) state the same rules;
``tests/test_identifiers.py`` holds them to it.

``clientId``
    1 to 128 ASCII letters, digits, ``.``, ``_``, ``:`` or ``-``. Safe in a
    URL path segment (``/v1/devices/{clientId}``), in a store key and on a
    command line.
topic
    1 to 128 ASCII letters, digits, ``.``, ``_``, ``~`` or ``-``: readable in
    URLs without escaping (``/v1/topics/{topic}``), and free of the characters
    Redis Cluster hash tags and the store's keys give a meaning to (``{``,
    ``}``, ``:``, ``*``).
``collapseKey``
    The clientId alphabet, 1 to 64 characters.
``Idempotency-Key``
    1 to 128 visible ASCII characters (``!`` to ``~``).

messageIds (ULIDs) have their own module, :mod:`pigeonpush.ids`.
"""

from __future__ import annotations

import re
from typing import TypeGuard

import attrs

__all__ = [
    "CLIENT_ID",
    "COLLAPSE_KEY",
    "IDEMPOTENCY_KEY",
    "MAX_CLIENT_ID",
    "MAX_TOPIC",
    "TOPIC",
    "InvalidIdentifier",
    "Rule",
    "check_client_id",
    "check_topic",
    "is_client_id",
    "is_topic",
]

#: Characters of an error message that quote a refused value.
_SHOWN = 40


@attrs.frozen(slots=True)
class Rule:
    """One identifier's grammar: ``alphabet`` (a regular expression character
    class, ASCII only), 1 to ``max_length`` characters of it."""

    #: The identifier as the APIs and the wire protocol spell it.
    name: str
    #: The characters allowed, as a character class (``[A-Za-z0-9]``).
    alphabet: str
    max_length: int
    #: The alphabet for people: "letters, digits, '.', '_', ':' or '-'".
    described: str
    pattern: re.Pattern[str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        compiled = re.compile(rf"{self.alphabet}{{1,{self.max_length}}}\Z")
        object.__setattr__(self, "pattern", compiled)

    @property
    def text(self) -> str:
        """The rule in words: what follows "clientId must be"."""
        return f"a string of 1 to {self.max_length} ASCII {self.described}"

    def matches(self, value: object) -> TypeGuard[str]:
        """Whether ``value`` is a string that follows the rule."""
        return isinstance(value, str) and self.pattern.match(value) is not None

    def check(self, value: object) -> str:
        """``value`` if it follows the rule, else ``InvalidIdentifier``."""
        if not self.matches(value):
            raise InvalidIdentifier(self, value)
        return value


class InvalidIdentifier(ValueError):
    """A value that breaks an identifier's rule; the message states the rule
    and quotes the value (shortened, escaped by ``repr``)."""

    def __init__(self, rule: Rule, value: object) -> None:
        super().__init__(f"{rule.name} must be {rule.text}, not {_shown(value)}")
        self.rule = rule
        self.value = value


def _shown(value: object) -> str:
    if isinstance(value, str) and len(value) > _SHOWN:
        return f"{value[:_SHOWN]!r}... ({len(value)} characters)"
    return repr(value)


#: A device's id.
CLIENT_ID = Rule("clientId", r"[A-Za-z0-9._:-]", 128, "letters, digits, '.', '_', ':' or '-'")
MAX_CLIENT_ID = CLIENT_ID.max_length
#: A topic name. ``BROADCAST`` (``pigeonpush.topics``) is outside it on purpose.
TOPIC = Rule("topic", r"[A-Za-z0-9._~-]", 128, "letters, digits, '.', '_', '~' or '-'")
MAX_TOPIC = TOPIC.max_length
#: A notification's ``collapseKey``: the clientId alphabet, shorter.
COLLAPSE_KEY = Rule("collapseKey", CLIENT_ID.alphabet, 64, CLIENT_ID.described)
#: The ``Idempotency-Key`` header of the notification API.
IDEMPOTENCY_KEY = Rule("Idempotency-Key", r"[!-~]", 128, "visible characters ('!' to '~')")

# The hot paths (a notification names up to --max-recipients clientIds) call
# these directly: one isinstance and one regular expression match each.
_CLIENT_ID_MATCH = CLIENT_ID.pattern.match
_TOPIC_MATCH = TOPIC.pattern.match


def is_client_id(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a valid clientId."""
    return isinstance(value, str) and _CLIENT_ID_MATCH(value) is not None


def check_client_id(value: object) -> str:
    """``value`` if it is a valid clientId, else ``InvalidIdentifier`` (a
    ValueError) saying the rule."""
    return CLIENT_ID.check(value)


def is_topic(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a valid topic name (broadcast is not one)."""
    return isinstance(value, str) and _TOPIC_MATCH(value) is not None


def check_topic(value: object) -> str:
    """``value`` if it is a valid topic name, else ``InvalidIdentifier``."""
    return TOPIC.check(value)
