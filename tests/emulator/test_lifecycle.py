"""The sprite-layer middleware and the running → warm → cold clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import pytest

from sprites_async.emulator import EmulatorConfig, create_app
from sprites_async.emulator._sprites import seed_sprites
from tests._emulator import RecordingSessions, RunningEmulator, probe_ws, serve

WARM = 0.2
COLD = 0.2


@pytest.fixture
def emulator_config(emulator_config: EmulatorConfig) -> EmulatorConfig:
    emulator_config.warm_after = WARM
    emulator_config.cold_after = COLD
    return emulator_config


async def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def probe(emu: RunningEmulator, name: str, sleep: float = 0.0) -> aiohttp.ClientResponse:
    async with emu.http.get(
        f"{emu.url}/v1/sprites/{name}/_probe?sleep={sleep}", headers=emu.auth
    ) as resp:
        await resp.read()
        return resp


async def test_unknown_sprite_on_the_sprite_layer_is_404_json(probe_emu: RunningEmulator) -> None:
    async with probe_emu.http.get(
        probe_emu.url + "/v1/sprites/ghost/_probe", headers=probe_emu.auth
    ) as resp:
        assert resp.status == 404
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await resp.json() == {"error": "sprite not found"}
        assert "Sprite-Version" not in resp.headers
        assert "x-request-id" in resp.headers


async def test_unknown_sprite_is_404_even_on_unknown_routes(probe_emu: RunningEmulator) -> None:
    status, body = await probe_emu.api("GET", "/v1/sprites/ghost/no/such/route")
    assert (status, body) == (404, {"error": "sprite not found"})


async def test_missing_sprite_500_on_the_sprite_layer(probe_emu: RunningEmulator) -> None:
    probe_emu.state.faults.missing_sprite_500 = True
    # Recorded: plain-HTTP exec and policy calls gave 500, checkpoints gave 404.
    assert await probe_emu.api("POST", "/v1/sprites/ghost/exec?cmd=ls") == (
        500,
        {"error": "failed to retrieve sprite"},
    )
    assert await probe_emu.api("GET", "/v1/sprites/ghost/policy/network") == (
        500,
        {"error": "failed to retrieve sprite"},
    )
    assert await probe_emu.api("GET", "/v1/sprites/ghost/checkpoints") == (
        404,
        {"error": "sprite not found"},
    )


async def test_sprite_layer_responses_carry_sprite_version(probe_emu: RunningEmulator) -> None:
    probe_emu.add_sprite("sv")
    resp = await probe(probe_emu, "sv")
    assert resp.status == 200
    assert resp.headers["Sprite-Version"] == probe_emu.state.config.sprite_version
    assert "x-request-id" not in resp.headers
    assert resp.headers["fly-request-id"].endswith("-local")
    # After an upgrade the sprite reports its new version.
    await probe_emu.api("POST", "/v1/sprites/sv/upgrade")
    await probe_emu.api("POST", "/v1/sprites/sv/upgrade")
    resp = await probe(probe_emu, "sv")
    assert resp.headers["Sprite-Version"] == probe_emu.state.sprites["sv"].version
    assert resp.headers["Sprite-Version"] != probe_emu.state.config.sprite_version


async def test_sprite_layer_websocket_upgrade_carries_sprite_version(
    probe_emu: RunningEmulator,
) -> None:
    probe_emu.add_sprite("wsv")
    seen: list[aiohttp.ClientResponse] = []

    async def on_end(
        session: aiohttp.ClientSession, ctx: object, params: aiohttp.TraceRequestEndParams
    ) -> None:
        seen.append(params.response)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    async with (
        aiohttp.ClientSession(trace_configs=[trace]) as http,
        http.ws_connect(probe_emu.url + "/v1/sprites/wsv/_probe/ws", headers=probe_emu.auth),
    ):
        (handshake,) = seen
        assert handshake.status == 101
        assert handshake.headers["Sprite-Version"] == probe_emu.state.config.sprite_version
        assert handshake.headers["fly-request-id"].endswith("-local")
        assert "x-request-id" not in handshake.headers


async def test_a_request_wakes_the_sprite_then_it_cools_down(probe_emu: RunningEmulator) -> None:
    sessions = RecordingSessions()
    probe_emu.state.sessions = sessions
    rec = probe_emu.add_sprite("life")
    assert rec.status == "cold"
    status, body = await probe_emu.api("GET", "/v1/sprites/life/_probe")
    assert (status, body) == (200, {"status": "running"})
    assert rec.last_running_at is not None
    # Idle: running until warm_after, then warm, then cold after cold_after more.
    assert rec.status == "running"
    await wait_for(lambda: rec.status == "warm")
    assert rec.last_warming_at is not None
    assert sessions.terminated == []
    await wait_for(lambda: rec.status == "cold")
    await wait_for(lambda: sessions.terminated == ["life"])
    # The API reports the transitions.
    _, body = await probe_emu.api("GET", "/v1/sprites/life")
    assert body["status"] == "cold"
    assert body["last_running_at"] is not None
    assert body["last_warming_at"] is not None


async def test_the_clock_waits_for_the_whole_request(probe_emu: RunningEmulator) -> None:
    rec = probe_emu.add_sprite("slow")
    task = asyncio.ensure_future(probe(probe_emu, "slow", sleep=WARM * 2))
    await wait_for(lambda: rec.status == "running")
    await asyncio.sleep(WARM * 1.5)
    assert rec.status == "running"  # still in flight, so never warm
    await task
    assert rec.status == "running"
    await wait_for(lambda: rec.status == "warm")


async def test_an_open_websocket_keeps_the_sprite_running(probe_emu: RunningEmulator) -> None:
    rec = probe_emu.add_sprite("ws")
    async with probe_emu.http.ws_connect(
        probe_emu.url + "/v1/sprites/ws/_probe/ws", headers=probe_emu.auth
    ) as ws:
        await ws.send_str("hi")
        assert (await ws.receive_str()) == "hi"
        await asyncio.sleep(WARM + COLD + 0.1)
        assert rec.status == "running"
        assert probe_emu.state.lifecycle.active("ws") == 1
    await wait_for(lambda: probe_emu.state.lifecycle.active("ws") == 0)
    await wait_for(lambda: rec.status == "warm")


async def test_activity_restarts_the_idle_clock(probe_emu: RunningEmulator) -> None:
    rec = probe_emu.add_sprite("again")
    await probe(probe_emu, "again")
    await wait_for(lambda: rec.status == "warm")
    await probe(probe_emu, "again")
    assert rec.status == "running"
    await asyncio.sleep(WARM * 0.5)
    assert rec.status == "running"
    await wait_for(lambda: rec.status == "warm")


async def test_management_calls_do_not_wake(probe_emu: RunningEmulator) -> None:
    rec = probe_emu.add_sprite("mgmt")
    for method, path in [
        ("GET", "/v1/sprites/mgmt"),
        ("GET", "/v1/sprites"),
        ("PUT", "/v1/sprites/mgmt"),
        ("POST", "/v1/sprites/mgmt/upgrade"),
    ]:
        status, _ = await probe_emu.api(method, path, json={} if method == "PUT" else None)
        assert status < 300
    assert rec.status == "cold"
    assert rec.last_running_at is None
    assert probe_emu.state.lifecycle.active("mgmt") == 0


async def test_state_activity_holds_the_sprite(probe_emu: RunningEmulator) -> None:
    rec = probe_emu.add_sprite("held")
    async with probe_emu.state.activity("held"):
        assert rec.status == "running"
        await asyncio.sleep(WARM + 0.1)
        assert rec.status == "running"
    await wait_for(lambda: rec.status == "warm")


async def test_wake_delay_applies_only_when_not_running(probe_emu: RunningEmulator) -> None:
    probe_emu.add_sprite("sleepy")
    probe_emu.state.faults.wake_delay = 2.0
    started = time.monotonic()
    async with probe_emu.state.activity("sleepy"):
        pass  # running now; the request below finds it running
    await probe(probe_emu, "sleepy")
    assert time.monotonic() - started < 1.5

    probe_emu.add_sprite("cold-one")
    started = time.monotonic()
    resp = await probe(probe_emu, "cold-one")
    assert resp.status == 200
    assert time.monotonic() - started >= 2.0


async def test_deleted_during_the_wake_delay_is_404(probe_emu: RunningEmulator) -> None:
    probe_emu.add_sprite("gone")
    probe_emu.state.faults.wake_delay = 0.3
    task = asyncio.ensure_future(probe_emu.api("GET", "/v1/sprites/gone/_probe"))
    await asyncio.sleep(0.1)
    assert (await probe_emu.api("DELETE", "/v1/sprites/gone"))[0] == 204
    assert await task == (404, {"error": "sprite not found"})


async def test_deleting_a_busy_sprite_is_clean(probe_emu: RunningEmulator) -> None:
    probe_emu.add_sprite("busy")
    task = asyncio.ensure_future(probe(probe_emu, "busy", sleep=0.2))
    await wait_for(lambda: probe_emu.state.lifecycle.active("busy") == 1)
    del probe_emu.state.sprites["busy"]  # as DELETE does first
    probe_emu.state.lifecycle.forget("busy")
    resp = await task
    assert resp.status == 200
    assert probe_emu.state.lifecycle.active("busy") == 0
    assert "busy" not in probe_emu.state.sprites


async def test_seeded_sprites_get_directories_on_first_use(probe_emu: RunningEmulator) -> None:
    (name,) = seed_sprites(probe_emu.state, 1, prefix="lazy-")
    root = probe_emu.state.sprite_root(name)
    assert not root.exists()
    await probe(probe_emu, name)
    assert (root / "home" / "sprite").is_dir()
    assert (root / "tmp").is_dir()


async def test_a_new_request_waits_for_going_cold_to_finish(probe_emu: RunningEmulator) -> None:
    release = asyncio.Event()
    order: list[str] = []

    class SlowSessions(RecordingSessions):
        async def terminate_all(self, sprite: str) -> None:
            order.append("terminate-start")
            await release.wait()
            order.append("terminate-end")

    probe_emu.state.sessions = SlowSessions()
    rec = probe_emu.add_sprite("race")
    await probe(probe_emu, "race")
    await wait_for(lambda: order == ["terminate-start"])
    assert rec.status == "cold"
    task = asyncio.ensure_future(probe(probe_emu, "race"))
    await asyncio.sleep(0.1)
    assert not task.done()
    release.set()
    await task
    order.append("request-done")
    assert order == ["terminate-start", "terminate-end", "request-done"]
    assert rec.status == "running"


async def test_shutdown_does_not_wait_for_open_websockets(
    emulator_config: EmulatorConfig,
) -> None:
    app = create_app(emulator_config)
    app.router.add_get("/v1/sprites/{name}/_probe/ws", probe_ws)
    async with aiohttp.ClientSession() as http:
        async with serve(emulator_config, app) as emu:
            emu.add_sprite("open")
            ws = await http.ws_connect(emu.url + "/v1/sprites/open/_probe/ws", headers=emu.auth)
            await ws.send_str("x")
            assert await ws.receive_str() == "x"
            started = time.monotonic()
        assert time.monotonic() - started < 10  # not the minute an open socket could hold it
        msg = await ws.receive(timeout=5)
        assert msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        )
        await ws.close()
    assert emu.state.lifecycle.active("open") == 0


async def test_http_exec_keeps_the_sprite_running_while_it_streams(
    emu: RunningEmulator,
) -> None:
    # Integration with the exec module: a real command, through the middleware.
    rec = emu.add_sprite("ex")

    async def run() -> bytes:
        async with emu.http.post(
            emu.url + "/v1/sprites/ex/exec?cmd=sleep&cmd=0.5", headers=emu.auth
        ) as resp:
            assert resp.status == 200
            return await resp.read()

    task = asyncio.ensure_future(run())
    await wait_for(lambda: rec.status == "running")
    await asyncio.sleep(WARM + 0.1)
    assert rec.status == "running"
    assert (await task).endswith(b"\x03\x00")
    await wait_for(lambda: rec.status == "warm")


async def test_going_cold_ends_detached_sessions(emu: RunningEmulator) -> None:
    # Integration with the exec session manager: a detached process that would
    # otherwise outlive its socket for 30 s is gone once the sprite goes cold.
    rec = emu.add_sprite("det")
    async with emu.http.ws_connect(
        emu.url + "/v1/sprites/det/exec?cmd=sleep&cmd=30&max_run_after_disconnect=30s",
        headers=emu.auth,
    ) as ws:
        while True:
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)
            if msg.type == aiohttp.WSMsgType.TEXT and '"session_info"' in msg.data:
                break
    async with emu.http.get(emu.url + "/v1/sprites/det/exec", headers=emu.auth) as resp:
        assert len((await resp.json())["sessions"]) == 1
    await wait_for(lambda: rec.status == "cold")
    async with emu.http.get(emu.url + "/v1/sprites/det/exec", headers=emu.auth) as resp:
        assert resp.status == 200
        assert (await resp.json())["sessions"] == []
