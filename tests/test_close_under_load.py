"""Closing the client (or an app shutting down) under every kind of live operation.

Only typed errors (``sprites_async._errors``) or ``CancelledError`` may come
out, never an aiohttp or OS exception, and nothing may be left behind (the
conftest fixtures check tasks, sockets and child processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from sprites_async import SpritesClient, SpritesError
from sprites_async._config import ExecSettings

SETTINGS = ExecSettings(kill_grace=0.5, kill_wait=1.0, exit_grace=0.5, close_timeout=0.5)

Op = Callable[[SpritesClient, asyncio.Event], Awaitable[Any]]


# --------------------------------------------------------- a hanging NDJSON server


@pytest.fixture
async def streams() -> AsyncIterator[str]:
    """Checkpoint and service-log streams that send one event, then nothing, forever."""

    async def hang(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/x-ndjson"
        await resp.prepare(request)
        await resp.write(b'{"type":"info","data":"working"}\n')
        with contextlib.suppress(Exception):
            await asyncio.sleep(60)
        return resp

    app = web.Application()
    app.router.add_post("/v1/sprites/{name}/checkpoint", hang)
    app.router.add_get("/v1/sprites/{name}/services/{svc}/logs", hang)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A TCP echo server on loopback: what the sprite (sandbox "none") forwards to."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------- operations


async def process_waiting(client: SpritesClient, started: asyncio.Event, _: int) -> None:
    async with client.sprite("box").process("sleep", "30") as proc:
        started.set()
        await proc.wait()


async def process_reading(client: SpritesClient, started: asyncio.Event, _: int) -> None:
    script = "while :; do echo tick; sleep 0.05; done"
    async with client.sprite("box").process("sh", "-c", script) as proc:
        async for _chunk in proc.stdout:
            started.set()


async def process_writing(client: SpritesClient, started: asyncio.Event, _: int) -> None:
    async with client.sprite("box").process("cat") as proc:
        while True:
            await proc.write(b"x" * 4096)
            await proc.resize(100, 30)
            started.set()
            await asyncio.sleep(0.01)


async def process_signalling(client: SpritesClient, started: asyncio.Event, _: int) -> None:
    async with client.sprite("box").process("sh", "-c", "trap '' USR1; sleep 30") as proc:
        while True:
            await proc.signal("USR1")
            started.set()
            await asyncio.sleep(0.01)


async def attach(client: SpritesClient, started: asyncio.Event, _: int) -> None:
    sprite = client.sprite("box")
    async with sprite.process("sleep", "30", kill_on_exit=False) as first:
        sid = await first.detach()
    assert sid is not None
    async with sprite.sessions.attach(sid) as proc:
        started.set()
        await proc.wait()


async def pool_exec(client: SpritesClient, started: asyncio.Event, _: int) -> None:
    client.control = True
    sprite = client.sprite("box")
    await sprite.exec("true")  # the pool has a socket now
    started.set()
    await sprite.exec("sleep", "30")


async def direct_exec(client: SpritesClient, started: asyncio.Event, _: int) -> None:
    client.control = False
    started.set()
    await client.sprite("box").exec("sh", "-c", "echo hi; exec sleep 30")


async def http_exec(client: SpritesClient, started: asyncio.Event, _: int) -> None:
    started.set()
    await client.sprite("box").run_http("sh", "-c", "echo hi; exec sleep 30")


async def ping_until_reset(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, started: asyncio.Event
) -> None:
    try:
        while True:
            writer.write(b"ping")
            await writer.drain()
            if await reader.read(4) == b"":
                await asyncio.sleep(0.01)
            started.set()
    except ConnectionResetError:
        return  # a tunnel broken by the closed client: the documented local reset
    finally:
        writer.close()


async def forward(client: SpritesClient, started: asyncio.Event, port: int) -> None:
    async with client.sprite("box").forward(port) as fwd:
        reader, writer = await asyncio.open_connection("127.0.0.1", fwd.local_port)
        await ping_until_reset(reader, writer, started)


async def open_connection(client: SpritesClient, started: asyncio.Event, port: int) -> None:
    reader, writer = await client.sprite("box").open_connection(port)
    await ping_until_reset(reader, writer, started)


async def logs_follow(client: SpritesClient, started: asyncio.Event, _: int) -> None:
    async for _event in client.sprite("box").services.logs("web", follow=True):
        started.set()


async def checkpoint_stream(client: SpritesClient, started: asyncio.Event, _: int) -> None:
    async for _event in client.sprite("box").checkpoints.create(comment="x"):
        started.set()


async def checkpoint_awaited(client: SpritesClient, started: asyncio.Event, _: int) -> None:
    started.set()
    await client.sprite("box").checkpoints.create(comment="x")


EMULATED = [
    process_waiting,
    process_reading,
    process_writing,
    process_signalling,
    attach,
    pool_exec,
    direct_exec,
    http_exec,
    forward,
    open_connection,
]
STREAMED = [logs_follow, checkpoint_stream, checkpoint_awaited]


def assert_typed(exc: BaseException | None) -> None:
    if exc is None or isinstance(exc, asyncio.CancelledError):
        return
    assert isinstance(exc, SpritesError), f"an untyped error escaped: {exc!r}"
    assert not isinstance(exc, aiohttp.ClientError), repr(exc)


async def outcome(task: asyncio.Task[Any], timeout: float = 15.0) -> BaseException | None:
    done, _ = await asyncio.wait({task}, timeout=timeout)
    assert done, "the operation did not end after its client was closed"
    if task.cancelled():
        return asyncio.CancelledError()
    return task.exception()


async def close_under(op: Op, client: SpritesClient, port: int, order: str) -> None:
    started = asyncio.Event()
    task = asyncio.ensure_future(op(client, started, port))  # type: ignore[call-arg]
    ready = asyncio.ensure_future(started.wait())
    await asyncio.wait({task, ready}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    assert started.is_set(), f"{op.__name__} did not start: {task}"
    await asyncio.sleep(0.05)
    if order == "close, then cancel":
        await client.aclose()
        done, _ = await asyncio.wait({task}, timeout=2)
        if not done:
            task.cancel()
    else:  # an app shutting down: its tasks are cancelled while the client closes
        task.cancel()
        await asyncio.sleep(0)
        await client.aclose()
    assert_typed(await outcome(task))


ORDERS = ["close, then cancel", "cancel while closing"]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("op", EMULATED, ids=lambda op: op.__name__)
async def test_closing_the_client_under_a_live_operation(
    exec_emu: Any, echo_port: int, op: Op, order: str
) -> None:
    client = SpritesClient(exec_emu.token, base_url=exec_emu.url)
    client.exec_settings = SETTINGS
    try:
        await close_under(op, client, echo_port, order)
    finally:
        await client.aclose()
        await exec_emu.state.sessions.terminate_all("box")  # what a closed client left running


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("op", STREAMED, ids=lambda op: op.__name__)
async def test_closing_the_client_under_a_live_stream(streams: str, op: Op, order: str) -> None:
    client = SpritesClient("test-org/1/tok/secret", base_url=streams)
    try:
        await close_under(op, client, 0, order)
    finally:
        await client.aclose()


# ------------------------------------------- tunnels never wait for a close reply


@pytest.fixture
async def deaf_proxy() -> AsyncIterator[tuple[str, list[WSMsgType]]]:
    """/proxy and /ports/watch routes that read our close frame and never answer it."""
    closes_seen: list[WSMsgType] = []

    async def until_close(ws: web.WebSocketResponse) -> None:
        with contextlib.suppress(Exception):
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
                    continue
                if msg.type is WSMsgType.CLOSE:
                    closes_seen.append(msg.type)
                    await asyncio.sleep(30)  # never answer it
                return

    async def proxy(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoclose=False)
        await ws.prepare(request)
        init = await ws.receive()
        if '"port":81' in init.data:
            await ws.send_str('{"status":"error","error":"connection refused"}')
        else:
            await ws.send_str('{"status":"connected","target":"localhost:80"}')
        await until_close(ws)
        return ws

    async def watch(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoclose=False)
        await ws.prepare(request)
        await ws.send_str('{"type":"port_list","ports":[]}')
        await until_close(ws)
        return ws

    app = web.Application()
    app.router.add_get("/v1/sprites/{name}/proxy", proxy)
    app.router.add_get("/v1/sprites/{name}/ports/watch", watch)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), closes_seen
    finally:
        await server.close()


async def relayed(sprite: Any) -> None:
    async with sprite.forward(80) as fwd:
        reader, writer = await asyncio.open_connection("127.0.0.1", fwd.local_port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        await writer.wait_closed()
        while fwd.active_connections:
            await asyncio.sleep(0.01)


async def refused(sprite: Any) -> None:
    with pytest.raises(SpritesError):
        await sprite.open_connection(81)


async def watched(sprite: Any) -> None:
    async with sprite.ports.watch() as watch:
        await watch.__anext__()


@pytest.mark.parametrize("use", [relayed, refused, watched], ids=lambda f: f.__name__)
async def test_tunnels_close_without_waiting_for_the_servers_reply(
    deaf_proxy: tuple[str, list[WSMsgType]], use: Callable[[Any], Awaitable[None]]
) -> None:
    url, closes_seen = deaf_proxy
    rounds = 3
    async with SpritesClient("test-org/1/tok/secret", base_url=url) as client:
        start = time.monotonic()
        for _ in range(rounds):
            await use(client.sprite("box"))
        elapsed = time.monotonic() - start
    # The close does not wait for the server, which may read the frame later.
    for _ in range(100):
        if len(closes_seen) >= rounds:
            break
        await asyncio.sleep(0.02)
    assert closes_seen == [WSMsgType.CLOSE] * rounds  # our close frame did go out
    assert elapsed < rounds * 0.5  # waiting for the reply costs 2 s per tunnel
