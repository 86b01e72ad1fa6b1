"""``ports.watch()``: events from a scripted loopback server; 404 from a server without it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sprites_async import NotFoundError, RetryPolicy, SpritesClient, SpritesConnectionError
from sprites_async._ports import (
    PortClosed,
    PortInfo,
    PortList,
    PortOpened,
    PortsResource,
    PortsWatchNotSupportedError,
)
from sprites_async._streams import OtherEvent

MESSAGES = [
    '{"type":"port_list","ports":[{"type":"port_opened","port":3000,'
    '"address":"10.0.0.2","pid":1847}]}',
    "not json",
    '{"type":"port_opened","port":8080,"address":"10.0.0.2","pid":2001}',
    '{"type":"debug","msg":"something new"}',
    '{"type":"port_closed","port":3000,"address":"10.0.0.2","pid":1847}',
]


@pytest.fixture
async def ports_client(request: pytest.FixtureRequest) -> AsyncIterator[SpritesClient]:
    close_code: int = getattr(request, "param", 1000)

    async def watch(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for message in MESSAGES:
            await ws.send_str(message)
        await ws.close(code=close_code)
        return ws

    app = web.Application()
    app.router.add_get("/v1/sprites/box/ports/watch", watch)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base_url = str(server.make_url("")).rstrip("/")
    try:
        async with SpritesClient("t", base_url=base_url, retry=RetryPolicy(max_attempts=1)) as c:
            yield c
    finally:
        await server.close()


async def test_watch_yields_typed_events(ports_client: SpritesClient) -> None:
    events = [e async for e in PortsResource(ports_client.sprite("box")).watch()]
    assert events[0] == PortList(ports=[PortInfo(port=3000, address="10.0.0.2", pid=1847)])
    assert events[1] == PortOpened(port=8080, address="10.0.0.2", pid=2001)
    assert isinstance(events[2], OtherEvent) and events[2].type == "debug"
    assert events[3] == PortClosed(port=3000, address="10.0.0.2", pid=1847)
    assert len(events) == 4
    assert [e.type for e in events] == ["port_list", "port_opened", "debug", "port_closed"]


async def test_watch_as_a_context_manager_can_stop_early(ports_client: SpritesClient) -> None:
    async with PortsResource(ports_client.sprite("box")).watch() as watch:
        async for event in watch:
            assert isinstance(event, PortList)
            break


@pytest.mark.parametrize("ports_client", [1011], indirect=True)
async def test_abnormal_close_raises(ports_client: SpritesClient) -> None:
    seen: list[object] = []

    async def consume() -> None:
        async for event in PortsResource(ports_client.sprite("box")).watch():
            seen.append(event)

    with pytest.raises(SpritesConnectionError, match="1011"):
        await consume()
    assert len(seen) == 4


@pytest.fixture
async def old_server() -> AsyncIterator[str]:
    """A sprite layer without ``/ports/watch``: a bare 404 for ``box``, 404 JSON for ``ghost``."""

    async def missing_sprite(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "sprite not found"}, status=404)

    app = web.Application()
    app.router.add_get("/v1/sprites/ghost/ports/watch", missing_sprite)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def test_not_supported_is_a_clear_error(old_server: str) -> None:
    policy = RetryPolicy(max_attempts=1)
    async with SpritesClient("t", base_url=old_server, retry=policy) as client:
        with pytest.raises(PortsWatchNotSupportedError, match="does not support") as caught:
            async for _ in PortsResource(client.sprite("box")).watch():
                pass
        assert caught.value.status_code == 404
        with pytest.raises(NotFoundError) as missing:
            async for _ in PortsResource(client.sprite("ghost")).watch():
                pass
        assert not isinstance(missing.value, PortsWatchNotSupportedError)
