"""Sprite management calls against aioresponses: requests sent, results decoded."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import pytest
from aioresponses import aioresponses

from sprites_async import (
    ConflictError,
    NotFoundError,
    ServerError,
    Sprite,
    SpritesClient,
)
from sprites_async.types import SpriteInfo, SpritePage
from tests._mock import BASE, requests_to, sprite_json, url


def body_of(call: Any) -> Any:
    return json.loads(call.kwargs["data"])


# --------------------------------------------------------------------------- create


async def test_create_sends_the_documented_body(client: SpritesClient, mock: aioresponses) -> None:
    mock.post(url("/v1/sprites"), status=201, payload=sprite_json("scratch", labels=["ci"]))
    info = await client.sprites.create(
        "scratch", labels=["ci"], url_auth="public", wait_for_capacity=True
    )
    assert isinstance(info, SpriteInfo)
    assert info.name == "scratch"
    assert info.labels == ["ci"]
    (call,) = requests_to(mock, "POST", "/v1/sprites")
    assert body_of(call) == {
        "name": "scratch",
        "url_settings": {"auth": "public"},
        "labels": ["ci"],
        "wait_for_capacity": True,
    }
    assert call.kwargs["headers"]["Content-Type"] == "application/json"


async def test_create_minimal_body(client: SpritesClient, mock: aioresponses) -> None:
    mock.post(url("/v1/sprites"), status=201, payload=sprite_json("a"))
    await client.sprites.create("a")
    (call,) = requests_to(mock, "POST", "/v1/sprites")
    assert body_of(call) == {"name": "a"}


async def test_create_duplicate_raises_conflict(client: SpritesClient, mock: aioresponses) -> None:
    msg = "A sprite named 'a' already exists. Please choose a different name."
    mock.post(url("/v1/sprites"), status=409, payload={"error": msg})
    with pytest.raises(ConflictError) as info:
        await client.sprites.create("a")
    assert info.value.message == msg


@pytest.mark.parametrize(
    "name", ["", "UPPER", "-lead", "has_underscore", "a" * 64, "sp ace", "dot.ted", "ünï"]
)
async def test_create_refuses_names_outside_the_rule_before_the_network(
    client: SpritesClient, mock: aioresponses, name: str
) -> None:
    with pytest.raises(ValueError, match="invalid sprite name"):
        await client.sprites.create(name)
    with pytest.raises(ValueError, match="invalid sprite name"):
        await client.sprites.get_or_create(name)
    assert not mock.requests


@pytest.mark.parametrize("name", ["UPPER", "-lead", "has_underscore", "a" * 64, "sp ace", "ünï"])
async def test_other_calls_reach_sprites_named_outside_the_create_rule(
    client: SpritesClient, mock: aioresponses, name: str
) -> None:
    path = "/v1/sprites/" + quote(name, safe="")
    mock.get(url(path), payload=sprite_json(name))
    mock.put(url(path), payload=sprite_json(name))
    mock.delete(url(path), status=204)
    mock.post(url(path + "/upgrade"), status=204)
    assert (await client.sprites.get(name)).name == name
    assert (await client.sprite(name).update(url_auth="public")).name == name
    assert await client.sprites.delete(name)
    await client.sprite(name).upgrade()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "nul\x00", "bell\x07", "del\x7f"])
async def test_names_no_server_could_hold_are_refused_everywhere(
    client: SpritesClient, mock: aioresponses, name: str
) -> None:
    for call in (
        client.sprites.get(name),
        client.sprites.update(name, url_auth="public"),
        client.sprites.delete(name),
        client.sprites.upgrade(name),
    ):
        with pytest.raises(ValueError):
            await call
    with pytest.raises(ValueError):
        client.sprite(name)
    assert not mock.requests


async def test_non_string_name_is_a_type_error(client: SpritesClient) -> None:
    with pytest.raises(TypeError):
        await client.sprites.get(123)  # type: ignore[arg-type]


async def test_bad_url_auth_and_labels_are_refused(
    client: SpritesClient, mock: aioresponses
) -> None:
    with pytest.raises(ValueError, match="url_auth"):
        await client.sprites.create("a", url_auth="private")
    with pytest.raises(TypeError, match="labels"):
        await client.sprites.create("a", labels="prod")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label"):
        await client.sprites.create("a", labels=["ok", ""])
    with pytest.raises(ValueError, match="url_auth"):
        await client.sprites.update("a", url_auth="nobody")
    with pytest.raises(ValueError, match="needs"):
        await client.sprites.update("a")
    assert not mock.requests


# ------------------------------------------------------------- get / update / delete


async def test_get_decodes_every_field(client: SpritesClient, mock: aioresponses) -> None:
    mock.get(
        url("/v1/sprites/alpha"),
        payload=sprite_json(
            status="running",
            labels=["prod"],
            last_running_at="2026-04-03T03:02:48Z",
            version="0.0.1-rc35",
            some_future_field={"x": 1},
        ),
    )
    info = await client.sprites.get("alpha")
    assert info.status == "running" and info.is_running
    assert info.labels == ["prod"]
    assert info.url_settings is not None and info.url_settings.auth == "sprite"
    assert info.created_at == datetime(2026, 4, 3, 3, 2, 18, 641609, tzinfo=timezone.utc)
    assert info.last_running_at == datetime(2026, 4, 3, 3, 2, 48, tzinfo=timezone.utc)
    assert info.last_warming_at is None
    assert info.version == "0.0.1-rc35"


async def test_missing_optional_fields_stay_none(client: SpritesClient, mock: aioresponses) -> None:
    mock.get(url("/v1/sprites/alpha"), payload={"name": "alpha", "status": "hibernating"})
    info = await client.sprites.get("alpha")
    assert info.status == "hibernating"  # unknown statuses are kept, not refused
    assert info.created_at is None and info.updated_at is None and info.id is None
    assert info.labels == []


async def test_update_sends_partial_body(client: SpritesClient, mock: aioresponses) -> None:
    mock.put(url("/v1/sprites/alpha"), payload=sprite_json(labels=["x"]))
    info = await client.sprites.update("alpha", labels=["x"])
    assert info.labels == ["x"]
    (call,) = requests_to(mock, "PUT", "/v1/sprites/alpha")
    assert body_of(call) == {"labels": ["x"]}


async def test_delete_and_missing_ok(client: SpritesClient, mock: aioresponses) -> None:
    mock.delete(url("/v1/sprites/alpha"), status=204, body="")
    assert await client.sprites.delete("alpha") is True
    mock.delete(url("/v1/sprites/alpha"), status=404, payload={"error": "sprite not found"})
    assert await client.sprites.delete("alpha", missing_ok=True) is False
    mock.delete(url("/v1/sprites/alpha"), status=404, payload={"error": "sprite not found"})
    with pytest.raises(NotFoundError):
        await client.sprites.delete("alpha")


async def test_delete_missing_ok_absorbs_the_incident_500(mock: aioresponses) -> None:
    from sprites_async import RetryPolicy
    from tests._mock import TOKEN

    async with SpritesClient(TOKEN, base_url=BASE, retry=RetryPolicy.none()) as c:
        mock.delete(
            url("/v1/sprites/alpha"), status=500, payload={"error": "failed to delete sprite"}
        )
        assert await c.sprites.delete("alpha", missing_ok=True) is False
        mock.delete(url("/v1/sprites/alpha"), status=500, payload={"error": "disk on fire"})
        with pytest.raises(ServerError):
            await c.sprites.delete("alpha", missing_ok=True)


async def test_upgrade_posts_without_body(client: SpritesClient, mock: aioresponses) -> None:
    mock.post(url("/v1/sprites/alpha/upgrade"), status=204, body="")
    await client.sprites.upgrade("alpha")
    (call,) = requests_to(mock, "POST", "/v1/sprites/alpha/upgrade")
    assert call.kwargs["data"] is None


# --------------------------------------------------------------------------- listing


def page(names: list[str], token: str | None, has_more: bool, **extra: Any) -> dict[str, Any]:
    return {
        "sprites": [sprite_json(n) for n in names],
        "has_more": has_more,
        "next_continuation_token": token,
        **extra,
    }


async def test_await_list_returns_one_page_with_counters(
    client: SpritesClient, mock: aioresponses
) -> None:
    mock.get(
        url("/v1/sprites"),
        payload=page(
            ["a", "b"],
            "2",
            True,
            name="my-org",
            running=2,
            warm=4,
            cold=44,
            running_limit=20,
            warm_limit=20,
        ),
    )
    first = await client.sprites.list(prefix="a", max_results=2)
    assert isinstance(first, SpritePage)
    assert [s.name for s in first.sprites] == ["a", "b"]
    assert first.next_token == "2"
    c = first.counters
    assert (c.name, c.running, c.warm, c.cold, c.running_limit, c.warm_limit) == (
        "my-org",
        2,
        4,
        44,
        20,
        20,
    )
    (call,) = requests_to(mock, "GET", "/v1/sprites")
    assert dict(call.kwargs["params"]) == {"max_results": "2", "prefix": "a"}


async def test_nested_org_counters_are_accepted(client: SpritesClient, mock: aioresponses) -> None:
    mock.get(url("/v1/sprites"), payload={"sprites": [], "org": {"name": "o", "running": 3}})
    p = await client.sprites.list()
    assert p.counters.name == "o" and p.counters.running == 3


async def test_async_for_walks_every_page(client: SpritesClient, mock: aioresponses) -> None:
    mock.get(url("/v1/sprites"), payload=page(["a", "b"], "2", True))
    mock.get(url("/v1/sprites"), payload=page(["c", "d"], "4", True))
    mock.get(url("/v1/sprites"), payload=page(["e"], None, False))
    names = [s.name async for s in client.sprites.list(max_results=2)]
    assert names == ["a", "b", "c", "d", "e"]
    tokens = [
        dict(c.kwargs["params"]).get("continuation_token")
        for c in requests_to(mock, "GET", "/v1/sprites")
    ]
    assert tokens == [None, "2", "4"]


async def test_incident_page_ends_the_listing(client: SpritesClient, mock: aioresponses) -> None:
    mock.get(url("/v1/sprites"), payload=page(["a"], "1", True))
    mock.get(url("/v1/sprites"), payload=page([], None, True))  # has_more, null token
    mock.get(url("/v1/sprites"), payload=page(["never"], None, False))
    names = [s.name async for s in client.sprites.list()]
    assert names == ["a"]
    assert len(requests_to(mock, "GET", "/v1/sprites")) == 2


async def test_empty_string_token_ends_the_listing(
    client: SpritesClient, mock: aioresponses
) -> None:
    mock.get(url("/v1/sprites"), payload=page(["a"], "", True))
    assert [s.name async for s in client.sprites.list()] == ["a"]
    assert len(requests_to(mock, "GET", "/v1/sprites")) == 1


async def test_a_repeated_token_is_never_requested_twice(
    client: SpritesClient, mock: aioresponses, caplog: pytest.LogCaptureFixture
) -> None:
    mock.get(url("/v1/sprites"), payload=page(["a"], "same", True))
    mock.get(url("/v1/sprites"), payload=page(["b"], "same", True))
    mock.get(url("/v1/sprites"), payload=page(["c"], "same", True))
    with caplog.at_level(logging.WARNING, logger="sprites_async"):
        names = [s.name async for s in client.sprites.list()]
    assert names == ["a", "b"]
    assert len(requests_to(mock, "GET", "/v1/sprites")) == 2
    assert "repeated continuation token" in caplog.text


async def test_pages_iterator(client: SpritesClient, mock: aioresponses) -> None:
    mock.get(url("/v1/sprites"), payload=page(["a"], "1", True))
    mock.get(url("/v1/sprites"), payload=page(["b"], None, False))
    pages = [p async for p in client.sprites.list().pages()]
    assert [[s.name for s in p.sprites] for p in pages] == [["a"], ["b"]]


async def test_list_is_lazy(client: SpritesClient, mock: aioresponses) -> None:
    client.sprites.list()
    assert not mock.requests


@pytest.mark.parametrize("bad", [0, 51, -1])
async def test_max_results_out_of_range(client: SpritesClient, bad: int) -> None:
    with pytest.raises(ValueError, match="max_results"):
        client.sprites.list(max_results=bad)


async def test_bad_prefix_is_refused(client: SpritesClient) -> None:
    with pytest.raises(ValueError):
        client.sprites.list(prefix="up\n")
    with pytest.raises(TypeError):
        client.sprites.list(prefix=3)  # type: ignore[arg-type]


async def test_prefixes_outside_the_create_rule_list_and_delete(
    client: SpritesClient, mock: aioresponses
) -> None:
    mock.get(url("/v1/sprites"), payload={"sprites": [sprite_json("UP-1")]}, repeat=True)
    mock.delete(url("/v1/sprites/UP-1"), status=204)
    assert [s.name async for s in client.sprites.list(prefix="UP")] == ["UP-1"]
    assert (await client.sprites.delete_many(prefix="UP")).deleted == ["UP-1"]


async def test_an_entry_with_a_malformed_field_is_kept_without_it(
    client: SpritesClient, mock: aioresponses, caplog: pytest.LogCaptureFixture
) -> None:
    bad = sprite_json("b", created_at="yesterday-ish")
    mock.get(
        url("/v1/sprites"),
        payload={"sprites": [sprite_json("a"), bad, sprite_json("c")], "has_more": False},
    )
    with caplog.at_level(logging.WARNING, logger="sprites_async"):
        p = await client.sprites.list()
    assert [s.name for s in p.sprites] == ["a", "b", "c"]
    assert p.sprites[1].created_at is None
    assert p.sprites[1].raw["created_at"] == "yesterday-ish"
    assert "created_at" in caplog.text


async def test_minimal_documented_entries_decode(client: SpritesClient, mock: aioresponses) -> None:
    mock.get(
        url("/v1/sprites"),
        payload={"sprites": [{"name": "a", "org_slug": "o", "updated_at": "2026-01-01T00:00:00Z"}]},
    )
    (s,) = (await client.sprites.list()).sprites
    assert s.name == "a" and s.org_slug == "o" and s.status is None


# ------------------------------------------------------------------- helpers


async def test_get_or_create_returns_existing(client: SpritesClient, mock: aioresponses) -> None:
    mock.get(url("/v1/sprites/a"), payload=sprite_json("a"))
    info, created = await client.sprites.get_or_create("a")
    assert info.name == "a" and created is False
    assert not requests_to(mock, "POST", "/v1/sprites")


async def test_get_or_create_creates(client: SpritesClient, mock: aioresponses) -> None:
    mock.get(url("/v1/sprites/a"), status=404, payload={"error": "sprite not found"})
    mock.post(url("/v1/sprites"), status=201, payload=sprite_json("a"))
    _info, created = await client.sprites.get_or_create("a", labels=["x"])
    assert created is True
    (call,) = requests_to(mock, "POST", "/v1/sprites")
    assert body_of(call)["labels"] == ["x"]


async def test_get_or_create_survives_a_race(client: SpritesClient, mock: aioresponses) -> None:
    mock.get(url("/v1/sprites/a"), status=404, payload={"error": "sprite not found"})
    mock.post(url("/v1/sprites"), status=409, payload={"error": "exists"})
    mock.get(url("/v1/sprites/a"), payload=sprite_json("a"))
    info, created = await client.sprites.get_or_create("a")
    assert info.name == "a" and created is False


async def test_delete_many_collects_failures(client: SpritesClient, mock: aioresponses) -> None:
    mock.get(
        url("/v1/sprites"),
        payload={
            "sprites": [
                sprite_json("ci-1", labels=["ci"]),
                sprite_json("ci-2", labels=["ci", "x"]),
                sprite_json("ci-3"),
                sprite_json("ci-4", labels=["ci"]),
            ],
            "has_more": False,
        },
    )
    mock.delete(url("/v1/sprites/ci-1"), status=204)
    mock.delete(url("/v1/sprites/ci-2"), status=404, payload={"error": "sprite not found"})
    for _ in range(3):
        mock.delete(url("/v1/sprites/ci-4"), status=500, payload={"error": "boom"})
    report = await client.sprites.delete_many(prefix="ci-", labels=["ci"], concurrency=2)
    assert report.deleted == ["ci-1"]
    assert report.missing == ["ci-2"]
    assert set(report.failed) == {"ci-4"}
    assert not report.ok
    assert not requests_to(mock, "DELETE", "/v1/sprites/ci-3")


async def test_delete_many_an_unexpected_error_stops_the_other_deletions(
    client: SpritesClient, mock: aioresponses, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ["ci-1", "ci-2", "ci-3"]
    mock.get(
        url("/v1/sprites"),
        payload={"sprites": [sprite_json(n) for n in names], "has_more": False},
    )
    unwound: list[str] = []

    async def delete(name: str, **_: Any) -> bool:
        if name == "ci-1":
            await asyncio.sleep(0.01)
            raise RuntimeError("a bug, not a SpritesError")
        try:
            await asyncio.Event().wait()  # a deletion that takes long
        finally:
            unwound.append(name)
        return True

    monkeypatch.setattr(client.sprites, "delete", delete)
    with pytest.raises(RuntimeError, match="a bug"):
        await client.sprites.delete_many(prefix="ci-", concurrency=3)
    # Cancelled and awaited before the error is raised: nothing left running.
    assert sorted(unwound) == ["ci-2", "ci-3"]


async def test_delete_many_needs_a_filter(client: SpritesClient) -> None:
    with pytest.raises(ValueError):
        await client.sprites.delete_many()


# ---------------------------------------------------------------------- handle


async def test_handle_does_no_io(client: SpritesClient, mock: aioresponses) -> None:
    s = client.sprite("alpha")
    assert isinstance(s, Sprite)
    assert s.name == "alpha" and s.info is None
    assert s.path == "/v1/sprites/alpha"
    assert "alpha" in repr(s)
    assert not mock.requests


async def test_handle_from_info_and_refresh(client: SpritesClient, mock: aioresponses) -> None:
    info = SpriteInfo(name="alpha", status="cold")
    s = client.sprite(info)
    assert s.info is info
    mock.get(url("/v1/sprites/alpha"), payload=sprite_json(status="warm"))
    fresh = await s.refresh()
    assert fresh.status == "warm" and s.info is fresh
    assert client.sprite("alpha") == s


async def test_wait_until_polls_until_status(client: SpritesClient, mock: aioresponses) -> None:
    for status in ("cold", "cold", "running"):
        mock.get(url("/v1/sprites/alpha"), payload=sprite_json(status=status))
    info = await client.sprite("alpha").wait_until("running", poll_interval=0.001, timeout=5)
    assert info.status == "running"


async def test_wait_until_times_out_with_last_status(
    client: SpritesClient, mock: aioresponses
) -> None:
    mock.get(url("/v1/sprites/alpha"), payload=sprite_json(status="cold"), repeat=True)
    with pytest.raises(TimeoutError, match="last status: 'cold'"):
        await client.sprite("alpha").wait_until("running", poll_interval=0.01, timeout=0.05)


async def test_wait_until_raises_at_once_for_a_missing_sprite(
    client: SpritesClient, mock: aioresponses
) -> None:
    mock.get(url("/v1/sprites/alpha"), status=404, payload={"error": "sprite not found"})
    with pytest.raises(NotFoundError):
        await asyncio.wait_for(client.sprite("alpha").wait_until("running"), 5)
