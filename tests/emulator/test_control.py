"""The control channel (Section 5): envelopes, sequencing, errors, exec ops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from tests._emulator import RunningEmulator
from tests.emulator.exec_helpers import (
    SPRITE,
    assert_clean,
    list_sessions,
    open_ws,
    private_fds,
    wait_for,
)


@pytest.fixture(autouse=True)
async def sprite(emu: RunningEmulator) -> AsyncIterator[str]:
    fds = private_fds()
    emu.add_sprite(SPRITE)
    yield SPRITE
    await assert_clean(emu, fds)


Frame = tuple[str, Any]


def envelope(message: dict[str, Any]) -> str:
    return "control:" + msgspec.json.encode(message).decode()


def start(args: dict[str, Any], op: str = "exec", op_id: str | None = None) -> str:
    msg: dict[str, Any] = {"type": "op.start", "op": op, "args": args}
    if op_id is not None:
        msg["id"] = op_id
    return envelope(msg)


async def receive(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> Frame:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    if msg.type == aiohttp.WSMsgType.TEXT:
        text: str = msg.data
        if text.startswith("control:"):
            return "control", msgspec.json.decode(text[8:])
        return "text", msgspec.json.decode(text)
    if msg.type == aiohttp.WSMsgType.BINARY:
        return "bin", msg.data
    return "closed", msg.type


async def until_complete(ws: aiohttp.ClientWebSocketResponse) -> list[Frame]:
    frames: list[Frame] = []
    while True:
        frame = await receive(ws)
        frames.append(frame)
        if frame[0] == "control" and frame[1]["type"] in ("op.complete", "op.error"):
            return frames
        assert frame[0] != "closed", frames


def summary(frames: list[Frame]) -> list[Any]:
    out: list[Any] = []
    for kind, value in frames:
        if kind == "control" or kind == "text":
            out.append(value["type"])
        else:
            out.append(value)
    return out


async def test_exec_op_sequence(emu: RunningEmulator) -> None:
    async with open_ws(emu, "/control") as ws:
        await ws.send_str(
            start({"cmd": ["sh", "-c", "echo hi; exit 3"], "path": "sh", "stdin": "false"})
        )
        frames = await until_complete(ws)
    assert summary(frames) == [
        "op.ack",
        "session_info",
        b"\x01hi\n",
        "exit",
        b"\x03\x03",
        "op.complete",
    ]
    assert frames[0][1] == {"type": "op.ack", "id": ""}
    assert frames[-1][1] == {
        "type": "op.complete",
        "id": "",
        "op": "exec",
        "args": {"ok": True, "exitCode": 3},
    }


async def test_two_ops_on_one_socket(emu: RunningEmulator) -> None:
    async with open_ws(emu, "/control") as ws:
        for i in range(2):
            await ws.send_str(start({"cmd": ["echo", f"run{i}"]}, op_id=f"op-{i}"))
            frames = await until_complete(ws)
            assert frames[0][1] == {"type": "op.ack", "id": f"op-{i}"}
            assert (b"\x01run%d\n" % i) in [v for k, v in frames if k == "bin"]
            assert frames[-1][1]["id"] == f"op-{i}"
            assert frames[-1][1]["args"]["exitCode"] == 0
            # GO releases the socket between ops with an unprefixed frame: ignored.
            await ws.send_str('{"type":"release"}')
        await ws.send_str(start({"cmd": ["true"]}))
        assert (await until_complete(ws))[-1][1]["args"] == {"ok": True, "exitCode": 0}


async def test_stdin_over_control(emu: RunningEmulator) -> None:
    async with open_ws(emu, "/control") as ws:
        await ws.send_str(start({"cmd": ["cat"], "stdin": "true"}))
        assert (await receive(ws))[1]["type"] == "op.ack"
        await ws.send_bytes(b"\x00prefixed ")  # PY/JS framing: one 00 stripped
        await ws.send_bytes(b"raw ")  # GO framing: raw
        await ws.send_bytes(b"\x04x")  # not a lone 04: data on /control
        await ws.send_bytes(b"\x04")
        frames = await until_complete(ws)
    out = b"".join(v[1:] for k, v in frames if k == "bin" and v[0] == 1)
    assert out == b"prefixed raw \x04x"
    assert frames[-1][1]["args"]["exitCode"] == 0


async def test_busy_not_active_not_found(emu: RunningEmulator) -> None:
    async with open_ws(emu, "/control") as ws:
        await ws.send_bytes(b"\x00stray")
        kind, err = await receive(ws)
        assert (kind, err["type"], err["args"]["code"]) == ("control", "op.error", "op.not_active")
        assert err["args"]["message"] == err["args"]["error"]
        await ws.send_str('{"type":"resize","cols":1,"rows":1}')
        assert (await receive(ws))[1]["args"]["code"] == "op.not_active"

        await ws.send_str(start({}, op="teleport", op_id="t"))
        kind, err = await receive(ws)
        assert err["args"]["code"] == "op.not_found"
        assert err["id"] == "t"

        await ws.send_str(start({"cmd": ["cat"], "stdin": "true"}))
        assert (await receive(ws))[1]["type"] == "op.ack"
        await ws.send_str(start({"cmd": ["true"]}, op_id="second"))
        frames = await until_complete(ws)
        busy = frames[-1][1]
        assert (busy["type"], busy["args"]["code"], busy["id"]) == ("op.error", "op.busy", "second")
        # The running op is undisturbed.
        await ws.send_bytes(b"still here")
        await ws.send_bytes(b"\x04")
        frames = await until_complete(ws)
        assert b"\x01still here" in [v for k, v in frames if k == "bin"]
        assert frames[-1][1]["args"] == {"ok": True, "exitCode": 0}
        # Unknown control types are ignored.
        await ws.send_str(envelope({"type": "op.bogus"}))
        await ws.send_str(start({"cmd": ["false"]}))
        assert (await until_complete(ws))[-1][1]["args"] == {"ok": True, "exitCode": 1}


async def test_auto_start(emu: RunningEmulator) -> None:
    async with open_ws(emu, "/control", op="exec", cmd=["sh", "-c", "echo auto"], path="sh") as ws:
        frames = await until_complete(ws)
        assert summary(frames)[0] == "op.ack"
        assert b"\x01auto\n" in [v for k, v in frames if k == "bin"]
        # Back to idle afterwards.
        await ws.send_str(start({"cmd": ["true"]}))
        assert (await until_complete(ws))[-1][1]["args"]["ok"] is True


async def test_tty_op(emu: RunningEmulator) -> None:
    async with open_ws(emu, "/control") as ws:
        await ws.send_str(
            start(
                {
                    "cmd": ["sh", "-c", "stty size; exit 2"],
                    "tty": "true",
                    "rows": "33",
                    "cols": "99",
                }
            )
        )
        frames = await until_complete(ws)
    raw = b"".join(v for k, v in frames if k == "bin")
    assert b"33 99" in raw
    assert summary(frames)[-2:] == ["exit", "op.complete"]
    assert frames[-1][1]["args"] == {"ok": True, "exitCode": 2}


async def test_non_string_args_are_dropped(emu: RunningEmulator) -> None:
    async with open_ws(emu, "/control") as ws:
        # "tty": true (a JSON bool) is dropped as the real server does: no TTY.
        await ws.send_str(start({"cmd": ["sh", "-c", "test -t 1; echo $?"], "tty": True}))
        frames = await until_complete(ws)
    assert b"\x011\n" in [v for k, v in frames if k == "bin"]


async def test_start_failure(emu: RunningEmulator) -> None:
    async with open_ws(emu, "/control") as ws:
        await ws.send_str(start({"cmd": ["no-such-binary-xyz"]}))
        frames = await until_complete(ws)
        assert summary(frames) == ["op.ack", "op.complete"]
        assert frames[-1][1]["args"]["ok"] is False
        assert "no-such-binary-xyz" in frames[-1][1]["args"]["error"]
        await ws.send_str(start({"cmd": ["true"]}))
        assert (await until_complete(ws))[-1][1]["args"]["ok"] is True


async def test_attach_over_control(emu: RunningEmulator) -> None:
    async with open_ws(
        emu, cmd=["sh", "-c", "echo one; read x; echo two $x"], stdin=True
    ) as direct:
        while True:
            msg = await direct.receive()
            if msg.type == aiohttp.WSMsgType.TEXT and "session_info" in msg.data:
                session_id = msgspec.json.decode(msg.data)["session_id"]
                break
        async with open_ws(emu, "/control") as ws:
            await ws.send_str(start({"id": session_id}))
            assert (await receive(ws))[1]["type"] == "op.ack"
            _kind, info = await receive(ws)
            assert (info["type"], info["is_owner"]) == ("session_info", False)
            await ws.send_bytes(b"\x00x\n")
            frames = await until_complete(ws)
    out = b"".join(v[1:] for k, v in frames if k == "bin" and v[0] == 1)
    assert out.endswith(b"two x\n")
    assert frames[-1][1]["args"]["exitCode"] == 0
    async with open_ws(emu, "/control") as ws:
        await ws.send_str(start({"id": "424242"}))
        frames = await until_complete(ws)
        assert frames[-1][1]["args"]["ok"] is False


async def test_socket_death_detaches_op(emu: RunningEmulator) -> None:
    async with open_ws(emu, "/control") as ws:
        await ws.send_str(start({"cmd": ["sleep", "30"], "max_run_after_disconnect": "300ms"}))
        assert (await receive(ws))[1]["type"] == "op.ack"
        info = (await receive(ws))[1]
    assert [s["id"] for s in await list_sessions(emu)] == [info["session_id"]]
    await wait_for(lambda: emu.state.sessions.get(SPRITE, info["session_id"]) is None, 3)  # type: ignore[attr-defined]


async def test_control_404_fault(emu: RunningEmulator) -> None:
    emu.state.faults.control_404 = True
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        async with open_ws(emu, "/control"):
            pass
    assert info.value.status == 404


async def test_faults_apply(emu: RunningEmulator) -> None:
    emu.state.faults.suppress_exit = True
    async with open_ws(emu, "/control") as ws:
        await ws.send_str(start({"cmd": ["sh", "-c", "exit 9"]}))
        frames = await until_complete(ws)
    assert "exit" not in summary(frames)
    assert frames[-1][1]["args"] == {"ok": True, "exitCode": 9}
    emu.state.faults.suppress_exit = False
    emu.state.faults.drop_ws_after_frames = 2
    async with open_ws(emu, "/control") as ws:
        await ws.send_str(start({"cmd": ["echo", "x"]}))
        assert (await receive(ws))[1]["type"] == "op.ack"
        assert (await receive(ws))[1]["type"] == "session_info"
        assert (await receive(ws))[0] == "closed"


@pytest.fixture
async def echo_server() -> AsyncIterator[int]:
    """A loopback TCP server that echoes one line back, upper-cased, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        writer.write(line.upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    async with server:
        yield port


async def test_proxy_op_with_args(emu: RunningEmulator, echo_server: int) -> None:
    async with open_ws(emu, "/control") as ws:
        await ws.send_str(start({"host": "127.0.0.1", "port": str(echo_server)}, op="proxy"))
        assert (await receive(ws))[1]["type"] == "op.ack"
        kind, reply = await receive(ws)
        assert (kind, reply) == (
            "text",
            {"status": "connected", "target": f"127.0.0.1:{echo_server}"},
        )
        await ws.send_bytes(b"hello\n")
        frames = await until_complete(ws)
        assert b"".join(v for k, v in frames if k == "bin") == b"HELLO\n"
        assert frames[-1][1] == {
            "type": "op.complete",
            "id": "",
            "op": "proxy",
            "args": {"ok": True},
        }
        # The socket is idle again and runs the next op.
        await ws.send_str(start({"cmd": ["true"]}))
        assert (await until_complete(ws))[-1][1]["args"]["exitCode"] == 0


async def test_proxy_op_with_init_frame(emu: RunningEmulator, echo_server: int) -> None:
    async with open_ws(emu, "/control") as ws:
        await ws.send_str(start({}, op="proxy"))
        assert (await receive(ws))[1]["type"] == "op.ack"
        await ws.send_str(msgspec.json.encode({"host": "localhost", "port": echo_server}).decode())
        assert (await receive(ws))[1]["status"] == "connected"
        await ws.send_bytes(b"abc\n")
        frames = await until_complete(ws)
    assert b"".join(v for k, v in frames if k == "bin") == b"ABC\n"


async def test_go_bare_proxy(emu: RunningEmulator, echo_server: int) -> None:
    async with open_ws(emu, "/control") as ws:
        await ws.send_str(
            msgspec.json.encode(
                {
                    "type": "start",
                    "operation": "proxy",
                    "params": {"host": "localhost", "port": echo_server, "keep_alive": True},
                }
            ).decode()
        )
        assert (await receive(ws))[1]["status"] == "connected"  # no op.ack first
        await ws.send_bytes(b"go\n")
        assert await receive(ws) == ("bin", b"GO\n")
        await ws.send_str('{"type":"release"}')
        await asyncio.sleep(0.05)
        await ws.send_str(start({"cmd": ["echo", "after"]}))
        frames = await until_complete(ws)
    assert frames[0][1]["type"] == "op.ack"
    assert frames[-1][1]["args"] == {"ok": True, "exitCode": 0}


async def test_proxy_failure_closes_the_socket(emu: RunningEmulator) -> None:
    async with open_ws(emu, "/control") as ws:
        await ws.send_str(start({"host": "10.255.255.1", "port": "5432"}, op="proxy"))
        assert (await receive(ws))[1]["type"] == "op.ack"
        kind, _ = await receive(ws)
        assert kind == "closed"
        assert ws.close_code == 1011
