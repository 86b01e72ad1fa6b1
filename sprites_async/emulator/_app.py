"""Emulator: the aiohttp application, its middlewares and module wiring.

Minimal version: the core helper owns this file and extends it (request ids,
sprite-layer middleware with wake/activity, fault injection, admin routes).
"""

from __future__ import annotations

import hmac
import sqlite3
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import _checkpoints, _control, _exec, _fs, _policy, _sprites
from ._state import STATE_KEY, EmulatorConfig, EmulatorState, json_error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    header = request.headers.get("Authorization", "")
    expected = "Bearer " + state.config.token
    if not hmac.compare_digest(header.encode(), expected.encode()):
        return json_error(401, "authentication failed")
    return await handler(request)


def create_app(config: EmulatorConfig) -> web.Application:
    """Build the application for one emulator instance."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(config.state_dir / "emulator.sqlite3", isolation_level=None)
    state = EmulatorState(config, db)
    app = web.Application(middlewares=[_auth], client_max_size=config.max_body)
    app[STATE_KEY] = state
    for module in (_sprites, _exec, _control, _checkpoints, _fs, _policy):
        module.setup(app, state)

    async def _close(app: web.Application) -> None:
        await state.sessions.aclose()
        for task in list(state.background):
            task.cancel()
        db.close()

    app.on_cleanup.append(_close)
    return app
