"""Connections that break or stall after the answer began: the user sees the SDK's errors.

A loopback ``aiohttp.web`` app plays the sprite: it answers (with request
ids), sends part of a body or opens a WebSocket, then cuts the TCP
connection or goes silent. Whatever was being read or sent at that moment
(an NDJSON stream, a file download, the answer to a streamed upload, a proxy
tunnel's reply, a pooled control socket) must fail with
:class:`SpritesConnectionError` / :class:`SpritesTimeoutError` carrying the
operation, the sprite and the request ids, chained to what aiohttp raised;
never with an aiohttp or OS exception of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sprites_async import (
    RetryPolicy,
    ServerError,
    SpritesClient,
    SpritesConnectionError,
    SpritesTimeoutError,
    Timeouts,
    _proxy,
)
from sprites_async._control import pool_for
from sprites_async._proxy import ProxyError, open_connection
from sprites_async._translate import SOCKET_LOST
from sprites_async._websocket import WSMsgType
from tests._mock import TOKEN

IDS = {"x-request-id": "RID", "fly-request-id": "FID"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Silences are cut short by the server's close at the end of each test.
SILENCE = 30.0


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[SpritesClient]]]:
    """``await serve(method, path, handler, **client_kwargs)``: a client of a one-route server."""
    servers: list[TestServer] = []
    clients: list[SpritesClient] = []

    async def start(method: str, path: str, handler: Handler, **kwargs: object) -> SpritesClient:
        app = web.Application()
        app.router.add_route(method, path, handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        kwargs.setdefault("retry", RetryPolicy(max_attempts=1))
        client = SpritesClient(TOKEN, base_url=str(server.make_url("")).rstrip("/"), **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    try:
        yield start
    finally:
        for client in clients:
            await client.aclose()
        for server in servers:
            await server.close()


def cut(request: web.Request) -> None:
    """Drop the connection at once, as a crashed proxy or a lost route does."""
    assert request.transport is not None
    request.transport.abort()


async def partial_body(request: web.Request, first: bytes, *, then: str) -> web.StreamResponse:
    """Send ``first`` of a longer body, then ``"cut"`` the connection or ``"stall"``."""
    resp = web.StreamResponse(headers=IDS)
    resp.content_length = len(first) + 1000
    await resp.prepare(request)
    await resp.write(first)
    await asyncio.sleep(0.05)  # let the client read what was sent
    if then == "cut":
        cut(request)
    else:
        await asyncio.sleep(SILENCE)
    return resp


def assert_typed(exc: BaseException, cls: type[Exception], operation: str) -> None:
    assert type(exc).__module__.startswith("sprites_async"), repr(exc)
    assert isinstance(exc, cls), repr(exc)
    assert isinstance(exc, SpritesConnectionError)
    assert (exc.operation, exc.sprite) == (operation, "box")
    assert (exc.request_id, exc.fly_request_id) == ("RID", "FID")
    assert "request_id=RID" in str(exc)
    # What aiohttp said stays reachable, at the end of the chain of causes.
    cause = exc.__cause__
    while isinstance(cause, SpritesConnectionError):
        cause = cause.__cause__
    assert cause is not None
    assert not type(cause).__module__.startswith("sprites_async"), repr(cause)


STREAM_TIMEOUTS = Timeouts(stream_idle=0.3, wake=0.3)


# ------------------------------------------------------------------ bodies


@pytest.mark.parametrize(
    ("then", "cls"), [("cut", SpritesConnectionError), ("stall", SpritesTimeoutError)]
)
async def test_an_ndjson_stream_that_breaks_off(
    serve: Callable[..., Awaitable[SpritesClient]], then: str, cls: type[Exception]
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await partial_body(request, b'{"type":"info","data":"Creating"}\n', then=then)

    client = await serve("POST", "/v1/sprites/box/checkpoint", handler, timeout=STREAM_TIMEOUTS)
    events: list[Any] = []

    async def follow() -> None:
        async for event in client.sprite("box").checkpoints.create("c"):
            events.append(event)

    with pytest.raises(SpritesConnectionError) as info:
        await follow()
    assert [e.type for e in events] == ["info"]  # what arrived was delivered first
    assert_typed(info.value, cls, "create checkpoint")


@pytest.mark.parametrize(
    ("then", "cls"), [("cut", SpritesConnectionError), ("stall", SpritesTimeoutError)]
)
async def test_a_download_that_breaks_off(
    serve: Callable[..., Awaitable[SpritesClient]], then: str, cls: type[Exception]
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await partial_body(request, b"x" * 100, then=then)

    client = await serve("GET", "/v1/sprites/box/fs/read", handler, timeout=STREAM_TIMEOUTS)
    got = bytearray()

    async def download() -> None:
        async for chunk in (client.sprite("box").fs() / "f").open_read():
            got.extend(chunk)

    with pytest.raises(SpritesConnectionError) as info:
        await download()
    assert got == b"x" * 100
    assert_typed(info.value, cls, "fs read")


async def test_the_answer_to_a_streamed_upload_that_breaks_off(
    serve: Callable[..., Awaitable[SpritesClient]],
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        return await partial_body(request, b'{"path":', then="cut")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"data"

    client = await serve("PUT", "/v1/sprites/box/fs/write", handler)
    with pytest.raises(SpritesConnectionError) as info:
        await (client.sprite("box").fs() / "f").write_stream(chunks())
    assert_typed(info.value, SpritesConnectionError, "fs write")


async def test_an_http_exec_body_that_breaks_off_is_translated_once(
    serve: Callable[..., Awaitable[SpritesClient]],
) -> None:
    # The exec module catches transport errors around the body itself; the
    # error the seam already made passes through it unchanged.
    async def handler(request: web.Request) -> web.StreamResponse:
        return await partial_body(request, b"\x01hi\n", then="cut")

    client = await serve("POST", "/v1/sprites/box/exec", handler)
    with pytest.raises(SpritesConnectionError) as info:
        await client.sprite("box").run_http("echo", "hi")
    assert_typed(info.value, SpritesConnectionError, "exec (http)")
    assert str(info.value).count("failed") == 1, str(info.value)


# -------------------------------------------------------------- WebSockets


async def upgrade_then(request: web.Request, then: str) -> web.StreamResponse:
    """Accept the upgrade (with request ids), read one message, then cut or stall."""
    ws = web.WebSocketResponse()
    ws.headers.update(IDS)
    await ws.prepare(request)
    if then == "cut-now":
        cut(request)
        return ws
    await ws.receive()
    if then == "cut":
        cut(request)
    else:
        await asyncio.sleep(SILENCE)
    return ws


async def test_a_proxy_tunnel_cut_before_its_reply(
    serve: Callable[..., Awaitable[SpritesClient]],
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await upgrade_then(request, "cut")

    client = await serve("GET", "/v1/sprites/box/proxy", handler)
    with pytest.raises(ProxyError) as info:
        await open_connection(client.sprite("box"), 5432)
    err = info.value
    assert (err.operation, err.sprite, err.target) == ("proxy", "box", "localhost:5432")
    assert (err.request_id, err.fly_request_id) == ("RID", "FID")


async def test_a_proxy_tunnel_whose_reply_never_comes(
    serve: Callable[..., Awaitable[SpritesClient]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_proxy, "CONNECT_REPLY_TIMEOUT", 0.3)

    async def handler(request: web.Request) -> web.StreamResponse:
        return await upgrade_then(request, "stall")

    client = await serve("GET", "/v1/sprites/box/proxy", handler)
    with pytest.raises(SpritesTimeoutError) as info:
        await open_connection(client.sprite("box"), 5432)
    assert_typed(info.value, SpritesTimeoutError, "proxy")
    assert "within 0.3 s" in str(info.value)


async def test_a_send_on_a_control_socket_the_server_cut(
    serve: Callable[..., Awaitable[SpritesClient]],
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await upgrade_then(request, "cut-now")

    client = await serve("GET", "/v1/sprites/box/control", handler)
    lease = await pool_for(client).acquire("box")
    assert lease is not None
    try:
        # A lost connection shows up as a CLOSED message while receiving ...
        msg = await asyncio.wait_for(lease.ws.receive(), 10)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
        # ... and as the SDK's error on the next send.
        with pytest.raises(SpritesConnectionError) as info:
            await lease.ws.send_str('{"type":"op.start","op":"exec"}')
        assert_typed(info.value, SpritesConnectionError, "control")
        assert isinstance(info.value.__cause__, aiohttp.ClientError)
        with pytest.raises(SOCKET_LOST):
            await lease.ws.send_bytes(b"\x00")
        with pytest.raises(SOCKET_LOST):
            await lease.ws.ping()
    finally:
        lease.release(reusable=False)


async def test_a_receive_deadline_on_a_control_socket(
    serve: Callable[..., Awaitable[SpritesClient]],
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await upgrade_then(request, "stall")

    client = await serve("GET", "/v1/sprites/box/control", handler)
    lease = await pool_for(client).acquire("box")
    assert lease is not None
    try:
        with pytest.raises(SpritesTimeoutError) as info:
            await lease.ws.receive(timeout=0.2)
        assert_typed(info.value, SpritesTimeoutError, "control")
        # Code written for aiohttp's receive deadline still catches it.
        assert isinstance(info.value, asyncio.TimeoutError)
    finally:
        lease.release(reusable=False)


# ----------------------------------------------------------------- retries


async def test_a_refused_upgrade_honours_retry_after(
    serve: Callable[..., Awaitable[SpritesClient]],
) -> None:
    # One retry rule for all three seams: a 503 whose Retry-After is longer
    # than the policy allows is raised at once, for upgrades as for requests.
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        return web.Response(status=503, text="busy", headers={"Retry-After": "99", **IDS})

    retry = RetryPolicy(max_attempts=3, base_delay=0.0, max_retry_after=1.0)
    client = await serve("GET", "/v1/sprites/box/exec", handler, retry=retry)
    with pytest.raises(ServerError) as info:
        await client._ws_connect("/v1/sprites/box/exec", operation="exec", sprite="box")
    assert calls == 1
    assert info.value.request_id == "RID"
