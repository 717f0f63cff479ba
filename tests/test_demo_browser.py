"""The demo page in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``; selenium with the driver path given, nothing is
downloaded): open ``/demo/`` on a running ``pigeon-standalone --websocket``,
connect as a clientId, send a notification through the API to the page and to
a Python SDK device, see it on the page, ACKed, and its receipt with nothing
pending (WAIT_ACK empty); then send an uplink from the page and one from the
Python device, and read both through ``GET /v1/uplinks`` and at a real
webhook receiver, signed.

Selenium's calls block, so they run in a thread; the standalone is its own
process."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_twisted
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from test_standalone_e2e import Device, Spawner, receipt, stop_all, wait_received
from test_standalone_e2e import online as sdk_online
from twisted.internet.threads import deferToThread

from pigeonpush.notification.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from support.servers import free_port
from support.waiting import wait_for
from support.webhook_receiver import WebhookReceiver

#: Real daemons or processes: run where slow tests run (docs/development.rst).
pytestmark = pytest.mark.slow

API_KEY = "browser-test-key-0123456789"
CLIENT_ID = "browser-demo-1"
PYTHON_ID = "python-device-1"
WEBHOOK_SECRET = "browser-test-webhook-secret-0123"
_T = TypeVar("_T")


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and chromedriver, "install Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


@pytest_twisted.async_yield_fixture
async def spawner(tmp_path: Path) -> AsyncIterator[Spawner]:
    from twisted.internet import reactor

    spawner = Spawner(reactor, tmp_path)
    try:
        yield spawner
    finally:
        await spawner.close()


async def in_thread(call: Callable[[], _T]) -> _T:
    result: _T = await deferToThread(call)
    return result


@pytest_twisted.ensureDeferred
async def test_the_demo_page_shows_a_message_and_acks_it(spawner: Spawner, browser: Any) -> None:
    from twisted.internet import reactor

    ports = {**spawner.ports(), "websocket": free_port()}
    webhook = WebhookReceiver(reactor)
    try:
        await page_and_python_device(spawner, browser, ports, webhook)
    finally:
        await webhook.stop()


async def page_and_python_device(
    spawner: Spawner, browser: Any, ports: dict[str, int], webhook: WebhookReceiver
) -> None:
    from twisted.internet import reactor

    standalone = await spawner.start(
        f"--api-key={API_KEY}",
        f"--uplink-webhook={webhook.url}",
        f"--uplink-webhook-secret={WEBHOOK_SECRET}",
        ports=ports,
    )
    python = Device.create(reactor, standalone.reglog_url, PYTHON_ID)
    try:
        await on_the_page_and_in_python(standalone, browser, python, webhook)
    finally:
        await stop_all(reactor, [python])


async def on_the_page_and_in_python(
    standalone: Any, browser: Any, python: Device, webhook: WebhookReceiver
) -> None:
    from twisted.internet import reactor

    await sdk_online(reactor, [python])
    await in_thread(lambda: browser.get(standalone.reglog_url + "/demo/"))
    await in_thread(lambda: browser.find_element(By.ID, "client-id").send_keys(CLIENT_ID))
    await in_thread(lambda: browser.find_element(By.ID, "connect-button").click())

    def status() -> str:
        element = browser.find_element(By.ID, "status")
        return f"{element.get_attribute('data-state')}: {element.text}"

    async def online() -> bool:
        return (await in_thread(status)).startswith("online:")

    try:
        await wait_for(online, timeout=20, interval=0.2, what="the page to be online")
    except TimeoutError:
        console = await in_thread(lambda: browser.get_log("browser"))
        raise AssertionError(f"{await in_thread(status)}; console: {console}") from None
    assert f"Online as {CLIENT_ID}" in await in_thread(status)

    answer = await standalone.api.post(
        "/v1/notifications",
        {"to": [CLIENT_ID, PYTHON_ID], "title": "Hello browser", "text": "from the API"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert answer.status == 202, answer.json
    message_id = answer.json["messageId"]

    def row_state() -> list[str] | None:
        rows = browser.find_elements(By.CSS_SELECTOR, f'tr[data-message-id="{message_id}"] td')
        return [cell.text for cell in rows] or None

    async def acked_on_the_page() -> list[str] | None:
        cells = await in_thread(row_state)
        return cells if cells is not None and cells[-1] == "acked" else None

    cells = await wait_for(acked_on_the_page, timeout=20, interval=0.2, what="the page to ACK")
    assert cells[:3] == [message_id, "Hello browser", "from the API"]

    await wait_received([python], [message_id])
    assert python.received[0].title == "Hello browser"

    async def receipt_acked() -> bool:
        body = await receipt(standalone, API_KEY, message_id)
        return bool(body["acked"] == 2 and body["pending"] == [])

    await wait_for(receipt_acked, timeout=15, interval=0.2, what="the receipt to say acked")

    # The other way: an uplink typed on the page, stored, read through the API.
    await in_thread(lambda: browser.find_element(By.ID, "uplink-text").send_keys("hi app"))
    await in_thread(lambda: browser.find_element(By.ID, "uplink-button").click())

    def uplink_status() -> str:
        return str(browser.find_element(By.ID, "uplink-status").text)

    async def uplink_stored() -> str | None:
        text = await in_thread(uplink_status)
        return text if text.startswith("stored as ") else None

    stored = await wait_for(uplink_stored, timeout=20, interval=0.2, what="the uplink stored")
    uplink_id = stored.removeprefix("stored as ")
    python_uplink = await python.client.send_uplink({"text": "hi from python"})
    expected = [
        (CLIENT_ID, uplink_id, {"text": "hi app"}),
        (PYTHON_ID, python_uplink, {"text": "hi from python"}),
    ]
    answer = await standalone.api.get(
        "/v1/uplinks?after=0", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert [(u["clientId"], u["uplinkId"], u["data"]) for u in answer.json["uplinks"]] == expected

    # And at the application's webhook receiver, each POST signed.
    await wait_for(
        lambda: len(webhook.received) >= 2, timeout=20, interval=0.1, what="two webhook POSTs"
    )
    delivered = []
    for post in webhook.received:
        assert verify(
            WEBHOOK_SECRET.encode(),
            post.body,
            post.header(TIMESTAMP_HEADER),
            post.header(SIGNATURE_HEADER),
            reactor.seconds(),
        ), post
        delivered.extend(
            (u["clientId"], u["uplinkId"], u["data"]) for u in json.loads(post.body)["uplinks"]
        )
    assert delivered == expected
    await in_thread(lambda: browser.find_element(By.ID, "disconnect-button").click())
    standalone.check_clean_log()
