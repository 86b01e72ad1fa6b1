"""The WebSocket seam: handshake errors keep the server's body; headers are returned."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from sprites_async import (
    AuthenticationError,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    SpritesClient,
    SpritesTimeoutError,
    Timeouts,
)
from tests._mock import TOKEN


def app_with(handler: object) -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/sprites/{name}/exec", handler)  # type: ignore[arg-type]
    return app


async def test_upgrade_returns_socket_and_response_headers() -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        ws.headers["X-Sprite-Capabilities"] = "signal"
        ws.headers["Sprite-Version"] = "v0.0.1-rc46"
        await ws.prepare(request)
        await ws.send_str('{"type":"session_info","session_id":"7"}')
        await ws.close()
        return ws

    async with TestServer(app_with(handler)) as server:
        async with SpritesClient(TOKEN, base_url=str(server.make_url(""))) as c:
            ws, headers = await c._ws_connect(
                "/v1/sprites/a/exec", operation="exec", sprite="a", params=[("cmd", "true")]
            )
            assert headers["X-Sprite-Capabilities"] == "signal"
            assert headers["Sprite-Version"] == "v0.0.1-rc46"
            msg = await ws.receive()
            assert msg.type is WSMsgType.TEXT
            assert "session_info" in msg.data
            await ws.close()


@pytest.mark.parametrize(
    ("status", "body", "cls", "message"),
    [
        (401, b'{"error":"authentication failed"}', AuthenticationError, "authentication failed"),
        (404, b'{"error":"sprite not found"}', NotFoundError, "sprite not found"),
        (500, b"failed to start process\n", ServerError, "failed to start process"),
    ],
)
async def test_refused_upgrade_keeps_status_body_and_ids(
    status: int, body: bytes, cls: type[Exception], message: str
) -> None:
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(
            status=status,
            body=body,
            headers={"x-request-id": "RID", "fly-request-id": "FID"},
            content_type="application/json",
        )

    async with TestServer(app_with(handler)) as server:
        async with SpritesClient(TOKEN, base_url=str(server.make_url(""))) as c:
            with pytest.raises(cls) as info:
                await c._ws_connect("/v1/sprites/a/exec", operation="exec", sprite="a")
    err = info.value
    assert err.message == message  # type: ignore[attr-defined]
    assert err.request_id == "RID"  # type: ignore[attr-defined]
    assert err.fly_request_id == "FID"  # type: ignore[attr-defined]
    assert err.operation == "exec"  # type: ignore[attr-defined]
    assert err.sprite == "a"  # type: ignore[attr-defined]
    assert calls == 1  # 401/404/500 are not retried: the command might have started


async def test_refused_upgrade_with_503_is_retried() -> None:
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.Response(status=503, text="Process not ready\n")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    async with TestServer(app_with(handler)) as server:
        async with SpritesClient(
            TOKEN,
            base_url=str(server.make_url("")),
            retry=RetryPolicy(max_attempts=3, base_delay=0.0),
        ) as c:
            ws, _ = await c._ws_connect("/v1/sprites/a/exec", operation="exec", sprite="a")
            await ws.close()
    assert calls == 2


async def test_refused_upgrade_429_carries_retry_after() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": "rate_limited", "message": "too many"},
            status=429,
            headers={"Retry-After": "99"},
        )

    async with TestServer(app_with(handler)) as server:
        async with SpritesClient(
            TOKEN, base_url=str(server.make_url("")), retry=RetryPolicy(max_retry_after=1)
        ) as c:
            with pytest.raises(RateLimitError) as info:
                await c._ws_connect("/v1/sprites/a/exec", operation="exec", sprite="a")
    assert info.value.retry_after == 99.0


async def test_a_slow_upgrade_waits_for_the_wake_timeout_not_the_read_timeout() -> None:
    # A cold sprite can take longer than the read timeout to answer the
    # upgrade; handshakes are bounded by Timeouts.wake alone.
    async def handler(request: web.Request) -> web.WebSocketResponse:
        await asyncio.sleep(float(request.query.get("delay", "0")))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    async with TestServer(app_with(handler)) as server:
        timeouts = Timeouts(read=0.3, wake=5.0)
        async with SpritesClient(TOKEN, base_url=str(server.make_url("")), timeout=timeouts) as c:
            ws, _ = await c._ws_connect(
                "/v1/sprites/a/exec", operation="exec", sprite="a", params=[("delay", "1.2")]
            )
            await ws.close()
        timeouts = Timeouts(read=30.0, wake=0.3)
        async with SpritesClient(TOKEN, base_url=str(server.make_url("")), timeout=timeouts) as c:
            with pytest.raises(SpritesTimeoutError, match=r"Timeouts\.wake"):
                await c._ws_connect(
                    "/v1/sprites/a/exec", operation="exec", sprite="a", params=[("delay", "3")]
                )
