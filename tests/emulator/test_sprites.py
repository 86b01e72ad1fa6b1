"""Sprite management (API layer) over real loopback HTTP."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sprites_async.emulator import EmulatorConfig
from sprites_async.emulator._sprites import next_version, seed_sprites
from sprites_async.emulator._state import SpriteRecord, SpriteTable
from tests._emulator import RecordingSessions, RunningEmulator, serve

TS_MICRO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
TS_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ID_RE = re.compile(r"^sprite-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


async def create(emu: RunningEmulator, name: str, **extra: Any) -> dict[str, Any]:
    status, body = await emu.api("POST", "/v1/sprites", json={"name": name, **extra})
    assert status == 201, body
    assert isinstance(body, dict)
    return body


# -- create ------------------------------------------------------------------


async def test_create_returns_201_with_the_april_2026_shape(emu: RunningEmulator) -> None:
    async with emu.http.post(
        emu.url + "/v1/sprites", json={"name": "alpha"}, headers=emu.auth
    ) as resp:
        assert resp.status == 201
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        body = await resp.json()
    assert set(body) == {
        "id",
        "name",
        "status",
        "version",
        "url",
        "url_settings",
        "created_at",
        "organization",
        "last_running_at",
        "last_warming_at",
        "updated_at",
        "environment_version",
    }
    assert ID_RE.match(body["id"])
    assert body["name"] == "alpha"
    assert body["status"] == "cold"
    assert body["version"] is None
    # The emulator's URL is a loopback listener of the sprite's own (test_sprite_urls.py).
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", body["url"])
    assert body["url_settings"] == {"auth": "sprite"}
    assert TS_MICRO.match(body["created_at"])
    assert body["updated_at"] == body["created_at"]
    assert body["organization"] == "local-org"
    assert body["last_running_at"] is None
    assert body["last_warming_at"] is None
    assert body["environment_version"] is None


async def test_create_with_labels_and_public_url(emu: RunningEmulator) -> None:
    body = await create(emu, "beta", labels=["prod", "ci"], url_settings={"auth": "public"})
    assert body["labels"] == ["prod", "ci"]
    assert body["url_settings"] == {"auth": "public"}


async def test_create_ignores_fields_it_does_not_model(emu: RunningEmulator) -> None:
    body = await create(
        emu, "gamma", wait_for_capacity=True, config={"ram_mb": 1}, environment={"A": "b"}
    )
    assert body["name"] == "gamma"


async def test_create_makes_the_sprite_directories(emu: RunningEmulator) -> None:
    await create(emu, "dirs")
    root = emu.state.sprite_root("dirs")
    assert (root / "home" / "sprite").is_dir()
    assert (root / "tmp").is_dir()


@pytest.mark.parametrize(
    "name",
    ["", "Upper", "-lead", "a" * 64, "under_score", "dot.name", "trailing\n", 12, None],
)
async def test_create_rejects_bad_names(emu: RunningEmulator, name: object) -> None:
    status, body = await emu.api("POST", "/v1/sprites", json={"name": name})
    assert status == 400
    assert body == {"errors": ["invalid sprite name format"]}
    assert emu.state.sprites == {}


async def test_create_accepts_the_longest_valid_name(emu: RunningEmulator) -> None:
    body = await create(emu, "a" + "-" * 61 + "z")
    assert len(body["name"]) == 63


async def test_create_without_a_name(emu: RunningEmulator) -> None:
    status, body = await emu.api("POST", "/v1/sprites", json={})
    assert (status, body) == (400, {"errors": ["invalid sprite name format"]})


async def test_create_rejects_a_bad_auth_type(emu: RunningEmulator) -> None:
    status, body = await emu.api(
        "POST", "/v1/sprites", json={"name": "x", "url_settings": {"auth": "private"}}
    )
    assert status == 400
    assert body == {"errors": ["invalid auth type, must be one of: sprite, public"]}


async def test_create_reports_every_validation_error(emu: RunningEmulator) -> None:
    status, body = await emu.api(
        "POST", "/v1/sprites", json={"name": "BAD", "url_settings": {"auth": "nope"}}
    )
    assert status == 400
    assert body == {
        "errors": [
            "invalid sprite name format",
            "invalid auth type, must be one of: sprite, public",
        ]
    }


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2]", b'"name"', b"null"])
async def test_create_rejects_bodies_that_are_not_json_objects(
    emu: RunningEmulator, payload: bytes
) -> None:
    async with emu.http.post(
        emu.url + "/v1/sprites",
        data=payload,
        headers={**emu.auth, "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert isinstance(body["errors"], list)
    assert body["errors"]


async def test_create_rejects_labels_that_are_not_strings(emu: RunningEmulator) -> None:
    status, body = await emu.api("POST", "/v1/sprites", json={"name": "x", "labels": [1]})
    assert status == 400
    assert body == {"errors": ["labels must be a list of strings"]}


async def test_duplicate_name_is_409_with_the_recorded_message(emu: RunningEmulator) -> None:
    await create(emu, "twice")
    status, body = await emu.api("POST", "/v1/sprites", json={"name": "twice"})
    assert status == 409
    assert body == {
        "error": "A sprite named 'twice' already exists. Please choose a different name."
    }


async def test_created_hooks_run(emu: RunningEmulator) -> None:
    seen: list[str] = []

    async def hook(name: str) -> None:
        seen.append(name)

    emu.state.sprite_created_hooks.append(hook)
    await create(emu, "hooked")
    assert seen == ["hooked"]


# -- rate limit --------------------------------------------------------------


async def test_creation_rate_limit(tmp_path: Path) -> None:
    config = EmulatorConfig(token="t/1/2/3", state_dir=tmp_path / "s", creation_limit=2)
    async with serve(config) as emu:
        await create(emu, "one")
        await create(emu, "two")
        before = int(time.time())
        async with emu.http.post(
            emu.url + "/v1/sprites", json={"name": "three"}, headers=emu.auth
        ) as resp:
            assert resp.status == 429
            body = await resp.json()
            headers = resp.headers
        assert body["error"] == "sprite_creation_rate_limited"
        assert body["message"] == "Sprite creation rate limit exceeded"
        assert body["limit"] == 2
        assert body["window_seconds"] == 60
        assert body["current_count"] == 2
        assert 1 <= body["retry_after_seconds"] <= 60
        assert headers["Retry-After"] == str(body["retry_after_seconds"])
        assert headers["X-RateLimit-Limit"] == "2"
        assert headers["X-RateLimit-Remaining"] == "0"
        assert int(headers["X-RateLimit-Reset"]) >= before
        assert "three" not in emu.state.sprites
        # Invalid requests are still answered as such, not rate limited.
        status, _ = await emu.api("POST", "/v1/sprites", json={"name": "one"})
        assert status == 409


async def test_creation_window_slides(tmp_path: Path) -> None:
    config = EmulatorConfig(token="t/1/2/3", state_dir=tmp_path / "s", creation_limit=1)
    async with serve(config) as emu:
        await create(emu, "one")
        status, _ = await emu.api("POST", "/v1/sprites", json={"name": "two"})
        assert status == 429
        emu.state.creation_log[0] -= 61  # age the first creation past the 60 s window
        await create(emu, "two")


# -- get / update --------------------------------------------------------------


async def test_get_returns_the_created_object(emu: RunningEmulator) -> None:
    created = await create(emu, "getme", labels=["x"])
    status, body = await emu.api("GET", "/v1/sprites/getme")
    assert status == 200
    assert body == created


async def test_get_missing_is_404(emu: RunningEmulator) -> None:
    async with emu.http.get(emu.url + "/v1/sprites/nope", headers=emu.auth) as resp:
        assert resp.status == 404
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await resp.json() == {"error": "sprite not found"}


async def test_missing_sprite_500_fault_reproduces_the_recorded_bodies(
    emu: RunningEmulator,
) -> None:
    emu.state.faults.missing_sprite_500 = True
    assert await emu.api("GET", "/v1/sprites/nope") == (
        500,
        {"error": "failed to retrieve sprite"},
    )
    assert await emu.api("DELETE", "/v1/sprites/nope") == (
        500,
        {"error": "failed to delete sprite"},
    )
    # Existing sprites are unaffected.
    await create(emu, "here")
    status, _ = await emu.api("GET", "/v1/sprites/here")
    assert status == 200


async def test_update_is_partial_and_bumps_updated_at(emu: RunningEmulator) -> None:
    created = await create(emu, "upd", labels=["a"])
    status, body = await emu.api(
        "PUT", "/v1/sprites/upd", json={"url_settings": {"auth": "public"}}
    )
    assert status == 200
    assert body["url_settings"] == {"auth": "public"}
    assert body["labels"] == ["a"]
    assert body["updated_at"] > created["updated_at"]
    assert body["created_at"] == created["created_at"]
    assert body["id"] == created["id"]

    status, body = await emu.api("PUT", "/v1/sprites/upd", json={"labels": ["b", "c"]})
    assert status == 200
    assert body["labels"] == ["b", "c"]
    assert body["url_settings"] == {"auth": "public"}

    status, body = await emu.api("PUT", "/v1/sprites/upd", json={"labels": []})
    assert status == 200
    assert "labels" not in body
    status, body = await emu.api("GET", "/v1/sprites/upd")
    assert "labels" not in body


async def test_update_clear_labels(emu: RunningEmulator) -> None:
    await create(emu, "clr", labels=["a"])
    status, body = await emu.api("PUT", "/v1/sprites/clr", json={"clear_labels": True})
    assert status == 200
    assert "labels" not in body


async def test_update_rejects_a_bad_auth_type_and_changes_nothing(emu: RunningEmulator) -> None:
    created = await create(emu, "upd2")
    status, body = await emu.api(
        "PUT", "/v1/sprites/upd2", json={"url_settings": {"auth": "x"}, "labels": ["l"]}
    )
    assert status == 400
    assert body == {"errors": ["invalid auth type, must be one of: sprite, public"]}
    assert (await emu.api("GET", "/v1/sprites/upd2"))[1] == created


async def test_update_rejects_malformed_json(emu: RunningEmulator) -> None:
    await create(emu, "upd3")
    async with emu.http.put(emu.url + "/v1/sprites/upd3", data=b"{", headers=emu.auth) as resp:
        assert resp.status == 400


async def test_update_missing_is_404(emu: RunningEmulator) -> None:
    status, body = await emu.api("PUT", "/v1/sprites/none", json={"labels": []})
    assert (status, body) == (404, {"error": "sprite not found"})


# -- delete --------------------------------------------------------------------


async def test_delete_is_204_and_removes_everything(emu: RunningEmulator) -> None:
    sessions = RecordingSessions()
    emu.state.sessions = sessions
    deleted: list[str] = []

    async def hook(name: str) -> None:
        assert emu.state.sprite_dir(name).exists()  # hooks run before the files go
        deleted.append(name)

    emu.state.sprite_deleted_hooks.append(hook)
    await create(emu, "doomed")
    await create(emu, "keeper")
    (emu.state.sprite_root("doomed") / "home" / "sprite" / "f.txt").write_text("x")

    async with emu.http.delete(emu.url + "/v1/sprites/doomed", headers=emu.auth) as resp:
        assert resp.status == 204
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert await resp.read() == b""

    assert sessions.terminated == ["doomed"]
    assert deleted == ["doomed"]
    assert not emu.state.sprite_dir("doomed").exists()
    assert emu.state.sprite_dir("keeper").exists()
    assert (await emu.api("GET", "/v1/sprites/doomed"))[0] == 404
    assert (await emu.api("DELETE", "/v1/sprites/doomed"))[0] == 404
    _, page = await emu.api("GET", "/v1/sprites")
    assert [s["name"] for s in page["sprites"]] == ["keeper"]
    # The name is free again.
    await create(emu, "doomed")


# -- upgrade -------------------------------------------------------------------


async def test_upgrade_is_204_and_bumps_the_version(emu: RunningEmulator) -> None:
    await create(emu, "up")
    async with emu.http.post(emu.url + "/v1/sprites/up/upgrade", headers=emu.auth) as resp:
        assert resp.status == 204
        assert "x-request-id" in resp.headers
        assert "Sprite-Version" not in resp.headers
    _, body = await emu.api("GET", "/v1/sprites/up")
    assert body["version"] == emu.state.config.sprite_version
    await emu.api("POST", "/v1/sprites/up/upgrade")
    _, body = await emu.api("GET", "/v1/sprites/up")
    assert body["version"] == next_version(emu.state.config.sprite_version, "")
    assert body["version"] != emu.state.config.sprite_version


async def test_upgrade_missing_is_404(emu: RunningEmulator) -> None:
    assert await emu.api("POST", "/v1/sprites/none/upgrade") == (
        404,
        {"error": "sprite not found"},
    )


def test_next_version() -> None:
    assert next_version(None, "v0.0.1-rc46") == "v0.0.1-rc46"
    assert next_version("v0.0.1-rc46", "x") == "v0.0.1-rc47"
    assert next_version("0.0.1-rc9", "x") == "0.0.1-rc10"
    assert next_version("dev", "v1") == "v1"


# -- list ------------------------------------------------------------------------


async def list_all(emu: RunningEmulator, query: str = "") -> tuple[list[str], list[dict[str, Any]]]:
    names: list[str] = []
    pages: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(100):
        params = query + (f"&continuation_token={token}" if token else "")
        status, page = await emu.api("GET", "/v1/sprites?" + params)
        assert status == 200, page
        pages.append(page)
        names.extend(s["name"] for s in page["sprites"])
        token = page["next_continuation_token"]
        if not page["has_more"]:
            assert token is None
            return names, pages
        assert isinstance(token, str)
        assert token
    raise AssertionError("pagination did not end")


async def test_list_pages_through_everything_in_name_order(emu: RunningEmulator) -> None:
    emu.state.faults.incident_page = False
    seeded = seed_sprites(emu.state, 120, prefix="s-")
    await create(emu, "a-first")
    await create(emu, "z-last")
    names, pages = await list_all(emu)
    assert names == sorted(["a-first", "z-last", *seeded])
    assert [len(p["sprites"]) for p in pages] == [50, 50, 22]
    assert pages[0]["has_more"] is True


async def test_list_counters_and_limits(emu: RunningEmulator) -> None:
    await create(emu, "c1")
    await create(emu, "c2")
    await create(emu, "c3")
    emu.state.sprites["c1"].status = "running"
    emu.state.sprites["c2"].status = "warm"
    status, page = await emu.api("GET", "/v1/sprites?prefix=c3")
    assert status == 200
    # Counters are org-wide, not per page.
    assert {k: page[k] for k in ("name", "running", "warm", "cold")} == {
        "name": "local-org",
        "running": 1,
        "warm": 1,
        "cold": 1,
    }
    assert page["running_limit"] == 20
    assert page["warm_limit"] == 20
    assert [s["name"] for s in page["sprites"]] == ["c3"]
    assert page["has_more"] is False
    assert page["next_continuation_token"] is None


async def test_list_prefix_filters_across_pages(emu: RunningEmulator) -> None:
    seed_sprites(emu.state, 7, prefix="pa-")
    seed_sprites(emu.state, 5, prefix="pb-")
    seed_sprites(emu.state, 3, prefix="p-")
    names, pages = await list_all(emu, "prefix=pa-&max_results=3")
    assert names == [f"pa-{i:05d}" for i in range(7)]
    assert len(pages) == 3
    names, _ = await list_all(emu, "prefix=zzz")
    assert names == []


@pytest.mark.parametrize(("raw", "size"), [("0", 1), ("-5", 1), ("1", 1), ("100", 50), ("7", 7)])
async def test_list_clamps_max_results(emu: RunningEmulator, raw: str, size: int) -> None:
    seed_sprites(emu.state, 60)
    status, page = await emu.api("GET", f"/v1/sprites?max_results={raw}")
    assert status == 200
    assert len(page["sprites"]) == size
    assert page["has_more"] is True


async def test_list_rejects_a_non_integer_max_results(emu: RunningEmulator) -> None:
    status, body = await emu.api("GET", "/v1/sprites?max_results=lots")
    assert status == 400
    assert body["errors"]


@pytest.mark.parametrize("token", ["!!!", "Zm9v_", "QUJD"])
async def test_list_rejects_a_forged_continuation_token(emu: RunningEmulator, token: str) -> None:
    status, body = await emu.api("GET", f"/v1/sprites?continuation_token={token}")
    assert status == 400
    assert body == {"errors": ["invalid continuation_token"]}


async def test_list_survives_deleting_the_sprite_a_token_points_at(emu: RunningEmulator) -> None:
    for n in ("k1", "k2", "k3"):
        await create(emu, n)
    _, page = await emu.api("GET", "/v1/sprites?max_results=2")
    assert [s["name"] for s in page["sprites"]] == ["k1", "k2"]
    await emu.api("DELETE", "/v1/sprites/k2")
    _, page2 = await emu.api(
        "GET", f"/v1/sprites?max_results=2&continuation_token={page['next_continuation_token']}"
    )
    assert [s["name"] for s in page2["sprites"]] == ["k3"]


async def test_list_incident_page_fault(emu: RunningEmulator) -> None:
    await create(emu, "only")
    emu.state.faults.incident_page = True
    status, page = await emu.api("GET", "/v1/sprites")
    assert status == 200
    assert [s["name"] for s in page["sprites"]] == ["only"]
    assert page["has_more"] is True
    assert page["next_continuation_token"] is None


async def test_list_of_nothing(emu: RunningEmulator) -> None:
    status, page = await emu.api("GET", "/v1/sprites")
    assert status == 200
    assert page["sprites"] == []
    assert page["has_more"] is False
    assert page["next_continuation_token"] is None


# -- the sorted sprite table -------------------------------------------------------

_ops = st.lists(
    st.tuples(
        st.sampled_from(["set", "del", "pop", "update", "setdefault", "clear", "sorted"]),
        st.sampled_from(["a", "b", "c", "d", "e"]),
    ),
    max_size=40,
)


@given(_ops)
def test_sprite_table_keeps_names_sorted(ops: list[tuple[str, str]]) -> None:
    table = SpriteTable()
    rec = new_record_for_table()
    for op, key in ops:
        if op == "set":
            table[key] = rec
        elif op == "del" and key in table:
            del table[key]
        elif op == "pop":
            table.pop(key, None)
        elif op == "update":
            table.update({key: rec, key + "x": rec})
        elif op == "setdefault":
            table.setdefault(key, rec)
        elif op == "clear":
            table.clear()
        assert table.sorted_names() == sorted(table)


def new_record_for_table() -> SpriteRecord:
    now = datetime.now(timezone.utc)
    return SpriteRecord(
        id="sprite-x",
        name="x",
        organization="o",
        status="cold",
        url="https://x",
        url_auth="sprite",
        created_at=now,
        updated_at=now,
    )
