"""The SDK against the emulator's decoding quirks: answers the official SDKs accept.

Each quirk makes the emulator answer the way the real service (or an older
server, or another SDK's reading) can; the public SDK must cope with every one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sprites_async import SpritesClient
from sprites_async._config import ExecSettings
from sprites_async._exec import SessionInfoEvent
from tests._emulator import no_leftovers

DEADLINE = 30.0  # generous: the machine is shared; a hang is what this guards against


@pytest.fixture
async def client(exec_emu: Any) -> AsyncIterator[SpritesClient]:
    c = SpritesClient(exec_emu.token, base_url=exec_emu.url)
    c.exec_settings = ExecSettings(kill_grace=1.0, kill_wait=2.0)
    yield c
    await no_leftovers(exec_emu, c)


# ------------------------------------------------------------------ null-arrays


async def test_null_arrays_services_created_without_args(
    exec_emu: Any, client: SpritesClient
) -> None:
    exec_emu.state.quirks.add("null-arrays")
    services = client.sprite("box").services
    await services.create("loop", cmd="sleep", args=["30"], duration=0.1)
    await services.create("bare", cmd="true", duration=0.1)
    status, raw = await exec_emu.api("GET", "/v1/sprites/box/services/bare")
    assert (status, raw["args"], raw["needs"]) == (200, None, None)  # the quirk is on

    listed = {s.name: s for s in await services.list()}
    assert (listed["bare"].args, listed["bare"].needs) == ([], [])
    assert (listed["loop"].args, listed["loop"].needs) == (["30"], [])
    got = await services.get("bare")
    assert (got.args, got.needs, got.raw["args"]) == ([], [], None)
    for name in ("loop", "bare"):
        await services.delete(name)


async def test_null_arrays_sprites_get_list_create(exec_emu: Any, client: SpritesClient) -> None:
    exec_emu.state.quirks.add("null-arrays")
    created = await client.sprites.create("nully", labels=[])
    assert created.labels == []
    await client.sprites.update("nully", labels=["ci"])
    await client.sprites.update("nully", labels=[])  # now "labels": [] would come back null
    status, raw = await exec_emu.api("GET", "/v1/sprites/nully")
    assert status == 200
    got = await client.sprites.get("nully")
    assert got.labels == [] and got.raw.get("labels") == raw.get("labels")
    empty = await client.sprites.list(prefix="zzz")
    assert empty.sprites == [] and empty.raw["sprites"] is None
    assert [s.name async for s in client.sprites.list(prefix="nul")] == ["nully"]
    report = await client.sprites.delete_many(prefix="nul")
    assert report.deleted == ["nully"]


async def test_null_arrays_sessions_and_checkpoints(exec_emu: Any, client: SpritesClient) -> None:
    exec_emu.state.quirks.add("null-arrays")
    sprite = client.sprite("box")
    assert await sprite.sessions.list() == []
    checkpoints = await sprite.checkpoints.list()
    assert [cp.id for cp in checkpoints] == ["v0"]
    assert all(cp.history == (cp.raw.get("history") or []) for cp in checkpoints)
    assert (await sprite.policy.get()).rules == []
    assert await (sprite.fs() / "/tmp").scandir() == []


# ------------------------------------------------------- session-info-odd-types


async def test_process_keeps_the_session_id_with_odd_session_info(
    exec_emu: Any, client: SpritesClient
) -> None:
    exec_emu.state.quirks.add("session-info-odd-types")
    sprite = client.sprite("box")
    async with asyncio.timeout(DEADLINE):
        async with sprite.process("sh", "-c", "echo one; sleep 30", kill_on_exit=False) as proc:
            assert await proc.stdout.__anext__() == b"one\n"
            assert proc.info is not None
            session_id = proc.info.session_id
            assert session_id is not None and session_id.isdigit()
            assert proc.session_id == session_id
            assert proc.tty is False  # "false" read as False, not as a truthy string
            assert proc.info.command is None  # the object was lost alone
            await proc.detach()
        assert [s.id for s in await sprite.sessions.list()] == [session_id]

        async with sprite.sessions.attach(session_id, kill_on_exit=True) as attached:
            assert attached.tty is False
            events = attached.__aiter__()
            first = await events.__anext__()
            assert isinstance(first, SessionInfoEvent) and first.session_id == session_id
            assert first.is_owner is False  # 0 read as False
        assert await sprite.sessions.list() == []


async def test_tty_process_with_odd_session_info(exec_emu: Any, client: SpritesClient) -> None:
    exec_emu.state.quirks.add("session-info-odd-types")
    sprite = client.sprite("box")
    async with asyncio.timeout(DEADLINE):
        async with sprite.process("sh", "-c", "echo hi; read x", tty=True) as proc:
            assert proc.info is not None and proc.info.session_id is not None
            assert proc.tty is True  # "true"
            assert proc.info.command is None  # an object where text belongs: lost alone
            session_id = proc.info.session_id
            events = [e async for e in sprite.sessions.kill(session_id, timeout=5)]
            assert events[-1].type == "complete"
            assert await proc.wait() != 0


# -------------------------------------------------------- kill-event-data-error


async def test_sessions_kill_with_text_in_data(exec_emu: Any, client: SpritesClient) -> None:
    exec_emu.state.quirks.add("kill-event-data-error")
    sprite = client.sprite("box")
    async with sprite.process("sleep", "30", kill_on_exit=False) as proc:
        session_id = await proc.detach()
    async with exec_emu.http.post(
        f"{exec_emu.url}/v1/sprites/box/exec/{session_id}/kill", headers=exec_emu.auth
    ) as resp:
        lines = [json.loads(line) for line in (await resp.read()).splitlines()]
    assert lines[0]["data"].startswith("Signaling") and "message" not in lines[0]  # the quirk

    async with sprite.process("sleep", "30", kill_on_exit=False) as proc:
        session_id = await proc.detach()
    assert session_id is not None
    stream = sprite.sessions.kill(session_id, signal="TERM", timeout=5)
    async with stream:
        events = [e async for e in stream]
    assert [e.type for e in events] == ["signal", "exited", "complete"]
    assert events[0].message.startswith("Signaling SIGTERM")  # read from `data`
    assert events[1].message == "Process exited"
    assert stream.result == 143


# ------------------------------------------------------------- fs-range-ignored


async def test_ranged_reads_when_the_server_ignores_ranges(
    exec_emu: Any, client: SpritesClient
) -> None:
    data = bytes(range(256)) * 300  # 76800 bytes: several chunks
    path = client.sprite("box").fs() / "blob.bin"
    await path.write_bytes(data)
    exec_emu.state.quirks.add("fs-range-ignored")
    async with exec_emu.http.get(
        exec_emu.url + "/v1/sprites/box/fs/read",
        params={"path": "/home/sprite/blob.bin", "workingDir": "/"},
        headers={**exec_emu.auth, "Range": "bytes=10-19"},
    ) as resp:
        assert resp.status == 200 and len(await resp.read()) == len(data)  # the quirk is on

    for offset, length in [(0, 10), (10, 10), (1000, 70000), (70000, None), (5, 0), (76799, 5)]:
        got = b"".join([c async for c in path.open_read(offset=offset, length=length)])
        end = None if length is None else offset + length
        assert got == data[offset:end], (offset, length)
    assert b"".join([c async for c in path.open_read(offset=len(data) + 5)]) == b""


# ---------------------------------------------------------------- clear_labels


async def test_update_with_no_labels_clears_them(exec_emu: Any) -> None:
    sent: list[bytes] = []

    async def on_chunk(_: Any, __: Any, params: aiohttp.TraceRequestChunkSentParams) -> None:
        sent.append(params.chunk)

    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(on_chunk)
    async with SpritesClient(exec_emu.token, base_url=exec_emu.url, trace_configs=[trace]) as c:
        await c.sprites.create("labelled", labels=["ci", "x"])
        sent.clear()
        info = await c.sprite("labelled").update(labels=[])
        assert info.labels == []
        assert json.loads(b"".join(sent)) == {"clear_labels": True}
        assert (await c.sprites.get("labelled")).labels == []
        await c.sprites.delete("labelled")


# ---------------------------------------------------------------- names and stat


async def test_names_outside_the_create_rule_get_a_404_not_a_refusal(
    exec_emu: Any, client: SpritesClient
) -> None:
    from sprites_async import NotFoundError

    for name in ("UPPER", "dot.ted", "ünï", "%2e%2e"):
        with pytest.raises(NotFoundError):
            await client.sprites.get(name)
        with pytest.raises(NotFoundError):
            await (client.sprite(name).fs() / "x").read_bytes()
    assert sorted(exec_emu.state.sprites) == ["box"]


async def test_stat_per_section_7_3(exec_emu: Any) -> None:
    listed: list[str] = []

    async def on_start(_: Any, __: Any, params: aiohttp.TraceRequestStartParams) -> None:
        if params.url.path.endswith("/fs/list"):
            listed.append(params.url.query["path"])

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with SpritesClient(
        exec_emu.token, base_url=exec_emu.url, trace_configs=[trace]
    ) as client:
        fs = client.sprite("box").fs()
        await (fs / "d" / "only.txt").write_bytes(b"12345")
        await (fs / "f.txt").write_bytes(b"1")
        info = await (fs / "f.txt").stat()
        assert (info.name, info.type, info.size) == ("f.txt", "file", 1)
        assert listed == ["/home/sprite/f.txt"]  # the path itself, and nothing else
        # A directory with one child is not mistaken for that child.
        listed.clear()
        d = await (fs / "d").stat()
        assert (d.name, d.path, d.type) == ("d", "/home/sprite/d", "directory")
        assert listed == ["/home/sprite/d", "/home/sprite"]
        await _stat_edges(fs)


async def _stat_edges(fs: Any) -> None:
    assert (await (fs / "/").stat()).is_dir
    with pytest.raises(FileNotFoundError):
        await (fs / "missing").stat()
