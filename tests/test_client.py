"""The core session: configuration, lifecycle, retries, timeouts, redaction."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from aioresponses import aioresponses

from sprites_async import (
    ClientClosedError,
    ConfigurationError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    SpritesClient,
    SpritesConnectionError,
    SpritesTimeoutError,
    Timeouts,
)
from tests._mock import BASE, TOKEN, requests_to, sprite_json, url

# ------------------------------------------------------------------ configuration


def test_token_from_argument_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPRITES_TOKEN", "env/1/2/3")
    c = SpritesClient("arg/1/2/3", base_url=BASE)
    assert c._token == "arg/1/2/3"


def test_token_from_sprites_token_then_sprite_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPRITES_TOKEN", "first/1/2/3")
    monkeypatch.setenv("SPRITE_TOKEN", "second/1/2/3")
    assert SpritesClient(base_url=BASE)._token == "first/1/2/3"
    monkeypatch.delenv("SPRITES_TOKEN")
    assert SpritesClient(base_url=BASE)._token == "second/1/2/3"


def test_missing_token_names_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPRITES_TOKEN", raising=False)
    monkeypatch.delenv("SPRITE_TOKEN", raising=False)
    with pytest.raises(ConfigurationError) as info:
        SpritesClient()
    assert "SPRITES_TOKEN" in str(info.value)
    assert "SPRITE_TOKEN" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", ["", "   ", "has space/1/2/3"])
def test_malformed_token_is_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        SpritesClient(bad, base_url=BASE)


def test_base_url_from_env_and_trailing_slash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPRITES_API_URL", "http://127.0.0.1:9999/")
    assert SpritesClient(TOKEN).base_url == "http://127.0.0.1:9999"
    monkeypatch.delenv("SPRITES_API_URL")
    assert SpritesClient(TOKEN).base_url == "https://api.sprites.dev"
    assert SpritesClient(TOKEN, base_url="https://x.test///").base_url == "https://x.test"


def test_base_url_scheme_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        SpritesClient(TOKEN, base_url="ftp://x")


def test_numeric_timeout_sets_read_timeout() -> None:
    c = SpritesClient(TOKEN, base_url=BASE, timeout=5)
    assert c.timeouts.read == 5.0
    assert c.timeouts.wake == Timeouts().wake


def test_repr_never_shows_the_token() -> None:
    c = SpritesClient(TOKEN, base_url=BASE)
    assert "supersecret" not in repr(c)
    assert "supersecret" not in str(c)
    assert c.org == "my-org"


# ----------------------------------------------------------------------- lifecycle


async def test_use_after_close_raises(mock: aioresponses) -> None:
    c = SpritesClient(TOKEN, base_url=BASE)
    mock.get(url("/v1/sprites/alpha"), payload=sprite_json())
    await c.sprites.get("alpha")
    await c.aclose()
    await c.aclose()  # idempotent
    assert c.closed
    with pytest.raises(ClientClosedError):
        await c.sprites.get("alpha")
    with pytest.raises(ClientClosedError):
        async with c:
            pass


async def test_async_with_opens_and_closes() -> None:
    async with SpritesClient(TOKEN, base_url=BASE) as c:
        session = c._session
        assert session is not None and not session.closed
    assert session.closed
    assert c.closed


async def test_session_is_created_lazily_inside_the_loop(mock: aioresponses) -> None:
    c = SpritesClient(TOKEN, base_url=BASE)
    assert c._session is None  # constructing the client does no I/O
    mock.get(url("/v1/sprites/alpha"), payload=sprite_json())
    await c.sprites.get("alpha")
    assert c._session is not None
    await c.aclose()


def test_unclosed_client_warns() -> None:
    c = SpritesClient(TOKEN, base_url=BASE)

    class OpenSession:
        closed = False

    c._session = OpenSession()  # type: ignore[assignment]
    with pytest.warns(ResourceWarning, match="unclosed"):
        c.__del__()
    c._session = None


async def test_closers_run_on_aclose_even_if_one_fails() -> None:
    ran: list[str] = []
    c = SpritesClient(TOKEN, base_url=BASE)

    async def bad() -> None:
        ran.append("bad")
        raise RuntimeError("boom")

    async def good() -> None:
        ran.append("good")

    c._add_closer(good)
    c._add_closer(bad)
    await c.aclose()
    assert ran == ["bad", "good"]


# ------------------------------------------------------------------------- headers


async def test_auth_and_user_agent_headers_are_sent() -> None:
    seen: dict[str, str] = {}

    async def handler(request: aiohttp.web.Request) -> aiohttp.web.Response:
        seen.update(request.headers)
        return aiohttp.web.json_response(sprite_json())

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    app = web.Application()
    app.router.add_get("/v1/sprites/{name}", handler)
    async with TestServer(app) as server:
        async with SpritesClient(TOKEN, base_url=str(server.make_url(""))) as c:
            await c.sprites.get("alpha")
    assert seen["Authorization"] == f"Bearer {TOKEN}"
    assert seen["User-Agent"].startswith("sprites-async/")


# ------------------------------------------------------------------------- retries


async def test_idempotent_get_is_retried_on_503(client: SpritesClient, mock: aioresponses) -> None:
    mock.get(url("/v1/sprites/alpha"), status=503, body="Storage not ready\n")
    mock.get(url("/v1/sprites/alpha"), payload=sprite_json())
    info = await client.sprites.get("alpha")
    assert info.name == "alpha"
    assert len(requests_to(mock, "GET", "/v1/sprites/alpha")) == 2


async def test_retries_stop_at_max_attempts(client: SpritesClient, mock: aioresponses) -> None:
    for _ in range(5):
        mock.get(url("/v1/sprites/alpha"), status=502, body="bad gateway")
    with pytest.raises(ServerError) as info:
        await client.sprites.get("alpha")
    assert info.value.status_code == 502
    assert len(requests_to(mock, "GET", "/v1/sprites/alpha")) == 3


async def test_post_is_not_retried_after_reaching_the_server(
    client: SpritesClient, mock: aioresponses
) -> None:
    mock.post(url("/v1/sprites"), status=503, body="unavailable")
    mock.post(url("/v1/sprites"), status=201, payload=sprite_json())
    with pytest.raises(ServerError):
        await client.sprites.create("alpha")
    assert len(requests_to(mock, "POST", "/v1/sprites")) == 1


async def test_post_is_not_retried_after_a_dropped_connection(
    client: SpritesClient, mock: aioresponses
) -> None:
    mock.post(url("/v1/sprites"), exception=aiohttp.ServerDisconnectedError())
    mock.post(url("/v1/sprites"), status=201, payload=sprite_json())
    with pytest.raises(SpritesConnectionError):
        await client.sprites.create("alpha")
    assert len(requests_to(mock, "POST", "/v1/sprites")) == 1


async def test_post_is_retried_when_the_connection_was_never_made(
    client: SpritesClient, mock: aioresponses
) -> None:
    refused = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("api.test", 443, True, True, None, None, None),
        ConnectionRefusedError(111, "refused"),
    )
    mock.post(url("/v1/sprites"), exception=refused)
    mock.post(url("/v1/sprites"), status=201, payload=sprite_json())
    info = await client.sprites.create("alpha")
    assert info.name == "alpha"
    assert len(requests_to(mock, "POST", "/v1/sprites")) == 2


async def test_retry_after_is_honoured(
    client: SpritesClient, mock: aioresponses, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)
        await real_sleep(0)

    monkeypatch.setattr("sprites_async._retry.asyncio.sleep", fake_sleep)
    mock.get(url("/v1/sprites/alpha"), status=429, headers={"Retry-After": "7"}, payload={})
    mock.get(url("/v1/sprites/alpha"), payload=sprite_json())
    await client.sprites.get("alpha")
    assert slept == [7.0]


async def test_retry_after_beyond_the_cap_raises_rate_limit_error(mock: aioresponses) -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=0.0, max_retry_after=10)
    async with SpritesClient(TOKEN, base_url=BASE, retry=policy) as c:
        mock.get(
            url("/v1/sprites/alpha"),
            status=429,
            headers={"Retry-After": "120"},
            payload={"error": "rate_limited", "message": "slow down"},
        )
        with pytest.raises(RateLimitError) as info:
            await c.sprites.get("alpha")
    assert info.value.retry_after == 120.0
    assert info.value.message == "slow down"
    assert len(requests_to(mock, "GET", "/v1/sprites/alpha")) == 1


async def test_backoff_uses_full_jitter_within_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=1.0, max_delay=4.0)
    for attempt in range(1, 9):
        delay = policy.backoff(attempt)
        assert delay is not None
        assert 0.0 <= delay <= min(4.0, 2 ** (attempt - 1))
    assert policy.backoff(10) is None
    assert RetryPolicy.none().backoff(1) is None


def test_retry_policy_validates() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=-1)


# ------------------------------------------------------------ transport failures


async def test_connection_error_is_translated_with_cause(
    client: SpritesClient, mock: aioresponses
) -> None:
    for _ in range(3):
        mock.get(url("/v1/sprites/alpha"), exception=aiohttp.ClientOSError(104, "reset"))
    with pytest.raises(SpritesConnectionError) as info:
        await client.sprites.get("alpha")
    err = info.value
    assert isinstance(err, ConnectionError)
    assert isinstance(err.__cause__, aiohttp.ClientOSError)
    assert err.operation == "get sprite"
    assert err.sprite == "alpha"
    assert "alpha" in str(err)


async def test_timeout_is_translated(client: SpritesClient, mock: aioresponses) -> None:
    for _ in range(3):
        mock.get(url("/v1/sprites/alpha"), exception=asyncio.TimeoutError())
    with pytest.raises(SpritesTimeoutError) as info:
        await client.sprites.get("alpha")
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, SpritesConnectionError)


async def test_read_timeout_against_a_slow_server() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.json_response(sprite_json())

    app = web.Application()
    app.router.add_get("/v1/sprites/{name}", slow)
    async with TestServer(app) as server:
        async with SpritesClient(
            TOKEN,
            base_url=str(server.make_url("")),
            timeout=Timeouts(read=0.1),
            retry=RetryPolicy.none(),
        ) as c:
            with pytest.raises(SpritesTimeoutError):
                await c.sprites.get("alpha")


async def test_cancellation_is_not_translated(client: SpritesClient) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    started = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(10)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v1/sprites/{name}", hang)
    async with TestServer(app) as server:
        async with SpritesClient(TOKEN, base_url=str(server.make_url(""))) as c:
            task = asyncio.ensure_future(c.sprites.get("alpha"))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


# ------------------------------------------------------------------------ logging


async def test_requests_are_logged_without_the_token(
    client: SpritesClient, mock: aioresponses, caplog: pytest.LogCaptureFixture
) -> None:
    mock.get(
        url("/v1/sprites/alpha"),
        payload=sprite_json(),
        headers={"x-request-id": "REQ123", "fly-request-id": "FLY456"},
    )
    with caplog.at_level(logging.DEBUG, logger="sprites_async"):
        await client.sprites.get("alpha")
    records = [r for r in caplog.records if r.name == "sprites_async"]
    assert records, "no request was logged"
    rec = records[-1]
    assert "GET /v1/sprites/alpha -> 200" in rec.getMessage()
    assert rec.sprites["request_id"] == "REQ123"  # type: ignore[attr-defined]
    assert rec.sprites["fly_request_id"] == "FLY456"  # type: ignore[attr-defined]
    assert rec.sprites["attempt"] == 1  # type: ignore[attr-defined]
    assert TOKEN not in caplog.text
    assert "supersecret" not in caplog.text


async def test_retries_are_logged(
    client: SpritesClient, mock: aioresponses, caplog: pytest.LogCaptureFixture
) -> None:
    mock.get(url("/v1/sprites/alpha"), status=503, body="x")
    mock.get(url("/v1/sprites/alpha"), payload=sprite_json())
    with caplog.at_level(logging.DEBUG, logger="sprites_async"):
        await client.sprites.get("alpha")
    attempts = [r.sprites["attempt"] for r in caplog.records if hasattr(r, "sprites")]
    assert attempts == [1, 2]


async def test_trace_configs_observe_requests() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    seen: list[str] = []

    async def on_start(
        session: object, ctx: object, params: aiohttp.TraceRequestStartParams
    ) -> None:
        seen.append(f"{params.method} {params.url.path}")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(sprite_json())

    app = web.Application()
    app.router.add_get("/v1/sprites/{name}", handler)
    async with TestServer(app) as server:
        async with SpritesClient(
            TOKEN, base_url=str(server.make_url("")), trace_configs=[trace]
        ) as c:
            await c.sprites.get("alpha")
    assert seen == ["GET /v1/sprites/alpha"]


async def test_max_connections_bounds_requests_in_flight() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    in_flight = 0
    peak = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return web.json_response(sprite_json())

    app = web.Application()
    app.router.add_get("/v1/sprites/{name}", handler)
    async with TestServer(app) as server:
        async with SpritesClient(TOKEN, base_url=str(server.make_url("")), max_connections=3) as c:
            await asyncio.gather(*(c.sprites.get("alpha") for _ in range(12)))
    assert peak == 3


async def test_event_loop_mismatch_is_a_clear_error() -> None:
    c = SpritesClient(TOKEN, base_url=BASE)
    c._ensure_session()

    def other_loop() -> None:
        async def use() -> None:
            c._ensure_session()

        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(use())

    await asyncio.get_running_loop().run_in_executor(None, other_loop)
    await c.aclose()


def test_control_and_exec_settings_options() -> None:
    from sprites_async import ControlOptions, ExecSettings

    c = SpritesClient(TOKEN, base_url=BASE, control=False)
    assert c.control is False
    opts = ControlOptions(max_per_sprite=4)
    settings = ExecSettings(exit_grace=0.1)
    c = SpritesClient(TOKEN, base_url=BASE, control=opts, exec_settings=settings)
    assert c.control is opts
    assert c.exec_settings is settings
    assert SpritesClient(TOKEN, base_url=BASE).control is True


async def test_max_connections_per_host_bounds_open_connections() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    in_flight = 0
    peak = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return web.json_response(sprite_json())

    app = web.Application()
    app.router.add_get("/v1/sprites/{name}", handler)
    async with TestServer(app) as server:
        async with SpritesClient(
            TOKEN, base_url=str(server.make_url("")), max_connections=0, max_connections_per_host=2
        ) as c:
            await asyncio.gather(*(c.sprites.get("alpha") for _ in range(10)))
    assert peak == 2


def test_negative_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        SpritesClient(TOKEN, base_url=BASE, max_connections_per_host=-1)
