"""``pigeonpush cancel``: cancel a scheduled notification before its send time.

Exit 0 (printing ``cancelled``) once it will never be sent; exit 1 with the
API's error on stderr otherwise: ``already_sent`` when its time came (or it
was not scheduled), ``not_found`` for an unknown messageId.
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from pigeonpush.cli.send import add_common_arguments, call_api, run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("message_id", metavar="MESSAGE_ID", help="the messageId send printed")


async def cancel(reactor: Any, args: argparse.Namespace) -> str:
    url = args.api.rstrip("/") + "/v1/notifications/" + quote(args.message_id, safe="")
    await call_api(reactor, "DELETE", url, args.key)
    return "cancelled"


def run(args: argparse.Namespace) -> int:
    return run_command(args, cancel)
