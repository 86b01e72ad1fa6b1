"""Exec end to end against the emulator, over pooled control sockets and direct sockets."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sprites_async import (
    CommandFailedError,
    CommandNotFoundError,
    CommandTimeoutError,
    ExitStatusUnknownError,
    NotFoundError,
    SpritesClient,
)
from sprites_async._config import ExecSettings
from sprites_async._exec import ExecSession, OutputEvent, PortEvent
from sprites_async._exec._buffers import OutputBuffers
from sprites_async._exec._protocol import ExecProtocol
from tests._emulator import no_leftovers

SETTINGS = ExecSettings(kill_grace=1.0, kill_wait=2.0, exit_grace=1.0)


@pytest.fixture(params=["control", "direct"])
async def sprite(request: pytest.FixtureRequest, exec_emu: Any) -> AsyncIterator[Any]:
    client = SpritesClient(exec_emu.token, base_url=exec_emu.url)
    client.exec_settings = SETTINGS
    client.control = request.param == "control"
    yield client.sprite("box")
    await no_leftovers(exec_emu, client)


@pytest.mark.parametrize("code", [0, 1, 7, 255])
async def test_exit_codes(sprite: Any, code: int) -> None:
    result = await sprite.exec("sh", "-c", f"exit {code}")
    assert result.exit_code == code
    assert result.ok is (code == 0)


async def test_exit_is_fast_despite_the_server_linger(sprite: Any, exec_emu: Any) -> None:
    exec_emu.state.config.exit_linger = 60.0
    start = time.monotonic()
    for _ in range(3):
        assert (await sprite.exec("true")).exit_code == 0
    # Waiting for the server's close would take 60 s per command.
    assert time.monotonic() - start < 30


async def test_stdout_and_stderr_are_separate_and_ordered(sprite: Any) -> None:
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 3"
    result = await sprite.exec("sh", "-c", script)
    assert result.stdout == b"out1\nout2\nout3\n"
    assert result.stderr == b"err1\nerr2\nerr3\n"
    assert result.exit_code == 3
    assert result.session_id is not None


async def test_utf8_split_across_frames(sprite: Any) -> None:
    code = "import os\nfor b in 'héllo 🎉 wörld'.encode():\n    os.write(1, bytes([b]))\n"
    result = await sprite.exec("python3", "-c", code)
    assert result.stdout_text == "héllo 🎉 wörld"


async def test_stdin_streaming_and_eof(sprite: Any) -> None:
    async def lines() -> Any:
        for i in range(50):
            yield f"line {i}\n".encode()
            if i % 10 == 0:
                await asyncio.sleep(0.01)

    result = await sprite.exec("cat", stdin=lines())
    assert result.stdout == b"".join(f"line {i}\n".encode() for i in range(50))
    assert (await sprite.exec("wc", "-c", stdin=b"x" * 300_000)).stdout.strip() == b"300000"


async def test_interactive_stdin(sprite: Any) -> None:
    script = 'while read l; do echo "got $l"; done; echo eof'
    async with sprite.process("sh", "-c", script) as proc:
        await proc.write(b"one\n")
        assert await proc.stdout.__anext__() == b"got one\n"
        await proc.write("two\n")
        assert await proc.stdout.__anext__() == b"got two\n"
        await proc.close_stdin()
        assert await proc.stdout.read() == b"eof\n"
        assert await proc.wait() == 0


async def test_tty_resize(sprite: Any) -> None:
    script = 'stty size; echo "$TERM"; read x; stty size; exit 4'
    async with sprite.process("sh", "-c", script, tty=True, cols=100, rows=30) as proc:
        seen = b""
        async for chunk in proc.stdout:
            seen += chunk
            if b"xterm" in seen:
                break
        assert b"30 100" in seen
        await proc.resize(132, 43)
        await asyncio.sleep(0.05)
        await proc.write(b"go\r")
        rest = await proc.stdout.read()
        assert b"43 132" in rest
        assert await proc.wait() == 4
        assert proc.info is not None
        assert proc.info.tty is True


@pytest.mark.parametrize("capability", [True, False])
async def test_signals(sprite: Any, exec_emu: Any, capability: bool) -> None:
    exec_emu.state.config.signal_capability = capability
    script = 'trap "echo trapped; exit 3" TERM; echo ready; while :; do sleep 0.05; done'
    async with sprite.process("sh", "-c", script) as proc:
        assert await proc.stdout.__anext__() == b"ready\n"
        await proc.signal("TERM")
        assert await proc.stdout.read() == b"trapped\n"
        assert await proc.wait() == 3
    async with sprite.process("sleep", "30") as proc:
        await proc.signal("SIGINT")
        assert await proc.wait() == 130
    async with sprite.process("sleep", "30") as proc:
        await proc.kill()
        assert await proc.wait() == 137


async def test_ports_reach_events_and_callback(sprite: Any) -> None:
    code = (
        "import socket,sys\n"
        "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True); sys.stdin.read(); s.close()\n"
    )
    ports: list[PortEvent] = []
    async with sprite.process("python3", "-c", code, on_port=ports.append) as proc:
        # The printed port and the port_opened notification may come in either
        # order (the server polls for listeners), and output may arrive split.
        printed = b""
        opened: PortEvent | None = None
        async for event in aiter_events(proc):
            if isinstance(event, OutputEvent):
                printed += event.data
            if isinstance(event, PortEvent) and event.opened:
                opened = event
            if opened is not None and printed.endswith(b"\n"):
                break
        port = int(printed)
        assert opened is not None
        assert opened.port == port
        await proc.close_stdin()
        assert await proc.wait() == 0
    assert ports
    assert ports[0].port == port


async def test_a_finished_command_is_freed_without_the_garbage_collector(sprite: Any) -> None:
    # A reference cycle (the protocol holding a method of its session, a
    # session keeping its streams) leaves every finished command, with its
    # socket's objects, to the collector: GC time and memory under load.
    ours = (ExecSession, ExecProtocol, OutputBuffers)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        assert (await sprite.exec("echo", "hi")).stdout == b"hi\n"
        async with sprite.process("cat", on_port=lambda event: None) as proc:
            await proc.write(b"x\n")
            assert await anext_chunk(proc.stdout) == b"x\n"
            await proc.close_stdin()
            assert await proc.wait() == 0
            assert proc.stdout == proc.stdout
        freed = weakref.ref(proc)
        del proc
        await asyncio.sleep(0)
        assert freed() is None
        gc.collect()
        cyclic = [type(o).__name__ for o in gc.garbage if isinstance(o, ours)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert cyclic == []


async def anext_chunk(stream: Any) -> bytes:
    async for chunk in stream:
        return bytes(chunk)
    return b""


def aiter_events(proc: Any) -> Any:
    return proc.__aiter__()


def host_process_alive(pid: str | int) -> bool:
    """Whether a host PID is a live (non-zombie) process.

    Session ids are host PIDs, so the test can look at the real process
    directly; a probe run through another exec would sit in a different PID
    namespace under bubblewrap and prove nothing.
    """
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


async def test_timeout_kills_the_remote_process(sprite: Any) -> None:
    start = time.monotonic()
    with pytest.raises(CommandTimeoutError) as info:
        await sprite.exec("sleep", "100", timeout=0.3)
    assert time.monotonic() - start < 60  # cut short, far before the 100 s sleep
    assert info.value.session_id is not None
    assert await sprite.sessions.list() == []
    assert not host_process_alive(info.value.session_id)


async def test_cancellation_kills_the_remote_process(sprite: Any) -> None:
    task = asyncio.ensure_future(
        sprite.exec("sh", "-c", "echo started > flag; trap '' TERM; while :; do sleep 0.05; done")
    )
    for _ in range(200):
        if (await sprite.exec("cat", "flag")).exit_code == 0:
            break
        await asyncio.sleep(0.02)
    (session,) = await sprite.sessions.list()
    assert host_process_alive(session.id)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # TERM is trapped: this took the escalation to KILL
    assert not host_process_alive(session.id)
    assert await sprite.sessions.list() == []


async def test_dropped_socket_is_exit_status_unknown(sprite: Any, exec_emu: Any) -> None:
    exec_emu.state.faults.drop_ws_after_frames = 3
    with pytest.raises(ExitStatusUnknownError) as info:
        await sprite.exec("sh", "-c", "echo a; sleep 0.2; echo b; sleep 0.2; echo c")
    exec_emu.state.faults.drop_ws_after_frames = None
    assert info.value.session_id is not None
    for session in await sprite.sessions.list():  # detached: ends within its grace period
        await sprite.sessions.kill(session.id, timeout=1)
    assert (await sprite.exec("echo", "still works")).stdout == b"still works\n"


async def test_max_output_and_check(sprite: Any) -> None:
    result = await sprite.exec("sh", "-c", "head -c 100000 /dev/zero", max_output=1000)
    assert len(result.stdout) == 1000
    assert result.stdout_dropped == 99000
    with pytest.raises(CommandFailedError) as info:
        await sprite.exec("sh", "-c", "echo bad >&2; exit 9", check=True)
    assert info.value.exit_code == 9
    assert info.value.result.stderr == b"bad\n"  # type: ignore[attr-defined]


async def test_env_and_cwd(sprite: Any) -> None:
    result = await sprite.exec("sh", "-c", 'echo "$FOO|$PATH|$HOME"', env={"FOO": "bar"})
    foo, path, home = result.stdout_text.strip().split("|")
    assert foo == "bar"
    assert "/usr/bin" in path
    assert home == "/home/sprite"
    bare = await sprite.exec("/usr/bin/env", env={"ONLY": "1"}, env_replace=True)
    assert bare.stdout == b"ONLY=1\n"
    await sprite.exec("mkdir", "-p", "sub")  # relative: the default cwd is the sprite's home
    assert (await sprite.exec("sh", "-c", "touch made-here", cwd="/home/sprite/sub")).ok
    assert (await sprite.exec("ls", "sub")).stdout == b"made-here\n"


async def test_missing_program(sprite: Any) -> None:
    # Both modes report a command that cannot start the same way.
    with pytest.raises(CommandNotFoundError) as info:
        await sprite.exec("no-such-program-xyz")
    assert "executable file not found" in info.value.server_message
    assert (await sprite.exec("sh", "-c", "no-such-program-xyz")).exit_code == 127


async def test_http_exec(sprite: Any) -> None:
    result = await sprite.run_http("sh", "-c", "cat; echo err >&2; exit 6", stdin=b"in\n")
    assert (result.exit_code, result.stdout, result.stderr) == (6, b"in\n", b"err\n")


async def test_missing_sprite(exec_emu: Any) -> None:
    async with SpritesClient(exec_emu.token, base_url=exec_emu.url) as client:
        with pytest.raises(NotFoundError):
            await client.sprite("nosuch").exec("true")
