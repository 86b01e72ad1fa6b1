"""The SDK on uvloop (uvicorn's default loop): the main flows against the emulator.

Each test runs its own uvloop event loop (``uvloop.run``), with the emulator
served inside it, so that nothing here depends on how pytest-asyncio picks
loops. Skipped where uvloop is not installed; the ``test`` extra installs it,
so CI runs these.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from sprites_async import SpritesClient
from sprites_async.emulator import EmulatorConfig
from tests._emulator import RunningEmulator, serve
from tests._leaks import open_sockets

uvloop = pytest.importorskip("uvloop")

Flow = Callable[[RunningEmulator], Awaitable[None]]


@asynccontextmanager
async def _emulator(tmp_path: Path) -> AsyncIterator[RunningEmulator]:
    config = EmulatorConfig(
        token="test-org/1/tok/secret",
        state_dir=tmp_path / "state",
        exit_linger=5.0,  # the real linger: the client must not wait for it
        warm_after=30.0,
        cold_after=300.0,
        sandbox="none",  # real processes, no bubblewrap needed
    )
    async with serve(config) as running:
        running.add_sprite("box")
        yield running


def run_on_uvloop(tmp_path: Path, flow: Flow) -> None:
    """Run ``flow`` against a fresh emulator on a uvloop loop; nothing may be left."""

    async def main() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        before = open_sockets()
        async with _emulator(tmp_path) as emu:
            await flow(emu)
        current = asyncio.current_task()
        for _ in range(200):
            tasks = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
            left = open_sockets() - before
            if not tasks and not left:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"left behind on uvloop: tasks {tasks}, {len(left)} socket(s)")

    uvloop.run(main())


def test_create_and_exec_over_control_and_direct(tmp_path: Path) -> None:
    async def flow(emu: RunningEmulator) -> None:
        for control in (True, False):
            async with SpritesClient(emu.token, base_url=emu.url, control=control) as client:
                name = f"uv-{'control' if control else 'direct'}"
                info = await client.sprites.create(name)
                assert info.name == name
                sprite = client.sprite(name)
                result = await sprite.exec("sh", "-c", "echo out; echo err >&2; exit 3")
                assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
                many = await asyncio.gather(*(sprite.exec("echo", str(i)) for i in range(5)))
                assert [r.stdout for r in many] == [f"{i}\n".encode() for i in range(5)]

    run_on_uvloop(tmp_path, flow)


def test_process_with_stdin(tmp_path: Path) -> None:
    async def flow(emu: RunningEmulator) -> None:
        async with SpritesClient(emu.token, base_url=emu.url) as client:
            async with client.sprite("box").process("cat") as proc:
                await proc.write(b"hello uvloop\n")
                got = b""
                async for chunk in proc.stdout:
                    got += chunk
                    if got.endswith(b"\n"):
                        break
                assert got == b"hello uvloop\n"
                await proc.close_stdin()
                assert await proc.wait() == 0

    run_on_uvloop(tmp_path, flow)


def test_files_and_a_checkpoint(tmp_path: Path) -> None:
    async def flow(emu: RunningEmulator) -> None:
        async with SpritesClient(emu.token, base_url=emu.url) as client:
            sprite = client.sprite("box")
            path = sprite.fs() / "notes" / "a.txt"
            await path.write_text("before")
            assert await path.read_text() == "before"
            await path.write_bytes(b"\x00\xff" * 100_000)
            assert await path.read_bytes() == b"\x00\xff" * 100_000
            events = [event async for event in sprite.checkpoints.create(comment="on uvloop")]
            assert events and events[-1].type == "complete"
            listed = await sprite.checkpoints.list()
            assert any(cp.comment == "on uvloop" for cp in listed)

    run_on_uvloop(tmp_path, flow)
