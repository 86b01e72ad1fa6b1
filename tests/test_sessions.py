"""Exec sessions: list, attach (with scrollback and the legacy form), kill streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sprites_async import (
    APIError,
    EventOperation,
    NotFoundError,
    ProtocolError,
    SpritesClient,
    StreamError,
)
from sprites_async._config import ExecSettings
from sprites_async._exec import ExecSessionInfo, KillEvent, OutputEvent
from sprites_async._paging import ListPage
from tests._emulator import no_leftovers
from tests._fakes import Conn, FakeSprites, ndjson_response


@pytest.fixture
async def sprite(exec_emu: Any) -> AsyncIterator[Any]:
    client = SpritesClient(exec_emu.token, base_url=exec_emu.url)
    client.exec_settings = ExecSettings(kill_grace=1.0, kill_wait=2.0)
    yield client.sprite("box")
    await no_leftovers(exec_emu, client)


# --------------------------------------------------------------- the emulator


async def test_list_attach_with_scrollback_and_exit(sprite: Any) -> None:
    script = "echo hello-scrollback; read x; echo bye-$x; exit 3"
    async with sprite.process("sh", "-c", script, tty=True) as proc:
        async for chunk in proc.stdout:
            if b"hello-scrollback" in chunk:
                break
        session_id = await proc.detach()
    assert session_id is not None
    sessions = await sprite.sessions.list()
    assert [s.id for s in sessions] == [session_id]
    assert isinstance(sessions[0], ExecSessionInfo)
    assert sessions[0].tty is True
    assert "sh" in sessions[0].command
    # Lists like checkpoints.list()/services.list(): a one-page ListPage, or each entry.
    assert isinstance(sessions, ListPage) and sessions.next_token is None
    assert [s.id async for s in sprite.sessions.list()] == [session_id]

    async with sprite.sessions.attach(session_id) as proc:
        assert proc.info is not None
        assert proc.info.tty is True
        assert proc.info.is_owner is False
        first = await proc.stdout.__anext__()
        assert b"hello-scrollback" in first  # scrollback arrives first
        await proc.write(b"now\r")
        rest = b""
        async for chunk in proc.stdout:
            rest += chunk
        assert b"bye-now" in rest
        assert await proc.wait() == 3
    assert await sprite.sessions.list() == []


async def test_attach_events_and_non_tty(sprite: Any) -> None:
    async with sprite.process(
        "sh", "-c", "echo one; sleep 30", max_run_after_disconnect="30s"
    ) as proc:
        assert await proc.stdout.__anext__() == b"one\n"
        session_id = await proc.detach()
    async with sprite.sessions.attach(int(session_id), kill_on_exit=True) as proc:
        assert proc.tty is False
        events = proc.__aiter__()
        assert (await events.__anext__()).session_id == session_id  # type: ignore[union-attr]
        assert await events.__anext__() == OutputEvent(stream="stdout", data=b"one\n")
    # kill_on_exit=True: leaving the block ended it
    assert await sprite.sessions.list() == []


async def test_attach_to_a_dead_session(sprite: Any) -> None:
    with pytest.raises(NotFoundError):
        async with sprite.sessions.attach("999999"):
            pass


async def test_kill_stream_and_410(sprite: Any) -> None:
    async with sprite.process("sleep", "30", kill_on_exit=False) as proc:
        session_id = await proc.detach()
    assert session_id is not None
    stream = sprite.sessions.kill(session_id, signal="TERM", timeout=5)
    assert isinstance(stream, EventOperation)  # the one event-stream type
    with pytest.raises(StreamError, match="no final result"):
        stream.result  # noqa: B018
    events: list[KillEvent] = []
    async with stream:
        async for event in stream:
            events.append(event)
    assert events[0].type == "signal"
    assert events[-1].type == "complete"
    assert stream.result == 143
    assert await sprite.sessions.kill(session_id) is None  # already gone: 410 = success
    with pytest.raises(NotFoundError):
        await sprite.sessions.kill("999999")


async def test_kill_escalates(sprite: Any) -> None:
    async with sprite.process(
        "sh", "-c", "trap '' TERM; echo r; sleep 30", kill_on_exit=False
    ) as p:
        assert await p.stdout.__anext__() == b"r\n"
        session_id = await p.detach()
    events = [e async for e in sprite.sessions.kill(session_id, timeout=0.2)]
    assert [e.type for e in events] == ["signal", "timeout", "killed", "exited", "complete"]
    assert events[-1].exit_code == 137


# ------------------------------------------------------- against a scripted server


async def test_list_accepts_int_ids_and_aliases(fake: FakeSprites) -> None:
    fake.sessions_body = {
        "count": 3,
        "sessions": [
            {
                "id": 15,
                "command": "/usr/bin/sleep 654",
                "tty": False,
                "created": "2026-01-05T10:30:00Z",
            },
            {"session_id": "16", "command": "bash", "tty": True, "is_active": True},
            {"id": "17", "bytes_per_second": 125.5, "future_field": {"x": 1}},
        ],
    }
    async with fake.client() as client:
        sessions = await client.sprite("box").sessions.list()
    assert [s.id for s in sessions] == ["15", "16", "17"]
    assert sessions[0].command == "/usr/bin/sleep 654"
    assert sessions[1].tty is True
    assert sessions[2].bytes_per_second == 125.5
    assert sessions[2].raw["future_field"] == {"x": 1}


async def test_list_refuses_an_entry_without_an_id_rather_than_drop_it(
    fake: FakeSprites,
) -> None:
    fake.sessions_body = {"sessions": [{"id": "15"}, {"command": "no id"}], "count": 2}
    async with fake.client() as client:
        with pytest.raises(ProtocolError, match=r"sessions\[1\]"):
            await client.sprite("box").sessions.list()


async def test_list_reads_odd_fields_one_by_one(fake: FakeSprites) -> None:
    fake.sessions_body = {
        "sessions": [{"id": 15, "tty": "true", "bytes_per_second": "oops", "command": None}],
        "count": "1",
    }
    async with fake.client() as client:
        (session,) = await client.sprite("box").sessions.list()
    assert (session.id, session.tty, session.bytes_per_second) == ("15", True, 0.0)
    assert session.raw["bytes_per_second"] == "oops"


async def test_list_surfaces_an_error_key(fake: FakeSprites) -> None:
    fake.sessions_body = {"sessions": [], "count": 0, "error": "runner unavailable"}
    async with fake.client() as client:
        with pytest.raises(APIError, match="runner unavailable"):
            await client.sprite("box").sessions.list()


async def test_attach_falls_back_to_the_legacy_form_and_remembers(fake: FakeSprites) -> None:
    fake.path_attach_status = 404

    async def script(conn: Conn) -> None:
        assert conn.query["id"] == "12"
        # Frames before session_info: their framing is only known once it arrives.
        await conn.raw(b"\x01early")
        await conn.info(sid="12", tty=False)
        await conn.out(b"live")
        await conn.exit_text(0)
        await conn.exit_frame(0)
        await conn.client_closed()

    fake.attach_script = script
    async with fake.client() as client:
        sessions = client.sprite("box").sessions
        for _ in range(2):
            async with sessions.attach("12") as proc:
                assert await proc.stdout.read() == b"earlylive"
                assert await proc.wait() == 0
    paths = [p for _, p, _ in fake.requests]
    assert paths == ["/v1/sprites/box/exec/12", "/v1/sprites/box/exec", "/v1/sprites/box/exec"]


async def test_legacy_attach_without_tty_flag_is_a_terminal(fake: FakeSprites) -> None:
    fake.path_attach_status = 404

    async def script(conn: Conn) -> None:
        await conn.info(sid="12", tty=None)  # old servers did not say
        await conn.raw(b"\x03\x05raw bytes")
        await conn.exit_text(5)
        await conn.client_closed()

    fake.attach_script = script
    async with fake.client() as client:
        async with client.sprite("box").sessions.attach("12") as proc:
            assert proc.tty is True
            assert await proc.stdout.read() == b"\x03\x05raw bytes"
            assert await proc.wait() == 5


async def test_attach_waits_for_session_info(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await asyncio.sleep(5)

    fake.attach_script = script
    async with fake.client(session_info_timeout=0.2) as client:
        with pytest.raises(TimeoutError, match="session_info"):
            async with client.sprite("box").sessions.attach("12"):
                pass


async def test_kill_error_event(fake: FakeSprites) -> None:
    fake.kill_handler = ndjson_response(
        {"type": "signal", "message": "Signaling SIGKILL", "signal": "SIGKILL", "pid": 3},
        {"type": "error", "message": "operation not permitted"},
    )
    async with fake.client() as client:
        with pytest.raises(StreamError, match="operation not permitted"):
            await client.sprite("box").sessions.kill(3, signal=9, timeout=0)
    ((_, _, query),) = fake.requests_to("/kill")
    assert query == {"signal": ["SIGKILL"], "timeout": ["0s"]}


def test_kill_argument_checks() -> None:
    client = SpritesClient("tok", base_url="http://127.0.0.1:9")
    sessions = client.sprite("box").sessions
    with pytest.raises(ValueError, match="timeout"):
        sessions.kill("1", timeout=-1)
    with pytest.raises(ValueError, match="signal"):
        sessions.kill("1", signal="BOGUS")
    with pytest.raises(ValueError, match="session id"):
        sessions.attach("a/b")
    with pytest.raises(TypeError):
        sessions.attach(1.5)  # type: ignore[arg-type]
