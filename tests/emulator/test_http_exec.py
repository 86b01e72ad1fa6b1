"""HTTP exec, ``POST /v1/sprites/{name}/exec`` (Section 3.12)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests._emulator import RunningEmulator
from tests.emulator.exec_helpers import (
    SPRITE,
    assert_clean,
    exec_url,
    list_sessions,
    private_fds,
    wait_for,
)


@pytest.fixture(autouse=True)
async def sprite(emu: RunningEmulator) -> AsyncIterator[str]:
    fds = private_fds()
    emu.add_sprite(SPRITE)
    yield SPRITE
    await assert_clean(emu, fds)


async def post(
    emu: RunningEmulator, data: bytes | None = None, **params: object
) -> tuple[int, str, list[bytes]]:
    """Status, content type and the body as received chunk by chunk."""
    headers = dict(emu.auth)
    if data is not None:
        headers["Content-Type"] = "application/octet-stream"
    async with emu.http.post(exec_url(emu, **params), headers=headers, data=data) as resp:
        chunks = [chunk async for chunk in resp.content.iter_any()]
        return resp.status, resp.headers.get("Content-Type", ""), chunks


async def test_frames_and_exit(emu: RunningEmulator) -> None:
    status, ctype, chunks = await post(
        emu, cmd=["sh", "-c", "echo out; sleep 0.05; echo err >&2; exit 3"]
    )
    assert status == 200
    assert ctype == "application/octet-stream"
    body = b"".join(chunks)
    assert body == b"\x01out\n\x02err\n\x03\x03"
    assert body.endswith(b"\x03\x03")


async def test_stdin_body(emu: RunningEmulator) -> None:
    status, _, chunks = await post(emu, b"hello body", cmd=["cat"], stdin=True)
    assert status == 200
    assert b"".join(chunks) == b"\x01hello body\x03\x00"


async def test_stdin_not_requested(emu: RunningEmulator) -> None:
    _status, _, chunks = await post(emu, b"ignored", cmd=["cat"])
    assert b"".join(chunks) == b"\x03\x00"


async def test_signal_death(emu: RunningEmulator) -> None:
    _status, _, chunks = await post(emu, cmd=["sh", "-c", "kill -TERM $$"])
    assert b"".join(chunks) == b"\x03\x8f"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"cmd": "sh", "tty": "true"}, "TTY not supported on POST /exec"),
        ({"cmd": "sh", "id": "12"}, "Unsupported parameters for POST /exec"),
        ({"cmd": "sh", "detachable": "true"}, "Unsupported parameters for POST /exec"),
        ({"cmd": "sh", "cc": "true"}, "Unsupported parameters for POST /exec"),
        ({}, "No command specified"),
    ],
)
async def test_rejected(emu: RunningEmulator, params: dict[str, str], message: str) -> None:
    async with emu.http.post(exec_url(emu, **params), headers=emu.auth) as resp:
        assert resp.status == 400
        assert await resp.text() == message + "\n"


async def test_start_failure(emu: RunningEmulator) -> None:
    async with emu.http.post(exec_url(emu, cmd="no-such-binary-xyz"), headers=emu.auth) as resp:
        assert resp.status == 500
        assert (await resp.text()).startswith("failed to start process")


async def test_suppress_exit(emu: RunningEmulator) -> None:
    emu.state.faults.suppress_exit = True
    _, _, chunks = await post(emu, cmd=["echo", "x"])
    assert b"".join(chunks) == b"\x01x\n"


async def test_one_chunk_per_frame(emu: RunningEmulator) -> None:
    """Read the raw chunked encoding: every frame is its own HTTP chunk."""
    host, port = emu.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    target = exec_url(emu, cmd=["sh", "-c", "printf a; sleep 0.05; printf b >&2; exit 4"])
    target = target[len(emu.url) :]
    writer.write(
        f"POST {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {emu.auth['Authorization']}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"x-content-type-options: nosniff" in head.lower()
    chunks = []
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        chunks.append(body[:size])
        body = body[size + 2 :]
        if size == 0:
            break
    assert chunks == [b"\x01a", b"\x02b", b"\x03\x04", b""]


async def test_client_leaving_detaches(emu: RunningEmulator) -> None:
    host, port = emu.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    target = exec_url(emu, cmd=["sleep", "30"], max_run_after_disconnect="200ms")
    writer.write(
        f"POST {target[len(emu.url) :]} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: {emu.auth['Authorization']}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    assert len(await list_sessions(emu)) == 1
    writer.close()
    await writer.wait_closed()
    await wait_for(lambda: not emu.state.sessions.list(SPRITE), 5)  # type: ignore[attr-defined]
