"""Exec protocol edge cases against a scripted loopback server (direct ``/exec`` sockets)."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from typing import Any

import msgspec
import pytest
from aiohttp import web

from sprites_async import (
    CommandFailedError,
    CommandTimeoutError,
    ExitStatusUnknownError,
    NotFoundError,
    SpritesClient,
)
from sprites_async._exec import ExitEvent, OutputEvent, PortEvent, SessionInfoEvent
from tests._fakes import Conn, FakeSprites, ndjson_response, our_tasks


def box(client: SpritesClient) -> Any:
    return client.sprite("box")


async def run_script(fake: FakeSprites, script: Any, *argv: str, **kw: Any) -> Any:
    fake.exec_script = script
    async with fake.client() as client:
        return await box(client).exec(*(argv or ("cmd",)), **kw)


# ------------------------------------------------------------------- completion


async def test_exit_text_before_trailing_output(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.out(b"early\n")
        await conn.exit_text(7)
        await conn.out(b"late\n")
        await conn.out(b"late err\n", stream=2)
        await conn.exit_frame(7)
        await conn.client_closed()

    result = await run_script(fake, script)
    assert result.exit_code == 7
    assert result.stdout == b"early\nlate\n"
    assert result.stderr == b"late err\n"
    assert result.session_id == "42"


async def test_exit_frame_wins_over_text(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.exit_text(1)
        await conn.exit_frame(3)
        await conn.client_closed()

    assert (await run_script(fake, script)).exit_code == 3


async def test_exit_frame_never_comes_falls_back_to_text_after_grace(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.out(b"x")
        await conn.exit_text(5)
        await asyncio.sleep(30)  # lingers without the 03 frame

    start = time.monotonic()
    result = await run_script(fake, script)
    assert result.exit_code == 5
    assert result.stdout == b"x"
    assert 0.25 <= time.monotonic() - start < 10  # the grace period, not the 30 s linger


async def test_text_exit_then_close_without_frame(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.exit_text(4)
        conn.drop()

    assert (await run_script(fake, script)).exit_code == 4


async def test_exit_frame_alone_is_enough(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.exit_frame(255)
        await asyncio.sleep(30)

    start = time.monotonic()
    assert (await run_script(fake, script)).exit_code == 255
    assert time.monotonic() - start < 10  # neither a grace wait nor the 30 s linger


async def test_four_byte_exit_frame(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.raw(b"\x03\x00\x00\x00\x07")
        await conn.client_closed()

    assert (await run_script(fake, script)).exit_code == 7


async def test_dropped_mid_output_is_exit_status_unknown(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info(sid="1847")
        await conn.out(b"partial")
        conn.drop()

    with pytest.raises(ExitStatusUnknownError) as info:
        await run_script(fake, script)
    assert info.value.session_id == "1847"
    assert info.value.sprite == "box"


async def test_clean_close_without_exit_is_still_unknown(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.ws.close()

    with pytest.raises(ExitStatusUnknownError, match="closed"):
        await run_script(fake, script)


async def test_noise_is_ignored(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.text({"type": "debug", "msg": "session_created cmd=bash", "pid": 332})
        await conn.info(sid=332)  # an old server's integer id
        await conn.text("not json at all")
        await conn.text({"type": "something_new", "x": 1})
        await conn.raw(b"")
        await conn.raw(b"\x09unknown stream")
        await conn.raw(b"\x00stdin echoed?")
        await conn.out(b"")
        await conn.out(b"real")
        await conn.exit_frame(0)
        await conn.client_closed()

    result = await run_script(fake, script)
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"real", b"")
    assert result.session_id == "332"


async def test_utf8_split_across_frames_and_order(fake: FakeSprites) -> None:
    text = "héllo 🎉".encode()

    async def script(conn: Conn) -> None:
        await conn.info()
        for i in range(len(text)):
            await conn.out(text[i : i + 1])
            await conn.out(bytes([65 + i]), stream=2)
        await conn.exit_frame(0)
        await conn.client_closed()

    result = await run_script(fake, script)
    assert result.stdout_text == "héllo 🎉"
    assert result.text() == "héllo 🎉"
    assert result.stderr == bytes(range(65, 65 + len(text)))


async def test_client_closes_at_once_after_exit(fake: FakeSprites) -> None:
    closed_after: list[float] = []

    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.exit_text(0)
        await conn.exit_frame(0)
        start = time.monotonic()
        await conn.client_closed(timeout=10)
        closed_after.append(time.monotonic() - start)

    await run_script(fake, script)
    for _ in range(50):
        if closed_after:
            break
        await asyncio.sleep(0.01)
    assert closed_after and closed_after[0] < 0.5


async def test_max_output_counts_what_it_drops(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.out(b"a" * 600)
        await conn.out(b"b" * 600)
        await conn.out(b"e" * 50, stream=2)
        await conn.exit_frame(0)
        await conn.client_closed()

    result = await run_script(fake, script, max_output=1000)
    assert result.stdout == b"a" * 500 + b"b" * 500  # the first and the last 500 bytes
    assert result.stdout_dropped == 200
    assert (result.stderr, result.stderr_dropped) == (b"e" * 50, 0)
    assert result.truncated


async def test_check_raises_with_the_result(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.out(b"why", stream=2)
        await conn.exit_frame(2)
        await conn.client_closed()

    with pytest.raises(CommandFailedError) as info:
        await run_script(fake, script, "false", "--x", check=True)
    assert info.value.exit_code == 2
    assert info.value.result.stderr == b"why"  # type: ignore[attr-defined]
    assert info.value.argv == ("false", "--x")


# ------------------------------------------------------------------------ stdin


async def test_stdin_frames_and_eof(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        got = b""
        while True:
            kind, data = await conn.recv()
            assert kind == "bin"
            if data == b"\x04":
                break
            assert data[:1] == b"\x00"
            got += data[1:]
        await conn.out(got)
        await conn.exit_frame(0)
        await conn.client_closed()

    async def chunks() -> Any:
        for piece in (b"one ", b"two ", b"three"):
            yield piece

    result = await run_script(fake, script, stdin=chunks())
    assert result.stdout == b"one two three"
    assert fake.requests[0][2]["stdin"] == ["true"]
    result = await run_script(fake, script, stdin="héllo")
    assert result.stdout == "héllo".encode()


async def test_stdin_larger_than_a_frame_is_split(fake: FakeSprites) -> None:
    sizes: list[int] = []

    async def script(conn: Conn) -> None:
        await conn.info()
        while True:
            _, data = await conn.recv()
            if data == b"\x04":
                break
            sizes.append(len(data) - 1)
        await conn.exit_frame(0)
        await conn.client_closed()

    fake.exec_script = script
    async with fake.client(stdin_chunk=1000) as client:
        await box(client).exec("cat", stdin=b"x" * 2500)
    assert sizes == [1000, 1000, 500]


async def test_process_exits_before_reading_stdin(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.exit_frame(0)
        await conn.client_closed()

    async def endless() -> Any:
        while True:
            yield b"y" * 1000
            await asyncio.sleep(0)

    result = await run_script(fake, script, stdin=endless())
    assert result.exit_code == 0


async def test_failing_stdin_iterable_terminates_and_raises(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        msg = await conn.recv_json()
        assert msg == {"type": "signal", "signal": "TERM"}
        await conn.exit_text(143)
        await conn.exit_frame(143)
        await conn.client_closed()

    async def broken() -> Any:
        yield b"ok"
        raise RuntimeError("stdin source failed")

    with pytest.raises(RuntimeError, match="stdin source failed"):
        await run_script(fake, script, stdin=broken())


# ---------------------------------------------------------------------- TTY


async def test_tty_frames_are_raw_and_exit_is_text(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        assert conn.query["tty"] == "true"
        assert (conn.query["cols"], conn.query["rows"]) == ("100", "30")
        await conn.info(tty=True)
        await conn.raw(b"\x03\x07raw")  # in TTY mode this is output, not an exit frame
        kind, data = await conn.recv()
        assert (kind, data) == ("bin", b"ls\r")
        resize = await conn.recv_json()
        assert resize == {"type": "resize", "cols": 132, "rows": 43}
        kind, data = await conn.recv()
        assert (kind, data) == ("bin", b"\x04")  # Ctrl-D written by the user, raw
        await conn.exit_text(3)
        await conn.client_closed()

    fake.exec_script = script
    async with fake.client() as client:
        async with box(client).process("bash", tty=True, cols=100, rows=30) as proc:
            assert await proc.stdout.__anext__() == b"\x03\x07raw"
            await proc.write(b"ls\r")
            await proc.resize(132, 43)
            await proc.close_stdin()  # sends nothing in TTY mode
            await proc.write(b"\x04")
            assert await proc.wait() == 3
    assert b"\x04" not in [d for k, d in fake.conns[0].log if k == "bin"][:-1]


async def test_tty_close_without_exit_is_unknown(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info(tty=True)
        await conn.raw(b"prompt$ ")
        await conn.ws.close()

    fake.exec_script = script
    async with fake.client() as client:
        async with box(client).process("bash", tty=True) as proc:
            with pytest.raises(ExitStatusUnknownError):
                await proc.wait()
            assert proc.exit_code is None


# ------------------------------------------------------------------- events


async def test_events_in_order_and_port_callback(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info(sid=7)
        await conn.out(b"a")
        await conn.text({"type": "port_opened", "port": 8080, "address": "0.0.0.0", "pid": 9})
        await conn.out(b"b", stream=2)
        await conn.text({"type": "port_closed", "port": 8080, "address": "0.0.0.0", "pid": 9})
        await conn.exit_frame(0)
        await conn.client_closed()

    ports: list[PortEvent] = []
    fake.exec_script = script
    async with fake.client() as client:
        async with box(client).process("srv", on_port=ports.append) as proc:
            events = [e async for e in proc]
    assert events == [
        SessionInfoEvent(session_id="7", command="cmd", tty=False),
        OutputEvent(stream="stdout", data=b"a"),
        PortEvent(opened=True, port=8080, address="0.0.0.0", pid=9),
        OutputEvent(stream="stderr", data=b"b"),
        PortEvent(opened=False, port=8080, address="0.0.0.0", pid=9),
        ExitEvent(exit_code=0),
    ]
    assert [p.opened for p in ports] == [True, False]
    assert proc.exit_code == 0
    assert proc.session_id == "7"


async def test_event_iteration_raises_on_abnormal_close(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.out(b"a")
        conn.drop()

    fake.exec_script = script
    async with fake.client() as client:
        async with box(client).process("x") as proc:
            seen: list[Any] = []

            async def collect() -> None:
                async for event in proc:
                    seen.append(event)

            with pytest.raises(ExitStatusUnknownError):
                await collect()
            assert seen[-1] == OutputEvent(stream="stdout", data=b"a")
            with pytest.raises(ExitStatusUnknownError):
                await proc.stdout.read()


async def test_first_frames_are_not_lost(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        # Everything at once, in the same instant as the upgrade.
        await conn.info()
        await conn.out(b"1")
        await conn.out(b"2", stream=2)
        await conn.exit_text(0)
        await conn.exit_frame(0)
        await conn.client_closed()

    fake.exec_script = script
    async with fake.client() as client:
        async with box(client).process("x") as proc:
            await asyncio.sleep(0.2)
            assert await proc.stdout.read() == b"1"
            assert await proc.stderr.read() == b"2"
            assert await proc.wait() == 0


# -------------------------------------------------------------------- liveness


async def test_dead_peer_is_detected(fake: FakeSprites) -> None:
    fake.read_client = False  # never reads, so never answers our pings

    async def script(conn: Conn) -> None:
        await conn.info()
        await asyncio.sleep(30)

    fake.exec_script = script
    start = time.monotonic()
    async with fake.client(ping_interval=0.05, dead_after=0.4) as client:
        with pytest.raises(ExitStatusUnknownError, match="dead"):
            await box(client).exec("sleep", "100")
    assert time.monotonic() - start < 15  # dead_after, not the 30 s silence


async def test_a_short_command_makes_no_timer_of_its_own(
    fake: FakeSprites, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pings and the dead-peer check start from one timer shared by all
    # sessions, for those still running after the first period: a short
    # command arms none of its own, a long one (below) still gets its own.
    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.out(b"hi\n")
        await conn.exit_frame(0)
        await conn.client_closed()

    fake.exec_script = script
    loop = asyncio.get_running_loop()
    armed: list[str] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
        armed.append(getattr(callback, "__qualname__", ""))
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting)
    async with fake.client(ping_interval=15.0, dead_after=45.0) as client:
        for _ in range(3):
            assert (await box(client).exec("echo", "hi")).stdout == b"hi\n"
    assert [name for name in armed if "_tick" in name] == []
    monkeypatch.undo()


async def test_silent_live_command_survives_the_watchdog(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        await asyncio.sleep(1.5)  # silent, but the socket answers pings
        await conn.out(b"finally")
        await conn.exit_frame(0)
        await conn.client_closed()

    fake.exec_script = script
    async with fake.client(ping_interval=0.05, dead_after=0.6) as client:
        result = await box(client).exec("sleep", "1")
    assert result.stdout == b"finally"


async def test_a_reader_paused_by_backpressure_is_not_called_dead(fake: FakeSprites) -> None:
    frame = 64 * 1024

    async def script(conn: Conn) -> None:
        await conn.info()
        for _ in range(64):  # 4 MiB: far more than the client buffers
            await conn.out(b"x" * frame)
        await conn.exit_frame(0)
        await conn.client_closed(timeout=20)

    fake.exec_script = script
    async with fake.client(buffer_size=128 * 1024, ping_interval=0.05, dead_after=0.3) as client:
        async with box(client).process("yes") as proc:
            await asyncio.sleep(1.2)  # four times dead_after without reading a byte
            assert not proc.done
            total = 0
            async for chunk in proc.stdout:
                total += len(chunk)
            assert total == 64 * frame
            assert await proc.wait() == 0


# ---------------------------------------------------------------- backpressure


async def test_slow_reader_bounds_memory_and_loses_nothing(fake: FakeSprites) -> None:
    frame = 64 * 1024
    count = 512  # 32 MiB in all: more than loopback socket buffers hold
    sent: list[int] = []

    async def script(conn: Conn) -> None:
        await conn.info()
        for i in range(count):
            await conn.out(bytes([i % 256]) * frame)
            sent.append(i)
        await conn.exit_frame(0)
        await conn.client_closed(timeout=20)

    fake.exec_script = script
    async with fake.client(buffer_size=256 * 1024) as client:
        async with box(client).process("yes") as proc:
            await asyncio.sleep(0.5)  # not reading
            assert proc._buffered <= 256 * 1024 + frame
            assert len(sent) < count  # the server is held back too
            total = 0
            async for chunk in proc.stdout:
                assert proc._buffered <= 256 * 1024 + frame
                total += len(chunk)
            assert total == count * frame
            assert await proc.wait() == 0


# ---------------------------------------------------------- cancel and timeouts


async def test_timeout_signals_in_band_then_kills(fake: FakeSprites) -> None:
    signals: list[str] = []

    async def script(conn: Conn) -> None:
        await conn.info()
        while True:
            msg = await conn.recv_json()
            signals.append(msg["signal"])
            if msg["signal"] == "KILL":  # TERM is ignored by this "process"
                await conn.exit_text(137)
                await conn.exit_frame(137)
                await conn.client_closed()
                return

    fake.exec_script = script
    async with fake.client() as client:
        with pytest.raises(CommandTimeoutError) as info:
            await box(client).exec("sleep", "100", timeout=0.2)
    assert signals == ["TERM", "KILL"]
    assert info.value.session_id == "42"
    assert info.value.timeout == 0.2


async def test_cancellation_terminates_then_propagates(fake: FakeSprites) -> None:
    signals: list[str] = []
    started = asyncio.Event()

    async def script(conn: Conn) -> None:
        await conn.info()
        started.set()
        msg = await conn.recv_json()
        signals.append(msg["signal"])
        await conn.exit_text(143)
        await conn.exit_frame(143)
        await conn.client_closed()

    fake.exec_script = script
    async with fake.client() as client:
        task = asyncio.ensure_future(box(client).exec("sleep", "100"))
        await started.wait()
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert signals == ["TERM"]
        assert our_tasks() == []


@pytest.mark.parametrize("delay", [0.1, 5.0])
async def test_cancelled_during_the_handshake(fake: FakeSprites, delay: float) -> None:
    # The server starts the command when the upgrade arrives, before the 101
    # reaches the client: a cancellation in between must still stop it.
    signals: list[str] = []

    async def script(conn: Conn) -> None:
        await conn.info()
        msg = await conn.recv_json()
        signals.append(msg["signal"])
        await conn.exit_text(143)
        await conn.exit_frame(143)
        await conn.client_closed()

    fake.exec_script = script
    fake.handshake_delay = delay
    async with fake.client(kill_grace=1.0) as client:
        task = asyncio.ensure_future(box(client).exec("sleep", "100"))
        await fake.upgrades_received.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if delay < 1.0:
            # The handshake finished within kill_grace: TERM went through it.
            assert signals == ["TERM"]
        else:
            # Given up after kill_grace: nothing opened, nothing to signal.
            assert signals == []
        assert our_tasks() == []


async def test_without_capability_the_kill_endpoint_is_used(fake: FakeSprites) -> None:
    fake.capabilities = None
    conns: list[Conn] = []

    async def script(conn: Conn) -> None:
        conns.append(conn)
        await conn.info(sid="77")
        await conn.client_closed(timeout=10)

    async def kill(request: web.Request) -> web.StreamResponse:
        assert request.match_info["id"] == "77"
        conn = conns[0]
        await conn.exit_text(143)
        await conn.exit_frame(143)
        return await ndjson_response(
            {"type": "signal", "message": "Signaling SIGTERM", "signal": "SIGTERM", "pid": 77},
            {"type": "exited", "message": "Process exited"},
            {"type": "complete", "exit_code": 143},
        )(request)

    fake.exec_script = script
    fake.kill_handler = kill
    async with fake.client() as client:
        with pytest.raises(CommandTimeoutError):
            await box(client).exec("sleep", "100", timeout=0.2)
    ((_, path, query),) = fake.requests_to("/kill")
    assert path == "/v1/sprites/box/exec/77/kill"
    assert query == {"signal": ["SIGTERM"], "timeout": ["0.3s"]}
    assert not any(k == "text" for k, _ in conns[0].log)  # no in-band signal


async def test_leaving_a_process_block_early_terminates(fake: FakeSprites) -> None:
    signals: list[str] = []

    async def script(conn: Conn) -> None:
        await conn.info()
        msg = await conn.recv_json()
        signals.append(msg["signal"])
        await conn.exit_frame(143)
        await conn.client_closed()

    fake.exec_script = script
    async with fake.client() as client:
        async with box(client).process("sleep", "100") as proc:
            await asyncio.sleep(0.05)  # leave while it still runs
        assert proc.exit_code == 143
    assert signals == ["TERM"]


async def test_detach_leaves_the_command_alone(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info(sid="5")
        await conn.client_closed()

    fake.exec_script = script
    async with fake.client() as client:
        async with box(client).process("sleep", "100", max_run_after_disconnect=60) as proc:
            assert await proc.detach() == "5"
    assert fake.requests[0][2]["max_run_after_disconnect"] == ["60s"]
    assert not any(k == "text" for k, _ in fake.conns[0].log)


async def test_signal_helpers(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        got = [(await conn.recv_json())["signal"] for _ in range(3)]
        await conn.text({"type": "exit", "exit_code": 130})
        await conn.exit_frame(130)
        assert got == ["INT", "HUP", "KILL"]
        await conn.client_closed()

    fake.exec_script = script
    async with fake.client() as client:
        async with box(client).process("x") as proc:
            await proc.signal("SIGINT")
            await proc.signal(1)
            await proc.kill()
            assert await proc.wait() == 130
            await proc.signal("TERM")  # after the exit: nothing to do


# ------------------------------------------------------------------- handshake


async def test_refused_handshake_raises_typed_error(fake: FakeSprites) -> None:
    async with fake.client() as client:
        with pytest.raises(NotFoundError):
            await client.sprite("nosuch").exec("true")  # no route for this sprite


# ------------------------------------------------------------------ HTTP exec


async def test_http_exec(fake: FakeSprites) -> None:
    fake.http_exec_chunks = [b"\x01got: {stdin}", b"\x02warn\n", b"\x01!", b"\x03\x09"]
    async with fake.client() as client:
        result = await box(client).run_http(
            "sh", "-c", "cat", stdin=b"input", env={"A": "1"}, cwd="/tmp"
        )
    assert (result.exit_code, result.stdout, result.stderr) == (9, b"got: input!", b"warn\n")
    ((method, _, query),) = fake.requests
    assert method == "POST"
    assert query["cmd"] == ["sh", "-c", "cat"]
    assert query["stdin"] == ["true"]
    assert query["dir"] == ["/tmp"]
    assert "A=1" in query["env"]
    assert "tty" not in query


async def test_http_exec_without_exit_frame(fake: FakeSprites) -> None:
    fake.http_exec_chunks = [b"\x01partial"]
    async with fake.client() as client:
        with pytest.raises(ExitStatusUnknownError):
            await box(client).run_http("true")


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("argv", "kwargs", "error"),
    [
        ((), {}, ValueError),
        (("",), {}, ValueError),
        (("ls", 3), {}, TypeError),
        (("ls", b"-l"), {}, TypeError),
        (("ls", "a\x00b"), {}, ValueError),
        (("ls",), {"env": {"": "x"}}, ValueError),
        (("ls",), {"env": {"A=B": "x"}}, ValueError),
        (("ls",), {"env": {"A": "x\x00"}}, ValueError),
        (("ls",), {"env": {"A": 1}}, TypeError),
        (("ls",), {"env": ["A=1"]}, TypeError),
        (("ls",), {"cwd": "relative/dir"}, ValueError),
        (("ls",), {"cwd": "/a\x00"}, ValueError),
        (("ls",), {"timeout": 0}, ValueError),
        (("ls",), {"timeout": "5"}, TypeError),
        (("ls",), {"max_output": -1}, ValueError),
        (("ls",), {"stdin": 5}, TypeError),
    ],
)
async def test_invalid_input_fails_before_the_network(
    argv: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    async with SpritesClient("tok", base_url="http://127.0.0.1:9") as client:
        with pytest.raises(error):
            await client.sprite("box").exec(*argv, **kwargs)


async def test_invalid_process_arguments() -> None:
    async with SpritesClient("tok", base_url="http://127.0.0.1:9") as client:
        sprite = client.sprite("box")
        with pytest.raises(ValueError, match="cols"):
            sprite.process("bash", tty=True, cols=0)
        with pytest.raises(ValueError, match="max_run_after_disconnect"):
            sprite.process("bash", max_run_after_disconnect="soon")
        proc = sprite.process("bash")
        with pytest.raises(RuntimeError, match="not started"):
            await proc.wait()
        with pytest.raises(ValueError, match="unknown signal"):
            await proc.signal("NOPE")


async def test_env_is_merged_over_a_base_unless_replaced(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info(tty=conn.query.get("tty") == "true")
        await conn.exit_text(0)
        await conn.exit_frame(0)
        await conn.client_closed()

    fake.exec_script = script
    async with fake.client() as client:
        await box(client).exec("env", env={"FOO": "1", "PATH": "/mine"})
        await box(client).exec("env", env={"FOO": "1"}, env_replace=True)
        await box(client).exec("env")
        async with box(client).process("bash", tty=True, env={"X": "y"}) as proc:
            await proc.wait()
    envs = [q.get("env") for _, _, q in fake.requests]
    assert envs[0] is not None
    assert sorted(envs[0]) == ["FOO=1", "HOME=/home/sprite", "LANG=C.UTF-8", "PATH=/mine"]
    assert envs[1] == ["FOO=1"]
    assert envs[2] is None
    assert "TERM=xterm-256color" in envs[3]  # type: ignore[operator]


def test_events_are_plain_structs() -> None:
    event = OutputEvent(stream="stdout", data=b"x")
    assert msgspec.json.decode(msgspec.json.encode(event), type=OutputEvent) == event


async def test_leaving_with_unread_output_still_sees_the_exit(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        for _ in range(64):
            await conn.out(b"z" * 65536)
        msg = await conn.recv_json(timeout=10)
        assert msg["signal"] == "TERM"
        await conn.exit_text(143)
        await conn.exit_frame(143)
        await conn.client_closed()

    fake.exec_script = script
    async with fake.client(buffer_size=65536, kill_grace=5) as client:
        start = time.monotonic()
        async with box(client).process("yes") as proc:
            await asyncio.sleep(0.2)  # the buffers fill up; nothing is read
        assert proc.exit_code == 143  # seen without waiting for KILL
        assert time.monotonic() - start < 3


async def test_two_readers_of_one_stream_are_refused(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await conn.info()
        await asyncio.sleep(0.3)
        await conn.out(b"x")
        await conn.exit_frame(0)
        await conn.client_closed()

    fake.exec_script = script
    async with fake.client() as client:
        async with box(client).process("x") as proc:
            first = asyncio.ensure_future(proc.stdout.read())
            await asyncio.sleep(0.05)
            with pytest.raises(RuntimeError, match="already reading stdout"):
                await proc.stdout.__anext__()
            assert await first == b"x"
            assert await proc.wait() == 0


async def test_cancelled_while_the_reader_closes_the_socket(
    fake: FakeSprites, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Leaving `async with` after the exit waits for the reader to close the
    # socket (without a task of its own now): a cancellation meanwhile still
    # lets the close finish before it is raised, and leaves nothing behind.
    from sprites_async._exec import _connection

    real = _connection.close_now

    async def slow_close(ws: Any, timeout: float = 1.0) -> None:
        await asyncio.sleep(0.3)
        await real(ws, timeout)

    monkeypatch.setattr(_connection, "close_now", slow_close)

    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.exit_frame(0)
        await conn.client_closed()

    fake.exec_script = script
    seen: list[Any] = []
    async with fake.client() as client:

        async def body() -> None:
            async with client.sprite("box").process("true") as proc:
                seen.append(proc)
                assert await proc.wait() == 0

        task = asyncio.ensure_future(body())
        while not seen or not seen[0].done:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # inside __aexit__, waiting for the reader
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        proc = seen[0]
        assert proc._reader.done() and proc._ws.closed
        assert proc.exit_code == 0


async def test_aclose_from_another_task_ends_a_waiting_complete(fake: FakeSprites) -> None:
    # complete() is woken by the reader itself at its end (no done callback
    # on the task): a reader cancelled by aclose() must still wake it.
    async def script(conn: Conn) -> None:
        await conn.info()
        await conn.client_closed()

    fake.exec_script = script
    async with fake.client() as client:
        proc = await box(client).process("sleep", "100").start()
        waiting = asyncio.ensure_future(proc.complete())
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await proc.aclose()
        with pytest.raises(ExitStatusUnknownError):
            await asyncio.wait_for(waiting, 10)
        assert our_tasks() == []


def test_the_shared_watchdog_timer_keeps_no_loop_alive() -> None:
    # One starter per loop, in a registry keyed weakly by the loop: it must
    # hold no reference to its loop (nor to a timer handle, which would).
    from sprites_async._exec._connection import _starter_for

    class Session:
        _starter = None
        started = False

        def _start_watch(self, loop: asyncio.AbstractEventLoop) -> None:
            self.started = True

    session = Session()

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        _starter_for(loop).add(loop, session, 0.01)  # type: ignore[arg-type]
        _starter_for(loop).add(loop, Session(), 30.0)  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        return weakref.ref(loop)

    loop_ref = asyncio.run(main())
    gc.collect()
    assert session.started
    assert loop_ref() is None
