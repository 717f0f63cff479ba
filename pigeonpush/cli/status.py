"""``pigeonpush status``: print a notification's delivery receipt as JSON.

Exit 0 with the receipt on stdout; exit 1 with the API's error on stderr (an
unknown messageId, or one whose receipt retention ended, is ``not_found``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from pigeonpush.cli.send import add_common_arguments, call_api, run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("message_id", metavar="MESSAGE_ID", help="the messageId send printed")


async def status(reactor: Any, args: argparse.Namespace) -> str:
    url = args.api.rstrip("/") + "/v1/notifications/" + quote(args.message_id, safe="")
    answer = await call_api(reactor, "GET", url, args.key)
    return json.dumps(answer, indent=2, ensure_ascii=False)


def run(args: argparse.Namespace) -> int:
    return run_command(args, status)
