"""Uplink end to end: ``twistd -n pigeon-standalone`` as a real process with
``--uplink-webhook``; a Python device (the SDK) sends an uplink that the
application reads through the pull API and receives, signed, at a real HTTP
receiver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
from test_standalone_e2e import Device, Spawner, online, spawner, stop_all  # noqa: F401

from pigeonpush.notification.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from support.waiting import wait_for
from support.webhook_receiver import WebhookReceiver

#: Real daemons or processes: run where slow tests run (docs/development.rst).
pytestmark = pytest.mark.slow

SECRET = "e2e-webhook-secret-0123456789"


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_a_device_uplink_reaches_the_pull_api_and_the_webhook(
    spawner: Spawner,  # noqa: F811
    tmp_path: Path,
) -> None:
    from twisted.internet import reactor

    receiver = WebhookReceiver(reactor, 503)  # the first POST fails: retried
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(SECRET + "\n")
    device = None
    try:
        standalone = await spawner.start(
            f"--uplink-webhook={receiver.url}", f"--uplink-webhook-secret-file={secret_file}"
        )
        key = standalone.generated_key()
        assert key is not None
        auth = {"Authorization": f"Bearer {key}"}
        device = Device.create(reactor, standalone.reglog_url, "sensor-1")
        await online(reactor, [device])

        # The device's Deferred fires once the uplink is durable.
        sending = device.client.send_uplink({"temp": "21.5", "unit": "C"}, uplink_id="reading-1")
        sending.addTimeout(20, reactor)
        assert await sending == "reading-1"
        # A resend of the same id (a lost UPLINK_ACK) is stored once.
        again = device.client.send_uplink({"temp": "21.5", "unit": "C"}, uplink_id="reading-1")
        again.addTimeout(20, reactor)
        assert await again == "reading-1"

        # The pull API: a long poll from the start answers at once.
        answer = await standalone.api.get("/v1/uplinks?after=0&wait=10", headers=auth)
        assert answer.status == 200, answer.json
        (uplink,) = answer.json["uplinks"]
        assert (uplink["clientId"], uplink["uplinkId"], uplink["data"]) == (
            "sensor-1",
            "reading-1",
            {"temp": "21.5", "unit": "C"},
        )
        assert answer.json["next"] == uplink["id"]

        # The webhook: retried after the 503, signed with the secret.
        await wait_for(lambda: len(receiver.received) >= 2, timeout=20, what="the webhook POSTs")
        hook = receiver.received[-1]
        assert verify(
            SECRET.encode(),
            hook.body,
            hook.header(TIMESTAMP_HEADER),
            hook.header(SIGNATURE_HEADER),
            reactor.seconds(),
        )
        assert json.loads(hook.body)["uplinks"] == [uplink]
        assert [json.loads(h.body) for h in receiver.received[:1]] == [json.loads(hook.body)]
        assert (await standalone.api.get("/v1/uplinks/dead", headers=auth)).json == {"dead": []}
        standalone.check_clean_log()
    finally:
        if device is not None:
            await stop_all(reactor, [device])
        await receiver.stop()
