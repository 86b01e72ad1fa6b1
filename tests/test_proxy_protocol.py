"""The ``/proxy`` wire protocol against a scripted loopback server: frames, replies, closes."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from sprites_async import RetryPolicy, SpritesClient, SpritesTimeoutError
from sprites_async._proxy import (
    FRAME_SIZE,
    ProxyError,
    ProxyRejectedError,
    ProxyTargetUnreachableError,
    forward,
    open_connection,
)

Behaviour = Callable[[web.WebSocketResponse, "Seen"], Awaitable[None]]


@dataclass
class Seen:
    inits: list[object] = field(default_factory=list)
    frame_sizes: list[int] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)


@dataclass
class Fake:
    seen: Seen
    client: SpritesClient
    behaviour: list[Behaviour]


async def echo_after_connect(ws: web.WebSocketResponse, seen: Seen) -> None:
    await ws.send_str('{"status":"connected","target":"10.0.0.1:80"}')
    await ws.send_str('{"note":"text frames after the handshake are ignored"}')
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            seen.frame_sizes.append(len(msg.data))
            seen.received += msg.data
            await ws.send_bytes(msg.data)


@pytest.fixture
async def proxy_fake() -> AsyncIterator[Fake]:
    seen = Seen()
    behaviour: list[Behaviour] = [echo_after_connect]

    async def proxy(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        init = await ws.receive()
        assert init.type == WSMsgType.TEXT
        seen.inits.append(json.loads(init.data))
        await behaviour[0](ws, seen)
        if not ws.closed:
            await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/v1/sprites/box/proxy", proxy)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base_url = str(server.make_url("")).rstrip("/")
    try:
        async with SpritesClient("t", base_url=base_url, retry=RetryPolicy(max_attempts=1)) as c:
            yield Fake(seen, c, behaviour)
    finally:
        await server.close()


async def test_init_frame_and_frames_of_at_most_32_kib(proxy_fake: Fake) -> None:
    reader, writer = await open_connection(proxy_fake.client.sprite("box"), 5432, host="db")
    assert proxy_fake.seen.inits == [{"host": "db", "port": 5432}]
    payload = bytes(range(256)) * 4096  # 1 MiB, written in one go
    writer.write(payload)
    echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
    assert echoed == payload
    assert bytes(proxy_fake.seen.received) == payload
    assert max(proxy_fake.seen.frame_sizes) <= FRAME_SIZE
    writer.close()
    await writer.wait_closed()


async def test_forward_uses_one_websocket_per_connection(proxy_fake: Fake) -> None:
    async with forward(proxy_fake.client.sprite("box"), 80) as fwd:
        for i in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", fwd.local_port)
            writer.write(b"hi %d" % i)
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"hi %d" % i
            writer.close()
            await writer.wait_closed()
    assert proxy_fake.seen.inits == [{"host": "localhost", "port": 80}] * 3


async def close_with(code: int, reason: str) -> Behaviour:
    async def behaviour(ws: web.WebSocketResponse, seen: Seen) -> None:
        await ws.close(code=code, message=reason.encode())

    return behaviour


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (1003, "Invalid port number", ProxyRejectedError),
        (1003, "Invalid JSON in initialization message", ProxyRejectedError),
        (1011, "Failed to connect to target: connection refused", ProxyTargetUnreachableError),
        (1008, "policy", ProxyError),
    ],
)
async def test_close_codes_before_connected(
    proxy_fake: Fake, code: int, reason: str, cls: type[ProxyError]
) -> None:
    proxy_fake.behaviour[0] = await close_with(code, reason)
    with pytest.raises(cls) as caught:
        await open_connection(proxy_fake.client.sprite("box"), 80)
    assert type(caught.value) is cls
    assert caught.value.close_code == code
    assert caught.value.reason == reason
    assert reason in str(caught.value)
    assert isinstance(caught.value, ConnectionError)


async def test_error_status_reply(proxy_fake: Fake) -> None:
    async def refuse(ws: web.WebSocketResponse, seen: Seen) -> None:
        await ws.send_str('{"status":"error","error":"dial tcp: connection refused"}')

    proxy_fake.behaviour[0] = refuse
    with pytest.raises(ProxyTargetUnreachableError, match="connection refused"):
        await open_connection(proxy_fake.client.sprite("box"), 80)


async def test_no_reply_times_out(proxy_fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    import sprites_async._proxy as proxy

    monkeypatch.setattr(proxy, "CONNECT_REPLY_TIMEOUT", 0.2)

    async def silent(ws: web.WebSocketResponse, seen: Seen) -> None:
        await ws.receive()  # until the client gives up and closes

    proxy_fake.behaviour[0] = silent
    with pytest.raises(SpritesTimeoutError):
        await open_connection(proxy_fake.client.sprite("box"), 80)


@pytest.mark.parametrize(("code", "reason"), [(1011, "boom"), (1001, "upstream closed")])
async def test_abnormal_close_after_connect_resets_the_local_side(
    proxy_fake: Fake, code: int, reason: str
) -> None:
    async def send_then_break(ws: web.WebSocketResponse, seen: Seen) -> None:
        await ws.send_str('{"status":"connected","target":"x"}')
        await ws.send_bytes(b"partial")
        await ws.close(code=code, message=reason.encode())

    proxy_fake.behaviour[0] = send_then_break
    reader, writer = await open_connection(proxy_fake.client.sprite("box"), 80)
    assert await asyncio.wait_for(reader.readexactly(7), 5) == b"partial"
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 5)
    writer.close()


async def test_clean_close_after_connect_is_eof(proxy_fake: Fake) -> None:
    async def send_then_close(ws: web.WebSocketResponse, seen: Seen) -> None:
        await ws.send_str('{"status":"connected","target":"x"}')
        await ws.send_bytes(b"all of it")
        await ws.close()

    proxy_fake.behaviour[0] = send_then_close
    reader, writer = await open_connection(proxy_fake.client.sprite("box"), 80)
    assert await asyncio.wait_for(reader.read(), 5) == b"all of it"
    writer.close()
    await writer.wait_closed()


async def test_slow_local_reader_gets_backpressure(proxy_fake: Fake) -> None:
    """While nothing reads the local side, the relay stops reading the WebSocket.

    The server offers far more than every kernel buffer on the way can hold;
    it must stall, and the client process must not buffer it meanwhile.
    """
    sent = asyncio.Event()
    total = 256 * 1024 * 1024

    async def flood(ws: web.WebSocketResponse, seen: Seen) -> None:
        await ws.send_str('{"status":"connected","target":"x"}')
        chunk = b"f" * FRAME_SIZE
        try:
            for _ in range(total // FRAME_SIZE):
                await ws.send_bytes(chunk)
        except ConnectionError:
            return  # the client went away, as the test intends
        sent.set()

    proxy_fake.behaviour[0] = flood
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        reader, writer = await open_connection(
            proxy_fake.client.sprite("box"), 80, limit=FRAME_SIZE
        )
        assert await asyncio.wait_for(reader.readexactly(FRAME_SIZE), 5) == b"f" * FRAME_SIZE
        await asyncio.sleep(0.5)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert not sent.is_set(), "256 MiB went out while nobody read: no backpressure"
    assert peak < 16 * 1024 * 1024, f"the client buffered {peak / 2**20:.1f} MiB"
    # Reading resumes the flow.
    got = 0
    while got < 4 * 1024 * 1024:
        got += len(await asyncio.wait_for(reader.read(1 << 20), 5))
    writer.close()
    await writer.wait_closed()
