"""``sprite.ports.watch()`` end to end against the emulator's ``/ports/watch``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sprites_async import SpritesClient
from sprites_async._ports import PortClosed, PortInfo, PortList, PortOpened, PortWatch
from tests._emulator import no_leftovers

LISTENER = (
    "import socket,sys\n"
    "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True); sys.stdin.readline(); s.close()\n"
    "print('closed', flush=True); sys.stdin.read()\n"
)

SERVICE = (
    "import socket,time\n"
    "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True)\n"
    "while True: time.sleep(1)\n"
)


@pytest.fixture
async def client(exec_emu: Any) -> AsyncIterator[SpritesClient]:
    client = SpritesClient(exec_emu.token, base_url=exec_emu.url)
    yield client
    await no_leftovers(exec_emu, client)


async def next_event(watch: PortWatch) -> Any:
    return await asyncio.wait_for(watch.__anext__(), 5.0)


async def test_process_port_opened_then_closed(client: SpritesClient) -> None:
    sprite = client.sprite("box")
    async with sprite.ports.watch() as watch:
        assert await next_event(watch) == PortList(ports=[])
        async with sprite.process("python3", "-c", LISTENER) as proc:
            port = int(await proc.stdout.__anext__())
            opened = await next_event(watch)
            assert isinstance(opened, PortOpened)
            assert (opened.port, opened.address) == (port, "127.0.0.1")
            await proc.write(b"go\n")
            closed = await next_event(watch)
            assert closed == PortClosed(port=port, address="127.0.0.1", pid=opened.pid)
            await proc.close_stdin()
            assert await proc.wait() == 0


async def test_snapshot_has_a_running_service(client: SpritesClient) -> None:
    sprite = client.sprite("box")
    await sprite.services.create("web", cmd="python3", args=["-c", SERVICE], duration=0.2)
    async with sprite.ports.watch() as watch:
        snapshot = await next_event(watch)
        assert isinstance(snapshot, PortList)
        [listener] = snapshot.ports
        assert isinstance(listener, PortInfo)
        assert listener.address == "127.0.0.1"
        await sprite.services.stop("web", timeout=1)
        closed = await next_event(watch)
        assert isinstance(closed, PortClosed)
        assert (closed.port, closed.pid) == (listener.port, listener.pid)
    await sprite.services.delete("web")
