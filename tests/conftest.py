"""Fixtures shared by every test, and the leak checks every test gets.

Servers a test can script or run (see tests/README.md):
- ``mock``/``client``: the API mocked with aioresponses, and a client of it;
- ``fake``: a scripted loopback sprite server (tests/_fakes.py) for exec,
  control and session protocol tests;
- ``emu``: an emulator in the test's loop with sprite ``box`` (default config;
  tests/emulator/conftest.py overrides it for the emulator's own tests);
- ``emu_client``: a client of ``emu``;
- ``exec_emu``: the same with exec timings (no sandbox, the real 5 s exit linger);
- ``cli_emu``: a threaded emulator with ``SPRITES_API_URL``/``SPRITES_TOKEN``
  pointing at it and a clean working directory, for the CLI.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aioresponses.core as aioresponses_core
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestServer
from aioresponses import aioresponses

from sprites_async import RetryPolicy, SpritesClient
from sprites_async.emulator import Emulator, EmulatorConfig
from tests._emulator import EMU_TOKEN, RunningEmulator, serve
from tests._fakes import FakeSprites
from tests._leaks import open_sockets
from tests._mock import BASE, TOKEN


class _CompatClientResponse(ClientResponse):
    """aioresponses 0.7.9 predates the ``stream_writer`` argument that aiohttp
    3.14 made required (pnuckowski/aioresponses#289, still open); supply an
    already-finished writer so its fake responses can be built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(*args, **kwargs)


_NEEDS_STREAM_WRITER = "stream_writer" in inspect.signature(ClientResponse.__init__).parameters


@pytest.fixture
def mock(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses]:
    if _NEEDS_STREAM_WRITER:
        monkeypatch.setattr(aioresponses_core, "ClientResponse", _CompatClientResponse)
    with aioresponses() as m:
        yield m


@pytest.fixture
async def client() -> AsyncIterator[SpritesClient]:
    async with SpritesClient(
        TOKEN, base_url=BASE, retry=RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)
    ) as c:
        yield c


@pytest.fixture
async def fake() -> AsyncIterator[FakeSprites]:
    """A scripted loopback sprite server (``box``); set its scripts, then ``fake.client()``."""
    server = FakeSprites()
    test_server = TestServer(server.app, host="127.0.0.1")
    await test_server.start_server()
    server.url = str(test_server.make_url("")).rstrip("/")
    try:
        yield server
    finally:
        await test_server.close()


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[RunningEmulator]:
    """An emulator on loopback in this loop, default configuration, with sprite ``box``."""
    config = EmulatorConfig(token=EMU_TOKEN, state_dir=tmp_path / "state")
    async with serve(config) as running:
        running.add_sprite("box")
        yield running


@pytest.fixture
async def emu_client(emu: RunningEmulator) -> AsyncIterator[SpritesClient]:
    """A client of ``emu`` (default settings)."""
    async with SpritesClient(emu.token, base_url=emu.url) as c:
        yield c


@pytest.fixture
async def exec_emu(tmp_path: Path) -> AsyncIterator[RunningEmulator]:
    """A real emulator on loopback (plain subprocesses, the real ~5 s exit linger)."""
    config = EmulatorConfig(
        token=EMU_TOKEN,
        state_dir=tmp_path / "state",
        exit_linger=5.0,  # the real linger: the client must not wait for it
        warm_after=30.0,
        cold_after=300.0,
        sandbox="none",
    )
    config.extra["exec_port_poll"] = 0.05
    async with serve(config) as running:
        running.add_sprite("box")
        yield running


@pytest.fixture
def cli_emu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Emulator]:
    """A threaded emulator, with the environment pointing at it and a clean cwd."""
    with Emulator(exit_linger=0.0) as emulator:
        monkeypatch.setenv("SPRITES_API_URL", emulator.url)
        monkeypatch.setenv("SPRITES_TOKEN", emulator.token)
        monkeypatch.delenv("SPRITE_TOKEN", raising=False)
        monkeypatch.chdir(tmp_path)
        yield emulator


# ------------------------------------------------------------------ leak checks
#
# Every test must leave no child process and (for async tests) no task behind.
# These run around every test so that a leak fails the test that caused it.


def _descendants(pid: int) -> set[int]:
    """PIDs of all live descendants of ``pid`` (from /proc; zombies excluded)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name may contain spaces or parens: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] == b"Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


@pytest.fixture(autouse=True)
def _no_leaked_processes() -> Iterator[None]:
    before = _descendants(os.getpid())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        leaked = _descendants(os.getpid()) - before
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if leaked:
        names = {}
        for pid in leaked:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    names[pid] = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                names[pid] = "?"
        pytest.fail(f"test left child processes running: {names}")


@pytest.fixture
async def _no_leaked_tasks() -> AsyncIterator[None]:
    sockets_before = open_sockets()
    yield
    current = asyncio.current_task()
    leftover: list[asyncio.Task[object]] = []
    leaked_sockets: set[str] = set()
    for _ in range(100):
        leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        leaked_sockets = open_sockets() - sockets_before
        if not leftover and not leaked_sockets:
            return
        await asyncio.sleep(0.01)
    if leftover:
        pytest.fail(f"test left tasks running: {leftover}")
    pytest.fail(f"test left {len(leaked_sockets)} socket(s) open")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        func = getattr(item, "function", None)
        fixturenames = getattr(item, "fixturenames", None)
        if func is not None and fixturenames is not None and inspect.iscoroutinefunction(func):
            # First in the list: set up before, and torn down after, every other
            # fixture, so the emulator and clients are closed when it checks.
            fixturenames.insert(0, "_no_leaked_tasks")
