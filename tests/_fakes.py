"""A scripted loopback sprite server for the exec, control and sessions tests.

Each test gives the server a script: an async function that receives a
:class:`Conn` (the server side of one WebSocket) and plays the messages the
case needs (exit before trailing output, a 4-byte exit frame, a dropped
socket ...). The server records what the client sent. The ``fake`` fixture
(tests/conftest.py) serves one :class:`FakeSprites` on 127.0.0.1 per test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from sprites_async import SpritesClient
from sprites_async._config import ExecSettings
from tests._mock import TOKEN

FAST = ExecSettings(
    exit_grace=0.3,
    ping_interval=None,
    dead_after=None,
    kill_grace=0.3,
    kill_wait=0.5,
    close_timeout=0.5,
    session_info_timeout=1.0,
    op_complete_timeout=0.5,
)


class Conn:
    """The server side of one exec/control WebSocket."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.request = request
        self.ws = ws
        self.received: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.log: list[tuple[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None

    @property
    def query(self) -> Any:
        return self.request.query

    def start_reading(self) -> None:
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is WSMsgType.TEXT:
                item: tuple[str, Any] = ("text", msg.data)
            elif msg.type is WSMsgType.BINARY:
                item = ("bin", msg.data)
            else:
                continue
            self.log.append(item)
            self.received.put_nowait(item)
        self.received.put_nowait(("closed", None))

    async def recv(self, timeout: float = 5.0) -> tuple[str, Any]:
        return await asyncio.wait_for(self.received.get(), timeout)

    async def recv_json(self, timeout: float = 5.0) -> dict[str, Any]:
        while True:
            kind, data = await self.recv(timeout)
            if kind == "text":
                decoded: dict[str, Any] = msgspec.json.decode(data)
                return decoded
            if kind == "closed":
                raise AssertionError("client closed the socket")

    async def text(self, obj: Any) -> None:
        await self.ws.send_str(obj if isinstance(obj, str) else msgspec.json.encode(obj).decode())

    async def info(self, sid: Any = "42", tty: bool | None = False, **extra: Any) -> None:
        body = {"type": "session_info", "session_id": sid, "command": "cmd", **extra}
        if tty is not None:
            body["tty"] = tty
        await self.text(body)

    async def out(self, data: bytes, stream: int = 1) -> None:
        await self.ws.send_bytes(bytes([stream]) + data)

    async def raw(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def exit_text(self, code: int) -> None:
        await self.text({"type": "exit", "exit_code": code})

    async def exit_frame(self, code: int) -> None:
        await self.ws.send_bytes(bytes([3, code]))

    def drop(self) -> None:
        """Cut the TCP connection without a close frame."""
        transport = self.request.transport
        assert transport is not None
        transport.abort()

    async def client_closed(self, timeout: float = 5.0) -> None:
        while (await self.recv(timeout))[0] != "closed":
            pass


Script = Callable[[Conn], Awaitable[None]]


class FakeSprites:
    """Routes of one sprite (``box``) whose behaviour each test scripts."""

    def __init__(self) -> None:
        self.exec_script: Script | None = None
        self.attach_script: Script | None = None
        self.control_script: Script | None = None
        self.capabilities: str | None = "signal"
        self.read_client = True
        # Seconds the /exec upgrade is held after the request arrived (the
        # "command" counts as started then, as on the real server).
        self.handshake_delay = 0.0
        self.upgrades_received = asyncio.Event()
        self.path_attach_status: int | None = None
        self.control_status: int | None = None
        self.control_body = b"404 page not found\n"
        self.sessions_body: Any = {"sessions": [], "count": 0}
        self.kill_handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None
        self.http_exec_chunks: list[bytes] = []
        self.conns: list[Conn] = []
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.url = ""
        self.app = web.Application()
        base = "/v1/sprites/{name}"
        self.app.router.add_get(base + "/exec", self._exec, allow_head=False)
        self.app.router.add_post(base + "/exec", self._http_exec)
        self.app.router.add_get(base + "/exec/{id}", self._attach_path, allow_head=False)
        self.app.router.add_post(base + "/exec/{id}/kill", self._kill)
        self.app.router.add_get(base + "/control", self._control, allow_head=False)

    def _record(self, request: web.Request) -> None:
        query = {k: request.query.getall(k) for k in request.query}
        self.requests.append((request.method, request.path, query))

    def requests_to(self, suffix: str) -> list[tuple[str, str, dict[str, list[str]]]]:
        return [r for r in self.requests if r[1].endswith(suffix)]

    async def _serve(self, request: web.Request, script: Script | None) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=self.read_client)
        if self.capabilities is not None:
            ws.headers["X-Sprite-Capabilities"] = self.capabilities
        await ws.prepare(request)
        conn = Conn(request, ws)
        self.conns.append(conn)
        if self.read_client:
            conn.start_reading()
        try:
            if script is not None:
                await script(conn)
        finally:
            if conn._reader is not None:
                conn._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await conn._reader
            if not ws.closed:
                await ws.close()
        return ws

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        if request.match_info["name"] != "box":
            return web.json_response({"error": "sprite not found"}, status=404)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.json_response(self.sessions_body)
        if "id" in request.query:
            return await self._serve(request, self.attach_script)
        self.upgrades_received.set()
        if self.handshake_delay:
            await asyncio.sleep(self.handshake_delay)
        return await self._serve(request, self.exec_script)

    async def _attach_path(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        if self.path_attach_status is not None:
            return web.Response(status=self.path_attach_status, text="404 page not found\n")
        return await self._serve(request, self.attach_script)

    async def _control(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        if self.control_status is not None:
            return web.Response(status=self.control_status, body=self.control_body)
        return await self._serve(request, self.control_script)

    async def _kill(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        assert self.kill_handler is not None, "no kill handler scripted"
        return await self.kill_handler(request)

    async def _http_exec(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        body = await request.read()
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        for chunk in self.http_exec_chunks:
            await resp.write(chunk.replace(b"{stdin}", body))
            await asyncio.sleep(0.01)  # keep chunks apart on the wire
        await resp.write_eof()
        return resp

    def client(self, **settings: Any) -> SpritesClient:
        """A client of this server: direct exec unless ``control=True``, fast settings."""
        control = settings.pop("control", False)
        client = SpritesClient(TOKEN, base_url=self.url)
        client.exec_settings = ExecSettings(**{**FAST.__dict__, **settings})
        client.control = control
        return client


def ndjson_response(
    *events: dict[str, Any],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler that answers with ``events``, one JSON object a line, then ends."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/x-ndjson"
        await resp.prepare(request)
        for event in events:
            await resp.write(msgspec.json.encode(event) + b"\n")
        await resp.write_eof()
        return resp

    return handler


def our_tasks() -> list[asyncio.Task[Any]]:
    """Unfinished tasks that belong to the SDK's exec machinery."""
    names = ("ExecSession.", "ControlPool.", "_shielded", "_consume")
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and getattr(t.get_coro(), "__qualname__", "").startswith(names)
    ]
