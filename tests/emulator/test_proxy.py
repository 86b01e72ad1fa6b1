"""TCP proxy (``WSS /proxy``) against small asyncio TCP servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from sprites_async.emulator import _proxy
from tests._emulator import RunningEmulator

NAME = "proxbox"
TIMEOUT = 5.0

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Target"], Awaitable[None]]


@dataclass
class Target:
    """A TCP server started by a test; records what its connections saw."""

    port: int
    events: asyncio.Queue[str] = field(default_factory=asyncio.Queue)


@contextlib.asynccontextmanager
async def serve(handler: Handler, host: str = "127.0.0.1") -> AsyncIterator[Target]:
    tasks: set[asyncio.Task[Any]] = set()
    target = Target(0)

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer, target)
        except ConnectionError:
            target.events.put_nowait("reset")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            tasks.discard(task)

    server = await asyncio.start_server(wrapped, host, 0)
    target.port = server.sockets[0].getsockname()[1]
    try:
        yield target
    finally:
        server.close()
        await server.wait_closed()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def echo_handler(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: Target
) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    target.events.put_nowait("eof")


@pytest.fixture
async def echo() -> AsyncIterator[Target]:
    async with serve(echo_handler) as target:
        yield target


@pytest.fixture
def proxy_url(emu: RunningEmulator) -> str:
    emu.add_sprite(NAME)
    return f"{emu.url}/v1/sprites/{NAME}/proxy"


@contextlib.asynccontextmanager
async def proxy(
    emu: RunningEmulator, url: str, init: Any = None
) -> AsyncIterator[aiohttp.ClientWebSocketResponse[bool]]:
    async with emu.http.ws_connect(url, headers=emu.auth) as ws:
        if init is not None:
            await ws.send_json(init)
        yield ws


async def expect_close(ws: aiohttp.ClientWebSocketResponse[bool], code: int) -> str:
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type == WSMsgType.CLOSE, msg
    assert msg.data == code, msg
    return str(msg.extra)


async def recv_exactly(ws: aiohttp.ClientWebSocketResponse[bool], size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        msg = await ws.receive(timeout=TIMEOUT)
        assert msg.type == WSMsgType.BINARY, msg
        assert len(msg.data) <= 32 * 1024
        got += msg.data
    return bytes(got)


async def test_connect_and_echo(emu: RunningEmulator, proxy_url: str, echo: Target) -> None:
    async with proxy(emu, proxy_url, {"host": "localhost", "port": echo.port}) as ws:
        assert await ws.receive_json(timeout=TIMEOUT) == {
            "status": "connected",
            "target": f"127.0.0.1:{echo.port}",
        }
        await ws.send_bytes(b"ping")
        assert await recv_exactly(ws, 4) == b"ping"


async def test_host_defaults_to_localhost(
    emu: RunningEmulator, proxy_url: str, echo: Target
) -> None:
    for init in ({"port": echo.port}, {"host": "", "port": echo.port}):
        async with proxy(emu, proxy_url, init) as ws:
            reply = await ws.receive_json(timeout=TIMEOUT)
            assert reply == {"status": "connected", "target": f"127.0.0.1:{echo.port}"}


async def test_large_transfer_in_32k_frames(
    emu: RunningEmulator, proxy_url: str, echo: Target
) -> None:
    payload = bytes(range(256)) * 1200  # ~300 KiB
    async with proxy(emu, proxy_url, {"host": "127.0.0.1", "port": echo.port}) as ws:
        await ws.receive_json(timeout=TIMEOUT)
        for i in range(0, len(payload), 32 * 1024):
            await ws.send_bytes(payload[i : i + 32 * 1024])
        assert await recv_exactly(ws, len(payload)) == payload


async def test_text_frames_after_handshake_are_ignored(
    emu: RunningEmulator, proxy_url: str, echo: Target
) -> None:
    async with proxy(emu, proxy_url, {"port": echo.port}) as ws:
        await ws.receive_json(timeout=TIMEOUT)
        await ws.send_str("not data")
        await ws.send_bytes(b"data")
        assert await recv_exactly(ws, 4) == b"data"


async def test_client_close_closes_the_tcp_connection(
    emu: RunningEmulator, proxy_url: str, echo: Target
) -> None:
    async with proxy(emu, proxy_url, {"port": echo.port}) as ws:
        await ws.receive_json(timeout=TIMEOUT)
        await ws.send_bytes(b"x")
        await recv_exactly(ws, 1)
        await ws.close()
        assert ws.close_code == 1000
    assert await asyncio.wait_for(echo.events.get(), TIMEOUT) == "eof"


async def test_target_closing_ends_the_socket_cleanly(emu: RunningEmulator, proxy_url: str) -> None:
    async def bye(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: Target
    ) -> None:
        writer.write(b"bye")
        await writer.drain()

    async with serve(bye) as target, proxy(emu, proxy_url, {"port": target.port}) as ws:
        await ws.receive_json(timeout=TIMEOUT)
        assert await recv_exactly(ws, 3) == b"bye"
        await expect_close(ws, 1000)


async def test_target_reset_is_close_1001(emu: RunningEmulator, proxy_url: str) -> None:
    async def reset(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: Target
    ) -> None:
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        # SO_LINGER with a zero timeout turns close() into a TCP RST.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with serve(reset) as target, proxy(emu, proxy_url, {"port": target.port}) as ws:
        await ws.receive_json(timeout=TIMEOUT)
        await ws.send_bytes(b"!")
        assert await expect_close(ws, 1001) == "upstream closed"


@pytest.mark.parametrize(
    ("send", "code", "reason"),
    [
        (b"\x00binary", 1003, "Expected JSON initialization message"),
        ("not json", 1003, "Invalid JSON in initialization message"),
        ("[1, 2]", 1003, "Invalid JSON in initialization message"),
        ('{"host": 5, "port": 80}', 1003, "Invalid JSON in initialization message"),
        ('{"host": "localhost"}', 1003, "Invalid port number"),
        ('{"port": 0}', 1003, "Invalid port number"),
        ('{"port": 65536}', 1003, "Invalid port number"),
        ('{"port": "80"}', 1003, "Invalid port number"),
        ('{"port": true}', 1003, "Invalid port number"),
    ],
)
async def test_bad_init_frames(
    emu: RunningEmulator, proxy_url: str, send: str | bytes, code: int, reason: str
) -> None:
    async with proxy(emu, proxy_url) as ws:
        if isinstance(send, bytes):
            await ws.send_bytes(send)
        else:
            await ws.send_str(send)
        assert await expect_close(ws, code) == reason


async def test_silent_client_is_closed_after_the_init_timeout(
    emu: RunningEmulator, proxy_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_proxy, "INIT_TIMEOUT", 0.1)
    async with proxy(emu, proxy_url) as ws:
        assert await expect_close(ws, 1008) == "Timed out waiting for initialization"


async def test_connection_refused_is_1011(emu: RunningEmulator, proxy_url: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with proxy(emu, proxy_url, {"host": "127.0.0.1", "port": port}) as ws:
        reason = await expect_close(ws, 1011)
        assert reason.startswith("Failed to connect to target: ")


@pytest.mark.parametrize("host", ["10.1.2.3", "example.com", "0.0.0.0", "127.0.0.2"])
async def test_non_loopback_targets_are_refused(
    emu: RunningEmulator, proxy_url: str, host: str
) -> None:
    async with proxy(emu, proxy_url, {"host": host, "port": 80}) as ws:
        reason = await expect_close(ws, 1011)
        assert reason.startswith(f"Failed to connect to target: {host} is not a loopback")


async def test_long_non_ascii_host_gives_a_decodable_reason(
    emu: RunningEmulator, proxy_url: str
) -> None:
    host = "ü" * 200
    async with proxy(emu, proxy_url, {"host": host, "port": 80}) as ws:
        reason = await expect_close(ws, 1011)
        assert reason.startswith("Failed to connect to target: üü")
        assert len(reason.encode()) <= 123


async def test_ipv6_loopback(emu: RunningEmulator, proxy_url: str) -> None:
    try:
        cm = serve(echo_handler, host="::1")
        target = await cm.__aenter__()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        for host in ("::1", "[::1]"):
            async with proxy(emu, proxy_url, {"host": host, "port": target.port}) as ws:
                reply = await ws.receive_json(timeout=TIMEOUT)
                assert reply == {"status": "connected", "target": f"[::1]:{target.port}"}
                await ws.send_bytes(b"six")
                assert await recv_exactly(ws, 3) == b"six"
    finally:
        await cm.__aexit__(None, None, None)


async def test_missing_sprite_fails_the_handshake(emu: RunningEmulator) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        async with emu.http.ws_connect(f"{emu.url}/v1/sprites/ghost/proxy", headers=emu.auth):
            pass
    assert info.value.status == 404


async def test_handshake_requires_the_token(emu: RunningEmulator, proxy_url: str) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        async with emu.http.ws_connect(proxy_url):
            pass
    assert info.value.status == 401
