"""Fleet primitives with fakes: rate limiting on a fake clock, fan-out, fail-fast, cleanup."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

import pytest

from sprites_async import RateLimitError, Sprite, SpritesClient, Timeouts
from sprites_async._errors import api_error_from_response
from sprites_async.fleet import (
    CreationLimiter,
    Fleet,
    FleetError,
    FleetProgress,
    RateLimiter,
    create_many,
    run_many,
    temporary_sprite,
    unique_name,
)
from sprites_async.types import SpriteInfo


class FakeClock:
    """Time moves only when someone sleeps on it, and then at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        # Let the tasks that are ready run first, as they would during a real
        # sleep, before time jumps.
        for _ in range(20):
            await asyncio.sleep(0)
        self.now += seconds


def rate_limited(retry_after: int | None = 7) -> RateLimitError:
    body = (
        b'{"error":"sprite_creation_rate_limited","message":"Sprite creation rate limit exceeded"'
    )
    body += b',"retry_after_seconds":%d}' % retry_after if retry_after is not None else b"}"
    err = api_error_from_response(429, {}, body, operation="create sprite")
    assert isinstance(err, RateLimitError)
    return err


class FakeSprites:
    """The subset of ``client.sprites`` the fleet module uses, in memory."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock
        self.existing: dict[str, SpriteInfo] = {}
        self.created_at: list[float] = []
        self.deleted: list[str] = []
        self.failures: dict[str, list[BaseException]] = {}
        self.create_delay = 0.0
        self.delete_delay = 0.0

    async def create(self, name: str, **kwargs: Any) -> SpriteInfo:
        if self.create_delay:
            await asyncio.sleep(self.create_delay)
        queued = self.failures.get(name)
        if queued:
            raise queued.pop(0)
        if self.clock is not None:
            self.created_at.append(self.clock.now)
        info = SpriteInfo(
            name=name,
            status="cold",
            labels=list(kwargs.get("labels") or []),
            created_at=datetime.now(timezone.utc),
        )
        self.existing[name] = info
        return info

    async def get(self, name: str) -> SpriteInfo:
        return self.existing[name]

    async def delete(self, name: str, *, missing_ok: bool = False) -> bool:
        if self.delete_delay:
            await asyncio.sleep(self.delete_delay)
        self.deleted.append(name)
        return self.existing.pop(name, None) is not None


class FakeClient:
    """Enough of ``SpritesClient`` for the fleet module."""

    base_url = "https://fake.test"
    org = "fake-org"
    timeouts = Timeouts()

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.sprites = FakeSprites(clock)
        self._fleet_limiter: CreationLimiter | None = None

    def sprite(self, sprite: str | SpriteInfo) -> Sprite:
        return Sprite(self, sprite)  # type: ignore[arg-type]


# ----------------------------------------------------------------- rate limiter


async def test_rate_limiter_spaces_bursts_by_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, 60.0, clock=clock)
    times: list[float] = []

    async def take() -> None:
        await limiter.acquire()
        times.append(clock.now - 1000.0)

    await asyncio.gather(*(take() for _ in range(25)))
    assert times == [0.0] * 10 + [60.0] * 10 + [120.0] * 5
    # Slept once per refill, never concurrently: the fake clock stays exact.
    assert clock.sleeps == [60.0, 60.0]


async def test_rate_limiter_never_exceeds_limit_in_any_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(3, 10.0, clock=clock)
    times: list[float] = []
    for i in range(20):
        # Irregular arrivals: sometimes idle, sometimes bursting.
        if i % 4 == 0:
            clock.now += 3.7
        await limiter.acquire()
        times.append(clock.now)
    for t in times:
        in_window = [u for u in times if t <= u < t + 10.0]
        assert len(in_window) <= 3


async def test_rate_limiter_block_for_holds_everyone_back() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, 60.0, clock=clock)
    await limiter.acquire()
    limiter.block_for(30.0)
    assert limiter.available == 0
    assert limiter.delay() == pytest.approx(30.0)
    await limiter.acquire()
    assert clock.now == pytest.approx(1030.0)


async def test_rate_limiter_cancelled_waiter_takes_nothing() -> None:
    limiter = RateLimiter(1, 3600.0)  # real clock; the waiter would wait an hour
    await limiter.acquire()
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(limiter._spent) == 1


def test_rate_limiter_validates() -> None:
    with pytest.raises(ValueError, match="limit"):
        RateLimiter(0, 1.0)
    with pytest.raises(ValueError, match="window"):
        RateLimiter(1, 0)


# ------------------------------------------------------------- creation limiter


async def test_creation_limiter_waits_instead_of_429() -> None:
    clock = FakeClock()
    client = FakeClient(clock)
    limiter = CreationLimiter(10, 60.0, margin=0, clock=clock)
    result = await create_many(
        client,  # type: ignore[arg-type]
        [f"s-{i:02d}" for i in range(23)],
        limiter=limiter,
        concurrency=23,
    )
    assert result.ok, result.summary()
    offsets = sorted(t - 1000.0 for t in client.sprites.created_at)
    assert offsets == [0.0] * 10 + [60.0] * 10 + [120.0] * 3


async def test_creation_limiter_keeps_a_margin_against_jitter() -> None:
    clock = FakeClock()
    client = FakeClient(clock)
    limiter = CreationLimiter(2, 60.0, clock=clock)  # default margin: 5 % of the window
    for name in "abc":
        await limiter.create(client, name)  # type: ignore[arg-type]
    assert clock.sleeps == [pytest.approx(63.0)]


async def test_creation_limiter_retries_429_after_retry_after() -> None:
    clock = FakeClock()
    client = FakeClient(clock)
    client.sprites.failures["a"] = [rate_limited(7), rate_limited(None)]
    limiter = CreationLimiter(10, 60.0, margin=0, clock=clock)
    info = await limiter.create(client, "a")  # type: ignore[arg-type]
    assert info.name == "a"
    # 7 s from the body, then window/limit = 6 s when no retry_after was given.
    assert clock.sleeps == [7.0, 6.0]
    assert limiter.live == {"a"}


async def test_creation_limiter_gives_up_after_max_retries() -> None:
    clock = FakeClock()
    client = FakeClient(clock)
    client.sprites.failures["a"] = [rate_limited(1) for _ in range(5)]
    limiter = CreationLimiter(clock=clock, max_retries=2, max_sprites=1)
    with pytest.raises(RateLimitError):
        await limiter.create(client, "a")  # type: ignore[arg-type]
    # The slot was given back: the next creation does not wait for it.
    client.sprites.failures.clear()
    await asyncio.wait_for(limiter.create(client, "b"), 1.0)  # type: ignore[arg-type]


async def test_creation_limiter_caps_live_sprites() -> None:
    client = FakeClient()
    limiter = CreationLimiter(100, 1.0, max_sprites=2)
    await limiter.create(client, "a")  # type: ignore[arg-type]
    await limiter.create(client, "b")  # type: ignore[arg-type]
    third = asyncio.ensure_future(limiter.create(client, "c"))  # type: ignore[arg-type]
    await asyncio.sleep(0.02)
    assert not third.done()
    assert await limiter.delete(client, "a")  # type: ignore[arg-type]
    info = await asyncio.wait_for(third, 1.0)
    assert info.name == "c"
    assert limiter.live == {"b", "c"}


async def test_default_limiter_is_the_clients_own() -> None:
    a, b = FakeClient(), FakeClient()
    own = CreationLimiter.for_client(a)  # type: ignore[arg-type]
    assert own is CreationLimiter.for_client(a)  # type: ignore[arg-type]
    assert a._fleet_limiter is own
    assert (own.rate.limit, own.rate.window) == (10, 63.0)  # the service's, + margin
    assert CreationLimiter.for_client(b) is not own  # type: ignore[arg-type]
    local = FakeClient()
    local.base_url = "http://127.0.0.1:8080"  # an emulator: (almost) no pacing
    assert CreationLimiter.for_client(local).rate.limit == 1000  # type: ignore[arg-type]


async def test_default_limiter_is_an_attribute_of_a_real_client(client: SpritesClient) -> None:
    assert client._fleet_limiter is None
    limiter = CreationLimiter.for_client(client)
    assert client._fleet_limiter is limiter
    assert CreationLimiter.for_client(client) is limiter


# ----------------------------------------------------------------------- fan-out


def handles(client: FakeClient, n: int) -> list[Sprite]:
    return [client.sprite(f"s-{i:02d}") for i in range(n)]


async def test_run_many_collects_partial_failures_in_order() -> None:
    client = FakeClient()

    async def work(sprite: Sprite) -> int:
        await asyncio.sleep(0.001 * (10 - int(sprite.name[2:])))
        if sprite.name in ("s-03", "s-07"):
            raise RuntimeError(f"boom on {sprite.name}")
        return int(sprite.name[2:]) * 2

    result = await run_many(handles(client, 10), work, concurrency=3)
    assert [o.sprite for o in result] == [f"s-{i:02d}" for i in range(10)]
    assert not result.ok
    assert [o.sprite for o in result.failed] == ["s-03", "s-07"]
    assert str(result.errors["s-03"]) == "boom on s-03"
    assert result.values == {f"s-{i:02d}": i * 2 for i in range(10) if i not in (3, 7)}
    assert result.counts() == {"ok": 8, "failed": 2}
    assert all(o.duration is not None and o.duration >= 0 for o in result)
    assert result["s-07"].describe() == "failed: boom on s-07"
    with pytest.raises(FleetError, match="8 ok, 2 failed") as info:
        result.raise_for_failures()
    assert info.value.result is result


async def test_run_many_respects_concurrency() -> None:
    client = FakeClient()
    running = peak = 0

    async def work(sprite: Sprite) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.005)
        running -= 1

    result = await run_many(handles(client, 30), work, concurrency=4)
    assert result.ok
    assert peak == 4


async def test_run_many_per_sprite_timeout() -> None:
    client = FakeClient()
    cleaned: list[str] = []

    async def work(sprite: Sprite) -> str:
        try:
            await asyncio.sleep(10 if sprite.name == "s-01" else 0)
        finally:
            cleaned.append(sprite.name)
        return sprite.name

    result = await run_many(handles(client, 3), work, timeout=0.1)
    assert result["s-01"].status == "timeout"
    assert isinstance(result["s-01"].error, TimeoutError)
    assert result["s-00"].ok and result["s-02"].ok
    assert sorted(cleaned) == ["s-00", "s-01", "s-02"]


async def test_run_many_fail_fast_cancels_and_skips() -> None:
    client = FakeClient()
    unwound: list[str] = []

    async def work(sprite: Sprite) -> None:
        if sprite.name == "s-00":
            await asyncio.sleep(0.01)
            raise ValueError("first failure")
        try:
            await asyncio.sleep(10)
        finally:
            unwound.append(sprite.name)

    result = await run_many(handles(client, 8), work, concurrency=3, fail_fast=True)
    statuses = {o.sprite: o.status for o in result}
    assert statuses["s-00"] == "failed"
    assert statuses["s-01"] == statuses["s-02"] == "cancelled"
    assert all(statuses[f"s-{i:02d}"] == "skipped" for i in range(3, 8))
    assert sorted(unwound) == ["s-01", "s-02"]
    assert [o.sprite for o in result.not_run] == [f"s-{i:02d}" for i in range(1, 8)]
    assert result.duration < 5


async def test_run_many_outer_cancellation_unwinds_everything() -> None:
    client = FakeClient()
    started = asyncio.Event()
    unwound: list[str] = []

    async def work(sprite: Sprite) -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        finally:
            unwound.append(sprite.name)

    task = asyncio.ensure_future(run_many(handles(client, 5), work, concurrency=2))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(unwound) == ["s-00", "s-01"]


class Abort(BaseException):
    """Not an ``Exception``, like ``KeyboardInterrupt`` or what ``pytest.fail()`` raises."""


async def test_run_many_error_that_is_not_an_exception_cancels_the_others() -> None:
    client = FakeClient()
    unwound: list[str] = []

    async def work(sprite: Sprite) -> None:
        if sprite.name == "s-00":
            await asyncio.sleep(0.01)
            raise Abort
        try:
            await asyncio.Event().wait()  # never set: only a cancellation ends it
        finally:
            unwound.append(sprite.name)

    # Before: the others ran on (here forever), so wait_for expired instead.
    with pytest.raises(Abort):
        await asyncio.wait_for(run_many(handles(client, 5), work, concurrency=3), 10)
    assert sorted(unwound) == ["s-01", "s-02"]


async def test_run_many_fail_fast_on_a_failure_before_the_first_await() -> None:
    client = FakeClient()

    async def work(sprite: Sprite) -> None:
        if sprite.name == "s-00":
            raise ValueError("at once")
        await asyncio.sleep(10)

    result = await run_many(handles(client, 6), work, concurrency=2, fail_fast=True)
    assert result["s-00"].status == "failed"
    assert {o.status for o in result.not_run} <= {"cancelled", "skipped"}
    assert len(result.not_run) == 5
    assert result.duration < 5


async def test_run_many_progress_events() -> None:
    client = FakeClient()
    events: list[FleetProgress] = []

    async def work(sprite: Sprite) -> None:
        if sprite.name == "s-02":
            raise RuntimeError("x")

    def broken_callback(event: FleetProgress) -> None:
        events.append(event)
        raise RuntimeError("a buggy progress display")

    result = await run_many(handles(client, 4), work, on_progress=broken_callback)
    assert result.counts() == {"ok": 3, "failed": 1}
    assert [e.event for e in events].count("started") == 4
    last = events[-1]
    assert (last.total, last.started, last.finished, last.succeeded, last.failed) == (4, 4, 4, 3, 1)
    assert last.running == 0


async def test_run_many_validates() -> None:
    client = FakeClient()

    async def work(sprite: Sprite) -> None:
        return None

    with pytest.raises(ValueError, match="twice"):
        await run_many([client.sprite("a"), client.sprite("a")], work)
    with pytest.raises(TypeError, match="client"):
        await run_many(["a"], work)
    with pytest.raises(TypeError, match="a sprite name or a SpriteInfo, not int"):
        await run_many([7], work)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="concurrency"):
        await run_many([], work, concurrency=0)
    assert len(await run_many([], work)) == 0


def test_unique_name() -> None:
    a, b = unique_name("ci-"), unique_name("ci-")
    assert a != b and a.startswith("ci-") and len(a) == 13
    with pytest.raises(ValueError, match="prefix"):
        unique_name("Bad_")


# ------------------------------------------------------------- temporary sprites


async def test_temporary_sprite_deleted_after_block() -> None:
    client = FakeClient()
    async with temporary_sprite(client, "ci-") as sprite:  # type: ignore[arg-type]
        assert sprite.name.startswith("ci-")
        assert sprite.name in client.sprites.existing
    assert client.sprites.deleted == [sprite.name]
    assert not client.sprites.existing


async def test_temporary_sprite_deleted_when_block_raises() -> None:
    client = FakeClient()
    with pytest.raises(RuntimeError, match="job failed"):
        async with temporary_sprite(client) as sprite:  # type: ignore[arg-type]
            raise RuntimeError("job failed")
    assert client.sprites.deleted == [sprite.name]


async def test_temporary_sprite_deleted_when_task_cancelled() -> None:
    client = FakeClient()
    client.sprites.delete_delay = 0.05  # the cancellation lands while deleting, too
    inside = asyncio.Event()
    names: list[str] = []

    async def job() -> None:
        async with temporary_sprite(client, "ci-") as sprite:  # type: ignore[arg-type]
            names.append(sprite.name)
            inside.set()
            await asyncio.sleep(10)

    task = asyncio.ensure_future(job())
    await inside.wait()
    task.cancel()
    await asyncio.sleep(0.01)
    task.cancel()  # a second cancellation during the delete must not abandon it
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.sprites.deleted == names
    assert not client.sprites.existing


async def test_temporary_sprite_cancelled_during_create() -> None:
    client = FakeClient()
    client.sprites.create_delay = 0.05

    async def job() -> None:
        async with temporary_sprite(client, "ci-"):  # type: ignore[arg-type]
            raise AssertionError("never reached")

    task = asyncio.ensure_future(job())
    await asyncio.sleep(0.01)  # the POST is in flight
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The create finished server-side; the sprite it made was deleted.
    assert len(client.sprites.deleted) == 1
    assert not client.sprites.existing


async def test_temporary_sprite_delete_failure_is_raised() -> None:
    client = FakeClient()

    async def failing_delete(name: str, *, missing_ok: bool = False) -> bool:
        raise RuntimeError("delete failed")

    client.sprites.delete = failing_delete  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="delete failed"):
        async with temporary_sprite(client):  # type: ignore[arg-type]
            pass
    # ... but never hides the block's own error.
    with pytest.raises(KeyError):
        async with temporary_sprite(client):  # type: ignore[arg-type]
            raise KeyError("the real problem")


# ------------------------------------------------------------------------- Fleet


async def test_fleet_deletes_what_it_created() -> None:
    client = FakeClient()
    client.sprites.existing["adopted"] = SpriteInfo(name="adopted")
    async with Fleet(client, prefix="f-", sprites=["adopted"]) as fleet:  # type: ignore[arg-type]
        created = await fleet.create(5)
        assert created.ok
        assert len(fleet) == 6
        result = await fleet.run(lambda s: _name_upper(s))
        assert result.values["adopted"] == "ADOPTED"
    assert sorted(client.sprites.deleted) == sorted(created_names(created))
    assert set(client.sprites.existing) == {"adopted"}
    assert fleet.names == ["adopted"]


def created_names(result: Any) -> list[str]:
    return [o.sprite for o in result if o.ok]


async def _name_upper(sprite: Sprite) -> str:
    return sprite.name.upper()


async def test_fleet_cleanup_on_cancel_during_create() -> None:
    client = FakeClient()
    client.sprites.create_delay = 0.05
    fleet = Fleet(client, prefix="f-", limiter=CreationLimiter(100, 1.0))  # type: ignore[arg-type]

    async def job() -> None:
        async with fleet:
            await fleet.create(4)

    task = asyncio.ensure_future(job())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not client.sprites.existing
    assert len(client.sprites.deleted) == 4


async def test_fleet_failed_creations_not_deleted() -> None:
    client = FakeClient()
    conflict = api_error_from_response(409, {}, b'{"error":"taken"}')
    client.sprites.failures["f-taken"] = [conflict]
    async with Fleet(client) as fleet:  # type: ignore[arg-type]
        result = await fleet.create(0, names=["f-ok", "f-taken"])
        assert result.counts() == {"ok": 1, "failed": 1}
        assert fleet.names == ["f-ok"]
    assert client.sprites.deleted == ["f-ok"]


def test_fleet_module_surface() -> None:
    import types

    from sprites_async import fleet

    # The limiters and the fan-out engine live in private modules of their own
    # and are public through this one.
    homes = {fleet.__name__, "sprites_async._fleet_limits", "sprites_async._fleet_run"}
    public = {
        n
        for n, v in vars(fleet).items()
        if not n.startswith("_")
        and not isinstance(v, types.ModuleType)
        and getattr(v, "__module__", fleet.__name__) in homes
        and n not in ("T", "TYPE_CHECKING", "annotations", "logger")
    }
    aliases = {"OutcomeStatus", "ProgressCallback", "SpriteLike"}
    assert set(fleet.__all__) == public | aliases
    assert fleet.__all__ == sorted(fleet.__all__, key=lambda n: (not n.isupper(), n))
    for name in sorted(set(fleet.__all__) - aliases):  # aliases are documented in the source
        obj = getattr(fleet, name)
        if not isinstance(obj, (int, float)) and callable(obj):
            assert obj.__doc__, f"{name} has no docstring"
