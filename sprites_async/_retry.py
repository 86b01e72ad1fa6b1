"""The seams' attempts: the one retry loop, its waits, and the record of each attempt.

:func:`retrying` is the loop every seam runs its attempts in;
:func:`status_backoff` and :func:`transport_delay` decide, after a refusal
or a transport failure, whether another attempt comes and after how long;
:func:`log_attempt` records each attempt (the log line and the telemetry
span). The decisions read the :class:`RetryPolicy` and the error only: no
I/O but the wait, so they are tested without a network.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Container, Mapping
from typing import TYPE_CHECKING, TypeVar

from multidict import CIMultiDict

from ._errors import APIError, SpritesError, parse_retry_after
from ._translate import _TRANSPORT_ERRORS, _permanent, _translate

if TYPE_CHECKING:
    from ._config import RetryPolicy
    from ._telemetry import Telemetry

__all__ = ["log_attempt", "retrying", "status_backoff", "transport_delay"]

logger = logging.getLogger("sprites_async")

T = TypeVar("T")


def _always(exc: BaseException) -> bool:
    """An idempotent request may be sent again whatever became of the last one."""
    return True


def _nothing(exc: BaseException) -> bool:
    """A handshake whose caller retries nothing (a ``/control`` probe goes direct instead)."""
    return False


_HANDSHAKE_RETRY_STATUSES = frozenset({429, 502, 503, 504})
"""Refused upgrades worth another attempt. Not 500: a sprite answers 500 when
it could not start the command, and that may not be the whole story."""


async def retrying(
    once: Callable[[int, float], Awaitable[T]],
    policy: RetryPolicy,
    telemetry: Telemetry | None,
    method: str,
    path: str,
    operation: str,
    sprite: str | None,
    *,
    resend: Callable[[BaseException], bool],
    statuses: Container[int],
    failed: tuple[Exception, float] | None = None,
) -> T:
    """Call ``once(attempt, started)`` until an attempt succeeds: the seams' one retry loop.

    An attempt ends in one of three ways:

    * It returns: that is the result.
    * It raises an :class:`APIError` (a refusal, logged by ``once``):
      retried if its status is in ``statuses``, after the policy's backoff
      or the server's ``Retry-After`` (the body's ``retry_after_seconds``
      of a 429, the header of a 503); a ``Retry-After`` longer than the
      policy allows is not waited for and the error is raised.
    * It raises an aiohttp/OS error (the transport failed): translated to
      :class:`SpritesConnectionError`/:class:`SpritesTimeoutError`, and
      retried after the policy's backoff only if ``resend(exc)`` says the
      request may go again (idempotent, or certainly never sent) and
      another attempt could end otherwise (not a bad certificate or a
      proxy's refusal).

    Any other exception (the SDK's own errors, cancellation) ends the
    call. Every attempt counts against ``policy.max_attempts``.

    ``failed`` is the error and start time of a first attempt the caller
    made itself: a seam whose first attempt almost always succeeds (a
    WebSocket handshake) awaits ``once(1, started)`` directly and enters
    this loop only after it failed, which decides from there as if it had
    made that attempt.
    """
    attempt = 0
    while True:
        attempt += 1
        if failed is not None:
            exc, started = failed
            failed = None
        else:
            started = time.monotonic()
            try:
                return await once(attempt, started)
            except Exception as error:
                exc = error
        delay = _next_delay(
            exc,
            policy,
            telemetry,
            method,
            path,
            operation,
            sprite,
            attempt,
            started,
            resend,
            statuses,
        )
        if delay is None:
            raise exc
        await asyncio.sleep(delay)


def _next_delay(
    exc: Exception,
    policy: RetryPolicy,
    telemetry: Telemetry | None,
    method: str,
    path: str,
    operation: str,
    sprite: str | None,
    attempt: int,
    started: float,
    resend: Callable[[BaseException], bool],
    statuses: Container[int],
) -> float | None:
    """The wait before the attempt after ``exc``; None to raise ``exc`` as it is.

    A transport failure that is not retried raises its translation here.
    """
    if isinstance(exc, APIError):
        if exc.status_code not in statuses:
            return None
        return status_backoff(policy, exc, attempt)
    if isinstance(exc, SpritesError) or not isinstance(exc, _TRANSPORT_ERRORS):
        return None  # already decided (a handshake timeout, a refused upgrade), or a bug
    return transport_delay(
        policy, telemetry, exc, method, path, operation, sprite, attempt, started, resend(exc)
    )


def status_backoff(policy: RetryPolicy, error: APIError, attempt: int) -> float | None:
    """The wait before retrying a request the server refused, or None to give up.

    Honours ``Retry-After`` (the body's ``retry_after_seconds`` for 429s).
    """
    retry_after = getattr(error, "retry_after", None)
    if retry_after is None and error.status_code == 503:
        retry_after = parse_retry_after(CIMultiDict(error.headers).get("Retry-After"))
    return policy.backoff(attempt, retry_after)


def transport_delay(
    policy: RetryPolicy,
    telemetry: Telemetry | None,
    exc: BaseException,
    method: str,
    path: str,
    operation: str,
    sprite: str | None,
    attempt: int,
    started: float,
    may_retry: bool,
) -> float:
    """After a transport failure: the wait before the next attempt, or raise.

    The raised error is the SDK's translation of ``exc``, chained to it.
    """
    error = _translate(exc, method, path, operation, sprite)
    log_attempt(telemetry, method, path, None, started, attempt, None, error=error)
    delay = policy.backoff(attempt) if may_retry and not _permanent(exc) else None
    if delay is None:
        raise error from exc
    return delay


def log_attempt(
    telemetry: Telemetry | None,
    method: str,
    path: str,
    status: int | None,
    started: float,
    attempt: int,
    headers: Mapping[str, str] | None,
    *,
    error: BaseException | None = None,
) -> None:
    """Record one attempt: on the telemetry span, and in the ``sprites_async`` log."""
    if telemetry is not None:
        telemetry.attempt(status, attempt, headers, method)
    if not logger.isEnabledFor(logging.DEBUG if error is None else logging.INFO):
        return
    extra = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round((time.monotonic() - started) * 1000, 2),
        "attempt": attempt,
        "request_id": headers.get("x-request-id") if headers else None,
        "fly_request_id": headers.get("fly-request-id") if headers else None,
    }
    if error is not None:
        logger.info(
            "%s %s failed (attempt %d): %s",
            method,
            path,
            attempt,
            error,
            extra={"sprites": extra},
        )
    else:
        logger.debug(
            "%s %s -> %s in %.1f ms (attempt %d, request_id=%s)",
            method,
            path,
            status,
            extra["duration_ms"],
            attempt,
            extra["request_id"],
            extra={"sprites": extra},
        )
