"""``pigeonpush uplinks`` as a user runs it: a real process against a
notification API on Redis served by this test."""

from __future__ import annotations

import json
import os
import sys

import pytest_twisted
from test_cli_send import KEY, Api, api  # noqa: F401  (the fixture)
from twisted.internet.protocol import ProcessProtocol

from pigeonpush.store import Uplink
from support.waiting import wait_for


async def add(target: Api, uplink_id: str, **data: str) -> str:
    uplink = Uplink("dev-1", uplink_id, data, received_at=1_733_486_400.0)
    return (await target.store.add_uplink(uplink, dedup_window=60, max_len=100)).entry_id


@pytest_twisted.ensureDeferred
async def test_uplinks_prints_one_line_each_and_the_cursor(api: Api) -> None:  # noqa: F811
    first = await add(api, "u-1", temp="21.5")
    second = await add(api, "u-2")
    run = await api.run("uplinks", "--api", api.url, "--key", KEY)
    assert run.code == 0, run.err
    lines = [json.loads(line) for line in run.out.splitlines()]
    assert [(u["id"], u["uplinkId"]) for u in lines] == [(first, "u-1"), (second, "u-2")]
    assert lines[0]["data"] == {"temp": "21.5"}
    assert run.err == f"cursor: {second}\n"
    later = await api.run("uplinks", "--api", api.url, "--key", KEY, "--after", first)
    assert [json.loads(line)["id"] for line in later.out.splitlines()] == [second]


@pytest_twisted.ensureDeferred
async def test_a_bad_cursor_or_key_exits_1(api: Api) -> None:  # noqa: F811
    run = await api.run("uplinks", "--api", api.url, "--key", KEY, "--after", "nope")
    assert run.code == 1
    assert "invalid: after: a cursor must be a stream entry id" in run.err
    run = await api.run("uplinks", "--api", api.url, "--key", "wrong-key-0123456789")
    assert run.code == 1
    assert "unauthorized" in run.err


class Following(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data


@pytest_twisted.ensureDeferred
async def test_follow_prints_uplinks_as_they_arrive(api: Api) -> None:  # noqa: F811
    from twisted.internet import reactor

    following = Following()
    environment = {k: v for k, v in os.environ.items() if k != "PIGEONPUSH_API_KEY"}
    process = reactor.spawnProcess(
        following,
        sys.executable,
        [sys.executable, "-m", "pigeonpush.cli", "uplinks", "--api", api.url, "--follow"],
        env={**environment, "PIGEONPUSH_API_KEY": KEY},
    )
    try:
        await add(api, "u-1")
        await wait_for(lambda: b"u-1" in following.out, timeout=20, what="the first line")
        await add(api, "u-2")
        await wait_for(lambda: b"u-2" in following.out, timeout=20, what="the second line")
        ids = [json.loads(line)["uplinkId"] for line in following.out.decode().splitlines()]
        assert ids == ["u-1", "u-2"]
    finally:
        process.signalProcess("KILL")
        await wait_for(lambda: process.pid is None, timeout=10, what="the process to end")
