"""Cold stops every process of a sprite; the wake that follows brings its services back (11.5).

Run plain (``none``) and sandboxed (``bwrap``) when bubblewrap is usable.
Idle windows are short so each test takes seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from sprites_async.emulator import EmulatorConfig
from sprites_async.emulator._procs import descendants, is_running, proc_table, sandbox_available
from sprites_async.emulator._supervisor import supervisor_for
from tests._emulator import RunningEmulator, serve
from tests.emulator.exec_helpers import SPRITE, next_text, open_ws

SERVER = (
    "mkdir -p /tmp/www && echo $$ > /tmp/www/pid.txt && cd /tmp/www && "
    "exec python3 -m http.server --bind 127.0.0.1 8000"
)
"""A web server on 8000 whose ``/pid.txt`` names the process that serves it."""


@pytest.fixture(params=["none", "bwrap"])
def emulator_config(
    emulator_config: EmulatorConfig, request: pytest.FixtureRequest
) -> EmulatorConfig:
    if request.param == "bwrap" and not sandbox_available():
        pytest.skip("bwrap is not installed")
    emulator_config.sandbox = request.param
    emulator_config.warm_after = 0.3
    emulator_config.cold_after = 0.7
    return emulator_config


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def create(emu: RunningEmulator) -> str:
    status, doc = await emu.api("POST", "/v1/sprites", json={"name": SPRITE})
    assert status == 201, doc
    url: str = doc["url"]
    return url


async def put_service(emu: RunningEmulator, svc: str, body: dict[str, Any]) -> None:
    url = f"{emu.url}/v1/sprites/{SPRITE}/services/{svc}?duration=100ms"
    async with emu.http.put(url, json=body, headers=emu.auth) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()


async def fetch(emu: RunningEmulator, url: str) -> tuple[int, str]:
    async with emu.http.get(url, headers=emu.auth, timeout=aiohttp.ClientTimeout(total=30)) as resp:
        return resp.status, await resp.text()


async def served_pid(emu: RunningEmulator, url: str) -> str:
    """The server's pid as it sees it, once it answers (it may still be binding)."""
    deadline = time.monotonic() + 30
    while True:
        status, body = await fetch(emu, url + "/pid.txt")
        if status == 200 or time.monotonic() > deadline:
            assert status == 200, body
            return body.strip()
        await asyncio.sleep(0.1)


def tree(pid: int) -> list[int]:
    """``pid`` and every process below it (the sandbox's, the server's)."""
    return [pid, *descendants(proc_table(), pid)]


async def test_cold_kills_the_service_and_the_wake_restarts_it(emu: RunningEmulator) -> None:
    url = await create(emu)
    await put_service(emu, "site", {"cmd": "sh", "args": ["-c", SERVER], "http_port": 8000})
    first = await served_pid(emu, url)
    rt = supervisor_for(emu.state).get(SPRITE, "site")
    assert rt.pid is not None
    before = tree(rt.pid)
    assert len(before) >= 1

    rec = emu.state.sprites[SPRITE]
    await until(lambda: rec.status == "cold")
    # Truly gone: not frozen, not a zombie, nothing of it left.
    await until(lambda: not any(is_running(pid) for pid in before), timeout=10)
    # The supervisor notes the exit once its reaper has run, a moment after the kill.
    await until(lambda: rt.proc is None and rt.status == "stopped", timeout=10)
    assert not emu.state.lifecycle.frozen(SPRITE)

    # Any sprite-layer request wakes it; the services are back before it is answered.
    status, listing = await emu.api("GET", f"/v1/sprites/{SPRITE}/services")
    assert status == 200
    assert [s["state"]["status"] for s in listing] == ["running"]
    assert rt.pid is not None and rt.pid not in before
    second = await served_pid(emu, url)
    if emu.state.config.sandbox == "none":
        assert second != first  # a new process (in a PID namespace both may be the same)
    assert rt.restart_count == 0  # a boot, not a crash restart


async def test_a_service_the_user_stopped_stays_stopped_after_the_wake(
    emu: RunningEmulator,
) -> None:
    await create(emu)
    await put_service(emu, "kept", {"cmd": "sleep", "args": ["600"]})
    await put_service(emu, "held", {"cmd": "sleep", "args": ["600"]})
    status, _ = await emu.api("POST", f"/v1/sprites/{SPRITE}/services/held/stop")
    assert status == 200
    rec = emu.state.sprites[SPRITE]
    await until(lambda: rec.status == "cold")
    sup = supervisor_for(emu.state)
    await until(lambda: sup.get(SPRITE, "kept").proc is None)
    status, listing = await emu.api("GET", f"/v1/sprites/{SPRITE}/services")
    assert status == 200
    assert {s["name"]: s["state"]["status"] for s in listing} == {
        "held": "stopped",
        "kept": "running",
    }


async def test_cold_ends_a_detached_session_for_good(emu: RunningEmulator) -> None:
    await create(emu)
    async with open_ws(emu, cmd=["sleep", "600"], max_run_after_disconnect="600s") as ws:
        while (info := await next_text(ws, timeout=10))["type"] != "session_info":
            pass
    pid = int(info["session_id"])
    members = tree(pid)
    rec = emu.state.sprites[SPRITE]
    await until(lambda: rec.status == "cold")
    await until(lambda: not any(is_running(p) for p in members), timeout=10)
    status, body = await emu.api("GET", f"/v1/sprites/{SPRITE}/exec")
    assert status == 200
    assert body["sessions"] == []


async def test_services_start_on_the_first_wake_after_an_emulator_restart(
    emulator_config: EmulatorConfig,
) -> None:
    emulator_config.cold_after = 600.0
    async with serve(emulator_config) as emu:
        await create(emu)
        await put_service(emu, "sleeper", {"cmd": "sleep", "args": ["600"]})
    async with serve(emulator_config) as emu:
        # Every sprite comes back cold: nothing runs until it is woken.
        sup = supervisor_for(emu.state)
        assert emu.state.sprites[SPRITE].status == "cold"
        assert sup.processes(SPRITE) == []
        status, listing = await emu.api("GET", f"/v1/sprites/{SPRITE}/services")
        assert status == 200
        assert [s["state"]["status"] for s in listing] == ["running"]
        assert len(sup.processes(SPRITE)) == 1
