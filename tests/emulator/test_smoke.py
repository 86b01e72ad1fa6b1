from __future__ import annotations

from tests.emulator.conftest import RunningEmulator


async def test_requests_without_token_are_refused(emu: RunningEmulator) -> None:
    async with emu.http.get(emu.url + "/v1/sprites") as resp:
        assert resp.status == 401
        assert await resp.json() == {"error": "authentication failed"}
