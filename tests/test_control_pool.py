"""The control-channel pool: reuse, limits, waiters, pruning, fallback, protocol edges."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sprites_async import (
    CommandTimeoutError,
    ExecError,
    ExitStatusUnknownError,
    NotFoundError,
    RetryPolicy,
    SpritesClient,
)
from sprites_async._config import ControlOptions, ExecSettings
from sprites_async._control import pool_for
from sprites_async._websocket import WebSocket
from tests._emulator import no_leftovers
from tests._fakes import Conn, FakeSprites, ndjson_response, our_tasks


def make_client(exec_emu: Any, **options: Any) -> SpritesClient:
    client = SpritesClient(exec_emu.token, base_url=exec_emu.url)
    client.exec_settings = ExecSettings(kill_grace=1.0, kill_wait=2.0)
    client.control = ControlOptions(**options)
    return client


@pytest.fixture
async def client(exec_emu: Any) -> AsyncIterator[SpritesClient]:
    c = make_client(exec_emu)
    yield c
    await no_leftovers(exec_emu, c)


# ------------------------------------------------------------- against the emulator


async def test_sequential_execs_reuse_one_socket(client: SpritesClient) -> None:
    sprite = client.sprite("box")
    for i in range(20):
        result = await sprite.exec("sh", "-c", f"echo {i}; exit {i % 3}")
        assert (result.stdout, result.exit_code) == (f"{i}\n".encode(), i % 3)
    pool = pool_for(client)
    assert pool.dials == 1
    assert pool.stats("box") == {"open": 1, "idle": 1, "waiting": 0}
    assert pool.supported("box") is True


async def test_404_falls_back_to_direct_and_is_remembered(exec_emu: Any) -> None:
    exec_emu.state.faults.control_404 = True
    client = make_client(exec_emu)
    sprite = client.sprite("box")
    assert (await sprite.exec("sh", "-c", "exit 7")).exit_code == 7
    pool = pool_for(client)
    assert pool.supported("box") is False
    assert (await sprite.exec("echo", "hi")).stdout == b"hi\n"
    assert pool.dials == 0
    assert pool.stats("box")["open"] == 0
    pool.forget("box")  # e.g. after an upgrade: probe again
    exec_emu.state.faults.control_404 = False
    assert (await sprite.exec("true")).exit_code == 0
    assert pool.dials == 1
    await no_leftovers(exec_emu, client)


async def test_exit_code_from_op_complete_when_the_stream_has_none(
    client: SpritesClient, exec_emu: Any
) -> None:
    exec_emu.state.faults.suppress_exit = True
    result = await client.sprite("box").exec("sh", "-c", "echo hi; exit 6")
    assert (result.exit_code, result.stdout) == (6, b"hi\n")


async def test_100_dropped_control_sockets_in_a_row(client: SpritesClient, exec_emu: Any) -> None:
    sprite = client.sprite("box")
    exec_emu.state.faults.drop_ws_after_frames = 2  # op.ack, session_info, then the TCP drop
    for _ in range(100):
        with pytest.raises(ExitStatusUnknownError) as info:
            await sprite.exec("true")
        assert info.value.session_id is not None  # it started: never re-sent
    exec_emu.state.faults.drop_ws_after_frames = None
    pool = pool_for(client)
    assert pool.stats("box") == {"open": 0, "idle": 0, "waiting": 0}
    results = [await sprite.exec("echo", str(i)) for i in range(5)]
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(5)]
    assert pool.stats("box")["open"] == 1
    # The dropped sessions were detached; they are short and end on their own.


async def test_200_concurrent_execs_on_one_sprite(client: SpritesClient) -> None:
    sprite = client.sprite("box")
    results = await asyncio.gather(
        *(
            sprite.exec("sh", "-c", 'sleep 0.1; echo "$0"; exit $(($0 % 5))', str(i))
            for i in range(200)
        )
    )
    for i, result in enumerate(results):
        assert (result.stdout, result.exit_code) == (f"{i}\n".encode(), i % 5)
    pool = pool_for(client)
    assert pool.dials <= 100
    stats = pool.stats("box")
    assert stats["open"] <= 100
    assert stats["idle"] <= 20  # drained on check-in
    assert stats["waiting"] == 0


async def test_limits_are_respected(exec_emu: Any) -> None:
    client = make_client(exec_emu, max_per_sprite=3, when_full="wait")
    sprite = client.sprite("box")
    pool = pool_for(client)
    peak = 0

    async def one(i: int) -> bytes:
        nonlocal peak
        peak = max(peak, pool.stats("box")["open"])
        return (await sprite.exec("sh", "-c", "sleep 0.05; echo $0", str(i))).stdout

    outs = await asyncio.gather(*(one(i) for i in range(12)))
    assert outs == [f"{i}\n".encode() for i in range(12)]
    assert pool.dials == 3
    assert peak <= 3
    await no_leftovers(exec_emu, client)


async def test_cancelled_waiter_leaves_the_pool_consistent(exec_emu: Any) -> None:
    client = make_client(exec_emu, max_per_sprite=1, when_full="wait")
    sprite = client.sprite("box")
    pool = pool_for(client)
    first = asyncio.ensure_future(sprite.exec("sleep", "0.4"))
    await asyncio.sleep(0.1)
    waiter = asyncio.ensure_future(sprite.exec("echo", "never"))
    await asyncio.sleep(0.05)
    assert pool.stats("box")["waiting"] == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.stats("box")["waiting"] == 0
    assert (await first).exit_code == 0
    assert (await sprite.exec("echo", "next")).stdout == b"next\n"
    assert pool.dials == 1
    await no_leftovers(exec_emu, client)


async def test_hand_off_races_with_cancellation(exec_emu: Any) -> None:
    client = make_client(exec_emu, max_per_sprite=2, when_full="wait")
    sprite = client.sprite("box")
    tasks = [asyncio.ensure_future(sprite.exec("sh", "-c", "sleep 0.02")) for _ in range(30)]
    for i, task in enumerate(tasks):
        if i % 3 == 1:
            await asyncio.sleep(0.01)
            task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) or r.exit_code == 0 for r in results)  # type: ignore[union-attr]
    assert (await sprite.exec("true")).exit_code == 0
    stats = pool_for(client).stats("box")
    assert stats["open"] <= 2
    assert stats["waiting"] == 0
    await no_leftovers(exec_emu, client)


async def test_idle_sockets_are_closed_after_a_while(exec_emu: Any) -> None:
    client = make_client(exec_emu, idle_timeout=0.2)
    sprite = client.sprite("box")
    await sprite.exec("true")
    pool = pool_for(client)
    assert pool.stats("box")["idle"] == 1
    await asyncio.sleep(0.5)
    assert pool.stats("box") == {"open": 0, "idle": 0, "waiting": 0}
    assert not exec_emu.state.sessions.sockets  # closed on the server side too
    await sprite.exec("true")
    assert pool.dials == 2
    await no_leftovers(exec_emu, client)


async def test_idle_sockets_share_one_timer(exec_emu: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Idle sockets expire through one pool timer, not a receive timeout each
    # (a timer per socket is what a fan-out over many sprites would pay).
    for name in ("box2", "box3"):
        exec_emu.add_sprite(name)
    client = make_client(exec_emu, idle_timeout=0.3)
    timeouts: list[float | None] = []
    real = WebSocket.receive

    def receive(self: WebSocket, timeout: float | None = None) -> Any:
        timeouts.append(timeout)
        return real(self, timeout)

    monkeypatch.setattr(WebSocket, "receive", receive)
    pool = pool_for(client)
    for name in ("box", "box2", "box3"):
        assert (await client.sprite(name).exec("true")).exit_code == 0
    await asyncio.sleep(0.05)
    assert pool.stats()["idle"] == 3
    assert all(lease._idle_task is not None for s in pool._sprites.values() for lease in s.idle)
    assert set(timeouts) == {None}
    for _ in range(100):
        if pool.stats()["open"] == 0:
            break
        await asyncio.sleep(0.02)
    assert pool.stats() == {"open": 0, "idle": 0, "waiting": 0}
    await no_leftovers(exec_emu, client)


async def test_idle_socket_closed_by_the_server_is_pruned(exec_emu: Any) -> None:
    client = make_client(exec_emu)
    sprite = client.sprite("box")
    await sprite.exec("true")
    for ws in list(exec_emu.state.sessions.sockets):
        await ws.close()
    for _ in range(100):
        if pool_for(client).stats("box")["open"] == 0:
            break
        await asyncio.sleep(0.01)
    assert pool_for(client).stats("box")["open"] == 0
    assert (await sprite.exec("echo", "ok")).stdout == b"ok\n"
    await no_leftovers(exec_emu, client)


async def test_drain_above_max_idle(exec_emu: Any) -> None:
    client = make_client(exec_emu, max_idle=4, drain_to=2)
    sprite = client.sprite("box")
    await asyncio.gather(*(sprite.exec("sleep", "0.1") for _ in range(8)))
    assert pool_for(client).stats("box")["idle"] <= 4
    await no_leftovers(exec_emu, client)


async def test_drained_sockets_close_without_a_task_each(
    exec_emu: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A burst that ends above max_idle closes sockets as it checks them in:
    # at once, not through a task per socket.
    client = make_client(exec_emu, max_idle=2, drain_to=1)
    pool = pool_for(client)
    closers = 0
    real = type(pool)._close_ws

    def close_ws(self: Any, ws: Any) -> Any:
        nonlocal closers
        closers += 1
        return real(self, ws)

    monkeypatch.setattr(type(pool), "_close_ws", close_ws)
    sprite = client.sprite("box")
    results = await asyncio.gather(*(sprite.exec("sleep", "0.1") for _ in range(6)))
    assert [r.exit_code for r in results] == [0] * 6
    assert pool.dials == 6
    assert pool.stats("box")["idle"] <= 2
    assert closers == 0
    for _ in range(100):
        if len(exec_emu.state.sessions.sockets) <= 2:
            break
        await asyncio.sleep(0.01)
    assert len(exec_emu.state.sessions.sockets) <= 2  # the server saw them go
    await no_leftovers(exec_emu, client)


async def test_client_close_closes_the_pool(exec_emu: Any) -> None:
    client = make_client(exec_emu)
    await asyncio.gather(*(client.sprite("box").exec("true") for _ in range(5)))
    pool = pool_for(client)
    assert pool.stats()["idle"] >= 1
    await client.aclose()
    assert pool.stats() == {"open": 0, "idle": 0, "waiting": 0}
    assert our_tasks() == []
    for _ in range(100):
        if not exec_emu.state.sessions.sockets:
            break
        await asyncio.sleep(0.01)
    assert not exec_emu.state.sessions.sockets


async def test_control_can_be_switched_off(exec_emu: Any) -> None:
    client = SpritesClient(exec_emu.token, base_url=exec_emu.url)
    client.control = False
    await client.sprite("box").exec("true")
    assert pool_for(client).dials == 0
    await no_leftovers(exec_emu, client)


# ------------------------------------------------------- against a scripted server


async def control_op(conn: Conn) -> dict[str, Any]:
    """Wait for the next op.start on a control socket."""
    while True:
        kind, data = await conn.recv()
        assert kind == "text", (kind, data)
        assert data.startswith("control:")
        import msgspec

        env: dict[str, Any] = msgspec.json.decode(data[len("control:") :])
        if env["type"] == "op.start":
            return env


def envelope(body: str) -> str:
    return "control:" + body


async def test_op_start_shape_and_reuse_across_stray_errors(fake: FakeSprites) -> None:
    starts: list[dict[str, Any]] = []

    async def script(conn: Conn) -> None:
        for code in (3, 4):
            start = await control_op(conn)
            starts.append(start)
            await conn.text(envelope('{"type":"op.ack","id":""}'))
            await conn.info()
            await conn.out(b"hi\n")
            await conn.exit_text(code)
            await conn.exit_frame(code)
            await conn.text(
                envelope(f'{{"type":"op.complete","id":"","args":{{"ok":true,"exitCode":{code}}}}}')
            )
            # A stray error between ops must not be pinned on the next op.
            await conn.text(
                envelope(
                    '{"type":"op.error","id":"","args":{"code":"op.not_active","message":"x"}}'
                )
            )
        await conn.client_closed()

    fake.control_script = script
    async with fake.client(control=True) as client:
        sprite = client.sprite("box")
        assert (await sprite.exec("sh", "-c", "x", env={"A": "1"}, cwd="/w")).exit_code == 3
        await asyncio.sleep(0.05)
        assert (await sprite.exec("true")).exit_code == 4
        assert pool_for(client).dials == 1
    args = starts[0]["args"]
    assert starts[0]["op"] == "exec"
    assert args["cmd"] == ["sh", "-c", "x"]
    assert args["path"] == "sh"
    assert args["stdin"] == "false"
    assert args["dir"] == "/w"
    assert "A=1" in args["env"]
    assert all(isinstance(v, (str, list)) for v in args.values())


async def test_socket_without_op_complete_is_not_reused(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await control_op(conn)
        await conn.text(envelope('{"type":"op.ack","id":""}'))
        await conn.info()
        await conn.exit_text(2)
        await conn.exit_frame(2)
        await conn.client_closed(timeout=10)  # never sends op.complete

    fake.control_script = script
    async with fake.client(control=True, op_complete_timeout=0.2) as client:
        sprite = client.sprite("box")
        start = time.monotonic()
        assert (await sprite.exec("x")).exit_code == 2
        assert time.monotonic() - start < 6  # op_complete_timeout, not the server's 10 s
        assert (await sprite.exec("x")).exit_code == 2
        assert pool_for(client).dials == 2


async def test_refused_start_retries_elsewhere(fake: FakeSprites) -> None:
    calls = 0

    async def script(conn: Conn) -> None:
        nonlocal calls
        calls += 1
        await control_op(conn)
        if calls == 1:
            await conn.text(
                envelope('{"type":"op.error","id":"","args":{"code":"op.busy","error":"busy"}}')
            )
            await conn.client_closed()
            return
        await conn.text(envelope('{"type":"op.ack","id":""}'))
        await conn.info()
        await conn.exit_frame(0)
        await conn.text(envelope('{"type":"op.complete","id":"","args":{"ok":true}}'))
        await conn.client_closed()

    fake.control_script = script
    async with fake.client(control=True) as client:
        assert (await client.sprite("box").exec("x")).exit_code == 0
    assert calls == 2


async def test_failure_after_start_is_an_error(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await control_op(conn)
        await conn.text(envelope('{"type":"op.ack","id":""}'))
        await conn.info()
        await conn.text(
            envelope('{"type":"op.complete","id":"","args":{"ok":false,"error":"oops"}}')
        )
        await conn.client_closed()

    fake.control_script = script
    async with fake.client(control=True) as client:
        with pytest.raises(ExecError, match="oops"):
            await client.sprite("box").exec("x")
        assert pool_for(client).stats("box")["open"] == 0  # not reused


async def test_complete_without_any_exit_status(fake: FakeSprites) -> None:
    async def script(conn: Conn) -> None:
        await control_op(conn)
        await conn.text(envelope('{"type":"op.ack","id":""}'))
        await conn.info(sid="9")
        await conn.text(envelope('{"type":"op.complete","id":"","args":{"ok":true}}'))
        await conn.client_closed()

    fake.control_script = script
    async with fake.client(control=True) as client:
        with pytest.raises(ExitStatusUnknownError) as info:
            await client.sprite("box").exec("x")
    assert info.value.session_id == "9"


async def test_timeout_over_control_uses_the_kill_endpoint(fake: FakeSprites) -> None:
    conns: list[Conn] = []

    async def script(conn: Conn) -> None:
        conns.append(conn)
        await control_op(conn)
        await conn.text(envelope('{"type":"op.ack","id":""}'))
        await conn.info(sid="31")
        await conn.client_closed(timeout=10)

    async def kill(request: Any) -> Any:

        conn = conns[0]
        await conn.exit_text(143)
        await conn.exit_frame(143)
        await conn.text(
            envelope('{"type":"op.complete","id":"","args":{"ok":true,"exitCode":143}}')
        )
        return await ndjson_response({"type": "complete", "exit_code": 143})(request)

    fake.control_script = script
    fake.kill_handler = kill
    async with fake.client(control=True) as client:
        with pytest.raises(CommandTimeoutError):
            await client.sprite("box").exec("sleep", "100", timeout=0.2)
        assert pool_for(client).stats("box")["idle"] == 1  # the op completed cleanly
    ((_, path, query),) = fake.requests_to("/kill")
    assert path.endswith("/exec/31/kill")
    assert query["signal"] == ["SIGTERM"]


async def _exit_0(conn: Conn) -> None:
    await conn.info()
    await conn.exit_frame(0)
    await conn.client_closed()


@pytest.mark.parametrize(
    ("status", "remembered"),
    [(400, True), (403, True), (500, True), (502, True), (503, True), (401, False), (429, False)],
)
async def test_refusals_fall_back_to_direct(
    fake: FakeSprites, status: int, remembered: bool
) -> None:
    # Any refused dial means direct: nothing started on a socket that never opened.
    fake.control_status = status
    fake.control_body = b'{"error":"nope"}'
    fake.exec_script = _exit_0
    async with fake.client(control=True) as client:
        client.retry = RetryPolicy(max_attempts=1)
        assert (await client.sprite("box").exec("x")).exit_code == 0
        assert pool_for(client).supported("box") is (False if remembered else None)
        assert pool_for(client).stats("box")["open"] == 0
    assert len(fake.requests_to("/control")) == 1  # a refused handshake is not retried
    assert len(fake.requests_to("/exec")) == 1


async def test_sprite_not_found_on_control_is_not_cached(fake: FakeSprites) -> None:
    fake.control_status = 404
    fake.control_body = b'{"error":"sprite not found"}'
    async with fake.client(control=True) as client:
        with pytest.raises(NotFoundError, match="sprite not found") as info:
            await client.sprite("nobox").exec("x")
        assert info.value.operation == "exec"  # the direct path's own answer
        assert pool_for(client).supported("nobox") is None


async def test_per_client_limit_spans_sprites(exec_emu: Any) -> None:
    exec_emu.add_sprite("box2")
    client = make_client(exec_emu, max_total=2, when_full="wait")
    pool = pool_for(client)
    peak = 0

    async def one(name: str, i: int) -> bytes:
        nonlocal peak
        peak = max(peak, pool.stats()["open"])
        return (await client.sprite(name).exec("sh", "-c", "sleep 0.05; echo $0", str(i))).stdout

    outs = await asyncio.gather(*(one("box" if i % 2 else "box2", i) for i in range(10)))
    assert outs == [f"{i}\n".encode() for i in range(10)]
    assert peak <= 2
    assert pool.stats()["open"] <= 2
    await no_leftovers(exec_emu, client)


async def test_idle_sockets_of_one_sprite_do_not_starve_another(exec_emu: Any) -> None:
    exec_emu.add_sprite("box2")
    client = make_client(exec_emu, max_total=1)
    assert (await client.sprite("box").exec("true")).exit_code == 0
    assert pool_for(client).stats("box")["idle"] == 1
    result = await asyncio.wait_for(client.sprite("box2").exec("echo", "two"), 5)
    assert result.stdout == b"two\n"
    assert pool_for(client).stats() == {"open": 1, "idle": 1, "waiting": 0}
    await no_leftovers(exec_emu, client)


async def test_a_socket_taken_straight_back_starts_no_idle_watcher(
    client: SpritesClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sequential commands: the idle watcher of a released socket starts a loop
    # turn later, so the next command, taking it back at once, finds no task
    # to cancel. One left idle afterwards is still watched.
    pool = pool_for(client)
    watched = 0
    real = type(pool)._watch_idle

    def watch(self: Any, lease: Any) -> Any:
        # Counts watchers made, whether or not they ever ran.
        nonlocal watched
        watched += 1
        return real(self, lease)

    monkeypatch.setattr(type(pool), "_watch_idle", watch)
    sprite = client.sprite("box")
    for i in range(5):
        assert (await sprite.exec("sh", "-c", f"exit {i}")).exit_code == i
    assert pool.dials == 1
    await asyncio.sleep(0.05)
    assert watched == 1
    lease = pool._sprites["box"].idle[0]
    assert lease._idle_task is not None and not lease._idle_task.done()
