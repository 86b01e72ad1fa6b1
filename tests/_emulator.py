"""An emulator served in the test's own event loop, and the checks that go with it.

:func:`serve` runs an emulator app on 127.0.0.1 for one ``async with`` block and
yields a :class:`RunningEmulator`, whose ``state`` the test may read and change
directly. The ``emu`` and ``exec_emu`` fixtures (tests/conftest.py) and the
emulator tests' ``emu`` (tests/emulator/conftest.py) are built on it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from sprites_async import SpritesClient
from sprites_async.emulator import EmulatorConfig, create_app
from sprites_async.emulator._procs import proc_table, session_members
from sprites_async.emulator._sprites import insert_sprite, new_record
from sprites_async.emulator._state import STATE_KEY, EmulatorState, SpriteRecord
from tests._fakes import our_tasks

EMU_TOKEN = "test-org/1/tok/secret"
"""The token of the tests' emulators."""


@dataclass
class RunningEmulator:
    """A started emulator app plus what tests need to talk to it."""

    url: str
    token: str
    state: EmulatorState
    http: aiohttp.ClientSession

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def add_sprite(self, name: str) -> SpriteRecord:
        """Insert a sprite directly, bypassing the API (for modules' own tests)."""
        rec = new_record(self.state, name)
        insert_sprite(self.state, rec)
        return rec

    async def api(
        self, method: str, path: str, *, json: Any = None, **kwargs: Any
    ) -> tuple[int, Any]:
        """One authenticated request; returns the status and the decoded JSON (or text)."""
        async with self.http.request(
            method, self.url + path, json=json, headers=self.auth, **kwargs
        ) as resp:
            body = await resp.read()
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, body.decode()


@asynccontextmanager
async def serve(
    config: EmulatorConfig, app: web.Application | None = None
) -> AsyncIterator[RunningEmulator]:
    """Serve ``app`` (default: a fresh one for ``config``) on loopback for one block."""
    if app is None:
        app = create_app(config)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    http = aiohttp.ClientSession()
    try:
        yield RunningEmulator(
            url=str(server.make_url("")).rstrip("/"),
            token=config.token,
            state=app[STATE_KEY],
            http=http,
        )
    finally:
        await http.close()
        await server.close()


async def probe(request: web.Request) -> web.StreamResponse:
    """A sprite-layer route of the tests' own: optionally sleeps, reports the status."""
    state = request.app[STATE_KEY]
    await asyncio.sleep(float(request.query.get("sleep", "0")))
    rec = state.sprites.get(request.match_info["name"])
    return web.json_response({"status": rec.status if rec else None})


async def probe_ws(request: web.Request) -> web.StreamResponse:
    """A sprite-layer WebSocket of the tests' own: echoes text frames."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


class RecordingSessions:
    """A stand-in for the exec session registry that records what it was asked."""

    def __init__(self) -> None:
        self.terminated: list[str] = []
        self.closed = False

    async def terminate_all(self, sprite: str) -> None:
        self.terminated.append(sprite)

    async def aclose(self) -> None:
        self.closed = True


async def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> None:
    """Poll ``predicate()`` until true."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(interval)


async def assert_no_leftovers(sids: Iterable[int], timeout: float = 3.0) -> None:
    """No process of any session remains, and no zombie child of ours."""
    sids = set(sids)
    me = os.getpid()
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        table = proc_table()
        left = [p for p in session_members(table, sids)]
        zombies = [p for p in table.values() if p.ppid == me and p.state == "Z"]
        if not left and not zombies:
            return
        if loop.time() > end:
            raise AssertionError(f"leftover processes: {left} zombies: {zombies}")
        await asyncio.sleep(0.02)


async def no_leftovers(emu: RunningEmulator, client: SpritesClient) -> None:
    """No session, process, SDK task or open socket is left once the client is closed."""
    manager = emu.state.sessions
    await wait_for(lambda: not manager.list("box"), timeout=5)
    await assert_no_leftovers(manager.sids)
    await client.aclose()
    assert our_tasks() == []
    await wait_for(lambda: not manager.sockets, timeout=5)  # every socket closed
