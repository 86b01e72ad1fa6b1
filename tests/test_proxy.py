"""Port forwarding and ``open_connection`` through the emulator's ``/proxy`` over loopback.

Targets are plain servers on 127.0.0.1 (the emulator only dials loopback).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sprites_async import SpritesClient
from sprites_async._proxy import (
    ProxyTargetUnreachableError,
    forward,
    open_connection,
)
from tests._emulator import RunningEmulator


@pytest.fixture
async def http_target() -> AsyncIterator[int]:
    """An HTTP server on 127.0.0.1, standing in for a server inside the sprite."""

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello from {request.path}")

    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=b"z" * int(request.query["n"]))

    app = web.Application()
    app.router.add_get("/blob", blob)
    app.router.add_get("/{tail:.*}", hello)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        assert server.port is not None
        yield server.port
    finally:
        await server.close()


@pytest.fixture
async def echo_target() -> AsyncIterator[int]:
    """A TCP echo server on 127.0.0.1."""
    handlers: set[asyncio.Task[None]] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_forward_carries_an_http_request(emu_client: SpritesClient, http_target: int) -> None:
    sprite = emu_client.sprite("box")
    async with forward(sprite, http_target) as fwd:
        assert fwd.local_port > 0
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{fwd.local_port}/ping") as resp:
                assert resp.status == 200
                assert await resp.text() == "hello from /ping"
            # A body far larger than one 32 KiB frame.
            async with http.get(f"http://127.0.0.1:{fwd.local_port}/blob?n=3000000") as resp:
                assert await resp.read() == b"z" * 3_000_000
    assert fwd.accepted >= 1 and fwd.failed == 0
    assert fwd.active_connections == 0


async def test_forward_many_concurrent_connections(
    emu_client: SpritesClient, http_target: int
) -> None:
    async with forward(emu_client.sprite("box"), http_target) as fwd:
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def get(i: int) -> str:
                async with http.get(f"http://127.0.0.1:{fwd.local_port}/{i}") as resp:
                    return await resp.text()

            texts = await asyncio.gather(*(get(i) for i in range(40)))
    assert texts == [f"hello from /{i}" for i in range(40)]
    assert fwd.accepted == 40


async def test_forward_shutdown_ends_open_connections(
    emu_client: SpritesClient, echo_target: int
) -> None:
    fwd = await forward(emu_client.sprite("box"), echo_target).start()
    conns = [await asyncio.open_connection("127.0.0.1", fwd.local_port) for _ in range(5)]
    for reader, writer in conns:
        writer.write(b"ping")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    assert fwd.active_connections == 5
    await fwd.aclose()
    for reader, writer in conns:
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", fwd.local_port)
    await fwd.aclose()  # idempotent


async def test_forward_to_nothing_resets_and_keeps_listening(
    emu_client: SpritesClient, http_target: int
) -> None:
    async with forward(emu_client.sprite("box"), free_port()) as fwd:
        reader, writer = await asyncio.open_connection("127.0.0.1", fwd.local_port)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 10)
        writer.close()
        assert fwd.failed == 1
        assert isinstance(fwd.last_error, ProxyTargetUnreachableError)


async def test_open_connection_echoes_a_large_stream(
    emu_client: SpritesClient, echo_target: int
) -> None:
    reader, writer = await open_connection(emu_client.sprite("box"), echo_target)
    payload = os.urandom(4 * 1024 * 1024)

    async def send() -> None:
        for i in range(0, len(payload), 100_000):
            writer.write(payload[i : i + 100_000])
            await writer.drain()

    sender = asyncio.ensure_future(send())
    received = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
    await sender
    assert received == payload
    writer.close()
    await writer.wait_closed()


async def test_open_connection_to_nothing_raises(emu_client: SpritesClient) -> None:
    with pytest.raises(ProxyTargetUnreachableError) as caught:
        await open_connection(emu_client.sprite("box"), free_port())
    assert caught.value.close_code == 1011
    assert "Failed to connect" in caught.value.reason


async def test_target_closing_ends_the_stream_cleanly(emu_client: SpritesClient) -> None:
    async def say_bye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(say_bye, "127.0.0.1", 0)
    try:
        reader, writer = await open_connection(
            emu_client.sprite("box"), server.sockets[0].getsockname()[1]
        )
        assert await asyncio.wait_for(reader.read(), 5) == b"bye"  # EOF, not a reset
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_closing_the_client_ends_tunnels(emu: RunningEmulator, echo_target: int) -> None:
    client = SpritesClient(emu.token, base_url=emu.url)
    reader, writer = await open_connection(client.sprite("box"), echo_target)
    fwd = await forward(client.sprite("box"), echo_target).start()
    await client.aclose()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 5)
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", fwd.local_port)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"port": True}, "port"),
        ({"port": 80, "host": ""}, "host"),
    ],
)
async def test_arguments_are_checked_before_the_network(
    emu_client: SpritesClient, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await open_connection(emu_client.sprite("box"), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        forward(emu_client.sprite("box"), 0)
    with pytest.raises(ValueError, match="local_port"):
        forward(emu_client.sprite("box"), 80, local_port=-1)
