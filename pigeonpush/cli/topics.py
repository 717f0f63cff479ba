"""``pigeonpush topics``: manage topic subscriptions through the notification API.

``pigeonpush topics add TOPIC CLIENT_ID...`` and ``remove`` change a topic's
subscribers, ``list CLIENT_ID`` prints a device's topics (one a line),
``delete TOPIC`` deletes a topic. The key comes from ``--key`` or
``PIGEONPUSH_API_KEY``, as for ``send``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from pigeonpush.cli.send import add_common_arguments, call_api, run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_text in (
        ("add", "subscribe devices to a topic"),
        ("remove", "unsubscribe devices from a topic"),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        action.add_argument("topic")
        action.add_argument("client_ids", nargs="+", metavar="CLIENT_ID")
    listing = actions.add_parser("list", help="print a device's topics, one a line")
    listing.add_argument("client_id", metavar="CLIENT_ID")
    deleting = actions.add_parser("delete", help="unsubscribe every device and delete the topic")
    deleting.add_argument("topic")


async def topics(reactor: Any, args: argparse.Namespace) -> str:
    base = args.api.rstrip("/")
    if args.action in ("add", "remove"):
        url = f"{base}/v1/topics/{quote(args.topic, safe='')}/subscribers"
        answer = await call_api(reactor, "POST", url, args.key, {args.action: args.client_ids})
        return json.dumps(answer)
    if args.action == "list":
        url = f"{base}/v1/devices/{quote(args.client_id, safe='')}/topics"
        answer = await call_api(reactor, "GET", url, args.key)
        return "\n".join(answer["topics"])
    url = f"{base}/v1/topics/{quote(args.topic, safe='')}"
    answer = await call_api(reactor, "DELETE", url, args.key)
    return json.dumps(answer)


def run(args: argparse.Namespace) -> int:
    return run_command(args, topics)
