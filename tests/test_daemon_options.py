"""What every plugin's Options share (``DaemonOptions``), the device backlog,
the capacity the open-files limit allows, the HTTP limits' wiring and the
JSON log format. Subprocess runs of twistd are in test_daemon_startup.py."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from twisted.logger import Logger, LogLevel
from twisted.python import usage
from twisted.python.failure import Failure

from pigeonpush import logformat, options
from pigeonpush.delivery import tap as delivery_tap
from pigeonpush.http import JsonSite
from pigeonpush.notification import tap as notification_tap
from pigeonpush.reglog import tap as reglog_tap
from pigeonpush.server import tap as server_tap
from pigeonpush.standalone import tap as standalone_tap
from support.reactors import MemoryReactorClock

KEY = "a-key-of-16-chars-or-more"
PLUGINS: dict[str, tuple[type[usage.Options], list[str]]] = {
    "pigeon-server": (server_tap.Options, []),
    "pigeon-reglog": (reglog_tap.Options, []),
    "pigeon-delivery": (delivery_tap.Options, []),
    "pigeon-notification": (notification_tap.Options, ["--api-key", KEY]),
    "pigeon-standalone": (standalone_tap.Options, []),
}


class Twistd(usage.Options):
    """Stands for twistd's ServerOptions: the plugins as subcommands, and the
    keys install_log_format reads."""

    optFlags = [["nodaemon", "n", ""], ["syslog", None, ""]]
    optParameters = [["logfile", "l", None, ""], ["logger", None, None, ""]]
    subCommands = [(name, None, plugin, "") for name, (plugin, _) in PLUGINS.items()]


# -- one line and status 1 under twistd; UsageError on its own ---------------------------


@pytest.mark.parametrize("name", PLUGINS)
def test_a_bad_value_under_twistd_is_one_line_naming_the_plugin(name: str) -> None:
    _, required = PLUGINS[name]
    with pytest.raises(SystemExit) as exited:
        Twistd().parseOptions([name, *required, "--log-format", "xml"])
    assert exited.value.code == f"{name}: --log-format must be text or json, not 'xml'"
    with pytest.raises(SystemExit) as exited:
        Twistd().parseOptions([name, *required, "--no-such-option"])
    assert exited.value.code == f"{name}: option --no-such-option not recognized"


@pytest.mark.parametrize("name", PLUGINS)
def test_on_its_own_a_bad_value_is_a_usage_error(name: str) -> None:
    plugin, required = PLUGINS[name]
    with pytest.raises(usage.UsageError, match="--log-format must be text or json"):
        plugin().parseOptions([*required, "--log-format", "xml"])


def test_a_part_of_standalone_is_named_as_standalone() -> None:
    with pytest.raises(SystemExit) as exited:
        Twistd().parseOptions(["pigeon-standalone", "--heartbeat", "0"])
    assert str(exited.value.code).startswith("pigeon-standalone: --heartbeat")


def test_a_short_api_key_names_its_option_and_the_limit() -> None:
    with pytest.raises(SystemExit) as exited:
        Twistd().parseOptions(["pigeon-notification", "--api-key", "short"])
    assert exited.value.code == (
        "pigeon-notification: --api-key: an API key must have at least 16 characters"
    )
    assert "(repeatable; 16+ printable ASCII)" in " ".join(str(notification_tap.Options()).split())


# -- --log-format ------------------------------------------------------------------------


def test_json_log_format_sets_twistds_observer_factory(tmp_path: Any) -> None:
    twistd = Twistd()
    twistd.parseOptions(["--logfile", str(tmp_path / "x.log"), "pigeon-reglog"])
    assert twistd["logger"] is None  # text: twistd's own
    twistd = Twistd()
    twistd.parseOptions(
        ["--logfile", str(tmp_path / "x.log"), "pigeon-reglog", "--log-format", "json"]
    )
    assert twistd["logger"] == "pigeonpush.logformat.twistd_observer"
    observer = logformat.twistd_observer()
    observer({"log_format": "hello {who}", "who": "you", "log_level": LogLevel.info,
              "log_namespace": "test", "log_time": 0.0})  # fmt: skip
    (line,) = (tmp_path / "x.log").read_text().splitlines()
    assert json.loads(line)["text"] == "hello you"


def test_a_logger_or_syslog_of_twistds_own_is_kept() -> None:
    twistd = Twistd()
    twistd.parseOptions(["--syslog", "pigeon-reglog", "--log-format", "json"])
    assert twistd["logger"] is None


class Opaque:
    """A field value JSON cannot hold."""

    def __repr__(self) -> str:
        return "<opaque>"


def test_an_event_is_one_line_of_json_with_its_fields() -> None:
    out = StringIO()
    log = Logger(namespace="pigeonpush.test", observer=logformat.json_file_observer(out))
    log.info("Client {client} said {what}", client="a\nb\x1b", what=Opaque())
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.failure("It broke at {where}", Failure(), where="here")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["time"].endswith("+00:00")
    assert (first["level"], first["namespace"]) == ("info", "pigeonpush.test")
    assert first["text"] == "Client a\nb\x1b said <opaque>"
    assert first["fields"] == {"client": "a\nb\x1b", "what": "<opaque>"}
    assert "traceback" not in first
    assert (second["level"], second["text"]) == ("critical", "It broke at here")
    assert "ZeroDivisionError" in second["traceback"]


# -- the device listener's backlog -------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("tcp:7100", "tcp:7100:backlog=4096"),
        ("tcp:port=7100:interface=127.0.0.1", "tcp:port=7100:interface=127.0.0.1:backlog=4096"),
        ("tcp:7100:backlog=100", "tcp:7100:backlog=100"),
        ("tcp:backlog=9:7100", "tcp:backlog=9:7100"),
        ("ssl:7100:privateKey=k.pem", "ssl:7100:privateKey=k.pem:backlog=4096"),
        ("unix:/run/p.sock", "unix:/run/p.sock:backlog=4096"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_with_backlog(given: str, expected: str) -> None:
    assert options.with_backlog(given) == expected
    if given.startswith(("tcp", "unix")):
        options.check_endpoint("--listen", options.with_backlog(given))


def test_the_push_servers_device_listener_gets_the_backlog() -> None:
    reactor = MemoryReactorClock()
    config = server_tap.Options()
    config.parseOptions(["--redis=memory:", "--zookeeper=static:", "--metrics=none"])
    top = server_tap.makeService(config, reactor)
    top.privilegedStartService()
    backlogs = {port: backlog for port, _factory, backlog, _iface in reactor.tcpServers}
    assert backlogs == {7100: 4096, 7101: 50}
    config = server_tap.Options()
    config.parseOptions(["--redis=memory:", "--zookeeper=static:", "--listen=tcp:7100:backlog=7"])
    reactor = MemoryReactorClock()
    server_tap.makeService(config, reactor).privilegedStartService()
    assert reactor.tcpServers[1][:3:2] == (7100, 7)


def test_standalones_device_listener_gets_the_backlog() -> None:
    reactor = MemoryReactorClock()
    config = standalone_tap.Options()
    config.parseOptions(["--api-key", KEY])
    standalone_tap.makeService(config, reactor).privilegedStartService()
    backlogs = {port: backlog for port, _factory, backlog, _iface in reactor.tcpServers}
    assert backlogs[7100] == 4096
    assert backlogs[8100] == backlogs[8200] == 50


# -- capacity and the open-files limit ---------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "capacity"),
    [(20000, 19000), (1024, 768), (65536, 62260), (100, 75), (None, 100_000)],
)
def test_capacity_for_the_limit(limit: int | None, capacity: int) -> None:
    assert options.capacity_for(limit) == capacity


def test_capacity_defaults_to_what_the_limit_allows() -> None:
    config = server_tap.Options()
    config.parseOptions([])
    assert config.settings.capacity == options.capacity_for(options.open_files_limit())


def test_a_capacity_over_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_tap, "open_files_limit", lambda: 1024)
    config = server_tap.Options()
    config.parseOptions(["--capacity", "960"])
    assert config.settings.capacity == 960
    with pytest.raises(usage.UsageError) as refused:
        server_tap.Options().parseOptions(["--capacity", "961"])
    assert str(refused.value) == (
        "--capacity 961 is over what the open-files limit allows: the limit (ulimit -n) "
        "is 1024, so at most 960; raise the limit or lower --capacity"
    )


# -- the HTTP APIs' limits ---------------------------------------------------------------


def _sites(reactor: MemoryReactorClock) -> list[JsonSite]:
    return [factory for _port, factory, _backlog, _iface in reactor.tcpServers]


@pytest.mark.parametrize(
    ("tap", "argv"),
    [
        (reglog_tap, ["--redis=memory:", "--zookeeper=static:"]),
        (notification_tap, ["--redis=memory:", "--api-key", KEY]),
        (standalone_tap, []),
    ],
)
def test_http_limits_reach_the_site(tap: Any, argv: list[str]) -> None:
    reactor = MemoryReactorClock()
    config = tap.Options()
    config.parseOptions([*argv, "--max-connections", "7", "--request-timeout", "2.5"])
    tap.makeService(config, reactor).privilegedStartService()
    sites = [site for site in _sites(reactor) if isinstance(site, JsonSite)]
    assert len(sites) == (2 if tap is standalone_tap else 1)
    for site in sites:
        assert (site.max_connections, site.request_timeout) == (7, 2.5)
    for bad, message in (
        (["--max-connections", "0"], "--max-connections must be at least 1"),
        (["--request-timeout", "0"], "--request-timeout must be a positive number"),
    ):
        with pytest.raises(usage.UsageError, match=message):
            tap.Options().parseOptions([*argv, *bad])
