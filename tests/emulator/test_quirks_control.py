"""The ``/control`` and exec quirks, seen on the wire with a raw WebSocket client."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web

from sprites_async.emulator import EmulatorConfig, create_app
from tests._emulator import RunningEmulator, serve
from tests.emulator.exec_helpers import (
    SPRITE,
    assert_clean,
    exec_url,
    open_ws,
    private_fds,
    wait_for,
    ws_url,
)


@pytest.fixture(autouse=True)
async def sprite(emu: RunningEmulator) -> AsyncIterator[str]:
    fds = private_fds()
    emu.add_sprite(SPRITE)
    yield SPRITE
    await assert_clean(emu, fds)


def upgrade_headers(emu: RunningEmulator) -> dict[str, str]:
    return {
        **emu.auth,
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }


def start(cmd: list[str]) -> str:
    body = {"type": "op.start", "op": "exec", "args": {"cmd": cmd, "stdin": "false"}}
    return "control:" + msgspec.json.encode(body).decode()


def home(emu: RunningEmulator) -> Path:
    return Path(emu.state.sprite_root(SPRITE)) / "home" / "sprite"


@pytest.mark.parametrize(
    ("quirk", "status", "text"),
    [
        ("control-400", 400, "websocket: the client is not using the websocket protocol"),
        ("control-403", 403, "websocket: request origin not allowed"),
        ("control-500", 500, "control channel unavailable"),
        ("control-502", 502, "bad gateway"),
        ("control-503", 503, "service unavailable"),
    ],
)
async def test_control_refusals_answer_the_upgrade_in_text(
    emu: RunningEmulator, quirk: str, status: int, text: str
) -> None:
    emu.state.quirks.add(quirk)
    async with emu.http.get(exec_url(emu, "/control"), headers=upgrade_headers(emu)) as resp:
        assert resp.status == status
        assert resp.content_type == "text/plain"
        assert (await resp.text()).startswith(text)
    # The sprite layer's other routes are untouched, and so is /control without it.
    async with open_ws(emu, "/exec", cmd="true") as ws:
        assert (await ws.receive()).type == aiohttp.WSMsgType.TEXT
    emu.state.quirks.discard(quirk)
    async with open_ws(emu, "/control"):
        pass


async def test_control_no_ack_sends_everything_but_the_ack(emu: RunningEmulator) -> None:
    emu.state.quirks.add("control-no-ack")
    async with open_ws(emu, "/control") as ws:
        await ws.send_str(start(["sh", "-c", "echo hi"]))
        kinds: list[str] = []
        while True:
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
            if msg.type == aiohttp.WSMsgType.BINARY:
                kinds.append(f"bin{msg.data[0]}")
                continue
            text: str = msg.data
            kind = msgspec.json.decode(text.removeprefix("control:"))["type"]
            kinds.append(kind)
            if kind == "op.complete":
                break
    assert kinds == ["session_info", "bin1", "exit", "bin3", "op.complete"]


async def test_control_drop_after_start_runs_the_command_and_cuts_the_line(
    emu: RunningEmulator,
) -> None:
    emu.state.quirks.add("control-drop-after-start")
    async with open_ws(emu, "/control") as ws:
        await ws.send_str(start(["sh", "-c", "echo ran >> ran.txt"]))
        msg = await asyncio.wait_for(ws.receive(), 5)
        # No ack, no frame at all, and no close frame: the TCP connection just ends.
        assert msg.type == aiohttp.WSMsgType.CLOSED, msg
        assert ws.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE
    ran = home(emu) / "ran.txt"
    await wait_for(lambda: ran.exists() and ran.read_bytes() == b"ran\n")


def count_control_handlers(app: web.Application, running: list[int]) -> None:
    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        on_control = request.path.endswith("/control")
        running[0] += on_control
        try:
            return await handler(request)
        finally:
            running[0] -= on_control

    app.middlewares.insert(0, count)


async def test_control_hang_never_answers_and_ends_when_the_client_leaves(
    emulator_config: EmulatorConfig,
) -> None:
    app = create_app(emulator_config)
    running = [0]
    count_control_handlers(app, running)
    async with serve(emulator_config, app) as emu:
        emu.add_sprite(SPRITE)
        emu.state.quirks.add("control-hang")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(
                emu.http.ws_connect(ws_url(emu, "/control"), headers=emu.auth), 0.5
            )
        assert running[0] == 1  # still holding the upgrade: the client gave up first
        await wait_for(lambda: running[0] == 0)  # and now the handler saw it go


async def test_control_hang_does_not_delay_shutdown(emulator_config: EmulatorConfig) -> None:
    app = create_app(emulator_config)
    running = [0]
    count_control_handlers(app, running)
    async with aiohttp.ClientSession() as http:
        async with serve(emulator_config, app) as emu:
            emu.add_sprite(SPRITE)
            emu.state.quirks.add("control-hang")
            dial = asyncio.ensure_future(http.ws_connect(ws_url(emu, "/control"), headers=emu.auth))
            await wait_for(lambda: running[0] == 1)
            loop = asyncio.get_running_loop()
            started = loop.time()
        # serve() has closed the emulator: the hanging handler ended with it.
        assert loop.time() - started < 10  # aiohttp would wait 60 s for a stuck handler
        assert running[0] == 0
        with pytest.raises(aiohttp.ClientError):
            await dial  # never answered: the connection was cut, no 101


async def test_wsexec_sends_only_stream_frames_and_never_answers_a_close(
    emu: RunningEmulator,
) -> None:
    emu.state.quirks.add("exec-wsexec")
    url = ws_url(emu, "/exec", cmd=["sh", "-c", "cat; exit 4"], stdin=True)
    ws = await emu.http.ws_connect(
        url, headers=emu.auth, timeout=aiohttp.ClientWSTimeout(ws_close=1.0)
    )
    try:
        await ws.send_bytes(b"\x00hello\n")
        await ws.send_bytes(b"\x04")
        frames: list[bytes] = []
        while not frames or frames[-1][:1] != b"\x03":
            msg = await asyncio.wait_for(ws.receive(), 5)
            # No debug, no session_info, no text exit: binary frames only.
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
            frames.append(msg.data)
        assert frames == [b"\x01hello\n", b"\x03\x04"]
        # The server does not close first: it waits for the client.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.receive(), 0.5)
    finally:
        # Stdin is closed: the server reads nothing more, so our close frame
        # goes unanswered and aiohttp gives up after ws_close.
        await ws.close()
    assert ws.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE
    await wait_for(lambda: not emu.state.sessions.sockets)  # it saw us go


async def test_wsexec_without_stdin_still_reads_and_answers_a_close(
    emu: RunningEmulator,
) -> None:
    emu.state.quirks.add("exec-wsexec")
    url = ws_url(emu, "/exec", cmd=["sh", "-c", "echo hi"])
    async with emu.http.ws_connect(url, headers=emu.auth) as ws:
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"\x01hi\n")
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"\x03\x00")
        await asyncio.wait_for(ws.close(), 5)
        assert ws.close_code == aiohttp.WSCloseCode.OK  # answered


async def test_wsexec_leaves_attach_its_session_info(emu: RunningEmulator) -> None:
    emu.state.quirks.add("exec-wsexec")
    url = ws_url(emu, "/exec", cmd=["sleep", "5"], max_run_after_disconnect="10s")
    async with emu.http.ws_connect(url, headers=emu.auth):
        await wait_for(lambda: len(emu.state.sessions.list(SPRITE)) == 1)
    (session,) = emu.state.sessions.list(SPRITE)
    async with open_ws(emu, f"/exec/{session.id}") as ws:
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.TEXT
        assert msgspec.json.decode(msg.data)["type"] == "session_info"
    await session.terminate()


async def test_a_command_whose_socket_died_during_attach_does_not_outlive_its_timer(
    emu: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A control socket that dies while the emulator is still sending
    # session_info cancels the op inside ``attach``: the command must still
    # end after max_run_after_disconnect, not run until the emulator stops.
    from sprites_async.emulator import _wsio

    stuck = asyncio.Event()

    async def never_sent(self: object, info: object) -> None:
        stuck.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(_wsio.WSAttachment, "send_info", never_sent)
    body = {
        "type": "op.start",
        "op": "exec",
        "args": {"cmd": ["sleep", "60"], "stdin": "false", "max_run_after_disconnect": "200ms"},
    }
    async with open_ws(emu, "/control") as ws:
        await ws.send_str("control:" + msgspec.json.encode(body).decode())
        await asyncio.wait_for(stuck.wait(), 10)
        assert emu.state.sessions.list(SPRITE)
    # The client is gone and the op cancelled inside attach; the 60 s sleep
    # must not outlive this 15 s bound.
    await wait_for(lambda: not emu.state.sessions.list(SPRITE), timeout=15)
