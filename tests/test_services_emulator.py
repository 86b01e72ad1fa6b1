"""Services against the emulator, and a port forward to a server running inside the sprite."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sprites_async import ConflictError, SpritesClient
from sprites_async._proxy import forward
from sprites_async._services import (
    ServiceComplete,
    ServiceError,
    ServiceNotFoundError,
    ServicesResource,
    ServiceStarted,
    ServiceStdout,
)
from sprites_async.emulator import EmulatorConfig, create_app
from sprites_async.emulator import _services as emulator_services
from sprites_async.emulator._state import STATE_KEY
from tests._emulator import RunningEmulator, serve


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[RunningEmulator]:
    config = EmulatorConfig(token="test-org/1/tok/secret", state_dir=tmp_path / "state")
    app = create_app(config)
    emulator_services.setup(app, app[STATE_KEY])  # a no-op once create_app wires it
    async with serve(config, app) as running:
        running.add_sprite("box")
        yield running


@pytest.fixture
async def services(emu: RunningEmulator) -> AsyncIterator[ServicesResource]:
    async with SpritesClient(emu.token, base_url=emu.url) as client:
        yield ServicesResource(client.sprite("box"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_service_lifecycle(services: ServicesResource) -> None:
    events = [
        e
        async for e in services.create(
            "ticker", cmd="sh", args=["-c", "echo ready; exec sleep 60"], duration=0.5
        )
    ]
    assert isinstance(events[0], ServiceStarted)
    assert any(isinstance(e, ServiceStdout) and e.data.strip() == "ready" for e in events)
    assert isinstance(events[-1], ServiceComplete)

    listed = await services.list()
    assert [s.name for s in listed] == ["ticker"]
    assert listed[0].status == "running"
    got = await services.get("ticker")
    assert got.cmd == "sh" and got.state is not None and got.state.pid

    logs = [e async for e in services.logs("ticker")]
    assert any(getattr(e, "data", "").strip() == "ready" for e in logs)

    stopped = await services.stop("ticker", timeout=2)
    assert stopped.log_files
    assert (await services.get("ticker")).status == "stopped"
    with pytest.raises(ConflictError):
        await services.stop("ticker")
    await services.start("ticker", duration=0.2)
    await services.signal("ticker", "HUP")  # kills sleep: a crash, restarted by the runtime
    await services.delete("ticker")
    with pytest.raises(ServiceNotFoundError):
        await services.get("ticker")


async def test_a_service_that_dies_at_once_fails_its_start(services: ServicesResource) -> None:
    with pytest.raises(ServiceError) as caught:
        await services.create("crash", cmd="sh", args=["-c", "echo bye >&2; exit 3"], duration=1)
    assert caught.value.exit_code == 3
    await services.delete("crash")


async def test_forward_to_a_server_inside_the_sprite(services: ServicesResource) -> None:
    port = free_port()
    await services.create(
        "web",
        cmd="python3",
        args=["-m", "http.server", str(port), "--bind", "127.0.0.1"],
        dir="/home/sprite",
        duration=0.2,
    )
    try:
        sprite = services._sprite
        async with forward(sprite, port) as fwd, aiohttp.ClientSession() as http:
            for _ in range(50):  # the server needs a moment to bind
                try:
                    async with http.get(f"http://127.0.0.1:{fwd.local_port}/") as resp:
                        assert resp.status == 200
                        assert "Directory listing" in await resp.text()
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("the server inside the sprite never answered through the forward")
    finally:
        await services.stop("web", timeout=1)
        await services.delete("web")
