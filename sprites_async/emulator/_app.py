"""The aiohttp application of one emulator: middlewares, headers and module wiring.

Middlewares, outermost first:

1. ``_auth`` — ``Authorization: Bearer <token>`` on every route, WebSocket
   upgrades included (401 ``{"error":"authentication failed"}`` before any
   upgrade); only ``GET /_emulator/health`` is open.
2. ``fault_middleware`` (``_faults``) — latency, dropped connections, injected
   429s and errors.
3. ``lost_answers`` (``_faults``) — with the ``post-answer-lost`` quirk, the
   first answer to each POST path is dropped after the handler committed
   its effect.
4. ``_sprite_layer`` — for ``/v1/sprites/{name}/<anything but upgrade>``: 404
   JSON for an unknown sprite, otherwise wake it and hold an activity for as
   long as the handler runs.
5. ``absent_endpoints`` (``_faults``) — with the ``no-*`` quirks, 404
   ``404 page not found`` for the routes an older sprite server lacks.
6. ``_null_arrays`` — with the ``null-arrays`` quirk, every empty JSON array
   in a non-admin JSON answer becomes ``null``, as Go's encoder writes a nil
   slice.

Response headers are added in ``on_response_prepare`` so that streamed and
WebSocket responses get them too: ``fly-request-id`` on everything,
``x-request-id`` on API-layer responses, ``Sprite-Version`` on the sprite layer.
"""

from __future__ import annotations

import asyncio
import hmac
import random
import sqlite3
import string
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from . import (
    _checkpoints,
    _control,
    _exec,
    _faults,
    _fs,
    _policy,
    _ports,
    _proxy,
    _services,
    _sprites,
    _urls,
)
from ._sprites import sprite_layer_name
from ._state import STATE_KEY, EmulatorConfig, EmulatorState, json_error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_INFLIGHT: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("sprites_emulator_inflight")
"""Sprite-layer handler tasks still running, cancelled at shutdown (open sockets)."""

_SHUTDOWN_GRACE = 2.0
_ALNUM = string.ascii_letters + string.digits
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _request_id() -> str:
    return "".join(random.choices(_ALNUM, k=20))


def _fly_request_id() -> str:
    # ULID: 48-bit millisecond time then 80 random bits, Crockford base32.
    value = (int(time.time() * 1000) << 80) | random.getrandbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars)) + "-local"


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == _faults.HEALTH_PATH:
        return await handler(request)
    token = request.app[STATE_KEY].config.token
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    # compare_digest on both branches' inputs: no early exit on a wrong scheme.
    valid = hmac.compare_digest(credentials.strip().encode(), token.encode())
    if not valid or scheme.lower() != "bearer":
        return json_error(401, "authentication failed")
    return await handler(request)


def _missing_sprite(request: web.Request, recorded_500: bool) -> web.Response:
    if recorded_500 and request.app[STATE_KEY].faults.missing_sprite_500:
        return json_error(500, "failed to retrieve sprite")
    return json_error(404, "sprite not found")


@web.middleware
async def _sprite_layer(request: web.Request, handler: Handler) -> web.StreamResponse:
    name = sprite_layer_name(request.path)
    if name is None:
        return await handler(request)
    state = request.app[STATE_KEY]
    if name not in state.sprites:
        # Recorded traffic: plain-HTTP exec and policy calls answered 500 for
        # missing sprites while checkpoints and WebSocket handshakes gave 404.
        rest = request.path[len(f"/v1/sprites/{name}/") :]
        is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
        return _missing_sprite(request, not is_ws and rest.startswith(("exec", "policy")))
    if not await state.lifecycle.wake(name):
        return json_error(404, "sprite not found")
    inflight = request.app[_INFLIGHT]
    task = asyncio.current_task()
    if task is not None:
        inflight.add(task)
    try:
        state.materialize(name)
        return await handler(request)
    finally:
        if task is not None:
            inflight.discard(task)
        state.lifecycle.release(name)


def _nulled(value: Any) -> Any:
    if isinstance(value, list):
        return [_nulled(v) for v in value] if value else None
    if isinstance(value, dict):
        return {k: _nulled(v) for k, v in value.items()}
    return value


@web.middleware
async def _null_arrays(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if (
        not request.app[STATE_KEY].quirks.on("null-arrays")
        or request.path.startswith(_faults.ADMIN_PREFIX)
        or not isinstance(response, web.Response)
        or response.content_type != "application/json"
        or not isinstance(response.body, bytes)
    ):
        return response
    try:
        data = msgspec.json.decode(response.body)
    except (msgspec.DecodeError, RecursionError):
        return response
    data = _nulled(data)
    # A top-level empty list stays a list: Go writes ``[]`` for a made slice,
    # and the quirk is about fields, which is where the SDKs disagree.
    response.body = msgspec.json.encode([] if data is None else data)
    return response


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["fly-request-id"] = _fly_request_id()
    state = request.app[STATE_KEY]
    name = sprite_layer_name(request.path)
    if name is not None and response.status != 401 and name in state.sprites:
        response.headers.setdefault("Sprite-Version", state.sprite_version(name))
    else:
        response.headers["x-request-id"] = _request_id()


def create_app(config: EmulatorConfig) -> web.Application:
    """Build the application for one emulator instance (stored sprites are loaded)."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(config.state_dir / "emulator.sqlite3", isolation_level=None)
    # Without these every autocommit write waits for an fsync (milliseconds),
    # and the lifecycle writes on the hot path of sprite-layer requests. WAL
    # with synchronous=NORMAL still survives the emulator process crashing.
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    state = EmulatorState(config, db)
    app = web.Application(
        middlewares=[
            _auth,
            _faults.fault_middleware,
            _faults.lost_answers,
            _sprite_layer,
            _faults.absent_endpoints,
            _null_arrays,
        ],
        client_max_size=config.max_body,
    )
    app[STATE_KEY] = state
    app[_INFLIGHT] = set()
    _faults.setup(app)
    # Before every module's shutdown handler: a frozen (warm) process cannot end.
    app.on_shutdown.append(_thaw)
    for module in (
        _sprites,
        _exec,
        _control,
        _checkpoints,
        _fs,
        _policy,
        _proxy,
        _services,
        _ports,
        _urls,
    ):
        module.setup(app, state)
    app.on_response_prepare.append(_on_prepare)
    app.on_shutdown.append(_shutdown)
    app.on_cleanup.append(_cleanup)
    return app


async def _thaw(app: web.Application) -> None:
    app[STATE_KEY].lifecycle.close()


async def _shutdown(app: web.Application) -> None:
    # Runs before aiohttp waits for in-flight handlers: end sessions so their
    # sockets close, then cut what is still open (long-lived WebSockets).
    state = app[STATE_KEY]
    await state.sessions.aclose()
    inflight = app[_INFLIGHT]
    if inflight:
        _, pending = await asyncio.wait(list(inflight), timeout=0.05)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=_SHUTDOWN_GRACE)


async def _cleanup(app: web.Application) -> None:
    state = app[STATE_KEY]
    tasks = list(state.background)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    state.lifecycle.flush()
    state.db.close()
