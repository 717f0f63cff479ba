"""``pigeonpush kick``: disconnect a device and revoke its token.

Calls ``DELETE /v1/devices/<clientId>/session`` and prints the answer as JSON
(``disconnected`` says whether a connection was closed); exit 0 either way,
exit 1 with the API's error on stderr.
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from pigeonpush.cli.send import add_common_arguments, call_api, run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("client_id", metavar="CLIENT_ID", help="the device to disconnect")


async def kick(reactor: Any, args: argparse.Namespace) -> str:
    url = args.api.rstrip("/") + "/v1/devices/" + quote(args.client_id, safe="") + "/session"
    answer = await call_api(reactor, "DELETE", url, args.key)
    return json.dumps(answer, indent=2, ensure_ascii=False)


def run(args: argparse.Namespace) -> int:
    return run_command(args, kick)
