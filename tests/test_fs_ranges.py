"""Range reads against servers that honour or ignore ranges (a loopback aiohttp app)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sprites_async import ProtocolError, SpritesClient
from sprites_async._fs import SpriteFS

DATA = bytes(range(256)) * 64  # 16 KiB


def make_app(mode: str) -> web.Application:
    """``ignore``: 200 + whole file; ``partial``: 206 + Content-Range from the Range header."""

    async def read(request: web.Request) -> web.StreamResponse:
        assert "offset" not in request.query  # the range travels as a Range header only
        spec = request.headers.get("Range")
        if mode == "ignore" or spec is None:
            return web.Response(body=DATA, content_type="application/octet-stream")
        first, _, last = spec.removeprefix("bytes=").partition("-")
        offset = int(first)
        if offset >= len(DATA):
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(DATA)}"})
        end = len(DATA) if not last else min(len(DATA), int(last) + 1)
        start = max(0, offset - 3) if mode == "early" else offset  # starts before the ask
        if mode == "bad-range":
            return web.Response(status=206, body=b"", headers={"Content-Range": "items 0-1/2"})
        if mode == "late":
            start = offset + 1
        return web.Response(
            status=206,
            body=DATA[start:end],
            headers={"Content-Range": f"bytes {start}-{end - 1}/{len(DATA)}"},
        )

    async def listing(request: web.Request) -> web.StreamResponse:
        entry = {"name": "f", "path": "/f", "type": "file", "size": len(DATA), "mode": "644"}
        return web.json_response({"path": "/", "count": 1, "entries": [entry]})

    app = web.Application()
    app.router.add_get("/v1/sprites/box/fs/read", read)
    app.router.add_get("/v1/sprites/box/fs/list", listing)
    return app


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[TestServer]:
    server = TestServer(make_app(request.param), host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def read_range(server: TestServer, **kw: int) -> bytes:
    async with SpritesClient("t", base_url=str(server.make_url("")).rstrip("/")) as client:
        p = SpriteFS(client.sprite("box"), root="/") / "f"
        async with p.open_read(**kw) as stream:
            return await stream.read()


CASES = [
    {},
    {"offset": 100},
    {"offset": 100, "length": 1000},
    {"length": 10},
    {"offset": len(DATA) - 5, "length": 50},
    {"offset": 7, "length": 3, "chunk_size": 2},
]


@pytest.mark.parametrize("server", ["ignore", "partial", "early"], indirect=True)
@pytest.mark.parametrize("kw", CASES)
async def test_exact_range_whatever_the_server_does(server: TestServer, kw: dict[str, int]) -> None:
    offset = kw.get("offset", 0)
    length = kw.get("length")
    want = DATA[offset:] if length is None else DATA[offset : offset + length]
    assert await read_range(server, **kw) == want


@pytest.mark.parametrize("server", ["late", "bad-range"], indirect=True)
async def test_unusable_partial_answers_raise(server: TestServer) -> None:
    with pytest.raises(ProtocolError):
        await read_range(server, offset=10, length=10)


@pytest.mark.parametrize("server", ["partial"], indirect=True)
async def test_range_past_the_end_reads_nothing(server: TestServer) -> None:
    assert await read_range(server, offset=len(DATA) + 10, length=5) == b""
