"""The command line: targets, bounds, loopback only."""

from __future__ import annotations

import pytest

from pigeonpush_abuse.attacks import ATTACKS, Target, url_address
from pigeonpush_abuse.cli import UsageError, given_target, main, parser
from pigeonpush_abuse.runner import loopback

GIVEN = [
    "--device", "127.0.0.1:7100",
    "--reglog", "http://127.0.0.1:8100",
    "--api", "http://localhost:8200/",
    "--api-key", "k" * 20,
]  # fmt: skip


def test_no_address_means_a_standalone_of_its_own() -> None:
    options = parser().parse_args([])
    assert given_target(options) is None
    assert options.duration == 20 and options.connections == 1100
    assert options.daemon_fd_limit == 1024


def test_a_running_daemon_is_named_by_four_options() -> None:
    target = given_target(parser().parse_args([*GIVEN, "--pid", "1"]))
    assert target == Target(
        ("127.0.0.1", 7100), "http://127.0.0.1:8100", "http://localhost:8200/", "k" * 20
    )
    assert target.api_address == ("localhost", 8200)


def test_a_partial_target_is_refused() -> None:
    with pytest.raises(UsageError, match="needs --api, --api-key too"):
        given_target(parser().parse_args(GIVEN[:4]))


def test_pid_alone_is_refused() -> None:
    with pytest.raises(UsageError, match="--pid and --log go with"):
        given_target(parser().parse_args(["--pid", "12"]))


@pytest.mark.parametrize(
    ("flag", "value", "host"),
    [
        ("--device", "10.0.0.5:7100", "10.0.0.5"),
        ("--reglog", "http://example.com:8100", "example.com"),
        ("--api", "http://192.168.1.2:8200", "192.168.1.2"),
    ],
)
def test_only_loopback_targets(flag: str, value: str, host: str) -> None:
    arguments = list(GIVEN)
    arguments[arguments.index(flag) + 1] = value
    with pytest.raises(
        UsageError, match=f"{flag}: only loopback targets are allowed, not '{host}'"
    ):
        given_target(parser().parse_args(arguments))


def test_main_exits_2_on_a_bad_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--device", "10.1.1.1:7100", *GIVEN[2:]])
    assert exit.value.code == 2
    assert "only loopback targets are allowed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments",
    [
        ["--duration", "0"],
        ["--duration", "7200"],
        ["--connections", "0"],
        ["--connections", "100000"],
        ["--attack", "nonsense"],
        ["--device", "127.0.0.1"],
        ["--max-latency", "x"],
    ],
)
def test_bounds_and_names_are_checked(arguments: list[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        parser().parse_args(arguments)
    assert exit.value.code == 2


def test_addresses_are_read_by_the_one_host_port_rule() -> None:
    ipv6 = ["--device", "[::1]:7100", "--reglog", "http://[::1]/", *GIVEN[4:]]
    target = given_target(parser().parse_args(ipv6))
    assert target is not None and target.device == ("::1", 7100)
    assert target.reglog_address == ("::1", 80)
    assert url_address("https://localhost") == ("localhost", 443)
    with pytest.raises(UsageError, match="--api: 'ftp://h/' is not an http"):
        given_target(parser().parse_args([*GIVEN[:4], "--api", "ftp://h/", *GIVEN[6:]]))
    with pytest.raises(UsageError, match="--reglog: address 'h:0' has no valid port"):
        given_target(parser().parse_args([*GIVEN[:2], "--reglog", "http://h:0", *GIVEN[4:]]))


@pytest.mark.parametrize("device", ["::1:7100", "127.0.0.1:+7100", "a b:7100"])
def test_bad_device_addresses_are_refused(device: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--device", device])
    assert "expected HOST:PORT: address" in capsys.readouterr().err


def test_loopback() -> None:
    assert all(loopback(host) for host in ("127.0.0.1", "127.0.0.9", "::1", "localhost"))
    assert not any(loopback(host) for host in ("10.0.0.1", "0.0.0.0", "example.com", ""))


def test_every_attack_says_what_it_does() -> None:
    from pigeonpush_abuse.attacks import describe

    for name in ATTACKS:
        assert len(describe(name)) > 20, name
