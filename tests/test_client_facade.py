"""The base client (configuration, lifecycle, seams) and the facade that adds resources.

Also the per-client state of features: kept on the client, made on first use
by the feature's own module, never shared between clients, closed with the
client.
"""

from __future__ import annotations

import asyncio
import gc
import weakref

from aioresponses import aioresponses

import sprites_async
from sprites_async import SpritesClient
from sprites_async._client import SpritesClient as FacadeClient
from sprites_async._control import forget_sprite, pool_for
from sprites_async._proxy import tunnels_for
from sprites_async._session import BaseClient
from tests._mock import BASE, TOKEN, sprite_json, url


def test_the_facade_is_the_base_client_plus_resources() -> None:
    assert sprites_async.SpritesClient is FacadeClient
    assert issubclass(SpritesClient, BaseClient)
    base = BaseClient(TOKEN, base_url=BASE)
    assert not hasattr(base, "sprites")
    assert not hasattr(base, "sprite")
    client = SpritesClient(TOKEN, base_url=BASE)
    assert client.sprite("alpha").client is client


def test_repr_names_the_class() -> None:
    assert repr(BaseClient(TOKEN, base_url=BASE)).startswith("<BaseClient base_url=")
    assert repr(SpritesClient(TOKEN, base_url=BASE)).startswith("<SpritesClient base_url=")


async def test_a_base_client_makes_calls_on_its_own(mock: aioresponses) -> None:
    mock.get(url("/v1/sprites/alpha"), payload=sprite_json())
    async with BaseClient(TOKEN, base_url=BASE) as base:
        assert type(base) is BaseClient
        response = await base._request("GET", "/v1/sprites/alpha", operation="get sprite")
        assert response.status == 200
    assert base.closed


def test_feature_state_starts_empty() -> None:
    client = SpritesClient(TOKEN, base_url=BASE)
    assert client._control_pool is None
    assert client._tunnels is None
    assert client._legacy_attach == set()
    assert client._fleet_limiter is None
    assert SpritesClient(TOKEN, base_url=BASE)._legacy_attach is not client._legacy_attach


async def test_the_control_pool_is_made_once_per_client_and_closed_with_it() -> None:
    first = SpritesClient(TOKEN, base_url=BASE)
    second = SpritesClient(TOKEN, base_url=BASE)
    pool = pool_for(first)
    assert first._control_pool is pool
    assert pool_for(first) is pool
    assert pool_for(second) is not pool
    await first.aclose()
    assert pool._closed
    assert second._control_pool is not None and not second._control_pool._closed
    await second.aclose()
    assert second._control_pool._closed


async def test_forgetting_a_sprite_makes_no_pool() -> None:
    async with SpritesClient(TOKEN, base_url=BASE) as client:
        forget_sprite(client, "alpha")
        assert client._control_pool is None


async def test_the_tunnels_are_made_once_per_client_and_ended_with_it() -> None:
    first = SpritesClient(TOKEN, base_url=BASE)
    second = SpritesClient(TOKEN, base_url=BASE)
    tunnels = tunnels_for(first)
    assert first._tunnels is tunnels
    assert tunnels_for(first) is tunnels
    assert tunnels_for(second) is not tunnels
    relay = asyncio.ensure_future(asyncio.sleep(3600))  # stands for a relay task
    tunnels.tasks.add(relay)
    await first.aclose()
    assert relay.cancelled()
    assert second._tunnels is not None and not second._tunnels.tasks
    await second.aclose()


async def test_a_closed_client_with_feature_state_can_be_collected() -> None:
    # A module-level registry keyed weakly by the client never let go of a
    # client that used /control: its pool, the registry's value, holds it.
    client = SpritesClient(TOKEN, base_url=BASE)
    pool_for(client)
    tunnels_for(client)
    await client.aclose()
    ref = weakref.ref(client)
    del client
    gc.collect()
    assert ref() is None
