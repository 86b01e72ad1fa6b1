"""A client that goes away mid-stream is normal: no ERROR, no traceback (issue 13 item 10)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from sprites_async.emulator import Emulator

SIZE = 32 * 1024 * 1024
CHUNK = 1024 * 1024


@pytest.fixture
def emu() -> Iterator[Emulator]:
    # The threaded emulator: its own loop writes while this one drops the socket.
    with Emulator(exit_linger=0.0, sandbox="none") as emulator:
        yield emulator


@pytest.fixture
async def http(emu: Emulator) -> AsyncIterator[Any]:
    auth = {"Authorization": f"Bearer {emu.token}"}
    async with aiohttp.ClientSession(headers=auth) as session:
        async with session.post(f"{emu.url}/v1/sprites", json={"name": "s"}) as resp:
            assert resp.status in (200, 201)
        yield session


async def _chunks() -> AsyncIterator[bytes]:
    for _ in range(SIZE // CHUNK):
        yield b"x" * CHUNK


def _no_errors(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert bad == [], [(r.name, r.getMessage(), r.exc_info) for r in bad]


async def _drop_mid_stream(http: Any, method: str, url: str, **kw: Any) -> None:
    async with http.request(method, url, **kw) as resp:
        assert resp.status == 200
        await resp.content.readany()
        resp.connection.transport.abort()
    await asyncio.sleep(1.0)  # the server meets the dead socket, and logs (or not)


async def test_download_dropped_mid_stream(
    emu: Emulator, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    base = f"{emu.url}/v1/sprites/s/fs"
    async with http.put(
        base + "/write",
        params={"path": "/tmp/big.bin"},
        data=_chunks(),
        headers={"Content-Type": "application/octet-stream"},
    ) as resp:
        assert resp.status == 200
    caplog.set_level(logging.DEBUG)
    await _drop_mid_stream(http, "GET", base + "/read", params={"path": "/tmp/big.bin"})
    _no_errors(caplog)
    assert any("the client left" in r.getMessage() for r in caplog.records)


async def test_checkpoint_stream_dropped(
    emu: Emulator, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    base = f"{emu.url}/v1/sprites/s"
    await _drop_mid_stream(http, "POST", base + "/checkpoint", json={"comment": "c"})
    await _drop_mid_stream(http, "POST", base + "/checkpoints/v0/restore")
    _no_errors(caplog)


async def test_service_log_stream_dropped(
    emu: Emulator, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    base = f"{emu.url}/v1/sprites/s/services"
    script = "while true; do echo tick; sleep 0.05; done"
    async with http.put(
        base + "/ticker",
        params={"duration": "0s"},
        json={"cmd": "sh", "args": ["-c", script]},
    ) as resp:
        assert resp.status == 200
        await resp.read()
    caplog.set_level(logging.DEBUG)
    await _drop_mid_stream(http, "GET", base + "/ticker/logs", params={"duration": "5s"})
    _no_errors(caplog)
    async with http.delete(base + "/ticker") as resp:
        assert resp.status in (200, 204)
