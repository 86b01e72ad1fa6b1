"""Fixtures for the emulator's own tests: a real emulator on loopback, one per test.

``emu`` here overrides the one of tests/conftest.py: it starts with no sprite, from
``emulator_config`` (short linger and warm/cold timers), which a module may
override to change the configuration. The helpers (``RunningEmulator``,
``serve``) live in tests/_emulator.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sprites_async.emulator import EmulatorConfig, create_app
from tests._emulator import EMU_TOKEN, RunningEmulator, probe, probe_ws, serve


@pytest.fixture
def emulator_config(tmp_path: Path) -> EmulatorConfig:
    return EmulatorConfig(
        token=EMU_TOKEN,
        state_dir=tmp_path / "state",
        exit_linger=0.0,
        warm_after=0.5,
        cold_after=2.0,
    )


@pytest.fixture
async def emu(emulator_config: EmulatorConfig) -> AsyncIterator[RunningEmulator]:
    async with serve(emulator_config) as running:
        yield running


@pytest.fixture
async def probe_emu(emulator_config: EmulatorConfig) -> AsyncIterator[RunningEmulator]:
    """``emu`` plus test-only sprite-layer routes ``/_probe`` and ``/_probe/ws``.

    They exercise the sprite-layer middleware without depending on the exec,
    fs or checkpoint modules.
    """
    app = create_app(emulator_config)
    app.router.add_get("/v1/sprites/{name}/_probe", probe)
    app.router.add_get("/v1/sprites/{name}/_probe/ws", probe_ws)
    async with serve(emulator_config, app) as running:
        yield running
