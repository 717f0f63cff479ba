"""reglog's ``--cors-origin``: browser pages of other origins may call the
route API (real HTTP, memory store, static discovery)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.python import usage

from pigeonpush.reglog.tap import Options, makeService
from support.servers import free_port
from support.waiting import wait_for

APP = "https://app.example"


@pytest_twisted.async_yield_fixture
async def reglog() -> AsyncIterator[tuple[str, Any]]:
    """A reglog allowing ``APP``; its base URL and an HTTP client."""
    import treq
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    port = free_port()
    config = Options()
    config.parseOptions(
        [
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--redis",
            "memory:",
            "--zookeeper",
            "static:servers=n1@127.0.0.1:7100|127.0.0.1:7101",
            "--cors-origin",
            APP,
        ]
    )
    service = makeService(config, reactor)
    service.startService()
    pool = HTTPConnectionPool(reactor, persistent=False)
    http = HTTPClient(Agent(reactor, pool=pool))
    url = f"http://127.0.0.1:{port}"

    async def up() -> bool:
        try:
            response = await http.get(url + "/health")
            await treq.content(response)
        except Exception:
            return False
        return bool(response.code == 200)

    await wait_for(up, timeout=10, what="reglog to serve")
    yield url, http
    await pool.closeCachedConnections()
    await service.stopService()


async def call(http: Any, method: str, url: str, headers: dict[str, str], body: bytes = b"") -> Any:
    import treq

    response = await http.request(
        method, url, data=body or None, headers={k: [v] for k, v in headers.items()}
    )
    await treq.content(response)
    return response


def header(response: Any, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return None if values is None else str(values[0])


@pytest_twisted.ensureDeferred
async def test_a_preflight_from_an_allowed_origin_is_answered(reglog: tuple[str, Any]) -> None:
    url, http = reglog
    response = await call(
        http,
        "OPTIONS",
        url + "/v1/route",
        {
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.code == 204
    assert header(response, "Access-Control-Allow-Origin") == APP
    assert "POST" in (header(response, "Access-Control-Allow-Methods") or "")
    assert "Content-Type" in (header(response, "Access-Control-Allow-Headers") or "")
    assert header(response, "Vary") == "Origin"


@pytest_twisted.ensureDeferred
async def test_a_preflight_from_another_origin_is_refused(reglog: tuple[str, Any]) -> None:
    url, http = reglog
    response = await call(
        http,
        "OPTIONS",
        url + "/v1/route",
        {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.code == 403
    assert header(response, "Access-Control-Allow-Origin") is None


@pytest_twisted.ensureDeferred
async def test_answers_carry_the_origin_only_for_allowed_origins(reglog: tuple[str, Any]) -> None:
    url, http = reglog
    body = b'{"clientId": "browser-1"}'
    json = {"Content-Type": "application/json"}
    allowed = await call(http, "POST", url + "/v1/route", {**json, "Origin": APP}, body)
    assert allowed.code == 200
    assert header(allowed, "Access-Control-Allow-Origin") == APP
    other = await call(
        http, "POST", url + "/v1/route", {**json, "Origin": "https://evil.example"}, body
    )
    assert other.code == 200  # answered, but a browser will not let the page read it
    assert header(other, "Access-Control-Allow-Origin") is None
    plain = await call(http, "POST", url + "/v1/route", json, body)
    assert plain.code == 200 and header(plain, "Access-Control-Allow-Origin") is None


@pytest.mark.parametrize("bad", ["app.example", "https://app.example/path", "ftp://x"])
def test_a_bad_cors_origin_is_a_usage_error(bad: str) -> None:
    with pytest.raises(usage.UsageError, match="--cors-origin must be"):
        Options().parseOptions(["--cors-origin", bad])
