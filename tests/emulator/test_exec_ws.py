"""Exec over a direct WebSocket (Sections 3.2 to 3.11), in both sandbox modes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from sprites_async.emulator import EmulatorConfig
from sprites_async.emulator._procs import sandbox_available
from sprites_async.emulator._sandbox import sprite_host_ids
from tests._emulator import RunningEmulator
from tests.emulator.exec_helpers import (
    SPRITE,
    Run,
    assert_clean,
    assert_no_leftovers,
    collect,
    exec_url,
    next_text,
    open_ws,
    private_fds,
    read_until,
    run_ws,
)


@pytest.fixture(params=["none", "bwrap"])
def emulator_config(
    emulator_config: EmulatorConfig, request: pytest.FixtureRequest
) -> EmulatorConfig:
    if request.param == "bwrap" and not sandbox_available():
        pytest.skip("bwrap is not installed")
    emulator_config.sandbox = request.param
    emulator_config.extra["exec_port_poll"] = 0.05
    return emulator_config


@pytest.fixture(autouse=True)
async def sprite(emu: RunningEmulator) -> AsyncIterator[str]:
    fds = private_fds()
    emu.add_sprite(SPRITE)
    yield SPRITE
    await assert_clean(emu, fds)


def sandboxed(emu: RunningEmulator) -> bool:
    return emu.state.config.sandbox == "bwrap"


async def test_stdout_stderr_and_exit_code(emu: RunningEmulator) -> None:
    run = await run_ws(emu, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert run.stdout == b"out\n"
    assert run.stderr == b"err\n"
    assert run.exit_text == 7
    assert run.exit_frame == 7
    assert run.close_code == 1000


async def test_message_order(emu: RunningEmulator) -> None:
    before = int(time.time())
    run = await run_ws(emu, ["echo", "hi"])
    kinds = [m["type"] if k == "text" else m[:1] for k, m in run.messages]
    assert kinds == ["debug", "session_info", b"\x01", "exit", b"\x03"]
    info = run.of_type("session_info")[0]
    assert isinstance(info["session_id"], str)
    assert info["session_id"].isdigit()
    assert info["command"] == "echo"
    assert info["is_owner"] is True
    assert info["tty"] is False
    assert before <= info["created"] <= time.time() + 1
    assert run.binaries[-1] == b"\x03\x00"
    assert run.headers.get("X-Sprite-Capabilities") == "signal"


@pytest.mark.parametrize("code", [0, 1, 255])
async def test_exit_codes(emu: RunningEmulator, code: int) -> None:
    run = await run_ws(emu, ["sh", "-c", f"exit {code}"])
    assert (run.exit_text, run.exit_frame) == (code, code)
    assert run.stdout == b""


async def test_stdin_and_eof(emu: RunningEmulator) -> None:
    run = await run_ws(emu, ["cat"], stdin=[b"\x00line 1\n", b"\x00line 2\n", b"\x04"])
    assert run.stdout == b"line 1\nline 2\n"
    assert run.exit_frame == 0


async def test_stdin_is_lenient(emu: RunningEmulator) -> None:
    # Unprefixed frames are raw data; any frame starting with 04 is EOF on /exec.
    run = await run_ws(emu, ["cat"], stdin=[b"raw ", b"\x00prefixed", b"\x04junk"])
    assert run.stdout == b"raw prefixed"
    assert run.exit_frame == 0


async def test_stdin_frames_before_reading(emu: RunningEmulator) -> None:
    async with open_ws(emu, cmd=["cat"], stdin=True) as ws:
        # Sent before reading anything: the server reads from the moment of the upgrade.
        await ws.send_bytes(b"\x00early\n")
        await ws.send_bytes(b"\x04")
        run = await asyncio.wait_for(collect(ws, Run()), 10)
    assert run.stdout == b"early\n"


async def test_stdin_false_means_eof(emu: RunningEmulator) -> None:
    run = await run_ws(emu, ["cat"])
    assert run.exit_frame == 0
    assert run.stdout == b""


async def test_default_environment_and_dir(emu: RunningEmulator) -> None:
    run = await run_ws(emu, ["sh", "-c", 'echo "$PATH|$LANG|${TERM-none}"; pwd; echo "$HOME"'])
    path, cwd, home = run.stdout.decode().splitlines()
    assert path == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|C.UTF-8|none"
    if sandboxed(emu):
        assert (cwd, home) == ("/home/sprite", "/home/sprite")
    else:
        root = emu.state.sprite_root(SPRITE)
        assert cwd == home == str(root / "home" / "sprite")


async def test_env_replaces_everything(emu: RunningEmulator) -> None:
    run = await run_ws(emu, ["/usr/bin/env"], env=["FOO=a=b", "BAR="])
    assert sorted(run.stdout.decode().splitlines()) == ["BAR=", "FOO=a=b"]


async def test_dir(emu: RunningEmulator) -> None:
    root = emu.state.sprite_root(SPRITE)
    (root / "home" / "sprite" / "proj").mkdir()
    # Made by the host: given to the sprite user, as the files API does.
    os.chown(root / "home" / "sprite" / "proj", *sprite_host_ids())
    run = await run_ws(emu, ["sh", "-c", "touch here; pwd"], dir="/home/sprite/proj")
    assert (root / "home" / "sprite" / "proj" / "here").exists()
    if sandboxed(emu):
        assert run.stdout == b"/home/sprite/proj\n"


async def test_missing_dir_and_executable(emu: RunningEmulator) -> None:
    for params in ({"cmd": ["true"], "dir": "/nope"}, {"cmd": ["no-such-binary-xyz"]}):
        async with emu.http.get(
            exec_url(emu, **params), headers={**emu.auth, "Upgrade": "websocket"}
        ) as resp:
            assert resp.status == 500
            assert (await resp.text()).startswith("failed to start process")


async def test_no_command(emu: RunningEmulator) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        async with open_ws(emu):
            pass
    assert info.value.status == 400
    async with emu.http.get(
        exec_url(emu, tty=True),
        headers={
            **emu.auth,
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    ) as resp:
        assert resp.status == 400
        assert await resp.text() == "No command specified\n"


@pytest.mark.parametrize(("name", "code"), [("TERM", 143), ("SIGINT", 130), ("KILL", 137)])
async def test_in_band_signal(emu: RunningEmulator, name: str, code: int) -> None:
    async with open_ws(emu, cmd=["sleep", "30"]) as ws:
        await next_text(ws)  # debug
        await next_text(ws)  # session_info
        await ws.send_json({"type": "signal", "signal": name})
        run = await asyncio.wait_for(collect(ws, Run()), 10)
    assert (run.exit_text, run.exit_frame) == (code, code)


async def test_signal_reaches_a_trap(emu: RunningEmulator) -> None:
    script = 'trap "echo trapped; exit 3" TERM; echo ready; sleep 30 & wait'
    async with open_ws(emu, cmd=["sh", "-c", script]) as ws:
        await read_until(ws, b"ready")
        await ws.send_json({"type": "signal", "signal": "SIGTERM"})
        run = await asyncio.wait_for(collect(ws, Run()), 10)
    assert run.stdout == b"trapped\n"
    assert run.exit_frame == 3


async def test_background_children_are_cleaned_up(emu: RunningEmulator) -> None:
    run = await run_ws(emu, ["sh", "-c", "sleep 30 & sleep 31 & echo started"])
    assert run.stdout == b"started\n"
    assert run.exit_frame == 0
    await assert_no_leftovers(emu.state.sessions.sids)  # type: ignore[attr-defined]


async def test_tty_size_resize_and_exit(emu: RunningEmulator) -> None:
    script = 'stty size; echo "$TERM"; read line; stty size; exit 4'
    async with open_ws(emu, cmd=["sh", "-c", script], tty=True, rows=30, cols=100) as ws:
        out = await read_until(ws, b"xterm-256color")
        assert b"30 100" in out
        await ws.send_json({"type": "resize", "cols": 132, "rows": 43})
        await asyncio.sleep(0.05)
        await ws.send_bytes(b"go\r")
        run = await asyncio.wait_for(collect(ws, Run()), 10)
    assert b"43 132" in run.raw
    assert run.exit_text == 4
    assert run.exit_frame is None or not any(b == b"\x03\x04" for b in run.binaries)
    assert [t["type"] for t in run.texts] == ["exit"]


async def test_tty_session_info_and_raw_frames(emu: RunningEmulator) -> None:
    async with open_ws(emu, cmd=["cat"], tty=True) as ws:
        assert (await next_text(ws))["type"] == "debug"
        info = await next_text(ws)
        assert info["tty"] is True
        assert (info["cols"], info["rows"]) == (80, 24)
        await ws.send_bytes(b"hello\r")
        echoed = await read_until(ws, b"hello\r\nhello\r\n")
        assert echoed.startswith(b"hello")  # raw bytes, no stream prefix
        # 0x04 is Ctrl-D (the terminal's EOF), never the framing EOF marker.
        await ws.send_bytes(b"\x04")
        run = await asyncio.wait_for(collect(ws, Run()), 10)
    assert run.exit_text == 0


async def test_exit_linger(emu: RunningEmulator) -> None:
    emu.state.config.exit_linger = 3.0
    start = time.monotonic()
    run = await run_ws(emu, ["true"])
    assert time.monotonic() - start >= 3.0
    assert run.close_code == 1000
    # The client may close earlier.
    start = time.monotonic()
    async with open_ws(emu, cmd=["true"]) as ws:
        await asyncio.wait_for(collect(ws, Run(), until_exit=True), 5)
    assert time.monotonic() - start < 2.0


async def test_fault_drop_after_frames(emu: RunningEmulator) -> None:
    emu.state.faults.drop_ws_after_frames = 2
    async with open_ws(emu, cmd=["sh", "-c", "echo a; sleep 0.2; echo b"]) as ws:
        run = await asyncio.wait_for(collect(ws, Run()), 10)
    assert [m["type"] for m in run.texts] == ["debug", "session_info"]
    assert run.binaries == []
    assert run.close_code != 1000


async def test_fault_suppress_exit(emu: RunningEmulator) -> None:
    emu.state.faults.suppress_exit = True
    run = await run_ws(emu, ["sh", "-c", "echo hi; exit 2"])
    assert run.stdout == b"hi\n"
    assert run.exit_text is None
    assert run.exit_frame is None
    assert run.close_code == 1000


async def test_no_capability_header(emu: RunningEmulator) -> None:
    emu.state.config.signal_capability = False
    run = await run_ws(emu, ["true"])
    assert "X-Sprite-Capabilities" not in run.headers


async def test_port_notifications(emu: RunningEmulator) -> None:
    script = (
        "import socket,sys\n"
        "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True); sys.stdin.readline(); s.close()\n"
        "print('closed', flush=True); sys.stdin.read()\n"
    )
    async with open_ws(emu, cmd=["python3", "-c", script], stdin=True) as ws:
        port = int((await read_until(ws, b"\n"))[1:])
        opened = await next_text(ws)
        assert opened["type"] == "port_opened"
        assert (opened["port"], opened["address"]) == (port, "127.0.0.1")
        assert isinstance(opened["pid"], int)
        await ws.send_bytes(b"\x00close\n")
        closed = await next_text(ws)
        assert closed == {**opened, "type": "port_closed"}
        await ws.send_bytes(b"\x04")
        run = await asyncio.wait_for(collect(ws, Run()), 10)
    assert run.exit_frame == 0


async def test_tty_without_stdin_discards_input(emu: RunningEmulator) -> None:
    script = 'echo ready; sleep 0.3; stty size; read -t 0.2 x && echo "got $x"; exit 0'
    async with open_ws(emu, cmd=["bash", "-c", script], tty=True, stdin=False) as ws:
        await read_until(ws, b"ready")
        await ws.send_bytes(b"typed\r")
        await ws.send_json({"type": "resize", "cols": 90, "rows": 20})
        run = await asyncio.wait_for(collect(ws, Run()), 10)
    assert b"20 90" in run.raw
    assert b"got" not in run.raw
    assert run.exit_text == 0


async def test_tty_signal(emu: RunningEmulator) -> None:
    async with open_ws(emu, cmd=["sleep", "30"], tty=True) as ws:
        await next_text(ws)
        await next_text(ws)
        await ws.send_json({"type": "signal", "signal": "INT"})
        run = await asyncio.wait_for(collect(ws, Run()), 10)
    assert run.exit_text == 130
    assert run.exit_frame is None


async def test_tty_ctrl_c(emu: RunningEmulator) -> None:
    # `read` is a builtin: the shell that printed "ready" is the process that
    # waits. With `sleep` after the echo, a Ctrl-C landing while the shell was
    # forking reached only the shell, which then waited for a sleep that never
    # saw it (dash defers SIGINT around fork): a race of the script, not of the
    # emulator, that showed under CPU load.
    async with open_ws(emu, cmd=["sh", "-c", "echo ready; read line"], tty=True) as ws:
        await read_until(ws, b"ready")
        await ws.send_bytes(b"\x03")  # the terminal turns it into SIGINT for the foreground group
        run = await asyncio.wait_for(collect(ws, Run()), 10)
    assert run.exit_text == 130


async def test_cmd_brackets_and_legacy_flags(emu: RunningEmulator) -> None:
    url = exec_url(emu, detachable=True, cc=True).replace("http://", "ws://")
    url += "&cmd%5B%5D=echo&cmd%5B%5D=legacy"
    async with emu.http.ws_connect(url, headers=emu.auth) as ws:
        run = await asyncio.wait_for(collect(ws, Run()), 10)
    assert run.stdout == b"legacy\n"
    assert run.exit_frame == 0


async def test_path_differs_from_argv0(emu: RunningEmulator) -> None:
    run = await run_ws(emu, ["whatever", "-c", "echo via path"], path="/bin/sh")
    assert run.stdout == b"via path\n"
    assert run.of_type("session_info")[0]["command"] == "whatever"
