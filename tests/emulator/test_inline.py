"""Inline executor: synthetic commands with exactly the wire output of real ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest

from sprites_async.emulator import EmulatorConfig
from tests._emulator import RunningEmulator
from tests.emulator.exec_helpers import (
    SPRITE,
    Run,
    assert_clean,
    collect,
    exec_url,
    list_sessions,
    next_text,
    open_ws,
    private_fds,
    run_ws,
)


@pytest.fixture
def emulator_config(emulator_config: EmulatorConfig) -> EmulatorConfig:
    emulator_config.inline_exec = True
    emulator_config.sandbox = "none"
    return emulator_config


@pytest.fixture(autouse=True)
async def sprite(emu: RunningEmulator) -> AsyncIterator[str]:
    fds = private_fds()
    emu.add_sprite(SPRITE)
    yield SPRITE
    await assert_clean(emu, fds)


def normalise(run: Run) -> list[Any]:
    """The conversation without per-run values (ids, times, pids)."""
    out: list[Any] = []
    stdout = b""
    for kind, value in run.messages:
        if kind == "bin" and value[:1] == b"\x01":
            stdout += value[1:]  # frame boundaries carry no meaning
            continue
        if stdout:
            out.append(("stdout", stdout))
            stdout = b""
        if kind == "text":
            value = {
                k: v for k, v in value.items() if k not in ("session_id", "created", "pid", "msg")
            }
        out.append((kind, value))
    return out


async def both(emu: RunningEmulator, cmd: Sequence[str], **kwargs: Any) -> tuple[Run, Run]:
    sids_before = set(emu.state.sessions.sids)  # type: ignore[attr-defined]
    inline = await run_ws(emu, cmd, **kwargs)
    assert set(emu.state.sessions.sids) == sids_before  # type: ignore[attr-defined]  # no process
    emu.state.config.inline_exec = False
    try:
        real = await run_ws(emu, cmd, **kwargs)
    finally:
        emu.state.config.inline_exec = True
    assert len(emu.state.sessions.sids) == len(sids_before) + 1  # type: ignore[attr-defined]
    return inline, real


@pytest.mark.parametrize(
    "cmd",
    [
        ["echo", "hello", "world"],
        ["echo"],
        ["echo", "-n", "no newline"],
        ["/bin/echo", "x"],
        ["true"],
        ["false"],
        ["sh", "-c", "exit 7"],
        ["sh", "-c", "exit 300"],
        ["bash", "-c", "exit"],
        ["sleep", "0.05"],
        ["cat"],
        ["head", "-c", "200000", "/dev/zero"],
    ],
)
async def test_same_wire_output(emu: RunningEmulator, cmd: list[str]) -> None:
    inline, real = await both(emu, cmd)
    assert normalise(inline) == normalise(real)


async def test_cat_with_stdin(emu: RunningEmulator) -> None:
    inline, real = await both(emu, ["cat"], stdin=[b"\x00abc", b"\x00def\n", b"\x04"])
    assert normalise(inline) == normalise(real)
    assert inline.stdout == b"abcdef\n"


async def test_exit_builtin(emu: RunningEmulator) -> None:
    run = await run_ws(emu, ["exit", "3"])
    assert (run.exit_text, run.exit_frame) == (3, 3)
    assert not emu.state.sessions.sids  # type: ignore[attr-defined]


async def test_signal_and_list(emu: RunningEmulator) -> None:
    async with open_ws(emu, cmd=["sleep", "30"]) as ws:
        await next_text(ws)
        info = await next_text(ws)
        sessions = await list_sessions(emu)
        assert [s["id"] for s in sessions] == [info["session_id"]]
        assert sessions[0]["command"].endswith("sleep 30")
        await ws.send_json({"type": "signal", "signal": "INT"})
        run = await asyncio.wait_for(collect(ws, Run()), 5)
    assert run.exit_frame == 130
    assert not emu.state.sessions.sids  # type: ignore[attr-defined]


async def test_kill_endpoint(emu: RunningEmulator) -> None:
    async with open_ws(emu, cmd=["sleep", "30"]) as ws:
        await next_text(ws)
        session_id = (await next_text(ws))["session_id"]
        async with emu.http.post(
            exec_url(emu, f"/exec/{session_id}/kill"), headers=emu.auth
        ) as resp:
            body = await resp.text()
        assert '"exit_code":143' in body
        run = await asyncio.wait_for(collect(ws, Run()), 5)
    assert run.exit_frame == 143


async def test_unrecognised_falls_through(emu: RunningEmulator) -> None:
    run = await run_ws(emu, ["sh", "-c", "echo real"])
    assert run.stdout == b"real\n"
    assert len(emu.state.sessions.sids) == 1  # type: ignore[attr-defined]


async def test_zeros_respect_backpressure(emu: RunningEmulator) -> None:
    total = 48 * 1024 * 1024
    async with open_ws(emu, cmd=["head", "-c", str(total), "/dev/zero"]) as ws:
        await next_text(ws)
        session_id = (await next_text(ws))["session_id"]
        # Not reading: the producer must stall on the socket instead of buffering it all.
        await asyncio.sleep(0.3)
        assert emu.state.sessions.get(SPRITE, session_id) is not None  # type: ignore[attr-defined]
        received = 0
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                if msg.data[0] == 1:
                    assert msg.data.count(0) == len(msg.data) - 1
                    received += len(msg.data) - 1
                elif msg.data[0] == 3:
                    assert msg.data == b"\x03\x00"
    assert received == total


async def test_http_exec_inline(emu: RunningEmulator) -> None:
    async with emu.http.post(exec_url(emu, cmd=["echo", "hi"]), headers=emu.auth) as resp:
        assert await resp.read() == b"\x01hi\n\x03\x00"
    async with emu.http.post(
        exec_url(emu, cmd="cat", stdin="true"), headers=emu.auth, data=b"body"
    ) as resp:
        assert await resp.read() == b"\x01body\x03\x00"
    assert not emu.state.sessions.sids  # type: ignore[attr-defined]
