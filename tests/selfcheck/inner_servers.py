"""Run by test_foundation.py in a child pytest: it must fail, and leave nothing running."""

from twisted.internet.defer import Deferred


def test_servers_then_fail(redis_server, zookeeper_server):
    print(
        f"SERVERS redis={redis_server.pid}:{redis_server.port} "
        f"zookeeper={zookeeper_server.pid}:{zookeeper_server.port}"
    )
    raise AssertionError("deliberate failure")


def test_unhandled_deferred_error_fails_the_test():
    d: Deferred[None] = Deferred()
    d.errback(ValueError("nobody handled me"))
    del d
