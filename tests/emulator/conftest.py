"""Fixtures for emulator tests: a real emulator on loopback, one per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sprites_async.emulator import EmulatorConfig, create_app
from sprites_async.emulator._sprites import insert_sprite, new_record
from sprites_async.emulator._state import STATE_KEY, EmulatorState, SpriteRecord


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


@pytest.fixture
def emulator_config(tmp_path: Path) -> EmulatorConfig:
    return EmulatorConfig(
        token="test-org/1/tok/secret",
        state_dir=tmp_path / "state",
        exit_linger=0.0,
        warm_after=0.5,
        cold_after=2.0,
    )


@pytest.fixture
async def emu(emulator_config: EmulatorConfig) -> AsyncIterator[RunningEmulator]:
    async with serve(emulator_config) as running:
        yield running


async def _probe(request: web.Request) -> web.StreamResponse:
    """A sprite-layer route of the tests' own: optionally sleeps, reports the status."""
    state = request.app[STATE_KEY]
    await asyncio.sleep(float(request.query.get("sleep", "0")))
    rec = state.sprites.get(request.match_info["name"])
    return web.json_response({"status": rec.status if rec else None})


async def _probe_ws(request: web.Request) -> web.StreamResponse:
    """A sprite-layer WebSocket of the tests' own: echoes text frames."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


@pytest.fixture
async def probe_emu(emulator_config: EmulatorConfig) -> AsyncIterator[RunningEmulator]:
    """``emu`` plus test-only sprite-layer routes ``/_probe`` and ``/_probe/ws``.

    They exercise the sprite-layer middleware without depending on the exec,
    fs or checkpoint modules.
    """
    app = create_app(emulator_config)
    app.router.add_get("/v1/sprites/{name}/_probe", _probe)
    app.router.add_get("/v1/sprites/{name}/_probe/ws", _probe_ws)
    async with serve(emulator_config, app) as running:
        yield running


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


MakeSprite = Callable[[str], SpriteRecord]
