"""Embedding the PigeonPush SDK in a Twisted application.

A complete program: a MultiService (the application's service tree) holding a
PushClientService, printing each message it receives. Run it against a reglog:

    python examples/embed_client.py --reglog http://127.0.0.1:8100 --client-id demo-1

Ctrl-C stops the services, which closes the connection cleanly.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import task
from twisted.internet.defer import Deferred

from pigeonpush.sdk import (
    ClientEvent,
    GaveUp,
    Message,
    PushClient,
    PushClientService,
)


def on_message(message: Message) -> None:
    """The message callback. Returning normally means "handled": the SDK then
    ACKs the message. Raising (or returning a Deferred that fails) means "not
    handled": no ACK, and the server delivers the message again later. A
    message seen again after it was handled is ACKed without calling this."""
    extras = ", ".join(f"{key}={value}" for key, value in sorted(message.extras.items()))
    print(f"[{message.message_id}] {message.title}: {message.text} {{{extras}}}", flush=True)


def on_event(event: ClientEvent) -> None:
    """Connection events, for the application to show or act upon."""
    print(f"event: {event}", file=sys.stderr, flush=True)
    if isinstance(event, GaveUp):
        print("the client gave up; restart it with client.start()", file=sys.stderr, flush=True)


def make_service(reactor: Any, reglog_url: str, client_id: str | None) -> MultiService:
    """The application's service tree, with the push client in it."""
    application = MultiService()
    client = PushClient(reactor, reglog_url, on_message, client_id=client_id)
    client.on_event(on_event)
    PushClientService(client).setServiceParent(application)
    return application


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Print messages pushed to this device.")
    parser.add_argument("--reglog", required=True, help="reglog base URL")
    parser.add_argument("--client-id", help="clientId (default: from the MAC address)")
    args = parser.parse_args(argv)

    application = make_service(reactor, args.reglog, args.client_id)
    application.startService()
    # stopService closes the connection; the reactor waits for it on shutdown.
    reactor.addSystemEventTrigger("before", "shutdown", application.stopService)
    await Deferred()  # run until Ctrl-C


if __name__ == "__main__":
    task.react(main, [sys.argv[1:]])
