"""Bubblewrap isolation of exec commands (skipped when bwrap is missing)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sprites_async.emulator import EmulatorConfig
from sprites_async.emulator._procs import sandbox_available, use_sandbox
from tests._emulator import RunningEmulator
from tests.emulator.exec_helpers import SPRITE, assert_clean, private_fds, run_ws

pytestmark = pytest.mark.skipif(not sandbox_available(), reason="bwrap is not installed")


@pytest.fixture
def emulator_config(emulator_config: EmulatorConfig) -> EmulatorConfig:
    emulator_config.sandbox = "auto"
    return emulator_config


@pytest.fixture(autouse=True)
async def sprite(emu: RunningEmulator) -> AsyncIterator[str]:
    fds = private_fds()
    emu.add_sprite(SPRITE)
    yield SPRITE
    await assert_clean(emu, fds)


def test_auto_means_bwrap() -> None:
    assert use_sandbox("auto") is True
    assert use_sandbox("none") is False


async def test_filesystem_view(emu: RunningEmulator) -> None:
    root = emu.state.sprite_root(SPRITE)
    (root / "app").mkdir()
    (root / "app" / "data.txt").write_text("from the sprite root\n")
    script = (
        "ls /; cat /app/data.txt; echo made > /home/sprite/made.txt; echo t > /tmp/t.txt; "
        "touch /usr/x 2>/dev/null || echo usr-read-only; test -e /work || echo no-work"
    )
    run = await run_ws(emu, ["sh", "-c", script])
    lines = run.stdout.decode().splitlines()
    assert "from the sprite root" in lines
    assert "usr-read-only" in lines
    assert "no-work" in lines
    for name in ("app", "bin", "dev", "etc", "home", "proc", "tmp", "usr"):
        assert name in lines
    assert (root / "home" / "sprite" / "made.txt").read_text() == "made\n"
    assert (root / "tmp" / "t.txt").read_text() == "t\n"
    assert run.exit_frame == 0


async def test_pid_namespace(emu: RunningEmulator) -> None:
    run = await run_ws(emu, ["sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'"])
    pid, count = run.stdout.decode().split()
    assert int(pid) < 10
    assert int(count) < 10


async def test_python_runs_inside(emu: RunningEmulator) -> None:
    run = await run_ws(emu, ["python3", "-c", "import os; print(os.getcwd())"])
    assert run.stdout == b"/home/sprite\n"
