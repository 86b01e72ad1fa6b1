"""Sprites and their files survive a restart on the same state directory."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from sprites_async.emulator import Emulator


async def call(
    http: aiohttp.ClientSession, emu: Emulator, method: str, path: str, json: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {emu.token}"}
    async with http.request(method, emu.url + path, json=json, headers=headers) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def test_restart_keeps_sprites_and_files(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    async with aiohttp.ClientSession() as http:
        async with Emulator("o/1/t/s", state_dir=state_dir) as emu:
            _, alpha = await call(http, emu, "POST", "/v1/sprites", {"name": "alpha"})
            _, beta = await call(
                http, emu, "POST", "/v1/sprites", {"name": "beta", "labels": ["x"]}
            )
            await call(http, emu, "POST", "/v1/sprites", {"name": "gone"})
            _, alpha = await call(
                http, emu, "PUT", "/v1/sprites/alpha", {"url_settings": {"auth": "public"}}
            )
            await call(http, emu, "POST", "/v1/sprites/alpha/upgrade")
            _, alpha = await call(http, emu, "GET", "/v1/sprites/alpha")
            assert (await call(http, emu, "DELETE", "/v1/sprites/gone"))[0] == 204
            home = emu.state.sprite_root("alpha") / "home" / "sprite"
            (home / "notes.txt").write_text("remember me")
            emu.seed(3, prefix="seeded-")
            # A sprite that was running when the emulator stopped.
            emu.state.lifecycle.acquire("beta")
            assert emu.state.sprites["beta"].status == "running"
            # One that had just become idle: its last_running_at moved on release.
            emu.state.lifecycle.acquire("seeded-00000")
            await asyncio.sleep(0.01)
            emu.state.lifecycle.release("seeded-00000")
            released_at = emu.state.sprites["seeded-00000"].last_running_at

        async with Emulator("o/1/t/s", state_dir=state_dir) as emu:
            assert sorted(emu.state.sprites) == [
                "alpha",
                "beta",
                "seeded-00000",
                "seeded-00001",
                "seeded-00002",
            ]
            assert (await call(http, emu, "GET", "/v1/sprites/alpha")) == (200, alpha)
            status, beta_again = await call(http, emu, "GET", "/v1/sprites/beta")
            assert status == 200
            # No VM survives a restart.
            assert beta_again["status"] == "cold"
            assert beta_again["labels"] == ["x"]
            assert beta_again["id"] == beta["id"]
            assert beta_again["last_running_at"] is not None
            assert (await call(http, emu, "GET", "/v1/sprites/gone"))[0] == 404
            assert emu.state.sprites["seeded-00000"].last_running_at == released_at
            home = emu.state.sprite_root("alpha") / "home" / "sprite"
            assert (home / "notes.txt").read_text() == "remember me"
            _, page = await call(http, emu, "GET", "/v1/sprites")
            assert page["cold"] == 5
            # The restored sprites are fully usable.
            assert (await call(http, emu, "DELETE", "/v1/sprites/alpha"))[0] == 204
            assert not emu.state.sprite_dir("alpha").exists()

        async with Emulator("o/1/t/s", state_dir=state_dir) as emu:
            assert "alpha" not in emu.state.sprites
            assert len(emu.state.sprites) == 4
    assert state_dir.exists()  # a given directory is never removed


async def test_temporary_state_is_removed(tmp_path: Path) -> None:
    async with Emulator() as emu:
        state_dir = emu.state_dir
        emu.seed(1)
        assert state_dir.exists()
    assert not state_dir.exists()
