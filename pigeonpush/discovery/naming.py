"""Kinds, node ids and the znode paths they make.

A node id becomes one ZooKeeper path component, so it is checked here once for
every backend: a static deployment stays movable to ZooKeeper unchanged.
"""

from __future__ import annotations

from pigeonpush.discovery.interface import KINDS

#: Every znode of the project lives under this path (below the hosts' chroot).
ROOT = "/pigeonpush"
MAX_NODE_ID_LENGTH = 255


def _refused_character(char: str) -> bool:
    # The characters ZooKeeper refuses in a path, plus the separator itself.
    code = ord(char)
    return (
        char == "/"
        or code < 0x20
        or 0x7F <= code <= 0x9F
        or 0xD800 <= code <= 0xF8FF
        or code >= 0xFFF0
    )


def check_kind(kind: object) -> str:
    """``kind`` if it is one of KINDS, else ValueError."""
    if kind not in KINDS:
        raise ValueError(f"unknown node kind {kind!r}: expected one of {', '.join(KINDS)}")
    assert isinstance(kind, str)
    return kind


def check_node_id(node_id: object) -> str:
    """``node_id`` if it can name a znode, else ValueError saying why."""
    if not isinstance(node_id, str) or not node_id:
        raise ValueError(f"node id must be a non-empty string, not {node_id!r}")
    if len(node_id) > MAX_NODE_ID_LENGTH:
        raise ValueError(f"node id must be at most {MAX_NODE_ID_LENGTH} characters")
    if node_id in (".", ".."):
        raise ValueError(f"node id must not be {node_id!r}")
    if any(_refused_character(char) for char in node_id):
        raise ValueError(f"node id {node_id!r} must not contain '/' or control characters")
    return node_id


def kind_path(kind: str) -> str:
    """The parent znode of every node of ``kind``."""
    return f"{ROOT}/{kind}"


def node_path(kind: str, node_id: str) -> str:
    """The znode of one node."""
    return f"{ROOT}/{kind}/{node_id}"
