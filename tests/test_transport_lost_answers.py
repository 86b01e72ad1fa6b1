"""Lost answers and absent endpoints, against the emulator's quirks.

``post-answer-lost``: the server commits a POST, then drops the connection
before answering. The SDK must raise a connection error and must not send
the POST again (it may have taken effect, and here it did).

``no-*``: a sprite server older than the SDK lacks a route and answers Go's
``404 page not found``; the SDK raises a :class:`NotFoundError` that says the
endpoint is missing (``code="route_not_found"``), never a misleading
"no such service/checkpoint", and never hangs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aiohttp
import pytest

from sprites_async import (
    NotFoundError,
    RetryPolicy,
    SpritesClient,
    SpritesConnectionError,
)
from sprites_async._checkpoints import CheckpointNotFoundError
from sprites_async._ports import PortsWatchNotSupportedError
from sprites_async._services import ServiceNotFoundError
from sprites_async.emulator import Emulator
from tests._wire import Sent

# Retries on, with no waiting: a re-send would happen, and be seen, at once.
RETRY = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(sandbox="none", exit_linger=0.0) as running:
        yield running


@pytest.fixture
async def sent() -> Sent:
    return Sent()


@pytest.fixture
async def client(emu: Emulator, sent: Sent) -> AsyncIterator[SpritesClient]:
    async with emu.client(retry=RETRY, trace_configs=[sent.trace]) as c:
        yield c


# --------------------------------------------------------------- lost answers


async def test_create_whose_answer_is_lost_is_not_resent(
    emu: Emulator, client: SpritesClient, sent: Sent
) -> None:
    emu.quirks.add("post-answer-lost")
    with pytest.raises(SpritesConnectionError) as info:
        await client.sprites.create("lost-one")
    assert info.value.operation == "create sprite"
    assert sent.count("POST", "/v1/sprites") == 1
    assert "lost-one" in emu.state.sprites  # the creation happened, once
    info_, created = await client.sprites.get_or_create("lost-one")
    assert (info_.name, created) == ("lost-one", False)
    assert sent.count("POST", "/v1/sprites") == 1


async def test_the_quirk_loses_only_the_first_answer_of_each_path(
    emu: Emulator, client: SpritesClient
) -> None:
    # Without this, "not re-sent" above could mean "the second answer was lost too".
    emu.quirks.add("post-answer-lost")
    with pytest.raises(SpritesConnectionError):
        await client.sprites.create("first")
    assert (await client.sprites.create("second")).name == "second"


async def test_checkpoint_create_whose_answer_is_lost_is_not_resent(
    emu: Emulator, client: SpritesClient, sent: Sent
) -> None:
    sprite = client.sprite((await client.sprites.create("cp")).name)
    before = {c.id for c in await sprite.checkpoints.list()}
    emu.quirks.add("post-answer-lost")
    with pytest.raises(SpritesConnectionError):
        await sprite.checkpoints.create("lost answer")
    assert sent.count("POST", "/checkpoint") == 1
    made = [c for c in await sprite.checkpoints.list() if c.id not in before]
    assert [c.comment for c in made] == ["lost answer"]


async def test_fs_rename_whose_answer_is_lost_is_not_resent(
    emu: Emulator, client: SpritesClient, sent: Sent
) -> None:
    fs = client.sprite((await client.sprites.create("files")).name).fs()
    await (fs / "a.txt").write_bytes(b"payload")
    emu.quirks.add("post-answer-lost")
    with pytest.raises(SpritesConnectionError):
        await (fs / "a.txt").rename(fs / "b.txt")
    assert sent.count("POST", "/fs/rename") == 1
    assert await (fs / "b.txt").read_bytes() == b"payload"
    assert not await (fs / "a.txt").exists()


async def test_fs_copy_whose_answer_is_lost_is_not_resent(
    emu: Emulator, client: SpritesClient, sent: Sent
) -> None:
    # Once dest exists a repeated copy may land inside it (cp -r style), so a
    # lost answer is reported, not recovered by a second attempt.
    fs = client.sprite((await client.sprites.create("files")).name).fs()
    await (fs / "dir" / "a.txt").write_bytes(b"payload")
    emu.quirks.add("post-answer-lost")
    with pytest.raises(SpritesConnectionError):
        await (fs / "dir").copy(fs / "copy")
    assert sent.count("POST", "/fs/copy") == 1
    assert await (fs / "copy" / "a.txt").read_bytes() == b"payload"
    assert [p.name async for p in (fs / "copy").iterdir()] == ["a.txt"]  # not nested


# ---------------------------------------------------------- absent endpoints


async def _outcome(op: Awaitable[Any]) -> Any:
    return await op


def _route_missing(exc: BaseException, endpoint: str) -> None:
    assert isinstance(exc, NotFoundError)
    assert exc.code == "route_not_found"
    assert endpoint in str(exc) and "older version" in str(exc)


async def test_no_ports_watch(emu: Emulator, client: SpritesClient) -> None:
    await client.sprites.create("box")
    emu.quirks.add("no-ports-watch")

    async def watch() -> None:
        async for _ in client.sprite("box").ports.watch():
            pass

    with pytest.raises(PortsWatchNotSupportedError) as info:
        await asyncio.wait_for(watch(), 30)
    assert isinstance(info.value, NotFoundError)


async def test_no_http_exec_has_no_fallback(emu: Emulator, client: SpritesClient) -> None:
    await client.sprites.create("box")
    emu.quirks.add("no-http-exec")
    with pytest.raises(NotFoundError) as info:
        await asyncio.wait_for(client.sprite("box").run_http("echo", "hi"), 30)
    _route_missing(info.value, "POST /v1/sprites/box/exec")
    # The WebSocket exec is unaffected: that is the way to run the command.
    assert (await client.sprite("box").exec("echo", "hi")).stdout == b"hi\n"


async def test_no_service_logs_and_no_service_restart(emu: Emulator, client: SpritesClient) -> None:
    await client.sprites.create("box")
    services = client.sprite("box").services
    await services.create("svc", cmd="sleep", args=["30"], duration=0.2)
    emu.quirks.add("no-service-logs", "no-service-restart")
    with pytest.raises(NotFoundError) as info:
        await asyncio.wait_for(_outcome(services.logs("svc")), 30)
    assert not isinstance(info.value, ServiceNotFoundError)
    _route_missing(info.value, "/services/svc/logs")
    with pytest.raises(NotFoundError) as info:
        await asyncio.wait_for(_outcome(services.restart("svc")), 30)
    assert not isinstance(info.value, ServiceNotFoundError)
    _route_missing(info.value, "/services/svc/restart")
    await services.delete("svc")


async def test_no_checkpoint_delete(emu: Emulator, client: SpritesClient) -> None:
    sprite = client.sprite((await client.sprites.create("box")).name)
    made = await sprite.checkpoints.create("keep")
    emu.quirks.add("no-checkpoint-delete")
    with pytest.raises(NotFoundError) as info:
        await asyncio.wait_for(sprite.checkpoints.delete(made.id), 30)
    assert not isinstance(info.value, CheckpointNotFoundError)
    _route_missing(info.value, f"/checkpoints/{made.id}")
    assert made.id in {c.id for c in await sprite.checkpoints.list()}


async def test_an_unknown_sprite_is_still_sprite_not_found(
    emu: Emulator, client: SpritesClient
) -> None:
    emu.quirks.add("old-server")
    with pytest.raises(NotFoundError) as info:
        await client.sprite("ghost").run_http("true")
    assert info.value.code != "route_not_found"


# ------------------------------------------------------------- the raw answers


@pytest.mark.parametrize(
    ("quirk", "method", "path"),
    [
        ("no-ports-watch", "GET", "/ports/watch"),
        ("no-http-exec", "POST", "/exec?cmd=true"),
        ("no-service-logs", "GET", "/services/svc/logs"),
        ("no-service-restart", "POST", "/services/svc/restart"),
        ("no-checkpoint-delete", "DELETE", "/checkpoints/v0"),
    ],
)
async def test_absent_routes_answer_like_a_go_mux(
    emu: Emulator, client: SpritesClient, quirk: str, method: str, path: str
) -> None:
    await client.sprites.create("box")
    emu.quirks.add(quirk)
    auth = {"Authorization": f"Bearer {emu.token}"}
    async with aiohttp.ClientSession() as http:
        url = f"{emu.url}/v1/sprites/box{path}"
        async with http.request(method, url, headers=auth) as resp:
            assert resp.status == 404
            assert await resp.text() == "404 page not found\n"
            assert resp.content_type == "text/plain"
            assert "Sprite-Version" in resp.headers  # the sprite's server answered
        async with http.request(method, f"{emu.url}/v1/sprites/ghost{path}", headers=auth) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "sprite not found"
        emu.quirks.discard(quirk)
        async with http.request(method, url, headers=auth) as resp:
            assert resp.status != 404 or (await resp.text()) != "404 page not found\n"


async def test_a_lost_answer_is_a_dropped_connection_then_answers_resume(emu: Emulator) -> None:
    emu.quirks.add("post-answer-lost")
    auth = {"Authorization": f"Bearer {emu.token}"}
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with http.post(f"{emu.url}/v1/sprites", json={"name": "a"}, headers=auth):
                pass
        assert "a" in emu.state.sprites
        async with http.post(f"{emu.url}/v1/sprites", json={"name": "b"}, headers=auth) as resp:
            assert resp.status == 201
        # Not POST: never lost.
        async with http.get(f"{emu.url}/v1/sprites/a", headers=auth) as resp:
            assert resp.status == 200
