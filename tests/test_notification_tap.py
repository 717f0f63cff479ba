"""pigeon-notification's options and service tree, and one real twistd run."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.application.service import IServiceCollection
from twisted.internet.error import ConnectError
from twisted.python import usage

from pigeonpush.notification.tap import Options, default_max_body, makeService
from pigeonpush.notification.validate import Limits
from pigeonpush.notification.webhook import UplinkWebhook
from pigeonpush.services import Closer, GcTuning, Listener, StopInOrder
from support.openapi import CheckedClient, OpenAPIDocument
from support.servers import free_port, pid_alive
from support.waiting import wait_for

KEY = "tap-test-key-0123456789"
SECRET = "webhook-secret-0123456789"
DOCUMENT = OpenAPIDocument.load(Path(__file__).parent.parent / "docs/openapi/notification.json")


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_defaults() -> None:
    options = parse("--api-key", KEY)
    assert options["listen"] == "tcp:8200"
    assert options["redis"] == "redis://127.0.0.1:6379/0"
    assert options["keys"] == [KEY]
    assert options["limits"] == Limits()
    assert options["max-batch"] == 500
    assert options["max-body"] == default_max_body(Limits(), 500) == 3_840_000
    assert options["idempotency-ttl"] == 86400
    assert options["receipt-retention"] == 86400
    assert options["topic-log-length"] == 10_000
    assert options["max-topics-per-device"] == 100


def test_keys_repeat_and_come_from_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# production keys\n\nfile-key-0123456789abc\n  other-key-0123456789  \n")
    options = parse("--api-key", KEY, "--api-key", KEY + "x", "--api-keys-file", str(key_file))
    assert options["keys"] == [KEY, KEY + "x", "file-key-0123456789abc", "other-key-0123456789"]


def test_limits_from_options() -> None:
    options = parse(
        "--api-key", KEY, "--default-ttl", "60", "--max-ttl", "3600", "--max-recipients", "10",
        "--max-title", "100", "--max-text", "1000", "--max-extras", "200", "--max-batch", "10",
        "--max-body", "50000",
    )  # fmt: skip
    assert options["limits"] == Limits(60, 3600, 10, 100, 1000, 200)
    assert options["max-body"] == 50000


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((), "no API key"),
        (("--api-keys-file", "/nonexistent/keys"), "cannot read the API key file"),
        (("--api-key", "short"), "at least 16 characters"),
        (("--api-key", KEY, "--listen", "nonsense:1"), "--listen"),
        (("--api-key", KEY, "--max-text", "8000"), "frame limit"),
        (("--api-key", KEY, "--default-ttl", "100", "--max-ttl", "50"), "default TTL"),
        (("--api-key", KEY, "--max-batch", "0"), "--max-batch"),
        (("--api-key", KEY, "--topic-log-length", "0"), "--topic-log-length"),
        (("--api-key", KEY, "--max-topics-per-device", "0"), "--max-topics-per-device"),
        (("--api-key", KEY, "--max-body", "10"), "--max-body"),
        (("--api-key", KEY, "--max-ttl", "x"), "'x' is not a whole number"),
        (("--api-key", KEY, "--receipt-retention", "-1"), "--receipt-retention must be 0"),
        (
            ("--api-key", KEY, "--uplink-webhook", "http://h/"),
            "needs one of --uplink-webhook-secret",
        ),
        (
            ("--api-key", KEY, "--uplink-webhook-secret", SECRET),
            "--uplink-webhook-secret needs --uplink-webhook",
        ),
        (
            ("--api-key", KEY, "--uplink-webhook", "ftp://h/", "--uplink-webhook-secret", SECRET),
            "must be an http:// or https:// URL",
        ),
        (
            ("--api-key", KEY, "--uplink-webhook", "http://h/", "--uplink-webhook-secret", "x"),
            "at least 16 bytes",
        ),
        (
            (
                "--api-key",
                KEY,
                "--uplink-webhook",
                "http://h/",
                "--uplink-webhook-secret-file",
                "/nonexistent/secret",
            ),
            "--uplink-webhook-secret-file: .*No such file",
        ),
        (
            (
                "--api-key",
                KEY,
                "--uplink-webhook",
                "http://h/",
                "--uplink-webhook-secret",
                SECRET,
                "--uplink-webhook-lease",
                "60",
            ),
            "lease \\(60 s\\) must be longer",
        ),
    ],
)
def test_bad_options_are_usage_errors(args: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(usage.UsageError, match=fragment):
        parse(*args)


def test_webhook_options(tmp_path: Path) -> None:
    assert parse("--api-key", KEY)["webhook"] is None
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    options = parse(
        "--api-key", KEY, "--uplink-webhook", "https://app.example.org/uplinks",
        "--uplink-webhook-secret-file", str(secret_file), "--uplink-webhook-attempts", "3",
    )  # fmt: skip
    settings = options["webhook"]
    assert (settings.url, settings.secret, settings.attempts) == (
        "https://app.example.org/uplinks",
        SECRET.encode(),
        3,
    )
    assert SECRET not in repr(settings)


def test_an_empty_key_file_alone_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# nothing yet\n")
    with pytest.raises(usage.UsageError, match="no API key"):
        parse("--api-keys-file", str(key_file))


def test_the_service_tree() -> None:
    from support.reactors import MemoryReactorClock

    reactor = MemoryReactorClock()
    service = makeService(parse("--api-key", KEY, "--redis", "memory:"), reactor)
    assert IServiceCollection.providedBy(service)
    assert isinstance(service, StopInOrder)
    children = list(service)  # type: ignore[call-overload]
    # The listener is a Listener that pauses at its cap.
    assert isinstance(children[1], Listener)
    assert len(children) == 3
    assert [type(child) for child in children[::2]] == [Closer, GcTuning]
    service.startService()
    assert [port for port, *_ in reactor.tcpServers] == [8200]
    service.stopService()


def test_the_service_tree_with_a_webhook() -> None:
    from support.reactors import MemoryReactorClock

    reactor = MemoryReactorClock()
    config = parse(
        "--api-key", KEY, "--redis", "memory:", "--uplink-webhook", "http://127.0.0.1:9/hook",
        "--uplink-webhook-secret", SECRET,
    )  # fmt: skip
    service = makeService(config, reactor)
    children = list(service)  # type: ignore[call-overload]
    assert isinstance(children[1], Listener)
    assert [type(child) for child in children[:1] + children[2:]] == [
        Closer,
        StopInOrder,
        GcTuning,
    ]
    assert [type(child) for child in children[2]] == [Closer, UplinkWebhook]
    service.startService()
    service.stopService()


def start_twistd(cwd: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``twistd -n`` from this virtualenv, logging to ``log``."""
    twistd = str(Path(sys.executable).parent / "twistd")
    return subprocess.Popen(
        [twistd, "-n", "--pidfile=", f"--logfile={log}", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_twistd_runs_the_plugin(tmp_path: Path, redis_url: str) -> None:
    from twisted.internet import reactor

    from pigeonpush.store import open_store

    port = free_port()
    log = tmp_path / "notification.log"
    process = start_twistd(
        tmp_path, log, "pigeon-notification",
        "--listen", f"tcp:{port}:interface=127.0.0.1", "--redis", redis_url, "--api-key", KEY,
    )  # fmt: skip
    store = open_store(redis_url, reactor)
    client = CheckedClient(reactor, f"http://127.0.0.1:{port}", DOCUMENT)
    try:

        async def healthy() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return (await client.get("/health")).status == 200
            except ConnectError:
                return False

        await wait_for(healthy, timeout=30, interval=0.2, what="pigeon-notification to answer")
        answer = await client.post(
            "/v1/notifications",
            {"to": ["alice"], "title": "From twistd", "text": "x"},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert answer.status == 202
        assert await store.pending_ids("alice") == [answer.json["messageId"]]
        assert await store.queue_lag() == 1
        await client.close()
        process.send_signal(signal.SIGTERM)
        await wait_for(lambda: process.poll() is not None, timeout=15, what="twistd to exit")
        assert "Main loop terminated" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        await client.close()
        await store.close()
    assert not pid_alive(process.pid)
