"""Authentication and the headers every response carries."""

from __future__ import annotations

import re

import aiohttp
import pytest

from tests._emulator import RunningEmulator

FLY_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}-local$")
REQUEST_ID = re.compile(r"^[A-Za-z0-9]{20}$")


async def test_requests_without_token_are_refused(emu: RunningEmulator) -> None:
    async with emu.http.get(emu.url + "/v1/sprites") as resp:
        assert resp.status == 401
        assert await resp.json() == {"error": "authentication failed"}


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        "Basic test-org/1/tok/secret",
        "test-org/1/tok/secret",
        "Bearer test-org/1/tok/secret-and-more",
        "Bearer test-org/1/tok/secre",
    ],
)
async def test_bad_credentials_are_refused_everywhere(
    probe_emu: RunningEmulator, header: str | None
) -> None:
    probe_emu.add_sprite("s")
    headers = {} if header is None else {"Authorization": header}
    for method, path in [
        ("GET", "/v1/sprites"),
        ("POST", "/v1/sprites"),
        ("GET", "/v1/sprites/s"),
        ("DELETE", "/v1/sprites/s"),
        ("GET", "/v1/sprites/s/_probe"),
        ("GET", "/v1/sprites/s/no-such-route"),
        ("GET", "/nowhere"),
    ]:
        async with probe_emu.http.request(method, probe_emu.url + path, headers=headers) as resp:
            assert resp.status == 401, (method, path)
            assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
            assert await resp.json() == {"error": "authentication failed"}
            assert REQUEST_ID.match(resp.headers["x-request-id"])
            assert "Sprite-Version" not in resp.headers
    assert "s" in probe_emu.state.sprites
    assert probe_emu.state.sprites["s"].status == "cold"  # refused requests do not wake


async def test_websocket_upgrade_without_token_is_401_before_upgrading(
    probe_emu: RunningEmulator,
) -> None:
    probe_emu.add_sprite("s")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await probe_emu.http.ws_connect(
            probe_emu.url + "/v1/sprites/s/_probe/ws", headers={"Authorization": "Bearer no"}
        )
    assert info.value.status == 401


async def test_the_scheme_is_case_insensitive(emu: RunningEmulator) -> None:
    headers = {"Authorization": f"bearer {emu.token}"}
    async with emu.http.get(emu.url + "/v1/sprites", headers=headers) as resp:
        assert resp.status == 200


async def test_api_layer_headers(emu: RunningEmulator) -> None:
    ids = set()
    for _ in range(3):
        async with emu.http.get(emu.url + "/v1/sprites", headers=emu.auth) as resp:
            assert resp.status == 200
            assert REQUEST_ID.match(resp.headers["x-request-id"])
            assert FLY_ID.match(resp.headers["fly-request-id"])
            assert "Sprite-Version" not in resp.headers
            ids.add(resp.headers["x-request-id"])
    assert len(ids) == 3


async def test_unknown_routes_are_404_with_headers(emu: RunningEmulator) -> None:
    async with emu.http.get(emu.url + "/v2/whatever", headers=emu.auth) as resp:
        assert resp.status == 404
        assert FLY_ID.match(resp.headers["fly-request-id"])


async def test_health_has_a_fly_request_id(emu: RunningEmulator) -> None:
    async with emu.http.get(emu.url + "/_emulator/health") as resp:
        assert resp.status == 200
        assert FLY_ID.match(resp.headers["fly-request-id"])
