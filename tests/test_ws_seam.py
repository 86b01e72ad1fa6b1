"""The WebSocket seam: handshake errors keep the server's body; headers are returned."""

from __future__ import annotations

import asyncio
import gc

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from sprites_async import (
    AuthenticationError,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    SpritesClient,
    SpritesTimeoutError,
    Timeouts,
    _transport,
)
from tests._mock import TOKEN


def app_with(handler: object) -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/sprites/{name}/exec", handler)  # type: ignore[arg-type]
    return app


async def test_upgrade_returns_socket_and_response_headers() -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        ws.headers["X-Sprite-Capabilities"] = "signal"
        ws.headers["Sprite-Version"] = "v0.0.1-rc46"
        await ws.prepare(request)
        await ws.send_str('{"type":"session_info","session_id":"7"}')
        await ws.close()
        return ws

    async with TestServer(app_with(handler)) as server:
        async with SpritesClient(TOKEN, base_url=str(server.make_url(""))) as c:
            ws, headers = await c._ws_connect(
                "/v1/sprites/a/exec", operation="exec", sprite="a", params=[("cmd", "true")]
            )
            assert headers["X-Sprite-Capabilities"] == "signal"
            assert headers["Sprite-Version"] == "v0.0.1-rc46"
            msg = await ws.receive()
            assert msg.type is WSMsgType.TEXT
            assert "session_info" in msg.data
            await ws.close()


@pytest.mark.parametrize(
    ("status", "body", "cls", "message"),
    [
        (401, b'{"error":"authentication failed"}', AuthenticationError, "authentication failed"),
        (404, b'{"error":"sprite not found"}', NotFoundError, "sprite not found"),
        (500, b"failed to start process\n", ServerError, "failed to start process"),
    ],
)
async def test_refused_upgrade_keeps_status_body_and_ids(
    status: int, body: bytes, cls: type[Exception], message: str
) -> None:
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(
            status=status,
            body=body,
            headers={"x-request-id": "RID", "fly-request-id": "FID"},
            content_type="application/json",
        )

    async with TestServer(app_with(handler)) as server:
        async with SpritesClient(TOKEN, base_url=str(server.make_url(""))) as c:
            with pytest.raises(cls) as info:
                await c._ws_connect("/v1/sprites/a/exec", operation="exec", sprite="a")
    err = info.value
    assert err.message == message  # type: ignore[attr-defined]
    assert err.request_id == "RID"  # type: ignore[attr-defined]
    assert err.fly_request_id == "FID"  # type: ignore[attr-defined]
    assert err.operation == "exec"  # type: ignore[attr-defined]
    assert err.sprite == "a"  # type: ignore[attr-defined]
    assert calls == 1  # 401/404/500 are not retried: the command might have started


async def test_refused_upgrade_with_503_is_retried() -> None:
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.Response(status=503, text="Process not ready\n")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    async with TestServer(app_with(handler)) as server:
        async with SpritesClient(
            TOKEN,
            base_url=str(server.make_url("")),
            retry=RetryPolicy(max_attempts=3, base_delay=0.0),
        ) as c:
            ws, _ = await c._ws_connect("/v1/sprites/a/exec", operation="exec", sprite="a")
            await ws.close()
    assert calls == 2


async def test_refused_upgrade_429_carries_retry_after() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": "rate_limited", "message": "too many"},
            status=429,
            headers={"Retry-After": "99"},
        )

    async with TestServer(app_with(handler)) as server:
        async with SpritesClient(
            TOKEN, base_url=str(server.make_url("")), retry=RetryPolicy(max_retry_after=1)
        ) as c:
            with pytest.raises(RateLimitError) as info:
                await c._ws_connect("/v1/sprites/a/exec", operation="exec", sprite="a")
    assert info.value.retry_after == 99.0


async def test_a_slow_upgrade_waits_for_the_wake_timeout_not_the_read_timeout() -> None:
    # A cold sprite can take longer than the read timeout to answer the
    # upgrade; handshakes are bounded by Timeouts.wake alone.
    async def handler(request: web.Request) -> web.WebSocketResponse:
        await asyncio.sleep(float(request.query.get("delay", "0")))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    async with TestServer(app_with(handler)) as server:
        timeouts = Timeouts(read=0.3, wake=5.0)
        async with SpritesClient(TOKEN, base_url=str(server.make_url("")), timeout=timeouts) as c:
            ws, _ = await c._ws_connect(
                "/v1/sprites/a/exec", operation="exec", sprite="a", params=[("delay", "1.2")]
            )
            await ws.close()
        timeouts = Timeouts(read=30.0, wake=0.3)
        async with SpritesClient(TOKEN, base_url=str(server.make_url("")), timeout=timeouts) as c:
            with pytest.raises(SpritesTimeoutError, match=r"Timeouts\.wake"):
                await c._ws_connect(
                    "/v1/sprites/a/exec", operation="exec", sprite="a", params=[("delay", "3")]
                )


# ------------------------------------------------------- cheap sockets (issue 15)


async def _exec_app(request: web.Request) -> web.StreamResponse:
    """Accept, say one thing, then do what ``?then=`` says: cut, stall, or ignore a close."""
    ws = web.WebSocketResponse(autoclose=False, autoping=False)
    ws.headers["x-request-id"] = "RID"
    await ws.prepare(request)
    await ws.send_bytes(b"\x01hi\n")
    then = request.query.get("then", "stall")
    if then == "cut":
        assert request.transport is not None
        request.transport.abort()
        return ws
    if then == "deaf":
        msg = await ws.receive()
        request.app[SEEN].append(msg.type)
    await asyncio.sleep(30)  # cut short by the server's close at the end of the test
    return ws


SEEN = web.AppKey("seen", list)


def _server() -> TestServer:
    app = app_with(_exec_app)
    app[SEEN] = []
    return TestServer(app, host="127.0.0.1")


async def test_receive_on_a_quiet_socket_is_aiohttps_own_and_a_cut_is_a_message() -> None:
    async with _server() as server:
        async with SpritesClient(TOKEN, base_url=str(server.make_url(""))) as c:
            path = "/v1/sprites/a/exec"
            ws, _ = await c._ws_connect(
                path, operation="exec", params=[("then", "cut")], autoping=False
            )
            # No coroutine of ours around each message of an exec or control socket ...
            call = ws.receive()
            code = call.cr_code  # type: ignore[attr-defined]
            assert (code.co_name, "aiohttp" in code.co_filename) == ("receive", True)
            assert (await call).data == b"\x01hi\n"
            # ... and still no aiohttp error out of it: a lost connection is a message.
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
            # A deadline, or a socket that answers pings itself, goes through our translation.
            ws2, _ = await c._ws_connect(path, operation="exec", sprite="a", autoping=False)
            assert (await ws2.receive()).data == b"\x01hi\n"
            with pytest.raises(SpritesTimeoutError) as info:
                await ws2.receive(timeout=0.1)
            assert (info.value.operation, info.value.request_id) == ("exec", "RID")
            ws3, _ = await c._ws_connect(path, operation="exec")
            call = ws3.receive()
            assert call.cr_code.co_name == "_receive"  # type: ignore[attr-defined]
            call.close()  # type: ignore[attr-defined]
            for sock in (ws, ws2, ws3):
                await sock.close()


async def test_close_sends_the_frame_and_never_waits_for_the_reply() -> None:
    async with _server() as server:
        async with SpritesClient(TOKEN, base_url=str(server.make_url(""))) as c:
            ws, _ = await c._ws_connect(
                "/v1/sprites/a/exec", operation="exec", params=[("then", "deaf")], autoping=False
            )
            assert (await ws.receive()).data == b"\x01hi\n"
            # aiohttp's default would wait for the reply the server never sends.
            assert await asyncio.wait_for(ws.close(), 1.5) is True
            assert ws.closed
            assert ws.exception() is None  # cutting the wait short is no failure
            for _ in range(100):
                if server.app[SEEN]:
                    break
                await asyncio.sleep(0.02)
            assert server.app[SEEN] == [WSMsgType.CLOSE]


async def test_handshakes_in_flight_share_one_wake_timer() -> None:
    async def slow(request: web.Request) -> web.WebSocketResponse:
        await asyncio.sleep(30)  # never answers in time
        raise AssertionError("unreachable")

    async with TestServer(app_with(slow), host="127.0.0.1") as server:
        timeouts = Timeouts(wake=0.5)
        async with SpritesClient(TOKEN, base_url=str(server.make_url("")), timeout=timeouts) as c:
            calls = [
                asyncio.ensure_future(
                    c._ws_connect(f"/v1/sprites/s{i}/exec", operation="exec", sprite=f"s{i}")
                )
                for i in range(20)
            ]
            await asyncio.sleep(0.1)
            deadlines = c._wake_deadlines
            assert deadlines is not None
            # One slice (one timer) holds all 20, where asyncio.timeout made 20 timers.
            slices = list(deadlines._slices.values())
            assert len(slices) <= 2
            assert sum(len(waiting) for waiting in slices) == 20
            results = await asyncio.gather(*calls, return_exceptions=True)
            for i, result in enumerate(results):
                assert isinstance(result, SpritesTimeoutError), result
                assert result.sprite == f"s{i}"
                assert "Timeouts.wake" in str(result)
            assert not deadlines._slices
            current = asyncio.current_task()
            assert current is not None and _transport._cancelling(current) == 0


async def test_a_caller_cancelled_in_a_handshake_sees_its_cancellation() -> None:
    entered = asyncio.Event()

    async def slow(request: web.Request) -> web.WebSocketResponse:
        entered.set()
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    async with TestServer(app_with(slow), host="127.0.0.1") as server:
        async with SpritesClient(TOKEN, base_url=str(server.make_url(""))) as c:
            call = asyncio.ensure_future(c._ws_connect("/v1/sprites/a/exec", operation="exec"))
            await entered.wait()
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert c._wake_deadlines is not None
            assert not any(c._wake_deadlines._slices.values())  # it left its deadline
            assert not _transport._upgrades


async def test_a_deadline_and_a_cancellation_at_once_leave_the_cancellation() -> None:
    # As asyncio.timeout: when someone else cancelled the task too, the
    # deadline's own cancellation is undone and the other one stands.
    loop = asyncio.get_running_loop()
    deadlines = _transport._WakeDeadlines(loop)
    outcome: list[object] = []

    async def handshake(also_cancelled: bool) -> None:
        task = asyncio.current_task()
        assert task is not None
        deadline = deadlines.start(task, 0.05)
        try:
            if also_cancelled:
                loop.call_later(0.2, task.cancel)
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            outcome.append(("deadline alone", deadline.end(), _transport._cancelling(task)))
            if also_cancelled:
                await asyncio.sleep(1)  # the other cancellation is still pending
            return
        finally:
            deadline.end()
        outcome.append("not cancelled")

    await handshake(False)
    assert outcome == [("deadline alone", True, 0)]
    outcome.clear()
    task = asyncio.ensure_future(handshake(True))
    await asyncio.sleep(0.1)  # the deadline cancelled it; it waits on in its except
    assert outcome == [("deadline alone", True, 0)]
    with pytest.raises(asyncio.CancelledError):
        await task  # the second, outside cancellation ends it


async def test_a_deadline_that_passes_after_the_handshake_cancels_nothing() -> None:
    loop = asyncio.get_running_loop()
    deadlines = _transport._WakeDeadlines(loop)
    task = asyncio.current_task()
    assert task is not None
    deadline = deadlines.start(task, 0.05)
    assert deadline.end() is False
    await asyncio.sleep(0.2)  # the slice's timer fires with nobody left in it
    assert _transport._cancelling(task) == 0
    assert not deadlines._slices


async def test_a_refused_or_failed_upgrade_leaves_nothing_behind() -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=404, text='{"error":"sprite not found"}')

    async with TestServer(app_with(refuse), host="127.0.0.1") as server:
        async with SpritesClient(TOKEN, base_url=str(server.make_url(""))) as c:
            with pytest.raises(NotFoundError):
                await c._ws_connect("/v1/sprites/a/exec", operation="exec")
            assert not _transport._upgrades
            assert c._wake_deadlines is not None
            assert not any(c._wake_deadlines._slices.values())


def test_telemetry_is_a_layer_only_clients_with_it_have() -> None:
    plain = SpritesClient(TOKEN, base_url="http://127.0.0.1:9")
    assert not {"_request", "_stream", "_ws_connect"} & set(vars(plain))
    pytest.importorskip("opentelemetry")
    traced = SpritesClient(TOKEN, base_url="http://127.0.0.1:9", telemetry=True)
    assert {"_request", "_stream", "_ws_connect"} <= set(vars(traced))


async def test_an_open_socket_keeps_nothing_of_its_handshake() -> None:
    # A context variable set around the upgrade was copied into the new
    # connection's reader handle and so lived (with what it held) as long
    # as the socket: hundreds of bytes per open exec session.
    async with _server() as server:
        async with SpritesClient(TOKEN, base_url=str(server.make_url(""))) as c:
            sockets = [
                (await c._ws_connect("/v1/sprites/a/exec", operation="exec", autoping=False))[0]
                for _ in range(3)
            ]
            gc.collect()
            kept = [o for o in gc.get_objects() if isinstance(o, _transport._Handshake)]
            assert kept == []
            for ws in sockets:
                await ws.close()
