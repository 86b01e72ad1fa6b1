"""``GET /ports/watch`` (section 11.1) over a raw WebSocket, with real listening processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sprites_async.emulator import EmulatorConfig
from tests._emulator import RunningEmulator, serve
from tests.emulator.exec_helpers import SPRITE, open_ws, read_until

LISTENER = (
    "import socket,sys\n"
    "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True); sys.stdin.readline(); s.close()\n"
    "print('closed', flush=True); sys.stdin.read()\n"
)
"""Listens until the first stdin line, then keeps running without the listener."""

SERVICE = (
    "import socket,time\n"
    "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True)\n"
    "while True: time.sleep(1)\n"
)


@pytest.fixture
def emulator_config(emulator_config: EmulatorConfig) -> EmulatorConfig:
    emulator_config.extra["exec_port_poll"] = 0.05
    return emulator_config


@pytest.fixture
async def emu(emulator_config: EmulatorConfig) -> AsyncIterator[RunningEmulator]:
    async with serve(emulator_config) as running:
        running.add_sprite(SPRITE)
        yield running


def watch_url(emu: RunningEmulator, sprite: str = SPRITE) -> str:
    return f"{emu.url}/v1/sprites/{sprite}/ports/watch".replace("http://", "ws://", 1)


async def next_event(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    decoded: dict[str, Any] = json.loads(msg.data)
    return decoded


async def test_snapshot_then_opened_and_closed(emu: RunningEmulator) -> None:
    async with emu.http.ws_connect(watch_url(emu), headers=emu.auth) as watch:
        assert await next_event(watch) == {"type": "port_list", "ports": []}
        async with open_ws(emu, cmd=["python3", "-c", LISTENER], stdin=True) as ex:
            port = int((await read_until(ex, b"\n"))[1:])
            opened = await next_event(watch)
            assert opened["type"] == "port_opened"
            assert (opened["port"], opened["address"]) == (port, "127.0.0.1")
            assert isinstance(opened["pid"], int) and opened["pid"] > 0
            await ex.send_bytes(b"\x00go\n")
            closed = await next_event(watch)
            assert closed == {**opened, "type": "port_closed"}
            await ex.send_bytes(b"\x04")
        await watch.close()
    assert watch.close_code == 1000


async def test_snapshot_lists_ports_already_open(emu: RunningEmulator) -> None:
    params: dict[str, Any] = {"stdin": True, "max_run_after_disconnect": "10ms"}
    async with open_ws(emu, cmd=["python3", "-c", LISTENER], **params) as ex:
        port = int((await read_until(ex, b"\n"))[1:])
        async with emu.http.ws_connect(watch_url(emu), headers=emu.auth) as watch:
            snapshot = await next_event(watch)
            assert snapshot["type"] == "port_list"
            [item] = snapshot["ports"]
            assert item["type"] == "port_opened"
            assert (item["port"], item["address"]) == (port, "127.0.0.1")
        # The command killed (it outlives its socket by 10 ms) is also a close.
        async with emu.http.ws_connect(watch_url(emu), headers=emu.auth) as watch:
            assert (await next_event(watch))["ports"] == [item]
            await ex.close()
            assert await next_event(watch) == {**item, "type": "port_closed"}


async def test_service_listener_is_reported(emu: RunningEmulator) -> None:
    services = f"{emu.url}/v1/sprites/{SPRITE}/services/web"
    async with emu.http.ws_connect(watch_url(emu), headers=emu.auth) as watch:
        assert (await next_event(watch))["ports"] == []
        body = {"cmd": "python3", "args": ["-c", SERVICE]}
        async with emu.http.put(services + "?duration=50ms", json=body, headers=emu.auth) as resp:
            assert resp.status == 200
            await resp.read()
        opened = await next_event(watch)
        assert opened["type"] == "port_opened"
        assert opened["address"] == "127.0.0.1"
        async with emu.http.post(services + "/stop?timeout=1s", headers=emu.auth) as resp:
            assert resp.status == 200
            await resp.read()
        assert await next_event(watch) == {**opened, "type": "port_closed"}


async def test_other_sprites_ports_are_not_reported(emu: RunningEmulator) -> None:
    emu.add_sprite("other")
    async with open_ws(emu, cmd=["python3", "-c", LISTENER], stdin=True) as ex:
        await read_until(ex, b"\n")
        async with emu.http.ws_connect(watch_url(emu, "other"), headers=emu.auth) as watch:
            assert await next_event(watch) == {"type": "port_list", "ports": []}
            with pytest.raises(asyncio.TimeoutError):
                await next_event(watch, timeout=0.3)


async def test_errors(emu: RunningEmulator) -> None:
    status, text = await emu.api("GET", f"/v1/sprites/{SPRITE}/ports/watch")
    assert status == 400
    assert "websocket" in text
    with pytest.raises(aiohttp.WSServerHandshakeError) as missing:
        await emu.http.ws_connect(watch_url(emu, "ghost"), headers=emu.auth)
    assert missing.value.status == 404
    with pytest.raises(aiohttp.WSServerHandshakeError) as unauthorized:
        await emu.http.ws_connect(watch_url(emu))
    assert unauthorized.value.status == 401


async def test_shutdown_closes_an_open_watch(emulator_config: EmulatorConfig) -> None:
    async with serve(emulator_config) as running:
        running.add_sprite(SPRITE)
        watch = await running.http.ws_connect(watch_url(running), headers=running.auth)
        assert (await next_event(watch))["type"] == "port_list"
        stopping = asyncio.ensure_future(running.state.sessions.aclose())
        msg = await asyncio.wait_for(watch.receive(), 5.0)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert watch.close_code == 1001
        await stopping
        await watch.close()
