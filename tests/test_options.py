"""The option checks every twistd plugin shares."""

from __future__ import annotations

import pytest
from twisted.python import usage

from pigeonpush import options


def test_good_values_pass() -> None:
    options.check_endpoint("--listen", "tcp:7100:interface=127.0.0.1")
    options.check_store_url("--redis", "memory:")
    options.check_store_url("--redis", "redis://:pw@127.0.0.1:6379/2")
    options.check_store_url("--redis", "rediss+cluster://:pw@10.0.0.1:6379,10.0.0.2:6379")
    options.check_discovery_spec("--zookeeper", "127.0.0.1:2181,127.0.0.2:2181/chroot")
    options.check_discovery_spec("--zookeeper", "static:")
    options.check_address("--advertise", "[::1]:7100")
    options.check_node_id("--node-id", "push-1")
    assert options.seconds("--x", "2.5") == 2.5
    assert options.seconds("--x", "0", allow_zero=True) == 0
    assert options.whole("--n", "3") == 3
    assert options.whole("--n", "0", minimum=0) == 0


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (lambda: options.check_endpoint("--listen", "carrier-pigeon:1"), "--listen must be a"),
        (lambda: options.check_store_url("--redis", "mysql://db"), "--redis: bad store URL"),
        (
            lambda: options.check_store_url("--redis", "redis+cluster://h:1/2"),
            "--redis: bad store URL 'redis+cluster://h:1/2': a Redis Cluster has database 0 only",
        ),
        (
            lambda: options.check_store_timeout(
                "--redis", "redis+cluster://h:1?timeout=20", shorter_than=10, what="x"
            ),
            "--redis: the store timeout (20 s, ?timeout=) must be shorter than x",
        ),
        (lambda: options.check_discovery_spec("--zookeeper", ""), "--zookeeper: "),
        (lambda: options.check_address("--advertise", "nohost"), "must be host:port"),
        (lambda: options.check_node_id("--node-id", "a/b"), "--node-id: "),
        (lambda: options.seconds("--t", "soon"), "--t must be a number of seconds"),
        (lambda: options.seconds("--t", "0"), "--t must be a positive number"),
        (lambda: options.seconds("--t", "inf"), "--t must be a positive number"),
        (lambda: options.seconds("--t", "-1", allow_zero=True), "zero or a positive"),
        (lambda: options.whole("--n", "1.5"), "--n must be a whole number, not '1.5'"),
        (lambda: options.whole("--n", "0"), "--n must be at least 1, not 0"),
    ],
)
def test_bad_values_name_the_option(check: object, message: str) -> None:
    with pytest.raises(usage.UsageError) as error:
        check()  # type: ignore[operator]
    assert message in str(error.value)
