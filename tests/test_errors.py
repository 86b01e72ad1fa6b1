"""Error responses: every status, every body shape, every field."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from aioresponses import aioresponses

from sprites_async import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    GoneError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    SpritesClient,
    SpritesError,
)
from sprites_async._errors import api_error_from_response, parse_retry_after
from tests._mock import BASE, TOKEN, url

IDS = {"x-request-id": "GJAMQrLtHGwLIw4ACAHD", "fly-request-id": "01KGBZ03GK6SSX0FZ800JFFXWY-dfw"}


@pytest.fixture
async def noretry() -> Any:
    async with SpritesClient(TOKEN, base_url=BASE, retry=RetryPolicy.none()) as c:
        yield c


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (410, GoneError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (418, APIError),
    ],
)
async def test_each_status_maps_to_its_class_with_all_fields(
    noretry: SpritesClient, mock: aioresponses, status: int, cls: type[APIError]
) -> None:
    mock.get(url("/v1/sprites/alpha"), status=status, payload={"error": "it broke"}, headers=IDS)
    with pytest.raises(cls) as info:
        await noretry.sprites.get("alpha")
    err = info.value
    assert type(err) is cls
    assert isinstance(err, SpritesError)
    assert err.status_code == status
    assert err.message == "it broke"
    assert err.request_id == IDS["x-request-id"]
    assert err.fly_request_id == IDS["fly-request-id"]
    assert err.operation == "get sprite"
    assert err.sprite == "alpha"
    assert b"it broke" in err.body
    line = str(err)
    assert "\n" not in line
    for part in (str(status), "it broke", "get sprite", "alpha", IDS["x-request-id"]):
        assert part in line
    assert TOKEN not in line and TOKEN not in repr(err)


def test_validation_errors_list_is_joined() -> None:
    body = b'{"errors":["invalid sprite name format","another"]}'
    err = api_error_from_response(400, {}, body)
    assert isinstance(err, BadRequestError)
    assert err.message == "invalid sprite name format; another"


def test_structured_rate_limit_body() -> None:
    body = (
        b'{"error":"sprite_creation_rate_limited","message":"Sprite creation rate limit exceeded",'
        b'"limit":10,"window_seconds":60,"retry_after_seconds":30,"current_count":12,'
        b'"upgrade_available":true,"upgrade_url":"https://fly.io/up"}'
    )
    err = api_error_from_response(429, {"Retry-After": "5"}, body, operation="create sprite")
    assert isinstance(err, RateLimitError)
    assert err.code == "sprite_creation_rate_limited"
    assert err.message == "Sprite creation rate limit exceeded"
    assert err.retry_after == 30.0  # the body's figure beats the header's
    assert err.limit == 10
    assert err.window_seconds == 60
    assert err.current_count == 12
    assert err.upgrade_url == "https://fly.io/up"


def test_rate_limit_falls_back_to_retry_after_header() -> None:
    err = api_error_from_response(429, {"Retry-After": "12"}, b"slow down")
    assert isinstance(err, RateLimitError)
    assert err.retry_after == 12.0
    assert err.message == "slow down"


def test_text_bodies_from_the_sprite_layer() -> None:
    err = api_error_from_response(400, {}, b"invalid policy config\n")
    assert err.message == "invalid policy config"
    assert err.code is None


def test_filesystem_error_body_keeps_the_code() -> None:
    body = b'{"error":"no such file or directory","code":"ENOENT","path":"/nope"}'
    err = api_error_from_response(404, {}, body)
    assert isinstance(err, NotFoundError)
    assert err.code == "ENOENT"
    assert err.message == "no such file or directory"


@pytest.mark.parametrize("body", [b"", b"{}", b"   ", b"[1,2]", b"{not json"])
def test_empty_or_odd_bodies_still_give_a_message(body: bytes) -> None:
    err = api_error_from_response(502, {}, body)
    assert err.message
    assert isinstance(err, ServerError)


@pytest.mark.parametrize(
    "body", [b'{"error":"failed to retrieve sprite"}', b'{"error":"failed to delete sprite"}']
)
def test_incident_500s_are_flagged_as_possibly_not_found(body: bytes) -> None:
    err = api_error_from_response(500, {}, body)
    assert isinstance(err, ServerError)
    assert err.possibly_not_found
    assert err.is_not_found


def test_ordinary_500_is_not_flagged() -> None:
    err = api_error_from_response(500, {}, b'{"error":"database exploded"}')
    assert isinstance(err, ServerError)
    assert not err.possibly_not_found
    assert not err.is_not_found


def test_404_is_not_found() -> None:
    assert api_error_from_response(404, {}, b"").is_not_found


def test_errors_pickle_round_trip() -> None:
    err = api_error_from_response(
        404, IDS, b'{"error":"sprite not found"}', operation="get sprite", sprite="a"
    )
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is NotFoundError
    assert str(back) == str(err)
    assert back.request_id == IDS["x-request-id"]


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
