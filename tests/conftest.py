"""Shared fixtures for the client tests."""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import aioresponses.core as aioresponses_core
import pytest
from aiohttp import ClientResponse
from aioresponses import aioresponses

from sprites_async import RetryPolicy, SpritesClient

BASE = "https://api.test"
TOKEN = "my-org/1234/tokid/supersecretvalue"


def url(path: str) -> re.Pattern[str]:
    """Match ``BASE + path`` with any query string."""
    return re.compile(re.escape(BASE + path) + r"(\?.*)?$")


def sprite_json(name: str = "alpha", **extra: Any) -> dict[str, Any]:
    """A sprite object in the April-2026 shape."""
    data: dict[str, Any] = {
        "id": f"sprite-0000-{name}",
        "name": name,
        "organization": "my-org",
        "status": "cold",
        "version": None,
        "url": f"https://{name}-abcde.sprites.app",
        "url_settings": {"auth": "sprite"},
        "created_at": "2026-04-03T03:02:18.641609Z",
        "updated_at": "2026-04-03T03:02:18.641609Z",
        "last_running_at": None,
        "last_warming_at": None,
        "environment_version": None,
    }
    data.update(extra)
    return data


class _CompatClientResponse(ClientResponse):
    """aioresponses 0.7.9 predates the ``stream_writer`` argument that aiohttp
    3.14 made required (pnuckowski/aioresponses#289, still open); supply an
    already-finished writer so its fake responses can be built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(*args, **kwargs)


_NEEDS_STREAM_WRITER = "stream_writer" in inspect.signature(ClientResponse.__init__).parameters


@pytest.fixture
def mock(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses]:
    if _NEEDS_STREAM_WRITER:
        monkeypatch.setattr(aioresponses_core, "ClientResponse", _CompatClientResponse)
    with aioresponses() as m:
        yield m


@pytest.fixture
async def client() -> AsyncIterator[SpritesClient]:
    async with SpritesClient(
        TOKEN, base_url=BASE, retry=RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)
    ) as c:
        yield c


def requests_to(m: aioresponses, method: str, path: str) -> list[Any]:
    """The recorded calls of one method to one path (any query)."""
    out = []
    for (meth, u), calls in m.requests.items():
        if meth == method and str(u).split("?")[0] == BASE + path:
            out.extend(calls)
    return out
