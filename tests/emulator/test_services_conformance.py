"""Conformance: the official sprites-py SDK drives the emulator's services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from sprites_async.emulator import EmulatorConfig, _services, create_app
from sprites_async.emulator._state import STATE_KEY
from tests._emulator import serve

sprites = pytest.importorskip("sprites", reason="install the 'conformance' extra (sprites-py)")
sprites_exceptions = pytest.importorskip("sprites.exceptions")

pytestmark = pytest.mark.conformance

NAME = "confsvc"
LOOP = "while :; do sleep 0.05; done"


@pytest.fixture
async def official(emulator_config: EmulatorConfig) -> AsyncIterator[Any]:
    emulator_config.extra["services_restart_backoff"] = 30.0
    app = create_app(emulator_config)
    _services.setup(app, app[STATE_KEY])  # no-op once create_app wires the module
    async with serve(emulator_config, app) as emu:
        emu.add_sprite(NAME)
        client = sprites.AsyncSpritesClient(emu.token, base_url=emu.url, timeout=30)
        try:
            yield client.sprite(NAME)
        finally:
            await client.aclose()


async def test_services(official: Any) -> None:
    sprite = official
    # sprites-py formats durations as "0.3s" (a float), which the server parses.
    stream = await sprite.create_service(
        "db", "sh", ["-c", f"echo db up; {LOOP}"], duration=0.3, env={"A": "1"}
    )
    events = list(stream)
    assert [e.type for e in events] == ["started", "stdout", "complete"]
    assert events[1].data == "db up"
    assert all(isinstance(e.timestamp, int) for e in events)
    assert events[-1].log_files["combined"] == "/.sprite/logs/services/db.log"

    await sprite.create_service("web", "sh", ["-c", LOOP], needs=["db"], http_port=8080)
    listed = {s.name: s for s in await sprite.list_services()}
    assert set(listed) == {"db", "web"}
    assert listed["web"].needs == ["db"]
    assert listed["web"].http_port == 8080
    assert listed["db"].env == {"A": "1"}
    assert listed["web"].state.status == "running"
    assert listed["web"].state.started_at is not None

    await sprite.signal_service("web", "SIGHUP")
    stopped = list(await sprite.stop_service("web", timeout=1.0))
    stop_types = [e.type for e in stopped]
    assert stop_types[0] == "stopping"
    assert stop_types[-2:] == ["stopped", "complete"]
    assert (await sprite.get_service("web")).state.status == "stopped"
    started = list(await sprite.start_service("web", duration=0.1))
    assert [e.type for e in started] == ["started", "complete"]

    with pytest.raises(sprites_exceptions.APIError) as info:
        await sprite.create_service("other", "sleep", ["30"], http_port=9090)
    assert info.value.status_code == 409
    with pytest.raises(sprites_exceptions.APIError) as info:
        await sprite.delete_service("db")
    assert info.value.status_code == 409
    await sprite.delete_service("web")
    await sprite.delete_service("db")
    assert await sprite.list_services() == []
