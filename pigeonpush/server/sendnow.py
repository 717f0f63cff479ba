"""PUSH frames straight to a TCP socket when its transport holds nothing unsent.

A Twisted TCP transport buffers every ``write`` and sends it when the reactor
finds the socket writable: per write, an ``epoll_ctl`` to watch for
writability, a wake-up, ``doWrite``, and an ``epoll_ctl`` to stop watching.
For a push server that writes one small frame (or one burst) to each of
thousands of connections, that bookkeeping costs as much as the ``send``
itself. When the transport has nothing buffered, sending at once is what
``doWrite`` would do a moment later, in the same order: the transport's own
``writeSomeData`` sends what the socket takes, and whatever it does not take
(or an error) goes through ``write`` as before, so back-pressure (the
producer's pause) and the close on a broken socket stay Twisted's.

Only a plain ``tcp.Server`` without TLS qualifies; any other transport (TLS,
the WebSocket's message transport, test transports) is written as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.tcp import Server

__all__ = ["write_frames", "write_now"]


def _idle(transport: Any) -> bool:
    """A plain TCP transport, open, with nothing waiting to be sent."""
    return bool(
        type(transport) is Server
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport.dataBuffer
        and not transport._tempDataLen
    )


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sending at once what the socket takes when
    the transport qualifies (see the module)."""
    if _idle(transport):
        sent = transport.writeSomeData(data)
        if type(sent) is int:  # else a ConnectionLost: ``write`` and ``doWrite`` close
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


def write_frames(transport: Any, frames: Sequence[bytes]) -> None:
    """Several encoded frames in order, as one ``write_now`` on a qualifying
    transport, else one ``writeSequence`` (a WebSocket makes a message of
    each)."""
    if _idle(transport):
        write_now(transport, b"".join(frames))
    else:
        transport.writeSequence(frames)
