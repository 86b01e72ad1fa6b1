"""Small wire helpers shared by the checkpoint, filesystem, policy and proxy modules."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

import msgspec
from aiohttp import web

_encoder = msgspec.json.Encoder()

T = TypeVar("T")


async def in_thread(
    fn: Callable[..., T], *args: Any, discard: Callable[[T], object] | None = None
) -> T:
    """Run ``fn(*args)`` in a worker thread; on cancellation wait for it to finish.

    A thread cannot be interrupted, so a cancelled ``asyncio.to_thread`` would
    leave the call running while the caller's ``finally`` closes the file
    descriptor it uses (which the OS may already have reused). Waiting first
    keeps the cleanup ordered after the call. ``discard`` releases a result
    that arrives after the caller was cancelled (an open file descriptor).
    """
    fut = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        if discard is not None and not fut.cancelled() and fut.exception() is None:
            discard(fut.result())
        raise


class BodyTooLarge(Exception):
    """A request body exceeded the limit given to :func:`read_capped`."""


async def read_capped(request: web.Request, limit: int) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes.

    ``client_max_size`` is sized for streamed file writes (up to 1 GiB), far
    too much to buffer for a JSON document, hence a separate cap.
    """
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    buf = bytearray()
    async for chunk in request.content.iter_any():
        buf += chunk
        if len(buf) > limit:
            raise BodyTooLarge
    return bytes(buf)


def go_json(data: Any, status: int = 200) -> web.Response:
    """A sprite-layer JSON response as Go's ``json.Encoder`` writes it (trailing newline)."""
    return web.Response(
        body=_encoder.encode(data) + b"\n",
        status=status,
        headers={"Content-Type": "application/json"},
    )


def rfc3339_nano(ns: int | None = None) -> str:
    """UTC time in Go's ``RFC3339Nano`` layout (trailing fractional zeros trimmed)."""
    if ns is None:
        ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(secs, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def rfc3339_seconds(when: datetime | float) -> str:
    """UTC time in RFC 3339 with second precision (``2026-01-31T15:39:02Z``)."""
    if not isinstance(when, datetime):
        when = datetime.fromtimestamp(when, tz=timezone.utc)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
