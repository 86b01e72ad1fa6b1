"""Sprite management against the emulator over real loopback HTTP, faults included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sprites_async import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    SpritesClient,
    SpritesConnectionError,
    SpritesTimeoutError,
    Timeouts,
)
from sprites_async.emulator import Emulator

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[Emulator]:
    async with Emulator(state_dir=tmp_path / "state", exit_linger=0.0) as emulator:
        yield emulator


@pytest.fixture
async def client(emu: Emulator) -> AsyncIterator[SpritesClient]:
    async with SpritesClient(emu.token, base_url=emu.url, retry=FAST_RETRY) as c:
        yield c


async def test_crud_round_trip(client: SpritesClient) -> None:
    info = await client.sprites.create("alpha", labels=["ci"], url_auth="public")
    assert info.name == "alpha"
    assert info.status == "cold"
    assert info.labels == ["ci"]
    assert info.url_settings is not None
    assert info.url_settings.auth == "public"
    assert info.created_at is not None
    got = await client.sprites.get("alpha")
    assert got.id == info.id
    updated = await client.sprites.update("alpha", labels=["a", "b"], url_auth="sprite")
    assert updated.labels == ["a", "b"]
    assert updated.updated_at is not None
    assert updated.updated_at >= info.updated_at  # type: ignore[operator]
    await client.sprites.upgrade("alpha")
    assert await client.sprites.delete("alpha") is True
    assert await client.sprites.delete("alpha", missing_ok=True) is False
    with pytest.raises(NotFoundError) as err:
        await client.sprites.get("alpha")
    assert err.value.message == "sprite not found"
    assert err.value.request_id  # the emulator sends x-request-id like the API layer
    assert err.value.fly_request_id


async def test_duplicate_and_server_side_validation(client: SpritesClient) -> None:
    await client.sprites.create("dup")
    with pytest.raises(ConflictError, match="already exists"):
        await client.sprites.create("dup")
    # Our own checks stop bad names before the network; the server's 400 is
    # still mapped correctly when something slips through.
    with pytest.raises(BadRequestError, match="invalid sprite name format"):
        await client._request(
            "POST", "/v1/sprites", json=b'{"name":"Bad Name"}', operation="create sprite"
        )


async def test_wrong_token_is_an_authentication_error(emu: Emulator) -> None:
    async with SpritesClient("x/1/2/wrong", base_url=emu.url) as c:
        with pytest.raises(AuthenticationError, match="authentication failed"):
            await c.sprites.list()


async def test_list_walks_every_page_with_counters(emu: Emulator, client: SpritesClient) -> None:
    emu.seed(120, prefix="many-")
    await client.sprites.create("other")
    page = await client.sprites.list(prefix="many-", max_results=50)
    assert len(page.sprites) == 50
    assert page.next_token is not None
    assert page.counters.cold == 121
    names = [s.name async for s in client.sprites.list(prefix="many-", max_results=7)]
    assert names == [f"many-{i:05d}" for i in range(120)]


async def test_incident_page_fault_ends_the_listing(emu: Emulator, client: SpritesClient) -> None:
    emu.seed(60, prefix="inc-")
    emu.faults.incident_page = True
    names = [s.name async for s in client.sprites.list(prefix="inc-")]
    assert len(names) == 60


async def test_injected_503_is_retried(emu: Emulator, client: SpritesClient) -> None:
    await client.sprites.create("flaky")
    emu.faults.update({"error_status": 503, "error_count": 2, "error_path": "^/v1/sprites/flaky$"})
    info = await client.sprites.get("flaky")
    assert info.name == "flaky"


async def test_injected_errors_beyond_the_policy_surface(
    emu: Emulator, client: SpritesClient
) -> None:
    await client.sprites.create("down")
    emu.faults.update({"error_status": 502, "error_count": 5, "error_path": "^/v1/sprites/down$"})
    with pytest.raises(ServerError) as err:
        await client.sprites.get("down")
    assert err.value.status_code == 502


async def test_post_is_not_repeated_after_a_server_error(
    emu: Emulator, client: SpritesClient
) -> None:
    emu.faults.update(
        {
            "error_status": 503,
            "error_count": 1,
            "error_path": "^/v1/sprites$",
            "error_methods": ["POST"],
        }
    )
    with pytest.raises(ServerError):
        await client.sprites.create("once")
    # The one injected error was consumed by our single attempt: no retry happened.
    with pytest.raises(NotFoundError):
        await client.sprites.get("once")


async def test_rate_limit_429_carries_retry_after(emu: Emulator) -> None:
    async with SpritesClient(emu.token, base_url=emu.url, retry=RetryPolicy.none()) as c:
        emu.faults.update({"rate_limit_count": 1, "retry_after": 17})
        with pytest.raises(RateLimitError) as err:
            await c.sprites.list()
    assert err.value.retry_after == 17.0


async def test_creation_rate_limit_of_the_emulator(tmp_path: Path) -> None:
    async with (
        Emulator(state_dir=tmp_path / "s", creation_limit=2, creation_window=60) as emu,
        SpritesClient(emu.token, base_url=emu.url, retry=RetryPolicy.none()) as c,
    ):
        await c.sprites.create("r1")
        await c.sprites.create("r2")
        with pytest.raises(RateLimitError) as err:
            await c.sprites.create("r3")
    assert err.value.code == "sprite_creation_rate_limited"
    assert err.value.limit == 2
    assert err.value.retry_after is not None


async def test_missing_sprite_500_is_treated_as_missing(
    emu: Emulator, client: SpritesClient
) -> None:
    emu.faults.missing_sprite_500 = True
    with pytest.raises(ServerError) as err:
        await client.sprites.get("ghost")
    assert err.value.possibly_not_found
    assert await client.sprites.delete("ghost", missing_ok=True) is False


async def test_connection_reset_surfaces_as_connection_error(emu: Emulator) -> None:
    async with SpritesClient(emu.token, base_url=emu.url, retry=RetryPolicy.none()) as c:
        # aiohttp itself re-sends an idempotent request once on a dropped
        # keep-alive connection, so a POST is used to see the reset.
        emu.faults.update(
            {"reset_count": 1, "error_path": "^/v1/sprites$", "error_methods": ["POST"]}
        )
        with pytest.raises(SpritesConnectionError):
            await c.sprites.create("reset")


async def test_slow_response_hits_the_read_timeout(emu: Emulator) -> None:
    async with SpritesClient(
        emu.token, base_url=emu.url, timeout=Timeouts(read=0.2), retry=RetryPolicy.none()
    ) as c:
        emu.faults.latency = 1.0
        with pytest.raises(SpritesTimeoutError):
            await c.sprites.list()


async def test_get_or_create_and_delete_many(client: SpritesClient) -> None:
    _, created = await client.sprites.get_or_create("goc")
    assert created
    _, created = await client.sprites.get_or_create("goc")
    assert not created
    for i in range(5):
        await client.sprites.create(f"tmpx-{i}", labels=["tmp"] if i % 2 == 0 else [])
    report = await client.sprites.delete_many(prefix="tmpx-", labels=["tmp"], concurrency=2)
    assert sorted(report.deleted) == ["tmpx-0", "tmpx-2", "tmpx-4"]
    left = [s.name async for s in client.sprites.list(prefix="tmpx-")]
    assert left == ["tmpx-1", "tmpx-3"]


async def test_temporary_sprite_is_deleted_even_when_cancelled(client: SpritesClient) -> None:
    entered = asyncio.Event()
    names: list[str] = []

    async def use() -> None:
        async with client.sprites.temporary(prefix="tmp-") as sprite:
            names.append(sprite.name)
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.ensure_future(use())
    await entered.wait()
    assert [s.name async for s in client.sprites.list(prefix="tmp-")] == names
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [s.name async for s in client.sprites.list(prefix="tmp-")] == []


async def test_wait_until_sees_the_lifecycle(emu: Emulator, client: SpritesClient) -> None:
    await client.sprites.create("life")
    sprite = client.sprite("life")
    result = await sprite.exec("true")
    assert result.exit_code == 0
    info = await sprite.wait_until({"running", "warm"}, timeout=10, poll_interval=0.05)
    assert info.status in {"running", "warm"}
    assert info.last_running_at is not None
