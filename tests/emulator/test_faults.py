"""Fault injection and the admin endpoints."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from tests._emulator import RunningEmulator


async def set_faults(emu: RunningEmulator, **values: Any) -> dict[str, Any]:
    status, body = await emu.api("POST", "/_emulator/faults", json=values)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


# -- admin ---------------------------------------------------------------------


async def test_admin_get_set_and_reset(emu: RunningEmulator) -> None:
    status, body = await emu.api("GET", "/_emulator/faults")
    assert status == 200
    assert body["latency"] == 0.0
    assert body["error_methods"] is None

    body = await set_faults(emu, error_rate=0.5, error_methods=["get", "put"], latency=0)
    assert body["error_rate"] == 0.5
    assert body["error_methods"] == ["GET", "PUT"]
    assert emu.state.faults.error_methods == ("GET", "PUT")
    assert emu.state.faults.error_rate == 0.5

    faults = emu.state.faults
    status, body = await emu.api("POST", "/_emulator/faults/reset")
    assert status == 200
    assert body["error_rate"] == 0.0
    assert body["error_methods"] is None
    assert emu.state.faults is faults  # reset in place: holders keep a live object


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"no_such_knob": 1}, "unknown fault: no_such_knob"),
        ({"latency": "slow"}, "latency: Expected `float`, got `str`"),
        ({"error_count": True}, "error_count: Expected `int | null`, got `bool`"),
        ({"error_rate": 2}, "error_rate: must be between 0 and 1"),
        ({"latency": -1}, "latency: must not be negative"),
        ({"error_status": 200}, "error_status: must be an HTTP error status (400-599)"),
    ],
)
async def test_admin_rejects_bad_values_and_changes_nothing(
    emu: RunningEmulator, values: dict[str, Any], message: str
) -> None:
    status, body = await emu.api("POST", "/_emulator/faults", json={"retry_after": 7, **values})
    assert status == 400
    assert body == {"errors": [message]}
    assert emu.state.faults.retry_after == 1


async def test_admin_rejects_a_bad_regex(emu: RunningEmulator) -> None:
    status, body = await emu.api("POST", "/_emulator/faults", json={"error_path": "(("})
    assert status == 400
    assert body["errors"][0].startswith("error_path: invalid regex")


@pytest.mark.parametrize("payload", [b"[]", b"{", b"3"])
async def test_admin_rejects_non_objects(emu: RunningEmulator, payload: bytes) -> None:
    async with emu.http.post(emu.url + "/_emulator/faults", data=payload, headers=emu.auth) as resp:
        assert resp.status == 400


async def test_admin_needs_the_token_but_health_does_not(emu: RunningEmulator) -> None:
    for method, path in [
        ("GET", "/_emulator/faults"),
        ("POST", "/_emulator/faults"),
        ("POST", "/_emulator/faults/reset"),
        ("POST", "/_emulator/seed"),
    ]:
        async with emu.http.request(method, emu.url + path, json={}) as resp:
            assert resp.status == 401, path
    async with emu.http.get(emu.url + "/_emulator/health") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == "ok"
    assert body["sprites"] == 0


async def test_admin_is_exempt_from_faults(emu: RunningEmulator) -> None:
    emu.state.faults.error_rate = 1.0
    emu.state.faults.reset_count = 5
    await set_faults(emu, retry_after=3)
    status, _ = await emu.api("POST", "/_emulator/faults/reset")
    assert status == 200
    assert (await emu.api("GET", "/v1/sprites"))[0] == 200


async def test_admin_seed(emu: RunningEmulator) -> None:
    status, body = await emu.api("POST", "/_emulator/seed", json={"count": 3, "prefix": "b-"})
    assert (status, body) == (200, {"created": 3})
    assert sorted(emu.state.sprites) == ["b-00000", "b-00001", "b-00002"]
    status, body = await emu.api("POST", "/_emulator/seed", json={"count": 3, "prefix": "b-"})
    assert (status, body) == (200, {"created": 0})
    for bad in ({"count": -1}, {"count": "3"}, {"count": 1, "prefix": "UP"}, {}):
        status, _ = await emu.api("POST", "/_emulator/seed", json=bad)
        assert status == 400, bad


# -- injected errors -------------------------------------------------------------


async def test_latency(emu: RunningEmulator) -> None:
    emu.state.faults.latency = 0.2
    started = time.monotonic()
    assert (await emu.api("GET", "/v1/sprites"))[0] == 200
    assert time.monotonic() - started >= 0.2


async def test_error_count_injects_exactly_n_errors(emu: RunningEmulator) -> None:
    await set_faults(emu, error_count=2, error_status=503, retry_after=4)
    for _ in range(2):
        async with emu.http.get(emu.url + "/v1/sprites", headers=emu.auth) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "4"
            assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
            body = await resp.json()
            assert body["error"] == "service unavailable"
    assert (await emu.api("GET", "/_emulator/faults"))[1]["error_count"] == 0
    assert (await emu.api("GET", "/v1/sprites"))[0] == 200


async def test_error_count_wins_over_error_rate(emu: RunningEmulator) -> None:
    await set_faults(emu, error_count=0, error_rate=1.0)
    assert (await emu.api("GET", "/v1/sprites"))[0] == 200


async def test_error_rate_one_always_fails_and_zero_never(emu: RunningEmulator) -> None:
    await set_faults(emu, error_rate=1.0, error_status=500)
    for _ in range(3):
        assert (await emu.api("GET", "/v1/sprites"))[0] == 500
    await set_faults(emu, error_rate=0.0)
    for _ in range(3):
        assert (await emu.api("GET", "/v1/sprites"))[0] == 200


async def test_error_path_and_methods_filter(emu: RunningEmulator) -> None:
    emu.add_sprite("filt")
    await set_faults(emu, error_rate=1.0, error_status=502, error_path=r"^/v1/sprites/[^/]+$")
    assert (await emu.api("GET", "/v1/sprites"))[0] == 200
    assert (await emu.api("GET", "/v1/sprites/filt"))[0] == 502
    await set_faults(emu, error_methods=["DELETE"])
    assert (await emu.api("GET", "/v1/sprites/filt"))[0] == 200
    assert (await emu.api("DELETE", "/v1/sprites/filt"))[0] == 502
    assert "filt" in emu.state.sprites


async def test_no_retry_after_on_other_statuses(emu: RunningEmulator) -> None:
    await set_faults(emu, error_count=1, error_status=500)
    async with emu.http.get(emu.url + "/v1/sprites", headers=emu.auth) as resp:
        assert resp.status == 500
        assert "Retry-After" not in resp.headers


async def test_sprite_layer_errors_are_text(probe_emu: RunningEmulator) -> None:
    probe_emu.add_sprite("txt")
    await set_faults(probe_emu, error_count=1, error_status=503)
    async with probe_emu.http.get(
        probe_emu.url + "/v1/sprites/txt/_probe", headers=probe_emu.auth
    ) as resp:
        assert resp.status == 503
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert (await resp.text()).endswith("\n")
        assert resp.headers["Retry-After"] == "1"
        assert "Sprite-Version" in resp.headers
    # The injected error never reached the sprite, so it did not wake.
    assert probe_emu.state.sprites["txt"].status == "cold"


async def test_rate_limit_count(emu: RunningEmulator) -> None:
    await set_faults(emu, rate_limit_count=1, retry_after=9)
    async with emu.http.post(
        emu.url + "/v1/sprites", json={"name": "rl"}, headers=emu.auth
    ) as resp:
        assert resp.status == 429
        body = await resp.json()
        assert resp.headers["Retry-After"] == "9"
        assert resp.headers["X-RateLimit-Remaining"] == "0"
        assert "X-RateLimit-Limit" in resp.headers
        assert int(resp.headers["X-RateLimit-Reset"]) > time.time()
    assert body["error"] == "sprite_creation_rate_limited"
    assert body["retry_after_seconds"] == 9
    assert "rl" not in emu.state.sprites
    assert (await emu.api("POST", "/v1/sprites", json={"name": "rl"}))[0] == 201


async def test_rate_limit_rate_and_error_status_429(emu: RunningEmulator) -> None:
    await set_faults(emu, rate_limit_rate=1.0)
    status, body = await emu.api("GET", "/v1/sprites")
    assert status == 429
    assert body["error"] == "rate_limited"
    await set_faults(emu, rate_limit_rate=0.0, error_count=1, error_status=429)
    status, body = await emu.api("GET", "/v1/sprites")
    assert status == 429
    assert body["retry_after_seconds"] == 1


async def test_reset_drops_the_connection_without_a_response(emu: RunningEmulator) -> None:
    await set_faults(emu, reset_count=1, error_path="^/v1/sprites$")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.post(
                emu.url + "/v1/sprites", json={"name": "rs"}, headers=emu.auth
            ) as resp:
                await resp.read()
    assert emu.state.faults.reset_count == 0
    assert "rs" not in emu.state.sprites
    assert (await emu.api("GET", "/v1/sprites"))[0] == 200


async def test_reset_of_idempotent_requests(emu: RunningEmulator) -> None:
    # aiohttp itself retries an idempotent request once after a dropped
    # connection, so one reset is invisible to a GET and two are not.
    await set_faults(emu, reset_count=1)
    assert (await emu.api("GET", "/v1/sprites"))[0] == 200
    assert emu.state.faults.reset_count == 0
    await set_faults(emu, reset_count=2)
    with pytest.raises(aiohttp.ClientConnectionError):
        await emu.api("GET", "/v1/sprites")
    assert emu.state.faults.reset_count == 0


async def test_reset_applies_to_websocket_handshakes(probe_emu: RunningEmulator) -> None:
    probe_emu.add_sprite("wsr")
    probe_emu.state.faults.reset_count = 2  # aiohttp retries the GET handshake once
    with pytest.raises(aiohttp.ClientConnectionError):
        await probe_emu.http.ws_connect(
            probe_emu.url + "/v1/sprites/wsr/_probe/ws", headers=probe_emu.auth
        )
    assert probe_emu.state.faults.reset_count == 0
    async with probe_emu.http.ws_connect(
        probe_emu.url + "/v1/sprites/wsr/_probe/ws", headers=probe_emu.auth
    ) as ws:
        await ws.send_str("ok")
        assert await ws.receive_str() == "ok"
