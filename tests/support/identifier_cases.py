"""Identifiers at the edges of their rules (``pigeonpush.identifiers``):
every part that takes a clientId or a topic is tested against the same lists,
so they cannot drift apart again."""

from __future__ import annotations

#: clientIds every part accepts: the boundaries and each allowed punctuation.
GOOD_CLIENT_IDS = (
    "a",
    "Z",
    "0",
    "x" * 128,
    "device-0001",
    "device_0001",
    "device.0001",
    "tenant:device",
    "A-Z.a_z:0-9",
    "-",
    "...",
)

#: clientIds every part refuses (reglog always did; the SDK took all but the
#: empty and the long one).
BAD_CLIENT_IDS = (
    "",
    "x" * 129,
    "a b",
    "gerät",
    "\u0661\u0662",  # digits of another script
    "\uff46\uff55\uff4c\uff4c",  # fullwidth letters
    "a/b",
    "a{b}",
    "a~b",  # a topic character, not a clientId one
    "a*b",
    "a+b",
    "a@b",
    "a%20b",
    "a\nb",
    "a\x00",
    "line\n",
)

#: Topic names at the edges.
GOOD_TOPICS = ("a", "x" * 128, "news.sport", "a_b", "a~b", "a-b", "0")
BAD_TOPICS = ("", "x" * 129, "a b", "a:b", "*", "{slot}", "caf\u00e9", "a/b", "a\n")
