"""Fleet primitives against the local emulator (real HTTP, real limits)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sprites_async import Sprite, SpritesClient
from sprites_async.emulator import Emulator
from sprites_async.fleet import (
    CreationLimiter,
    Fleet,
    cleanup,
    create_many,
    temporary_sprite,
    wait_ready,
)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(exit_linger=0.0, creation_limit=4, creation_window=1.0) as emu:
        yield emu


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[SpritesClient]:
    async with emulator.client() as c:
        yield c


async def test_burst_beyond_service_limit_is_retried(
    emulator: Emulator, client: SpritesClient
) -> None:
    # Our limiter thinks 100 per second is fine; the service allows 4: the
    # 429s it sends are waited out, not surfaced.
    limiter = CreationLimiter(100, 1.0)
    names = [f"burst-{i}" for i in range(7)]
    result = await create_many(client, names, limiter=limiter, concurrency=7)
    assert result.ok, result.summary()
    assert sorted(emulator.state.sprites) == sorted(names)
    report = await cleanup(client, prefix="burst-")
    assert sorted(report.deleted) == sorted(names)
    assert not emulator.state.sprites


async def test_wait_ready_wakes_cold_sprites(emulator: Emulator, client: SpritesClient) -> None:
    limiter = CreationLimiter(4, 1.0)
    created = await create_many(client, ["w-a", "w-b", "w-c"], limiter=limiter)
    assert all(o.value is not None and o.value.status == "cold" for o in created)
    ready = await wait_ready(["w-a", "w-b", "w-c"], client=client, cold_timeout=10)
    assert ready.ok, ready.summary()
    assert {o.value.status for o in ready if o.value is not None} <= {"running", "warm"}


async def test_wait_ready_reports_missing_sprites(client: SpritesClient) -> None:
    ready = await wait_ready(["nope"], client=client)
    assert ready["nope"].status == "failed"
    assert "not found" in ready["nope"].describe()


async def test_temporary_sprite_cancelled_is_deleted(
    emulator: Emulator, client: SpritesClient
) -> None:
    inside = asyncio.Event()
    seen: list[str] = []

    async def job() -> None:
        async with temporary_sprite(client, "ci-", labels=["ci"]) as sprite:
            seen.append(sprite.name)
            assert sprite.name in emulator.state.sprites
            inside.set()
            await asyncio.sleep(30)

    task = asyncio.ensure_future(job())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen and seen[0] not in emulator.state.sprites


async def test_fleet_block_cleans_up(emulator: Emulator, client: SpritesClient) -> None:
    async with Fleet(client, prefix="fl-", labels=["demo"], limiter=CreationLimiter(4, 1.0)) as f:
        created = await f.create(3)
        assert created.ok
        assert all(emulator.state.sprites[n].labels == ["demo"] for n in f.names)
        ready = await f.wait_ready(cold_timeout=10)
        assert ready.ok
    assert not emulator.state.sprites


async def test_exec_many_collects_exit_codes(emulator: Emulator, client: SpritesClient) -> None:
    async with Fleet(client, prefix="ex-", limiter=CreationLimiter(4, 1.0)) as fleet:
        assert (await fleet.create(3)).ok
        result = await fleet.exec("sh", "-c", "echo hi; exit 0", timeout=30)
        assert result.ok
        assert {o.value.stdout for o in result if o.value is not None} == {b"hi\n"}
        # A non-zero exit is a value, not a failure, unless check=True.
        loose = await fleet.exec("false")
        assert loose.ok and {o.value.exit_code for o in loose if o.value is not None} == {1}
        strict = await fleet.exec("false", check=True)
        assert len(strict.failed) == 3
        assert all(type(e).__name__ == "CommandFailedError" for e in strict.errors.values())


async def test_exec_many_timeout_and_fail_fast(emulator: Emulator, client: SpritesClient) -> None:
    async with Fleet(client, prefix="ff-", limiter=CreationLimiter(4, 1.0)) as fleet:
        assert (await fleet.create(3)).ok
        slow = fleet.sprites[0].name

        async def job(sprite: Sprite) -> int:
            seconds = "60" if sprite.name == slow else "0"
            return (await sprite.exec("sleep", seconds)).exit_code

        # A sprite's first sandboxed command also sets up its network and
        # cgroups: on a loaded machine that alone can take a second or more.
        result = await fleet.run(job, timeout=8.0)
        assert result[slow].status == "timeout"
        assert all(o.ok for o in result if o.sprite != slow)


async def test_temporary_sprite_ready(emulator: Emulator, client: SpritesClient) -> None:
    async with temporary_sprite(client, "rd-", ready=True, limiter=CreationLimiter(4, 1.0)) as s:
        assert s.info is not None and s.info.status in ("warm", "running")
        assert (await s.exec("echo", "hi")).stdout == b"hi\n"
    assert not emulator.state.sprites


async def test_cleanup_by_label(emulator: Emulator, client: SpritesClient) -> None:
    limiter = CreationLimiter(4, 1.0)
    await create_many(client, ["lab-a", "lab-b"], labels=["batch-1"], limiter=limiter)
    await create_many(client, ["lab-c"], labels=["batch-2"], limiter=limiter)
    report = await cleanup(client, labels=["batch-1"], limiter=limiter)
    assert sorted(report.deleted) == ["lab-a", "lab-b"]
    assert sorted(emulator.state.sprites) == ["lab-c"]
    assert limiter.live == {"lab-c"}


async def test_wake_a_missing_sprite_raises(client: SpritesClient) -> None:
    from sprites_async import NotFoundError
    from sprites_async.fleet import wake

    with pytest.raises(NotFoundError):
        await wake(client.sprite("never-made"))
