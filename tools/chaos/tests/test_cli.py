"""The command line: options reach the run, bad ones stop it with a message."""

from __future__ import annotations

import pytest

from pigeonpush_chaos.cli import options_from, parser


def test_direct_streams_are_off_unless_asked() -> None:
    assert options_from(parser().parse_args([])).direct_streams is False
    options = options_from(parser().parse_args(["--direct-streams"]))
    assert options.direct_streams is True
    assert options.settings()["directStreams"] is True


def test_a_websocket_share_out_of_range_stops_the_run() -> None:
    with pytest.raises(SystemExit, match="--websocket-share must be between 0 and 1"):
        options_from(parser().parse_args(["--websocket-share", "1.5"]))
