"""The seams' retry decisions, without a network: ``_retry`` driven by scripted attempts.

The seams' own tests (test_client, test_ws_seam, test_transport_*) check
these rules through mocked and real servers; here each rule of the table is
one scripted attempt sequence, with the waits recorded instead of slept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from sprites_async import (
    APIError,
    RateLimitError,
    RetryPolicy,
    SpritesConnectionError,
    SpritesError,
    SpritesTimeoutError,
)
from sprites_async._errors import api_error_from_response
from sprites_async._retry import (
    _HANDSHAKE_RETRY_STATUSES,
    _always,
    _nothing,
    retrying,
    status_backoff,
)
from sprites_async._translate import _never_sent

POLICY = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=1.0, max_retry_after=10.0)
STATUSES = POLICY.retry_statuses


def _refusal(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> APIError:
    return api_error_from_response(status, headers or {}, body, operation="op")


def _connector_error(cls: type[aiohttp.ClientConnectorError]) -> aiohttp.ClientConnectorError:
    key = aiohttp.client_reqrep.ConnectionKey("api.test", 443, True, True, None, None, None)
    return cls(key, OSError(111, "refused"))


def _proxy_refusal(status: int) -> aiohttp.ClientHttpProxyError:
    secret = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer secret-token"}))
    info = aiohttp.RequestInfo(
        URL("https://api.test/"), "CONNECT", secret, URL("https://api.test/")
    )
    return aiohttp.ClientHttpProxyError(info, (), status=status, message="no")


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the loop sleeps, recorded; no time passes."""
    recorded: list[float] = []

    async def sleep(delay: float) -> None:
        recorded.append(delay)

    monkeypatch.setattr("sprites_async._retry.asyncio.sleep", sleep)
    return recorded


def _attempts(*outcomes: BaseException | str) -> tuple[Callable[..., Awaitable[str]], list[int]]:
    """``once`` raising or returning each outcome in turn, and the attempt numbers it saw."""
    seen: list[int] = []

    async def once(attempt: int, started: float) -> str:
        seen.append(attempt)
        outcome = outcomes[len(seen) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return once, seen


async def _run(
    once: Callable[..., Awaitable[str]],
    *,
    resend: Callable[[BaseException], bool] = _always,
    statuses: frozenset[int] | tuple[()] = STATUSES,
    policy: RetryPolicy = POLICY,
) -> str:
    return await retrying(
        once, policy, None, "GET", "/v1/x", "op", "box", resend=resend, statuses=statuses
    )


# ---------------------------------------------------------------- status backoff


def test_a_429_waits_what_its_body_says() -> None:
    error = _refusal(429, body=b'{"error": "slow down", "retry_after_seconds": 4}')
    assert isinstance(error, RateLimitError)
    assert status_backoff(POLICY, error, 1) == 4.0


def test_a_503_waits_what_its_retry_after_header_says() -> None:
    assert status_backoff(POLICY, _refusal(503, {"Retry-After": "3"}), 1) == 3.0


def test_other_statuses_ignore_retry_after_and_back_off() -> None:
    # Only a 503's header (and a 429's) is a promise about when to come back.
    delay = status_backoff(POLICY, _refusal(502, {"Retry-After": "9"}), 1)
    assert delay is not None and 0.0 <= delay <= POLICY.base_delay


def test_a_retry_after_beyond_the_policy_or_the_last_attempt_gives_up() -> None:
    assert status_backoff(POLICY, _refusal(503, {"Retry-After": "11"}), 1) is None
    assert status_backoff(POLICY, _refusal(503, {"Retry-After": "1"}), 3) is None


# ------------------------------------------------------------------ the loop


async def test_a_retryable_refusal_is_retried_after_its_wait(waits: list[float]) -> None:
    once, seen = _attempts(_refusal(503, {"Retry-After": "2"}), "ok")
    assert await _run(once) == "ok"
    assert seen == [1, 2]
    assert waits == [2.0]


async def test_a_refusal_outside_the_statuses_is_raised_at_once(waits: list[float]) -> None:
    refused = _refusal(503)
    once, seen = _attempts(refused, "ok")
    with pytest.raises(APIError) as info:
        await _run(once, statuses=())
    assert info.value is refused
    assert seen == [1] and waits == []


async def test_the_sdks_own_errors_are_never_retried(waits: list[float]) -> None:
    decided = SpritesTimeoutError("handshake timed out", operation="op")
    once, seen = _attempts(decided, "ok")
    with pytest.raises(SpritesError) as info:
        await _run(once)
    assert info.value is decided
    assert seen == [1] and waits == []


async def test_a_transport_failure_is_retried_when_it_may_be_resent(waits: list[float]) -> None:
    once, seen = _attempts(aiohttp.ServerDisconnectedError(), "ok")
    assert await _run(once, resend=_always) == "ok"
    assert seen == [1, 2] and len(waits) == 1


@pytest.mark.parametrize("resend", [_never_sent, _nothing])
async def test_a_request_that_may_have_arrived_is_not_resent(
    waits: list[float], resend: Callable[[BaseException], bool]
) -> None:
    dropped = aiohttp.ServerDisconnectedError()
    once, seen = _attempts(dropped, "ok")
    with pytest.raises(SpritesConnectionError) as info:
        await _run(once, resend=resend)
    assert info.value.__cause__ is dropped
    assert "GET /v1/x failed" in str(info.value)
    assert seen == [1] and waits == []


async def test_a_timeout_becomes_a_timeout_error(waits: list[float]) -> None:
    once, _ = _attempts(asyncio.TimeoutError(), "ok")
    with pytest.raises(SpritesTimeoutError, match="timed out"):
        await _run(once, resend=_nothing)


@pytest.mark.parametrize(
    ("failure", "retried"),
    [
        (lambda: _connector_error(aiohttp.ClientSSLError), False),  # a bad certificate stays bad
        (lambda: _proxy_refusal(407), False),  # so do the proxy's credentials
        (lambda: _proxy_refusal(503), True),  # a busy proxy may not be
    ],
)
async def test_permanent_failures_are_not_retried_even_when_they_may_be_resent(
    waits: list[float], failure: Callable[[], BaseException], retried: bool
) -> None:
    once, seen = _attempts(failure(), "ok")
    if retried:
        assert await _run(once, resend=_always) == "ok"
        assert seen == [1, 2]
    else:
        with pytest.raises(SpritesConnectionError):
            await _run(once, resend=_always)
        assert seen == [1]


async def test_a_proxy_refusal_leaves_no_token_in_the_chained_error(waits: list[float]) -> None:
    once, _ = _attempts(_proxy_refusal(407))
    with pytest.raises(SpritesConnectionError) as info:
        await _run(once)
    assert "secret-token" not in repr(info.value.__cause__)


async def test_cancellation_ends_the_loop(waits: list[float]) -> None:
    once, seen = _attempts(asyncio.CancelledError(), "ok")
    with pytest.raises(asyncio.CancelledError):
        await _run(once)
    assert seen == [1]


@pytest.mark.parametrize(("status", "retried"), [(500, False), (502, True), (429, True)])
async def test_a_refused_upgrade_is_retried_only_when_it_cannot_have_started_a_command(
    waits: list[float], status: int, retried: bool
) -> None:
    # A sprite answers 500 when it could not start the command: that may not
    # be the whole story, so the upgrade is not sent again.
    once, seen = _attempts(_refusal(status), "ok")
    if retried:
        assert await _run(once, resend=_never_sent, statuses=_HANDSHAKE_RETRY_STATUSES) == "ok"
        assert seen == [1, 2]
    else:
        with pytest.raises(APIError):
            await _run(once, resend=_never_sent, statuses=_HANDSHAKE_RETRY_STATUSES)
        assert seen == [1]


# ------------------------------------------------ a first attempt made by the caller


async def test_the_loop_goes_on_from_a_first_attempt_the_caller_made(waits: list[float]) -> None:
    # A handshake's first attempt runs outside the loop; its failure is
    # decided as the loop's own first attempt would have been.
    once, seen = _attempts("ok")
    first = _refusal(503, {"Retry-After": "2"})
    result = await retrying(
        lambda attempt, started: once(attempt - 1, started),
        POLICY,
        None,
        "GET",
        "/v1/x",
        "op",
        "box",
        resend=_always,
        statuses=STATUSES,
        failed=(first, 0.0),
    )
    assert result == "ok"
    assert seen == [1] and waits == [2.0]  # the loop's next attempt is the second


@pytest.mark.parametrize(
    ("first", "raised"),
    [
        (_refusal(404), APIError),
        (SpritesTimeoutError("handshake timed out", operation="op"), SpritesTimeoutError),
        (aiohttp.ServerDisconnectedError(), SpritesConnectionError),
        (ValueError("a bug"), ValueError),
    ],
)
async def test_a_first_attempt_that_is_not_retried_is_raised_without_a_second(
    waits: list[float], first: Exception, raised: type[Exception]
) -> None:
    once, seen = _attempts("ok")
    with pytest.raises(raised) as info:
        await retrying(
            once,
            POLICY,
            None,
            "GET",
            "/v1/x",
            "op",
            "box",
            resend=_never_sent,
            statuses=_HANDSHAKE_RETRY_STATUSES,
            failed=(first, 0.0),
        )
    if isinstance(info.value, SpritesConnectionError) and raised is SpritesConnectionError:
        assert info.value.__cause__ is first  # translated, chained to what aiohttp raised
    else:
        assert info.value is first
    assert seen == [] and waits == []
