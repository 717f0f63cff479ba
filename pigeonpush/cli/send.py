"""``pigeonpush send``: submit one notification to the notification API,
to clientIds (``--to``), a topic (``--topic``) or every device (``--broadcast``).

Prints the messageId on success (exit 0); prints the API's error message on
stderr otherwise (exit 1). The key can come from ``PIGEONPUSH_API_KEY``
instead of ``--key``, which keeps it out of the process list.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

KEY_VARIABLE = "PIGEONPUSH_API_KEY"
DEFAULT_API = "http://127.0.0.1:8200"
#: Seconds to wait for the API before giving up.
TIMEOUT = 30.0


class ApiFailure(Exception):
    """The request failed; the message is what the user should read."""


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api", default=DEFAULT_API, help=f"notification API base URL (default {DEFAULT_API})"
    )
    parser.add_argument(
        "--key",
        default=os.environ.get(KEY_VARIABLE),
        help=f"API key (default: ${KEY_VARIABLE})",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    audience = parser.add_mutually_exclusive_group(required=True)
    audience.add_argument(
        "--to", action="append", metavar="CLIENT_ID", help="recipient (repeatable)"
    )
    audience.add_argument("--topic", help="every device subscribed to this topic")
    audience.add_argument(
        "--broadcast", action="store_true", help="every device, also those connecting later"
    )
    parser.add_argument("--title", required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("--ttl", type=int, help="seconds the message stays deliverable")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extras pair (repeatable)",
    )
    parser.add_argument("--idempotency-key", help="makes a retried send return the first answer")
    parser.add_argument(
        "--collapse-key",
        metavar="KEY",
        help="a newer message with the same key replaces this one while it is still pending",
    )
    when = parser.add_mutually_exclusive_group()
    when.add_argument(
        "--at",
        metavar="TIME",
        help="send it then: RFC 3339 with its offset, e.g. 2030-01-31T12:00:00Z "
        "(pigeonpush cancel MESSAGE_ID cancels it until then)",
    )
    when.add_argument("--delay", type=int, metavar="SECONDS", help="send it SECONDS from now")


def notification_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"title": args.title, "text": args.text}
    if args.topic is not None:
        body["topic"] = args.topic
    elif args.broadcast:
        body["broadcast"] = True
    else:
        body["to"] = args.to
    if args.ttl is not None:
        body["ttl"] = args.ttl
    if args.collapse_key is not None:
        body["collapseKey"] = args.collapse_key
    if args.at is not None:
        body["sendAt"] = args.at
    if args.delay is not None:
        body["delay"] = args.delay
    if args.extra:
        extras = {}
        for pair in args.extra:
            key, sep, value = pair.partition("=")
            if not sep:
                raise ApiFailure(f"--extra {pair!r} is not KEY=VALUE")
            extras[key] = value
        body["extras"] = extras
    return body


async def call_api(
    reactor: Any, method: str, url: str, key: str, body: Any = None, headers: Any = None
) -> Any:
    """The answer's JSON for a 2xx; ApiFailure with the API's message otherwise."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(Agent(reactor, pool=pool))
    all_headers: dict[bytes | str, bytes | str] = {
        "Authorization": f"Bearer {key}",
        "Accept": "application/json",
    }
    all_headers.update(headers or {})
    try:
        response = await client.request(
            method, url, json=body, headers=all_headers, timeout=TIMEOUT
        )
        content = await response.content()
    except Exception as e:
        raise ApiFailure(f"cannot reach {url}: {e}") from None
    finally:
        await pool.closeCachedConnections()
    try:
        answer = json.loads(content)
    except ValueError:
        answer = None
    if 200 <= response.code < 300 and answer is not None:
        return answer
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        raise ApiFailure(f"{answer.get('error', response.code)}: {answer['message']}")
    raise ApiFailure(f"the API answered HTTP {response.code}")


def run_command(
    args: argparse.Namespace,
    command: Callable[[Any, argparse.Namespace], Coroutine[Any, Any, str | None]],
) -> int:
    """Run ``command`` under ``react``; print its output, or the error on stderr."""
    if not args.key:
        print(f"pigeonpush: an API key is required (--key or ${KEY_VARIABLE})", file=sys.stderr)
        return 1
    outcome: list[int] = []

    async def main(reactor: Any) -> None:
        try:
            result = await command(reactor, args)
            if result is not None:
                print(result)
            outcome.append(0)
        except ApiFailure as e:
            print(f"pigeonpush: {e}", file=sys.stderr)
            outcome.append(1)

    try:
        react(lambda reactor: ensureDeferred(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return outcome[0] if outcome else 1


async def send(reactor: Any, args: argparse.Namespace) -> str:
    headers = {}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    answer = await call_api(
        reactor,
        "POST",
        args.api.rstrip("/") + "/v1/notifications",
        args.key,
        notification_body(args),
        headers,
    )
    return str(answer["messageId"])


def run(args: argparse.Namespace) -> int:
    return run_command(args, send)
