"""``sprite.exec()`` against broken ``/control`` channels and close-deaf exec handlers.

Against the emulator's quirks: every refused or hanging ``/control`` dial
falls back to a direct ``/exec`` socket (remembered for a while, then probed
again); a socket lost after ``op.start`` never re-runs the command; and a
handler that never answers a close frame (Fly's ``pkg/wsexec``) costs no
close timeout. Dials are counted on the server side.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sprites_async import (
    AuthenticationError,
    ExitStatusUnknownError,
    NotFoundError,
    RetryPolicy,
    SpritesClient,
)
from sprites_async._config import ControlOptions, ExecSettings
from sprites_async._control import pool_for
from sprites_async.emulator import EmulatorConfig, create_app
from tests._emulator import RunningEmulator, no_leftovers, serve


@dataclass
class Emu:
    """The emulator, plus what its ``/control`` and ``/exec`` routes were asked."""

    running: RunningEmulator
    hits: Counter[str] = field(default_factory=Counter)
    control_queries: list[dict[str, str]] = field(default_factory=list)

    @property
    def state(self) -> Any:
        return self.running.state

    @property
    def home(self) -> Path:
        return Path(self.state.sprite_root("box")) / "home" / "sprite"

    def client(self, token: str | None = None, **control: Any) -> SpritesClient:
        client = SpritesClient(
            token or self.running.token,
            base_url=self.running.url,
            retry=RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0),
        )
        client.exec_settings = ExecSettings(kill_grace=1.0, kill_wait=2.0)
        client.control = ControlOptions(**{"probe_timeout": 1.0, **control})
        return client


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[Emu]:
    config = EmulatorConfig(
        token="test-org/1/tok/secret",
        state_dir=tmp_path / "state",
        exit_linger=5.0,  # the real linger: the client must not wait for it
        warm_after=30.0,
        cold_after=300.0,
        sandbox="none",
    )
    app = create_app(config)
    seen: Emu | None = None

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        assert seen is not None
        route = request.path.rsplit("/", 1)[-1]
        seen.hits[route] += 1
        if route == "control":
            seen.control_queries.append(dict(request.query))
        return await handler(request)

    app.middlewares.insert(0, count)
    async with serve(config, app) as running:
        running.add_sprite("box")
        seen = Emu(running)
        yield seen


REFUSALS = ["control-400", "control-403", "control-500", "control-502", "control-503"]


@pytest.mark.parametrize("quirk", REFUSALS)
async def test_refused_control_falls_back_to_direct_and_is_remembered(emu: Emu, quirk: str) -> None:
    emu.state.quirks.add(quirk)
    client = emu.client()
    sprite = client.sprite("box")
    result = await sprite.exec("sh", "-c", "echo hi; exit 3")
    assert (result.exit_code, result.stdout) == (3, b"hi\n")
    assert emu.hits["control"] == 1  # refused once, not retried
    assert (await sprite.exec("echo", "again")).stdout == b"again\n"
    assert emu.hits["control"] == 1  # remembered: no second dial
    assert emu.hits["exec"] == 2
    assert pool_for(client).supported("box") is False
    await no_leftovers(emu.running, client)


async def test_hanging_control_falls_back_after_the_probe_timeout(emu: Emu) -> None:
    emu.state.quirks.add("control-hang")
    client = emu.client(probe_timeout=1.0, fallback_ttl=0.5)
    sprite = client.sprite("box")
    started = time.monotonic()
    result = await sprite.exec("sh", "-c", "echo ok")
    elapsed = time.monotonic() - started
    assert result.stdout == b"ok\n"
    # Timeouts.wake is 120 s: without the probe the dial would wait that long.
    assert elapsed < 30
    assert emu.hits["control"] == 1
    assert emu.control_queries == [{}]  # the probe dial carries no command (no ?op=)
    await sprite.exec("true")
    assert emu.hits["control"] == 1  # remembered
    await asyncio.sleep(0.6)  # past fallback_ttl: probe again (and fall back again)
    assert (await sprite.exec("echo", "late")).stdout == b"late\n"
    assert emu.hits["control"] == 2
    assert emu.hits["exec"] == 3  # one direct socket per command, nothing more
    await no_leftovers(emu.running, client)


async def test_concurrent_execs_share_one_probe_of_a_hanging_control(emu: Emu) -> None:
    emu.state.quirks.add("control-hang")
    client = emu.client(probe_timeout=1.0)
    sprite = client.sprite("box")
    started = time.monotonic()
    results = await asyncio.gather(*(sprite.exec("echo", str(i)) for i in range(8)))
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(8)]
    assert time.monotonic() - started < 30
    # One socket held open against the hanging endpoint, not one per caller.
    assert emu.hits["control"] == 1
    assert emu.hits["exec"] == 8
    await no_leftovers(emu.running, client)


async def test_a_caller_waiting_for_a_slot_goes_direct_when_the_dial_fails(emu: Emu) -> None:
    client = emu.client(max_per_sprite=2, probe_timeout=1.0, when_full="wait")
    sprite = client.sprite("box")
    busy = asyncio.ensure_future(sprite.exec("sh", "-c", "sleep 1.5; echo a"))  # socket 1
    await asyncio.sleep(0.3)
    assert pool_for(client).supported("box") is True
    emu.state.quirks.add("control-hang")
    second = asyncio.ensure_future(sprite.exec("echo", "b"))  # dials socket 2: hangs
    await asyncio.sleep(0.2)
    third = asyncio.ensure_future(sprite.exec("echo", "c"))  # no room: waits for a slot
    await asyncio.sleep(0.1)
    assert pool_for(client).stats("box")["waiting"] == 1
    outs = [r.stdout for r in await asyncio.gather(busy, second, third)]
    assert outs == [b"a\n", b"b\n", b"c\n"]
    # The slot the failed dial freed sent the waiter direct, not into a second hang.
    assert emu.hits["control"] == 2
    await no_leftovers(emu.running, client)


async def test_fallback_expires_and_control_is_used_again(emu: Emu) -> None:
    emu.state.quirks.add("control-503")
    client = emu.client(fallback_ttl=0.3)
    sprite = client.sprite("box")
    assert (await sprite.exec("true")).exit_code == 0
    assert pool_for(client).supported("box") is False
    emu.state.quirks.clear()
    assert (await sprite.exec("true")).exit_code == 0
    assert emu.hits["control"] == 1  # still within fallback_ttl
    await asyncio.sleep(0.4)
    assert (await sprite.exec("echo", "via control")).stdout == b"via control\n"
    assert emu.hits["control"] == 2
    assert pool_for(client).supported("box") is True
    assert pool_for(client).dials == 1
    await no_leftovers(emu.running, client)


async def test_upgrade_forgets_what_was_known_about_control(emu: Emu) -> None:
    emu.state.quirks.add("control-503")
    client = emu.client()
    sprite = client.sprite("box")
    assert (await sprite.exec("true")).exit_code == 0
    assert pool_for(client).supported("box") is False
    emu.state.quirks.clear()
    # The upgraded sprite is probed again at once, not after fallback_ttl.
    await sprite.upgrade()
    assert pool_for(client).supported("box") is None
    assert (await sprite.exec("echo", "probed")).stdout == b"probed\n"
    assert pool_for(client).supported("box") is True
    assert pool_for(client).stats("box")["idle"] == 1
    # ...and idle sockets to the replaced server are closed, not reused.
    await sprite.upgrade()
    assert pool_for(client).stats("box")["idle"] == 0
    assert (await sprite.exec("echo", "again")).stdout == b"again\n"
    assert emu.hits["control"] == 3
    await no_leftovers(emu.running, client)


async def test_bad_token_is_an_authentication_error_from_the_direct_path(emu: Emu) -> None:
    client = emu.client(token="test-org/1/tok/wrong")
    with pytest.raises(AuthenticationError) as info:
        await client.sprite("box").exec("true")
    # /control was refused with 401, then the direct handshake said so itself.
    assert info.value.operation == "exec"
    assert (emu.hits["control"], emu.hits["exec"]) == (1, 1)
    assert pool_for(client).supported("box") is None  # a token says nothing about /control
    await client.aclose()


async def test_missing_sprite_is_not_found_from_the_direct_path(emu: Emu) -> None:
    client = emu.client()
    with pytest.raises(NotFoundError) as info:
        await client.sprite("nope").exec("true")
    assert info.value.operation == "exec"
    assert (emu.hits["control"], emu.hits["exec"]) == (1, 1)
    assert pool_for(client).supported("nope") is None
    await client.aclose()


@pytest.mark.parametrize(
    "quirks",
    [["control-drop-after-start"], ["control-drop-after-start", "control-no-ack"]],
)
async def test_socket_lost_after_op_start_never_reruns(emu: Emu, quirks: list[str]) -> None:
    emu.state.quirks.add(*quirks)
    client = emu.client()
    sprite = client.sprite("box")
    with pytest.raises(ExitStatusUnknownError) as info:
        await sprite.exec("sh", "-c", "echo run >> runs.txt; echo out")
    assert info.value.session_id is None  # nothing arrived: not even session_info
    runs = emu.home / "runs.txt"
    for _ in range(200):
        if runs.exists() and runs.read_bytes():
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)  # time for a re-run, if anything re-sent it
    assert runs.read_bytes() == b"run\n"  # it ran exactly once, on the server
    assert emu.hits["control"] == 1
    assert emu.hits["exec"] == 0  # no fallback to direct after the start was sent
    emu.state.quirks.clear()
    assert (await sprite.exec("cat", "runs.txt")).stdout == b"run\n"
    await no_leftovers(emu.running, client)


async def test_close_deaf_exec_handler_costs_no_close_timeout(emu: Emu) -> None:
    # pkg/wsexec stops reading once stdin is closed: our close frame is never
    # answered. With a close timeout of 30 s (aiohttp still caps the wait for
    # the reply at 2 s) waiting for the reply would cost >= 2 s per command.
    emu.state.quirks.add("exec-wsexec")
    client = emu.client()
    client.exec_settings = ExecSettings(kill_grace=1.0, kill_wait=2.0, close_timeout=30.0)
    sprite = client.sprite("box")
    started = time.monotonic()
    for i in range(3):
        result = await sprite.exec("sh", "-c", f"cat; exit {i + 3}", stdin=f"in{i}\n")
        assert (result.exit_code, result.stdout) == (i + 3, f"in{i}\n".encode())
        assert result.session_id is None  # that handler sends no session_info
    for i in range(2):
        async with sprite.process("sh", "-c", "cat; echo err >&2; exit 5") as proc:
            await proc.write(f"p{i}\n")
            await proc.close_stdin()
            out = await proc.stdout.read()
            err = await proc.stderr.read()
            assert await proc.wait() == 5
        assert (out, err) == (f"p{i}\n".encode(), b"err\n")
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"5 commands took {elapsed:.1f} s: a close reply was awaited"
    await no_leftovers(emu.running, client)
