"""A spawn cancelled halfway (the client left, the control op was cancelled)
returns at once and leaves no process, pipe transport, pty or task behind.

asyncio's own handling of a cancelled ``subprocess_exec`` SIGKILLs the leader
alone and then waits until every pipe is closed. Whatever else already runs
in the command's session keeps the pipes open: a shell's child, or a sandbox
whose outer bwrap was killed before the inner one armed ``--die-with-parent``.
The cancelled caller then hung as long as the command ran, and if the event
loop ended first the pipe transports were never closed (``ResourceWarning:
unclosed transport <_UnixReadPipeTransport ...>``; the soak at scale 0.3 failed
once in 13 runs that way).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

from sprites_async.emulator import _procs
from sprites_async.emulator._procs import ProcSpec, SpriteProcess, sandbox_available

SANDBOX_MODES = [
    False,
    pytest.param(
        True, marks=pytest.mark.skipif(not sandbox_available(), reason="bwrap is not installed")
    ),
]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "home" / "sprite").mkdir(parents=True)
    (tmp_path / "tmp").mkdir()
    return tmp_path


def tagged(marker: str) -> list[int]:
    """Live processes (zombies excluded) whose environment holds ``marker``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read()
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        if marker.encode() in env and stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z":
            out.append(int(entry))
    return out


def spec(marker: str, *, tty: bool = False) -> ProcSpec:
    # ``sleep`` is not the shell's last command, so the shell forks it: the
    # session has a member besides its leader from the first milliseconds.
    return ProcSpec(
        argv=["sh", "-c", "sleep 30; :"],
        path="sh",
        env=["PATH=/usr/bin:/bin", f"SPAWN_TEST={marker}"],
        tty=tty,
    )


async def until(predicate: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(what)
        await asyncio.sleep(0.02)


def kill_tagged(marker: str) -> None:
    for pid in tagged(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def test_a_spawn_cancelled_while_its_pipes_connect_kills_the_whole_session(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deterministic: the pipes connect only once the test says so, and the
    # cancellation lands when the shell has forked its child (on a loaded
    # machine, pipe setup can be that slow).
    loop = asyncio.get_running_loop()
    gate = asyncio.Event()
    connect = loop.connect_read_pipe

    async def gated(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await connect(*args, **kwargs)

    monkeypatch.setattr(loop, "connect_read_pipe", gated)
    marker = uuid.uuid4().hex
    task = asyncio.ensure_future(SpriteProcess.start(root, spec(marker), sandbox=False))
    try:
        await until(lambda: len(tagged(marker)) >= 2, 10, "the shell never forked its child")
        task.cancel()
        await asyncio.sleep(0.05)
        gate.set()
        done, _ = await asyncio.wait({task}, timeout=10)
        # Before the fix: asyncio killed the shell alone and waited for its
        # child (30 s) to close the pipes.
        assert task in done, "the cancelled spawn waits for the command to end"
        assert task.cancelled()
        await until(lambda: not tagged(marker), 10, "processes of the cancelled spawn still alive")
        await until(lambda: not _procs._reapers, 15, "reapers still running")
    finally:
        kill_tagged(marker)
        gate.set()
        await asyncio.wait({task}, timeout=10)


def test_no_unclosed_transport_when_the_loop_ends_after_a_cancelled_spawn(root: Path) -> None:
    # The soak's failure: the same cancellation, then the test's event loop
    # ends (teardown) and its garbage is collected.
    marker = uuid.uuid4().hex

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Event()
        connect = loop.connect_read_pipe

        async def gated(*args: Any, **kwargs: Any) -> Any:
            await gate.wait()
            return await connect(*args, **kwargs)

        loop.connect_read_pipe = gated  # type: ignore[method-assign]  # this loop only
        task = asyncio.ensure_future(SpriteProcess.start(root, spec(marker), sandbox=False))
        await until(lambda: len(tagged(marker)) >= 2, 10, "the shell never forked its child")
        task.cancel()
        await asyncio.sleep(0.05)
        gate.set()
        # Whatever the emulator still does in the background finishes (and
        # must, quickly); then the test is over and its loop ends.
        await until(lambda: not _procs._reapers, 15, "reapers still running")
        await asyncio.sleep(0.5)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(scenario())
        finally:
            loop.close()
            kill_tagged(marker)
        del loop
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.parametrize("sandbox", SANDBOX_MODES)
@pytest.mark.parametrize("tty", [False, True])
async def test_a_spawn_cancelled_at_each_step_returns_at_once_and_leaves_nothing(
    root: Path, sandbox: bool, tty: bool
) -> None:
    # Every await point of the spawn path, one loop iteration at a time, until
    # the spawn completes before the cancellation arrives.
    marker = uuid.uuid4().hex
    fds_before = set(os.listdir("/proc/self/fd"))
    cancelled = 0
    try:
        for steps in range(40):
            task = asyncio.ensure_future(
                SpriteProcess.start(root, spec(marker, tty=tty), sandbox=sandbox)
            )
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
            assert task in done, f"cancelled after {steps} steps: waits for the command"
            if task.cancelled():
                cancelled += 1
                continue
            proc = task.result()
            await proc.terminate()
            break
        assert cancelled >= 2  # the loop really cancelled spawns midway
        await until(lambda: not tagged(marker), 10, "processes of cancelled spawns still alive")
        await until(lambda: not _procs._reapers, 15, "reapers still running")
        # Descriptors (the pipes, the pty's master) are all closed again.
        await until(
            lambda: set(os.listdir("/proc/self/fd")) <= fds_before,
            10,
            f"descriptors left open: {sorted(set(os.listdir('/proc/self/fd')) - fds_before)}",
        )
    finally:
        kill_tagged(marker)
