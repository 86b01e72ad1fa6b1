"""Closing exec sockets: the close frame goes out, the server's reply is never awaited."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from sprites_async import SpritesClient
from sprites_async._config import ExecSettings
from sprites_async._control import close_now
from tests._mock import TOKEN


class DeafServer:
    """One exec route that reads the client's close frame and never answers it."""

    def __init__(self) -> None:
        self.seen: list[tuple[WSMsgType, object]] = []
        self.send_exit = True
        self.url = ""

    async def exec(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoclose=False, autoping=False)
        await ws.prepare(request)
        if self.send_exit:
            await ws.send_str('{"type":"session_info","session_id":"7","tty":false}')
            await ws.send_bytes(b"\x01hi\n")
            await ws.send_bytes(b"\x03\x00")
        with contextlib.suppress(Exception):
            msg = await ws.receive(timeout=10)
            self.seen.append((msg.type, msg.data))
            await asyncio.sleep(10)  # a close frame arrived: never answer it
        return ws


@pytest.fixture
async def deaf() -> AsyncIterator[DeafServer]:
    server = DeafServer()
    app = web.Application()
    app.router.add_get("/v1/sprites/box/exec", server.exec)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    server.url = str(test_server.make_url("")).rstrip("/")
    try:
        yield server
    finally:
        await test_server.close()


def make_client(server: DeafServer) -> SpritesClient:
    client = SpritesClient(TOKEN, base_url=server.url, control=False)
    client.exec_settings = ExecSettings(close_timeout=30.0, ping_interval=None, dead_after=None)
    return client


async def test_close_frame_is_sent_without_waiting_for_the_reply(deaf: DeafServer) -> None:
    async with make_client(deaf) as client:
        started = time.monotonic()
        # Waiting for the reply would cost aiohttp's own cap of 2 s (or close_timeout).
        result = await asyncio.wait_for(client.sprite("box").exec("echo", "hi"), 1.5)
        assert time.monotonic() - started < 1.5
    assert (result.exit_code, result.stdout, result.session_id) == (0, b"hi\n", "7")
    for _ in range(100):
        if deaf.seen:
            break
        await asyncio.sleep(0.02)
    assert deaf.seen == [(WSMsgType.CLOSE, 1000)]  # our close frame did reach the server


async def test_close_while_another_task_is_receiving(deaf: DeafServer) -> None:
    deaf.send_exit = False
    async with make_client(deaf) as client:
        ws, _ = await client._ws_connect(
            "/v1/sprites/box/exec", operation="exec", params=[("cmd", "x")], autoping=False
        )
        receiver = asyncio.ensure_future(ws.receive())
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await close_now(ws, 0.3)
        assert ws.closed
        assert time.monotonic() - started < 1.5  # bounded by the timeout, not the server
        msg = await asyncio.wait_for(receiver, 2)
        assert msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.CLOSE)


async def test_close_now_finishes_without_suspending(deaf: DeafServer) -> None:
    # No other task receives: the close needs no timer and no loop turn (it
    # runs once per command), and the close frame still reaches the server.
    deaf.send_exit = False
    async with make_client(deaf) as client:
        ws, _ = await client._ws_connect(
            "/v1/sprites/box/exec", operation="exec", params=[("cmd", "x")], autoping=False
        )
        closing = close_now(ws, 30.0)
        with pytest.raises(StopIteration):
            closing.send(None)  # it never yields to the loop
        assert ws.closed
    for _ in range(100):
        if deaf.seen:
            break
        await asyncio.sleep(0.02)
    assert deaf.seen == [(WSMsgType.CLOSE, 1000)]
