"""Exec sessions (Section 4): list, inspect, attach with scrollback, disconnects, kill."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest

from sprites_async.emulator import EmulatorConfig
from sprites_async.emulator._procs import is_running, sandbox_available
from tests._emulator import RunningEmulator
from tests.emulator.exec_helpers import (
    SPRITE,
    Run,
    assert_clean,
    assert_no_leftovers,
    collect,
    exec_url,
    list_sessions,
    next_text,
    open_ws,
    private_fds,
    read_until,
    wait_for,
)


@pytest.fixture(params=["none", "bwrap"])
def emulator_config(
    emulator_config: EmulatorConfig, request: pytest.FixtureRequest
) -> EmulatorConfig:
    if request.param == "bwrap" and not sandbox_available():
        pytest.skip("bwrap is not installed")
    emulator_config.sandbox = request.param
    # Keep the sprite from going cold (which ends sessions) during these tests.
    emulator_config.warm_after = 30.0
    emulator_config.cold_after = 60.0
    return emulator_config


@pytest.fixture(autouse=True)
async def sprite(emu: RunningEmulator) -> AsyncIterator[str]:
    fds = private_fds()
    emu.add_sprite(SPRITE)
    yield SPRITE
    await assert_clean(emu, fds)


async def start_detached(emu: RunningEmulator, cmd: list[str], **params: object) -> str:
    """Start a command, read its session id, disconnect."""
    async with open_ws(emu, cmd=cmd, **params) as ws:
        await next_text(ws)
        info = await next_text(ws)
        assert info["type"] == "session_info"
        if "ready" in params:
            pass
        session_id: str = info["session_id"]
    return session_id


async def kill_events(
    emu: RunningEmulator, session_id: str, **kwargs: object
) -> tuple[int, list[dict[str, object]] | str]:
    async with emu.http.post(
        exec_url(emu, f"/exec/{session_id}/kill", **kwargs.pop("query", {})),  # type: ignore[arg-type]
        headers=emu.auth,
        **kwargs,  # type: ignore[arg-type]
    ) as resp:
        body = await resp.read()
        if resp.status != 200:
            return resp.status, body.decode()
        assert resp.content_type == "application/x-ndjson"
        return 200, [msgspec.json.decode(line) for line in body.splitlines() if line]


async def test_head_exec(emu: RunningEmulator) -> None:
    async with emu.http.head(exec_url(emu), headers=emu.auth) as resp:
        assert resp.status == 200
        assert await resp.read() == b""


async def test_list_and_inspect(emu: RunningEmulator) -> None:
    assert await list_sessions(emu) == []
    async with open_ws(emu, cmd=["sleep", "30"], dir="/tmp") as ws:
        await next_text(ws)
        info = await next_text(ws)
        sessions = await list_sessions(emu)
        assert len(sessions) == 1
        entry = sessions[0]
        assert entry["id"] == info["session_id"]
        assert entry["command"].endswith("/sleep 30")
        assert entry["command"].startswith("/")
        assert entry["workdir"] == "/tmp"
        assert entry["tty"] is False
        assert entry["created"].endswith("Z")
        assert isinstance(entry["bytes_per_second"], float)
        assert isinstance(entry["is_active"], bool)
        async with emu.http.get(exec_url(emu, f"/exec/{entry['id']}"), headers=emu.auth) as resp:
            assert resp.status == 200
            assert await resp.json() == entry
        await ws.send_json({"type": "signal", "signal": "TERM"})
        await collect(ws, Run(), until_exit=True)
    # Gone from the list as soon as the process exited.
    assert await list_sessions(emu) == []
    async with emu.http.get(exec_url(emu, f"/exec/{entry['id']}"), headers=emu.auth) as resp:
        assert resp.status == 404
        assert await resp.text() == f"session not found: {entry['id']}\n"


async def test_attach_with_scrollback(emu: RunningEmulator) -> None:
    script = "echo first; echo second >&2; read x; echo got $x; exit 5"
    async with open_ws(
        emu, cmd=["sh", "-c", script], stdin=True, max_run_after_disconnect="30s"
    ) as ws:
        await next_text(ws)
        session_id = (await next_text(ws))["session_id"]
        await read_until(ws, b"second")
    await asyncio.sleep(0.05)
    assert [s["id"] for s in await list_sessions(emu)] == [session_id]
    async with open_ws(emu, f"/exec/{session_id}") as ws:
        info = await next_text(ws)
        assert info["type"] == "session_info"
        assert info["is_owner"] is False
        assert info["session_id"] == session_id
        scroll = await ws.receive()
        assert scroll.type == aiohttp.WSMsgType.BINARY
        assert scroll.data == b"\x01first\nsecond\n"
        await ws.send_bytes(b"\x00there\n")
        run = await asyncio.wait_for(collect(ws, Run()), 10)
    assert run.stdout == b"got there\n"
    assert (run.exit_text, run.exit_frame) == (5, 5)


@pytest.mark.parametrize("key", ["id", "session_id"])
async def test_legacy_attach(emu: RunningEmulator, key: str) -> None:
    session_id = await start_detached(emu, ["sh", "-c", "echo hello; sleep 30"])
    async with open_ws(emu, **{key: session_id}) as ws:
        assert (await next_text(ws))["is_owner"] is False
        await read_until(ws, b"hello")
        await ws.send_json({"type": "signal", "signal": "KILL"})
        run = await asyncio.wait_for(collect(ws, Run()), 10)
    assert run.exit_frame == 137


async def test_attach_unknown(emu: RunningEmulator) -> None:
    for path, params in (("/exec/424242", {}), ("/exec", {"id": "424242"})):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            async with open_ws(emu, path, **params):
                pass
        assert info.value.status == 404


async def test_tty_attach(emu: RunningEmulator) -> None:
    session_id = await start_detached(
        emu, ["sh", "-c", "echo ready; read x; echo bye $x"], tty=True
    )
    await asyncio.sleep(0.1)
    async with open_ws(emu, f"/exec/{session_id}") as ws:
        info = await next_text(ws)
        assert (info["tty"], info["is_owner"]) == (True, False)
        assert b"ready" in await read_until(ws, b"ready")
        await ws.send_bytes(b"now\r")
        run = await asyncio.wait_for(collect(ws, Run()), 10)
    assert b"bye now" in run.raw
    assert run.exit_text == 0


async def test_two_attachments_see_live_output(emu: RunningEmulator) -> None:
    async with open_ws(emu, cmd=["cat"], stdin=True) as owner:
        await next_text(owner)
        session_id = (await next_text(owner))["session_id"]
        async with open_ws(emu, f"/exec/{session_id}") as other:
            await next_text(other)
            await owner.send_bytes(b"\x00ping\n")
            assert await read_until(owner, b"ping") == b"\x01ping\n"
            assert await read_until(other, b"ping") == b"\x01ping\n"
            await other.send_bytes(b"\x04")
            a, b = await asyncio.gather(collect(owner, Run()), collect(other, Run()))
    assert a.exit_frame == b.exit_frame == 0


async def test_max_run_after_disconnect_expires(emu: RunningEmulator) -> None:
    session_id = await start_detached(emu, ["sleep", "30"], max_run_after_disconnect="300ms")
    assert [s["id"] for s in await list_sessions(emu)] == [session_id]
    assert is_running(int(session_id))
    await asyncio.sleep(0.1)
    assert [s["id"] for s in await list_sessions(emu)] == [session_id]
    await wait_for(lambda: emu.state.sessions.get(SPRITE, session_id) is None, 3)  # type: ignore[attr-defined]
    assert await list_sessions(emu) == []


async def test_tty_survives_disconnect(emu: RunningEmulator) -> None:
    session_id = await start_detached(emu, ["sleep", "30"], tty=True)
    await asyncio.sleep(0.4)
    assert [s["id"] for s in await list_sessions(emu)] == [session_id]
    assert (await list_sessions(emu))[0]["tty"] is True


async def test_reattach_cancels_expiry(emu: RunningEmulator) -> None:
    session_id = await start_detached(emu, ["sleep", "30"], max_run_after_disconnect="0.3s")
    async with open_ws(emu, f"/exec/{session_id}") as ws:
        await next_text(ws)
        await asyncio.sleep(0.5)
        assert [s["id"] for s in await list_sessions(emu)] == [session_id]


async def test_kill_events(emu: RunningEmulator) -> None:
    session_id = await start_detached(emu, ["sleep", "30"], max_run_after_disconnect="30s")
    status, events = await kill_events(emu, session_id)
    assert status == 200
    assert events == [
        {
            "type": "signal",
            "message": f"Signaling SIGTERM to process group {session_id}",
            "signal": "SIGTERM",
            "pid": int(session_id),
        },
        {"type": "exited", "message": "Process exited"},
        {"type": "complete", "exit_code": 143},
    ]
    assert await list_sessions(emu) == []
    status, text = await kill_events(emu, session_id)
    assert status == 410
    status, text = await kill_events(emu, "424242")
    assert (status, text) == (404, "session not found: 424242\n")


async def test_kill_escalates(emu: RunningEmulator) -> None:
    script = 'trap "" TERM; echo ready; while :; do sleep 0.05; done'
    async with open_ws(emu, cmd=["sh", "-c", script], max_run_after_disconnect="30s") as ws:
        await next_text(ws)
        session_id = (await next_text(ws))["session_id"]
        await read_until(ws, b"ready")
        status, events = await kill_events(
            emu, session_id, query={"signal": "TERM", "timeout": "200ms"}
        )
        run = await asyncio.wait_for(collect(ws, Run()), 10)
    assert status == 200
    assert isinstance(events, list)
    assert [e["type"] for e in events] == ["signal", "timeout", "killed", "exited", "complete"]
    assert events[-1]["exit_code"] == 137
    assert run.exit_frame == 137


async def test_kill_json_body(emu: RunningEmulator) -> None:
    session_id = await start_detached(emu, ["sleep", "30"], max_run_after_disconnect="30s")
    status, events = await kill_events(emu, session_id, json={"signal": "SIGINT", "timeout": 5})
    assert status == 200
    assert isinstance(events, list)
    assert events[0]["signal"] == "SIGINT"
    assert events[-1] == {"type": "complete", "exit_code": 130}


async def test_kill_query_wins_over_body(emu: RunningEmulator) -> None:
    session_id = await start_detached(emu, ["sleep", "30"], max_run_after_disconnect="30s")
    _status, events = await kill_events(
        emu, session_id, query={"signal": "KILL"}, json={"signal": "SIGINT"}
    )
    assert isinstance(events, list)
    assert events[0]["signal"] == "SIGKILL"
    assert events[-1]["exit_code"] == 137


async def test_terminate_all(emu: RunningEmulator) -> None:
    ids = [
        await start_detached(emu, ["sleep", "30"], max_run_after_disconnect="30s"),
        await start_detached(emu, ["sleep", "31"], tty=True),
    ]
    assert sorted(s["id"] for s in await list_sessions(emu)) == sorted(ids)
    async with open_ws(emu, f"/exec/{ids[0]}") as ws:
        await next_text(ws)
        await emu.state.sessions.terminate_all(SPRITE)
        run = await asyncio.wait_for(collect(ws, Run()), 10)
    assert run.exit_frame == 137
    assert await list_sessions(emu) == []
    await assert_no_leftovers(int(i) for i in ids)
