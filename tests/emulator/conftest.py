"""Fixtures for emulator tests: a real emulator on loopback, one per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from sprites_async.emulator import EmulatorConfig, create_app
from sprites_async.emulator._state import STATE_KEY, EmulatorState, SpriteRecord


@dataclass
class RunningEmulator:
    """A started emulator app plus what tests need to talk to it."""

    url: str
    token: str
    state: EmulatorState
    http: aiohttp.ClientSession

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def add_sprite(self, name: str) -> SpriteRecord:
        """Insert a sprite directly, bypassing the API (for modules' own tests)."""
        now = datetime.now(timezone.utc)
        rec = SpriteRecord(
            id=f"sprite-{uuid.uuid4()}",
            name=name,
            organization=self.state.config.org,
            status="cold",
            url=f"https://{name}-local.sprites.app",
            url_auth="sprite",
            created_at=now,
            updated_at=now,
        )
        self.state.sprites[name] = rec
        root = self.state.sprite_root(name)
        (root / "home" / "sprite").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        return rec


@pytest.fixture
def emulator_config(tmp_path: Path) -> EmulatorConfig:
    return EmulatorConfig(
        token="test-org/1/tok/secret",
        state_dir=tmp_path / "state",
        exit_linger=0.0,
        warm_after=0.5,
        cold_after=2.0,
    )


@pytest.fixture
async def emu(emulator_config: EmulatorConfig) -> AsyncIterator[RunningEmulator]:
    app = create_app(emulator_config)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    http = aiohttp.ClientSession()
    try:
        yield RunningEmulator(
            url=str(server.make_url("")).rstrip("/"),
            token=emulator_config.token,
            state=app[STATE_KEY],
            http=http,
        )
    finally:
        await http.close()
        await server.close()


MakeSprite = Callable[[str], SpriteRecord]
