"""Warm sprites are frozen, not killed: a detached session stops ticking and goes on after wake.

Three ways to run: plain processes (``none``: SIGSTOP/SIGCONT), the sandbox
with cgroups (the cgroup freezer, when this machine lets the emulator make
cgroups) and the sandbox without limits, hence without cgroups (signals again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sprites_async.emulator import EmulatorConfig
from sprites_async.emulator._procs import (
    descendants,
    is_running,
    proc_table,
    sandbox_available,
)
from sprites_async.emulator._sandbox import existing_jail
from sprites_async.emulator._supervisor import supervisor_for
from tests._emulator import RunningEmulator, serve
from tests.emulator.exec_helpers import SPRITE, list_sessions, next_text, open_ws, run_ws

TICKER = ["sh", "-c", "while :; do date +%s%N >> ticks; sleep 0.05; done"]


@pytest.fixture(params=["none", "bwrap-cgroups", "bwrap-signals"])
def emulator_config(
    emulator_config: EmulatorConfig, request: pytest.FixtureRequest
) -> EmulatorConfig:
    mode = request.param
    if mode != "none" and not sandbox_available():
        pytest.skip("bwrap is not installed")
    emulator_config.sandbox = "none" if mode == "none" else "bwrap"
    if mode == "bwrap-signals":
        emulator_config.max_processes = None
        emulator_config.memory_limit = None
    emulator_config.warm_after = 0.5
    emulator_config.cold_after = 60.0
    return emulator_config


@pytest.fixture
async def sprite(emu: RunningEmulator) -> AsyncIterator[Path]:
    emu.add_sprite(SPRITE)
    yield emu.state.sprite_root(SPRITE) / "home" / "sprite" / "ticks"
    await emu.state.sessions.terminate_all(SPRITE)


async def start_ticker(emu: RunningEmulator) -> str:
    async with open_ws(emu, cmd=TICKER, max_run_after_disconnect="600s") as ws:
        while (info := await next_text(ws, timeout=10))["type"] != "session_info":
            pass
    session_id: str = info["session_id"]
    return session_id


def lines(ticks: Path) -> int:
    try:
        return ticks.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def proc_state(pid: int) -> str:
    """The one-letter state of ``/proc/<pid>/stat`` (``T``: stopped by a signal)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return ""  # gone meanwhile
    return raw[raw.rfind(b")") + 2 : raw.rfind(b")") + 3].decode()


async def assert_frozen(emu: RunningEmulator, pids: list[int], mode: str) -> None:
    """Every one of ``pids`` is frozen the way ``mode`` freezes (freezer file or state T).

    Eventually: a child forked in the instant of the freeze may finish its
    step (then it is a zombie), and a v1 freezer passes through FREEZING.
    """
    assert pids
    if mode == "bwrap-cgroups":
        jail = existing_jail(emu.state)
        if jail is None or not jail.cgroups.can_freeze:
            pytest.skip("the emulator cannot make a freezer cgroup here")
        freezer = jail.cgroups._freezer(SPRITE)
        assert freezer is not None
        path, frozen, _ = freezer
        await until(lambda: path.read_text().strip() == frozen, timeout=5)
        procs = {int(p) for p in (path.parent / "cgroup.procs").read_text().split()}
        # A zombie (a tick's ``sleep`` that just ended) has left its cgroup.
        assert {pid for pid in pids if is_running(pid)} <= procs
    else:

        def all_stopped() -> bool:
            return all(proc_state(pid) == "T" for pid in pids if is_running(pid))

        await until(all_stopped, timeout=5)
        assert any(is_running(pid) for pid in pids)


def mode_of(request: pytest.FixtureRequest) -> str:
    mode: str = request.node.callspec.params["emulator_config"]
    return mode


async def test_warm_freezes_and_wake_resumes_the_same_session(
    emu: RunningEmulator, sprite: Path, request: pytest.FixtureRequest
) -> None:
    session_id = await start_ticker(emu)
    await until(lambda: lines(sprite) >= 3)
    await until(lambda: emu.state.lifecycle.frozen(SPRITE))
    assert emu.state.sprites[SPRITE].status == "warm"
    members = [int(session_id), *descendants(proc_table(), int(session_id))]
    await assert_frozen(emu, members, mode_of(request))
    # A loop iteration under way when the freeze came may still land.
    await asyncio.sleep(0.3)
    frozen_at = lines(sprite)
    await asyncio.sleep(1.5)  # 30 ticks' worth
    assert lines(sprite) - frozen_at <= 1
    assert emu.state.lifecycle.frozen(SPRITE)

    run = await run_ws(emu, ["true"])  # any sprite-layer call wakes it
    assert run.exit_text == 0
    await until(lambda: lines(sprite) >= frozen_at + 5)
    assert [s["id"] for s in await list_sessions(emu)] == [session_id]
    assert is_running(int(session_id))
    assert "T" not in {proc_state(pid) for pid in members if is_running(pid)}


async def test_warm_freezes_services_too_and_they_resume(
    emu: RunningEmulator, sprite: Path, request: pytest.FixtureRequest
) -> None:
    url = f"{emu.url}/v1/sprites/{SPRITE}/services/tick?duration=100ms"
    body = {"cmd": TICKER[0], "args": TICKER[1:]}
    async with emu.http.put(url, json=body, headers=emu.auth) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
    await until(lambda: lines(sprite) >= 3)
    rt = supervisor_for(emu.state).get(SPRITE, "tick")
    pid = rt.pid
    assert pid is not None
    await until(lambda: emu.state.lifecycle.frozen(SPRITE))
    await assert_frozen(emu, [pid, *descendants(proc_table(), pid)], mode_of(request))
    await asyncio.sleep(0.3)
    frozen_at = lines(sprite)
    await asyncio.sleep(1.0)
    assert lines(sprite) - frozen_at <= 1

    run = await run_ws(emu, ["true"])
    assert run.exit_text == 0
    await until(lambda: lines(sprite) >= frozen_at + 5)
    assert rt.pid == pid  # the same process went on: resumed, not restarted
    assert rt.restart_count == 0


async def test_cold_ends_the_frozen_session(
    emulator_config: EmulatorConfig, sprite: Path, emu: RunningEmulator
) -> None:
    emu.state.config.cold_after = 0.5
    session_id = await start_ticker(emu)
    await until(lambda: lines(sprite) >= 3)
    await until(lambda: emu.state.sprites[SPRITE].status == "cold")
    await until(lambda: not is_running(int(session_id)))
    stopped_at = lines(sprite)
    await asyncio.sleep(0.5)
    assert lines(sprite) == stopped_at
    assert await list_sessions(emu) == []


async def test_deleting_a_warm_sprite_ends_its_frozen_processes(
    emu: RunningEmulator, sprite: Path
) -> None:
    session_id = await start_ticker(emu)
    await until(lambda: emu.state.lifecycle.frozen(SPRITE))
    status, _ = await emu.api("DELETE", f"/v1/sprites/{SPRITE}")
    assert status == 204
    await until(lambda: not is_running(int(session_id)), timeout=5)
    assert not emu.state.lifecycle.frozen(SPRITE)


async def test_shutdown_ends_frozen_processes(
    emulator_config: EmulatorConfig, tmp_path: Path
) -> None:
    emulator_config.state_dir = tmp_path / "other"
    async with serve(emulator_config) as emu:
        emu.add_sprite(SPRITE)
        session_id = await start_ticker(emu)
        await until(lambda: emu.state.lifecycle.frozen(SPRITE))
        started = time.monotonic()
    # Without the thaw, ending the sessions waits a minute for frozen processes.
    assert time.monotonic() - started < 20
    await until(lambda: not is_running(int(session_id)), timeout=5)
