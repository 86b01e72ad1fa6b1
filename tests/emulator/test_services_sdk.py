"""The SDK's ``sprite.services`` against the emulator's services (both sides real)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sprites_async import Sprite, SpritesClient
from sprites_async._services import ServiceError, ServiceNotFoundError, ServicesResource
from sprites_async.emulator import EmulatorConfig, _services, create_app
from sprites_async.emulator._state import STATE_KEY
from tests._emulator import serve

NAME = "sdkbox"
LOOP = "while :; do sleep 0.05; done"


@pytest.fixture
async def services(emulator_config: EmulatorConfig) -> AsyncIterator[ServicesResource]:
    emulator_config.extra["services_restart_backoff"] = 30.0
    app = create_app(emulator_config)
    _services.setup(app, app[STATE_KEY])
    async with serve(emulator_config, app) as emu:
        emu.add_sprite(NAME)
        async with SpritesClient(emu.token, base_url=emu.url) as client:
            sprite: Sprite = client.sprite(NAME)
            # ``sprite.services`` once the SDK wires it; the resource itself meanwhile.
            yield getattr(sprite, "services", None) or ServicesResource(sprite)


async def test_sdk_round_trip(services: ServicesResource) -> None:
    result = await services.create(
        "web", cmd="sh", args=["-c", f"echo ready; {LOOP}"], http_port=8080, duration=0.3
    )
    assert result.output == [("stdout", "ready")]
    assert result.log_files["combined"] == "/.sprite/logs/services/web.log"

    (listed,) = await services.list()
    assert listed.name == "web"
    assert listed.http_port == 8080
    assert listed.state is not None
    assert listed.state.status == "running"
    assert listed.state.started_at is not None
    assert listed.state.restart_count == 0

    await services.signal("web", "HUP")
    stopped = await services.stop("web", timeout=1.0)
    assert stopped.exit_code is not None
    assert (await services.get("web")).status == "stopped"

    events = [e async for e in services.logs("web", lines=10)]
    assert [e.type for e in events][:1] == ["stdout"]

    with pytest.raises(ServiceError) as info:
        await services.create("crash", cmd="sh", args=["-c", "exit 4"], duration=1.0)
    assert info.value.exit_code == 4

    await services.delete("web")
    with pytest.raises(ServiceNotFoundError):
        await services.get("web")


async def test_sdk_restart_and_start(services: ServicesResource) -> None:
    await services.create("db", cmd="sh", args=["-c", LOOP], duration=0.1)
    restarted = await services.restart("db", duration=0.1)
    assert restarted.exit_code == 128 + 15
    await services.stop("db", timeout=0)
    await services.start("db", duration=0.1)
    assert (await services.get("db")).status == "running"
