"""``GET /v1/sprites/{name}/ports/watch``: the sprite's TCP listeners over a WebSocket (11.1).

On connect the server sends ``{"type":"port_list","ports":[...]}`` with one
``port_opened`` element (Section 3.5.1 shape: ``port``, ``address``, ``pid``)
per TCP socket in LISTEN state held by any process of the sprite, then
``port_closed``/``port_opened`` events as listeners come and go, until the
client closes the socket.

Choices where the protocol reference leaves room:

* "Processes of the sprite" are the live exec sessions (not inline ones) and
  the running services, each with all its descendants, found with the same
  ``/proc`` scan as the exec port notifications (``_procs.listening_ports``).
* Changes are found by polling every ``config.extra["exec_port_poll"]``
  seconds (default 0.5, like the exec notifications); with 0 only the
  snapshot is sent. A listener that comes and goes between two scans is
  never reported. Within one scan closes are sent before opens.
* ``address`` is the address the socket is bound to, verbatim (no rewriting
  to a bridge address as the 2025 server did).
* A non-upgrade request is answered ``400``. While a watch is open the sprite
  counts as in use (the sprite-layer middleware holds it running), and the
  socket is closed with ``1000`` if the sprite is deleted and ``1001`` when
  the emulator shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from aiohttp import web

from ._exec import MANAGER_KEY
from ._procs import PortKey, listening_ports
from ._sessions import PORT_POLL_INTERVAL, SessionManager
from ._state import STATE_KEY, EmulatorState, text_error
from ._supervisor import supervisor_for
from ._wsio import WS_CLOSE_TIMEOUT


def sprite_process_roots(state: EmulatorState, manager: SessionManager, name: str) -> list[int]:
    """Host PIDs of every real process tree of a sprite: exec sessions and services."""
    roots = [int(s.id) for s in manager.list(name) if not s.inline and s.exit_code is None]
    roots.extend(supervisor_for(state).process_roots(name))
    return roots


def sprite_ports(state: EmulatorState, manager: SessionManager, name: str) -> set[PortKey]:
    """``(port, address, pid)`` of every TCP listener held by a process of the sprite."""
    roots = sprite_process_roots(state, manager, name)
    return listening_ports(roots) if roots else set()


def _event(kind: str, key: PortKey) -> dict[str, Any]:
    port, address, pid = key
    return {"type": kind, "port": port, "address": address, "pid": pid}


async def _send(ws: web.WebSocketResponse, message: dict[str, Any]) -> None:
    await ws.send_str(msgspec.json.encode(message).decode())


async def _until_closed(ws: web.WebSocketResponse) -> None:
    # The client sends nothing meaningful; reading is how its close is noticed.
    async for _ in ws:
        pass


async def ports_watch(request: web.Request) -> web.StreamResponse:
    """``GET /ports/watch``: a snapshot, then incremental port events."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return text_error(400, "websocket upgrade required")
    state = request.app[STATE_KEY]
    manager = request.app[MANAGER_KEY]
    name = request.match_info["name"]
    interval = float(state.config.extra.get("exec_port_poll", PORT_POLL_INTERVAL))
    ws = web.WebSocketResponse(compress=False, timeout=WS_CLOSE_TIMEOUT)
    await ws.prepare(request)
    manager.sockets.add(ws)
    reader = asyncio.ensure_future(_until_closed(ws))
    closing = asyncio.ensure_future(manager.closing.wait())
    try:
        known = sprite_ports(state, manager, name)
        ports = [_event("port_opened", key) for key in sorted(known)]
        await _send(ws, {"type": "port_list", "ports": ports})
        while True:
            done, _ = await asyncio.wait(
                {reader, closing},
                timeout=interval if interval > 0 else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if done or name not in state.sprites:
                break
            current = sprite_ports(state, manager, name)
            for kind, keys in (("port_closed", known - current), ("port_opened", current - known)):
                for key in sorted(keys):
                    await _send(ws, _event(kind, key))
            known = current
    except ConnectionError:
        pass  # the client went away mid-send; nothing is left to tell it
    finally:
        reader.cancel()
        closing.cancel()
        await asyncio.wait({reader, closing})
        with contextlib.suppress(Exception):
            await ws.close(code=1001 if manager.closing.is_set() else 1000)
        manager.sockets.discard(ws)
    return ws


def setup(app: web.Application, state: EmulatorState) -> None:
    """Register ``GET /v1/sprites/{name}/ports/watch``."""
    app.router.add_get("/v1/sprites/{name}/ports/watch", ports_watch, allow_head=False)
