"""Checkpoints against the emulator over loopback, including checkpoint -> change -> restore."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sprites_async import ConflictError, NotFoundError, SpritesClient
from sprites_async._checkpoints import (
    Checkpoint,
    CheckpointComplete,
    CheckpointError,
    CheckpointInfo,
    CheckpointNotFoundError,
    CheckpointsResource,
)
from sprites_async._fs import SpriteFS
from sprites_async._paging import ListPage


async def collect(events: AsyncIterator[object], into: list[object]) -> None:
    async for event in events:
        into.append(event)


@pytest.fixture
def checkpoints(emu_client: SpritesClient) -> CheckpointsResource:
    return CheckpointsResource(emu_client.sprite("box"))


@pytest.fixture
def fs(emu_client: SpritesClient) -> SpriteFS:
    return SpriteFS(emu_client.sprite("box"))


async def test_checkpoint_change_restore_brings_files_back(
    checkpoints: CheckpointsResource, fs: SpriteFS
) -> None:
    await (fs / "app" / "config.json").write_text('{"v": 1}')
    await (fs / "keep.txt").write_text("keep")
    cp = await checkpoints.create(comment="before change")
    assert isinstance(cp, Checkpoint)
    assert cp.id == "v1" and cp.comment == "before change"

    await (fs / "app" / "config.json").write_text('{"v": 2}')
    await (fs / "keep.txt").unlink()
    await (fs / "new.txt").write_text("new")

    await checkpoints.restore(cp.id)

    assert await (fs / "app" / "config.json").read_text() == '{"v": 1}'
    assert await (fs / "keep.txt").read_text() == "keep"
    assert not await (fs / "new.txt").exists()


async def test_create_streams_typed_events(checkpoints: CheckpointsResource) -> None:
    events = [event async for event in checkpoints.create(comment="iterated")]
    assert isinstance(events[0], CheckpointInfo)
    assert events[0].data == "Creating checkpoint..."
    assert events[0].type == "info" and events[-1].type == "complete"
    assert events[0].timestamp is not None
    assert isinstance(events[-1], CheckpointComplete)
    assert "v1" in events[-1].data
    assert any(isinstance(e, CheckpointInfo) and "ID: v1" in e.data for e in events)


async def test_iterate_then_await_gives_the_checkpoint(checkpoints: CheckpointsResource) -> None:
    op = checkpoints.create()
    async with op:
        async for _ in op:
            pass
    cp = await op
    assert cp.id == "v1" and not cp.comment


async def test_list_get_delete(checkpoints: CheckpointsResource) -> None:
    first = await checkpoints.create(comment="one")
    second = await checkpoints.create(comment="two")
    listed = await checkpoints.list()
    assert [cp.id for cp in listed] == [second.id, first.id, "v0"]
    assert all(not cp.is_current for cp in listed)
    with_current = await checkpoints.list(include_current=True)
    assert with_current[0].is_current and len(with_current) == 4

    got = await checkpoints.get(first.id)
    assert got.id == first.id and got.comment == "one"
    assert got.create_time is not None

    with pytest.raises(ConflictError):
        await checkpoints.delete(second.id)  # the active one
    await checkpoints.delete(first.id)
    assert [cp.id for cp in await checkpoints.list()] == [second.id, "v0"]
    with pytest.raises(CheckpointNotFoundError):
        await checkpoints.delete(first.id)
    with pytest.raises(CheckpointNotFoundError) as caught:
        await checkpoints.get("v99")
    assert isinstance(caught.value, NotFoundError)


async def test_list_pages_like_sprites_list(checkpoints: CheckpointsResource) -> None:
    made = await checkpoints.create(comment="one")
    page = await checkpoints.list()
    # The one page there is: a list, and what the paginator reads of a page.
    assert isinstance(page, ListPage) and isinstance(page, list)
    assert page.items is page and page.next_token is None
    assert page[0].id == made.id and len(page) == 2  # and v0
    assert [cp.id async for cp in checkpoints.list()] == [cp.id for cp in page]
    pages = [p async for p in checkpoints.list(include_current=True).pages()]
    assert len(pages) == 1 and pages[0][0].is_current


async def test_restore_of_unknown_id_raises_with_the_servers_message(
    checkpoints: CheckpointsResource,
) -> None:
    with pytest.raises(CheckpointError) as caught:
        await checkpoints.restore("nonexistent")
    err = caught.value
    assert err.checkpoint_id == "nonexistent"
    assert err.server_message is not None and "checkpoint not found" in err.server_message
    assert "checkpoint not found" in str(err)

    seen: list[object] = []
    with pytest.raises(CheckpointError):
        await collect(checkpoints.restore("nonexistent"), seen)
    assert [type(e) for e in seen] == [CheckpointInfo]


async def test_guard_restores_on_error_and_reraises(
    checkpoints: CheckpointsResource, fs: SpriteFS
) -> None:
    await (fs / "state.txt").write_text("good")

    async def failing_block() -> None:
        async with checkpoints.guard(comment="guarded") as cp:
            assert cp.comment == "guarded"
            await (fs / "state.txt").write_text("broken")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await failing_block()
    assert await (fs / "state.txt").read_text() == "good"

    async with checkpoints.guard():
        await (fs / "state.txt").write_text("changed")
    assert await (fs / "state.txt").read_text() == "changed"  # nothing restored on success


async def test_missing_sprite(emu_client: SpritesClient) -> None:
    ghost = CheckpointsResource(emu_client.sprite("ghost"))
    for call in (ghost.list(), ghost.get("v1"), ghost.create(), ghost.restore("v1")):
        with pytest.raises(NotFoundError) as caught:
            await call
        assert not isinstance(caught.value, CheckpointNotFoundError)


def test_ids_are_checked_before_the_network(checkpoints: CheckpointsResource) -> None:
    with pytest.raises(ValueError, match="checkpoint id"):
        checkpoints.restore("")
    with pytest.raises(TypeError):
        checkpoints.restore(1)  # type: ignore[arg-type]


async def test_guard_restores_when_the_block_is_cancelled(
    checkpoints: CheckpointsResource, fs: SpriteFS
) -> None:
    await (fs / "state.txt").write_text("good")
    entered = asyncio.Event()

    async def block() -> None:
        async with checkpoints.guard():
            await (fs / "state.txt").write_text("half-done")
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.ensure_future(block())
    await asyncio.wait_for(entered.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await (fs / "state.txt").read_text() == "good"
